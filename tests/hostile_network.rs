//! A RUN step's network (issue 13, item 7): by default a namespace of the
//! step's own whose way out is a NAT (slirp4netns) that never reaches the
//! host's loopback; `none` is only loopback; `host` is the host's. No NAT
//! process and no namespace outlives a step, however it ends.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use kiln_testing::{Need, require, wait_for, wait_until};

use crate::busybox::{Setup, assert_stderr_has};
use crate::harness::{PATIENCE, kiln};

/// Tests that look for NAT processes run one at a time, so that each sees
/// only its own.
static NAT_SCAN: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    NAT_SCAN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn nat_ready() -> bool {
    require(&[
        Need::Root,
        Need::Busybox,
        Need::Tool("slirp4netns"),
        Need::Tool("ip"),
    ])
}

/// A TCP listener on the host that, for every connection, appends the
/// peer's address to `sentinel` and answers `reply`.
fn listen(addr: &str, sentinel: PathBuf, reply: &'static str) -> u16 {
    let listener = TcpListener::bind((addr, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let mut log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&sentinel)
                .unwrap();
            writeln!(log, "connection from {peer}").unwrap();
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    port
}

/// An address of the host that is not loopback, on a veth pair the test
/// makes (and removes when dropped): what "outside" is for a step whose
/// only way out is the NAT, on a machine whose other interfaces may not be
/// reachable.
struct HostAddress {
    link: String,
    addr: String,
}

impl HostAddress {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let link = format!("kn{id}a");
        let addr = format!("198.51.100.{}", id % 250 + 2);
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["link", "del", &link]).output();
        ip(&[
            "link",
            "add",
            &link,
            "type",
            "veth",
            "peer",
            "name",
            &format!("kn{id}b"),
        ]);
        let guard = Self { link, addr };
        ip(&[
            "addr",
            "add",
            &format!("{}/32", guard.addr),
            "dev",
            &guard.link,
        ]);
        ip(&["link", "set", &guard.link, "up"]);
        ip(&["link", "set", &format!("kn{id}b"), "up"]);
        guard
    }
}

impl Drop for HostAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
    }
}

