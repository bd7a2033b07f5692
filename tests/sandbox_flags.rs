//! docker build's sandbox flags (issue 14, item 16): `--add-host`,
//! `--ulimit`, `--shm-size` and the `BUILDKIT_SANDBOX_HOSTNAME` build arg
//! reach every RUN step — embedded, through kilnd and on a farm worker —
//! are part of the step (another value runs it again; as BuildKit, an
//! `--add-host` name's address is not), and a bad value is refused with
//! its flag named.

use std::fs;
use std::path::PathBuf;

use kiln_proto::control::v1 as control;

use crate::busybox::{Setup, assert_stderr_has, ready};
use crate::farm::{FarmWorker, wait_for, workers};
use crate::kilnd::{Kilnd, raw_build_error};

/// One RUN that writes down what its sandbox looks like.
const PROBE: &str = "FROM base:busybox\n\
RUN /bin/busybox hostname > /hostname && cat /etc/hostname > /etc-hostname \
&& cat /etc/hosts > /hosts && cat /proc/self/limits > /limits \
&& /bin/busybox df -k /dev/shm > /shm\n";

/// What the probe saw.
struct Seen {
    dir: PathBuf,
}

impl Seen {
    fn file(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap()
    }

    fn hostname(&self) -> String {
        self.file("hostname").trim().to_owned()
    }

