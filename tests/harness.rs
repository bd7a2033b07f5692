//! Helpers for kiln's end-to-end tests: they run the real binaries that
//! `cargo test --workspace` builds next to the test executables.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of a kiln binary (`kiln`, later `kilnd`, `kiln-worker`) in the
/// same target directory as the running test.
pub(crate) fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// A `kiln` command.
pub(crate) fn kiln() -> Command {
    Command::new(binary("kiln"))
}

/// Runs `cmd` and returns its output, failing the test when it cannot start.
pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// `../shared/conformance/buildkit` beside the repository, or `None` (with
/// a printed notice) when it is absent.
pub(crate) fn conformance_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/buildkit");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "NOTICE: {} not found; conformance cases skipped",
            dir.display()
        );
        None
    }
}

/// Whether `tool` is on PATH; prints a notice when it is not (the test
/// that needs it is then skipped; CI installs every tool).
pub(crate) fn have_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    if !found {
        eprintln!("NOTICE: {tool} is not installed; the test that needs it is skipped");
    }
    found
}

/// Whether the tests run as root (the sandbox and mounts need it).
pub(crate) fn is_root() -> bool {
    // /proc/self belongs to the effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}
