//! Deep trees: a RUN step, a build context or an image can hold a tree as
//! deep as it likes without a long path (`mkdir b && mv a b/a && mv b a`,
//! again and again). Every walk of one stops at
//! `kiln_proto::depth::MAX_TREE_DEPTH` levels with a clear error that names
//! the path (shortened) and the limit, and fails that one step: never a
//! stack overflow that aborts kiln, or kilnd for every client.

use std::fs;
use std::path::Path;
use std::process::Output;

use kiln_proto::depth::MAX_TREE_DEPTH;

use crate::busybox::{Setup, ready};
use crate::harness::kiln;
use crate::hostile_bounds::serves_another_build;
use crate::kilnd::Kilnd;

/// A step that makes `/deep/a/a/…`, `levels` directories below `/`
/// (`/deep` the first).
fn deep_run(levels: usize) -> String {
    format!(
        "FROM base:busybox\n\
         RUN cd /tmp && mkdir a && i=1 && while [ $i -lt {levels} ]; do \
         mkdir b && busybox mv a b/a && busybox mv b a || exit 1; i=$((i+1)); done && \
         busybox mv /tmp/a /deep\n"
    )
}

/// Asserts that `out` failed at Dockerfile line `line` for a tree deeper
/// than the bound below `/deep`, and that the path was shortened.
fn refused_too_deep(out: &Output, line: usize) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the deep tree was taken:\n{stderr}");
    for needle in [
        format!("(Dockerfile line {line})"),
        "refusing /deep/a/a/a/".to_owned(),
        format!("…: deeper than {MAX_TREE_DEPTH} directories"),
    ] {
        assert!(
            stderr.contains(&needle),
            "expected {needle:?} in:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains(&"a/".repeat(150)),
        "the whole path was printed:\n{stderr}"
    );
}

/// The steps' scratch directories left in the store at `root`.
fn leftover_steps(root: &Path) -> Vec<String> {
    fs::read_dir(root.join("steps"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `dir/deep/a/a/…`, `levels` directories below `dir` (`deep` the first).
fn deep_context(dir: &Path, levels: usize) {
    kiln_testing::deep_tree(dir, levels);
    fs::rename(dir.join("a"), dir.join("deep")).unwrap();
}

/// Builds `context` (its Dockerfile in it) through `global` flags.
fn build_dir(s: &Setup, global: &[&str], context: &Path, tag: &str) -> Output {
    kiln()
        .env("KILN_ROOT", &s.root)
        .args(global)
        .args(["build", "--progress=plain", "-t", tag])
        .arg(context)
        .output()
        .unwrap()
}

#[test]
fn a_run_step_making_a_too_deep_tree_fails_and_the_store_builds_on() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let out = s.build(&deep_run(1100), &["--progress=plain", "-t", "deep:1"]);
    refused_too_deep(&out, 2);
    assert_eq!(leftover_steps(&s.root), Vec::<String>::new());
    let out = s.build(
        "FROM base:busybox\nRUN echo after > /after\n",
        &["-t", "after:1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kilnd_refuses_too_deep_trees_and_serves_on() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let out = s.build(&deep_run(1100), &["--addr", &addr, "--progress=plain"]);
    refused_too_deep(&out, 2);

    let context = s.dir.path().join("deep-context");
    fs::create_dir(&context).unwrap();
    deep_context(&context, 1100);
    fs::write(context.join("Dockerfile"), "FROM base:busybox\nCOPY . /\n").unwrap();
    refused_too_deep(&build_dir(&s, &["--addr", &addr], &context, "ctx:1"), 2);

    serves_another_build(&s, &addr);
}

/// A context exactly as deep as the bound is hashed, copied and made a
/// layer (each on its own thread's stack); one level deeper, the copy
/// refuses it (the context's digest, which cannot fail, only marks it).
#[test]
fn a_context_deeper_than_the_bound_is_refused_by_its_copy() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let at_bound = s.dir.path().join("at-bound");
    fs::create_dir(&at_bound).unwrap();
    deep_context(&at_bound, MAX_TREE_DEPTH);
    let dockerfile = format!(
        "FROM base:busybox\nCOPY . /\nRUN test -f /deep/{}f\n",
        "a/".repeat(MAX_TREE_DEPTH - 1)
    );
    fs::write(at_bound.join("Dockerfile"), dockerfile).unwrap();
    let out = build_dir(&s, &[], &at_bound, "bound:1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deeper = s.dir.path().join("deeper");
    fs::create_dir(&deeper).unwrap();
    deep_context(&deeper, MAX_TREE_DEPTH + 1);
    fs::write(deeper.join("Dockerfile"), "FROM base:busybox\nCOPY . /\n").unwrap();
    refused_too_deep(&build_dir(&s, &[], &deeper, "deeper:1"), 2);
}

/// An image can hold a tree deeper than the bound (a layer's paths are
/// only as long as `PATH_MAX`): copying it into another stage is refused.
#[test]
fn copying_a_too_deep_directory_from_another_stage_is_refused() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let rootfs = s.dir.path().join("deep-rootfs");
    fs::create_dir(&rootfs).unwrap();
    deep_context(&rootfs, 1100);
    let tarball = s.dir.path().join("deep.tar");
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    s.ok(&["import", tarball.to_str().unwrap(), "deep-image:1"]);
    let out = s.build(
        "FROM deep-image:1 AS deep\nFROM base:busybox\nCOPY --from=deep /deep /copied\n",
        &["--progress=plain"],
    );
    refused_too_deep(&out, 3);
}