    /// `/proc/self/limits`' soft and hard columns of a row ("Max open files").
    fn limit(&self, row: &str) -> (String, String) {
        let limits = self.file("limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("{row} in {limits}"));
        let cols: Vec<&str> = line[row.len()..].split_whitespace().collect();
        (cols[0].to_owned(), cols[1].to_owned())
    }

    /// `/dev/shm`'s size in KiB, as df says.
    fn shm_kib(&self) -> u64 {
        let df = self.file("shm");
        let line = df.lines().nth(1).unwrap_or_else(|| panic!("df: {df}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

/// Builds the probe with `flags` (through kilnd at `addr` when given)
/// into a fresh directory.
fn probe(s: &Setup, addr: Option<&str>, flags: &[&str]) -> Seen {
    let dir = s.dir.path().join("out");
    let _ = fs::remove_dir_all(&dir);
    let output = format!("type=local,dest={}", dir.display());
    let out = probe_output(s, addr, &[&["-o", output.as_str()], flags].concat());
    assert!(
        out.status.success(),
        "{flags:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Seen { dir }
}

fn probe_output(s: &Setup, addr: Option<&str>, flags: &[&str]) -> std::process::Output {
    fs::write(s.context.join("Dockerfile"), PROBE).unwrap();
    let mut args = Vec::new();
    if let Some(addr) = addr {
        args.extend(["--addr", addr]);
    }
    args.extend(["build", "--progress=plain"]);
    args.extend_from_slice(flags);
    args.push(s.context.to_str().unwrap());
    s.kiln(&args)
}

/// Refused before any step: the message names the flag.
fn refused(s: &Setup, addr: Option<&str>, flags: &[&str], needle: &str) {
    let out = probe_output(s, addr, flags);
    assert!(!out.status.success(), "{flags:?} was accepted");
    assert_stderr_has(&out, needle);
}

#[test]
fn the_hostname_build_arg_names_the_step_and_is_checked() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let seen = probe(&s, None, &[]);
    assert_eq!(seen.hostname(), "kiln", "kiln's default");
    assert_eq!(seen.file("etc-hostname"), "kiln\n");
    assert!(seen.file("hosts").contains("127.0.1.1\tkiln\n"));

    let arg = [
        "--build-arg",
        "BUILDKIT_SANDBOX_HOSTNAME=builder-01.example",
    ];
    let seen = probe(&s, None, &arg);
    assert_eq!(seen.hostname(), "builder-01.example");
    assert_eq!(seen.file("etc-hostname"), "builder-01.example\n");
    assert!(
        seen.file("hosts")
            .contains("127.0.1.1\tbuilder-01.example\n")
    );
    // Another name is another step: it ran again.
    let seen = probe(
        &s,
        None,
        &["--build-arg", "BUILDKIT_SANDBOX_HOSTNAME=other"],
    );
    assert_eq!(seen.hostname(), "other");

    for bad in ["bad_name", "a b", "-dash", &"a".repeat(65)] {
        let arg = format!("BUILDKIT_SANDBOX_HOSTNAME={bad}");
        refused(
            &s,
            None,
            &["--build-arg", &arg],
            "invalid BUILDKIT_SANDBOX_HOSTNAME",
        );
    }
}

#[test]
fn add_host_lines_reach_etc_hosts_and_their_names_make_the_step() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let flags = ["--add-host", "db:10.1.2.3", "--add-host", "v6=[fd00::5]"];
    let seen = probe(&s, None, &flags);
    let hosts = seen.file("hosts");
    assert!(hosts.ends_with("10.1.2.3\tdb\nfd00::5\tv6\n"), "{hosts}");
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");

    // Another name: the step runs again.
    let seen = probe(&s, None, &["--add-host", "cache=10.1.2.3"]);
    assert!(seen.file("hosts").ends_with("10.1.2.3\tcache\n"));
    // Another address for the same name: as BuildKit, the same step (an
    // address is the environment's, as a proxy is), so the cached layer.
    let seen = probe(&s, None, &["--add-host", "cache=10.9.9.9"]);
    assert!(seen.file("hosts").ends_with("10.1.2.3\tcache\n"));

    refused(&s, None, &["--add-host", "db"], "invalid --add-host \"db\"");
    refused(
        &s,
        None,
        &["--add-host", "db:10.1.2"],
        "is not an IPv4 or IPv6 address",
    );
    refused(
        &s,
        None,
        &["--add-host", "a b:10.1.2.3"],
        "invalid --add-host",
    );
    refused(
        &s,
        None,
        &["--add-host", "db:host-gateway"],
        "host-gateway is not supported",
    );
}

#[test]
fn ulimits_are_set_before_the_step_and_make_the_step() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let flags = [
        "--ulimit",
        "nofile=1024:2048",
        "--ulimit",
        "nproc=4096",
        "--ulimit",
        "core=-1",
    ];
    let seen = probe(&s, None, &flags);
    assert_eq!(seen.limit("Max open files"), ("1024".into(), "2048".into()));
    assert_eq!(seen.limit("Max processes"), ("4096".into(), "4096".into()));
    assert_eq!(
        seen.limit("Max core file size"),
        ("unlimited".into(), "unlimited".into())
    );
    // Another limit: the step runs again.
    let seen = probe(&s, None, &["--ulimit", "nofile=512:1024"]);
    assert_eq!(seen.limit("Max open files"), ("512".into(), "1024".into()));

    refused(
        &s,
        None,
        &["--ulimit", "nofile=2048:1024"],
        "invalid --ulimit \"nofile=2048:1024\": the soft limit 2048 is above the hard limit 1024",
    );
    refused(
        &s,
        None,
        &["--ulimit", "files=1"],
        "invalid --ulimit \"files=1\": unknown name",
    );
    refused(&s, None, &["--ulimit", "nofile=x"], "invalid --ulimit");
}

#[test]
fn shm_size_sizes_dev_shm_and_makes_the_step() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    assert_eq!(probe(&s, None, &[]).shm_kib(), 64 << 10, "Docker's 64 MiB");
    assert_eq!(
        probe(&s, None, &["--shm-size", "128m"]).shm_kib(),
        128 << 10
    );
    // Another size: the step runs again.
    assert_eq!(
        probe(&s, None, &["--shm-size", "100663296"]).shm_kib(),
        96 << 10
    );

    refused(
        &s,
        None,
        &["--shm-size", "12x"],
        "invalid --shm-size \"12x\"",
    );
    refused(&s, None, &["--shm-size=-1"], "invalid --shm-size \"-1\"");
    // More than the machine has: refused where the step would run.
    refused(
        &s,
        None,
        &["--shm-size", "64p"],
        "is more than this machine's memory",
    );
}

/// Every value at once, as the probe should see it.
const ALL: [&str; 10] = [
    "--build-arg",
    "BUILDKIT_SANDBOX_HOSTNAME=remote",
    "--add-host",
    "db:10.1.2.3",
    "--ulimit",
    "nofile=1000:2000",
    "--shm-size",
    "32m",
    "--ulimit",
    "nproc=3000",
];

fn assert_all(seen: &Seen) {
    assert_eq!(seen.hostname(), "remote");
    assert!(seen.file("hosts").ends_with("10.1.2.3\tdb\n"));
    assert_eq!(seen.limit("Max open files"), ("1000".into(), "2000".into()));
    assert_eq!(seen.limit("Max processes"), ("3000".into(), "3000".into()));
    assert_eq!(seen.shm_kib(), 32 << 10);
}

#[test]
fn through_kilnd_the_flags_reach_run_and_kilnd_checks_them_too() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    assert_all(&probe(&s, Some(&addr), &ALL));
    let seen = probe(&s, Some(&addr), &["--shm-size", "16m"]);
    assert_eq!(seen.shm_kib(), 16 << 10, "another size runs again");
    assert_eq!(seen.hostname(), "kiln");
    refused(
        &s,
        Some(&addr),
        &["--ulimit", "nofile=2:1"],
        "invalid --ulimit",
    );

    // A client other than kiln's CLI gets the same checks.
    let spec = |change: &dyn Fn(&mut control::BuildSpec)| {
        let mut spec = control::BuildSpec {
            dockerfile: PROBE.to_owned(),
            ..Default::default()
        };
        change(&mut spec);
        spec
    };
    for (spec, needle) in [
        (
            spec(&|s| s.add_hosts = vec!["x\n1.2.3.4 evil:1.2.3.4".into()]),
            "invalid --add-host",
        ),
        (
            spec(&|s| s.ulimits = vec!["nofile=-5".into()]),
            "invalid --ulimit",
        ),
        (spec(&|s| s.shm_size = "lots".into()), "invalid --shm-size"),
        (
            spec(&|s| {
                s.build_args
                    .insert("BUILDKIT_SANDBOX_HOSTNAME".into(), "x/y".into());
            }),
            "invalid BUILDKIT_SANDBOX_HOSTNAME",
        ),
    ] {
        let error = raw_build_error(&kilnd, spec);
        assert!(error.contains(needle), "{needle} in {error}");
    }
}

#[test]
fn on_a_farm_worker_the_flags_travel_with_the_step() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let _worker = FarmWorker::start(&s, &kilnd, "w1", &[]);
    wait_for(&s, &addr, "w1 to attach", |w| w.len() == 1);
    assert_all(&probe(&s, Some(&addr), &ALL));
    let ran: u64 = workers(&s, &addr).iter().map(|(_, _, steps)| steps).sum();
    assert_eq!(ran, 1, "the RUN step ran on the worker");
    // Another hostname: the step runs again, on the worker.
    let seen = probe(
        &s,
        Some(&addr),
        &["--build-arg", "BUILDKIT_SANDBOX_HOSTNAME=farmed"],
    );
    assert_eq!(seen.hostname(), "farmed");
    let ran: u64 = workers(&s, &addr).iter().map(|(_, _, steps)| steps).sum();
    assert_eq!(ran, 2);
}
