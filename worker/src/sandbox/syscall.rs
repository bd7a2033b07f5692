//! Every system call the sandbox makes, behind one trait.
//!
//! [`Linux`] makes them; [`Recording`] only records them, so the order of a
//! setup can be tested without root. `unsafe` appears only here, each block
//! with a `SAFETY:` line.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::unistd::{ForkResult, Gid, Pid, Uid};

pub type Result<T> = nix::Result<T>;

/// The calls the sandbox setup needs.
pub trait Syscall {
    /// New namespaces for this process (`unshare(2)`).
    fn unshare(&self, flags: CloneFlags) -> Result<()>;
    /// `fork(2)`. Only ever called from the single-threaded helper.
    fn fork(&self) -> Result<ForkResult>;
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()>;
    fn chdir(&self, path: &Path) -> Result<()>;
    fn sethostname(&self, name: &str) -> Result<()>;
    /// `setrlimit(2)`: this process's `resource` limits (`RLIM_INFINITY`
    /// for unlimited), inherited by what it executes.
    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<()>;
    /// Removes every capability not in `keep` from the bounding set.
    fn drop_bounding_caps(&self, keep: &[u32]) -> Result<()>;
    fn set_no_new_privs(&self) -> Result<()>;
    /// Kill this process with SIGKILL when its parent dies.
    fn set_parent_death_kill(&self) -> Result<()>;
    fn set_ids(&self, uid: Uid, gid: Gid, groups: &[Gid]) -> Result<()>;
    /// Sets the loopback interface up (in a fresh network namespace).
    fn loopback_up(&self) -> Result<()>;
    /// Loads seccomp filters, in order, on this thread (`no_new_privs` is
    /// already set).
    fn seccomp(&self, filters: &[seccompiler::BpfProgram]) -> Result<()>;
    /// Replaces the process image; returns only on failure.
    fn execve(&self, path: &CStr, args: &[CString], env: &[CString]) -> Result<()>;
    /// A descriptor of this process's network namespace (close-on-exec).
    fn open_netns(&self) -> Result<OwnedFd>;
    /// Starts `program` (looked up in `PATH`) with `args` as a child that
    /// runs in the network namespace `netns`, is killed when this process
    /// dies, has `ready` as its descriptor [`READY_FD`], no standard input
    /// or output, and `log` as its standard error. Returns its pid.
    fn spawn_in_netns(
        &self,
        program: &str,
        args: &[String],
        netns: BorrowedFd<'_>,
        ready: OwnedFd,
        log: OwnedFd,
    ) -> Result<Pid>;
    /// Creates the persistent tap device `name` in this process's network
    /// namespace, for a NAT to attach to. Persistent, it outlives the NAT's
    /// descriptor: the NAT exits without unregistering it (an unregistration
    /// waits for RCU grace periods), and the kernel deletes it with the
    /// namespace, after the step, off the build's path.
    fn make_tap(&self, name: &str) -> Result<()>;
    /// Blocks until the parent's go byte arrives on `go`; `false` when the
    /// parent closed it without one.
    fn wait_go(&self, go: BorrowedFd<'_>) -> Result<bool>;
}

/// `TUNSETIFF` and `TUNSETPERSIST` (linux/if_tun.h: `_IOW('T', 202, int)`,
/// `_IOW('T', 203, int)`).
mod tun {
    nix::ioctl_write_ptr_bad!(
        set_iff,
        nix::request_code_write!(b'T', 202, std::mem::size_of::<nix::libc::c_int>()),
        nix::libc::ifreq
    );
    nix::ioctl_write_int_bad!(
        set_persist,
        nix::request_code_write!(b'T', 203, std::mem::size_of::<nix::libc::c_int>())
    );
}

/// The descriptor number a [`Syscall::spawn_in_netns`] child finds its
/// `ready` descriptor at.
pub const READY_FD: i32 = 3;

/// The real calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Linux;

impl Syscall for Linux {
    fn unshare(&self, flags: CloneFlags) -> Result<()> {
        nix::sched::unshare(flags)
    }

