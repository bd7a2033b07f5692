//! The sandbox for real: the `kiln-sandbox` helper, overlayfs and
//! namespaces, on a busybox root filesystem (Debian's busybox-static).
//! Needs root; skipped with a notice otherwise.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_testing::wait_until;
use kiln_worker::layer;
use kiln_worker::sandbox::spec::{Mount, MountKind, Network, Rootfs, RunSpec};
use kiln_worker::sandbox::{Cancel, Sandbox, SandboxError, Stream, etc_files};

mod common;
use common::{busybox_rootfs, ready};

struct Step {
    dir: tempfile::TempDir,
    lower: PathBuf,
}

impl Step {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lower = busybox_rootfs(dir.path());
        Self { dir, lower }
    }

    fn spec(&self, name: &str, script: &str) -> RunSpec {
        let d = |sub: &str| {
            let p = self.dir.path().join(name).join(sub);
            fs::create_dir_all(&p).unwrap();
            p
        };
        RunSpec {
            rootfs: Rootfs {
                lowerdirs: vec![self.lower.clone()],
                upperdir: d("upper"),
                workdir: d("work"),
                target: d("merged"),
            },
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            hostname: "kiln-step".into(),
            network: Network::Host,
            privileged: false,
            mounts: vec![],
            etc_files: etc_files(&d("etc"), "kiln-step", &[], Network::Host).unwrap(),
            ulimits: Vec::new(),
            shm_size: 64 << 20,
            state_dir: d("state"),
        }
    }
}

fn sandbox() -> Sandbox {
    Sandbox::new(env!("CARGO_BIN_EXE_kiln-sandbox"))
}

/// Runs `spec`; returns (status, stdout, stderr).
fn run(spec: &RunSpec) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = sandbox()
        .run(
            spec,
            &mut |stream, chunk| match stream {
                Stream::Stdout => out.extend_from_slice(chunk),
                Stream::Stderr => err.extend_from_slice(chunk),
            },
            &Cancel::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    (
        status,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

fn layer_entries(upper: &Path) -> Vec<String> {
    let tar = layer::diff(upper, Vec::new()).unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn changes_become_exactly_the_layer() {
    if !ready() {
        return;
    }
    let step = Step::new();
    let spec = step.spec(
        "s",
        "echo hi > /new && rm /delete.me && rm -rf /dir && mkdir /dir && echo x > /dir/y",
    );
    let (status, _, err) = run(&spec);
    assert_eq!(status, 0, "{err}");
    assert_eq!(
        layer_entries(&spec.rootfs.upperdir),
        [".wh.delete.me", "dir/", "dir/.wh..wh..opq", "dir/y", "new"],
        "no /proc, /dev, /sys or /etc/hosts stub is left in the layer"
    );
}

#[test]
fn exit_codes_env_cwd_user_and_output() {
    if !ready() {
        return;
    }
    let step = Step::new();
    assert_eq!(run(&step.spec("a", "exit 3")).0, 3);
    let mut spec = step.spec(
        "b",
        "echo $FOO; pwd; id -u; id -g; id -G; echo $HOME; echo oops >&2",
    );
    spec.env.push("FOO=bar".into());
    spec.cwd = "/work/dir".into();
    spec.user = "app".into();
    let (status, out, err) = run(&spec);
    assert_eq!(status, 0, "{err}");
    assert_eq!(out, "bar\n/work/dir\n1000\n1000\n1000 50\n/home/app\n");
    assert_eq!(err, "oops\n");
    assert!(
        layer_entries(&spec.rootfs.upperdir).contains(&"work/dir/".to_owned()),
        "the missing cwd was created"
    );

    let mut spec = step.spec("c", "true");
    spec.user = "ghost".into();
    let e = sandbox()
        .run(&spec, &mut |_, _| {}, &Cancel::default())
        .unwrap_err();
    assert!(
        matches!(&e, SandboxError::Setup(m) if m == "user \"ghost\" not found in /etc/passwd"),
        "{e}"
    );
    let mut spec = step.spec("d", "true");
    spec.args = vec!["no-such-tool".into()];
    let e = sandbox()
        .run(&spec, &mut |_, _| {}, &Cancel::default())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("\"no-such-tool\": executable file not found in $PATH"),
        "{e}"
    );
}

#[test]
fn isolation() {
    if !ready() {
        return;
    }
    let step = Step::new();
    let script = r#"
        echo "pid=$$"
        echo "procs=$(ls /proc | grep -c '^[0-9]')"
        mount -t tmpfs none /tmp 2>/dev/null && echo mount=yes || echo mount=no
        (echo kiln > /proc/sys/kernel/domainname) 2>/dev/null && echo procsys=writable || echo procsys=ro
        echo "host=$(hostname)"
        test -e /work && echo hostfs=visible || echo hostfs=hidden
        cat /etc/hostname
        ls /dev | grep -c .
    "#;
    let (status, out, err) = run(&step.spec("i", script));
    assert_eq!(status, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pid=1", "{out}");
    let procs: u32 = lines[1].trim_start_matches("procs=").parse().unwrap();
    assert!(procs <= 5, "only the step's own processes: {out}");
    assert_eq!(
        &lines[2..7],
        [
            "mount=no",
            "procsys=ro",
            "host=kiln-step",
            "hostfs=hidden",
            "kiln-step"
        ],
        "{out}"
    );
}

#[test]
fn network_none_cannot_reach_the_host_and_default_can() {
    if !ready() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            drop(conn);
        }
    });
    let step = Step::new();
    let script = format!("nc -w 3 127.0.0.1 {port} </dev/null && echo reached || echo unreachable");
    let (_, out, _) = run(&step.spec("host", &script));
    assert_eq!(out, "reached\n");
    let mut spec = step.spec("none", &script);
    spec.network = Network::None;
    spec.etc_files =
        etc_files(&spec.state_dir.join("etc"), "kiln-step", &[], Network::None).unwrap();
    let (_, out, _) = run(&spec);
    assert_eq!(out, "unreachable\n");
}

