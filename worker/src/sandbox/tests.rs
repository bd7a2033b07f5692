use std::fs;
use std::path::{Path, PathBuf};

use super::setup::{DEFAULT_CAPS, enter};
use super::spec::{Mount, MountKind, Network, Rootfs, RunSpec, Ulimit};
use super::syscall::Recording;

fn spec(root: &Path, network: Network) -> RunSpec {
    RunSpec {
        rootfs: Rootfs {
            lowerdirs: vec![PathBuf::from("/l2"), PathBuf::from("/l1")],
            upperdir: PathBuf::from("/up"),
            workdir: PathBuf::from("/work"),
            target: root.join("merged"),
        },
        args: vec!["sh".into(), "-c".into(), "true".into()],
        env: vec!["PATH=/usr/bin:/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        hostname: "kiln".into(),
        network,
        privileged: false,
        mounts: vec![Mount {
            target: "/cache".into(),
            kind: MountKind::Tmpfs { size: 1 << 20 },
        }],
        etc_files: vec![("/etc/hosts".into(), root.join("hosts"))],
        ulimits: Vec::new(),
        shm_size: 64 << 20,
        state_dir: root.join("state"),
    }
}

/// A temporary directory (by its canonical path, as descriptors name it)
/// with the merged root, the state directory and the hosts file.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir_all(path.join("merged")).unwrap();
    fs::create_dir_all(path.join("state")).unwrap();
    fs::write(path.join("hosts"), "").unwrap();
    (dir, path)
}