/// Builds `dockerfile` and returns the files the last stage wrote at `/`,
/// as `name → content`, for the names asked.
fn build_and_read(
    s: &Setup,
    dockerfile: &str,
    extra: &[&str],
    names: &[&str],
) -> Vec<(String, String)> {
    let dest = s.dir.path().join("out");
    let _ = fs::remove_dir_all(&dest);
    let output = format!("type=local,dest={}", dest.display());
    let mut args = vec!["--progress=plain", "-o", output.as_str()];
    args.extend_from_slice(extra);
    let out = s.build(dockerfile, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    names
        .iter()
        .map(|n| {
            let text = fs::read_to_string(dest.join(n)).unwrap_or_default();
            ((*n).to_owned(), text.trim().to_owned())
        })
        .collect()
}

/// A shell line that tries to connect to `host:port` and writes `reached:`
/// and what it was told, or `unreachable`, to `/file`.
fn probe(host: &str, port: u16, file: &str) -> String {
    format!(
        "(busybox nc -w 3 {host} {port} </dev/null > /{file}.got && echo \"reached:$(cat /{file}.got)\" || echo unreachable) > /{file}; rm -f /{file}.got"
    )
}

#[test]
fn default_network_reaches_out_but_never_the_hosts_loopback() {
    if !nat_ready() {
        return;
    }
    let _lock = lock();
    let s = Setup::new();
    let sentinel = s.dir.path().join("loopback-reached");
    let loopback = listen("127.0.0.1", sentinel.clone(), "secret-from-host-loopback");
    let outside = HostAddress::new();
    let outside_log = s.dir.path().join("outside-reached");
    let out_port = listen(&outside.addr, outside_log.clone(), "hello-from-outside");
    let dockerfile = format!(
        "FROM base:busybox\n\
         RUN {} ; {} ; {} ; busybox wget -q -T 3 -O /dev/null http://127.0.0.1:{loopback}/ ; true\n\
         RUN {} ; cat /etc/resolv.conf > /resolv\n",
        probe("127.0.0.1", loopback, "lo"),
        probe("10.0.2.2", loopback, "gw"),
        probe("localhost", loopback, "name"),
        probe(&outside.addr, out_port, "out"),
    );
    // (wget's own verdict says nothing, the listener's answer is not HTTP:
    // the sentinel says whether it connected.)
    let files = build_and_read(&s, &dockerfile, &[], &["lo", "gw", "name", "out", "resolv"]);
    for (name, content) in &files[..3] {
        assert_eq!(content, "unreachable", "/{name}: {files:?}");
    }
    assert!(
        !sentinel.exists(),
        "the host's loopback listener was reached: {}",
        fs::read_to_string(&sentinel).unwrap_or_default()
    );
    assert_eq!(
        files[3].1, "reached:hello-from-outside",
        "outbound through the NAT: {files:?}"
    );
    assert!(fs::read_to_string(&outside_log).is_ok_and(|l| l.contains("connection from")));
    let resolv = &files[4].1;
    assert!(
        resolv.contains("nameserver") && !resolv.contains("nameserver 127."),
        "a reachable resolver: {resolv}"
    );
}

#[test]
fn none_is_only_loopback_and_host_is_the_hosts() {
    if !nat_ready() {
        return;
    }
    let _lock = lock();
    let s = Setup::new();
    let sentinel = s.dir.path().join("reached");
    let port = listen("127.0.0.1", sentinel.clone(), "host-loopback");
    let interfaces = "busybox tail -n +3 /proc/net/dev | busybox cut -d: -f1 | busybox tr -d ' ' | busybox tr '\\n' ' '";
    let dockerfile = format!(
        "FROM base:busybox\n\
         RUN --network=none {} ; {interfaces} > /none-if\n\
         RUN --network=host {}\n",
        probe("127.0.0.1", port, "none"),
        probe("127.0.0.1", port, "host"),
    );
    let files = build_and_read(
        &s,
        &dockerfile,
        &["--allow", "network.host"],
        &["none", "none-if", "host"],
    );
    assert_eq!(files[0].1, "unreachable", "{files:?}");
    assert_eq!(files[1].1, "lo", "only loopback: {files:?}");
    assert_eq!(files[2].1, "reached:host-loopback", "{files:?}");
    assert_eq!(
        fs::read_to_string(&sentinel).unwrap().lines().count(),
        1,
        "only the host step connected"
    );

    // `kiln build --network=none|host` is the default of steps that do not ask.
    let dockerfile = format!(
        "FROM base:busybox\nRUN {} ; {interfaces} > /if\n",
        probe("127.0.0.1", port, "p")
    );
    let files = build_and_read(&s, &dockerfile, &["--network=none"], &["p", "if"]);
    assert_eq!(
        (files[0].1.as_str(), files[1].1.as_str()),
        ("unreachable", "lo"),
        "{files:?}"
    );
    let files = build_and_read(&s, &dockerfile, &["--network=host"], &["p"]);
    assert_eq!(files[0].1, "reached:host-loopback", "{files:?}");
}

#[test]
fn a_missing_nat_fails_the_step_and_names_the_package() {
    if !nat_ready() {
        return;
    }
    let s = Setup::new();
    let dest = s.dir.path().join("out");
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox\nRUN echo ran > /ran\n",
    )
    .unwrap();
    // kiln finds its helper beside itself; slirp4netns only through PATH.
    let out = kiln()
        .env("KILN_ROOT", &s.root)
        .env("PATH", s.dir.path().join("empty-path"))
        .args(["build", "-o"])
        .arg(format!("type=local,dest={}", dest.display()))
        .arg(&s.context)
        .output()
        .unwrap();
    assert!(!out.status.success(), "no fallback to the host's network");
    assert_stderr_has(&out, "line 2");
    assert_stderr_has(&out, "install the `slirp4netns` package");
    assert!(!dest.join("ran").exists());
}

/// The step's mounts are set up while the NAT comes up; a NAT that fails
/// then fails the step before it ever runs.
#[test]
fn a_nat_that_dies_before_it_is_up_fails_the_step_before_it_runs() {
    if !nat_ready() {
        return;
    }
    let s = Setup::new();
    let bin = s.dir.path().join("fake-nat");
    fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("slirp4netns");
    crate::harness::write_program(
        &fake,
        "#!/bin/sh
echo 'cannot attach to the namespace' >&2
exit 1
",
    );
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox
RUN --mount=type=cache,id=nat,target=/c touch /c/step-ran
",
    )
    .unwrap();
    let out = kiln()
        .env("KILN_ROOT", &s.root)
        .env("PATH", &bin)
        .args(["build", "--progress=plain"])
        .arg(&s.context)
        .output()
        .unwrap();
    assert!(!out.status.success(), "no step without its network");
    assert_stderr_has(&out, "line 2");
    assert_stderr_has(&out, "exited before the network was up");
    assert_stderr_has(&out, "cannot attach to the namespace");
    let ran = crate::hostile_entitlements::sentinels(s.dir.path());
    assert!(ran.is_empty(), "the step ran without its network: {ran:?}");
}

