//! Writable bind mounts (`RUN --mount=type=bind,…,rw`; issue 14, items 2
//! and 20): the step may write, and its writes are discarded with it, as
//! BuildKit does. They never reach the context on the host, nor the layer
//! snapshots that every build shares.

use std::fs;

use crate::busybox::{Setup, ready};

fn build_ok(s: &Setup, dockerfile: &str) -> String {
    let out = s.build(dockerfile, &["--progress=plain", "--no-cache"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{dockerfile}\n{stderr}");
    stderr
}

#[test]
fn a_writable_bind_of_the_context_leaves_the_context_alone() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("keep.txt"), "kept").unwrap();
    let log = build_ok(
        &s,
        "FROM base:busybox\n\
         RUN --mount=type=bind,rw,target=/ctx rm /ctx/keep.txt && echo new > /ctx/new.txt && ls /ctx && echo listed\n",
    );
    assert!(log.contains("new.txt") && log.contains("listed"), "{log}");
    assert_eq!(
        fs::read_to_string(s.context.join("keep.txt")).unwrap(),
        "kept"
    );
    assert!(
        !s.context.join("new.txt").exists(),
        "the step wrote into the context"
    );
}

#[test]
fn a_writable_bind_from_a_stage_or_image_is_writable_and_discarded() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    // A stage of several layers, and the one-layer base image itself.
    let log = build_ok(
        &s,
        "FROM base:busybox AS s\nRUN mkdir /out && echo a > /out/f\n\
         FROM base:busybox\n\
         RUN --mount=type=bind,from=s,source=out,target=/out,rw touch /out/new && ls /out && echo stage-ok\n\
         RUN --mount=type=bind,from=base:busybox,target=/b,rw touch /b/poison && rm /b/bin/cat && echo image-ok\n",
    );
    assert!(
        log.contains("stage-ok") && log.contains("image-ok"),
        "{log}"
    );
    // The base image's layer is as it was for the next build.
    let dest = s.dir.path().join("out");
    let out = s.build(
        "FROM base:busybox\nRUN test ! -e /poison && test -e /bin/cat\n",
        &[
            "--no-cache",
            "-o",
            &format!("type=local,dest={}", dest.display()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dest.join("poison").exists() && dest.join("bin/cat").exists());
}
