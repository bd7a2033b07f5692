//! `examples/ci-client/build.py` (Python, grpcio, the .proto) builds
//! through a real kilnd, as a CI job would.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use kiln_testing::{Need, require};

use crate::busybox::Setup;
use crate::kilnd::Kilnd;

#[test]
fn the_python_ci_client_builds_through_kilnd() {
    if !require(&[Need::Root, Need::Busybox, Need::PythonGrpc]) {
        return;
    }
    let s = Setup::new();
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox\nARG WHO\nCOPY hello.txt /\nRUN echo \"built for $WHO\" && cat /hello.txt\n",
    )
    .unwrap();
    fs::write(s.context.join("hello.txt"), "hello from CI\n").unwrap();
    let kilnd = Kilnd::start(&s);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ci-client/build.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "--addr",
            &kilnd.addr(),
            "-t",
            "ci:1",
            "--build-arg",
            "WHO=ci",
            // The typed fields: a label, a pull policy.
            "--label",
            "ci.kiln.example=typed",
            "--pull",
            "never",
        ])
        .arg(&s.context)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("built for ci") && stderr.contains("hello from CI"),
        "{stderr}"
    );
    assert!(
        stderr.contains("naming to docker.io/library/ci:1 done"),
        "{stderr}"
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (inspect, _) = s.ok(&["--addr", &kilnd.addr(), "inspect", "ci:1"]);
    assert!(
        inspect.contains(&id),
        "the ID it printed is the image's: {id}"
    );
    assert!(inspect.contains("ci.kiln.example"), "{inspect}");

    // A failing build: exit 1 and kilnd's words.
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox\nRUN exit 7\n",
    )
    .unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args(["--addr", &kilnd.addr()])
        .arg(&s.context)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exit code 7"));
}