    fn fork(&self) -> Result<ForkResult> {
        // SAFETY: the helper that calls this is single-threaded (it is its own
        // process, started by exec), so the child cannot inherit a lock held by
        // another thread. See fork(2), "async-signal-safe".
        unsafe { nix::unistd::fork() }
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        nix::unistd::chdir(path)
    }

    fn sethostname(&self, name: &str) -> Result<()> {
        nix::unistd::sethostname(name)
    }

    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<()> {
        nix::sys::resource::setrlimit(resource, soft, hard)
    }

    fn drop_bounding_caps(&self, keep: &[u32]) -> Result<()> {
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        for cap in (0..=last).filter(|c| !keep.contains(c)) {
            // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no
            // memory of ours; see prctl(2).
            let r = unsafe {
                nix::libc::prctl(
                    nix::libc::PR_CAPBSET_DROP,
                    nix::libc::c_ulong::from(cap),
                    0,
                    0,
                    0,
                )
            };
            nix::errno::Errno::result(r)?;
        }
        Ok(())
    }

    fn set_no_new_privs(&self) -> Result<()> {
        nix::sys::prctl::set_no_new_privs()
    }

    fn set_parent_death_kill(&self) -> Result<()> {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
    }

    fn set_ids(&self, uid: Uid, gid: Gid, groups: &[Gid]) -> Result<()> {
        // Groups and gid first: after setuid to a user, they can no longer change.
        nix::unistd::setgroups(groups)?;
        nix::unistd::setresgid(gid, gid, gid)?;
        nix::unistd::setresuid(uid, uid, uid)
    }

    fn loopback_up(&self) -> Result<()> {
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let mut req = ifreq("lo")?;
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write only `req`, which
        // lives across both calls; see netdevice(7).
        unsafe {
            nix::errno::Errno::result(nix::libc::ioctl(
                socket.as_raw_fd(),
                nix::libc::SIOCGIFFLAGS,
                &mut req,
            ))?;
            req.ifr_ifru.ifru_flags |=
                (nix::libc::IFF_UP | nix::libc::IFF_RUNNING) as nix::libc::c_short;
            nix::errno::Errno::result(nix::libc::ioctl(
                socket.as_raw_fd(),
                nix::libc::SIOCSIFFLAGS,
                &req,
            ))?;
        }
        Ok(())
    }

