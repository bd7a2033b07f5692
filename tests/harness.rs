//! Helpers for kiln's end-to-end tests: they run the real binaries that
//! `cargo test --workspace` builds next to the test executables. What a
//! test needs from the machine (root, tools, dockerd) it asks of
//! `kiln_testing::require`, and it waits with `kiln_testing::wait_until`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// How long a test waits for a server to listen, a process to start or
/// end, a worker to attach: long enough for a loaded CI machine.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

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

/// Whether a process whose command line contains `pattern` runs (a
/// step's `sleep 41.5`: each test sleeps a number of its own).
pub(crate) fn running(pattern: &str) -> bool {
    run(Command::new("pgrep").args(["-f", pattern]))
        .status
        .success()
}

/// Runs `cmd` and returns its output, failing the test when it cannot start.
pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Held by every test that builds in, loads into or removes from dockerd
/// (the differential suite, the consumer tests): dockerd 20.10 loses a
/// snapshot (`stat /bin/sh: no such file or directory`) when an image is
/// removed while another build runs, so its users take turns. Each also
/// starts from a base layer of its own ([`crate::busybox::Setup::own_base`]),
/// so no layer is shared between their images.
pub(crate) fn dockerd_turn() -> std::sync::MutexGuard<'static, ()> {
    static DOCKERD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    DOCKERD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `docker run --network none ARGS` in a container of its own name,
/// removed before this returns. Not `--rm`: dockerd removes such a
/// container on its own after `run` returns, and a layer it releases then
/// raced with the next test's `docker load` of the same layer (a container
/// without `/bin/sh` in CI).
pub(crate) fn docker_run(args: &[&str]) -> Output {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "kiln-test-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let ran = run(Command::new(kiln_testing::DOCKER)
        .args(["run", "--name", &name, "--network", "none"])
        .args(args));
    let removed = run(Command::new(kiln_testing::DOCKER).args(["rm", "-f", &name]));
    assert!(
        removed.status.success() || !ran.status.success(),
        "docker rm {name}: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
    ran
}

/// Writes `text` to `path` as a 0755 program — from a child process, so
/// that no descriptor of this one is ever open for writing on it: another
/// test's thread forking meanwhile would carry that descriptor into its
/// child until it execs, and the program's own exec would then fail with
/// ETXTBSY ("text file busy").
pub(crate) fn write_program(path: &std::path::Path, text: &str) {
    let mut sh = Command::new("sh");
    sh.args(["-c", "cat > \"$0\" && chmod 755 \"$0\""])
        .arg(path);
    let out = with_input(&mut sh, text);
    assert!(out.status.success(), "writing {}", path.display());
}

/// Runs `command` with `input` on its standard input; its output captured.
pub(crate) fn with_input(command: &mut Command, input: &str) -> Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
