//! A Git or HTTP URL as the build context (issue 14, item 12), and
//! `SOURCE_DATE_EPOCH=context` taking that context's time (item 24), as
//! `docker build URL` and BuildKit do: a Git repository at a ref and
//! subdirectory, a context archive, a lone Dockerfile; a fetched context's
//! symlinks never make the host's files the Dockerfile.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_testing::{Need, require};

use crate::busybox::{Setup, assert_stderr_has, ready};
use crate::httpd::Httpd;
use crate::kilnd::Kilnd;

/// The commit time of the served repository's tag `v1`.
const V1_TIME: u64 = 1_650_000_000;
/// What the test server says as `Last-Modified` (`tests/httpd.rs`).
const SERVED_TIME: u64 = 1_600_000_000;

pub(crate) fn git(dir: &Path, time: u64, args: &[&str]) {
    let date = format!("@{time} +0000");
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=kiln", "-c", "user.email=kiln@example.com"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `served/repo.git` (dumb HTTP): tag `v1` has `app/Dockerfile`,
/// `app/other.Dockerfile` and `app/hello.txt`; `main` one commit later
/// changes `hello.txt`, and adds `evil/Dockerfile`, a symlink to the
/// host's `/etc/passwd`.
pub(crate) fn served_repo(work: &Path, served: &Path) {
    fs::create_dir_all(work.join("app")).unwrap();
    git(work, V1_TIME, &["init", "-q", "-b", "main"]);
    fs::write(
        work.join("app/Dockerfile"),
        "FROM base:busybox\nARG SOURCE_DATE_EPOCH\nCOPY hello.txt /\nRUN echo \"$SOURCE_DATE_EPOCH\" > /epoch\n",
    )
    .unwrap();
    fs::write(
        work.join("app/other.Dockerfile"),
        "FROM base:busybox\nCOPY hello.txt /other\n",
    )
    .unwrap();
    fs::write(work.join("app/hello.txt"), "v1\n").unwrap();
    git(work, V1_TIME, &["add", "."]);
    git(work, V1_TIME, &["commit", "-q", "-m", "one"]);
    git(work, V1_TIME, &["tag", "v1"]);
    fs::write(work.join("app/hello.txt"), "v2\n").unwrap();
    fs::create_dir_all(work.join("evil")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", work.join("evil/Dockerfile")).unwrap();
    git(work, V1_TIME + 100, &["add", "."]);
    git(work, V1_TIME + 100, &["commit", "-q", "-m", "two"]);
    let bare = served.join("repo.git");
    git(
        work,
        V1_TIME,
        &["clone", "-q", "--bare", ".", bare.to_str().unwrap()],
    );
    git(&bare, V1_TIME, &["update-server-info"]);
}

/// Builds `context` (a URL) with `extra` flags into a fresh directory.
fn build_url(
    s: &Setup,
    context: &str,
    extra: &[&str],
) -> (std::process::Output, std::path::PathBuf) {
    let dest = s.dir.path().join("out");
    let _ = fs::remove_dir_all(&dest);
    let output = format!("type=local,dest={}", dest.display());
    let mut args = vec!["build", "--progress=plain", "-o", output.as_str()];
    args.extend_from_slice(extra);
    args.push(context);
    (s.kiln(&args), dest)
}

fn built(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn created(s: &Setup, name: &str) -> String {
    let inspect: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", name]).0).unwrap();
    inspect[0]["Created"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_git_repository_as_the_context() {
    if !require(&[Need::Root, Need::Busybox, Need::Tool("git")]) {
        return;
    }
    let s = Setup::new();
    let served = s.dir.path().join("served");
    fs::create_dir_all(&served).unwrap();
    served_repo(&s.dir.path().join("work"), &served);
    let http = Httpd::serve(&served);
    let repo = http.url("repo.git");

    // The fragment form: a tag and a subdirectory.
    let (out, dest) = build_url(&s, &format!("{repo}#v1:app"), &[]);
    built(&out);
    assert_eq!(fs::read_to_string(dest.join("hello.txt")).unwrap(), "v1\n");
    // The query form, the branch's head, and -f inside the context.
    let (out, dest) = build_url(
        &s,
        &format!("{repo}?branch=main&subdir=app"),
        &["-f", "other.Dockerfile"],
    );
    built(&out);
    assert_eq!(fs::read_to_string(dest.join("other")).unwrap(), "v2\n");

    // SOURCE_DATE_EPOCH=context: the commit's time, for the image and for
    // RUN (as BuildKit's testSourceDateEpochContextGit).
    let (out, dest) = build_url(
        &s,
        &format!("{repo}#v1:app"),
        &["--build-arg", "SOURCE_DATE_EPOCH=context"],
    );
    built(&out);
    assert_eq!(
        fs::read_to_string(dest.join("epoch")).unwrap(),
        format!("{V1_TIME}\n")
    );
    let context = format!("{repo}#v1:app");
    s.ok(&[
        "build",
        "-q",
        "--build-arg",
        "SOURCE_DATE_EPOCH=context",
        "-t",
        "from-git:1",
        &context,
    ]);
    assert_eq!(created(&s, "from-git:1"), "2022-04-15T05:20:00Z");

    // A Dockerfile that is a symlink out of the fetched tree is refused;
    // the host's file is never read as the Dockerfile.
    let (out, _) = build_url(&s, &format!("{repo}#main:evil"), &[]);
    assert!(!out.status.success());
    assert_stderr_has(&out, "outside the build context");
    // A ref the repository lacks names the URL.
    let (out, _) = build_url(&s, &format!("{repo}#nope"), &[]);
    assert!(!out.status.success());
    assert_stderr_has(&out, &repo);

    // Through kilnd (last: it holds the store): the client fetches, kilnd
    // builds, the time goes along.
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    s.ok(&[
        "--addr",
        &addr,
        "build",
        "-q",
        "--build-arg",
        "SOURCE_DATE_EPOCH=context",
        "-t",
        "from-git:2",
        &context,
    ]);
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["--addr", &addr, "inspect", "from-git:2"]).0).unwrap();
    assert_eq!(inspect[0]["Created"], "2022-04-15T05:20:00Z");
}

#[test]
fn an_archive_or_a_dockerfile_at_a_url_as_the_context() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let served = s.dir.path().join("served");
    let tree = s.dir.path().join("tree");
    fs::create_dir_all(&served).unwrap();
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(
        tree.join("Dockerfile"),
        "FROM base:busybox\nARG SOURCE_DATE_EPOCH\nCOPY sub /sub\nRUN echo \"$SOURCE_DATE_EPOCH\" > /epoch\n",
    )
    .unwrap();
    fs::write(tree.join("sub/file"), "inside\n").unwrap();
    let newest = 1_500_000_000;
    for f in ["Dockerfile", "sub/file"] {
        let file = fs::File::options().write(true).open(tree.join(f)).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(newest - 50);
        file.set_modified(if f == "sub/file" {
            t + std::time::Duration::from_secs(50)
        } else {
            t
        })
        .unwrap();
    }
    let tar = |name: &str, dir: &Path| {
        let status = Command::new("tar")
            .arg("-czf")
            .arg(served.join(name))
            .arg("-C")
            .arg(dir)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
    };
    tar("context.tar.gz", &tree);
    fs::write(
        served.join("Dockerfile"),
        "FROM base:busybox\nRUN echo lone > /lone\n",
    )
    .unwrap();
    let evil = s.dir.path().join("evil");
    fs::create_dir_all(&evil).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", evil.join("Dockerfile")).unwrap();
    tar("evil.tar", &evil);

    let http = Httpd::serve(&served);
    let (out, dest) = build_url(
        &s,
        &http.url("context.tar.gz"),
        &["--build-arg", "SOURCE_DATE_EPOCH=context"],
    );
    built(&out);
    assert_eq!(
        fs::read_to_string(dest.join("sub/file")).unwrap(),
        "inside\n"
    );
    // With a Last-Modified, that is the context's time.
    assert_eq!(
        fs::read_to_string(dest.join("epoch")).unwrap(),
        format!("{SERVED_TIME}\n")
    );
    // Without one, the newest regular file of the archive.
    let undated = Httpd::serve_undated(&served);
    let (out, dest) = build_url(
        &s,
        &undated.url("context.tar.gz"),
        &["--build-arg", "SOURCE_DATE_EPOCH=context"],
    );
    built(&out);
    assert_eq!(
        fs::read_to_string(dest.join("epoch")).unwrap(),
        format!("{newest}\n")
    );

    // A text file at the URL is the Dockerfile, with an empty context.
    let (out, dest) = build_url(&s, &http.url("Dockerfile"), &[]);
    built(&out);
    assert_eq!(fs::read_to_string(dest.join("lone")).unwrap(), "lone\n");
    let (out, _) = build_url(&s, &http.url("Dockerfile"), &["-f", "x"]);
    assert!(!out.status.success());
    assert_stderr_has(&out, "is a Dockerfile itself");

    // A symlink of the archive pointing at the host is never the Dockerfile.
    let (out, _) = build_url(&s, &http.url("evil.tar"), &[]);
    assert!(!out.status.success());
    assert_stderr_has(&out, "outside the build context");
    // A missing URL names it.
    let (out, _) = build_url(&s, &http.url("missing.tar"), &[]);
    assert!(!out.status.success());
    assert_stderr_has(&out, "HTTP 404");
}

/// `SOURCE_DATE_EPOCH`: a local context has no time of its own (`context`
/// leaves it unset, as BuildKit's testSourceDateEpochContextLocalUnset);
/// the Dockerfile's default sets it; a value that is no time is refused,
/// naming where it came from.
#[test]
fn source_date_epoch_values() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dockerfile = "FROM base:busybox\nRUN true\n";
    let out = s.build(
        dockerfile,
        &[
            "-q",
            "-t",
            "local:1",
            "--build-arg",
            "SOURCE_DATE_EPOCH=context",
        ],
    );
    built(&out);
    let now = created(&s, "local:1");
    assert!(
        now.as_str() > "2026-01-01",
        "created {now}, not a fixed time"
    );

    let out = s.build(
        "ARG SOURCE_DATE_EPOCH=1700000000\nFROM base:busybox\nRUN true\n",
        &["-q", "-t", "default:1"],
    );
    built(&out);
    assert_eq!(created(&s, "default:1"), "2023-11-14T22:13:20Z");

    let out = s.build(
        "ARG SOURCE_DATE_EPOCH=not-a-timestamp\nFROM base:busybox\nRUN true\n",
        &["-t", "bad:1"],
    );
    assert!(!out.status.success());
    assert_stderr_has(&out, "invalid SOURCE_DATE_EPOCH: not-a-timestamp");
    assert_stderr_has(&out, "line 1");
    let out = s.build(
        dockerfile,
        &["--build-arg", "SOURCE_DATE_EPOCH=soon", "-t", "bad:2"],
    );
    assert!(!out.status.success());
    assert_stderr_has(&out, "invalid SOURCE_DATE_EPOCH: soon");
    let images = s.ok(&["images"]).0;
    assert!(!images.contains("bad"), "{images}");
}
