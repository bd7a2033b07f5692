//! Build checks (BuildKit's Dockerfile linter) through the real `kiln`:
//! warnings after a build, `--check`, `# check=` and
//! `BUILDKIT_DOCKERFILE_CHECK`, through kilnd, and `# syntax=`.

use std::process::Output;

use crate::busybox::{Setup, assert_stderr_has, ready};
use crate::kilnd::Kilnd;

/// `FromAsCasing` on line 1 and `JSONArgsRecommended` on line 2.
const TWO_WARNINGS: &str = "FROM base:busybox as base\nCMD echo hi\n";
const FROM_AS: &str = " - FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)";
const JSON_ARGS: &str = " - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 2)";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
}

/// Whether the store has a tag `name` (`kiln images` lists it).
fn tagged(s: &Setup, name: &str) -> bool {
    let (list, _) = s.ok(&["images"]);
    list.contains(name)
}

/// Like [`tagged`], through kilnd (which holds the store).
fn tagged_through(s: &Setup, addr: &str, name: &str) -> bool {
    let (list, _) = s.ok(&["--addr", addr, "images"]);
    list.contains(name)
}

#[test]
fn warnings_are_printed_after_a_build() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let out = s.build(TWO_WARNINGS, &["--progress=plain", "-t", "warned:1"]);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("\n 2 warnings found:\n"), "{err}");
    assert!(err.contains(FROM_AS) && err.contains(JSON_ARGS), "{err}");
    assert!(tagged(&s, "warned"), "a warning does not stop the build");

    let out = s.build(TWO_WARNINGS, &["--progress=json"]);
    assert_ok(&out);
    assert_stderr_has(
        &out,
        r#""event":"warning","warning":{"rule":"FromAsCasing""#,
    );

    let out = s.build("FROM base:busybox\nCMD [\"sh\"]\n", &["--progress=plain"]);
    assert_ok(&out);
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn check_prints_each_warning_and_exits_1() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let out = s.build(TWO_WARNINGS, &["--check", "-t", "checked:1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("Check complete, 2 warnings have been found!\n"),
        "{text}"
    );
    let first = "\nWARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/\n'as' and 'FROM' keywords' casing do not match\nDockerfile:1\n--------------------\n   1 | >>> FROM base:busybox as base\n   2 |     CMD echo hi\n   3 |     \n--------------------\n";
    assert!(text.contains(first), "{text}");
    assert!(
        text.contains("\nWARNING: JSONArgsRecommended - https://docs.docker.com/go/dockerfile/rule/json-args-recommended/\n"),
        "{text}"
    );
    assert!(!tagged(&s, "checked"), "--check builds nothing");

    let out = s.build(TWO_WARNINGS, &["--call=check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("Check complete, 2 warnings"));

    let out = s.build("FROM base:busybox\nCMD [\"sh\"]\n", &["--check"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "Check complete, no warnings found.\n");
}

#[test]
fn check_error_true_fails_before_building() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dockerfile = "# check=error=true\nFROM base:busybox as base\nRUN touch /made\n";
    let out = s.build(dockerfile, &["--progress=plain", "-t", "strict:1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("lint violation found for rules: FromAsCasing"),
        "{err}"
    );
    assert!(
        err.contains(" - FromAsCasing:"),
        "the warning is shown: {err}"
    );
    assert!(!err.contains("RUN touch"), "no step ran: {err}");
    assert!(!tagged(&s, "strict"), "nothing is tagged");

    let out = s.build(dockerfile, &["--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert_stderr_has(&out, "lint violation found for rules: FromAsCasing");
}

#[test]
fn skip_rules() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    for directive in [
        "# check=skip=FromAsCasing,JSONArgsRecommended",
        "# check=skip=all;error=true",
    ] {
        let out = s.build(
            &format!("{directive}\n{TWO_WARNINGS}"),
            &["--progress=plain"],
        );
        assert_ok(&out);
        assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    }
    let one = "# check=skip=JSONArgsRecommended\nFROM base:busybox as base\nCMD echo hi\n";
    let out = s.build(one, &["--progress=plain"]);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("\n 1 warning found:\n") && err.contains("FromAsCasing"),
        "{err}"
    );
    assert!(!err.contains("JSONArgsRecommended"), "{err}");
    // A `# check=` comment right before an instruction skips for it alone.
    let local = "FROM base:busybox\n# check=skip=JSONArgsRecommended\nCMD echo hi\n";
    let out = s.build(local, &["--check"]);
    assert_ok(&out);
}

#[test]
fn build_arg_replaces_the_directive() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let lenient = "#check=skip=all\nFROM base:busybox as base\n";
    let arg = "BUILDKIT_DOCKERFILE_CHECK=skip=JSONArgsRecommended;error=true";
    let out = s.build(lenient, &["--progress=plain", "--build-arg", arg]);
    assert!(!out.status.success());
    assert_stderr_has(&out, "lint violation found for rules: FromAsCasing");

    let strict = "#check=error=true\nFROM base:busybox as base\n";
    let arg = "BUILDKIT_DOCKERFILE_CHECK=skip=all";
    let out = s.build(strict, &["--progress=plain", "--build-arg", arg]);
    assert_ok(&out);
    assert!(!stderr(&out).contains("consumed"), "a known build arg");

    let out = s.build(
        lenient,
        &["--check", "--build-arg", "BUILDKIT_DOCKERFILE_CHECK=skip"],
    );
    assert!(!out.status.success());
    assert_stderr_has(&out, "invalid check option");
}

#[test]
fn warnings_travel_through_kilnd() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let out = s.build(TWO_WARNINGS, &["--addr", &addr, "--progress=plain"]);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("\n 2 warnings found:\n"), "{err}");
    assert!(err.contains(FROM_AS) && err.contains(JSON_ARGS), "{err}");

    let strict = format!("# check=error=true\n{TWO_WARNINGS}");
    let out = s.build(
        &strict,
        &["--addr", &addr, "--progress=plain", "-t", "strict:1"],
    );
    assert!(!out.status.success());
    assert_stderr_has(
        &out,
        "lint violation found for rules: FromAsCasing, JSONArgsRecommended",
    );
    assert_stderr_has(&out, &FROM_AS.replace("(line 1)", "(line 2)"));
    assert!(!tagged_through(&s, &addr, "strict"), "nothing is tagged");

    let out = s.build(TWO_WARNINGS, &["--addr", &addr, "--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("Check complete, 2 warnings"));
}

#[test]
fn syntax_naming_another_frontend_is_refused() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    for ours in [
        "docker/dockerfile:1.7",
        "docker/dockerfile:1",
        "docker.io/docker/dockerfile:1-labs",
        "docker/dockerfile-upstream:master",
    ] {
        let dockerfile = format!("# syntax={ours}\nFROM base:busybox\n");
        let out = s.build(&dockerfile, &["--progress=plain"]);
        assert_ok(&out);
        assert!(
            !stderr(&out).contains("warning"),
            "{ours}: {}",
            stderr(&out)
        );
    }
    for other in ["example.com/other/frontend:1", "foobar"] {
        let dockerfile = format!("# syntax={other}\nFROM base:busybox\n");
        let out = s.build(&dockerfile, &["--progress=plain", "-t", "other:1"]);
        assert!(!out.status.success(), "{other}");
        assert_stderr_has(&out, &format!("unsupported frontend {other:?}"));
        assert!(!tagged(&s, "other"));
    }
}
