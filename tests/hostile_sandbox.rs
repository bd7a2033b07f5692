//! The RUN sandbox against hostile steps and images (issue 13, items 5
//! and 6): seccomp, a minimal `/dev`, `nodev`, masked and read-only `/proc`
//! paths, lifted by `--security=insecure`; mount targets and stub cleanup
//! that never leave the root filesystem, whatever symlinks the image or the
//! step puts in the way. Needs root; skipped with a notice otherwise.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::busybox::{Setup, base_tarball_with, ready};

/// A host directory with sentinel entries around the place a hostile image
/// points at: a file with content, an empty file and an empty directory
/// (what a stub cleanup would remove).
struct Sentinels {
    dir: PathBuf,
    before: BTreeMap<String, String>,
}

impl Sentinels {
    fn new(parent: &Path) -> Self {
        let dir = parent.join("host-dir");
        fs::create_dir_all(dir.join("x")).unwrap();
        fs::create_dir_all(dir.join("t")).unwrap();
        fs::write(dir.join("keep.txt"), "sentinel\n").unwrap();
        fs::write(dir.join("f"), "").unwrap();
        fs::write(dir.join("hosts"), "# the host's own\n").unwrap();
        let before = listing(&dir);
        Self { dir, before }
    }

    /// Fails when anything under the directory was created, changed or removed.
    fn assert_intact(&self) {
        assert_eq!(
            listing(&self.dir),
            self.before,
            "the host directory {} changed",
            self.dir.display()
        );
    }
}

/// Every entry under `dir` (relative path → type and content).
fn listing(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                todo.push(path.clone());
                "dir".to_owned()
            } else if meta.is_file() {
                format!("file {:?}", fs::read_to_string(&path).unwrap_or_default())
            } else {
                "other".to_owned()
            };
            out.insert(rel, what);
        }
    }
    out
}

/// A store whose `base:busybox` was changed by `tweak`.
fn setup_with(tweak: impl FnOnce(&Path)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tarball = base_tarball_with(dir.path(), tweak);
    Setup::with_base(dir, &tarball)
}

/// Builds `dockerfile` exporting its root filesystem; returns where, and
/// the build's output.
fn build_local(s: &Setup, dockerfile: &str, args: &[&str]) -> (PathBuf, std::process::Output) {
    let rootfs = s.dir.path().join("out");
    let local = format!("type=local,dest={}", rootfs.display());
    let out = s.build(dockerfile, &[args, &["-o", &local]].concat());
    (rootfs, out)
}

fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a step probes, each answer a file in `/report` of the result.
const PROBE: &str = r#"mkdir /report; cd /report
grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status > status
ls -A /dev > dev
busybox mknod /tmp/made c 1 3 && { echo x > /tmp/made && echo opened || echo refused; } > mknod 2>/dev/null
{ echo x > /shipped && echo opened || echo refused; } > shipped 2>/dev/null
{ busybox unshare -U true && echo allowed || echo refused; } > unshare 2>/dev/null
{ echo x > /dev/null && test "$(busybox head -c 4 /dev/zero | wc -c)" = 4 \
  && test "$(busybox head -c 4 /dev/urandom | wc -c)" = 4 \
  && test "$(busybox head -c 4 /dev/random | wc -c)" = 4 \
  && ! echo x 2>/dev/null > /dev/full && test -c /dev/tty && test -c /dev/ptmx \
  && test -d /dev/pts && touch /dev/shm/x && echo works || echo broken; } > devices
for p in MASKED; do
  if test -c $p || grep -q "^tmpfs $p tmpfs ro," /proc/self/mounts; then echo "$p masked"
  elif test -e $p; then echo "$p open"; fi
done > masked
for p in READ_ONLY; do
  if grep -q "^[^ ]* $p [^ ]* ro," /proc/self/mounts; then echo "$p read-only"
  elif test -e $p; then echo "$p writable"; fi
done > readonly
"#;

/// runc's masked paths: a file covered with /dev/null (a character device
/// then), a directory with a read-only tmpfs.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// runc's read-only paths: each a read-only mount of its own.
const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Those of `paths` this kernel has (the step's /proc and /sys are the
/// host kernel's), each with `state`.
fn lines(paths: &[&str], state: &str) -> String {
    paths
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| format!("{p} {state}\n"))
        .collect()
}