fn sleepers() -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00987654\x00"))
        .count()
}

#[test]
fn cancel_kills_every_process_of_the_step() {
    if !ready() {
        return;
    }
    let step = Step::new();
    let spec = step.spec("k", "sleep 987654 & sleep 987654 & echo started; wait");
    let cancel = Cancel::default();
    let canceller = cancel.clone();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = started.clone();
    let runner = std::thread::spawn(move || {
        sandbox().run(
            &spec,
            &mut |_, chunk| {
                if chunk.starts_with(b"started") {
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            },
            &cancel,
        )
    });
    wait_until(Duration::from_secs(30), "the step to start", || {
        started.load(std::sync::atomic::Ordering::SeqCst) && sleepers() >= 2
    });
    canceller.cancel();
    let result = runner.join().unwrap();
    assert!(matches!(result, Err(SandboxError::Cancelled)), "{result:?}");
    wait_until(
        Duration::from_secs(30),
        "every sleep 987654 to end after the cancel",
        || sleepers() == 0,
    );
}

#[test]
fn mounts() {
    if !ready() {
        return;
    }
    let step = Step::new();
    let host = step.dir.path().join("host-data");
    fs::create_dir_all(&host).unwrap();
    fs::write(host.join("input"), "from the host").unwrap();
    let cache = step.dir.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    let secret = step.dir.path().join("secret");
    fs::write(&secret, "s3cr3t").unwrap();
    let mounts = vec![
        Mount {
            target: "/src".into(),
            kind: MountKind::Bind {
                source: host.clone(),
                readonly: true,
            },
        },
        Mount {
            target: "/root/.cache".into(),
            kind: MountKind::Bind {
                source: cache.clone(),
                readonly: false,
            },
        },
        Mount {
            target: "/scratch".into(),
            kind: MountKind::Tmpfs { size: 1 << 20 },
        },
        Mount {
            target: "/run/secrets/token".into(),
            kind: MountKind::Bind {
                source: secret.clone(),
                readonly: true,
            },
        },
    ];
    let script = r#"
        cat /src/input; echo
        (echo x > /src/new) 2>/dev/null && echo src=rw || echo src=ro
        n=$(cat /root/.cache/count 2>/dev/null || echo 0); echo $((n + 1)) > /root/.cache/count; echo cache=$((n + 1))
        echo big > /scratch/file && echo tmpfs=ok
        echo secret=$(cat /run/secrets/token)
    "#;
    for (i, expected_cache) in ["cache=1", "cache=2"].into_iter().enumerate() {
        let mut spec = step.spec(&format!("m{i}"), script);
        spec.mounts = mounts.clone();
        let (status, out, err) = run(&spec);
        assert_eq!(status, 0, "{err}");
        assert_eq!(
            out,
            format!("from the host\nsrc=ro\n{expected_cache}\ntmpfs=ok\nsecret=s3cr3t\n")
        );
        assert_eq!(
            layer_entries(&spec.rootfs.upperdir),
            Vec::<String>::new(),
            "mounts leave nothing in the layer"
        );
    }
    assert!(!host.join("new").exists());
}
