//! A real consumer: an image built and saved by kiln, loaded into dockerd
//! (Debian's, started as `../shared/bench/setup-peers.sh` does) and run.
//! Skipped with a notice when no dockerd answers, unless
//! `KILN_REQUIRE_DOCKER=1` (CI sets it after starting dockerd).

use std::fs;
use std::process::Command;

use crate::busybox::{Setup, ready};

pub(crate) const DOCKER: &str = "/usr/bin/docker";

/// Whether dockerd answers; with `KILN_REQUIRE_DOCKER` set it must.
/// `without` says what runs (or not) when it does not.
pub(crate) fn docker_ready(without: &str) -> bool {
    let up = Command::new(DOCKER)
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        assert!(
            std::env::var_os("KILN_REQUIRE_DOCKER").is_none(),
            "KILN_REQUIRE_DOCKER is set but {DOCKER} info fails: is dockerd running?"
        );
        eprintln!("NOTICE: no dockerd answers; {without}");
    }
    up
}

fn docker(args: &[&str]) -> String {
    let out = Command::new(DOCKER).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn docker_loads_and_runs_what_kiln_built() {
    if !ready() || !docker_ready("the docker consumer test is skipped") {
        return;
    }
    let s = Setup::new();
    fs::write(
        s.context.join("app.sh"),
        "echo \"$GREETING from $(pwd)\"\ncat built\n",
    )
    .unwrap();
    let dockerfile = "FROM base:busybox\nWORKDIR /srv/app\nADD app.sh .\nENV GREETING=\"hello docker\"\nRUN echo \"built by kiln as $(id -u)\" > built\nCMD [\"sh\", \"app.sh\"]\n";
    let name = format!("kiln-consumer-{}:1", std::process::id());
    let archive = s.dir.path().join("app.tar");
    let out = s.build(
        dockerfile,
        &[
            "-t",
            &name,
            "-o",
            &format!("type=docker,dest={}", archive.display()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loaded = docker(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains(&name), "{loaded}");
    let ran = Command::new(DOCKER)
        .args(["run", "--rm", "--network", "none", &name])
        .output()
        .unwrap();
    let _ = docker(&["rmi", "-f", &name]);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        "hello docker from /srv/app\nbuilt by kiln as 0\n",
        "CMD, ENV, WORKDIR, ADD and RUN as written"
    );
}
