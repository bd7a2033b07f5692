//! Steps that change nothing, and images that repeat a layer (issue 14,
//! item 1): the same layer directory twice in one overlay stack made
//! overlayfs refuse the mount (`ELOOP`), so the step after two empty ones
//! failed, as did any step on a base image that repeats a layer.

use std::fs;

use crate::busybox::{Setup, base_tarball, ready};
use crate::hostile_layers::docker_archive;

#[test]
fn empty_steps_in_a_row_then_any_step() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dest = s.build_to_dir(
        "FROM base:busybox\nRUN echo one\nRUN echo two\nRUN echo three\n",
        &[],
    );
    assert!(dest.join("bin/busybox").is_file());
    let dest = s.build_to_dir(
        "FROM base:busybox\nRUN true\nRUN true\nRUN echo made > /made\nCOPY Dockerfile /copied\n",
        &[],
    );
    assert_eq!(fs::read_to_string(dest.join("made")).unwrap(), "made\n");
    assert!(dest.join("copied").is_file());
}

/// Many real images repeat the empty layer (a tar of 1,024 zero bytes,
/// `sha256:5f70bf18…`); others repeat a layer that changed something.
#[test]
fn a_base_image_that_repeats_layers() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let base = fs::read(base_tarball(&s.dir.path().join("base"))).unwrap();
    let empty = vec![0u8; 1024];
    let mut adds = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(6);
    h.set_mode(0o644);
    adds.append_data(&mut h, "added", &b"added\n"[..]).unwrap();
    let adds = adds.into_inner().unwrap();
    let archive = s.dir.path().join("repeats.tar");
    docker_archive(
        &archive,
        "repeats:latest",
        &[base, empty.clone(), adds.clone(), empty, adds],
        None,
    );
    s.ok(&["load", "-i", archive.to_str().unwrap()]);
    let dest = s.build_to_dir("FROM repeats:latest\nRUN cat /added > /seen\nCOPY Dockerfile /copied\nRUN --mount=type=bind,from=repeats:latest,target=/r cat /r/added > /bound\n", &[]);
    assert_eq!(fs::read_to_string(dest.join("seen")).unwrap(), "added\n");
    assert_eq!(fs::read_to_string(dest.join("bound")).unwrap(), "added\n");
    assert!(dest.join("copied").is_file());
}
