//! The description of one sandboxed run, handed from the worker to the
//! helper as JSON on its standard input.
//!
//! Its fields map one to one onto an OCI runtime spec's (`process.args`,
//! `process.env`, `process.cwd`, `hostname`, `mounts`, the network
//! namespace), so an OCI runtime could be plugged in behind the same
//! contract.

use std::path::PathBuf;

pub use kiln_proto::sandbox::Ulimit;
use serde::{Deserialize, Serialize};

/// What the helper is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Job {
    /// Run a command in a sandbox (RUN).
    Run(RunSpec),
    /// Apply file actions to an overlay (COPY, ADD, WORKDIR, heredocs).
    File(crate::fileop::FileJob),
}

/// One run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub rootfs: Rootfs,
    /// argv; `args[0]` is looked up in `PATH` of `env` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    /// Absolute; created (owned by the user) when missing.
    pub cwd: String,
    /// `USER` syntax, resolved in the root filesystem; empty is root.
    pub user: String,
    pub hostname: String,
    pub network: Network,
    /// `--security=insecure`: all capabilities, no `no_new_privs`, no
    /// seccomp filter, no masked or read-only `/proc` and `/sys` paths,
    /// device nodes open anywhere. (The builder checks it was granted.)
    pub privileged: bool,
    /// Extra mounts, in order.
    pub mounts: Vec<Mount>,
    /// Files bound over `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`
    /// (target in the root, source on the host). Never part of the layer.
    pub etc_files: Vec<(String, PathBuf)>,
    /// Resource limits set (setrlimit(2)) before the step starts, as OCI's
    /// `process.rlimits`; the step inherits the helper's others.
    pub ulimits: Vec<Ulimit>,
    /// The size of `/dev/shm` in bytes.
    pub shm_size: u64,
    /// A host directory for the helper's reports (`error`, `stubs`).
    pub state_dir: PathBuf,
}

/// The overlay that is the step's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// Lower layers, top first; at least one (an empty directory for scratch).
    pub lowerdirs: Vec<PathBuf>,
    /// Receives every change: the new layer.
    pub upperdir: PathBuf,
    /// overlayfs's work directory, on the upperdir's filesystem.
    pub workdir: PathBuf,
    /// Where the overlay is mounted, in the helper's mount namespace only.
    pub target: PathBuf,
}

/// A RUN step's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// A namespace of the step's own whose only way out is a user-space NAT
    /// (slirp4netns) that never reaches the host's loopback: outbound
    /// connections work, services listening on the host's 127.0.0.0/8 (a
    /// database, kilnd's TCP API) and abstract Unix sockets do not. The
    /// default (`RUN --network=default`).
    #[default]
    Private,
    /// The host's network (`--network=host`).
    Host,
    /// A new namespace with only loopback.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path in the sandbox.
    pub target: String,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A host file or directory (another rootfs, the context, a cache
    /// directory, a secret file).
    Bind { source: PathBuf, readonly: bool },
    /// A fresh tmpfs; `size` in bytes, 0 for the kernel's default.
    Tmpfs { size: u64 },
    /// `path` inside a stack of layer directories (top first), mounted as a
    /// read-only overlay when there are several; `path` is resolved inside
    /// them, never outside. (`RUN --mount=type=bind,from=…`, the context.)
    /// Writable (`rw`), the step writes to a scratch upper directory that
    /// goes with the step: never to the layers or the context.
    Layers {
        lowerdirs: Vec<PathBuf>,
        path: String,
        readonly: bool,
        /// A directory that keeps the writes (its `upper` and `work`)
        /// instead of the step's scratch: a cache mount seeded from a
        /// stage (`--mount=type=cache,from=…`).
        #[serde(default)]
        upper: Option<PathBuf>,
    },
}

/// Why the helper stopped before a run's step started: what it writes,
/// as JSON, to the state directory's `error` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// Setting up the sandbox failed (what it was doing, and why).
    Setup(String),
    /// The sandbox was ready and the kernel refused to execute the step's
    /// program.
    Exec(ExecFailure),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::Setup(message)
    }
}

/// A step's program the kernel refused to execute, with what the worker
/// needs to say why (a program for another platform, which this host
/// does not run): read inside the sandbox, where the program is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecFailure {
    /// As the step names it (`args[0]`).
    pub program: String,
    /// execve(2)'s errno.
    pub errno: i32,
    /// The file whose first bytes are `header`: the program, or the
    /// interpreter its `#!` line names.
    pub examined: String,
    /// The first bytes of `examined` (at most 64), as the step's user
    /// could read them; empty when it could not.
    pub header: Vec<u8>,
}

impl std::fmt::Display for ExecFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let errno = nix::errno::Errno::from_raw(self.errno);
        write!(f, "exec {}: {errno}", self.program)
    }
}
