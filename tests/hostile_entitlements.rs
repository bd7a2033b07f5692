//! Entitlements (issue 13, item 1): a Dockerfile alone never gets a
//! privileged RUN (`--security=insecure`) or the host's network
//! (`--network=host`). The client asks (`kiln build --allow`), kilnd grants
//! at most what its operator allowed (`--allow-insecure-entitlement`), and a
//! farm worker refuses what either its build or its own operator did not
//! grant. Every refusal happens before any step runs: the hostile steps and
//! the steps before them touch a sentinel in a cache mount, which must never
//! appear anywhere under the test's directory (stores, contexts, workers).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::busybox::{Setup, assert_stderr_has, ready};
use crate::farm::{FarmWorker, wait_for, workers};
use crate::harness::binary;
use crate::kilnd::Kilnd;

/// A privileged step on line 3, after an ordinary one; both would leave a
/// sentinel in a cache mount.
const INSECURE: &str = "FROM base:busybox\n\
    RUN --mount=type=cache,id=sentinel,target=/c touch /c/first-step-ran\n\
    RUN --security=insecure --mount=type=cache,id=sentinel,target=/c touch /c/insecure-step-ran\n";

/// The same with the host's network on line 3.
const HOST_NETWORK: &str = "FROM base:busybox\n\
    RUN --mount=type=cache,id=sentinel,target=/c touch /c/first-step-ran\n\
    RUN --network=host --mount=type=cache,id=sentinel,target=/c touch /c/host-step-ran\n";

/// A privileged step that prints its effective capabilities.
const SHOW_CAPS: &str = "FROM base:busybox\n\
    RUN --security=insecure /bin/busybox grep CapEff /proc/self/status\n";

/// Files named `*-ran` under `dir` (symbolic links not followed).
pub(crate) fn sentinels(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with("-ran") {
            found.push(entry.path().display().to_string());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(sentinels(&entry.path()));
        }
    }
    found
}

fn assert_no_step_ran(s: &Setup) {
    let found = sentinels(s.dir.path());
    assert!(found.is_empty(), "a step ran before the refusal: {found:?}");
}

