//! BuildKit's own parser and shell-expansion test data, read in place from
//! `../shared/conformance/buildkit` (see that folder's README for the
//! formats; `KILN_CONFORMANCE_DIR` names another place). Skipped, with a
//! notice, when the folder is absent (failed under `KILN_REQUIRE_ALL=1`).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use kiln_frontend::parser::{self, Location};
use kiln_frontend::shell::Lexer;
use kiln_testing::{Need, conformance_dir, require};

/// The conformance data, or `None` when absent (the test is skipped).
fn data_dir() -> Option<PathBuf> {
    require(&[Need::Conformance]).then(conformance_dir)
}

fn case_dirs(dir: PathBuf) -> Vec<PathBuf> {
    let mut dirs: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn parser_dumps_match_buildkit() {
    let Some(data) = data_dir() else { return };
    let cases = case_dirs(data.join("parser/testfiles"));
    let mut failures = Vec::new();
    for case in &cases {
        let text = fs::read_to_string(case.join("Dockerfile")).unwrap();
        let expected = fs::read_to_string(case.join("result")).unwrap();
        match parser::parse(&text) {
            Ok(df) if df.dump() == expected => {}
            Ok(df) => failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{}",
                case.display(),
                df.dump()
            )),
            Err(e) => failures.push(format!("{}: {e}", case.display())),
        }
    }
    assert_eq!(cases.len(), 33, "BuildKit has 33 parser cases");
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn negative_cases_are_rejected() {
    let Some(data) = data_dir() else { return };
    let cases = case_dirs(data.join("parser/testfiles-negative"));
    assert_eq!(cases.len(), 4);
    for case in cases {
        let text = fs::read_to_string(case.join("Dockerfile")).unwrap();
        assert!(
            parser::parse(&text).is_err(),
            "{} parsed but must not",
            case.display()
        );
    }
}

#[test]
fn line_numbers() {
    let Some(data) = data_dir() else { return };
    let text = fs::read_to_string(data.join("parser/testfile-line/Dockerfile")).unwrap();
    let df = parser::parse(&text).unwrap();
    let locations: Vec<Location> = df.instructions.iter().map(|n| n.location).collect();
    assert_eq!(
        locations,
        [
            Location { start: 5, end: 5 },
            Location { start: 11, end: 12 },
            Location { start: 17, end: 31 }
        ]
    );
}

#[test]
fn env_var_test() {
    let Some(data) = data_dir() else { return };
    let text = fs::read_to_string(data.join("shell/envVarTest")).unwrap();
    let env: BTreeMap<String, String> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let lexer = Lexer::new('\\');
    let (mut checked, mut failures) = (0, Vec::new());
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.trim().split('|').map(str::trim).collect();
        let [platform, input, expected] = parts[..] else {
            panic!("bad line {line:?}")
        };
        if platform == "W" {
            continue;
        }
        checked += 1;
        let got = lexer.expand_word(input, &env);
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(word), expected) => word == expected,
            _ => false,
        };
        if !ok {
            failures.push(format!("{input:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert_eq!(checked, 228, "every Linux line is checked");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn words_test() {
    let Some(data) = data_dir() else { return };
    let text = fs::read_to_string(data.join("shell/wordsTest")).unwrap();
    let lexer = Lexer::new('\\');
    let mut env = BTreeMap::new();
    let (mut checked, mut failures) = (0, Vec::new());
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            let (k, v) = rest.trim_start_matches(' ').split_once('=').unwrap();
            env.insert(k.to_owned(), v.to_owned());
            continue;
        }
        let parts: Vec<&str> = line.split('|').collect();
        let [input, expected] = parts[..] else {
            panic!("bad line {line:?}")
        };
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        let got = lexer
            .expand_words(input.trim(), &env)
            .unwrap_or_else(|_| vec!["error".to_owned()]);
        checked += 1;
        if got != expected {
            failures.push(format!("{input:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert_eq!(checked, 24);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
