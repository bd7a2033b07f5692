//! One pipeline (issue 15): the same build embedded and through kilnd
//! says and does the same. Each test runs a build both ways (on two
//! stores: an embedded `kiln` waits for the lock a running kilnd holds)
//! and compares; each once drifted.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use kiln_proto::control::v1 as control;

use crate::busybox::{Setup, ready};
use crate::kilnd::{Kilnd, raw_build_error};
use crate::registry::{Registry, registry_ready, stderr};

/// `kiln build` with `flags` on `s`'s store, through kilnd when `addr`.
fn build(s: &Setup, addr: Option<&str>, dockerfile: &str, flags: &[&str]) -> std::process::Output {
    let mut args: Vec<&str> = addr.map_or(Vec::new(), |a| vec!["--addr", a]);
    args.push("--progress=plain");
    args.extend_from_slice(flags);
    s.build(dockerfile, &args)
}

/// The lines of `out`'s standard error that start with `prefix`.
fn lines_with(out: &std::process::Output, prefix: &str) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Drift 1: kilnd built with default registry options (and pushed with an
/// empty list), so `--insecure-registry` did nothing through it. The
/// registry is on loopback, named `0.0.0.0:PORT`: not a loopback name,
/// so only `--insecure-registry` makes kiln speak plain HTTP to it —
/// through kilnd, only since kilnd's operator allowed it (kilnd's own
/// `--insecure-registry`): a client that does not ask still gets HTTPS.
#[test]
fn insecure_registries_reach_from_and_push_both_ways() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::with_auth("");
    let host = registry.addr.replace("127.0.0.1", "0.0.0.0");
    let base = format!("{host}/parity/base:1");
    let embedded = Setup::new();
    embedded.ok(&["tag", "base:busybox", &base]);
    embedded.ok(&["push", "--insecure-registry", &host, &base]);
    let through = Setup::new();
    let kilnd = Kilnd::start_with(&through, &["--insecure-registry", &host]);
    let addr = kilnd.addr();
    let dockerfile = format!("FROM {base}\nRUN echo built > /built\n");
    for (s, addr, name) in [
        (&embedded, None, "embedded"),
        (&through, Some(addr.as_str()), "kilnd"),
    ] {
        let app = format!("{host}/parity/app:{name}");
        let without = build(s, addr, &dockerfile, &["--pull=always", "-t", &app]);
        assert!(
            !without.status.success(),
            "{name}: HTTPS to a plain-HTTP registry"
        );
        let out = build(
            s,
            addr,
            &dockerfile,
            &[
                "--pull=always",
                "--insecure-registry",
                &host,
                "-t",
                &app,
                "-o",
                "type=image,push=true",
            ],
        );
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let pushed = lines_with(&out, "pushing ");
        assert_eq!(pushed.len(), 1, "{name}: {}", stderr(&out));
        assert!(
            pushed[0].contains(&format!("pushing {app} done")),
            "{pushed:?}"
        );
    }
}

/// Drift 2: a cache that cannot be imported was a warning embedded, only
/// a log line in kilnd. Both warn the user the same, and build.
#[test]
fn a_failed_cache_import_warns_the_same_both_ways() {
    if !ready() {
        return;
    }
    let cache = "type=registry,ref=127.0.0.1:9/parity/cache:1";
    let dockerfile = "FROM base:busybox\nRUN echo cached > /c\n";
    let embedded = Setup::new();
    let out_embedded = build(&embedded, None, dockerfile, &["--cache-from", cache]);
    let through = Setup::new();
    let kilnd = Kilnd::start(&through);
    let addr = kilnd.addr();
    let out_kilnd = build(&through, Some(&addr), dockerfile, &["--cache-from", cache]);
    for out in [&out_embedded, &out_kilnd] {
        assert!(out.status.success(), "{}", stderr(out));
    }
    let warned = lines_with(&out_embedded, "warning: importing cache from");
    assert_eq!(warned.len(), 1, "{}", stderr(&out_embedded));
    assert!(
        warned[0].contains("127.0.0.1:9/parity/cache:1"),
        "{warned:?}"
    );
    assert_eq!(
        warned,
        lines_with(&out_kilnd, "warning: importing cache from")
    );
}