/// The capability set of the test process (root): what a privileged step
/// gets, all of it.
fn own_bounding_set() -> String {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The `CapEff:` value a step printed in the build's log.
fn step_caps(stderr: &str) -> Option<String> {
    let at = stderr.find("CapEff:")?;
    stderr[at + "CapEff:".len()..]
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a refused build: a failure whose message names the Dockerfile
/// line and what to add, and no step run.
fn assert_refused(s: &Setup, out: &std::process::Output, needles: &[&str]) {
    assert!(
        !out.status.success(),
        "the build was refused: {}",
        stderr(out)
    );
    for needle in needles {
        assert_stderr_has(out, needle);
    }
    assert_no_step_ran(s);
}

#[test]
fn embedded_insecure_run_needs_allow_security_insecure() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("context-sentinel"), "kept").unwrap();
    let out = s.build(INSECURE, &[]);
    assert_refused(
        &s,
        &out,
        &[
            "Dockerfile line 3",
            "security.insecure is not allowed",
            "--allow security.insecure",
        ],
    );
    // Another entitlement does not stand for this one.
    let out = s.build(INSECURE, &["--allow", "network.host"]);
    assert_refused(&s, &out, &["security.insecure is not allowed"]);

    // Granted: the step has every capability kiln has.
    let out = s.build(SHOW_CAPS, &["--allow", "security.insecure"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        step_caps(&stderr(&out)).as_deref(),
        Some(own_bounding_set().as_str()),
        "a granted --security=insecure step has all capabilities: {}",
        stderr(&out)
    );
    // Without it, an ordinary step does not.
    let out = s.build(
        "FROM base:busybox\nRUN /bin/busybox grep CapEff /proc/self/status\n",
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(
        step_caps(&stderr(&out)).as_deref(),
        Some(own_bounding_set().as_str()),
        "an ordinary step is not privileged"
    );
    assert_eq!(
        fs::read_to_string(s.context.join("context-sentinel")).unwrap(),
        "kept"
    );
}

#[test]
fn embedded_host_network_needs_allow_network_host() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let out = s.build(HOST_NETWORK, &[]);
    assert_refused(
        &s,
        &out,
        &[
            "Dockerfile line 3",
            "network.host is not allowed",
            "--allow network.host",
        ],
    );
    let out = s.build(HOST_NETWORK, &["--allow", "security.insecure"]);
    assert_refused(&s, &out, &["network.host is not allowed"]);

    // Granted, in either of buildx's spellings (comma-separated or
    // repeated): the step is in this machine's network namespace.
    let host = host_network_namespace();
    let show = "FROM base:busybox\n\
        RUN --network=host --security=insecure /bin/busybox readlink /proc/self/ns/net\n";
    for allow in [
        &["--allow", "network.host,security.insecure"][..],
        &[
            "--allow",
            "network.host",
            "--allow",
            "security.insecure",
            "--no-cache",
        ][..],
    ] {
        let out = s.build(show, allow);
        assert!(out.status.success(), "{allow:?}: {}", stderr(&out));
        assert_stderr_has(&out, &host);
    }
    // `kiln build --network=host` asks for network.host itself, as buildx's
    // flag does: the machine's own user typed it.
    let out = s.build(
        "FROM base:busybox\nRUN /bin/busybox readlink /proc/self/ns/net\n",
        &["--network", "host"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_stderr_has(&out, &host);
}

/// This process's network namespace (`net:[INODE]`): the host's.
fn host_network_namespace() -> String {
    fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn an_image_cannot_bring_a_privileged_onbuild_step() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    // An image from somewhere else, with a trigger for whoever builds on it.
    let out = s.build(
        "FROM base:busybox\n\
         ONBUILD RUN --security=insecure --mount=type=cache,id=sentinel,target=/c touch /c/onbuild-ran\n",
        &["-t", "hostile:onbuild"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = s.build("# built on it\nFROM hostile:onbuild\nRUN true\n", &[]);
    assert_refused(
        &s,
        &out,
        &[
            "Dockerfile line 2",
            "security.insecure is not allowed",
            "--allow security.insecure",
        ],
    );
}

#[test]
fn unknown_entitlements_are_errors_naming_the_flag() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let out = s.build(INSECURE, &["--allow", "network.host,security.insecur"]);
    assert_refused(&s, &out, &["--allow", "security.insecur"]);
    let out = Command::new(binary("kilnd"))
        .env("KILN_ROOT", &s.root)
        .arg("--addr")
        .arg(format!("unix://{}", s.dir.path().join("k.sock").display()))
        .args(["--allow-insecure-entitlement", "device"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_stderr_has(&out, "--allow-insecure-entitlement");
    assert_stderr_has(&out, "device");
    let out = Command::new(binary("kiln-worker"))
        .arg("--root")
        .arg(s.dir.path().join("w"))
        .args(["--kilnd", "unix:///nonexistent.sock"])
        .args(["--allow-insecure-entitlement", "host.network"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_stderr_has(&out, "--allow-insecure-entitlement");
    assert_stderr_has(&out, "host.network");
}

#[test]
fn kilnd_grants_at_most_what_it_was_started_with() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    // More context than the client's stream buffers: kilnd refuses before
    // reading it, and its reason, not the send it broke, is what is said.
    std::fs::write(s.context.join("large"), vec![0u8; 32 << 20]).unwrap();
    {
        let kilnd = Kilnd::start(&s);
        let addr = kilnd.addr();
        for allow in ["security.insecure", "network.host"] {
            let dockerfile = if allow == "network.host" {
                HOST_NETWORK
            } else {
                INSECURE
            };
            let out = s.build(dockerfile, &["--addr", &addr, "--allow", allow]);
            assert_refused(
                &s,
                &out,
                &[&format!(
                    "granting entitlement {allow} is not allowed by build daemon configuration"
                )],
            );
        }
        // The build-wide `--network=host` asks for network.host too.
        let out = s.build(
            "FROM base:busybox\nRUN --mount=type=cache,id=sentinel,target=/c touch /c/wide-ran\n",
            &["--addr", &addr, "--network", "host"],
        );
        assert_refused(
            &s,
            &out,
            &["granting entitlement network.host is not allowed by build daemon configuration"],
        );
    }
    let kilnd = Kilnd::start_with(
        &s,
        &[
            "--allow-insecure-entitlement",
            "security.insecure",
            "--allow-insecure-entitlement",
            "network.host",
        ],
    );
    let addr = kilnd.addr();
    // Allowed by kilnd, but this client did not ask.
    let out = s.build(INSECURE, &["--addr", &addr]);
    assert_refused(
        &s,
        &out,
        &[
            "Dockerfile line 3",
            "security.insecure is not allowed",
            "--allow security.insecure",
        ],
    );
    let out = s.build(HOST_NETWORK, &["--addr", &addr]);
    assert_refused(
        &s,
        &out,
        &["Dockerfile line 3", "network.host is not allowed"],
    );
    // This one asks.
    let out = s.build(
        SHOW_CAPS,
        &["--addr", &addr, "--allow", "security.insecure"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        step_caps(&stderr(&out)).as_deref(),
        Some(own_bounding_set().as_str()),
        "{}",
        stderr(&out)
    );
    let out = s.build(
        "FROM base:busybox\nRUN --network=host /bin/busybox readlink /proc/self/ns/net\n",
        &["--addr", &addr, "--allow", "network.host"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_stderr_has(&out, &host_network_namespace());
}

#[test]
fn a_farm_worker_refuses_what_its_operator_did_not_allow() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start_with(
        &s,
        &[
            "--allow-insecure-entitlement",
            "security.insecure,network.host",
        ],
    );
    let addr = kilnd.addr();
    // The step is granted by the client and kilnd; the worker's operator
    // did not allow it.
    let plain = FarmWorker::start(&s, &kilnd, "w1", &[]);
    wait_for(&s, &addr, "w1 to attach", |w| w.len() == 1);
    let hostile = "FROM base:busybox\n\
        RUN --security=insecure --mount=type=cache,id=sentinel,target=/c touch /c/farm-step-ran\n";
    let out = s.build(hostile, &["--addr", &addr, "--allow", "security.insecure"]);
    assert_refused(
        &s,
        &out,
        &[
            "worker w1",
            "security.insecure is not allowed",
            "--allow-insecure-entitlement security.insecure",
        ],
    );
    let host_step = "FROM base:busybox\n\
        RUN --network=host --mount=type=cache,id=sentinel,target=/c touch /c/farm-host-step-ran\n";
    let out = s.build(host_step, &["--addr", &addr, "--allow", "network.host"]);
    assert_refused(
        &s,
        &out,
        &[
            "worker w1",
            "network.host is not allowed",
            "--allow-insecure-entitlement network.host",
        ],
    );
    drop(plain);
    wait_for(&s, &addr, "w1 to go", |w| w.is_empty());

    // A worker whose operator allows it runs the step, privileged.
    let _allowed = FarmWorker::start(
        &s,
        &kilnd,
        "w2",
        &["--allow-insecure-entitlement", "security.insecure"],
    );
    wait_for(&s, &addr, "w2 to attach", |w| w.len() == 1);
    let out = s.build(
        SHOW_CAPS,
        &["--addr", &addr, "--allow", "security.insecure"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        step_caps(&stderr(&out)).as_deref(),
        Some(own_bounding_set().as_str()),
        "{}",
        stderr(&out)
    );
    let now = workers(&s, &addr);
    assert_eq!(now[0].2, 1, "the step ran on w2: {now:?}");
    // Its operator allowed that one only.
    let out = s.build(host_step, &["--addr", &addr, "--allow", "network.host"]);
    assert_refused(&s, &out, &["worker w2", "network.host is not allowed"]);
}
