//! The default network of a RUN step ([`Network::Private`]): a network
//! namespace of the step's own, whose only way out is slirp4netns, a
//! user-space NAT running in the host's namespace.
//!
//! The helper starts it ([`start`]) before any other namespace exists:
//! it moves itself into a new network namespace, makes the step's tap
//! device there, then starts slirp4netns as its own child back in the
//! host's namespace, attached to the new one by the helper's pid; the
//! step's mounts are set up while it comes up, and the step starts once
//! it is ([`Starting::ready`]). slirp4netns is started with
//! `--disable-host-loopback`, so the step can open connections to the
//! outside but not to anything listening on the host's 127.0.0.0/8, and in
//! its own sandbox (`--enable-sandbox`, `--enable-seccomp`), since it parses
//! every packet the step sends. Its lifetime is the helper's: the helper
//! stops it after the step ([`Nat::stop`]), and the kernel kills it when the
//! helper dies for any other reason (parent-death signal), so a cancel or
//! a `kill -9` of the step, the helper or kiln leaves no NAT behind; the
//! namespace goes with the last of them.
//!
//! Why slirp4netns and not pasta: Debian's pasta (2023-03) cannot attach to
//! a namespace by pid when run as root (it drops to `nobody` first, or with
//! `--runas 0` still cannot open `/proc/PID/ns/*`), so it would need a
//! namespace bound to a file (which a crash leaves behind) and would run as
//! full root; and it took 110–140 ms to bring a namespace up here against
//! slirp4netns' 5–15 ms (numbers and commands in the benchmarks record).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::setup::SetupError;
#[cfg(doc)]
use super::spec::Network;
use super::syscall::{READY_FD, Syscall};

/// The NAT program, looked up in `PATH`.
pub const NAT_PROGRAM: &str = "slirp4netns";
/// slirp4netns' DNS forwarder in the namespace (libslirp's `10.0.2.3`): it
/// forwards to the host's resolvers, loopback ones included.
pub const DNS_FORWARDER: &str = "10.0.2.3";
/// slirp4netns' default network (`--cidr`): the step is `10.0.2.100`, the
/// gateway `10.0.2.2`.
const NAT_NETWORK: [u8; 3] = [10, 0, 2];
/// The step's interface.
const INTERFACE: &str = "eth0";
/// The most a NAT may take to bring the step's interface up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The NAT's standard error, in the step's state directory.
const LOG: &str = "nat.log";
/// The most of the NAT's standard error a failure quotes.
const LOG_QUOTED: usize = 4096;

/// A running NAT, the helper's child.
#[derive(Debug)]
pub struct Nat {
    pid: Pid,
}

impl Nat {
    /// Kills the NAT and reaps it, so it is gone when the helper exits.
    pub fn stop(self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        while let Err(Errno::EINTR) = waitpid(self.pid, None) {}
    }
}

/// The arguments slirp4netns gets for the namespace of `pid`.
fn nat_args(pid: u32) -> Vec<String> {
    [
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-sandbox",
        "--enable-seccomp",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([
        format!("--ready-fd={READY_FD}"),
        pid.to_string(),
        INTERFACE.to_owned(),
    ])
    .collect()
}

/// A NAT started but perhaps not up yet: [`start`] returns at once, so the
/// step's mounts are set up while slirp4netns configures the interface;
/// [`Starting::ready`] waits for it.
#[derive(Debug)]
pub struct Starting {
    nat: Nat,
    ready: OwnedFd,
    /// The NAT's standard error, read through this descriptor and never
    /// by its path: by the time [`Starting::ready`] runs, the step's child
    /// may have called `pivot_root` in the mount namespace the helper
    /// shares with it, which moves the helper's root to the step's.
    log: File,
}

impl Starting {
    /// The running NAT once the step's interface has its address and
    /// default route; fails (and leaves no NAT running) when slirp4netns
    /// exits or is not ready within [`READY_TIMEOUT`].
    pub fn ready(self) -> Result<Nat, SetupError> {
        match wait_ready(&self.ready) {
            Ok(()) => Ok(self.nat),
            Err(why) => {
                self.nat.stop();
                let log = quoted(&self.log);
                let log = log.trim();
                Err(if log.is_empty() {
                    format!("{NAT_PROGRAM}: {why}")
                } else {
                    format!("{NAT_PROGRAM}: {why}: {log}")
                })
            }
        }
    }
}

/// Moves the calling helper into a new network namespace, makes the step's
/// interface there (a persistent tap: see [`Syscall::make_tap`]) and starts
/// the NAT on it. Fails at once when slirp4netns is missing.
pub fn start<S: Syscall>(sys: &S, state_dir: &Path) -> Result<Starting, SetupError> {
    let host = sys
        .open_netns()
        .map_err(|e| format!("opening the host's network namespace: {e}"))?;
    sys.unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("creating the network namespace: {e}"))?;
    sys.make_tap(INTERFACE)
        .map_err(|e| format!("creating the step's interface {INTERFACE}: {e}"))?;
    let (ready, ready_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))?;
    let log_path = state_dir.join(LOG);
    let log = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let nat_stderr = log
        .try_clone()
        .map_err(|e| format!("duplicating the descriptor of {}: {e}", log_path.display()))?;
    let pid = sys
        .spawn_in_netns(
            NAT_PROGRAM,
            &nat_args(std::process::id()),
            host.as_fd(),
            ready_write,
            OwnedFd::from(nat_stderr),
        )
        .map_err(|e| match e {
            Errno::ENOENT => format!(
                "the default network (RUN --network=default) needs {NAT_PROGRAM}, which is not \
                 installed (not found in PATH): install the `slirp4netns` package, or give the \
                 step --network=none"
            ),
            e => format!("starting {NAT_PROGRAM}: {e}"),
        })?;
    // The step must never hold a way back into the host's namespace.
    drop(host);
    Ok(Starting {
        nat: Nat { pid },
        ready,
        log,
    })
}

