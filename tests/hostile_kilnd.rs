//! kilnd and the farm against their own clients (issue 13, item 9): a
//! client cannot list or build with another client's context session by
//! naming its host and directory; the farm's blob calls need the worker
//! token; a token file others can read is refused; `--cache-to
//! …,cache-mounts=true` exports only the build's own cache mounts; a
//! client cannot make kilnd speak plain HTTP (with kilnd's credentials) to
//! a registry kilnd's operator did not allow (`kilnd --insecure-registry`).

use std::fs;
use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kiln_proto::control::v1::{self as control, control_client::ControlClient};
use kiln_proto::farm::v1::{self as farm, farm_client::FarmClient};
use kiln_testing::wait_until;

use crate::busybox::{Setup, assert_stderr_has, ready};
use crate::harness::{PATIENCE, binary};
use crate::kilnd::{Kilnd, grpc, raw_build_error};
use crate::registry::{Registry, registry_ready};

const SECRET: &str = "client-a-secret-7f3e";

fn socket_of(kilnd: &Kilnd) -> std::path::PathBuf {
    kilnd
        .addr()
        .strip_prefix("unix://")
        .expect("a unix socket")
        .into()
}

/// The key sessions had before kilnd issued them: host and directory.
fn host_path_key(context: &Path) -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "{}:{}",
        host.trim(),
        context.canonicalize().unwrap().display()
    )
}

/// A raw Build call with `session`, `dockerfile` and an empty context: the
/// error kilnd answers, or `None` when the build succeeded.
fn build_in_session(socket: &Path, session: &str, dockerfile: &str) -> Option<String> {
    grpc(socket, |channel| async move {
        let mut client = ControlClient::new(channel);
        let spec = control::BuildSpec {
            dockerfile: dockerfile.to_owned(),
            session: session.to_owned(),
            tags: vec!["stolen:1".into()],
            ..Default::default()
        };
        let messages = vec![
            control::BuildInput {
                input: Some(control::build_input::Input::Spec(spec)),
            },
            control::BuildInput {
                input: Some(control::build_input::Input::Context(
                    control::ContextChunk {
                        data: vec![0u8; 1024],
                        eof: true,
                    },
                )),
            },
        ];
        let mut stream = match client.build(tokio_stream::iter(messages)).await {
            Ok(r) => r.into_inner(),
            Err(status) => return Some(status.message().to_owned()),
        };
        loop {
            match stream.message().await {
                Ok(Some(control::BuildOutput {
                    output: Some(control::build_output::Output::Result(_)),
                })) => return None,
                Ok(Some(_)) => {}
                Ok(None) => return Some("the build ended without a result".into()),
                Err(status) => return Some(status.message().to_owned()),
            }
        }
    })
}

#[test]
fn a_client_cannot_name_another_clients_session() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("secret.txt"), format!("{SECRET}\n")).unwrap();
    let kilnd = Kilnd::start(&s);
    let socket = socket_of(&kilnd);
    // Client A, with a home of its own (where it keeps its session ids).
    let home_a = s.dir.path().join("home-a");
    fs::create_dir_all(&home_a).unwrap();
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox\nCOPY . /ctx\n",
    )
    .unwrap();
    let out = crate::harness::kiln()
        .env("KILN_ROOT", &s.root)
        .env("HOME", &home_a)
        .env_remove("XDG_STATE_HOME")
        .args(["build", "--addr", &kilnd.addr(), "-t", "a:1"])
        .arg(&s.context)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Client B names A's session by its host and directory.
    let guessed = host_path_key(&s.context);
    let state = grpc(&socket, |channel| {
        let session = guessed.clone();
        async move {
            ControlClient::new(channel)
                .context_state(control::ContextStateRequest { session })
                .await
                .unwrap()
                .into_inner()
        }
    });
    assert!(
        state.files.is_empty(),
        "B listed A's tree: {:?}",
        state.files.iter().map(|f| &f.path).collect::<Vec<_>>()
    );
    let stolen = build_in_session(
        &socket,
        &guessed,
        "FROM base:busybox\nCOPY secret.txt /stolen\n",
    );
    let error = stolen.expect("B built in A's session");
    assert!(error.contains("did not issue"), "{error}");
    // An id of the right form that kilnd never issued is no better.
    let error = build_in_session(
        &socket,
        &"0".repeat(32),
        "FROM base:busybox\nCOPY secret.txt /stolen\n",
    )
    .expect("B built in a made-up session");
    assert!(error.contains("did not issue"), "{error}");
    let images = s.ok(&["--addr", &kilnd.addr(), "images"]).0;
    assert!(!images.contains("stolen"), "{images}");
    // A's session is intact: its rebuild is all cached.
    let out = crate::harness::kiln()
        .env("KILN_ROOT", &s.root)
        .env("HOME", &home_a)
        .env_remove("XDG_STATE_HOME")
        .args(["build", "--addr", &kilnd.addr(), "-t", "a:1"])
        .arg(&s.context)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && log.contains("CACHED"), "{log}");
}

