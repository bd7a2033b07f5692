use std::path::PathBuf;

use super::setup::{DEFAULT_CAPS, enter};
use super::spec::{Mount, MountKind, Network, Rootfs, RunSpec};
use super::syscall::Recording;

fn spec(root: &std::path::Path, network: Network) -> RunSpec {
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
        state_dir: root.join("state"),
    }
}

/// The setup sequence, recorded: what is mounted where, in which order,
/// and that privileges go last, right before exec.
#[test]
fn setup_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("merged")).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("hosts"), "").unwrap();
    let sys = Recording::default();
    let s = spec(dir.path(), Network::None);
    assert!(
        enter(&sys, &s).unwrap().is_none(),
        "the recorded fork returns as the child"
    );
    let calls = sys.calls();
    let merged = dir.path().join("merged").display().to_string();
    let pos = |prefix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {calls:#?}"))
    };

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
    assert_eq!(
        calls[5],
        format!(
            "mount overlay {merged} overlay (empty) lowerdir=/l2:/l1,upperdir=/up,workdir=/work"
        )
    );
    assert!(
        pos(&format!("mount proc {merged}/proc proc"))
            < pos(&format!("mount tmpfs {merged}/dev tmpfs"))
    );
    assert!(calls.iter().any(|c| c.contains(&format!(
        "{merged}/proc/sys - MS_RDONLY | MS_REMOUNT | MS_BIND"
    ))));
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with(&format!("mount sysfs {merged}/sys sysfs MS_RDONLY")))
    );
    assert!(calls.iter().any(
        |c| c == &format!("mount tmpfs {merged}/cache tmpfs MS_NOSUID | MS_NODEV size=1048576")
    ));
    assert!(calls.iter().any(|c| c.starts_with(&format!(
        "mount {} {merged}/etc/hosts",
        dir.path().join("hosts").display()
    ))));
    let pivot = pos("pivot_root . .");
    assert_eq!(calls[pivot - 1], format!("chdir {merged}"));
    assert_eq!(calls[pivot + 1], "umount2 . MNT_DETACH");
    assert!(pos("sethostname kiln") > pivot);
    let caps = pos("drop_bounding_caps");
    assert_eq!(
        calls[caps],
        format!("drop_bounding_caps keep {DEFAULT_CAPS:?}")
    );
    assert!(caps < pos("set_no_new_privs") && pos("set_no_new_privs") < pos("set_ids 0 0 []"));
    assert!(
        calls.last().unwrap().starts_with("execve "),
        "exec is last: {calls:#?}"
    );

    // The mount points it had to create are listed for removal from the layer.
    let stubs = std::fs::read_to_string(dir.path().join("state/stubs")).unwrap();
    for stub in ["proc", "dev", "sys", "etc", "etc/hosts", "cache"] {
        assert!(stubs.lines().any(|l| l == stub), "{stub} in {stubs}");
    }
}

#[test]
fn host_network_keeps_the_namespace_and_privileged_keeps_caps() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("merged")).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("hosts"), "").unwrap();
    let sys = Recording::default();
    let mut s = spec(dir.path(), Network::Host);
    s.privileged = true;
    enter(&sys, &s).unwrap();
    let calls = sys.calls();
    assert!(!calls[0].contains("CLONE_NEWNET"));
    assert!(!calls.iter().any(|c| c == "loopback_up"
        || c.starts_with("drop_bounding_caps")
        || c == "set_no_new_privs"));
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
    assert!(
        calls[2].starts_with("spawn_in_netns slirp4netns ")
            && calls[2].contains("--disable-host-loopback")
            && calls[2].ends_with(&format!(" {} eth0", std::process::id())),
        "{}",
        calls[2]
    );
    assert!(
        calls[3].starts_with("unshare") && !calls[3].contains("CLONE_NEWNET"),
        "{}",
        calls[3]
    );
    assert_eq!(calls[4], "fork");
    assert!(!calls.iter().any(|c| c == "loopback_up"));
}
