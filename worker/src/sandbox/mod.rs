//! Running one command in a Linux sandbox over an overlay root filesystem.
//!
//! The worker never enters namespaces itself: [`Sandbox::run`] starts the
//! small `kiln-sandbox` helper ([`setup`] is what it does), hands it a
//! [`spec::RunSpec`] on standard input, streams the step's stdout and stderr
//! back while it runs, and can kill it: killing the helper kills the step's
//! PID 1 (parent-death signal), and with it every process of the step's PID
//! namespace. Afterwards, mount points the helper had to create in the root
//! filesystem are removed from the layer again.

mod mountpoint;
pub mod network;
mod refused;
mod rlimit;
pub mod seccomp;
pub mod setup;
pub mod spec;
pub mod syscall;
pub mod user;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};

use thiserror::Error;

use kiln_proto::sandbox::ExtraHost;

use self::spec::{Network, RunSpec};

/// The helper's exit status when setup (not the step) failed.
pub const SETUP_FAILED: u8 = 125;

/// The environment variable that carries the worker's pid to the helper,
/// which dies with it (and checks it is still there when it starts).
pub const PARENT_ENV: &str = "KILN_SANDBOX_PARENT";

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("starting the sandbox helper {helper}: {source}")]
    Spawn { helper: PathBuf, source: io::Error },
    #[error("setting up the sandbox: {0}")]
    Setup(String),
    /// The sandbox was ready and the kernel refused to execute the step's
    /// program (the platform's explanation is the worker's:
    /// [`crate::platforms::explain`]).
    #[error("{0}")]
    Exec(spec::ExecFailure),
    /// A file op failed (the message names the path and the cause).
    #[error("{0}")]
    File(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, SandboxError>;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SandboxError + use<> {
    let path = path.to_owned();
    move |source| SandboxError::Io {
        action,
        path,
        source,
    }
}

/// Which output a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Cancels a running step from another thread.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<Mutex<CancelState>>);

#[derive(Debug, Default)]
struct CancelState {
    pid: Option<u32>,
    cancelled: bool,
}

impl Cancel {
    /// Kills the step and everything it started; `run` then returns
    /// [`SandboxError::Cancelled`].
    pub fn cancel(&self) {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.cancelled = true;
        if let Some(pid) = state.pid {
            kill(pid);
        }
    }

    /// Whether both are handles of the same step.
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn started(&self, pid: u32) -> bool {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.pid = Some(pid);
        if state.cancelled {
            kill(pid);
        }
        state.cancelled
    }

    fn finished(&self) -> bool {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.pid = None;
        state.cancelled
    }
}

fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Runs steps through the helper binary.
#[derive(Debug, Clone)]
pub struct Sandbox {
    helper: PathBuf,
}

impl Sandbox {
    /// A sandbox that uses the `kiln-sandbox` binary at `helper`.
    pub fn new(helper: impl Into<PathBuf>) -> Self {
        Self {
            helper: helper.into(),
        }
    }

    /// The helper next to the running executable (where cargo and the
    /// packages install it), or `$KILN_SANDBOX`.
    pub fn beside_current_exe() -> Self {
        if let Some(path) = std::env::var_os("KILN_SANDBOX") {
            return Self::new(path);
        }
        let exe = std::env::current_exe().unwrap_or_default();
        Self::new(exe.with_file_name("kiln-sandbox"))
    }

    /// Runs `spec` to completion, passing output chunks to `output` as they
    /// come. Returns the step's exit status (128 + signal when killed by
    /// one). The step's own failure is not an error here.
    pub fn run(
        &self,
        spec: &RunSpec,
        output: &mut dyn FnMut(Stream, &[u8]),
        cancel: &Cancel,
    ) -> Result<i32> {
        fs::create_dir_all(&spec.state_dir).map_err(io_err("creating", &spec.state_dir))?;
        for name in ["error", "stubs"] {
            let _ = fs::remove_file(spec.state_dir.join(name));
        }
        let mut child = self.spawn(Stdio::piped())?;
        if cancel.started(child.id()) {
            let _ = child.wait();
            return Err(SandboxError::Cancelled);
        }
        send(&mut child, &spec::Job::Run(spec.clone()));
        let (tx, rx) = mpsc::channel::<(Stream, Vec<u8>)>();
        let readers: Vec<_> = [
            (
                Stream::Stdout,
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
            ),
            (
                Stream::Stderr,
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
            ),
        ]
        .into_iter()
        .filter_map(|(stream, reader)| reader.map(|r| (stream, r)))
        .map(|(stream, mut reader)| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 || tx.send((stream, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
        drop(tx);
        for (stream, chunk) in rx {
            output(stream, &chunk);
        }
        for reader in readers {
            let _ = reader.join();
        }
        let status = child.wait().map_err(io_err("waiting for", &self.helper))?;
        let cancelled = cancel.finished();
        remove_stubs(&spec.state_dir, &spec.rootfs.upperdir);
        if cancelled {
            return Err(SandboxError::Cancelled);
        }
        let error = fs::read_to_string(spec.state_dir.join("error")).unwrap_or_default();
        if !error.is_empty() {
            return Err(match serde_json::from_str(&error) {
                Ok(spec::Failure::Exec(failure)) => SandboxError::Exec(failure),
                Ok(spec::Failure::Setup(message)) => SandboxError::Setup(message),
                // Cut short (the helper killed while it wrote): as it is.
                Err(_) => SandboxError::Setup(error),
            });
        }
        Ok(status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }))
    }
}

impl Sandbox {
    /// Applies a file job (its mounts live only in the helper's own mount
    /// namespace). Changes land in `job.dest.upperdir`.
    pub fn file(&self, job: &crate::fileop::FileJob) -> Result<()> {
        fs::create_dir_all(&job.state_dir).map_err(io_err("creating", &job.state_dir))?;
        let _ = fs::remove_file(job.state_dir.join("error"));
        let mut child = self.spawn(Stdio::null())?;
        send(&mut child, &spec::Job::File(job.clone()));
        let out = child
            .wait_with_output()
            .map_err(io_err("waiting for", &self.helper))?;
        let error = fs::read_to_string(job.state_dir.join("error")).unwrap_or_default();
        match (out.status.success(), error.is_empty()) {
            (true, _) => Ok(()),
            (false, false) => Err(SandboxError::File(error)),
            (false, true) => Err(SandboxError::Setup(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            )),
        }
    }
}

impl Sandbox {
    /// Starts the helper; stdin and stderr are pipes.
    fn spawn(&self, stdout: Stdio) -> Result<std::process::Child> {
        Command::new(&self.helper)
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| SandboxError::Spawn {
                helper: self.helper.clone(),
                source,
            })
    }
}

/// Hands the helper its job and closes its stdin. A helper that died at once
/// reports through its exit status, so a write error is not one here.
fn send(child: &mut std::process::Child, job: &spec::Job) {
    let json = serde_json::to_vec(job).expect("a job serializes");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&json);
    }
}

