//! Image archives and the JSON in them through kiln's readers: `kiln load`
//! (docker-archive `manifest.json`, OCI `index.json` and `oci-layout`,
//! blobs by digest) and `read_image` (manifest, index, config).
//!
//! Invariants, beyond "no panic": a load either fails and tags nothing,
//! or every image it tagged reads back, has as many
//! diff IDs as layers, and every layer hashes to its diff ID; any bytes
//! stored as a manifest either fail to read or pair their layers likewise.
#![no_main]

use std::path::Path;

use kiln_image::archive::load;
use kiln_image::compress::verify_layer;
use kiln_image::image::{self, read_image};
use kiln_cache::{Digest, Store};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum File {
    /// `manifest.json`, `index.json`, `oci-layout`, a config…
    Named(u8, Vec<u8>),
    /// `blobs/sha256/<digest of the bytes>` (or of other bytes).
    Blob { honest: bool, bytes: Vec<u8> },
    /// A docker-archive layer path.
    Layer(u8, Vec<u8>),
    Symlink(u8, u8),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Archive(Vec<File>),
    /// Bytes stored as a blob and read as a manifest or index.
    Manifest(Vec<u8>, Vec<u8>),
}

const NAMES: [&str; 8] = [
    "manifest.json",
    "index.json",
    "oci-layout",
    "repositories",
    "config.json",
    "../manifest.json",
    "a/b.json",
    "blobs/sha256/../../index.json",
];

fn entry(b: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    // Names the tar crate refuses are skipped: the raw-header unpack
    // target covers those.
    let _ = b.append_data(&mut h, name, bytes);
}

/// Every tagged image is whole and honest.
fn check_tagged(store: &Store) {
    let (os, arch) = image::host_platform();
    for (name, record) in store.meta.images().expect("tags") {
        let Ok(img) = read_image(store, &record.target, (&os, &arch)) else {
            continue;
        };
        let layers = img.layer_pairs().unwrap_or_else(|e| panic!("{name}: tagged but {e}"));
        for l in layers {
            verify_layer(store, &l.blob, &l.diff_id).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

fuzz_target!(|input: Input| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("root")).expect("store");
    match input {
        Input::Archive(files) => {
            let mut b = tar::Builder::new(Vec::new());
            for f in files.iter().take(16) {
                match f {
                    File::Named(n, bytes) => entry(&mut b, NAMES[usize::from(*n) % NAMES.len()], bytes),
                    File::Blob { honest, bytes } => {
                        let d = if *honest { Digest::of(bytes) } else { Digest::of(b"other") };
                        entry(&mut b, &format!("blobs/sha256/{}", d.hex()), bytes);
                    }
                    File::Layer(n, bytes) => entry(&mut b, &format!("l{n}/layer.tar"), bytes),
                    File::Symlink(from, to) => {
                        let mut h = tar::Header::new_gnu();
                        h.set_entry_type(tar::EntryType::Symlink);
                        h.set_size(0);
                        let _ = b.append_link(
                            &mut h,
                            format!("l{from}/layer.tar"),
                            format!("../l{to}/layer.tar"),
                        );
                    }
                }
            }
            let archive = tmp.path().join("archive.tar");
            std::fs::write(&archive, b.into_inner().expect("tar")).expect("write");
            match load(&store, Path::new(&archive)) {
                Ok(_) => check_tagged(&store),
                // (Blobs may stay: unreferenced ones are prune's, as after
                // a crash.)
                Err(_) => assert!(store.meta.images().expect("tags").is_empty(), "a failed load tagged"),
            }
        }
        Input::Manifest(manifest, config) => {
            let (os, arch) = image::host_platform();
            let _ = store.content.write_bytes(&config);
            let digest = store.content.write_bytes(&manifest).expect("blob");
            if let Ok(img) = read_image(&store, &digest, (&os, &arch)) {
                if let Ok(pairs) = img.layer_pairs() {
                    assert_eq!(pairs.len(), img.config.rootfs.diff_ids.len());
                    assert_eq!(pairs.len(), img.manifest.layers().len());
                }
            }
        }
    }
});