/// A base with a character device (1:3, the null device: harmless if it
/// opens) shipped in its layer, and the probe run with `security`.
fn probe(security: &str) -> BTreeMap<String, String> {
    let s = setup_with(|rootfs| {
        let made = std::process::Command::new("mknod")
            .arg("-m666")
            .arg(rootfs.join("shipped"))
            .args(["c", "1", "3"])
            .status()
            .unwrap();
        assert!(made.success());
    });
    fs::write(
        s.context.join("probe.sh"),
        PROBE
            .replace("MASKED", &MASKED.join(" "))
            .replace("READ_ONLY", &READ_ONLY.join(" ")),
    )
    .unwrap();
    let dockerfile =
        format!("FROM base:busybox\nCOPY probe.sh /probe.sh\nRUN {security} sh /probe.sh\n");
    // `--security=insecure` needs its entitlement; a default step ignores it.
    let (rootfs, out) = build_local(&s, &dockerfile, &["--allow", "security.insecure"]);
    assert_success(&out);
    fs::read_dir(rootfs.join("report"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn hostile_sandbox_default_run_is_confined() {
    if !ready() {
        return;
    }
    let r = probe("");
    let status = &r["status"];
    assert!(
        status.contains("Seccomp:\t2") && status.contains("NoNewPrivs:\t1"),
        "{status}"
    );
    assert_eq!(r["mknod"].trim(), "refused", "a node made in a step opens");
    assert_eq!(r["shipped"].trim(), "refused", "a node from a layer opens");
    assert_eq!(r["unshare"].trim(), "refused", "a user namespace was made");
    assert_eq!(r["devices"].trim(), "works");
    let dev: Vec<&str> = r["dev"].lines().collect();
    assert_eq!(
        dev,
        [
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
            "tty", "urandom", "zero"
        ],
        "nothing else in /dev"
    );
    assert_eq!(r["masked"], lines(MASKED, "masked"));
    assert_eq!(r["readonly"], lines(READ_ONLY, "read-only"));
}

#[test]
fn hostile_sandbox_insecure_lifts_the_confinement() {
    if !ready() {
        return;
    }
    let r = probe("--security=insecure");
    let status = &r["status"];
    assert!(
        status.contains("Seccomp:\t0") && status.contains("NoNewPrivs:\t0"),
        "{status}"
    );
    assert_eq!(r["mknod"].trim(), "opened");
    assert_eq!(r["shipped"].trim(), "opened");
    assert_eq!(r["unshare"].trim(), "allowed");
    assert_eq!(r["masked"], lines(MASKED, "open"));
    assert_eq!(r["readonly"], lines(READ_ONLY, "writable"));
}

/// A base image whose `/etc` is a symlink to a host directory: the
/// `/etc/hosts`, `resolv.conf` and `hostname` mount points are made inside
/// the root filesystem (where the link leads inside it), never on the host.
#[test]
fn hostile_sandbox_etc_symlink_stays_in_the_rootfs() {
    if !ready() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let sentinels = Sentinels::new(host.path());
    let target = sentinels.dir.clone();
    let s = setup_with(|rootfs| {
        fs::remove_dir_all(rootfs.join("etc")).unwrap();
        std::os::unix::fs::symlink(&target, rootfs.join("etc")).unwrap();
    });
    let (rootfs, out) = build_local(
        &s,
        "FROM base:busybox\nRUN cat /etc/hostname > /hostname && cat /etc/hosts > /hosts\n",
        &[],
    );
    sentinels.assert_intact();
    assert_success(&out);
    assert!(
        fs::read_to_string(rootfs.join("hosts"))
            .unwrap()
            .contains("localhost"),
        "the step saw kiln's /etc/hosts"
    );
    // The mount points made inside are stubs: gone from the result.
    let inside = rootfs.join(target.strip_prefix("/").unwrap());
    assert!(!inside.exists(), "{} left in the image", inside.display());
}

/// `--mount` targets under an image's symlink to a host directory.
#[test]
fn hostile_sandbox_mount_targets_through_a_symlink_stay_in_the_rootfs() {
    if !ready() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let sentinels = Sentinels::new(host.path());
    let target = sentinels.dir.clone();
    let s = setup_with(|rootfs| {
        std::os::unix::fs::symlink(&target, rootfs.join("link")).unwrap();
    });
    fs::write(s.context.join("f.txt"), "from the context\n").unwrap();
    let (_, out) = build_local(
        &s,
        "FROM base:busybox\n\
         RUN --mount=type=tmpfs,target=/link/new/t --mount=type=bind,source=f.txt,target=/link/bound \
         --mount=type=cache,target=/link/cache \
         sh -c 'echo x > /link/new/t/x && cat /link/bound && echo y > /link/cache/y'\n",
        &[],
    );
    sentinels.assert_intact();
    assert_success(&out);
}

/// A step that swaps a mount target's parent for a symlink to a host
/// directory holding an empty directory and file of the stubs' names: the
/// stub cleanup removes nothing there.
#[test]
fn hostile_sandbox_stub_cleanup_does_not_follow_a_swapped_parent() {
    if !ready() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let sentinels = Sentinels::new(host.path());
    let s = setup_with(|_| {});
    fs::write(s.context.join("empty"), "").unwrap();
    let dockerfile = format!(
        "FROM base:busybox\n\
         RUN --mount=type=tmpfs,target=/m/x --mount=type=bind,source=empty,target=/m/f \
         sh -c 'busybox mv /m /m.old && busybox ln -s {} /m'\n",
        sentinels.dir.display()
    );
    let (_, out) = build_local(&s, &dockerfile, &[]);
    sentinels.assert_intact();
    assert_success(&out);
}
