//! The seccomp filter of a RUN step: Docker's default profile (moby's
//! `profiles/seccomp/default.json`), written here as a table, compiled to
//! BPF for the step's capability set and this machine's architecture.
//!
//! As Docker does: calls not listed fail with `EPERM`; a few are allowed
//! only with a capability the step holds (kiln gives Docker's default set,
//! so without `CAP_SYS_ADMIN` `mount`, `unshare`, `setns` are refused and
//! `clone` may not create namespaces); `clone3`, whose flags a filter
//! cannot read, fails with `ENOSYS` so that libc falls back to `clone`.
//! Names this architecture lacks (32-bit variants) are skipped, as
//! libseccomp does. Unlike Docker's, the filter allows this architecture's
//! native ABI only: an i386 system call (`int 0x80`) kills the process,
//! an x32 one fails with `EPERM` (seccompiler builds one architecture's
//! filter).

use std::collections::BTreeMap;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("no seccomp filter for the {0} architecture")]
    Arch(&'static str),
    #[error("compiling the seccomp filter: {0}")]
    Compile(#[from] seccompiler::BackendError),
}

/// The error a call outside the profile returns (Docker's `defaultErrnoRet`).
const DEFAULT_ERRNO: i32 = nix::libc::EPERM;

/// Capability numbers the conditional rules name.
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_CHROOT: u32 = 18;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_PACCT: u32 = 20;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_BOOT: u32 = 22;
const CAP_SYS_NICE: u32 = 23;
const CAP_SYS_TIME: u32 = 25;
const CAP_SYS_TTY_CONFIG: u32 = 26;
const CAP_SYSLOG: u32 = 34;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`: the flags of `clone` that
/// make namespaces.
const CLONE_NAMESPACES: u64 = 0x7E02_0000;

/// Allowed whatever the step's capabilities.
const ALWAYS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// When a rule applies.
#[derive(Debug, Clone, Copy)]
enum When {
    Always,
    /// On these architectures (`std::env::consts::ARCH` names).
    Arch(&'static [&'static str]),
    /// When the step holds the capability.
    Cap(u32),
    /// When the step does not hold it.
    NoCap(u32),
}

/// A test of one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    /// The 32-bit argument `index` equals `value`.
    Eq(u8, u64),
    Lt(u8, u64),
    Gt(u8, u64),
    /// The 64-bit argument `index` has none of the bits of `mask`.
    NoneOf(u8, u64),
}

/// What a matching call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Allow,
    Errno(i32),
}

struct Rule {
    names: &'static [&'static str],
    when: When,
    /// The call matches when this holds (always when `None`).
    arg: Option<Arg>,
    action: Action,
}

const fn allow(names: &'static [&'static str], when: When) -> Rule {
    Rule {
        names,
        when,
        arg: None,
        action: Action::Allow,
    }
}

const fn allow_if(names: &'static [&'static str], arg: Arg) -> Rule {
    Rule {
        names,
        when: When::Always,
        arg: Some(arg),
        action: Action::Allow,
    }
}

/// Docker's conditional rules, in its order.
const RULES: &[Rule] = &[
    allow(ALWAYS, When::Always),
    // Docker allows these from kernel 4.8 on (where seccomp can no longer be
    // bypassed through ptrace); kiln needs a newer kernel anyway (openat2).
    allow(
        &["process_vm_readv", "process_vm_writev", "ptrace"],
        When::Always,
    ),
    // Every address family but AF_ALG (38) and AF_VSOCK (40).
    allow_if(&["socket"], Arg::Lt(0, 38)),
    allow_if(&["socket"], Arg::Eq(0, 39)),
    allow_if(&["socket"], Arg::Gt(0, 40)),
    // PER_LINUX, UNAME26, PER_LINUX32, both, and the query.
    allow_if(&["personality"], Arg::Eq(0, 0)),
    allow_if(&["personality"], Arg::Eq(0, 0x0008)),
    allow_if(&["personality"], Arg::Eq(0, 0x0002_0000)),
    allow_if(&["personality"], Arg::Eq(0, 0x0002_0008)),
    allow_if(&["personality"], Arg::Eq(0, 0xffff_ffff)),
    allow(
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        When::Arch(&["arm", "aarch64"]),
    ),
    allow(&["arch_prctl"], When::Arch(&["x86_64"])),
    allow(&["modify_ldt"], When::Arch(&["x86_64", "x86"])),
    allow(&["riscv_flush_icache"], When::Arch(&["riscv64"])),
    allow(&["open_by_handle_at"], When::Cap(CAP_DAC_READ_SEARCH)),
    allow(
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        When::Cap(CAP_SYS_ADMIN),
    ),
    // Without CAP_SYS_ADMIN: clone without namespace flags, and clone3 not
    // at all (its flags are in memory a filter cannot read).
    Rule {
        names: &["clone"],
        when: When::NoCap(CAP_SYS_ADMIN),
        arg: Some(Arg::NoneOf(0, CLONE_NAMESPACES)),
        action: Action::Allow,
    },
    Rule {
        names: &["clone3"],
        when: When::NoCap(CAP_SYS_ADMIN),
        arg: None,
        action: Action::Errno(nix::libc::ENOSYS),
    },
    allow(&["reboot"], When::Cap(CAP_SYS_BOOT)),
    allow(&["chroot"], When::Cap(CAP_SYS_CHROOT)),
    allow(
        &["delete_module", "init_module", "finit_module"],
        When::Cap(CAP_SYS_MODULE),
    ),
    allow(&["acct"], When::Cap(CAP_SYS_PACCT)),
    allow(
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        When::Cap(CAP_SYS_PTRACE),
    ),
    allow(&["iopl", "ioperm"], When::Cap(CAP_SYS_RAWIO)),
    allow(
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        When::Cap(CAP_SYS_TIME),
    ),
    allow(&["vhangup"], When::Cap(CAP_SYS_TTY_CONFIG)),
    allow(
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        When::Cap(CAP_SYS_NICE),
    ),
    allow(&["syslog"], When::Cap(CAP_SYSLOG)),
    allow(&["bpf"], When::Cap(CAP_BPF)),
    allow(&["perf_event_open"], When::Cap(CAP_PERFMON)),
];

impl When {
    fn holds(self, caps: &[u32], arch: &str) -> bool {
        match self {
            When::Always => true,
            When::Arch(arches) => arches.contains(&arch),
            When::Cap(cap) => caps.contains(&cap),
            When::NoCap(cap) => !caps.contains(&cap),
        }
    }
}

impl Arg {
    fn condition(self) -> Result<SeccompCondition, SeccompError> {
        let (index, len, op, value) = match self {
            Arg::Eq(i, v) => (i, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v),
            Arg::Lt(i, v) => (i, SeccompCmpArgLen::Dword, SeccompCmpOp::Lt, v),
            Arg::Gt(i, v) => (i, SeccompCmpArgLen::Dword, SeccompCmpOp::Gt, v),
            Arg::NoneOf(i, mask) => (i, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(mask), 0),
        };
        Ok(SeccompCondition::new(index, len, op, value)?)
    }
}

/// For each action, the calls it takes by name: `None` when the call
/// always matches, else the tests of which one must hold.
type Table = BTreeMap<Action, BTreeMap<&'static str, Option<Vec<Arg>>>>;

/// The profile for a step holding `caps` on `arch`.
fn table(caps: &[u32], arch: &str) -> Table {
    let mut table = Table::new();
    for rule in RULES.iter().filter(|r| r.when.holds(caps, arch)) {
        let calls = table.entry(rule.action).or_default();
        for name in rule.names {
            let entry = calls.entry(name).or_insert_with(|| Some(Vec::new()));
            match rule.arg {
                None => *entry = None,
                Some(arg) => {
                    if let Some(args) = entry {
                        args.push(arg);
                    }
                }
            }
        }
    }
    table
}

/// The filters for a step holding `caps`, in the order to load them: the
/// allow-list first, then one per errno other than the default (the
/// kernel runs every filter and an error beats an allow; between two
/// errors, the filter loaded last wins).
pub fn filters(caps: &[u32]) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = std::env::consts::ARCH;
    let target = TargetArch::try_from(arch).map_err(|_| SeccompError::Arch(arch))?;
    let default_errno = SeccompAction::Errno(DEFAULT_ERRNO.unsigned_abs());
    let mut out = Vec::new();
    for (action, calls) in table(caps, arch) {
        let mut rules = BTreeMap::new();
        for (name, args) in calls {
            // A name this architecture does not have is no call here.
            let Ok(sysno) = syscalls::Sysno::from_str(name) else {
                continue;
            };
            let chain = args
                .unwrap_or_default()
                .into_iter()
                .map(|arg| Ok(SeccompRule::new(vec![arg.condition()?])?))
                .collect::<Result<Vec<_>, SeccompError>>()?;
            rules.insert(i64::from(sysno.id()), chain);
        }
        let (mismatch, matched) = match action {
            Action::Allow => (default_errno.clone(), SeccompAction::Allow),
            Action::Errno(errno) => (
                SeccompAction::Allow,
                SeccompAction::Errno(errno.unsigned_abs()),
            ),
        };
        let filter = SeccompFilter::new(rules, mismatch, matched, target)?;
        out.push(BpfProgram::try_from(filter)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::setup::DEFAULT_CAPS;

    #[test]
    fn default_caps_refuse_namespaces_and_mounts() {
        let t = table(DEFAULT_CAPS, "x86_64");
        let allowed = &t[&Action::Allow];
        for name in [
            "unshare", "setns", "mount", "umount2", "bpf", "ptrace", "read",
        ] {
            assert_eq!(
                allowed.contains_key(name),
                matches!(name, "ptrace" | "read"),
                "{name}"
            );
        }
        assert_eq!(allowed["read"], None);
        assert_eq!(allowed["chroot"], None, "CAP_SYS_CHROOT is a default cap");
        assert_eq!(
            allowed["clone"],
            Some(vec![Arg::NoneOf(0, CLONE_NAMESPACES)])
        );
        assert_eq!(allowed["socket"].as_ref().map(Vec::len), Some(3));
        assert!(!allowed.contains_key("clone3"));
        assert!(t[&Action::Errno(nix::libc::ENOSYS)].contains_key("clone3"));
        assert!(!allowed.contains_key("set_tls"), "arm only");
    }

    #[test]
    fn sys_admin_allows_them() {
        let all: Vec<u32> = (0..=40).collect();
        let t = table(&all, "x86_64");
        let allowed = &t[&Action::Allow];
        for name in ["unshare", "setns", "mount", "clone", "clone3", "bpf"] {
            assert_eq!(allowed[name], None, "{name}");
        }
        assert!(!t.contains_key(&Action::Errno(nix::libc::ENOSYS)));
    }

    /// The calls every program makes resolve on this architecture, and the
    /// filters fit the kernel's limit of 4096 instructions.
    #[test]
    fn compiles_for_this_machine() {
        for name in [
            "read",
            "write",
            "execve",
            "exit_group",
            "clone",
            "wait4",
            "mmap",
            "openat",
            "openat2",
            "newfstatat",
            "statx",
            "rt_sigaction",
            "futex",
            "close_range",
            "faccessat2",
            "rseq",
            "getrandom",
            "pidfd_open",
            "epoll_pwait2",
        ] {
            assert!(
                syscalls::Sysno::from_str(name).is_ok()
                    || (name == "newfstatat" && std::env::consts::ARCH != "x86_64"),
                "{name}"
            );
        }
        let programs = filters(DEFAULT_CAPS).unwrap();
        assert_eq!(programs.len(), 2, "the allow-list and clone3's ENOSYS");
        for p in &programs {
            assert!(!p.is_empty() && p.len() <= 4096, "{} instructions", p.len());
        }
    }
}