/// A token file of `mode` with `token` in `dir`.
fn token_file(dir: &Path, name: &str, token: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("{token}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// ReadBlob of `digest` with `token` (none: no metadata): kilnd's refusal,
/// or `None` when it sent the blob.
fn read_blob(socket: &Path, digest: &str, token: Option<&str>) -> Option<tonic::Status> {
    grpc(socket, |channel| async move {
        let mut request = tonic::Request::new(farm::ReadBlobRequest {
            digest: digest.to_owned(),
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("x-kiln-worker-token", token.parse().unwrap());
        }
        let mut stream = match FarmClient::new(channel).read_blob(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return Some(status),
        };
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
}

/// WriteBlob of `data` without a token: kilnd's refusal, or `None`.
fn write_blob(socket: &Path, data: &[u8]) -> Option<tonic::Status> {
    let digest = format!("sha256:{}", sha256_hex(data));
    let chunk = farm::BlobChunk {
        digest,
        data: data.to_vec(),
    };
    grpc(socket, |channel| async move {
        FarmClient::new(channel)
            .write_blob(tokio_stream::iter(vec![chunk]))
            .await
            .err()
    })
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), data)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

#[test]
fn farm_blob_calls_need_the_token() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let token = token_file(s.dir.path(), "token", "farm-secret", 0o600);
    let kilnd = Kilnd::start_with(&s, &["--worker-token-file", token.to_str().unwrap()]);
    let socket = socket_of(&kilnd);
    let blob = fs::read_dir(s.root.join("content/blobs/sha256"))
        .unwrap()
        .flatten()
        .next()
        .expect("the base image's blobs")
        .file_name();
    let digest = format!("sha256:{}", blob.to_string_lossy());

    let refused = read_blob(&socket, &digest, None).expect("ReadBlob without the token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = read_blob(&socket, &digest, Some("guess")).expect("ReadBlob with a wrong token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        read_blob(&socket, &digest, Some("farm-secret")).is_none(),
        "ReadBlob with the token"
    );

    let planted = b"planted by a caller without the token";
    let refused = write_blob(&socket, planted).expect("WriteBlob without the token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let path = s
        .root
        .join("content/blobs/sha256")
        .join(sha256_hex(planted));
    assert!(!path.exists(), "the blob was stored");
}

/// `command` must exit with an error saying `needle`.
fn exits_with(mut command: Command, needle: &str) {
    /// Killed when dropped: one that accepted the token file runs on.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut running = Running(command.stderr(Stdio::piped()).spawn().unwrap());
    let what = format!("{command:?} to refuse and exit");
    wait_until(PATIENCE, &what, || running.0.try_wait().unwrap().is_some());
    let status = running.0.wait().unwrap();
    let mut stderr = String::new();
    let mut pipe = running.0.stderr.take().unwrap();
    pipe.read_to_string(&mut stderr).unwrap();
    assert!(!status.success() && stderr.contains(needle), "{stderr}");
}

#[test]
fn a_token_file_others_can_read_is_refused() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let token = token_file(s.dir.path(), "token", "farm-secret", 0o644);
    let socket = s.dir.path().join("kilnd.sock");
    let mut kilnd = Command::new(binary("kilnd"));
    kilnd
        .env("KILN_ROOT", &s.root)
        .arg("--addr")
        .arg(format!("unix://{}", socket.display()))
        .arg("--worker-token-file")
        .arg(&token);
    exits_with(kilnd, "mode 0644");
    let mut worker = Command::new(binary("kiln-worker"));
    worker
        .arg("--root")
        .arg(s.dir.path().join("worker"))
        .arg("--kilnd")
        .arg(format!("unix://{}", socket.display()))
        .args(["--id", "w1"])
        .arg("--token-file")
        .arg(&token);
    exits_with(worker, "must not be readable by others");
}

#[test]
fn cache_mounts_export_holds_only_the_builds_own() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::with_auth("");
    let cache = format!("{}/cache/mounts:1", registry.addr);
    let a = Setup::new();
    let other = "FROM base:busybox\nRUN --mount=type=cache,target=/c,id=other-build echo other-secret > /c/token\n";
    let out = a.build(other, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mine = "FROM base:busybox\nRUN --mount=type=cache,target=/c,id=mine echo mine > /c/seen\n";
    let to = format!("type=registry,ref={cache},cache-mounts=true");
    let out = a.build(mine, &["--cache-to", &to]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let b = Setup::new();
    let from = format!("type=registry,ref={cache}");
    let out = b.build(mine, &["--cache-from", &from]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("1 cache mounts"), "{log}");
    let names: Vec<String> = fs::read_dir(b.root.join("cache-mounts"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("mine-")) && !names.is_empty(),
        "{names:?}"
    );
}

/// A "registry" that only notes connections: a listener on a free
/// loopback port, named `0.0.0.0:PORT` — not a loopback name, so kiln
/// speaks plain HTTP to it only when told to. Each connection's first
/// bytes are kept and the connection closed, so that a client it got
/// fails at once instead of waiting for an answer.
struct Tripwire {
    host: String,
    /// The first bytes of each connection so far.
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tripwire {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let host = format!("0.0.0.0:{}", listener.local_addr().unwrap().port());
        let (seen, stop) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || Self::watch(&listener, &seen, &stop))
        };
        Self {
            host,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn watch(listener: &TcpListener, seen: &Mutex<Vec<Vec<u8>>>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => seen.lock().unwrap().push(first_bytes(conn)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("accepting on the tripwire: {e}"),
            }
        }
    }

    /// The first bytes of each connection made so far.
    fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Up to 8 bytes a client sends first (a TLS handshake, or `GET /v2/`).
fn first_bytes(mut conn: TcpStream) -> Vec<u8> {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut first = Vec::new();
    let _ = (&mut conn).take(8).read_to_end(&mut first);
    first
}

/// A raw Pull call asking for plain HTTP to `host`: kilnd's answer.
fn raw_pull(socket: &Path, name: &str, host: &str) -> Result<(), tonic::Status> {
    let request = control::PullRequest {
        name: name.to_owned(),
        insecure_registries: vec![host.to_owned()],
        ..Default::default()
    };
    grpc(socket, |channel| async move {
        ControlClient::new(channel).pull(request).await.map(drop)
    })
}

#[test]
fn a_client_gets_plain_http_only_to_registries_kilnd_allows() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let tripwire = Tripwire::new();
    let host = tripwire.host.clone();
    let image = format!("{host}/hostile/base:1");
    let refusal =
        format!("plain HTTP to registry {host} is not allowed by build daemon configuration");
    let remedy = format!("kilnd --insecure-registry {host}");
    {
        // Started without an allow-list: no client gets plain HTTP.
        let kilnd = Kilnd::start(&s);
        let addr = kilnd.addr();
        // In the store: a push would have something to send.
        s.ok(&["--addr", &addr, "tag", "base:busybox", &image]);
        let dockerfile = format!("FROM {image}\nRUN true\n");
        let insecure = ["--insecure-registry", host.as_str()];
        let build_flags = [&["--addr", &addr, "--pull=always"][..], &insecure].concat();
        let attempts = [
            ("build", s.build(&dockerfile, &build_flags)),
            (
                "pull",
                s.kiln(&[&["--addr", &addr, "pull"][..], &insecure, &[&image]].concat()),
            ),
            (
                "push",
                s.kiln(&[&["--addr", &addr, "push"][..], &insecure, &[&image]].concat()),
            ),
        ];
        for (what, out) in &attempts {
            assert!(!out.status.success(), "{what} went through");
            assert_stderr_has(out, &refusal);
            assert_stderr_has(out, &remedy);
        }
        // A client other than the CLI: the same refusal, PERMISSION_DENIED.
        let spec = control::BuildSpec {
            dockerfile: dockerfile.clone(),
            pull_policy: control::PullPolicy::Always as i32,
            registry: Some(control::RegistryOptions {
                insecure: vec![host.clone()],
            }),
            ..Default::default()
        };
        let error = raw_build_error(&kilnd, spec);
        assert!(error.contains(&refusal), "{error}");
        let status = raw_pull(&socket_of(&kilnd), &image, &host).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains(&remedy), "{status:?}");
        // Every call above has returned: a connection would have been seen.
        assert_eq!(
            tripwire.seen(),
            Vec::<Vec<u8>>::new(),
            "kilnd reached the registry it refused"
        );
    }

    // Allowed by kilnd's operator: a client that asks gets plain HTTP.
    let kilnd = Kilnd::start_with(&s, &["--insecure-registry", &host]);
    let out = s.kiln(&[
        "--addr",
        &kilnd.addr(),
        "pull",
        "--insecure-registry",
        &host,
        &image,
    ]);
    // Nothing answers there: the pull fails, and not with the refusal.
    assert!(!out.status.success(), "{}", stderr_of(&out));
    assert!(!stderr_of(&out).contains(&refusal), "{}", stderr_of(&out));
    let seen = tripwire.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|b| b.as_slice() == b"GET /v2/"),
        "plain HTTP to the allowed registry, not TLS: {seen:?}"
    );
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn kilnd_takes_only_hosts_for_its_insecure_registries() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    for (value, says) in [
        ("http://registry.lan", "a host, without a scheme"),
        ("registry.lan/path", "a host, without a path or a list"),
        ("registry.lan:99999", "a port from 1 to 65535"),
    ] {
        let mut kilnd = Command::new(binary("kilnd"));
        kilnd
            .env("KILN_ROOT", &s.root)
            .arg("--addr")
            .arg(format!(
                "unix://{}",
                s.dir.path().join("kilnd.sock").display()
            ))
            .args(["--insecure-registry", value]);
        exits_with(kilnd, &format!("--insecure-registry \"{value}\": {says}"));
    }
}
