//! The layer tar of a tree of many small files hashed as a step's diff ID
//! is (`kiln_image::blobs::record`): the old sequential walk by paths
//! (`tests/support/diff_reference.rs`) against `layer::diff`, runs
//! interleaved, medians printed; both must give the same digest.
//! `KILN_DIFF_TREE=dir cargo bench -p kiln-worker --bench diff` walks
//! `dir` (e.g. what /work/shared/bench/workloads/many-files/generate.sh
//! makes); without it, a tree of the same shape is made in a temporary
//! directory (`$KILN_BENCH_DIR`, default /tmp): 200 directories of 100
//! files of 200–1800 bytes.

#[path = "../tests/support/diff_reference.rs"]
mod reference;

use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use kiln_cache::Hasher;
use kiln_worker::layer;

const RUNS: usize = 5;

/// A sink that only hashes, as `record`'s does.
#[derive(Default)]
struct Hashing(Hasher);

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn main() {
    let made;
    let tree = match std::env::var_os("KILN_DIFF_TREE") {
        Some(dir) => dir.into(),
        None => {
            let scratch = std::env::var_os("KILN_BENCH_DIR").unwrap_or_else(|| "/tmp".into());
            made = tempfile::tempdir_in(scratch).unwrap();
            make_tree(made.path());
            made.path().to_owned()
        }
    };
    let old = |t: &Path| reference::diff_clamped(t, Hashing::default(), None).unwrap();
    let new = |t: &Path| layer::diff(t, Hashing::default()).unwrap();
    // `KILN_DIFF_ONLY=old|new`: one walk only, for a profiler.
    match std::env::var("KILN_DIFF_ONLY").as_deref() {
        Ok("old") => return drop(old(&tree)),
        Ok("new") => return drop(new(&tree)),
        _ => {}
    }
    // Once each, to warm the caches, and to check they agree.
    let (a, b) = (old(&tree).0.finish(), new(&tree).0.finish());
    assert_eq!(a, b, "the walks disagree");
    let (mut olds, mut news) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        olds.push(time(|| drop(old(&tree))));
        news.push(time(|| drop(new(&tree))));
    }
    println!("layer diff of {} ({a}), {RUNS} runs each:", tree.display());
    println!("  old (by paths, sequential): median {:.3} s", median(olds));
    println!(
        "  new (by descriptors, read ahead): median {:.3} s",
        median(news)
    );
}

fn time(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// 200 directories of 100 files of 200–1800 bytes of noise.
fn make_tree(top: &Path) {
    let mut state: u64 = 7;
    let mut next = || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for d in 0..200 {
        let dir = top.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let size = 200 + (next() % 1601) as usize;
            let data: Vec<u8> = (0..size).map(|_| next() as u8).collect();
            std::fs::write(dir.join(format!("f{f:03}.txt")), data).unwrap();
        }
    }
}
