//! What the helper does, in order, generic over [`Syscall`] so that the
//! sequence can be tested by recording it.
//!
//! In the helper: for the default network, a network namespace with its
//! NAT ([`network`]); new mount, PID, UTS and IPC namespaces (and network,
//! for `--network=none`), then a fork so the step's process is PID 1 of its
//! namespace (when it exits, the kernel kills everything it left behind).
//! In that child: the overlay (`nodev`), `/proc` with its masked and
//! read-only paths, a minimal `/dev`, read-only `/sys`, the `/etc` files and
//! the step's mounts, every mount point resolved inside the root; then
//! `pivot_root`, hostname, the resource limits, the user, the bounding set,
//! `no_new_privs`, the seccomp filter and `execve`. `--security=insecure` (`privileged`) keeps
//! every capability and drops `nodev`, the masks, the read-only paths and
//! seccomp.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Gid, Uid};

use super::mountpoint::{Mounter, Stubs, existing};
use super::network::{self, Nat};
use super::refused::exec_failure;
use super::rlimit;
use super::seccomp;
use super::spec::{Failure, Mount, MountKind, Network, RunSpec};
use super::syscall::Syscall;
use super::user;
use crate::fileop::FileOpError;
use crate::fileop::root::{Root, proc_fd_path};

/// Docker's default capabilities (what a RUN step keeps).
pub const DEFAULT_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// Device nodes bound from the host into the step's `/dev` (with `ptmx`,
/// `pts`, `shm` and the `fd` links: what Docker's `/dev` holds).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// runc's and Docker's masked paths: a file is covered with `/dev/null`, a
/// directory with an empty read-only tmpfs. Missing ones are skipped.
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's and Docker's read-only paths (bound onto themselves read-only).
const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Why setup failed; written to the state directory's `error` file.
pub type SetupError = String;

pub(super) fn fail(what: impl std::fmt::Display, e: impl std::fmt::Display) -> SetupError {
    format!("{what}: {e}")
}

/// Namespaces for `spec` that [`enter`] unshares at once. A private
/// network's namespace is not among them: [`network::start`] made it
/// before, with the NAT attached.
pub fn namespaces(spec: &RunSpec) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// What the helper waits for and stops after [`enter`].
#[derive(Debug)]
pub struct Started {
    /// The step's process, PID 1 of its namespace.
    pub step: nix::unistd::Pid,
    /// The NAT of a private network, to stop once the step has exited.
    pub nat: Option<Nat>,
}

/// The helper's main part: namespaces, fork, and in the child everything
/// up to `execve`. Returns the step's pid in the parent; in the child it
/// returns only on failure (a [`Failure::Exec`] when the kernel refused
/// the step's program).
///
/// The child sets up its mounts while the parent waits for the NAT, and
/// starts the step only on the parent's go (a byte on a pipe): a step never
/// runs before its network is up, and a NAT that fails takes the step with
/// it.
///
/// Parent and child share the new mount namespace, so the child's
/// `pivot_root` moves the parent's root and working directory too: after
/// the fork the parent resolves no path, and works only through
/// descriptors opened before it.
pub fn enter<S: Syscall>(sys: &S, spec: &RunSpec) -> Result<Option<Started>, Failure> {
    // The NAT first, while the helper is still in the host's mount and PID
    // namespaces: its child must stay out of the step's.
    let nat = match spec.network {
        Network::Private => Some(network::start(sys, &spec.state_dir)?),
        Network::Host | Network::None => None,
    };
    sys.unshare(namespaces(spec))
        .map_err(|e| fail("creating namespaces", e))?;
    let (go, go_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| fail("creating a pipe", e))?;
    match sys.fork().map_err(|e| fail("fork", e))? {
        ForkResult::Parent { child } => {
            drop(go);
            let nat = match nat.map(network::Starting::ready).transpose() {
                Ok(nat) => nat,
                Err(why) => {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(child, None);
                    return Err(why.into());
                }
            };
            // A child that already failed has its status and its error.
            let _ = nix::unistd::write(&go_write, b"1");
            Ok(Some(Started { step: child, nat }))
        }
        ForkResult::Child => {
            drop(go_write);
            sys.set_parent_death_kill()
                .map_err(|e| fail("setting the parent-death signal", e))?;
            child(sys, spec, go)?;
            Ok(None)
        }
    }
}

