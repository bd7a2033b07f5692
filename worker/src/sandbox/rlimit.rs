//! A RUN step's resource limits (`kiln build --ulimit`): Docker's names
//! as setrlimit(2) resources, set by the helper's child after
//! `pivot_root` and before it drops privileges (raising a hard limit needs
//! `CAP_SYS_RESOURCE`) and switches user; the step inherits them across
//! `execve`, and every limit not named stays the helper's.

use kiln_proto::sandbox::UlimitName;
use nix::sys::resource::{RLIM_INFINITY, Resource};

use super::setup::{SetupError, fail};
use super::spec::Ulimit;
use super::syscall::Syscall;

/// Sets the step's resource limits (`--ulimit`), in order; -1 is
/// `RLIM_INFINITY`.
pub(super) fn set<S: Syscall>(sys: &S, ulimits: &[Ulimit]) -> Result<(), SetupError> {
    let value = |v: i64| u64::try_from(v).unwrap_or(RLIM_INFINITY);
    for u in ulimits {
        sys.setrlimit(resource(u.name()), value(u.soft()), value(u.hard()))
            .map_err(|e| {
                fail(
                    format!(
                        "setting --ulimit {}={}:{}",
                        u.name().as_str(),
                        u.soft(),
                        u.hard()
                    ),
                    e,
                )
            })?;
    }
    Ok(())
}

/// The setrlimit(2) resource of a Docker ulimit name.
fn resource(name: UlimitName) -> Resource {
    match name {
        UlimitName::Core => Resource::RLIMIT_CORE,
        UlimitName::Cpu => Resource::RLIMIT_CPU,
        UlimitName::Data => Resource::RLIMIT_DATA,
        UlimitName::Fsize => Resource::RLIMIT_FSIZE,
        UlimitName::Locks => Resource::RLIMIT_LOCKS,
        UlimitName::Memlock => Resource::RLIMIT_MEMLOCK,
        UlimitName::Msgqueue => Resource::RLIMIT_MSGQUEUE,
        UlimitName::Nice => Resource::RLIMIT_NICE,
        UlimitName::Nofile => Resource::RLIMIT_NOFILE,
        UlimitName::Nproc => Resource::RLIMIT_NPROC,
        UlimitName::Rss => Resource::RLIMIT_RSS,
        UlimitName::Rtprio => Resource::RLIMIT_RTPRIO,
        UlimitName::Rttime => Resource::RLIMIT_RTTIME,
        UlimitName::Sigpending => Resource::RLIMIT_SIGPENDING,
        UlimitName::Stack => Resource::RLIMIT_STACK,
    }
}
