//! The differential suite (issue 14): every case under
//! `tests/differential/cases/` is built by kiln and by dockerd's BuildKit
//! (`docker build`, DOCKER_BUILDKIT=1), both images are exported (`kiln
//! build -o type=oci`, `docker save`) and passed through one normalizer
//! (`normalize.rs`), and the two must agree. A case that dockerd 20.10
//! cannot build (heredocs, `--parents`, `--exclude`, `--link`, symbolic
//! `--chmod`, …) or whose behaviour BuildKit has changed since carries an
//! `expected.json` in the normalized form instead, written from BuildKit's
//! documentation, tests and code (its `_source` says which).
//!
//! `tests/differential/KNOWN_MISMATCHES` lists the cases kiln gets wrong
//! today (name, then why): such a case that still mismatches is reported,
//! not failed; one that now agrees fails the run (take it off the list), as
//! does any mismatch not on it.
//!
//! Cases run in a small pool (`KILN_DIFFERENTIAL_JOBS`, default 3): each
//! worker has a kiln store of its own (one kiln process holds a store at a
//! time) that its cases share. `KILN_DIFFERENTIAL=word[,word…]` runs only
//! the cases whose name contains one of the words;
//! `KILN_DIFFERENTIAL_PRINT=1` prints both normalized forms of each case
//! (how an `expected.json` starts). Skipped with a notice without root and
//! busybox; the docker half is skipped with a notice when no dockerd
//! answers, unless `KILN_REQUIRE_ALL=1` (CI).

mod base;
mod normalize;
mod setup;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_testing::{DOCKER, Need, require_for};
use serde_json::Value;

use crate::busybox::ready;
use crate::harness::binary;
use normalize::{Image, Tree};
use setup::{RUNNER_FILES, Setup};

/// One build's limit: a case is a few small steps.
const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

fn suite_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/differential")
}

/// One case: its directory and how it is built.
struct Case {
    name: String,
    dir: PathBuf,
    setup: Setup,
    /// `expected.json`'s normalized form (its `_` keys dropped), where
    /// dockerd 20.10 is no reference.
    expected: Option<Value>,
}

/// What running a case found.
enum Outcome {
    Agree,
    /// The normalized forms differ, or kiln failed where the other built.
    Mismatch(String),
    /// The case itself is broken: dockerd failed, or its files are wrong.
    Broken(String),
    /// Needs dockerd, which is not there.
    Skipped,
}

/// What every worker shares.
struct Suite {
    work: PathBuf,
    base_archive: PathBuf,
    base: (String, Tree),
    docker: bool,
    /// Images dockerd built, removed when the suite ends: removing one
    /// while other builds ran made dockerd 20.10 lose a snapshot more often
    /// (`stat /bin/sh: no such file or directory`).
    tags: Mutex<Vec<String>>,
}

impl Drop for Suite {
    fn drop(&mut self) {
        let tags = std::mem::take(self.tags.get_mut().expect("docker tags"));
        for chunk in tags.chunks(50) {
            let _ = Command::new(DOCKER)
                .args(["rmi", "-f"])
                .args(chunk)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn kiln_and_docker_build_the_same_images() {
    if !ready() {
        return;
    }
    // Fails with a clear message when `cargo test --workspace` did not build it.
    binary("kiln-sandbox");
    let docker = require_for("only the cases with expected.json run", &[Need::Dockerd]);
    let _turn = crate::harness::dockerd_turn();
    let filter = std::env::var("KILN_DIFFERENTIAL").unwrap_or_default();
    let cases = read_cases(&filter);
    let known = read_known();
    if filter.is_empty() {
        let missing: Vec<&String> = known
            .keys()
            .filter(|k| !cases.iter().any(|c| &c.name == *k))
            .collect();
        assert!(
            missing.is_empty(),
            "KNOWN_MISMATCHES names cases that do not exist: {missing:?}"
        );
    }

    let tmp = tempfile::tempdir().expect("temporary directory");
    let suite = Suite::new(tmp.path(), docker);
    let started = Instant::now();
    let results = run_pool(&suite, &cases);
    eprintln!(
        "differential: {} cases in {:.0?}",
        cases.len(),
        started.elapsed()
    );
    judge(&cases, &results, &known);
}

/// Every case directory (sorted), with its `SETUP` and `expected.json` read.
fn read_cases(filter: &str) -> Vec<Case> {
    let root = suite_dir().join("cases");
    let mut names: Vec<String> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
        .map(|e| e.expect("case directory entry").file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| filter.split(',').any(|word| n.contains(word)))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let dir = root.join(&name);
            let setup = match fs::read_to_string(dir.join("SETUP")) {
                Ok(text) => Setup::parse(&text).unwrap_or_else(|e| panic!("{name}/SETUP: {e}")),
                Err(_) => Setup::default(),
            };
            let expected = fs::read(dir.join("expected.json")).ok().map(|bytes| {
                let mut value: Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{name}/expected.json: {e}"));
                // `_source` and other `_` keys say where the expectation comes from.
                if let Some(map) = value.as_object_mut() {
                    map.retain(|k, _| !k.starts_with('_'));
                }
                value
            });
            Case {
                name,
                dir,
                setup,
                expected,
            }
        })
        .collect()
}

/// How many times a case's docker build is tried (dockerd 20.10's own
/// failures under parallel builds).
const DOCKER_TRIES: usize = 4;

/// `KNOWN_MISMATCHES`: case name → reason.
fn read_known() -> BTreeMap<String, String> {
    let path = suite_dir().join("KNOWN_MISMATCHES");
    let text = fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, reason) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (name.to_owned(), reason.trim().to_owned())
        })
        .collect()
}

