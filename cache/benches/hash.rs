//! SHA-256 throughput of the content store's hasher, in memory
//! (`cargo bench -p kiln-cache --bench hash`). `sha2` uses the CPU's SHA
//! extensions when it has them.

use std::time::Instant;

use kiln_cache::Hasher;

fn main() {
    let data = vec![0x5au8; 256 << 20];
    let mut rates = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let mut h = Hasher::default();
        for chunk in data.chunks(1 << 20) {
            h.update(chunk);
        }
        std::hint::black_box(h.finish());
        rates.push(data.len() as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "SHA-256, 256 MiB in 1 MiB chunks: median {:.2} GB/s (min {:.2}, max {:.2})",
        rates[3], rates[0], rates[6]
    );
}
