//! `kiln debug parse` and `kiln debug graph`, through the real binary.

use std::fs;

use kiln_testing::{Need, conformance_dir, require};

use crate::harness::{kiln, run, with_input};

#[test]
fn debug_parse_prints_buildkits_dump_for_every_case() {
    if !require(&[Need::Conformance]) {
        return;
    }
    let data = conformance_dir();
    let mut checked = 0;
    for entry in fs::read_dir(data.join("parser/testfiles")).unwrap() {
        let case = entry.unwrap().path();
        let out = run(kiln()
            .args(["debug", "parse", "-f"])
            .arg(case.join("Dockerfile")));
        assert!(
            out.status.success(),
            "{}: {}",
            case.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = fs::read(case.join("result")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&expected),
            "{}",
            case.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 33);
}

#[test]
fn debug_parse_rejects_the_negative_cases_with_a_line() {
    if !require(&[Need::Conformance]) {
        return;
    }
    let data = conformance_dir();
    for entry in fs::read_dir(data.join("parser/testfiles-negative")).unwrap() {
        let case = entry.unwrap().path();
        let out = run(kiln()
            .args(["debug", "parse", "-f"])
            .arg(case.join("Dockerfile")));
        assert!(!out.status.success(), "{} parsed", case.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("error: dockerfile parse error on line "),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

fn with_stdin(args: &[&str], dir: &std::path::Path, stdin: &str) -> std::process::Output {
    with_input(kiln().args(args).current_dir(dir), stdin)
}

#[test]
fn debug_graph_json_and_dot() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".dockerignore"), "*.log\n!keep.log\n").unwrap();
    fs::write(
        dir.path().join("Dockerfile"),
        "ARG V=1\nFROM busybox AS build\nARG V\nRUN echo $V > /v\nFROM busybox AS unused\nRUN exit 1\nFROM scratch\nCOPY --from=build /v /v\nCOPY . /ctx/\nENV A=$V\n",
    )
    .unwrap();
    let out = run(kiln()
        .args([
            "debug",
            "graph",
            "--build-arg",
            "V=7",
            "--platform",
            "linux/arm64",
        ])
        .current_dir(dir.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let graph: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vertices = graph["vertices"].as_array().unwrap();
    let descriptions: Vec<&str> = vertices
        .iter()
        .map(|v| v["meta"]["description"].as_str().unwrap())
        .collect();
    assert!(
        descriptions.contains(&"[build 3/3] RUN echo $V > /v"),
        "{descriptions:?}"
    );
    assert!(
        !descriptions.iter().any(|d| d.contains("exit 1")),
        "the unused stage is not in the graph"
    );
    let run_op = vertices
        .iter()
        .find(|v| v["op"]["kind"]["Exec"].is_object())
        .unwrap();
    let env = run_op["op"]["kind"]["Exec"]["meta"]["env"]
        .as_array()
        .unwrap();
    assert!(env.iter().any(|e| e == "V=7"));
    assert_eq!(run_op["op"]["platform"]["architecture"], "arm64");
    let context = vertices
        .iter()
        .find(|v| v["op"]["kind"]["Source"]["source"]["Local"].is_object())
        .unwrap();
    assert_eq!(
        context["op"]["kind"]["Source"]["source"]["Local"]["exclude_patterns"],
        serde_json::json!(["*.log", "!keep.log"])
    );
    let target = &graph["stages"][graph["target"].as_u64().unwrap() as usize];
    assert_eq!(target["image"]["config"]["Env"][1], "A=");
    for v in vertices {
        assert!(v["digest"].as_str().unwrap().starts_with("sha256:"));
    }

    let out = run(kiln()
        .args(["debug", "graph", "--format", "dot", "--target", "build"])
        .current_dir(dir.path()));
    let dot = String::from_utf8(out.stdout).unwrap();
    assert!(
        dot.starts_with("digraph kiln {") && dot.contains("->") && !dot.contains("COPY"),
        "{dot}"
    );
}

#[test]
fn debug_graph_reads_stdin_and_reports_errors_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = with_stdin(
        &["debug", "graph", "-f", "-"],
        dir.path(),
        "FROM busybox\nRUN true\n",
    );
    assert!(out.status.success());
    let out = with_stdin(
        &["debug", "graph", "-f", "-"],
        dir.path(),
        "FROM busybox\n\nCOPY ../secret /\n",
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: line 3: COPY ../secret /: forbidden path outside the build context: ../secret\n"
    );
    let out = with_stdin(
        &["debug", "graph", "-f", "-", "--target", "nope"],
        dir.path(),
        "FROM busybox\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: target stage \"nope\" could not be found\n"
    );
    let out = run(kiln()
        .args(["debug", "graph", "-f", "missing.Dockerfile"])
        .current_dir(dir.path()));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: reading missing.Dockerfile: ")
    );
}

#[test]
fn debug_graph_for_two_platforms_names_them_and_shares_the_build_stage() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("Dockerfile"),
        "FROM --platform=$BUILDPLATFORM busybox AS build\nRUN make\nFROM busybox\nCOPY --from=build /out /\n",
    )
    .unwrap();
    let graph = |format: &str| {
        let out = run(kiln()
            .args(["debug", "graph", "--platform", "linux/amd64,linux/arm64"])
            .args(["--format", format])
            .current_dir(dir.path()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // JSON: one graph per platform, each naming its stages' platforms.
    let graphs: serde_json::Value = serde_json::from_str(&graph("json")).unwrap();
    let described = |g: &serde_json::Value| -> Vec<String> {
        let vertices = g["vertices"].as_array().unwrap().iter();
        vertices
            .map(|v| v["meta"]["description"].as_str().unwrap().to_owned())
            .collect()
    };
    let make = "[linux/amd64 build 2/2] RUN make".to_owned();
    for (g, target) in graphs.as_array().unwrap().iter().zip(["amd64", "arm64"]) {
        let names = described(g);
        assert!(names.contains(&make), "{names:?}");
        let copy = format!("[linux/{target} stage-1 2/2] COPY --from=build /out /");
        assert!(names.contains(&copy), "{names:?}");
    }
    // DOT: the graph both make, the build stage's step once.
    let dot = graph("dot");
    assert_eq!(dot.matches("RUN make").count(), 1, "{dot}");
    assert_eq!(dot.matches("COPY --from=build").count(), 2, "{dot}");
}
