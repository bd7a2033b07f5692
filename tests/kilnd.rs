//! kilnd, the build service, started for real on a temporary socket: the
//! CLI's commands through it give what they give embedded; the health
//! service answers; SIGTERM stops it cleanly.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use kiln_testing::wait_until;

use crate::busybox::{Setup, ready};
use crate::harness::{PATIENCE, binary, running};

/// A running kilnd on `s`'s store, stopped (SIGTERM) when dropped.
pub(crate) struct Kilnd {
    child: Child,
    socket: PathBuf,
}

impl Kilnd {
    pub(crate) fn start(s: &Setup) -> Self {
        Self::start_with(s, &[])
    }

    /// With more arguments.
    pub(crate) fn start_with(s: &Setup, args: &[&str]) -> Self {
        let socket = s.dir.path().join("kilnd.sock");
        let child = Command::new(binary("kilnd"))
            .env("KILN_ROOT", &s.root)
            .arg("--addr")
            .arg(format!("unix://{}", socket.display()))
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut kilnd = Self { child, socket };
        wait_until(PATIENCE, "kilnd to listen on its socket", || {
            assert!(
                kilnd.child.try_wait().unwrap().is_none(),
                "kilnd exited before it listened"
            );
            std::os::unix::net::UnixStream::connect(&kilnd.socket).is_ok()
        });
        kilnd
    }

    pub(crate) fn addr(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// SIGTERM, and the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Kilnd {
    /// SIGTERM; SIGKILL when a build it waits for never ends (a test
    /// that failed midway), so that a failure does not hang the run.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..400 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `call` on a gRPC channel to kilnd's socket.
pub(crate) fn grpc<T, F: std::future::Future<Output = T>>(
    socket: &Path,
    call: impl FnOnce(tonic::transport::Channel) -> F,
) -> T {
    let socket = socket.to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::try_from("http://kilnd")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        call(channel).await
    })
}

