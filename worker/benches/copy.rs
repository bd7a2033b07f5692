//! COPY of 20,000 small files (100 directories of 200 files, 1 KiB each)
//! from a context directory into an empty root.
//! `cargo bench -p kiln-worker --bench copy`. The files live in
//! `$KILN_BENCH_DIR` (default /dev/shm, a tmpfs: on ext4, inode allocation
//! after many deletes dominates and varies run to run).

use std::fs;
use std::time::Instant;

use kiln_worker::fileop::{CopyRequest, copy};

fn main() {
    let scratch = std::env::var_os("KILN_BENCH_DIR").unwrap_or_else(|| "/dev/shm".into());
    let dir = tempfile::tempdir_in(scratch).unwrap();
    let src = dir.path().join("context");
    let data = vec![b'x'; 1024];
    for d in 0..100 {
        let sub = src.join(format!("dir{d:03}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..200 {
            fs::write(sub.join(format!("file{f:03}.txt")), &data).unwrap();
        }
    }
    let mut times = Vec::new();
    for run in 0..7 {
        let dst = dir.path().join(format!("root{run}"));
        fs::create_dir_all(&dst).unwrap();
        let req = CopyRequest {
            sources: vec!["/".into()],
            dest: "/app/".into(),
            allow_wildcard: true,
            ..Default::default()
        };
        let start = Instant::now();
        copy(&src, &dst, &req).unwrap();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "COPY of 20,000 files of 1 KiB, 7 runs: median {:.0} ms, min {:.0} ms, max {:.0} ms",
        times[3], times[0], times[6]
    );
}
