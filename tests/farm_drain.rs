//! Elastic workers for real: SIGTERM to a `kiln-worker` mid-step drains it
//! (kilnd places nothing new there, the step finishes once and its layer
//! reaches the build, the worker detaches and exits 0); a drain that
//! outlasts `--drain-timeout`, or a second SIGTERM, gives the step up and
//! kilnd runs it again elsewhere.
//!
//! Each step prints a marker computed by the shell (`$((6*7))-…` prints
//! `42-…`, which the step's name as the client shows it does not contain),
//! so the client's output counts the step's runs.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_testing::wait_until;

use crate::busybox::{Setup, ready};
use crate::farm::{listing, wait_for, workers};
use crate::harness::{PATIENCE, binary, kiln};
use crate::kilnd::Kilnd;

/// A `kiln-worker` whose log goes to a file, killed when dropped.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(s: &Setup, kilnd: &Kilnd, id: &str, extra: &[&str]) -> Self {
        let log = s.dir.path().join(format!("{id}.log"));
        let child = Command::new(binary("kiln-worker"))
            .arg("--root")
            .arg(s.dir.path().join(id))
            .arg("--kilnd")
            .arg(kilnd.addr())
            .args(["--id", id, "--parallelism", "2"])
            .args(extra)
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Its exit status, waited for up to `within`.
    fn exited(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker still runs after {within:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A context directory of its own under `s`, holding `dockerfile`.
fn context(s: &Setup, name: &str, dockerfile: &str) -> PathBuf {
    let dir = s.dir.path().join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    dir
}

/// `kiln build` of `context` through kilnd, started (not waited for).
fn start_build(s: &Setup, addr: &str, context: &Path, tag: &str) -> Child {
    kiln()
        .env("KILN_ROOT", &s.root)
        .args(["--addr", addr, "build", "--no-cache", "-t", tag])
        .arg(context)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// A build's stderr, having asserted it succeeded.
fn succeeded(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// The STATUS column of farm worker `id` in `kiln workers`.
fn status(s: &Setup, addr: &str, id: &str) -> Option<String> {
    listing(s, addr)
        .into_iter()
        .find(|cols| cols[0] == id)
        .map(|cols| cols[6].clone())
}

#[test]
fn sigterm_drains_a_worker_nothing_re_run_and_new_steps_go_elsewhere() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    // Parallelism 2: it has room for the second build's step, were it not
    // draining.
    let mut w1 = Worker::start(&s, &kilnd, "w1", &[]);
    wait_for(&s, &addr, "w1 to attach", |w| w.len() == 1);

    let long = context(
        &s,
        "long",
        "FROM base:busybox\nRUN echo $((6*7))-long-ran && sleep 6.25 && echo done > /x\n",
    );
    let build = start_build(&s, &addr, &long, "drain:long");
    wait_for(&s, &addr, "the long step to start on w1", |w| w[0].1 == 1);
    wait_until(PATIENCE, "the step's process to run", || {
        crate::harness::running("sleep 6.25")
    });
    w1.sigterm();
    wait_until(PATIENCE, "kilnd to list w1 as draining", || {
        status(&s, &addr, "w1").as_deref() == Some("draining")
    });

    // A build started during the drain: its step runs on kilnd's own
    // worker, not on w1, though w1 has a free slot.
    let other = context(
        &s,
        "other",
        "FROM base:busybox\nRUN echo $((6*7))-other && echo other > /o\n",
    );
    let out = start_build(&s, &addr, &other, "drain:other")
        .wait_with_output()
        .unwrap();
    let stderr = succeeded(&out);
    assert!(stderr.contains("42-other"), "{stderr}");
    let now = workers(&s, &addr);
    assert_eq!(
        now,
        [("w1".to_owned(), 1, 0)],
        "w1 still runs the long step and ran nothing else (the other build \
         ended first; w1's log: {})",
        w1.log()
    );

    // The long step finishes on w1, once; its layer is the build's.
    let out = build.wait_with_output().unwrap();
    let stderr = succeeded(&out);
    assert_eq!(
        stderr.matches("42-long-ran").count(),
        1,
        "the step ran once: {stderr}"
    );
    assert!(s.layers_text_through(&addr, "drain:long").contains("done"));
    let exit = w1.exited(PATIENCE);
    let log = w1.log();
    assert!(exit.success(), "a drained worker exits 0: {exit:?}: {log}");
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("drained"), "{log}");
    assert!(workers(&s, &addr).is_empty(), "kilnd dropped w1");
}

#[test]
fn a_drain_past_its_timeout_or_a_second_sigterm_gives_the_step_to_another() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();

    // The drain outlasts --drain-timeout: the step is cancelled on w1 and
    // run again on kilnd's own worker; w1 exits 1, saying why.
    let mut w1 = Worker::start(&s, &kilnd, "w1", &["--drain-timeout", "1500ms"]);
    wait_for(&s, &addr, "w1 to attach", |w| w.len() == 1);
    let slow = context(
        &s,
        "slow",
        "FROM base:busybox\nRUN echo $((6*7))-slow-ran && sleep 5.25 && echo slow > /s\n",
    );
    let build = start_build(&s, &addr, &slow, "drain:slow");
    wait_for(&s, &addr, "the step to start on w1", |w| w[0].1 == 1);
    wait_until(PATIENCE, "the step's process to run", || {
        crate::harness::running("sleep 5.25")
    });
    let signalled = Instant::now();
    w1.sigterm();
    let exit = w1.exited(PATIENCE);
    let log = w1.log();
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "it stopped at its timeout, not when the step ended: {log}"
    );
    assert_eq!(exit.code(), Some(1), "{log}");
    assert!(
        log.contains("the drain outlasted --drain-timeout 1.5s"),
        "{log}"
    );
    let out = build.wait_with_output().unwrap();
    let stderr = succeeded(&out);
    assert_eq!(
        stderr.matches("42-slow-ran").count(),
        2,
        "run on w1, then again elsewhere: {stderr}"
    );
    assert!(s.layers_text_through(&addr, "drain:slow").contains("slow"));
    assert!(workers(&s, &addr).is_empty(), "kilnd dropped w1");

    // A second SIGTERM mid-drain stops at once (exit 0); the step again
    // runs elsewhere.
    let mut w2 = Worker::start(&s, &kilnd, "w2", &[]);
    wait_for(&s, &addr, "w2 to attach", |w| w.len() == 1);
    let again = context(
        &s,
        "again",
        "FROM base:busybox\nRUN echo $((6*7))-again-ran && sleep 5.5 && echo again > /a\n",
    );
    let build = start_build(&s, &addr, &again, "drain:again");
    wait_for(&s, &addr, "the step to start on w2", |w| w[0].1 == 1);
    wait_until(PATIENCE, "the step's process to run", || {
        crate::harness::running("sleep 5.5")
    });
    w2.sigterm();
    wait_until(PATIENCE, "w2 to drain", || w2.log().contains("draining"));
    let signalled = Instant::now();
    w2.sigterm();
    let exit = w2.exited(PATIENCE);
    let log = w2.log();
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "a second SIGTERM stops at once: {log}"
    );
    assert!(exit.success(), "{exit:?}: {log}");
    assert!(log.contains("stopping at once"), "{log}");
    let out = build.wait_with_output().unwrap();
    let stderr = succeeded(&out);
    assert_eq!(stderr.matches("42-again-ran").count(), 2, "{stderr}");
    assert!(
        s.layers_text_through(&addr, "drain:again")
            .contains("again")
    );
}