/// Removes the mount points the helper made (listed in `stubs`, each
/// ended by a NUL, in the order made) from the layer, when they are still
/// empty placeholders. Each is resolved beneath the upperdir without
/// following any symlink: a step that swapped a stub's parent for a
/// symlink (to a host directory) gets nothing removed.
fn remove_stubs(state_dir: &Path, upper: &Path) {
    let list = fs::read(state_dir.join("stubs")).unwrap_or_default();
    let Ok(root) = crate::fileop::root::Root::open(upper) else {
        return;
    };
    for rel in list.split(|b| *b == 0).rev().filter(|r| !r.is_empty()) {
        let _ = root.remove_if_empty(&String::from_utf8_lossy(rel));
    }
}

/// Writes `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` for a step
/// into `dir` and returns them as `RunSpec::etc_files`.
pub fn etc_files(
    dir: &Path,
    hostname: &str,
    extra_hosts: &[ExtraHost],
    network: Network,
) -> Result<Vec<(String, PathBuf)>> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let host_resolv = || fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = match network {
        Network::Private => network::resolv_conf(&host_resolv()),
        Network::Host => host_resolv(),
        Network::None => String::new(),
    };
    let mut hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    for host in extra_hosts {
        hosts.push_str(&host.hosts_line());
        hosts.push('\n');
    }
    let files = [
        ("/etc/hosts", hosts),
        ("/etc/resolv.conf", resolv),
        ("/etc/hostname", format!("{hostname}\n")),
    ];
    files
        .into_iter()
        .map(|(target, content)| {
            let path = dir.join(target.trim_start_matches("/etc/"));
            fs::write(&path, content).map_err(io_err("writing", &path))?;
            Ok((target.to_owned(), path))
        })
        .collect()
}

#[cfg(test)]
mod tests;
