//! Incompressible test data, shared by the e2e tests and the archive bench
//! (which includes this file by path).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes `size` bytes (rounded down to whole MiB) that do not compress,
/// like binaries in a real layer: an xorshift stream, the same every run.
pub(crate) fn noise(path: &Path, size: usize) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..size / block.len() {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&block).unwrap();
    }
}
