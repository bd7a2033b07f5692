//! The overhead of one trivial RUN step (`true`), from request to layer:
//! spawn the helper, namespaces, overlay, /proc, /dev, /sys, pivot_root,
//! exec, wait, stub cleanup, and the upperdir as a layer tar; one row per
//! network (the default one also starts and stops slirp4netns).
//! `cargo bench -p kiln-worker --bench exec` (as root, with /bin/busybox).

use std::fs;
use std::os::unix::fs::symlink;
use std::time::Instant;

use kiln_worker::layer;
use kiln_worker::sandbox::spec::{Network, Rootfs, RunSpec};
use kiln_worker::sandbox::{Cancel, Sandbox, etc_files};

fn main() {
    if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/bin/busybox").is_file() {
        eprintln!("needs root and /bin/busybox");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    fs::create_dir_all(lower.join("bin")).unwrap();
    fs::create_dir_all(lower.join("etc")).unwrap();
    fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
    symlink("busybox", lower.join("bin/true")).unwrap();
    let sandbox = Sandbox::new(env!("CARGO_BIN_EXE_kiln-sandbox"));
    for (name, network) in [
        ("host", Network::Host),
        ("none", Network::None),
        ("default (slirp4netns)", Network::Private),
    ] {
        bench(&sandbox, dir.path(), &lower, name, network);
    }
}

fn bench(
    sandbox: &Sandbox,
    dir: &std::path::Path,
    lower: &std::path::Path,
    name: &str,
    network: Network,
) {
    let mut times = Vec::new();
    for i in 0..50 {
        let step = dir.join(format!("{name}-step{i}"));
        let d = |s: &str| {
            let p = step.join(s);
            fs::create_dir_all(&p).unwrap();
            p
        };
        let start = Instant::now();
        let spec = RunSpec {
            rootfs: Rootfs {
                lowerdirs: vec![lower.to_owned()],
                upperdir: d("u"),
                workdir: d("w"),
                target: d("m"),
            },
            args: vec!["true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            hostname: "bench".into(),
            network,
            privileged: false,
            mounts: vec![],
            etc_files: etc_files(&d("etc"), "bench", network).unwrap(),
            state_dir: d("s"),
        };
        let status = sandbox
            .run(&spec, &mut |_, _| {}, &Cancel::default())
            .unwrap();
        assert_eq!(status, 0);
        let tar = layer::diff(&spec.rootfs.upperdir, Vec::new()).unwrap();
        std::hint::black_box(tar);
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "RUN true, request to layer, network {name}, 50 runs: median {:.2} ms, min {:.2} ms, p90 {:.2} ms",
        times[25], times[0], times[45]
    );
}
