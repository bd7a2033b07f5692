//! A real consumer: an image built and saved by kiln, loaded into dockerd
//! (Debian's, started as `../shared/bench/setup-peers.sh` does) and run.
//! Skipped with a notice when no dockerd answers, unless
//! `KILN_REQUIRE_ALL=1` (CI sets it after starting dockerd).

use std::fs;
use std::process::Command;

use kiln_testing::{DOCKER, Need, require};

use crate::busybox::Setup;

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
    if !require(&[Need::Root, Need::Busybox, Need::Dockerd]) {
        return;
    }
    let _turn = crate::harness::dockerd_turn();
    let s = Setup::own_base("docker-consumer");
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
    let ran = crate::harness::docker_run(&[&name]);
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
