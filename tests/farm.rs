//! The build farm for real: kilnd and `kiln-worker` processes (each worker
//! with its own store) on a temporary socket. RUN steps spread over the
//! workers, which fetch their input layers from kilnd and send back what
//! they make; a worker killed mid-step costs only a retry elsewhere; a
//! worker without kilnd's token is refused.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};

use kiln_testing::wait_until;

use crate::busybox::{Setup, ready};
use crate::harness::{PATIENCE, binary, running};
use crate::kilnd::Kilnd;

/// A running `kiln-worker`, killed when dropped.
pub(crate) struct FarmWorker {
    child: Child,
}

impl FarmWorker {
    pub(crate) fn start(s: &Setup, kilnd: &Kilnd, id: &str, extra: &[&str]) -> Self {
        let child = Command::new(binary("kiln-worker"))
            .arg("--root")
            .arg(s.dir.path().join(id))
            .arg("--kilnd")
            .arg(kilnd.addr())
            .args(["--id", id, "--parallelism", "2"])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FarmWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kiln workers` through kilnd: (id, running, steps) of each farm worker.
pub(crate) fn workers(s: &Setup, addr: &str) -> Vec<(String, u32, u64)> {
    listing(s, addr)
        .into_iter()
        .map(|cols| {
            let [id, _, _, _, running, steps, _] = cols;
            (id, running.parse().unwrap(), steps.parse().unwrap())
        })
        .collect()
}

/// `kiln workers` through kilnd: the columns of each farm worker (ID,
/// PLATFORM, EMULATED, PARALLELISM, RUNNING, STEPS, STATUS).
pub(crate) fn listing(s: &Setup, addr: &str) -> Vec<[String; 7]> {
    let (out, _) = s.ok(&["--addr", addr, "workers"]);
    out.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            let cols: [String; 7] = cols.try_into().ok()?;
            (cols[0] != "local").then_some(cols)
        })
        .collect()
}

/// Waits until `done` holds of the farm workers (`kiln workers`).
pub(crate) fn wait_for(
    s: &Setup,
    addr: &str,
    what: &str,
    done: impl Fn(&[(String, u32, u64)]) -> bool,
) {
    wait_until(PATIENCE, what, || done(&workers(s, addr)));
}

fn file_in_layers(s: &Setup, addr: &str, image: &str, text: &str) -> bool {
    s.layers_text_through(addr, image).contains(text)
}

#[test]
fn steps_run_on_the_workers_and_a_lost_worker_costs_a_retry() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let token = s.dir.path().join("token");
    fs::write(&token, "farm-secret\n").unwrap();
    // kiln refuses a token file others can read.
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let kilnd = Kilnd::start_with(&s, &["--worker-token-file", token.to_str().unwrap()]);
    let addr = kilnd.addr();
    let mut w1 = FarmWorker::start(&s, &kilnd, "w1", &["--token-file", token.to_str().unwrap()]);
    let mut w2 = FarmWorker::start(&s, &kilnd, "w2", &["--token-file", token.to_str().unwrap()]);
    let wrong = s.dir.path().join("wrong");
    fs::write(&wrong, "guess").unwrap();
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    let _w3 = FarmWorker::start(&s, &kilnd, "w3", &["--token-file", wrong.to_str().unwrap()]);
    wait_for(&s, &addr, "w1 and w2 to attach", |w| w.len() == 2);
    assert!(
        workers(&s, &addr).iter().all(|(id, _, _)| id != "w3"),
        "a worker without the token is refused"
    );

    // Two stages at once (one each: the idle worker takes the second), then
    // a step over layers kilnd made itself (COPY), with a cache mount and
    // a secret.
    let secret = s.dir.path().join("secret.txt");
    fs::write(&secret, "s3cret").unwrap();
    let dockerfile = "FROM base:busybox AS a\n\
        RUN echo from-a > /a && sleep 1\n\
        FROM base:busybox AS b\n\
        RUN echo from-b > /b && sleep 1\n\
        FROM base:busybox\n\
        COPY --from=a /a /a\n\
        COPY --from=b /b /b\n\
        RUN --mount=type=cache,target=/cache --mount=type=secret,id=tok \
            cat /a /b /run/secrets/tok > /all && echo kept > /cache/x && echo on the farm\n\
        RUN --mount=type=bind,target=/src ls /src > /listing && cat /src/ctx.txt >> /listing\n";
    fs::write(s.context.join("ctx.txt"), "from-the-context\n").unwrap();
    fs::write(s.context.join("ignored.txt"), "never sent").unwrap();
    fs::write(s.context.join(".dockerignore"), "ignored.txt\n").unwrap();
    let secret_arg = format!("id=tok,src={}", secret.display());
    let out = s.build(
        dockerfile,
        &["--addr", &addr, "--secret", &secret_arg, "-t", "farm:1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("on the farm"),
        "a worker's output reaches the client: {stderr}"
    );
    let now = workers(&s, &addr);
    let steps: Vec<u64> = now.iter().map(|(_, _, steps)| *steps).collect();
    assert_eq!(steps.iter().sum::<u64>(), 4, "all four RUN steps: {now:?}");
    assert!(
        steps.iter().all(|n| *n >= 1),
        "both workers ran steps: {now:?}"
    );
    let layers = s.layers_text_through(&addr, "farm:1");
    assert!(
        layers.contains("Dockerfile\nctx.txt\nfrom-the-context\n"),
        "a bind mount of the context on a worker, without what .dockerignore leaves out: {layers}"
    );
    assert!(file_in_layers(
        &s,
        &addr,
        "farm:1",
        "from-a\nfrom-b\ns3cret"
    ));
    assert!(
        !file_in_layers(&s, &addr, "farm:1", "kept"),
        "the cache mount stays out of the layer"
    );
    let cached = s
        .dir
        .path()
        .read_dir()
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('w'))
        .any(|e| e.path().join("cache-mounts").is_dir());
    assert!(cached, "cache mounts live in the worker's store");

    // A worker killed mid-step: the step runs again on the other.
    let (w1_steps, w2_steps) = (steps[0], steps[1]);
    let build = crate::harness::kiln()
        .env("KILN_ROOT", &s.root)
        .args(["--addr", &addr, "build", "--no-cache", "-t", "farm:2"])
        .arg(write_context(
            &s,
            "FROM base:busybox\nRUN sleep 2 && echo survived > /s\n",
        ))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&s, &addr, "the step to start", |w| {
        w.iter().any(|(_, running, _)| *running > 0)
    });
    let on_w2 = workers(&s, &addr)
        .iter()
        .any(|(id, running, _)| id == "w2" && *running > 0);
    if on_w2 {
        w2.kill()
    } else {
        w1.kill()
    }
    let out = build.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(file_in_layers(&s, &addr, "farm:2", "survived"));
    let now = workers(&s, &addr);
    assert_eq!(now.len(), 1, "the killed worker is gone: {now:?}");
    assert_eq!(
        now[0].2,
        if on_w2 { w1_steps } else { w2_steps } + 1,
        "the survivor ran the step: {now:?}"
    );
}

/// The context directory with `dockerfile` in it.
fn write_context(s: &Setup, dockerfile: &str) -> std::path::PathBuf {
    fs::write(s.context.join("Dockerfile"), dockerfile).unwrap();
    s.context.clone()
}

/// Whether a process whose command line has `pattern` runs.
fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_cancelled_build_kills_its_farm_step_and_a_frozen_worker_is_dropped() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    // A store bound of one byte: collected (at most once a minute) after a step.
    let worker = FarmWorker::start(&s, &kilnd, "w1", &["--keep-storage", "1B"]);
    wait_for(&s, &addr, "w1 to attach", |w| w.len() == 1);

    // The client goes away mid-step: kilnd cancels the step on the worker.
    let mut client = crate::harness::kiln()
        .env("KILN_ROOT", &s.root)
        .args(["--addr", &addr, "build"])
        .arg(write_context(&s, "FROM base:busybox\nRUN sleep 42.5\n"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&s, &addr, "the step to reach w1", |w| w[0].1 == 1);
    wait_until(PATIENCE, "the step to start", || running("sleep 42.5"));
    client.kill().unwrap();
    let _ = client.wait();
    wait_for(&s, &addr, "the step to end on w1", |w| w[0].1 == 0);
    wait_until(PATIENCE, "the step's processes to be killed", || {
        !running("sleep 42.5")
    });
    let (snapshots, blobs) = (
        s.dir.path().join("w1/snapshots"),
        s.dir.path().join("w1/content/blobs/sha256"),
    );
    // Empty but for the (empty) directory of snapshots' short links.
    let empty = |dir: &std::path::Path| {
        fs::read_dir(dir).map_or(true, |d| d.flatten().all(|e| e.file_name() == "l"))
    };
    wait_until(
        PATIENCE,
        "the worker's store to be collected after its step (--keep-storage)",
        || empty(&snapshots) && empty(&snapshots.join("l")) && empty(&blobs),
    );

    // A worker that stops answering (SIGSTOP: its connection stays up) is
    // dropped after three missed heartbeats; its step then runs on kilnd.
    let build = crate::harness::kiln()
        .env("KILN_ROOT", &s.root)
        .args(["--addr", &addr, "build", "-t", "frozen:1"])
        .arg(write_context(
            &s,
            "FROM base:busybox\nRUN sleep 1.5 && echo finished > /f\n",
        ))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&s, &addr, "the step to start on w1", |w| w[0].1 == 1);
    signal(&worker.child, "-STOP");
    let out = build.wait_with_output().unwrap();
    signal(&worker.child, "-CONT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(file_in_layers(&s, &addr, "frozen:1", "finished"));
    // Back, it attaches again.
    wait_for(&s, &addr, "w1 to attach again", |w| {
        w.len() == 1 && w[0].1 == 0
    });
}

/// A worker kilnd refuses (a wrong token) exits at once, non-zero, with
/// kilnd's reason — where it used to try again forever; a kilnd that is
/// away is waited for.
#[test]
fn a_refused_worker_exits_with_the_reason() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let token = s.dir.path().join("token");
    fs::write(&token, "farm-secret\n").unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let kilnd = Kilnd::start_with(&s, &["--worker-token-file", token.to_str().unwrap()]);
    let wrong = s.dir.path().join("wrong");
    fs::write(&wrong, "guess").unwrap();
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    let worker = |kilnd_addr: &str| {
        Command::new(binary("kiln-worker"))
            .arg("--root")
            .arg(s.dir.path().join("refused"))
            .args(["--kilnd", kilnd_addr, "--id", "refused", "--token-file"])
            .arg(&wrong)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = worker(&kilnd.addr());
    wait_until(PATIENCE, "the refused worker to exit", || {
        child.try_wait().unwrap().is_some()
    });
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("refused this worker"), "{said}");
    assert!(said.contains("not kilnd's --worker-token"), "{said}");

    // No kilnd at all: not a refusal; the worker keeps trying.
    let away = format!("unix://{}", s.dir.path().join("nobody.sock").display());
    let mut child = worker(&away);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "it waits for kilnd");
    let _ = child.kill();
    let _ = child.wait();
}