/// Every process whose network namespace is `netns` (`net:[N]`).
fn processes_in(netns: &str) -> Vec<u32> {
    pids()
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == netns)
        })
        .collect()
}

fn pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
}

fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The step running `sleep <mark>`: its network namespace, and the NAT
/// processes attached to it (slirp4netns names its target by pid).
fn running_step(mark: &str) -> Option<(String, BTreeSet<u32>)> {
    let step = pids().find(|p| cmdline(*p) == ["sleep", mark])?;
    let netns = fs::read_link(format!("/proc/{step}/ns/net")).ok()?;
    let netns = netns.to_string_lossy().into_owned();
    let nats = pids()
        .filter(|p| {
            let args = cmdline(*p);
            args.first().is_some_and(|a| a.ends_with("slirp4netns"))
                && args.len() >= 2
                && fs::read_link(format!("/proc/{}/ns/net", args[args.len() - 2]))
                    .is_ok_and(|l| l.to_string_lossy() == netns)
        })
        .collect();
    Some((netns, nats))
}

/// Starts a build of a step that sleeps `mark` seconds and then exits with
/// `code`; returns the client once the step runs, with its namespace and NAT.
fn start_step(s: &Setup, mark: &str, code: u8) -> (std::process::Child, String, BTreeSet<u32>) {
    fs::write(
        s.context.join("Dockerfile"),
        format!("FROM base:busybox\nRUN sleep {mark}; exit {code}\n"),
    )
    .unwrap();
    let client = kiln()
        .env("KILN_ROOT", &s.root)
        .args(["build", "--progress=plain"])
        .arg(&s.context)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (netns, nats) = wait_for(
        PATIENCE,
        "the step to run with a NAT attached to its namespace",
        || running_step(mark).filter(|(_, nats)| !nats.is_empty()),
    );
    let host = fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        Path::new(&netns),
        host,
        "the step is not in the host's namespace"
    );
    (client, netns, nats)
}

fn assert_gone(netns: &str, nats: &BTreeSet<u32>, when: &str) {
    wait_until(
        PATIENCE,
        &format!("{when}: the NAT {nats:?} to end"),
        || {
            nats.iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
        },
    );
    wait_until(
        PATIENCE,
        &format!("{when}: every process in {netns} to end"),
        || processes_in(netns).is_empty(),
    );
}

#[test]
fn no_nat_or_namespace_outlives_a_step() {
    if !nat_ready() {
        return;
    }
    let _lock = lock();
    let s = Setup::new();
    let host_links = links();

    // A step that succeeds: the helper stops its NAT before it exits.
    let (client, netns, nats) = start_step(&s, "1.0101", 0);
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in &nats {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "NAT {p} left after the step"
        );
    }
    assert_gone(&netns, &nats, "after a step that succeeded");

    // A step that fails.
    let (client, netns, nats) = start_step(&s, "1.0202", 3);
    let out = client.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert_gone(&netns, &nats, "after a failed step");

    // The client killed mid-step (SIGKILL: nothing of kiln runs after it).
    let (mut client, netns, nats) = start_step(&s, "30.0303", 0);
    client.kill().unwrap();
    let mut rest = String::new();
    let _ = client
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut rest));
    let _ = client.wait();
    assert_gone(&netns, &nats, "after the client was killed");
    assert!(
        !pids().any(|p| cmdline(p) == ["sleep", "30.0303"]),
        "the step was killed with it"
    );
    // The steps' interfaces (persistent taps) went with their namespaces;
    // none was handed to the host's.
    wait_until(
        PATIENCE,
        &format!("the host's interfaces to be {host_links:?} again"),
        || links() == host_links,
    );
}

/// The host's network interfaces.
fn links() -> BTreeSet<String> {
    fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