/// The start of the NAT's standard error, at most [`LOG_QUOTED`] bytes
/// (read from offset 0: the NAT's descriptor shares the file's offset).
fn quoted(log: &File) -> String {
    let mut buf = vec![0u8; LOG_QUOTED];
    let mut len = 0;
    while len < buf.len() {
        match log.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Waits for slirp4netns' `1` on the ready pipe (it writes it once the
/// interface is configured).
fn wait_ready(ready: &OwnedFd) -> Result<(), String> {
    let timeout = PollTimeout::try_from(READY_TIMEOUT).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
    loop {
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => {
                return Err(format!(
                    "the network was not up after {} s",
                    READY_TIMEOUT.as_secs()
                ));
            }
            Ok(_) => break,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("waiting for the network: {e}")),
        }
    }
    let mut byte = [0u8; 1];
    match nix::unistd::read(ready, &mut byte) {
        Ok(1) if byte[0] == b'1' => Ok(()),
        Ok(_) => Err("exited before the network was up".to_owned()),
        Err(e) => Err(format!("waiting for the network: {e}")),
    }
}

/// `/etc/resolv.conf` for a step behind the NAT, from the host's: the
/// host's IPv4 nameservers when it has some the step can reach, else the
/// NAT's DNS forwarder. A nameserver on the host's loopback (a local cache
/// such as systemd-resolved's 127.0.0.53) is out of reach by design, an IPv6
/// one has no route (the namespace is IPv4 only), one inside the NAT's own
/// network would be answered by the NAT; all of these leave the forwarder.
/// `search` and `options` lines stay. (BuildKit and rootless Docker do the
/// same: loopback resolvers dropped, the slirp4netns forwarder in their
/// place.)
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let reachable = words
                .next()
                .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
                .is_some_and(|a| !a.is_loopback() && a.octets()[..3] != NAT_NETWORK);
            if !reachable {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str(&format!("nameserver {DNS_FORWARDER}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_become_the_forwarder() {
        assert_eq!(
            resolv_conf("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.org\n"),
            "options edns0 trust-ad\nsearch example.org\nnameserver 10.0.2.3\n"
        );
        assert_eq!(resolv_conf(""), "nameserver 10.0.2.3\n");
        assert_eq!(
            resolv_conf("nameserver ::1\nnameserver fd00::1\nnameserver 10.0.2.3\n"),
            "nameserver 10.0.2.3\n"
        );
    }

    #[test]
    fn reachable_resolvers_stay() {
        assert_eq!(
            resolv_conf(
                "# managed\nnameserver 10.255.255.53\nnameserver 127.0.0.1\nnameserver 192.0.2.53\n"
            ),
            "# managed\nnameserver 10.255.255.53\nnameserver 192.0.2.53\n"
        );
    }

    #[test]
    fn nat_arguments_keep_the_host_loopback_closed() {
        let args = nat_args(42);
        for flag in ["--disable-host-loopback", "--configure", "--enable-sandbox"] {
            assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
        }
        assert_eq!(args[args.len() - 2..], ["42".to_owned(), "eth0".to_owned()]);
    }
}
