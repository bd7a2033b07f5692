//! Every Dockerfile instruction, ENV/ARG scoping, ONBUILD triggers of a
//! base image, remote ADD sources, SSH agent mounts and the live progress
//! view — through the real `kiln` binary on the busybox base.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_testing::{Need, require};

use crate::busybox::{Setup, assert_stderr_has, ready};
use crate::httpd::Httpd;

/// Runs `git` in `dir` with no user or system configuration.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=kiln", "-c", "user.email=kiln@example.com"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository with tag `v1` (docs/guide.md = "v1 guide") and a later
/// commit on main, served over dumb HTTP from `served/repo.git`.
pub(crate) fn served_repo(work: &Path, served: &Path) {
    fs::create_dir_all(work.join("docs")).unwrap();
    git(work, &["init", "-q", "-b", "main"]);
    fs::write(work.join("docs/guide.md"), "v1 guide\n").unwrap();
    fs::write(work.join("README"), "repo\n").unwrap();
    git(work, &["add", "."]);
    git(work, &["commit", "-q", "-m", "one"]);
    git(work, &["tag", "v1"]);
    fs::write(work.join("docs/guide.md"), "v2 guide\n").unwrap();
    git(work, &["commit", "-q", "-am", "two"]);
    let bare = served.join("repo.git");
    git(
        work,
        &["clone", "-q", "--bare", ".", bare.to_str().unwrap()],
    );
    git(&bare, &["update-server-info"]);
}