/// Drift 3: a bad `--pull` got a clear message embedded and a bare one
/// through kilnd; a client other than the CLI gets it too.
#[test]
fn a_bad_pull_says_the_same_both_ways() {
    if !ready() {
        return;
    }
    let dockerfile = "FROM base:busybox\n";
    let embedded = Setup::new();
    let out_embedded = build(&embedded, None, dockerfile, &["--pull=sometimes"]);
    let through = Setup::new();
    let kilnd = Kilnd::start(&through);
    let addr = kilnd.addr();
    let out_kilnd = build(&through, Some(&addr), dockerfile, &["--pull=sometimes"]);
    let expected = "--pull=sometimes: expected missing, always or never (or true, false)";
    for out in [&out_embedded, &out_kilnd] {
        assert!(!out.status.success());
        assert_eq!(lines_with(out, "error: "), [format!("error: {expected}")]);
    }
    let spec = control::BuildSpec {
        dockerfile: dockerfile.to_owned(),
        pull: "sometimes".to_owned(),
        ..Default::default()
    };
    assert_eq!(raw_build_error(&kilnd, spec), expected);
}

/// Drift 4: `-o type=docker` through kilnd wrote the file 0600 (a
/// temporary file's mode), embedded 0644. Both as docker: 0666 less the
/// umask.
#[test]
fn a_docker_output_has_the_same_mode_both_ways() {
    if !ready() {
        return;
    }
    let dockerfile = "FROM base:busybox\nRUN echo x > /x\n";
    let embedded = Setup::new();
    let through = Setup::new();
    let kilnd = Kilnd::start(&through);
    let addr = kilnd.addr();
    let mut modes = Vec::new();
    for (s, addr) in [(&embedded, None), (&through, Some(addr.as_str()))] {
        let dest = s.dir.path().join("image.tar");
        let output = format!("type=docker,dest={}", dest.display());
        let out = build(s, addr, dockerfile, &["-t", "parity:1", "-o", &output]);
        assert!(out.status.success(), "{}", stderr(&out));
        modes.push(fs::metadata(&dest).unwrap().permissions().mode() & 0o777);
    }
    assert_eq!(
        modes[0], modes[1],
        "embedded {:o}, kilnd {:o}",
        modes[0], modes[1]
    );
    assert_eq!(modes[0], 0o666 & !umask());
}

/// `--label` (the option added to prove one pipeline): over the
/// Dockerfile's LABEL of the same key, the same both ways.
#[test]
fn labels_override_the_dockerfile_the_same_both_ways() {
    if !ready() {
        return;
    }
    let dockerfile = "FROM base:busybox\nLABEL a=dockerfile b=kept\n";
    let flags = ["-t", "labelled:1", "--label", "a=flag", "--label", "c="];
    let embedded = Setup::new();
    let out = build(&embedded, None, dockerfile, &flags);
    assert!(out.status.success(), "{}", stderr(&out));
    let labels_embedded = labels(&embedded, None);
    let through = Setup::new();
    let kilnd = Kilnd::start(&through);
    let addr = kilnd.addr();
    let out = build(&through, Some(&addr), dockerfile, &flags);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        labels_embedded,
        serde_json::json!({"a": "flag", "b": "kept", "c": ""})
    );
    assert_eq!(labels_embedded, labels(&through, Some(&addr)));
    let out = build(&embedded, None, dockerfile, &["--label", "=v"]);
    assert!(!out.status.success());
    assert_eq!(
        lines_with(&out, "error: "),
        ["error: --label =v: expected KEY=VALUE"]
    );
}

fn labels(s: &Setup, addr: Option<&str>) -> serde_json::Value {
    let mut args: Vec<&str> = addr.map_or(Vec::new(), |a| vec!["--addr", a]);
    args.extend(["inspect", "labelled:1"]);
    let (json, _) = s.ok(&args);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0]["Config"]["Labels"].clone()
}

/// This process's umask (what files it makes lack).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}