impl Suite {
    /// The base archive written, read, and given to dockerd.
    fn new(work: &Path, docker: bool) -> Self {
        let base_archive = work.join("base.tar");
        base::write_archive(&base_archive);
        let image = Image::read(&fs::read(&base_archive).expect("reading the base archive"))
            .expect("the base archive");
        let base = (
            image.first_diff_id().expect("the base's layer").to_owned(),
            image.tree(None).expect("the base's tree"),
        );
        if docker {
            // Not removed afterwards: other runs on this dockerd may use it
            // at the same time, and every run loads the same bytes.
            let out = Command::new(DOCKER)
                .args(["load", "-i"])
                .arg(&base_archive)
                .output()
                .expect("running docker load");
            assert!(
                out.status.success(),
                "docker load of the base: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self {
            work: work.to_owned(),
            base_archive,
            base,
            docker,
            tags: Mutex::new(Vec::new()),
        }
    }

    /// A kiln store with the base loaded, for worker `i`.
    fn store(&self, i: usize) -> PathBuf {
        let root = self.work.join(format!("store-{i}"));
        let out = Command::new(binary("kiln"))
            .env("KILN_ROOT", &root)
            .args(["load", "-i"])
            .arg(&self.base_archive)
            .output()
            .expect("running kiln load");
        assert!(
            out.status.success(),
            "kiln load of the base: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        root
    }

    /// Builds `case` with both builders (or kiln and its expected form) and compares.
    fn run(&self, case: &Case, store: &Path, n: usize) -> Outcome {
        if case.expected.is_none() && !self.docker {
            return Outcome::Skipped;
        }
        let dir = self.work.join(format!("case-{n}"));
        let outcome = self.run_in(case, store, &dir);
        let _ = fs::remove_dir_all(&dir);
        outcome
    }

    fn run_in(&self, case: &Case, store: &Path, dir: &Path) -> Outcome {
        let context = dir.join("context");
        if let Err(e) = prepare_context(case, &context) {
            return Outcome::Broken(format!("making the context: {e}"));
        }
        let secrets = match write_secrets(case, dir) {
            Ok(s) => s,
            Err(e) => return Outcome::Broken(e),
        };
        let theirs = match &case.expected {
            Some(expected) => expected.clone(),
            // More tries: dockerd 20.10 now and then fails a step of
            // parallel builds on its own (`stat /bin/sh: no such file`),
            // and again at once when its machine is busy.
            None => match self.docker_build_tries(case, &context, &secrets, dir) {
                Ok(image) => image,
                Err(e) => {
                    return Outcome::Broken(format!(
                        "docker build failed {DOCKER_TRIES} times: {e}"
                    ));
                }
            },
        };
        let ours = match self.kiln_build(case, &context, &secrets, store, dir) {
            Ok(image) => image,
            Err(e) => return Outcome::Mismatch(format!("kiln build failed: {e}")),
        };
        if std::env::var_os("KILN_DIFFERENTIAL_PRINT").is_some() {
            let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
            eprintln!(
                "{}: kiln\n{}\nthe other\n{}",
                case.name,
                pretty(&ours),
                pretty(&theirs)
            );
        }
        let against = if case.expected.is_some() {
            "expected.json"
        } else {
            "docker"
        };
        match diff(&ours, &theirs, against) {
            None => Outcome::Agree,
            Some(text) => Outcome::Mismatch(text),
        }
    }

    fn kiln_build(
        &self,
        case: &Case,
        context: &Path,
        secrets: &[String],
        store: &Path,
        dir: &Path,
    ) -> Result<Value, String> {
        let archive = dir.join("kiln-oci.tar");
        let mut cmd = Command::new(binary("kiln"));
        cmd.env("KILN_ROOT", store)
            .env_remove("SOURCE_DATE_EPOCH")
            .args(["build", "--progress", "plain", "-o"])
            .arg(format!("type=oci,dest={}", archive.display()));
        build_flags(&mut cmd, case, secrets);
        cmd.arg(context);
        run_logged(&mut cmd, &dir.join("kiln.log"))?;
        self.normalize(case, &archive)
    }

    /// [`Suite::docker_build`] up to [`DOCKER_TRIES`] times, a second
    /// apart: the last error when none succeeds.
    fn docker_build_tries(
        &self,
        case: &Case,
        context: &Path,
        secrets: &[String],
        dir: &Path,
    ) -> Result<Value, String> {
        let mut result = self.docker_build(case, context, secrets, dir);
        for _ in 1..DOCKER_TRIES {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
            result = self.docker_build(case, context, secrets, dir);
        }
        result
    }

    fn docker_build(
        &self,
        case: &Case,
        context: &Path,
        secrets: &[String],
        dir: &Path,
    ) -> Result<Value, String> {
        let tag = format!("kiln-differential-{}-{}:1", std::process::id(), case.name);
        let archive = dir.join("docker.tar");
        let mut cmd = Command::new(DOCKER);
        // dockerd here has no bridge network (CI starts it with --bridge=none).
        cmd.env("DOCKER_BUILDKIT", "1").args([
            "build",
            "--progress",
            "plain",
            "--network",
            "none",
            "-t",
            &tag,
        ]);
        build_flags(&mut cmd, case, secrets);
        cmd.arg(context);
        run_logged(&mut cmd, &dir.join("docker.log"))?;
        let mut tags = self.tags.lock().expect("docker tags");
        if !tags.contains(&tag) {
            tags.push(tag.clone());
        }
        drop(tags);
        run_logged(
            Command::new(DOCKER)
                .args(["save", "-o"])
                .arg(&archive)
                .arg(&tag),
            &dir.join("docker-save.log"),
        )?;
        self.normalize(case, &archive)
    }

    fn normalize(&self, case: &Case, archive: &Path) -> Result<Value, String> {
        let bytes = fs::read(archive).map_err(|e| format!("reading {}: {e}", archive.display()))?;
        Image::read(&bytes)
            .and_then(|image| image.normalize(&self.base, &case.setup.mount_stubs))
            .map_err(|e| format!("{}: {e}", archive.display()))
    }
}

/// The flags a case's `SETUP` gives both builders.
fn build_flags(cmd: &mut Command, case: &Case, secrets: &[String]) {
    for arg in &case.setup.build_args {
        cmd.args(["--build-arg", arg]);
    }
    if let Some(target) = &case.setup.target {
        cmd.args(["--target", target]);
    }
    for secret in secrets {
        cmd.args(["--secret", secret]);
    }
}

/// The case's files (not the runner's) copied to `context`, then its `SETUP` applied.
fn prepare_context(case: &Case, context: &Path) -> Result<(), String> {
    copy_tree(&case.dir, context, true)?;
    case.setup.apply(context)
}

fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("making {}: {e}", to.display()))?;
    let entries = fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", from.display()))?;
        let name = entry.file_name();
        if top && RUNNER_FILES.iter().any(|f| name == *f) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", src.display()))?;
        if kind.is_dir() {
            copy_tree(&src, &dst, false)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&src).map_err(|e| format!("{}: {e}", src.display()))?;
            std::os::unix::fs::symlink(target, &dst)
                .map_err(|e| format!("{}: {e}", dst.display()))?;
        } else {
            fs::copy(&src, &dst).map_err(|e| format!("copying {}: {e}", src.display()))?;
        }
    }
    Ok(())
}

