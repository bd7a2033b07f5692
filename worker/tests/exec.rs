//! Exec ops on a worker: cache mounts by id and sharing, secrets as files
//! and environment variables, binds from layers and the context. Needs
//! root; skipped with a notice otherwise.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use kiln_worker::exec::{ExecError, ExecMount, ExecRequest, Sharing, Worker};
use kiln_worker::layer;
use kiln_worker::sandbox::spec::Network;
use kiln_worker::sandbox::{Cancel, Sandbox, Stream};

mod common;
use common::{busybox_rootfs, ready};

fn worker(dir: &Path) -> Worker {
    Worker::new(
        dir.join("worker"),
        Sandbox::new(env!("CARGO_BIN_EXE_kiln-sandbox")),
    )
}

fn request(rootfs: &Path, script: &str, mounts: Vec<ExecMount>) -> ExecRequest {
    ExecRequest {
        rootfs: vec![rootfs.to_owned()],
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        network: Network::Host,
        privileged: false,
        mounts,
        sandbox: Default::default(),
        platform: String::new(),
    }
}

/// Runs and returns (exit code, stdout, layer entries); discards the step.
fn run(w: &Worker, req: &ExecRequest) -> (i32, String, Vec<String>) {
    let mut out = Vec::new();
    let outcome = w
        .exec(
            req,
            &mut |s, c| {
                if s == Stream::Stdout {
                    out.extend_from_slice(c)
                }
            },
            &Cancel::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let tar = layer::diff(&outcome.layer, Vec::new()).unwrap();
    let entries = tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    let code = outcome.exit_code;
    w.discard(outcome).unwrap();
    (code, String::from_utf8(out).unwrap(), entries)
}

fn cache(id: &str, sharing: Sharing) -> ExecMount {
    ExecMount::Cache {
        target: "/cache".into(),
        id: id.into(),
        sharing,
        uid: 1000,
        gid: 1000,
        mode: 0o750,
        readonly: false,
        seed: None,
    }
}

#[test]
fn cache_mounts_persist_by_id_and_stay_out_of_the_layer() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let w = worker(dir.path());
    let script = "n=$(cat /cache/n 2>/dev/null || echo 0); echo $((n + 1)) > /cache/n; cat /cache/n; stat -c '%u:%g %a' /cache";
    for expected in ["1\n1000:1000 750\n", "2\n1000:1000 750\n"] {
        let (code, out, layer) = run(
            &w,
            &request(
                &rootfs,
                script,
                vec![cache("/root/.cache/pip", Sharing::Shared)],
            ),
        );
        assert_eq!((code, out.as_str()), (0, expected));
        assert_eq!(layer, Vec::<String>::new());
    }
    let (_, out, _) = run(
        &w,
        &request(&rootfs, script, vec![cache("another", Sharing::Shared)]),
    );
    assert!(out.starts_with("1\n"), "another id, another cache");
}

#[test]
fn locked_caches_serialize_and_private_ones_do_not_share() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let w = Arc::new(worker(dir.path()));
    let script = "if [ -e /cache/inside ]; then echo overlap; fi; touch /cache/inside; sleep 0.4; rm /cache/inside; ls /cache | grep -c . || true";
    let both = |sharing: Sharing| -> Vec<String> {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (w, rootfs) = (w.clone(), rootfs.clone());
                std::thread::spawn(move || {
                    run(
                        &w,
                        &request(&rootfs, script, vec![cache("shared-id", sharing)]),
                    )
                    .1
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    for out in both(Sharing::Locked) {
        assert!(
            !out.contains("overlap"),
            "locked: one step at a time: {out}"
        );
    }
    for out in both(Sharing::Private) {
        assert!(
            !out.contains("overlap"),
            "private: a busy cache is not shared: {out}"
        );
    }
}

#[test]
fn secrets_as_files_and_environment_variables() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let w = worker(dir.path())
        .with_secret("token", b"s3cr3t".to_vec())
        .with_secret("aws", b"AKIA123".to_vec());
    let mounts = vec![
        ExecMount::Secret {
            id: "token".into(),
            target: None,
            env: None,
            uid: 1000,
            gid: 0,
            mode: 0o400,
            required: true,
        },
        ExecMount::Secret {
            id: "aws".into(),
            target: None,
            env: Some("AWS_KEY".into()),
            uid: 0,
            gid: 0,
            mode: 0o400,
            required: false,
        },
        ExecMount::Secret {
            id: "absent".into(),
            target: None,
            env: None,
            uid: 0,
            gid: 0,
            mode: 0o400,
            required: false,
        },
    ];
    let script = "cat /run/secrets/token; echo; stat -c '%u %a' /run/secrets/token; echo $AWS_KEY; test -e /run/secrets/absent || echo no-absent; echo $AWS_KEY > /leak-check-env-is-fine";
    let (code, out, layer) = run(&w, &request(&rootfs, script, mounts));
    assert_eq!(code, 0);
    assert_eq!(out, "s3cr3t\n1000 400\nAKIA123\nno-absent\n");
    assert_eq!(
        layer,
        ["leak-check-env-is-fine"],
        "no secret file, no /run/secrets stub in the layer"
    );
    let missing = vec![ExecMount::Secret {
        id: "nope".into(),
        target: None,
        env: None,
        uid: 0,
        gid: 0,
        mode: 0o400,
        required: true,
    }];
    let e = w
        .exec(
            &request(&rootfs, "true", missing),
            &mut |_, _| {},
            &Cancel::default(),
        )
        .unwrap_err();
    assert!(
        matches!(e, ExecError::MissingSecret(ref id) if id == "nope"),
        "{e}"
    );
    assert!(
        fs::read_dir(dir.path().join("worker/steps")).map_or(true, |d| d.count() == 0),
        "a failed step leaves no files"
    );
}

#[test]
fn binds_from_layers_and_the_context_are_read_only_and_resolved_inside() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let (lower, upper) = (dir.path().join("l1"), dir.path().join("l2"));
    fs::create_dir_all(lower.join("out")).unwrap();
    fs::write(lower.join("out/bin.txt"), "from the lower layer").unwrap();
    fs::create_dir_all(upper.join("out")).unwrap();
    fs::write(upper.join("out/extra.txt"), "from the upper layer").unwrap();
    // A symlink in the layers to the host's root resolves inside the layers.
    symlink("/", upper.join("rootlink")).unwrap();
    let context = dir.path().join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(context.join("requirements.txt"), "flask").unwrap();
    let mounts = vec![
        ExecMount::Bind {
            target: "/build".into(),
            layers: vec![upper.clone(), lower.clone()],
            path: "/out".into(),
            readonly: true,
        },
        ExecMount::Bind {
            target: "/ctx".into(),
            layers: vec![context.clone()],
            path: "/".into(),
            readonly: true,
        },
        ExecMount::Bind {
            target: "/root-via-link".into(),
            layers: vec![upper.clone(), lower.clone()],
            path: "/rootlink".into(),
            readonly: true,
        },
    ];
    let script = "cat /build/bin.txt; echo; cat /build/extra.txt; echo; cat /ctx/requirements.txt; echo; (touch /ctx/new) 2>/dev/null && echo rw || echo ro; ls /root-via-link | grep -c . ; test -e /root-via-link/proc && echo host || echo inside";
    let (code, out, layer) = run(&worker(dir.path()), &request(&rootfs, script, mounts));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "from the lower layer\nfrom the upper layer\nflask\nro\n2\ninside\n"
    );
    assert_eq!(layer, Vec::<String>::new());
    assert!(!context.join("new").exists());
}
