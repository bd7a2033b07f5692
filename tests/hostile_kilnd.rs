//! kilnd and the farm against their own clients (issue 13, item 9): a
//! client cannot list or build with another client's context session by
//! naming its host and directory; the farm's blob calls need the worker
//! token; a token file others can read is refused; `--cache-to
//! …,cache-mounts=true` exports only the build's own cache mounts.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use kiln_proto::control::v1::{self as control, control_client::ControlClient};
use kiln_proto::farm::v1::{self as farm, farm_client::FarmClient};
use kiln_testing::wait_until;

use crate::busybox::{Setup, ready};
use crate::harness::{PATIENCE, binary};
use crate::kilnd::{Kilnd, grpc};
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

/// `program args` must exit with an error saying `needle`.
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
    let what = format!("{command:?} to refuse the token file and exit");
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
