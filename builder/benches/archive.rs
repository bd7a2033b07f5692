//! `kiln load` and `kiln save` of an image with a 1 GiB layer: wall time and
//! peak RSS of the real binary (`cargo bench -p kiln-builder --bench
//! archive`), against reading and hashing the same bytes in one process.
//! Needs GNU time (`/usr/bin/time`, Debian package `time`) for peak RSS.
//! `KILN_BENCH_DIR` chooses the scratch directory (default /var/tmp).

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kiln_cache::Hasher;

const LAYER_BYTES: usize = 1 << 30;
const RUNS: usize = 3;

#[path = "../../tests/noise.rs"]
mod noise;
use noise::noise;

/// Runs `kiln args…` under GNU time: (seconds, peak RSS in KiB).
fn timed(root: &Path, args: &[&str]) -> (f64, u64) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_ROOT", root)
        .output()
        .expect("/usr/bin/time (Debian package `time`)");
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut fields = stderr.lines().last().unwrap_or_default().split_whitespace();
    let secs = fields
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    let kib = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (secs, kib)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let scratch = std::env::var_os("KILN_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into());
    let dir = tempfile::tempdir_in(scratch).unwrap();
    let files = dir.path().join("files");
    fs::create_dir(&files).unwrap();
    noise(&files.join("big.bin"), LAYER_BYTES);
    let tarball = dir.path().join("layer.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&files)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    fs::remove_dir_all(&files).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();

    // The floor: read the bytes once and hash them.
    let mut base = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let mut file = File::open(&tarball).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut h = Hasher::default();
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        std::hint::black_box(h.finish());
        base.push(start.elapsed().as_secs_f64());
    }
    let base = median(base);

    // What any durable store pays on top: writing the bytes and fsync.
    let mut durable = Vec::new();
    for _ in 0..RUNS {
        let copy = dir.path().join("copy");
        let start = Instant::now();
        let mut out = File::create(&copy).unwrap();
        std::io::copy(&mut File::open(&tarball).unwrap(), &mut out).unwrap();
        out.sync_all().unwrap();
        durable.push(start.elapsed().as_secs_f64());
        fs::remove_file(&copy).unwrap();
    }
    let durable = median(durable);

    let source = dir.path().join("source");
    let (import_t, import_rss) = timed(&source, &["import", &path(&tarball), "big:1"]);
    fs::remove_file(&tarball).unwrap();
    let mut rows: Vec<(String, f64, u64)> = vec![("import (1 run)".into(), import_t, import_rss)];
    for format in ["docker", "oci"] {
        let archive = dir.path().join(format!("{format}.tar"));
        let (mut save_t, mut save_rss, mut load_t, mut load_rss) = (Vec::new(), 0, Vec::new(), 0);
        for run in 0..RUNS {
            let _ = fs::remove_file(&archive);
            let (t, rss) = timed(
                &source,
                &["save", "--format", format, "-o", &path(&archive), "big:1"],
            );
            save_t.push(t);
            save_rss = save_rss.max(rss);
            let target = dir.path().join(format!("target-{format}-{run}"));
            let (t, rss) = timed(&target, &["load", "-i", &path(&archive)]);
            load_t.push(t);
            load_rss = load_rss.max(rss);
            fs::remove_dir_all(&target).unwrap();
        }
        rows.push((format!("save --format {format}"), median(save_t), save_rss));
        rows.push((format!("load ({format} archive)"), median(load_t), load_rss));
    }
    println!("1 GiB layer, medians of {RUNS} runs");
    println!("floor A: read + SHA-256 in one process:      {base:.2} s");
    println!("floor B: copy to a new file + fsync:          {durable:.2} s");
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>14}",
        "command", "median s", "x A", "x B", "peak RSS"
    );
    for (name, secs, rss) in rows {
        println!(
            "{name:<26} {secs:>10.2} {:>10.2} {:>10.2} {:>10} MiB",
            secs / base,
            secs / durable,
            rss / 1024
        );
    }
}