#[test]
fn every_instruction() {
    if !require(&[Need::Root, Need::Busybox, Need::Tool("git")]) {
        return;
    }
    let s = Setup::new();
    let served = s.dir.path().join("served");
    fs::create_dir_all(&served).unwrap();
    fs::write(served.join("remote.txt"), "from the web\n").unwrap();
    served_repo(&s.dir.path().join("work"), &served);
    let http = Httpd::serve(&served);

    fs::create_dir_all(s.context.join("files/sub")).unwrap();
    fs::write(s.context.join("files/a.txt"), "a\n").unwrap();
    fs::write(s.context.join("files/sub/b.txt"), "b\n").unwrap();
    fs::write(s.context.join("hello.txt"), "hello\n").unwrap();
    let packed = s.dir.path().join("packed");
    fs::create_dir_all(&packed).unwrap();
    fs::write(packed.join("inner.txt"), "unpacked\n").unwrap();
    assert!(
        Command::new("tar")
            .arg("-C")
            .arg(&packed)
            .arg("-czf")
            .arg(s.context.join("archive.tar.gz"))
            .arg("inner.txt")
            .status()
            .unwrap()
            .success()
    );
    let mut sum = kiln_cache::Hasher::default();
    sum.update(b"from the web\n");
    let sum = sum.finish();
    let dockerfile = format!(
        r#"# syntax=docker/dockerfile:1
ARG BASE=base:busybox
FROM ${{BASE}} AS base
MAINTAINER kiln tests
LABEL org.opencontainers.image.title="every instruction" version=1
ENV GREETING="hello world" PATH=/usr/local/bin:/bin
ARG BUILD_NO=7
WORKDIR /srv
WORKDIR app
COPY --chmod=0640 files/ ./files/
COPY --chown=1000:1000 hello.txt owned.txt
ADD archive.tar.gz /unpacked/
ADD {remote} /downloads/
ADD --checksum={sum} {remote} /downloads/checked.txt
ADD {git}#v1:docs /guide/
ADD --keep-git-dir=true {git} /repo/
RUN echo "$GREETING build $BUILD_NO" > greeting && id -u > uid-root
SHELL ["/bin/sh", "-xc"]
RUN echo shelled > /tmp/shelled
USER app
RUN id -u > /tmp/uid-app
USER root
EXPOSE 8080/tcp 53/udp
VOLUME ["/data"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD ["true"]
ONBUILD RUN echo "triggered by $TRIGGER" > /triggered
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /srv/app/greeting"]
"#,
        remote = http.url("remote.txt"),
        git = http.url("repo.git"),
    );
    let rootfs = s.dir.path().join("rootfs");
    let local = format!("type=local,dest={}", rootfs.display());
    let out = s.build(
        &dockerfile,
        &["-t", "every:1", "-o", "type=image", "-o", &local],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("+ echo shelled"), "SHELL -x: {stderr}");
    assert!(
        stderr.contains(" 13 B / 13 B\n"),
        "a download's bytes: {stderr}"
    );

    let read = |p: &str| fs::read_to_string(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(rootfs.join(p)).unwrap().permissions(),
        ) & 0o7777
    };
    let owner = |p: &str| {
        let m = fs::metadata(rootfs.join(p)).unwrap();
        (
            std::os::unix::fs::MetadataExt::uid(&m),
            std::os::unix::fs::MetadataExt::gid(&m),
        )
    };
    assert_eq!(read("srv/app/greeting"), "hello world build 7\n");
    assert_eq!(read("srv/app/uid-root"), "0\n");
    assert_eq!(read("tmp/uid-app"), "1000\n");
    assert_eq!(read("tmp/shelled"), "shelled\n");
    assert_eq!(read("srv/app/files/a.txt"), "a\n");
    assert_eq!(read("srv/app/files/sub/b.txt"), "b\n");
    assert_eq!(mode("srv/app/files/a.txt"), 0o640, "COPY --chmod");
    assert_eq!(owner("srv/app/owned.txt"), (1000, 1000), "COPY --chown");
    assert_eq!(
        owner("srv/app/files/a.txt"),
        (0, 0),
        "context files: root's"
    );
    assert_eq!(
        read("unpacked/inner.txt"),
        "unpacked\n",
        "ADD unpacks a local tar"
    );
    assert_eq!(read("downloads/remote.txt"), "from the web\n");
    assert_eq!(
        mode("downloads/remote.txt"),
        0o600,
        "ADD <url>: 0600, as Docker"
    );
    assert_eq!(read("downloads/checked.txt"), "from the web\n");
    assert_eq!(
        fs::metadata(rootfs.join("downloads/remote.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000),
        "ADD <url>: mtime from Last-Modified"
    );
    assert_eq!(read("guide/guide.md"), "v1 guide\n", "ADD <git>#tag:subdir");
    assert!(!rootfs.join("guide/README").exists());
    assert_eq!(
        read("repo/docs/guide.md"),
        "v2 guide\n",
        "the default branch"
    );
    assert!(rootfs.join("repo/.git").is_dir(), "--keep-git-dir");

    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["inspect", "every:1"]).0).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["WorkingDir"], "/srv/app");
    assert_eq!(config["User"], "root");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(config["Cmd"], serde_json::json!(["cat /srv/app/greeting"]));
    assert_eq!(config["Shell"], serde_json::json!(["/bin/sh", "-xc"]));
    assert_eq!(config["StopSignal"], "SIGTERM");
    assert_eq!(
        config["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "8080/tcp": {}})
    );
    assert_eq!(config["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(
        config["Labels"]["org.opencontainers.image.title"],
        "every instruction"
    );
    assert_eq!(config["Labels"]["version"], "1");
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "true"])
    );
    assert_eq!(config["Healthcheck"]["Interval"], 30_000_000_000u64);
    assert_eq!(config["Healthcheck"]["Retries"], 2);
    assert_eq!(
        config["OnBuild"],
        serde_json::json!(["RUN echo \"triggered by $TRIGGER\" > /triggered"])
    );
    let env = config["Env"].as_array().unwrap();
    assert!(env.contains(&serde_json::json!("GREETING=hello world")));
    assert!(
        !env.iter()
            .any(|e| e.as_str().unwrap().starts_with("BUILD_NO")),
        "ARG is not ENV"
    );
    assert_eq!(inspect[0]["Author"], "kiln tests");

    // History: one entry per instruction after FROM but ONBUILD (BuildKit's
    // dispatchOnbuild records none), empty_layer where no layer.
    let history = inspect[0]["History"].as_array().unwrap();
    let ours: Vec<&serde_json::Value> = history
        .iter()
        .filter(|h| h["comment"] == "kiln.dockerfile.v0")
        .collect();
    assert_eq!(ours.len(), 25, "{history:#?}");
    assert!(!ours.iter().any(|h| {
        h["created_by"]
            .as_str()
            .is_some_and(|c| c.starts_with("ONBUILD"))
    }));
    let layers = inspect[0]["RootFS"]["Layers"].as_array().unwrap().len();
    let non_empty = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(
        layers, non_empty,
        "one layer per history entry that made one"
    );

    // ONBUILD: the triggers run after FROM in the next build, and are not inherited.
    let out = s.build(
        "FROM every:1\nARG TRIGGER=child\nRUN cat /triggered\n",
        &["-t", "child:1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("RUN echo \"triggered by $TRIGGER\""),
        "the trigger ran as a step: {stderr}"
    );
    let child: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", "child:1"]).0).unwrap();
    assert!(
        child[0]["Config"]["OnBuild"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "triggers are not inherited: {}",
        child[0]["Config"]
    );
    assert!(
        s.layers_text("child:1").contains("triggered by \n"),
        "the trigger runs right after FROM, before the child's ARG"
    );

    // --checksum: a wrong one fails and names both.
    let out = s.build(
        &format!(
            "FROM base:busybox\nADD --checksum=sha256:{} {} /x\n",
            "0".repeat(64),
            http.url("remote.txt")
        ),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("checksum mismatch") && stderr.contains("remote.txt"),
        "{stderr}"
    );
    let out = s.build(
        &format!("FROM base:busybox\nADD {} /x\n", http.url("missing.txt")),
        &[],
    );
    assert_stderr_has(&out, "404");
}