/// The case's secrets as files outside the context; `id=…,src=…` each.
fn write_secrets(case: &Case, dir: &Path) -> Result<Vec<String>, String> {
    case.setup
        .secrets
        .iter()
        .map(|(id, text)| {
            let path = dir.join(format!("secret-{id}"));
            fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok(format!("id={id},src={}", path.display()))
        })
        .collect()
}

/// Runs `cmd` with its output in `log`, within [`BUILD_TIMEOUT`]; the
/// log's tail is the error.
fn run_logged(cmd: &mut Command, log: &Path) -> Result<(), String> {
    let file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {cmd:?}: {e}"))?;
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {BUILD_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!("{status}:\n      {}", tail.join("\n      ")))
}

/// Runs every case on a pool of workers; the outcomes in case order.
fn run_pool(suite: &Suite, cases: &[Case]) -> Vec<Outcome> {
    let jobs = std::env::var("KILN_DIFFERENTIAL_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
        .unwrap_or(3)
        .clamp(1, cases.len().max(1));
    let next = Mutex::new(0usize);
    let results = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for worker in 0..jobs {
            let (next, results) = (&next, &results);
            scope.spawn(move || {
                let store = suite.store(worker);
                loop {
                    let n = {
                        let mut next = next.lock().expect("case counter");
                        *next += 1;
                        *next - 1
                    };
                    let Some(case) = cases.get(n) else { break };
                    let started = Instant::now();
                    let outcome = suite.run(case, &store, n);
                    eprintln!(
                        "differential: {:<44} {:>6.1?} {}",
                        case.name,
                        started.elapsed(),
                        outcome.word()
                    );
                    results.lock().expect("results").insert(n, outcome);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_values()
        .collect()
}

impl Outcome {
    fn word(&self) -> &'static str {
        match self {
            Self::Agree => "agrees",
            Self::Mismatch(_) => "MISMATCH",
            Self::Broken(_) => "BROKEN",
            Self::Skipped => "skipped (no dockerd)",
        }
    }
}

/// Reports every outcome against `KNOWN_MISMATCHES` and fails on what is new.
fn judge(cases: &[Case], results: &[Outcome], known: &BTreeMap<String, String>) {
    let mut failures = Vec::new();
    let mut reported = Vec::new();
    for (case, outcome) in cases.iter().zip(results) {
        let listed = known.get(&case.name);
        match (outcome, listed) {
            (Outcome::Agree | Outcome::Skipped, None) => {}
            (Outcome::Skipped, Some(_)) => {}
            (Outcome::Agree, Some(_)) => failures.push(format!(
                "{}: agrees now; take it off tests/differential/KNOWN_MISMATCHES",
                case.name
            )),
            (Outcome::Mismatch(text), Some(reason)) => {
                reported.push(format!("{} (known: {reason}):\n{text}", case.name));
            }
            (Outcome::Mismatch(text), None) => failures.push(format!("{}:\n{text}", case.name)),
            (Outcome::Broken(text), _) => {
                failures.push(format!("{}: the case is broken: {text}", case.name));
            }
        }
    }
    let skipped = results
        .iter()
        .filter(|o| matches!(o, Outcome::Skipped))
        .count();
    if skipped > 0 {
        eprintln!("NOTICE: differential: {skipped} cases skipped (they need dockerd)");
    }
    if !reported.is_empty() {
        eprintln!(
            "differential: {} known mismatches (not failures):\n\n{}\n",
            reported.len(),
            reported.join("\n\n")
        );
    }
    assert!(
        failures.is_empty(),
        "differential: {} of {} cases fail:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// A readable difference between kiln's normalized image and the other's
/// (`against`: docker or expected.json), or `None` when they agree.
fn diff(ours: &Value, theirs: &Value, against: &str) -> Option<String> {
    if ours == theirs {
        return None;
    }
    let mut lines = Vec::new();
    let config = (&ours["config"], &theirs["config"]);
    for field in keys(config.0, config.1) {
        let (a, b) = (&config.0[&field], &config.1[&field]);
        if a != b {
            lines.push(format!("  config.{field}: kiln {a} | {against} {b}"));
        }
    }
    for field in ["history", "layers"] {
        let (a, b) = (&ours[field], &theirs[field]);
        if a != b {
            lines.push(format!("  {field}: kiln {a} | {against} {b}"));
        }
    }
    let files = (&ours["files"], &theirs["files"]);
    for path in keys(files.0, files.1) {
        let (a, b) = (&files.0[&path], &files.1[&path]);
        if a != b {
            lines.push(format!(
                "  {path}:\n      kiln   {}\n      {against:<6} {}",
                shown(a),
                shown(b)
            ));
        }
    }
    let (a, b) = (&ours["removed"], &theirs["removed"]);
    if a != b {
        lines.push(format!("  removed: kiln {a} | {against} {b}"));
    }
    Some(lines.join("\n"))
}

fn keys(a: &Value, b: &Value) -> std::collections::BTreeSet<String> {
    let names = |v: &Value| {
        v.as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    names(a).into_iter().chain(names(b)).collect()
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "(absent)".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
