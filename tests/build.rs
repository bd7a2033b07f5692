//! `kiln build` through the real binary on a busybox base (Debian's
//! busybox-static). Needs root (the sandbox); skipped with a notice
//! otherwise.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::busybox::{Setup, base_tarball, ready};

const APP: &str = "FROM base:busybox\nWORKDIR /app\nCOPY hello.txt .\nRUN cat hello.txt > copied && rm /etc/group && id -u > uid\nENV NAME=World\nUSER app\nCMD [\"cat\", \"/app/copied\"]\n";

#[test]
fn builds_caches_and_rebuilds_only_what_changed() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("hello.txt"), "hello\n").unwrap();
    fs::write(s.context.join("other.txt"), "other\n").unwrap();
    let out = s.build(APP, &["-t", "app:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("RUN cat hello.txt")
            && stderr.contains("naming to docker.io/library/app:1 done"),
        "{stderr}"
    );

    let inspect: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", "app:1"]).0).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["WorkingDir"], "/app");
    assert_eq!(config["User"], "app");
    assert_eq!(config["Cmd"], serde_json::json!(["cat", "/app/copied"]));
    assert!(
        config["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("NAME=World"))
    );
    assert_eq!(
        inspect[0]["RootFS"]["Layers"].as_array().unwrap().len(),
        4,
        "base + WORKDIR + COPY + RUN"
    );

    // Unchanged: every step cached, same image.
    let out = s.build(APP, &["-t", "app:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(" CACHED").count(), 3, "{stderr}");
    assert!(!stderr.contains(" DONE"), "{stderr}");

    // A file the build does not read: still all cached. The copied one: COPY and RUN again.
    fs::write(s.context.join("other.txt"), "changed\n").unwrap();
    let stderr = String::from_utf8_lossy(&s.build(APP, &["-t", "app:1"]).stderr).into_owned();
    assert_eq!(stderr.matches(" CACHED").count(), 3, "{stderr}");
    fs::write(s.context.join("hello.txt"), "hello again\n").unwrap();
    let stderr = String::from_utf8_lossy(&s.build(APP, &["-t", "app:1"]).stderr).into_owned();
    assert_eq!(
        stderr.matches(" CACHED").count(),
        1,
        "only WORKDIR: {stderr}"
    );
    assert_eq!(stderr.matches(" DONE").count(), 2, "{stderr}");

    // The layers as a consumer sees them.
    if Path::new("/usr/bin/umoci").is_file() {
        let archive = s.dir.path().join("app.tar");
        s.ok(&[
            "save",
            "--format",
            "oci",
            "-o",
            archive.to_str().unwrap(),
            "app:1",
        ]);
        let layout = s.dir.path().join("layout");
        fs::create_dir(&layout).unwrap();
        assert!(
            Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-xf")
                .arg(&archive)
                .status()
                .unwrap()
                .success()
        );
        let bundle = s.dir.path().join("bundle");
        let status = Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:1", layout.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let rootfs = bundle.join("rootfs");
        assert_eq!(
            fs::read_to_string(rootfs.join("app/copied")).unwrap(),
            "hello again\n"
        );
        assert_eq!(fs::read_to_string(rootfs.join("app/uid")).unwrap(), "0\n");
        assert!(
            !rootfs.join("etc/group").exists(),
            "the deleted file is gone (whiteout)"
        );
        assert!(rootfs.join("etc/passwd").exists());
        assert!(
            !rootfs.join("proc").exists() && !rootfs.join("etc/hosts").exists(),
            "no sandbox stubs in the image"
        );
    }
}

#[test]
fn failures_name_the_step_and_tag_nothing() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let out = s.build(
        "FROM base:busybox\n\nRUN echo about to fail && exit 3\n",
        &["-t", "broken:1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("  about to fail"),
        "the step's last lines: {stderr}"
    );
    assert!(stderr.ends_with("error: [stage-0 2/2] RUN echo about to fail && exit 3 (Dockerfile line 3): did not complete successfully: exit code 3\n"), "{stderr}");
    assert!(!s.ok(&["images"]).0.contains("broken"), "nothing tagged");

    let out = s.build("FROM base:busybox\nRUN true\nCOPPY a b\n", &["-t", "x:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("line 3") && stderr.contains("COPY"),
        "the line and a suggestion: {stderr}"
    );
    let out = s.build("FROM nothere:1\n", &["-t", "x:1", "--pull=never"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("image docker.io/library/nothere:1 is not in the local store")
    );
    // Pulling it fails with the registry and the line named (no network here).
    let out = s.build("FROM nothere:1\n", &["-t", "x:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("line 1: FROM nothere:1")
            && stderr.contains("docker.io/library/nothere"),
        "{stderr}"
    );
    let out = s.build("FROM base:busybox\nCOPY missing.txt /\n", &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such file or directory: /missing.txt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.build("FROM base:busybox\nCOPY ../x /\n", &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden path outside the build context")
    );
}

#[test]
fn multi_stage_with_target_runs_only_what_it_needs() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dockerfile = "FROM base:busybox AS build\nRUN echo artifact > /out\nFROM base:busybox AS broken\nRUN exit 1\nFROM base:busybox\nCOPY --from=build /out /artifact\n";
    let out = s.build(
        dockerfile,
        &["-t", "multi:1", "-o", "type=image,compression=zstd"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.build(dockerfile, &["--target", "build", "-t", "stage:1"]);
    assert!(
        out.status.success(),
        "the broken stage is not needed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["inspect", "multi:1"]).0).unwrap();
    assert_eq!(inspect[0]["RootFS"]["Layers"].as_array().unwrap().len(), 2);
}

#[test]
fn secrets_and_mounts_through_the_cli() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let secret = s.dir.path().join("token.txt");
    fs::write(&secret, "s3cr3t").unwrap();
    fs::write(s.context.join("data.txt"), "from the context").unwrap();
    let dockerfile = concat!(
        "FROM base:busybox\n",
        "RUN --mount=type=secret,id=token --mount=type=bind,target=/ctx --mount=type=cache,target=/cache ",
        "cat /run/secrets/token > /seen && cat /ctx/data.txt >> /seen && echo x >> /cache/log\n",
    );
    let secret_arg = format!("id=token,src={}", secret.display());
    let out = s.build(dockerfile, &["--secret", &secret_arg, "-t", "sec:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layers = s.layers_text("sec:1");
    assert!(
        layers.contains("s3cr3tfrom the context"),
        "the step read both"
    );
    assert!(
        !layers.contains("run/secrets"),
        "no secret file or mount point in any layer"
    );
    let out = s.build(
        "FROM base:busybox\nRUN --mount=type=secret,id=nope,required cat /run/secrets/nope\n",
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret \"nope\" was not provided"));
}

#[test]
fn independent_stages_run_at_the_same_time() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    // Each stage waits (up to 10 s) until all four have checked in on a
    // shared cache mount: only steps that run together all see four.
    let mut dockerfile = String::new();
    for i in 0..4 {
        dockerfile.push_str(&format!(
            "FROM base:busybox AS s{i}\nRUN --mount=type=cache,target=/sync,id=sync-{run} touch /sync/s{i} && n=0; \\\n while [ $(ls /sync | wc -l) -lt 4 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done; ls /sync | wc -l > /seen\n",
            run = std::process::id()
        ));
    }
    dockerfile.push_str("FROM base:busybox\n");
    for i in 0..4 {
        dockerfile.push_str(&format!("COPY --from=s{i} /seen /seen{i}\n"));
    }
    dockerfile.push_str("RUN cat /seen0 /seen1 /seen2 /seen3 > /all\n");
    let out = s.build(&dockerfile, &["-t", "par:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = s.layers_text("par:1");
    assert!(
        all.contains("4\n4\n4\n4\n"),
        "every stage saw the other three running"
    );
}

#[test]
fn source_date_epoch_gives_the_same_digest_on_fresh_stores() {
    if !ready() {
        return;
    }
    let dockerfile = "FROM base:busybox\nCOPY hello.txt /app/\nRUN echo built > /app/out && mkdir /app/dir\nCMD [\"cat\", \"/app/out\"]\n";
    let shared = tempfile::tempdir().unwrap();
    let tarball = base_tarball(shared.path());
    let digests: Vec<serde_json::Value> = (0..2)
        .map(|_| {
            let s = Setup::with_base(tempfile::tempdir().unwrap(), &tarball);
            fs::write(s.context.join("hello.txt"), "hello\n").unwrap();
            let out = s.build(
                dockerfile,
                &[
                    "--build-arg",
                    "SOURCE_DATE_EPOCH=1700000000",
                    "-t",
                    "repro:1",
                ],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let inspect: serde_json::Value =
                serde_json::from_str(&s.ok(&["inspect", "repro:1"]).0).unwrap();
            assert_eq!(inspect[0]["Created"], "2023-11-14T22:13:20Z");
            inspect[0]["Manifest"]["digest"].clone()
        })
        .collect();
    assert_eq!(digests[0], digests[1], "two fresh stores, one image");
}

#[test]
fn every_output_type() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("hello.txt"), "hello\n").unwrap();
    let out_dir = s.dir.path().join("out");
    let (docker, oci, local, tarball) = (
        out_dir.join("d.tar"),
        out_dir.join("o.tar"),
        out_dir.join("rootfs"),
        out_dir.join("rootfs.tar"),
    );
    fs::create_dir_all(&out_dir).unwrap();
    let outputs = [
        format!("type=docker,dest={}", docker.display()),
        format!("type=oci,dest={}", oci.display()),
        format!("type=local,dest={}", local.display()),
        format!("type=tar,dest={}", tarball.display()),
    ];
    let mut args: Vec<&str> = vec!["-t", "outs:1"];
    for o in &outputs {
        args.push("-o");
        args.push(o);
    }
    let out = s.build(
        "FROM base:busybox\nCOPY hello.txt /app/\nRUN rm /etc/group && echo ran > /app/ran\n",
        &args,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(local.join("app/hello.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(fs::read_to_string(local.join("app/ran")).unwrap(), "ran\n");
    assert!(
        local.join("etc/passwd").exists() && !local.join("etc/group").exists(),
        "whiteouts applied in the local output"
    );
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&tarball)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|l| l == "app/ran") && !listing.contains("etc/group"),
        "{listing}"
    );
    if Path::new("/usr/bin/skopeo").is_file() {
        for (kind, file) in [("docker-archive", &docker), ("oci-archive", &oci)] {
            let inspect = Command::new("skopeo")
                .arg("inspect")
                .arg(format!("{kind}:{}", file.display()))
                .output()
                .unwrap();
            assert!(
                inspect.status.success(),
                "{kind}: {}",
                String::from_utf8_lossy(&inspect.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
            assert_eq!(v["Layers"].as_array().unwrap().len(), 3, "{kind}");
        }
    }
    assert!(docker.is_file() && oci.is_file());
}

#[test]
fn context_from_stdin_heredocs_dockerignore_and_host_symlinks() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let ctx = s.dir.path().join("piped");
    fs::create_dir_all(ctx.join("src")).unwrap();
    fs::write(ctx.join("src/keep.txt"), "keep").unwrap();
    fs::write(ctx.join("src/debug.log"), "noise").unwrap();
    fs::write(ctx.join(".dockerignore"), "src/*.log\n").unwrap();
    // A context symlink to a host file must never bring the host file in.
    let host_secret = s.dir.path().join("host-secret");
    fs::write(&host_secret, "host only").unwrap();
    std::os::unix::fs::symlink(&host_secret, ctx.join("src/leak")).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM base:busybox\nCOPY src /src/\nCOPY <<EOF /etc/motd\nhello $NAME\nEOF\nARG NAME=kiln\nRUN <<EOF\necho \"heredoc ran for $NAME\" > /ran\nEOF\n",
    )
    .unwrap();
    let tarball = s.dir.path().join("ctx.tar.gz");
    assert!(
        Command::new("tar")
            .arg("-C")
            .arg(&ctx)
            .arg("-czf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap()
            .success()
    );
    let out = Command::new(crate::harness::binary("kiln"))
        .env("KILN_ROOT", &s.root)
        .args(["build", "-t", "piped:1", "-o"])
        .arg(format!(
            "type=local,dest={}",
            s.dir.path().join("out").display()
        ))
        .arg("-")
        .stdin(fs::File::open(&tarball).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = s.dir.path().join("out");
    assert_eq!(
        fs::read_to_string(rootfs.join("src/keep.txt")).unwrap(),
        "keep"
    );
    assert!(
        !rootfs.join("src/debug.log").exists(),
        ".dockerignore applies"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "hello \n",
        "ARG NAME comes after the COPY"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("ran")).unwrap(),
        "heredoc ran for kiln\n"
    );
    let leak = rootfs.join("src/leak");
    assert!(
        fs::symlink_metadata(&leak)
            .unwrap()
            .file_type()
            .is_symlink(),
        "copied as a symlink, not as the host file's content"
    );
    assert_eq!(
        fs::read_link(&leak).unwrap(),
        host_secret,
        "the link text is kept; in the image it points at nothing"
    );

    // An ignored file is not in the context at all.
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox\nCOPY debug.log /\n",
    )
    .unwrap();
    fs::write(s.context.join("debug.log"), "noise").unwrap();
    fs::write(s.context.join(".dockerignore"), "*.log\n").unwrap();
    let out = s.kiln(&["build", s.context.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such file or directory: /debug.log"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Naming the symlink as the source follows it inside the context only.
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox\nCOPY leak /stolen\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&host_secret, s.context.join("leak")).unwrap();
    let out = s.kiln(&["build", s.context.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such file or directory: /leak"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_cache_filter_reruns_a_stage_and_what_its_result_changes() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dockerfile = "FROM base:busybox AS deps\nRUN echo same > /dep\nFROM base:busybox\nCOPY --from=deps /dep /dep\nRUN cat /dep > /used\n";
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let first = s.build(dockerfile, &epoch);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The deps step runs again, makes the same bytes (mtimes clamped), and
    // the steps after it stay cached.
    let mut args = epoch.to_vec();
    args.extend(["--no-cache-filter", "deps"]);
    let stderr = String::from_utf8_lossy(&s.build(dockerfile, &args).stderr).into_owned();
    assert_eq!(stderr.matches(" DONE").count(), 1, "{stderr}");
    assert_eq!(stderr.matches(" CACHED").count(), 2, "{stderr}");
    assert!(
        stderr.contains("RUN echo same > /dep\n") && !stderr.contains("#1 CACHED"),
        "{stderr}"
    );
}

#[test]
fn a_missing_dockerfile_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-context");
    let out = crate::harness::run(
        crate::harness::kiln()
            .env("KILN_ROOT", dir.path().join("root"))
            .env("KILN_ADDR", "")
            .arg("build")
            .arg(&missing),
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: reading {}/Dockerfile: No such file or directory (os error 2)\n",
            missing.display()
        ),
        "the cause once, no daemon needed (an empty KILN_ADDR is unset)"
    );
}

/// A relative `KILN_ROOT` is the store beneath the working directory: RUN
/// steps mount from it like from an absolute one.
#[test]
fn a_relative_root_is_taken_from_the_working_directory() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tarball = base_tarball(dir.path());
    let context = dir.path().join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(
        context.join("Dockerfile"),
        "FROM base:busybox\nRUN echo rel > /rel\n",
    )
    .unwrap();
    let kiln = |args: &[&str]| {
        let out = crate::harness::run(
            crate::harness::kiln()
                .current_dir(dir.path())
                .env("KILN_ROOT", "relative-root")
                .args(args),
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {err}");
    };
    kiln(&["import", tarball.to_str().unwrap(), "base:busybox"]);
    kiln(&["build", "-t", "rel:1", "context"]);
    assert!(dir.path().join("relative-root/content").is_dir());
}