/// The stub list: NUL-ended paths.
fn stubs(path: &Path) -> Vec<String> {
    fs::read(path.join("state/stubs"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The setup sequence, recorded: what is mounted where, in which order,
/// and that privileges go last, right before exec.
#[test]
fn setup_order() {
    let (_dir, path) = scratch();
    // What the proc mount would show: one masked file and directory, one
    // read-only directory.
    let proc_dir = path.join("merged/proc");
    fs::create_dir_all(proc_dir.join("sys")).unwrap();
    fs::create_dir_all(proc_dir.join("scsi")).unwrap();
    fs::write(proc_dir.join("kcore"), "").unwrap();
    let sys = Recording::default();
    let mut s = spec(&path, Network::None);
    // Two steps that changed nothing: the same empty layer twice.
    s.rootfs.lowerdirs.push("/l2".into());
    s.ulimits = ["nofile=1024:2048", "core=-1"]
        .iter()
        .map(|u| Ulimit::parse(u).unwrap())
        .collect();
    s.shm_size = 128 << 20;
    assert!(
        enter(&sys, &s).unwrap().is_none(),
        "the recorded fork returns as the child"
    );
    let calls = sys.calls();
    let merged = path.join("merged").display().to_string();
    let pos = |prefix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {calls:#?}"))
    };
    let has = |call: String| assert!(calls.contains(&call), "{call} in {calls:#?}");

    assert!(
        calls[0].starts_with("unshare")
            && calls[0].contains("CLONE_NEWNET")
            && calls[0].contains("CLONE_NEWPID")
    );
    assert_eq!(calls[1], "fork");
    assert_eq!(calls[2], "set_parent_death_kill");
    assert!(
        calls[3].starts_with("mount - / - MS_REC | MS_PRIVATE"),
        "{}",
        calls[3]
    );
    assert_eq!(calls[4], "loopback_up");
    // The layers share a parent: named from there, each once, highest kept.
    assert_eq!(calls[5], "chdir /");
    assert_eq!(
        calls[6],
        format!(
            "mount overlay {merged} overlay MS_NODEV lowerdir=l2:l1,upperdir=/up,workdir=/work,volatile"
        )
    );
    let locked = "MS_NOSUID | MS_NODEV | MS_NOEXEC";
    assert!(
        pos(&format!("mount proc {merged}/proc proc {locked}"))
            < pos(&format!(
                "mount tmpfs {merged}/dev tmpfs MS_NOSUID | MS_NODEV"
            ))
    );
    has(format!("mount /dev/null {merged}/proc/kcore - MS_BIND -"));
    has(format!(
        "mount tmpfs {merged}/proc/scsi tmpfs MS_RDONLY | {locked} size=0,mode=755"
    ));
    has(format!(
        "mount {merged}/proc/sys {merged}/proc/sys - MS_BIND | MS_REC -"
    ));
    has(format!(
        "mount - {merged}/proc/sys - MS_RDONLY | {locked} | MS_REMOUNT | MS_BIND | MS_REC -"
    ));
    has(format!(
        "mount sysfs {merged}/sys sysfs MS_RDONLY | {locked} -"
    ));
    has(format!("mount /dev/null {merged}/dev/null - MS_BIND -"));
    has(format!(
        "mount devpts {merged}/dev/pts devpts MS_NOSUID | MS_NOEXEC newinstance,ptmxmode=0666,mode=620"
    ));
    has(format!(
        "mount tmpfs {merged}/cache tmpfs MS_NOSUID | MS_NODEV size=1048576"
    ));
    has(format!(
        "mount tmpfs {merged}/dev/shm tmpfs MS_NOSUID | MS_NODEV | MS_NOEXEC mode=1777,size=134217728"
    ));
    has(format!(
        "mount {} {merged}/etc/hosts - MS_BIND | MS_REC -",
        path.join("hosts").display()
    ));
    has(format!(
        "mount - {merged}/etc/hosts - MS_NODEV | MS_REMOUNT | MS_BIND | MS_REC -"
    ));
    let mut dev: Vec<String> = fs::read_dir(path.join("merged/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dev.sort();
    assert_eq!(
        dev,
        [
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
            "tty", "urandom", "zero"
        ]
    );
    let pivot = pos("pivot_root . .");
    assert_eq!(calls[pivot - 1], format!("chdir {merged}"));
    assert_eq!(calls[pivot + 1], "umount2 . MNT_DETACH");
    assert!(pos("sethostname kiln") > pivot);
    // Limits while the helper may still raise a hard one, before the user.
    let nofile = pos("setrlimit RLIMIT_NOFILE 1024 2048");
    assert_eq!(
        calls[nofile + 1],
        format!("setrlimit RLIMIT_CORE {} {}", u64::MAX, u64::MAX)
    );
    assert!(pos("sethostname") < nofile && nofile < pos("drop_bounding_caps"));
    let caps = pos("drop_bounding_caps");
    assert_eq!(
        calls[caps],
        format!("drop_bounding_caps keep {DEFAULT_CAPS:?}")
    );
    assert!(caps < pos("set_no_new_privs") && pos("set_no_new_privs") < pos("set_ids 0 0 []"));
    let n = calls.len();
    assert!(
        calls[n - 1].starts_with("execve "),
        "exec is last: {calls:#?}"
    );
    assert_eq!(calls[n - 2], "seccomp 2 filters", "seccomp right before");
    assert!(pos("set_ids") < n - 2 && pos("chdir /") < n - 2);

    // The mount points it had to create are listed for removal from the layer.
    let stubs = stubs(&path);
    for stub in ["dev", "sys", "etc", "etc/hosts", "cache"] {
        assert!(stubs.iter().any(|l| l == stub), "{stub} in {stubs:?}");
    }
}

#[test]
fn host_network_keeps_the_namespace_and_privileged_keeps_everything() {
    let (_dir, path) = scratch();
    fs::create_dir_all(path.join("merged/proc/sys")).unwrap();
    fs::write(path.join("merged/proc/kcore"), "").unwrap();
    let sys = Recording::default();
    let mut s = spec(&path, Network::Host);
    s.privileged = true;
    enter(&sys, &s).unwrap();
    let calls = sys.calls();
    assert!(!calls[0].contains("CLONE_NEWNET"));
    assert!(!calls.iter().any(|c| c == "loopback_up"
        || c.starts_with("drop_bounding_caps")
        || c == "set_no_new_privs"
        || c.starts_with("seccomp")
        || c.contains("MS_NODEV | MS_REMOUNT")
        || c.contains("/proc/kcore")
        || c.contains("/proc/sys")));
    assert!(calls[5].starts_with("mount overlay") && calls[5].contains(" overlay (empty) "));
}

/// An image whose `/etc` and `/link` are symlinks to a host directory:
/// the mount points are made inside the root, where the links lead there,
/// and listed by those paths; the host directory stays as it was.
#[test]
fn mount_points_resolve_inside_the_root() {
    let (_dir, path) = scratch();
    let host = tempfile::tempdir().unwrap();
    let host_dir = fs::canonicalize(host.path()).unwrap();
    let merged = path.join("merged");
    std::os::unix::fs::symlink(&host_dir, merged.join("etc")).unwrap();
    std::os::unix::fs::symlink(&host_dir, merged.join("link")).unwrap();
    // A dangling link as the target itself: followed inside too.
    std::os::unix::fs::symlink(host_dir.join("file"), merged.join("file")).unwrap();
    let sys = Recording::default();
    let mut s = spec(&path, Network::Host);
    s.mounts = vec![
        Mount {
            target: "/link/a/b".into(),
            kind: MountKind::Tmpfs { size: 0 },
        },
        Mount {
            target: "/file".into(),
            kind: MountKind::Bind {
                source: path.join("hosts"),
                readonly: true,
            },
        },
    ];
    enter(&sys, &s).unwrap();
    assert_eq!(
        fs::read_dir(&host_dir).unwrap().count(),
        0,
        "nothing made on the host"
    );
    let inside = merged.join(host_dir.strip_prefix("/").unwrap());
    let calls = sys.calls();
    for made in ["hosts", "a/b", "file"] {
        let at = inside.join(made);
        assert!(at.exists(), "{} made", at.display());
        assert!(
            calls
                .iter()
                .any(|c| c.contains(&format!(" {} ", at.display()))),
            "mounted on {}: {calls:#?}",
            at.display()
        );
    }
    let rel = host_dir.strip_prefix("/").unwrap().display().to_string();
    let stubs = stubs(&path);
    for stub in [
        format!("{rel}/hosts"),
        format!("{rel}/a/b"),
        format!("{rel}/file"),
    ] {
        assert!(stubs.contains(&stub), "{stub} in {stubs:?}");
    }
}

/// The stub cleanup removes empty stubs, and nothing through a symlink a
/// step put in their way.
#[test]
fn stub_cleanup_never_follows_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("upper");
    let host = dir.path().join("host");
    fs::create_dir_all(upper.join("kept/x")).unwrap();
    fs::create_dir_all(upper.join("full")).unwrap();
    fs::write(upper.join("full/data"), "data").unwrap();
    fs::write(upper.join("empty"), "").unwrap();
    fs::create_dir_all(host.join("x")).unwrap();
    fs::write(host.join("f"), "").unwrap();
    std::os::unix::fs::symlink(&host, upper.join("m")).unwrap();
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    fs::write(
        state.join("stubs"),
        "m\0m/x\0m/f\0kept\0kept/x\0full\0empty\0../host/x\0",
    )
    .unwrap();
    super::remove_stubs(&state, &upper);
    assert!(host.join("x").is_dir() && host.join("f").is_file());
    assert!(upper.join("m").is_symlink());
    assert!(!upper.join("kept").exists(), "empty stubs removed");
    assert!(upper.join("full/data").exists() && !upper.join("empty").exists());
}

/// The default network: the helper's own network namespace and its NAT come
/// first, before the mount and PID namespaces (the NAT must stay in the
/// host's), and the step's namespaces then leave the network alone.
#[test]
fn private_network_starts_the_nat_before_the_other_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("merged")).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("hosts"), "").unwrap();
    let sys = Recording::default();
    let s = spec(dir.path(), Network::Private);
    assert!(enter(&sys, &s).unwrap().is_none());
    let calls = sys.calls();
    assert_eq!(calls[0], "open_netns");
    assert_eq!(calls[1], "unshare CloneFlags(CLONE_NEWNET)");
    assert_eq!(calls[2], "make_tap eth0");
    assert!(
        calls[3].starts_with("spawn_in_netns slirp4netns ")
            && calls[3].contains("--disable-host-loopback")
            && calls[3].ends_with(&format!(" {} eth0", std::process::id())),
        "{}",
        calls[3]
    );
    assert!(
        calls[4].starts_with("unshare") && !calls[4].contains("CLONE_NEWNET"),
        "{}",
        calls[4]
    );
    assert_eq!(calls[5], "fork");
    assert!(!calls.iter().any(|c| c == "loopback_up"));
    // The step starts on the parent's go, after its mounts, before its filter.
    let go = calls.iter().position(|c| c == "wait_go").unwrap();
    assert!(calls[..go].iter().any(|c| c.starts_with("pivot_root")));
    assert!(calls[go + 1].starts_with("seccomp"), "{}", calls[go + 1]);
}

#[test]
fn a_refused_scripts_interpreter_is_the_path_its_first_line_names() {
    use super::refused::interpreter;
    assert_eq!(
        interpreter(b"#!/bin/sh -e\necho\n").as_deref(),
        Some("/bin/sh")
    );
    assert_eq!(
        interpreter(b"#! \t/usr/bin/env python3\n").as_deref(),
        Some("/usr/bin/env")
    );
    assert_eq!(interpreter(b"#!/bin/sh").as_deref(), Some("/bin/sh"));
    for none in [
        &b"#!"[..],
        b"#!   \n/bin/sh\n",
        b"\x7fELF",
        b"",
        b"#!/bin/\xff\n",
    ] {
        assert_eq!(interpreter(none), None, "{none:?}");
    }
}