/// What a step without `--security=insecure` is kept from.
fn confined(spec: &RunSpec) -> bool {
    !spec.privileged
}

fn child<S: Syscall>(sys: &S, spec: &RunSpec, go: OwnedFd) -> Result<(), Failure> {
    let root_path = &spec.rootfs.target;
    let state = &spec.state_dir;
    let mut stubs = Stubs::open(state)?;
    let m = Mounter { sys };
    // Device nodes open only where kiln put them (/dev's binds, devpts):
    // not from an image's layers, a step's mknod or a mounted directory.
    let nodev = if confined(spec) {
        MsFlags::MS_NODEV
    } else {
        MsFlags::empty()
    };

    // Nothing below may propagate back to the host's mounts.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(|e| fail("mounting /", e))?;
    if spec.network == Network::None {
        sys.loopback_up()
            .map_err(|e| fail("bringing up loopback", e))?;
    }
    let r = &spec.rootfs;
    mount_overlay(
        sys,
        &r.lowerdirs,
        Upper::Scratch(&r.upperdir, &r.workdir),
        root_path,
        nodev,
    )?;
    let root = Root::open(root_path).map_err(|e| fail("opening the root filesystem", e))?;

    proc_and_sys(&m, &root, &mut stubs, spec)?;
    dev(&m, &root, &mut stubs, nodev, spec.shm_size)?;

    for (target, source) in &spec.etc_files {
        let at = stubs.target(&root, target, true)?;
        m.bind(&root, target, source, &at, target, nodev)?;
    }
    for (index, mount) in spec.mounts.iter().enumerate() {
        step_mount(&m, &root, &mut stubs, state, index, mount, nodev)?;
    }
    drop(root);

    // pivot_root(".", ".") stacks the old root on the new one; detaching it
    // leaves only the new root. See pivot_root(2), "NOTES".
    sys.chdir(root_path)
        .map_err(|e| fail("chdir to the root filesystem", e))?;
    sys.pivot_root(Path::new("."), Path::new("."))
        .map_err(|e| fail("pivot_root", e))?;
    sys.umount2(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(|e| fail("detaching the old root", e))?;
    sys.chdir(Path::new("/")).map_err(|e| fail("chdir /", e))?;
    sys.sethostname(&spec.hostname)
        .map_err(|e| fail("sethostname", e))?;
    exec(sys, spec, go)
}

/// `/proc` (its masked paths covered, its read-only paths bound read-only)
/// and a read-only `/sys` (its masked paths covered).
fn proc_and_sys<S: Syscall>(
    m: &Mounter<'_, S>,
    root: &Root,
    stubs: &mut Stubs,
    spec: &RunSpec,
) -> Result<(), SetupError> {
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let at = stubs.target(root, "/proc", false)?;
    m.mount(
        "/proc",
        Some(Path::new("proc")),
        &at,
        Some("proc"),
        locked,
        None,
    )?;
    let at = stubs.target(root, "/sys", false)?;
    let mut flags = locked;
    if confined(spec) {
        flags |= MsFlags::MS_RDONLY;
    }
    m.mount(
        "/sys",
        Some(Path::new("sysfs")),
        &at,
        Some("sysfs"),
        flags,
        None,
    )?;
    if !confined(spec) {
        return Ok(());
    }
    for path in MASKED {
        mask(m, root, path)?;
    }
    for path in READ_ONLY {
        let Some(at) = existing(root, path)? else {
            continue;
        };
        m.bind(
            root,
            path,
            &proc_fd_path(&at),
            &at,
            path,
            locked | MsFlags::MS_RDONLY,
        )?;
    }
    Ok(())
}

/// Covers `path`: a file with `/dev/null`, a directory with an empty
/// read-only tmpfs (as runc does).
fn mask<S: Syscall>(m: &Mounter<'_, S>, root: &Root, path: &str) -> Result<(), SetupError> {
    let Some(at) = existing(root, path)? else {
        return Ok(());
    };
    let st = nix::sys::stat::fstat(at.as_fd()).map_err(|e| fail(format!("reading {path}"), e))?;
    if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR {
        m.mount(
            path,
            Some(Path::new("tmpfs")),
            &at,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0,mode=755"),
        )
    } else {
        m.mount(
            path,
            Some(Path::new("/dev/null")),
            &at,
            None,
            MsFlags::MS_BIND,
            None,
        )
    }
}

/// A `/dev` of its own: a tmpfs with the host's harmless devices bound in,
/// a new devpts, a shm tmpfs of `shm_size` bytes and the `fd` links;
/// nothing else.
fn dev<S: Syscall>(
    m: &Mounter<'_, S>,
    root: &Root,
    stubs: &mut Stubs,
    nodev: MsFlags,
    shm_size: u64,
) -> Result<(), SetupError> {
    let at = stubs.target(root, "/dev", false)?;
    m.mount(
        "/dev",
        Some(Path::new("tmpfs")),
        &at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | nodev,
        Some("mode=755,size=65536k"),
    )?;
    let dev = root.subroot("/dev").map_err(|e| fail("opening /dev", e))?;
    let err = |name: &str, e: FileOpError| fail(format!("making /dev/{name}"), e);
    for name in DEVICES {
        let node = OwnedFd::from(dev.create_file(name, 0o666).map_err(|e| err(name, e))?);
        m.mount(
            &format!("/dev/{name}"),
            Some(&Path::new("/dev").join(name)),
            &node,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    let shm = format!("mode=1777,size={shm_size}");
    for (dir, fstype, flags, data) in [
        (
            "pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=620",
        ),
        (
            "shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            shm.as_str(),
        ),
    ] {
        dev.mkdir_all(dir, 0o755, None).map_err(|e| err(dir, e))?;
        let at = dev
            .open_follow(dir, OFlag::O_PATH)
            .map_err(|e| err(dir, e))?;
        m.mount(
            &format!("/dev/{dir}"),
            Some(Path::new(fstype)),
            &at,
            Some(fstype),
            flags,
            Some(data),
        )?;
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        dev.symlink(link, target).map_err(|e| err(link, e))?;
    }
    Ok(())
}

/// One of the step's `--mount`s.
fn step_mount<S: Syscall>(
    m: &Mounter<'_, S>,
    root: &Root,
    stubs: &mut Stubs,
    state: &Path,
    index: usize,
    mount: &Mount,
    nodev: MsFlags,
) -> Result<(), SetupError> {
    let target = mount.target.as_str();
    let ro = |readonly: bool| {
        if readonly {
            nodev | MsFlags::MS_RDONLY
        } else {
            nodev
        }
    };
    match &mount.kind {
        MountKind::Bind { source, readonly } => {
            let at = stubs.target(root, target, !source.is_dir())?;
            m.bind(root, target, source, &at, target, ro(*readonly))
        }
        MountKind::Layers {
            lowerdirs,
            path: inner,
            readonly,
            upper,
        } => {
            let upper = upper.as_deref();
            let top = layers_root(m.sys, state, index, lowerdirs, *readonly, upper, nodev)?;
            // Resolved inside the layers (a symlink there cannot point the
            // mount at the host), then bound through the descriptor.
            let source = Root::open(&top)
                .and_then(|r| r.open_follow(inner, OFlag::O_PATH))
                .map_err(|e| fail(format!("finding {inner} for {target}"), e))?;
            let source_path = proc_fd_path(&source);
            let is_dir = nix::sys::stat::fstat(source.as_fd())
                .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR);
            let at = stubs.target(root, target, !is_dir)?;
            m.bind(root, target, &source_path, &at, target, ro(*readonly))
        }
        MountKind::Tmpfs { size } => {
            let at = stubs.target(root, target, false)?;
            let data = (*size > 0).then(|| format!("size={size}"));
            m.mount(
                target,
                Some(Path::new("tmpfs")),
                &at,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                data.as_deref(),
            )
        }
    }
}

/// The directory a layers mount's path is found in. Read-only, one
/// directory is bound as it is. Otherwise an overlay of `lowerdirs`,
/// mounted in the step's state; a writable one gets an upper directory
/// there, discarded with it (as BuildKit does): the step's writes reach
/// neither the layers (snapshots that every build shares) nor the context
/// on the host. A seeded cache keeps its writes in its own upper
/// directory, `upper`.
fn layers_root<S: Syscall>(
    sys: &S,
    state: &Path,
    index: usize,
    lowerdirs: &[PathBuf],
    readonly: bool,
    upper: Option<&Path>,
    nodev: MsFlags,
) -> Result<PathBuf, SetupError> {
    if let ([one], true, None) = (lowerdirs, readonly, upper) {
        return Ok(one.clone());
    }
    let dir = |name: String| {
        let at = state.join(name);
        fs::create_dir_all(&at).map_err(|e| fail(format!("creating {}", at.display()), e))?;
        Ok::<_, SetupError>(at)
    };
    let at = dir(format!("layers-{index}"))?;
    let dirs = match (upper, readonly) {
        (Some(kept), _) => Some((kept.join("upper"), kept.join("work"), true)),
        (None, true) => None,
        (None, false) => Some((
            dir(format!("layers-{index}-upper"))?,
            dir(format!("layers-{index}-work"))?,
            false,
        )),
    };
    let upper = match &dirs {
        Some((u, w, true)) => Upper::Kept(u, w),
        Some((u, w, false)) => Upper::Scratch(u, w),
        None => Upper::None,
    };
    mount_overlay(sys, lowerdirs, upper, &at, nodev)?;
    Ok(at)
}

/// After `pivot_root`: the user, the working directory, the privileges,
/// the parent's go, and `execve`. The seccomp filter goes on last, right before the exec,
/// so that only the step runs under it.
fn exec<S: Syscall>(sys: &S, spec: &RunSpec, go: OwnedFd) -> Result<(), Failure> {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let id = user::resolve(&spec.user, &read("/etc/passwd"), &read("/etc/group"))
        .map_err(|e| e.to_string())?;
    let cwd = Path::new(&spec.cwd);
    if fs::metadata(cwd).is_err() {
        fs::create_dir_all(cwd)
            .map_err(|e| fail(format!("creating the working directory {}", spec.cwd), e))?;
        let _ = std::os::unix::fs::chown(cwd, Some(id.uid), Some(id.gid));
    }
    let mut env = spec.env.clone();
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push(format!("HOME={}", id.home));
    }
    let Some(name) = spec.args.first() else {
        return Err(Failure::Setup("no command to run".to_owned()));
    };
    let program = find_program(name, &env)
        .ok_or_else(|| format!("{name:?}: executable file not found in $PATH"))?;
    let filters = if confined(spec) {
        seccomp::filters(DEFAULT_CAPS).map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };

    // While the helper still has CAP_SYS_RESOURCE (a hard limit above its
    // own needs it), before the user switch.
    rlimit::set(sys, &spec.ulimits)?;
    if confined(spec) {
        sys.drop_bounding_caps(DEFAULT_CAPS)
            .map_err(|e| fail("dropping capabilities", e))?;
        sys.set_no_new_privs()
            .map_err(|e| fail("setting no_new_privs", e))?;
    }
    let groups: Vec<Gid> = id.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    sys.set_ids(Uid::from_raw(id.uid), Gid::from_raw(id.gid), &groups)
        .map_err(|e| fail(format!("switching to user {:?}", spec.user), e))?;
    sys.chdir(cwd)
        .map_err(|e| fail(format!("chdir to {}", spec.cwd), e))?;

    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
    let args = spec
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>, _>>()?;
    let program_path = cstr(&program)?;
    // The parent's go: the network is up (when the step has one).
    if !sys
        .wait_go(go.as_fd())
        .map_err(|e| fail("waiting for the network", e))?
    {
        return Err(Failure::Setup(
            "the helper stopped before the step started".to_owned(),
        ));
    }
    drop(go);
    if !filters.is_empty() {
        sys.seccomp(&filters)
            .map_err(|e| fail("loading the seccomp filter", e))?;
    }
    sys.execve(&program_path, &args, &env)
        .map_err(|errno| Failure::Exec(exec_failure(name, &program, errno)))
}

/// The kernel reads mount options from one page.
const MAX_MOUNT_OPTIONS: usize = 4095;

/// Mounts an overlay of `lowerdirs` (top first) at `target`, with an
/// upper and work directory or read-only, with `flags` added. When the
/// lowerdirs share a parent (a snapshot directory), it mounts from there
/// with their bare names, so deep images fit in the one page of mount
/// options.
///
/// A directory that appears twice in the stack (two steps that changed
/// nothing have the same empty layer; images repeat layers) is kept only
/// where it is highest: overlayfs refuses a stack that names a directory
/// twice (`ELOOP`), and the lower copy could show nothing the higher one
/// does not already cover, its whiteouts included.
///
/// A `Scratch` upper (a step's, a file job's: taken or thrown away after)
/// is mounted `volatile`: its unmount, when the helper's namespace ends,
/// does not sync the whole filesystem (a 1 GiB step waited 2 s for that);
/// kiln syncs nothing of a step's layer (as containerd's snapshotter does
/// not). A `Kept` one (a seeded cache mount's, mounted again by later
/// steps) is not: overlayfs refuses to mount a volatile upper again.
pub fn mount_overlay<S: Syscall>(
    sys: &S,
    lowerdirs: &[PathBuf],
    upper: Upper<'_>,
    target: &Path,
    flags: MsFlags,
) -> Result<(), SetupError> {
    let lowerdirs = distinct(lowerdirs);
    let parent = lowerdirs
        .first()
        .and_then(|p| p.parent())
        .filter(|p| lowerdirs.iter().all(|l| l.parent() == Some(*p)));
    let names: Vec<String> = match parent {
        Some(_) => lowerdirs
            .iter()
            .map(|l| {
                l.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        None => lowerdirs.iter().map(|l| l.display().to_string()).collect(),
    };
    let mut options = format!("lowerdir={}", names.join(":"));
    let mut flags = flags | MsFlags::MS_RDONLY;
    if let Upper::Scratch(upper, work) | Upper::Kept(upper, work) = upper {
        options.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
        flags -= MsFlags::MS_RDONLY;
    }
    if options.len() > MAX_MOUNT_OPTIONS {
        return Err(format!(
            "{} layers do not fit one overlay mount ({} bytes of options, the kernel reads {MAX_MOUNT_OPTIONS})",
            lowerdirs.len(),
            options.len()
        ));
    }
    if let Some(parent) = parent {
        sys.chdir(parent)
            .map_err(|e| fail(format!("chdir {}", parent.display()), e))?;
    }
    let mount = |options: &str| {
        sys.mount(
            Some(Path::new("overlay")),
            target,
            Some("overlay"),
            flags,
            Some(options),
        )
    };
    let mounted = match upper {
        // A kernel before 5.10 does not know `volatile`.
        Upper::Scratch(..) => match mount(&format!("{options},volatile")) {
            Err(nix::errno::Errno::EINVAL) => mount(&options),
            mounted => mounted,
        },
        _ => mount(&options),
    };
    mounted.map_err(|e| fail(format!("mounting {}", target.display()), e))
}

/// An overlay's upper and work directories, if it has them.
#[derive(Debug, Clone, Copy)]
pub enum Upper<'a> {
    /// Read-only.
    None,
    /// Taken or thrown away after this mount.
    Scratch(&'a Path, &'a Path),
    /// Mounted again later.
    Kept(&'a Path, &'a Path),
}

/// `dirs` without repeats, each where it first (highest) appears.
fn distinct(dirs: &[PathBuf]) -> Vec<&PathBuf> {
    let mut seen = std::collections::HashSet::new();
    dirs.iter().filter(|d| seen.insert(*d)).collect()
}

/// A file job in a private mount namespace: the destination overlay, the
/// sources (read-only overlays when layered), then the actions.
pub fn file_job<S: Syscall>(sys: &S, job: &crate::fileop::FileJob) -> Result<(), SetupError> {
    sys.unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| fail("creating a mount namespace", e))?;
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(|e| fail("making mounts private", e))?;
    let d = &job.dest;
    mount_overlay(
        sys,
        &d.lowerdirs,
        Upper::Scratch(&d.upperdir, &d.workdir),
        &d.target,
        MsFlags::empty(),
    )?;
    let mut roots = Vec::new();
    for (i, layers) in job.sources.iter().enumerate() {
        match layers.as_slice() {
            [one] => roots.push(one.clone()),
            [] => roots.push(job.state_dir.join("empty")),
            _ => {
                let at = job.state_dir.join(format!("source-{i}"));
                fs::create_dir_all(&at)
                    .map_err(|e| fail(format!("creating {}", at.display()), e))?;
                mount_overlay(sys, layers, Upper::None, &at, MsFlags::empty())?;
                roots.push(at);
            }
        }
    }
    if job.sources.iter().any(Vec::is_empty) {
        fs::create_dir_all(job.state_dir.join("empty"))
            .map_err(|e| fail("creating an empty source", e))?;
    }
    crate::fileop::apply(job, &d.target, &roots).map_err(|e| e.to_string())
}

/// `name` as is when it has a slash, else the first executable in `PATH`.
fn find_program(name: &str, env: &[String]) -> Option<String> {
    if name.contains('/') {
        return Some(name.to_owned());
    }
    let path = env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| format!("{}/{name}", if dir.is_empty() { "." } else { dir }))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}