#[test]
fn env_and_arg_scoping() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dockerfile = r#"ARG VERSION=1.0
ARG IMAGE=base:busybox
FROM $IMAGE AS first
RUN echo "version=[$VERSION]" > /before
ARG VERSION
RUN echo "version=[$VERSION]" > /after
ARG LOCAL=default
ENV FROM_ARG=$LOCAL
ENV A=1
ENV A=2 B=$A
ARG SHADOW=arg
ENV SHADOW=env
RUN echo "$SHADOW" > /shadow
RUN echo "${LOCAL:-x}-${MISSING:-fallback}-${LOCAL:+set}-${LOCAL#gi}" > /forms
WORKDIR /w/$LOCAL
RUN pwd > /pwd

FROM $IMAGE
COPY --from=first /before /after /shadow /forms /pwd /
RUN echo "[$LOCAL][$VERSION]" > /second
"#;
    let rootfs = s.dir.path().join("rootfs");
    let build_args = ["--build-arg", "VERSION=2.0", "--build-arg", "LOCAL=given"];
    let out = s.build(
        dockerfile,
        &[&build_args[..], &["--target", "first", "-t", "scoped:1"]].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["inspect", "scoped:1"]).0).unwrap();
    let env: Vec<&str> = inspect[0]["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for expected in ["FROM_ARG=given", "A=2", "B=1", "SHADOW=env"] {
        assert!(env.contains(&expected), "{expected} in {env:?}");
    }
    assert!(
        !env.iter()
            .any(|e| e.starts_with("VERSION=") || e.starts_with("LOCAL=")),
        "{env:?}"
    );
    assert_eq!(inspect[0]["Config"]["WorkingDir"], "/w/given");

    let local = format!("type=local,dest={}", rootfs.display());
    let out = s.build(dockerfile, &[&build_args[..], &["-o", &local]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |p: &str| fs::read_to_string(rootfs.join(p)).unwrap();
    assert_eq!(
        read("before"),
        "version=[]\n",
        "a global ARG needs ARG in the stage"
    );
    assert_eq!(read("after"), "version=[2.0]\n");
    assert_eq!(read("shadow"), "env\n", "ENV wins over ARG");
    assert_eq!(read("forms"), "given-fallback-set-ven\n");
    assert_eq!(read("pwd"), "/w/given\n");
    assert_eq!(read("second"), "[][]\n", "a stage's ARGs end with it");
}

#[test]
fn bind_mounts_of_the_context_leave_out_dockerignored_files() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("keep.txt"), "keep").unwrap();
    fs::write(s.context.join("secret.env"), "TOKEN=1").unwrap();
    fs::create_dir_all(s.context.join("node_modules/x")).unwrap();
    fs::write(s.context.join("node_modules/x/i.js"), "1").unwrap();
    fs::write(s.context.join(".dockerignore"), "*.env\nnode_modules\n").unwrap();
    let out = s.build(
        "FROM base:busybox\nRUN --mount=type=bind,target=/ctx ls -a /ctx > /listing\n",
        &["-t", "bound:1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layers = s.layers_text("bound:1");
    assert!(
        layers.contains("keep.txt") && layers.contains("Dockerfile"),
        "{layers}"
    );
    assert!(
        !layers.contains("secret.env") && !layers.contains("node_modules"),
        "ignored files are not in the bind mount: {layers}"
    );
    // An ignored file's change does not re-run the step.
    fs::write(s.context.join("secret.env"), "TOKEN=2").unwrap();
    let out = s.build(
        "FROM base:busybox\nRUN --mount=type=bind,target=/ctx ls -a /ctx > /listing\n",
        &["-t", "bound:1"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .matches(" CACHED")
            .count(),
        1
    );
}

#[test]
fn ssh_agent_mounts() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let agent = s.dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    // The agent: accepts (kiln checks it answers before the step runs).
    std::thread::spawn(move || for _ in listener.incoming() {});
    let dockerfile = "FROM base:busybox\nRUN --mount=type=ssh,id=deploy,uid=1000,mode=0640 test -S \"$SSH_AUTH_SOCK\" && stat -c '%a %u' \"$SSH_AUTH_SOCK\" > /sock && echo $SSH_AUTH_SOCK >> /sock\n";
    let ssh = format!("deploy={}", agent.display());
    let out = s.build(dockerfile, &["--ssh", &ssh, "-t", "ssh:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layers = s.layers_text("ssh:1");
    assert!(
        layers.contains("640 1000\n/run/buildkit/ssh_agent.0\n"),
        "a socket with the mount's owner and mode at BuildKit's path: {layers}"
    );
    assert!(
        !layers.contains("ssh_agent.0\0"),
        "no mount point left in the layer"
    );

    let out = s.build(
        "FROM base:busybox\nRUN --mount=type=ssh,required=true true\n",
        &[],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SSH agent \"default\" was not provided"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let not_socket = s.dir.path().join("id_ed25519");
    fs::write(&not_socket, "key").unwrap();
    let out = s.build(
        "FROM base:busybox\n",
        &["--ssh", &format!("default={}", not_socket.display())],
    );
    assert_stderr_has(&out, "is not an agent socket");
}

#[test]
fn live_progress_on_a_terminal() {
    if !require(&[Need::Root, Need::Busybox, Need::Tool("script")]) {
        return;
    }
    let s = Setup::new();
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox\nRUN echo first line && sleep 0.5 && echo second line\n",
    )
    .unwrap();
    // `script` gives kiln a terminal; `--progress auto` then picks the live view.
    let command = format!(
        "{} build {}",
        crate::harness::binary("kiln").display(),
        s.context.display()
    );
    let run = || {
        let out = Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .env("KILN_ROOT", &s.root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let screen = run();
    assert!(screen.contains("[+] Building"), "{screen}");
    assert!(screen.contains("FINISHED"), "{screen}");
    assert!(screen.contains("\x1b[2K"), "drawn in place: {screen}");
    assert!(
        screen.contains(" => [stage-0 2/2] RUN echo first line"),
        "{screen}"
    );
    assert!(
        screen.contains(" => => # first line"),
        "a running step's tail: {screen}"
    );
    let again = run();
    assert!(
        again.contains(" => CACHED [stage-0 2/2] RUN echo first line"),
        "{again}"
    );
}