    fn seccomp(&self, filters: &[seccompiler::BpfProgram]) -> Result<()> {
        for filter in filters {
            seccompiler::apply_filter(filter).map_err(|e| match e {
                seccompiler::Error::Seccomp(e) | seccompiler::Error::Prctl(e) => {
                    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EINVAL))
                }
                _ => nix::errno::Errno::EINVAL,
            })?;
        }
        Ok(())
    }

    fn execve(&self, path: &CStr, args: &[CString], env: &[CString]) -> Result<()> {
        nix::unistd::execve(path, args, env).map(|_| ())
    }

    fn open_netns(&self) -> Result<OwnedFd> {
        nix::fcntl::open(
            "/proc/self/ns/net",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
    }

    fn spawn_in_netns(
        &self,
        program: &str,
        args: &[String],
        netns: BorrowedFd<'_>,
        ready: OwnedFd,
        log: OwnedFd,
    ) -> Result<Pid> {
        let parent = nix::unistd::getpid();
        let netns = netns.as_raw_fd();
        let ready_fd = ready.as_raw_fd();
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // SAFETY: the closure runs in the forked child before exec and makes
        // only async-signal-safe system calls (setns, prctl, getppid, dup2,
        // fcntl) on descriptors that stay open until exec; it allocates
        // nothing. See fork(2) and signal-safety(7).
        unsafe {
            command.pre_exec(move || {
                let raw = |r: nix::libc::c_int| nix::errno::Errno::result(r).map_err(io_error);
                raw(nix::libc::setns(netns, nix::libc::CLONE_NEWNET))?;
                raw(nix::libc::prctl(
                    nix::libc::PR_SET_PDEATHSIG,
                    nix::libc::SIGKILL,
                    0,
                    0,
                    0,
                ))?;
                // The parent died before the signal was set: nobody would stop us.
                if nix::libc::getppid() != parent.as_raw() {
                    return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
                if ready_fd == READY_FD {
                    raw(nix::libc::fcntl(READY_FD, nix::libc::F_SETFD, 0))?;
                } else {
                    // dup2 leaves the new descriptor without close-on-exec.
                    raw(nix::libc::dup2(ready_fd, READY_FD))?;
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))?;
        drop(ready);
        let pid = i32::try_from(child.id()).map_err(|_| nix::errno::Errno::ERANGE)?;
        Ok(Pid::from_raw(pid))
    }

    fn make_tap(&self, name: &str) -> Result<()> {
        let tun = nix::fcntl::open(
            "/dev/net/tun",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_flags = (nix::libc::IFF_TAP | nix::libc::IFF_NO_PI) as nix::libc::c_short;
        // SAFETY: TUNSETIFF reads `req`, which lives across the call, and
        // TUNSETPERSIST takes an integer; both act on the descriptor we own.
        // See the kernel's Documentation/networking/tuntap.rst.
        unsafe {
            tun::set_iff(tun.as_raw_fd(), &req)?;
            tun::set_persist(tun.as_raw_fd(), 1)?;
        }
        Ok(())
    }

    fn wait_go(&self, go: BorrowedFd<'_>) -> Result<bool> {
        let mut byte = [0u8; 1];
        loop {
            match nix::unistd::read(go, &mut byte) {
                Ok(n) => return Ok(n == 1),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// `FS_TOPDIR_FL` (`chattr +T`), from linux/fs.h; libc does not name it.
const FS_TOPDIR_FL: nix::libc::c_int = 0x0002_0000;

/// Marks the directory `dir` as the top of directory hierarchies
/// (`FS_TOPDIR_FL`, as `chattr +T` does), when it is not already: ext4's
/// Orlov allocator then places each directory made in it in a block group
/// of its own choosing, spread over the disk as for directories at the
/// top of the filesystem, rather than next to `dir`. See ioctl_iflags(2).
///
/// Not a system call of the sandbox's setup: a worker marks its `steps/`
/// with it, so that a step's new files do not land among the inodes a
/// prune just freed there (ext4 without a journal skips those for a
/// minute, at a cost per skipped inode on every creation).
pub fn mark_top_dir(dir: BorrowedFd<'_>) -> Result<()> {
    let mut flags: nix::libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int (ioctl_iflags(2): the
    // argument is an int despite the macro's long) into `flags`, which
    // lives across the call.
    let got =
        unsafe { nix::libc::ioctl(dir.as_raw_fd(), nix::libc::FS_IOC_GETFLAGS, &raw mut flags) };
    nix::errno::Errno::result(got)?;
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(());
    }
    flags |= FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int from `flags`, which lives
    // across the call.
    let set = unsafe {
        nix::libc::ioctl(
            dir.as_raw_fd(),
            nix::libc::FS_IOC_SETFLAGS,
            &raw const flags,
        )
    };
    nix::errno::Errno::result(set).map(drop)
}

fn io_error(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// An `ifreq` naming the interface `name` (at most 15 bytes), the rest zero.
fn ifreq(name: &str) -> Result<nix::libc::ifreq> {
    // SAFETY: `ifreq` is plain old data; zeroed is a valid value.
    let mut req: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.contains('\0') {
        return Err(nix::errno::Errno::EINVAL);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as nix::libc::c_char;
    }
    Ok(req)
}

/// Records calls instead of making them; every call succeeds (`fork`
/// returns as the child).
#[derive(Debug, Default)]
pub struct Recording {
    calls: Mutex<Vec<String>>,
}

impl Recording {
    /// The calls so far, one line each.
    pub fn calls(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn record(&self, call: String) {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(call);
    }
}

impl Syscall for Recording {
    fn unshare(&self, flags: CloneFlags) -> Result<()> {
        self.record(format!("unshare {flags:?}"));
        Ok(())
    }

    fn fork(&self) -> Result<ForkResult> {
        self.record("fork".into());
        Ok(ForkResult::Child)
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        let names: Vec<&str> = flags.iter_names().map(|(name, _)| name).collect();
        let flags = if names.is_empty() {
            "(empty)".to_owned()
        } else {
            names.join(" | ")
        };
        // A descriptor's path is recorded as the path it names.
        let named = |p: &Path| {
            if p.starts_with("/proc/self/fd") {
                std::fs::read_link(p).unwrap_or_else(|_| p.to_owned())
            } else {
                p.to_owned()
            }
        };
        self.record(format!(
            "mount {} {} {} {flags} {}",
            source.map_or("-".into(), |s| named(s).display().to_string()),
            named(target).display(),
            fstype.unwrap_or("-"),
            data.unwrap_or("-")
        ));
        Ok(())
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()> {
        let names: Vec<&str> = flags.iter_names().map(|(name, _)| name).collect();
        self.record(format!(
            "umount2 {} {}",
            target.display(),
            names.join(" | ")
        ));
        Ok(())
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        self.record(format!(
            "pivot_root {} {}",
            new_root.display(),
            put_old.display()
        ));
        Ok(())
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        self.record(format!("chdir {}", path.display()));
        Ok(())
    }

    fn sethostname(&self, name: &str) -> Result<()> {
        self.record(format!("sethostname {name}"));
        Ok(())
    }

    fn setrlimit(&self, resource: Resource, soft: u64, hard: u64) -> Result<()> {
        self.record(format!("setrlimit {resource:?} {soft} {hard}"));
        Ok(())
    }

    fn drop_bounding_caps(&self, keep: &[u32]) -> Result<()> {
        self.record(format!("drop_bounding_caps keep {keep:?}"));
        Ok(())
    }

    fn set_no_new_privs(&self) -> Result<()> {
        self.record("set_no_new_privs".into());
        Ok(())
    }

    fn set_parent_death_kill(&self) -> Result<()> {
        self.record("set_parent_death_kill".into());
        Ok(())
    }

    fn set_ids(&self, uid: Uid, gid: Gid, groups: &[Gid]) -> Result<()> {
        self.record(format!("set_ids {uid} {gid} {groups:?}"));
        Ok(())
    }

    fn loopback_up(&self) -> Result<()> {
        self.record("loopback_up".into());
        Ok(())
    }

    fn seccomp(&self, filters: &[seccompiler::BpfProgram]) -> Result<()> {
        let sizes: Vec<usize> = filters.iter().map(Vec::len).collect();
        self.record(format!("seccomp {} filters", sizes.len()));
        Ok(())
    }

    fn execve(&self, path: &CStr, args: &[CString], _env: &[CString]) -> Result<()> {
        self.record(format!("execve {} {args:?}", path.to_string_lossy()));
        Ok(())
    }

    fn open_netns(&self) -> Result<OwnedFd> {
        self.record("open_netns".into());
        std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    }

    /// Records the call and reports the program ready at once.
    fn spawn_in_netns(
        &self,
        program: &str,
        args: &[String],
        _netns: BorrowedFd<'_>,
        ready: OwnedFd,
        _log: OwnedFd,
    ) -> Result<Pid> {
        self.record(format!("spawn_in_netns {program} {}", args.join(" ")));
        nix::unistd::write(&ready, b"1")?;
        Ok(Pid::from_raw(0))
    }

    fn make_tap(&self, name: &str) -> Result<()> {
        self.record(format!("make_tap {name}"));
        Ok(())
    }

    /// Records the call; the go byte is there at once.
    fn wait_go(&self, _go: BorrowedFd<'_>) -> Result<bool> {
        self.record("wait_go".into());
        Ok(true)
    }
}
