//! The overhead of one trivial RUN step (`true`), from request to layer:
//! spawn the helper, namespaces, overlay, /proc, /dev, /sys, pivot_root,
//! exec, wait, stub cleanup, and the upperdir as a layer tar; one row per
//! network (the default one also starts and stops slirp4netns).
//! `cargo bench -p kiln-worker --bench exec` (as root, with /bin/busybox;
//! `KILN_SANDBOX_COMPARE=name=path` runs another build's helper beside).

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
    // `KILN_SANDBOX_COMPARE=name=path,…` adds other builds' helpers (an
    // older commit's), run in turn with this one's through the same
    // requests, so that a noisy machine weighs on all of them alike.
    let mut helpers = vec![(
        "this build".to_owned(),
        Sandbox::new(env!("CARGO_BIN_EXE_kiln-sandbox")),
    )];
    for other in std::env::var("KILN_SANDBOX_COMPARE")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let (name, path) = other.split_once('=').expect("name=path");
        helpers.push((name.to_owned(), Sandbox::new(path)));
    }
    for (name, network) in [
        ("host", Network::Host),
        ("none", Network::None),
        ("default (slirp4netns)", Network::Private),
    ] {
        let mut times = vec![Vec::new(); helpers.len()];
        let mut failed: Vec<Option<String>> = vec![None; helpers.len()];
        for i in 0..RUNS {
            for (h, (_, sandbox)) in helpers.iter().enumerate() {
                if failed[h].is_some() {
                    continue;
                }
                let step = dir.path().join(format!("{name}-{h}-step{i}"));
                match run_true(sandbox, &step, &lower, network) {
                    Ok(ms) => times[h].push(ms),
                    // An older helper without this network.
                    Err(e) => failed[h] = Some(e),
                }
            }
        }
        for (((helper, _), mut times), failed) in helpers.iter().zip(times).zip(failed) {
            if let Some(e) = failed {
                println!("RUN true, network {name}, helper {helper}: {e}");
                continue;
            }
            times.sort_by(f64::total_cmp);
            println!(
                "RUN true, request to layer, network {name}, helper {helper}, {RUNS} runs: \
                 median {:.2} ms, min {:.2} ms, p90 {:.2} ms",
                times[RUNS / 2],
                times[0],
                times[RUNS * 9 / 10]
            );
        }
    }
}

const RUNS: usize = 50;

/// One `RUN true` in `step`, from request to layer tar; milliseconds.
fn run_true(
    sandbox: &Sandbox,
    step: &std::path::Path,
    lower: &std::path::Path,
    network: Network,
) -> Result<f64, String> {
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
        etc_files: etc_files(&d("etc"), "bench", &[], network).unwrap(),
        ulimits: Vec::new(),
        shm_size: 64 << 20,
        state_dir: d("s"),
    };
    let status = sandbox
        .run(&spec, &mut |_, _| {}, &Cancel::default())
        .map_err(|e| e.to_string())?;
    if status != 0 {
        return Err(format!("exit status {status}"));
    }
    let tar = layer::diff(&spec.rootfs.upperdir, Vec::new()).unwrap();
    std::hint::black_box(tar);
    Ok(start.elapsed().as_secs_f64() * 1e3)
}