fn health(socket: &Path) -> i32 {
    grpc(socket, |channel| async move {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        client
            .check(tonic_health::pb::HealthCheckRequest {
                service: "kiln.control.v1.Control".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    })
}

/// The services server reflection lists.
fn reflected_services(socket: &Path) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    grpc(socket, |channel| async move {
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        match stream
            .message()
            .await
            .unwrap()
            .and_then(|r| r.message_response)
        {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("not a service list: {other:?}"),
        }
    })
}

#[test]
fn the_cli_through_kilnd() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("hello.txt"), "hello\n").unwrap();
    fs::write(s.context.join("secret.log"), "not sent").unwrap();
    fs::write(s.context.join(".dockerignore"), "*.log\n").unwrap();
    let mut kilnd = Kilnd::start(&s);
    assert_eq!(health(&kilnd.socket), 1, "SERVING");
    let services = reflected_services(&kilnd.socket);
    assert!(
        services.iter().any(|s| s == "kiln.control.v1.Control"),
        "reflection lists the control API: {services:?}"
    );
    let addr = kilnd.addr();
    let dockerfile =
        "FROM base:busybox\nCOPY . /ctx/\nRUN ls /ctx > /listing && cat /ctx/hello.txt\n";
    let out = s.build(dockerfile, &["--addr", &addr, "-t", "remote:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("#2 hello") || stderr.contains(" hello\n"),
        "the step's output: {stderr}"
    );
    assert!(
        stderr.contains("naming to docker.io/library/remote:1 done"),
        "{stderr}"
    );

    let (images, _) = s.ok(&["--addr", &addr, "images"]);
    assert!(
        images.contains("remote") && images.contains("base"),
        "{images}"
    );
    let (inspect, _) = s.ok(&["--addr", &addr, "inspect", "remote:1"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["RootFS"]["Layers"].as_array().unwrap().len(), 3);
    let layers = s.layers_text_through(&addr, "remote:1");
    assert!(
        layers.contains("hello\n") && !layers.contains("not sent"),
        ".dockerignore'd files never leave the client"
    );

    // File outputs come back from kilnd.
    let out_dir = s.dir.path().join("outputs");
    let (docker, local, tarball) = (
        out_dir.join("d.tar"),
        out_dir.join("rootfs"),
        out_dir.join("rootfs.tar"),
    );
    let outputs = [
        format!("type=docker,dest={}", docker.display()),
        format!("type=local,dest={}", local.display()),
        format!("type=tar,dest={}", tarball.display()),
    ];
    let mut args = vec!["--addr", addr.as_str(), "-t", "remote:1"];
    for o in &outputs {
        args.extend(["-o", o.as_str()]);
    }
    let out = s.build(dockerfile, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(local.join("ctx/hello.txt")).unwrap(),
        "hello\n"
    );
    assert!(!local.join("ctx/secret.log").exists());
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("listing"));
    let manifest = Command::new("tar")
        .args(["-xOf"])
        .arg(&docker)
        .arg("manifest.json")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&manifest.stdout).contains("remote:1"));

    // Rebuilt: all cached. A failing step: the same words and exit code as embedded.
    let out = s.build(dockerfile, &["--addr", &addr, "-t", "remote:1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .matches(" CACHED")
            .count(),
        2
    );
    let out = s.build(
        "FROM base:busybox\nRUN echo failing && exit 4\n",
        &["--addr", &addr],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("  failing\n"),
        "the step's last lines: {stderr}"
    );
    assert!(
        stderr.ends_with("error: [stage-0 2/2] RUN echo failing && exit 4 (Dockerfile line 2): did not complete successfully: exit code 4\n"),
        "{stderr}"
    );
    // A command kilnd does not serve yet says so instead of waiting for the store.
    // import streams the tarball.
    let tarball = crate::busybox::base_tarball(&s.dir.path().join("again"));
    let (digest, _) = s.ok(&[
        "--addr",
        &addr,
        "import",
        tarball.to_str().unwrap(),
        "again:1",
    ]);
    assert!(digest.starts_with("sha256:"), "{digest}");
    let (images, _) = s.ok(&["--addr", &addr, "images"]);
    assert!(images.contains("again"), "{images}");

    // save and load stream the archive through kilnd.
    let archive = s.dir.path().join("remote.tar");
    let id_and_layers = |text: &str| {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        (v[0]["Id"].clone(), v[0]["RootFS"]["Layers"].clone())
    };
    let before = id_and_layers(&s.ok(&["--addr", &addr, "inspect", "remote:1"]).0);
    s.ok(&[
        "--addr",
        &addr,
        "save",
        "-o",
        archive.to_str().unwrap(),
        "remote:1",
    ]);
    s.ok(&["--addr", &addr, "rmi", "remote:1"]);
    let (loaded, _) = s.ok(&["--addr", &addr, "load", "-i", archive.to_str().unwrap()]);
    assert_eq!(loaded, "Loaded image: remote:1\n");
    let after = id_and_layers(&s.ok(&["--addr", &addr, "inspect", "remote:1"]).0);
    assert_eq!(after, before, "the same image (ID, layers) came back");

    // tag, rmi, du, prune: as embedded.
    s.ok(&["--addr", &addr, "tag", "remote:1", "remote:2"]);
    let (removed, _) = s.ok(&["--addr", &addr, "rmi", "remote:2"]);
    assert_eq!(removed, "Untagged: remote:2\n", "as embedded");
    let out = s.kiln(&["--addr", &addr, "rmi", "nothere:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image: nothere:1"));
    let (du, _) = s.ok(&["--addr", &addr, "du"]);
    assert!(du.starts_with("TYPE") && du.contains("Images"), "{du}");
    let (pruned, _) = s.ok(&["--addr", &addr, "prune"]);
    assert!(pruned.contains("Total reclaimed space:"), "{pruned}");

    assert!(kilnd.stop().success(), "SIGTERM: a clean stop");
    assert!(!kilnd.socket.exists(), "the socket is removed");
}

#[test]
fn concurrent_builds_share_steps_and_a_dropped_client_cancels_only_its_own() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    // Twenty builds at once, each with its own context, sharing a first step.
    let children: Vec<_> = (0..20)
        .map(|i| {
            let dir = s.dir.path().join(format!("ctx{i}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join("Dockerfile"),
                format!(
                    "FROM base:busybox\nRUN sleep 1 && echo shared > /shared\nRUN echo {i} > /own\n"
                ),
            )
            .unwrap();
            crate::harness::kiln()
                .args(["--addr", &addr, "build", "--progress", "plain", "-t"])
                .arg(format!("many:{i}"))
                .arg(&dir)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut shared_ran = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        // The shared step is vertex #1 in every build.
        shared_ran += log.matches("#1 DONE").count();
    }
    assert_eq!(shared_ran, 1, "the shared step ran once for all twenty");

    // A client killed mid-build: its step's processes go, another build finishes.
    let dir = s.dir.path().join("slow");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("Dockerfile"),
        "FROM base:busybox\nRUN sleep 41.5\n",
    )
    .unwrap();
    let mut slow = crate::harness::kiln()
        .args(["--addr", &addr, "build"])
        .arg(&dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(PATIENCE, "the slow step to start", || running("sleep 41.5"));
    let other = s.build(
        "FROM base:busybox\nRUN echo other > /o\n",
        &["--addr", &addr],
    );
    slow.kill().unwrap();
    let _ = slow.wait();
    wait_until(
        PATIENCE,
        "the cancelled step's processes to be killed",
        || !running("sleep 41.5"),
    );
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(s.root.to_str().unwrap()),
        "no mount of the store left behind"
    );
}

