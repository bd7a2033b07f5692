//! Hostile `ADD` sources (issue 13, item 2): a Git ref that is an option of
//! `git fetch`, local and helper transports, URLs of other schemes. Each
//! Dockerfile tries to run `touch SENTINEL` or read the host; the build
//! fails with an error naming the line, and the sentinel never appears.

use std::fs;
use std::path::Path;

use kiln_testing::{Need, require};

use crate::busybox::{Setup, assert_stderr_has};

/// Builds `dockerfile`; it must fail and say each of `needles`, and
/// `sentinel` must not exist afterwards.
fn refused(s: &Setup, dockerfile: &str, needles: &[&str], sentinel: &Path) {
    let out = s.build(dockerfile, &[]);
    assert!(
        !out.status.success(),
        "built:\n{dockerfile}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in needles {
        assert_stderr_has(&out, needle);
    }
    assert!(
        !sentinel.exists(),
        "{dockerfile}: the host ran the Dockerfile's command"
    );
}

#[test]
fn git_refs_and_subdirectories_never_become_options() {
    if !require(&[Need::Root, Need::Busybox, Need::Tool("git")]) {
        return;
    }
    let s = Setup::new();
    let sentinel = s.dir.path().join("pwned");
    let upload_pack = format!(
        "FROM base:busybox\nADD [\"github.com/x#--upload-pack=touch {};false\", \"/src\"]\n",
        sentinel.display()
    );
    refused(
        &s,
        &upload_pack,
        &["line 2: ADD", "must not start with '-'"],
        &sentinel,
    );
    refused(
        &s,
        "FROM base:busybox\nADD github.com/x/y#main:--help /src\n",
        &[
            "line 2: ADD",
            "Git subdirectory \"--help\" must not start with '-'",
        ],
        &sentinel,
    );
    // JSON form: `\t` and `\u001b` are a tab and an escape in the ref.
    for control in ["\\t", "\\u001b"] {
        let dockerfile = format!(
            "FROM base:busybox\nRUN true\nADD [\"github.com/x/y#ma{control}in\", \"/src\"]\n"
        );
        refused(
            &s,
            &dockerfile,
            &["line 3: ADD", "control character"],
            &sentinel,
        );
    }
}

#[test]
fn local_and_helper_transports_are_refused() {
    if !require(&[Need::Root, Need::Busybox, Need::Tool("git")]) {
        return;
    }
    let s = Setup::new();
    let sentinel = s.dir.path().join("pwned");
    // A repository on the host the Dockerfile must not read.
    let host_repo = s.dir.path().join("host.git");
    let init = std::process::Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&host_repo)
        .status()
        .unwrap();
    assert!(init.success());
    let cases = [
        (
            format!("ADD file://{}/ /r/", host_repo.display()),
            "only http:// and https:// URLs and Git remotes",
        ),
        (
            format!(
                "ADD [\"ext::sh -c touch% {}\", \"/r/\"]",
                sentinel.display()
            ),
            "only http:// and https:// URLs and Git remotes",
        ),
        (
            "ADD ftp://127.0.0.1/file.txt /r/".to_owned(),
            "only http:// and https:// URLs and Git remotes",
        ),
        (
            "ADD ssh://-oProxyCommand=touch/x.git /r/".to_owned(),
            "Git remote",
        ),
    ];
    for (line, needle) in cases {
        let dockerfile = format!("FROM base:busybox\n{line}\n");
        refused(&s, &dockerfile, &["line 2: ADD", needle], &sentinel);
    }
}

#[test]
fn github_short_form_is_fetched_over_https() {
    if !require(&[Need::Root, Need::Busybox, Need::Tool("git")]) {
        return;
    }
    let s = Setup::new();
    // Beside the context and in it: a directory named like the remote,
    // which the short form must never mean.
    for dir in [
        s.context.join("github.com/x/y"),
        s.dir.path().join("github.com/x/y"),
    ] {
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("local.txt"), "local\n").unwrap();
    }
    // The tests have no Internet: the fetch fails, and says where it went.
    let out = s.build("FROM base:busybox\nADD github.com/x/y /src/\n", &[]);
    assert!(!out.status.success());
    assert_stderr_has(&out, "https://github.com/x/y");
}