#[test]
fn kill_9_of_kilnd_mid_build_then_restart() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let mut kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let dockerfile = "FROM base:busybox\nRUN echo one > /one\nRUN sleep 2.02 && echo two > /two\n";
    fs::write(s.context.join("Dockerfile"), dockerfile).unwrap();
    let client = crate::harness::kiln()
        .args(["--addr", &addr, "build", "-t", "crash:1"])
        .arg(&s.context)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(PATIENCE, "the second step to run", || running("sleep 2.02"));
    kilnd.child.kill().unwrap(); // SIGKILL
    kilnd.child.wait().unwrap();
    let out = client.wait_with_output().unwrap();
    assert!(!out.status.success(), "the client sees its build fail");

    // Restarted on the same store: consistent, and the build succeeds.
    let kilnd = Kilnd::start(&s);
    let out = s.build(dockerfile, &["--addr", &kilnd.addr(), "-t", "crash:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (images, _) = s.ok(&["--addr", &kilnd.addr(), "images"]);
    assert!(images.contains("crash"), "{images}");
    drop(kilnd);
    // With kilnd stopped: nothing half-done left in the store.
    assert!(
        fs::read_dir(s.root.join("steps"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "no step scratch left"
    );
}

#[test]
fn a_rebuild_sends_only_what_changed() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    s.many_files();
    // Old enough that no file counts as just written (see `remote::changes`).
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for entry in walk(&s.context.join("src")) {
        fs::File::options()
            .write(true)
            .open(&entry)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let dockerfile = "FROM base:busybox\nCOPY src /src\nRUN find /src -type f | wc -l > /count && cat /src/d000/f000.txt | head -1\n";
    let build = || {
        let out = s.build(dockerfile, &["--addr", &addr, "-t", "sync:1"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let first = context_bytes(&build());
    assert!(
        first > 20_000 * 512,
        "the first build sends everything: {first}"
    );
    let unchanged = build();
    assert!(
        context_bytes(&unchanged) <= 2048,
        "nothing changed, nothing sent: {unchanged}"
    );
    assert_eq!(unchanged.matches(" CACHED").count(), 2, "{unchanged}");

    let touched = s.context.join("src/d000/f000.txt");
    fs::write(&touched, "changed\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&touched)
        .unwrap()
        .set_modified(old)
        .unwrap();
    fs::remove_file(s.context.join("src/d199/f099.txt")).unwrap();
    let second = build();
    let sent = context_bytes(&second);
    assert!(
        sent <= 4096,
        "only the changed file: {sent} bytes\n{second}"
    );
    assert!(
        second.contains("changed"),
        "the step saw the new content: {second}"
    );
    let layers = s.layers_text_through(&addr, "sync:1");
    assert!(
        layers.contains("19999\n"),
        "the removed file is gone on kilnd's side too"
    );
}

/// Every file beneath `dir` (not directories), recursively.
pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn sigterm_lets_a_running_build_finish() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let mut kilnd = Kilnd::start(&s);
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox\nRUN sleep 2.01 && echo drained > /d\n",
    )
    .unwrap();
    let client = crate::harness::kiln()
        .args(["--addr", &kilnd.addr(), "build", "-t", "drain:1"])
        .arg(&s.context)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(PATIENCE, "the step to run", || running("sleep 2.01"));
    let status = kilnd.stop();
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the build in flight finished: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.success(), "then kilnd exited cleanly");
    assert!(s.layers_text("drain:1").contains("drained"));
}

/// The bytes of context kilnd said it received.
fn context_bytes(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("transferring context: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no context line in:\n{stderr}"))
}

/// Files in the store's blob directory.
fn blob_count(s: &Setup) -> usize {
    fs::read_dir(s.root.join("content/blobs/sha256")).map_or(0, Iterator::count)
}

#[test]
fn prune_waits_for_running_builds_and_rmi_leaves_their_blobs() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start_with(&s, &["--keep-storage", "off"]);
    let addr = kilnd.addr();
    let out = s.build(
        "FROM base:busybox\nRUN echo old > /old\n",
        &["--addr", &addr, "-t", "old:1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A build that waits, in its step, for a file in its cache mount.
    let gated = s.dir.path().join("gated");
    fs::create_dir_all(&gated).unwrap();
    fs::write(
        gated.join("Dockerfile"),
        "FROM base:busybox\nRUN echo first > /first\n\
         RUN --mount=type=cache,id=gate,target=/gate touch /gate/started && \
         while [ ! -e /gate/go ]; do sleep 0.05; done && echo passed > /passed\n",
    )
    .unwrap();
    let build = crate::harness::kiln()
        .args(["--addr", &addr, "build", "-t", "gated:1"])
        .arg(&gated)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let gate = || {
        fs::read_dir(s.root.join("cache-mounts"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("started").exists())
    };
    let gate = kiln_testing::wait_for(PATIENCE, "the gated step to start", gate);

    // rmi while a build runs: the tag goes, the blobs stay for later.
    let blobs = blob_count(&s);
    let (removed, _) = s.ok(&["--addr", &addr, "rmi", "old:1"]);
    assert!(
        removed.contains("Untagged") && !removed.contains("Deleted"),
        "{removed}"
    );
    assert_eq!(
        blob_count(&s),
        blobs,
        "no blob deleted under a running build"
    );

    // prune -a waits for the build: its layers, snapshots and cache mount stay.
    let mut prune = crate::harness::kiln()
        .args(["--addr", &addr, "prune", "-a"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // That prune does not return has no event to wait for: the test
    // gives it this long to (wrongly) return.
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert!(
        prune.try_wait().unwrap().is_none(),
        "prune returned while a build was running"
    );
    fs::write(gate.join("go"), b"").unwrap();
    let out = build.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = prune.wait().unwrap();
    assert!(status.success());
    let mut pruned = String::new();
    std::io::Read::read_to_string(&mut prune.stdout.take().unwrap(), &mut pruned).unwrap();
    assert!(
        pruned.contains("Deleted: sha256:"),
        "old:1's blobs went then:\n{pruned}"
    );
    let text = s.layers_text_through(&addr, "gated:1");
    assert!(text.contains("first") && text.contains("passed"), "{text}");
}

#[test]
fn keep_storage_collects_unused_cache_after_a_build() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start_with(&s, &["--keep-storage", "1B"]);
    let addr = kilnd.addr();
    let base = blob_count(&s);
    let dockerfile = "FROM base:busybox\nRUN echo collected > /c\n";
    // No tag: the step's layer is build cache only.
    let out = s.build(dockerfile, &["--addr", &addr, "--progress", "plain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Over a 1-byte bound the base's snapshot goes too (it is unpacked
    // again from its blob when the next build needs it); its blobs stay.
    // Snapshots and their short links (`snapshots/l/`, overlay2's way).
    let entries = |dir: std::path::PathBuf| {
        fs::read_dir(dir).map_or(0, |d| d.flatten().filter(|e| e.file_name() != "l").count())
    };
    let snapshots = || entries(s.root.join("snapshots")) + entries(s.root.join("snapshots/l"));
    wait_until(
        PATIENCE,
        "the build's unused blobs and every snapshot to be collected",
        || blob_count(&s) == base && snapshots() == 0,
    );
    assert_eq!(
        s.ok(&["--addr", &addr, "images"])
            .0
            .matches("busybox")
            .count(),
        1
    );
    // The step runs again: its cache went with them.
    let out = s.build(dockerfile, &["--addr", &addr, "--progress", "plain"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && log.contains("#1 DONE"), "{log}");
}

/// A raw Build call with `spec` (and an empty context): kilnd's error.
pub(crate) fn raw_build_error(kilnd: &Kilnd, spec: kiln_proto::control::v1::BuildSpec) -> String {
    let addr = kilnd.addr();
    let socket = std::path::PathBuf::from(addr.strip_prefix("unix://").unwrap());
    grpc(&socket, |channel| async move {
        let messages = vec![
            kiln_proto::control::v1::BuildInput {
                input: Some(kiln_proto::control::v1::build_input::Input::Spec(spec)),
            },
            kiln_proto::control::v1::BuildInput {
                input: Some(kiln_proto::control::v1::build_input::Input::Context(
                    kiln_proto::control::v1::ContextChunk {
                        data: vec![0u8; 1024],
                        eof: true,
                    },
                )),
            },
        ];
        let mut client = kiln_proto::control::v1::control_client::ControlClient::new(channel);
        let mut stream = match client.build(tokio_stream::iter(messages)).await {
            Ok(r) => r.into_inner(),
            Err(status) => return status.message().to_owned(),
        };
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("kilnd built it"),
                Err(status) => return status.message().to_owned(),
            }
        }
    })
}
