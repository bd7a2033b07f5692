//! An Exec op (RUN) on this worker: the step's root filesystem from layer
//! directories, its mounts — bind (from layers or the context), cache (kept
//! between builds by id, with `sharing`), tmpfs, secrets (a file or an
//! environment variable) — run in the sandbox. The result is the step's
//! upperdir: exactly the new layer.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_proto::sandbox::{DEFAULT_SHM_SIZE, SandboxOptions};
use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

use crate::platforms::{self, BINFMT_MISC, NotRunnable};
use crate::sandbox::spec::{Mount, MountKind, Network, Rootfs, RunSpec};
use crate::sandbox::{Cancel, Sandbox, SandboxError, Stream, etc_files};
use crate::ssh_agent::AgentRelay;

#[derive(Debug, Error)]
pub enum ExecError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The kernel refused the step's program: it is for a platform this
    /// host runs neither natively nor through a binfmt_misc handler that
    /// works inside a sandbox.
    #[error(transparent)]
    NotRunnable(Box<NotRunnable>),
    #[error("secret {0:?} was not provided (--secret id={0},src=…)")]
    MissingSecret(String),
    #[error("SSH agent {0:?} was not provided (--ssh {0}=SOCKET)")]
    MissingSshAgent(String),
    #[error("secret {0:?} is not text and cannot be an environment variable")]
    SecretNotText(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("locking cache mount {id:?}: {source}")]
    Lock { id: String, source: nix::Error },
    #[error(
        "--shm-size {size} is more than this machine's memory ({memory} bytes): /dev/shm is memory"
    )]
    ShmTooLarge { size: u64, memory: u64 },
}

pub type Result<T> = std::result::Result<T, ExecError>;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExecError + use<> {
    let path = path.to_owned();
    move |source| ExecError::Io {
        action,
        path,
        source,
    }
}

/// The sandbox's error; a program the kernel refused is explained when it
/// is for a platform this host does not run (for `platform`).
fn refused(e: SandboxError, platform: &str) -> ExecError {
    let explained = match &e {
        SandboxError::Exec(failure) => {
            platforms::explain(failure, platform, Path::new(BINFMT_MISC))
        }
        _ => None,
    };
    match explained {
        Some(not_runnable) => ExecError::NotRunnable(Box::new(not_runnable)),
        None => e.into(),
    }
}

/// How concurrent steps share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Everyone uses the same directory at once.
    Shared,
    /// A step that finds the cache in use gets a fresh, empty one.
    Private,
    /// A step waits until the cache is free.
    Locked,
}

impl Sharing {
    /// `Shared` becomes `Locked`; the others stay.
    fn exclusive(self) -> Self {
        match self {
            Self::Shared => Self::Locked,
            other => other,
        }
    }
}

/// One `RUN --mount`, with its sources resolved to this worker's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecMount {
    /// `path` inside a stack of layer directories (top first), or inside
    /// the context (one directory).
    Bind {
        target: String,
        layers: Vec<PathBuf>,
        path: String,
        readonly: bool,
    },
    Cache {
        target: String,
        id: String,
        sharing: Sharing,
        uid: u32,
        gid: u32,
        mode: u32,
        readonly: bool,
        /// `from=`/`source=`: what a new cache starts as.
        seed: Option<CacheSeed>,
    },
    Tmpfs {
        target: String,
        size: u64,
    },
    /// A file at `target` (default `/run/secrets/<id>`) unless `env` names
    /// an environment variable to set instead (or as well, with a target).
    Secret {
        id: String,
        target: Option<String>,
        env: Option<String>,
        uid: u32,
        gid: u32,
        mode: u32,
        required: bool,
    },
    /// A socket at `target` relayed to the SSH agent given as `id`
    /// ([`Worker::with_ssh_agent`]).
    Ssh {
        id: String,
        target: String,
        uid: u32,
        gid: u32,
        mode: u32,
        required: bool,
    },
}

/// What a cache mount starts as (`from=STAGE,source=PATH`): `path` in a
/// stack of layer directories (top first, named by their content). The
/// cache keeps only its changes on top of them, in an upper directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSeed {
    pub layers: Vec<PathBuf>,
    pub path: String,
}

/// The cache a `RUN --mount=type=cache` uses, as BuildKit keys it: its id
/// and what it starts as. The same id seeded from another stage, or made
/// with another owner or mode than root's 0755, is another cache.
pub fn cache_key(id: &str, uid: u32, gid: u32, mode: u32, seed: Option<&CacheSeed>) -> String {
    match seed {
        Some(seed) => {
            let layers: Vec<_> = seed
                .layers
                .iter()
                .map(|l| l.file_name().unwrap_or_default().to_string_lossy())
                .collect();
            format!("{id}\nfrom {}:{}", layers.join(","), seed.path)
        }
        None if (uid, gid, mode & 0o7777) != (0, 0, 0o755) => {
            format!("{id}\nowner {uid}:{gid} mode {:o}", mode & 0o7777)
        }
        None => id.to_owned(),
    }
}

/// A step's hostname unless the build names one (BuildKit's is
/// `buildkitsandbox`).
pub const DEFAULT_HOSTNAME: &str = "kiln";

/// The step's `/dev/shm` size: the build's, at most this machine's memory
/// (a tmpfs only takes what is written to it, but a bound above the
/// memory lets a step exhaust it).
fn shm_size(sandbox: &SandboxOptions) -> Result<u64> {
    let size = sandbox
        .shm_size
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_SHM_SIZE);
    let memory = nix::sys::sysinfo::sysinfo().map_or(u64::MAX, |i| i.ram_total());
    if size > memory {
        return Err(ExecError::ShmTooLarge { size, memory });
    }
    Ok(size)
}

/// A RUN step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Layer directories of the root filesystem, top first; empty for scratch.
    pub rootfs: Vec<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub network: Network,
    pub privileged: bool,
    pub mounts: Vec<ExecMount>,
    /// The build's hostname, `/etc/hosts` entries, resource limits and
    /// `/dev/shm` size.
    pub sandbox: SandboxOptions,
    /// The platform the step is for (`os/arch[/variant]`, its op's): what
    /// its error names when this host cannot run its program; empty: this
    /// host's.
    pub platform: String,
}

/// A finished step.
#[derive(Debug)]
pub struct ExecOutcome {
    pub exit_code: i32,
    /// The new layer (the step's upperdir). Removed by [`Worker::discard`].
    pub layer: PathBuf,
    step_dir: PathBuf,
}

/// Runs steps under one directory (`steps/`, `cache-mounts/`), with the
/// build's secrets.
#[derive(Debug)]
pub struct Worker {
    dir: PathBuf,
    sandbox: Sandbox,
    secrets: BTreeMap<String, Vec<u8>>,
    ssh_agents: BTreeMap<String, PathBuf>,
}

static STEP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Worker {
    pub fn new(dir: impl Into<PathBuf>, sandbox: Sandbox) -> Self {
        let dir = dir.into();
        // Layers unpacked into snapshots/ (the base image's again after
        // a prune) are as many new files.
        for spread in ["steps", "snapshots"] {
            spread_dirs(&dir.join(spread));
        }
        Self {
            dir,
            sandbox,
            secrets: BTreeMap::new(),
            ssh_agents: BTreeMap::new(),
        }
    }

    /// The sandbox steps run in (file ops use it directly).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Makes a secret available to steps that mount it.
    #[must_use]
    pub fn with_secret(mut self, id: &str, value: Vec<u8>) -> Self {
        self.secrets.insert(id.to_owned(), value);
        self
    }

    /// The secret `id`, when the build has it.
    pub fn secret(&self, id: &str) -> Option<&[u8]> {
        self.secrets.get(id).map(Vec::as_slice)
    }

    /// Makes the SSH agent listening at `socket` available to steps that
    /// mount `id` (`RUN --mount=type=ssh,id=ID`).
    #[must_use]
    pub fn with_ssh_agent(mut self, id: &str, socket: PathBuf) -> Self {
        self.ssh_agents.insert(id.to_owned(), socket);
        self
    }

    /// Runs `req`; the step's failing is an exit code, not an error. On an
    /// error, the step leaves no files behind.
    pub fn exec(
        &self,
        req: &ExecRequest,
        output: &mut dyn FnMut(Stream, &[u8]),
        cancel: &Cancel,
    ) -> Result<ExecOutcome> {
        let step_dir = self.dir.join("steps").join(format!(
            "{}-{}",
            std::process::id(),
            STEP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.exec_in(&step_dir, req, output, cancel);
        if result.is_err() {
            let _ = kiln_cache::remove_all(&step_dir);
        }
        result
    }

    /// The step in `step_dir`, in order: its directories, its mounts (with
    /// what they hold: cache locks, SSH agent relays, secret files), the
    /// sandbox's spec, the run. What the mounts hold is released as soon as
    /// the step ends, whether or not it ran.
    fn exec_in(
        &self,
        step_dir: &Path,
        req: &ExecRequest,
        output: &mut dyn FnMut(Stream, &[u8]),
        cancel: &Cancel,
    ) -> Result<ExecOutcome> {
        let shm_size = shm_size(&req.sandbox)?;
        let dirs = StepDirs::create(step_dir, &req.rootfs)?;
        let StepMounts {
            env,
            mounts,
            guards,
            relays,
            ..
        } = self.step_mounts(req, &dirs.secrets)?;
        let spec = run_spec(req, &dirs, mounts, env, shm_size)?;
        let result = self.sandbox.run(&spec, output, cancel);
        drop(guards);
        drop(relays);
        // Secrets never outlive the step.
        let _ = fs::remove_dir_all(&dirs.secrets);
        Ok(ExecOutcome {
            exit_code: result.map_err(|e| refused(e, &req.platform))?,
            layer: dirs.upper,
            step_dir: step_dir.to_owned(),
        })
    }

    /// The step's `--mount`s as the sandbox takes them, in the request's
    /// order, with the step's environment (a secret may be a variable
    /// there) and what must be held until the step ends. Secret files and
    /// agent sockets are made in `secrets_dir`.
    fn step_mounts(&self, req: &ExecRequest, secrets_dir: &Path) -> Result<StepMounts> {
        let mut step = StepMounts {
            secrets_dir: secrets_dir.to_owned(),
            env: req.env.clone(),
            mounts: Vec::new(),
            relays: Vec::new(),
            guards: Vec::new(),
        };
        for mount in &req.mounts {
            self.step_mount(mount, &mut step)?;
        }
        Ok(step)
    }

    /// Adds one `--mount` to `step`. A secret or an agent the build was
    /// not given is an error when the mount requires it, else the mount is
    /// left out.
    fn step_mount(&self, m: &ExecMount, step: &mut StepMounts) -> Result<()> {
        match m {
            ExecMount::Bind {
                target,
                layers,
                path,
                readonly,
            } => step.push(
                target,
                MountKind::Layers {
                    lowerdirs: layers.clone(),
                    path: path.clone(),
                    readonly: *readonly,
                    upper: None,
                },
            ),
            ExecMount::Tmpfs { target, size } => {
                step.push(target, MountKind::Tmpfs { size: *size })
            }
            ExecMount::Cache {
                target,
                id,
                sharing,
                uid,
                gid,
                mode,
                readonly,
                seed,
            } => {
                let perms = Perms::new(*uid, *gid, *mode);
                let (kind, guard) =
                    self.cache_mount(id, *sharing, perms, *readonly, seed.as_ref())?;
                step.push(target, kind);
                step.guards.push(guard);
            }
            ExecMount::Secret {
                id,
                target,
                env: var,
                uid,
                gid,
                mode,
                required,
            } => {
                let Some(value) = self.secrets.get(id) else {
                    return missing(*required, || ExecError::MissingSecret(id.clone()));
                };
                let perms = Perms::new(*uid, *gid, *mode);
                step.secret(id, value, target.as_deref(), var.as_deref(), perms)?;
            }
            ExecMount::Ssh {
                id,
                target,
                uid,
                gid,
                mode,
                required,
            } => {
                let Some(agent) = self.ssh_agents.get(id) else {
                    return missing(*required, || ExecError::MissingSshAgent(id.clone()));
                };
                step.ssh_agent(agent, target, Perms::new(*uid, *gid, *mode))?;
            }
        }
        Ok(())
    }

    /// A cache mount's directory, held as its `sharing` says, and how the
    /// step mounts it: bound as it is, or, seeded (`from=`), as an overlay
    /// of the seed's layers with the cache as its upper directory.
    fn cache_mount(
        &self,
        id: &str,
        sharing: Sharing,
        perms: Perms,
        readonly: bool,
        seed: Option<&CacheSeed>,
    ) -> Result<(MountKind, CacheGuard)> {
        let Perms { uid, gid, mode } = perms;
        let key = cache_key(id, uid, gid, mode, seed);
        let guard = match seed {
            None => self.cache(&key, sharing, |p| make_dir(p, uid, gid, mode))?,
            // Two overlays never share one upper directory:
            // shared steps take turns.
            Some(_) => self.cache(&key, sharing.exclusive(), |p| {
                make_dir(&p.join("upper"), 0, 0, 0o755)?;
                make_dir(&p.join("work"), 0, 0, 0o700)
            })?,
        };
        let kind = match seed {
            None => MountKind::Bind {
                source: guard.path.clone(),
                readonly,
            },
            Some(seed) => MountKind::Layers {
                lowerdirs: seed.layers.clone(),
                path: seed.path.clone(),
                readonly,
                upper: Some(guard.path.clone()),
            },
        };
        Ok((kind, guard))
    }

    /// Removes a finished step's files (after its layer was taken, or when
    /// none is), however deep the step made them.
    pub fn discard(&self, outcome: ExecOutcome) -> Result<()> {
        kiln_cache::remove_all(&outcome.step_dir).map_err(io_err("removing", &outcome.step_dir))
    }

    /// The directory of the cache keyed `id` ([`cache_key`]), made by
    /// `make` when new.
    fn cache(
        &self,
        id: &str,
        sharing: Sharing,
        make: impl Fn(&Path) -> Result<()>,
    ) -> Result<CacheGuard> {
        let base = self.dir.join("cache-mounts");
        let name = cache_dir_name(id);
        let path = base.join(&name);
        if !path.exists() {
            make(&path)?;
        }
        let lock_path = base.join(format!("{name}.lock"));
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("opening", &lock_path))?;
        // The lock file's mtime is when the cache was last used: a prune
        // over its bound removes the least recently used caches first.
        let _ = lock_file.set_modified(std::time::SystemTime::now());
        let lock = |file: File, how: FlockArg| {
            Flock::lock(file, how).map_err(|(_, e)| ExecError::Lock {
                id: id.to_owned(),
                source: e,
            })
        };
        Ok(match sharing {
            Sharing::Shared => CacheGuard {
                path,
                _lock: Some(lock(lock_file, FlockArg::LockShared)?),
                private: None,
            },
            Sharing::Locked => CacheGuard {
                path,
                _lock: Some(lock(lock_file, FlockArg::LockExclusive)?),
                private: None,
            },
            Sharing::Private => match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
                Ok(held) => CacheGuard {
                    path,
                    _lock: Some(held),
                    private: None,
                },
                Err(_) => {
                    let private = base.join(format!(
                        "{name}-private-{}-{}",
                        std::process::id(),
                        STEP_SEQ.fetch_add(1, Ordering::Relaxed)
                    ));
                    make(&private)?;
                    CacheGuard {
                        path: private.clone(),
                        _lock: None,
                        private: Some(private),
                    }
                }
            },
        })
    }
}

/// A cache directory in use; a private copy is removed when dropped.
struct CacheGuard {
    path: PathBuf,
    _lock: Option<Flock<File>>,
    private: Option<PathBuf>,
}

impl Drop for CacheGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.private {
            let _ = kiln_cache::remove_all(p);
        }
    }
}

/// Makes `steps` (every step's and file op's scratch directory is made in
/// it; or `snapshots`, where layers are unpacked) spread the directories
/// made in it over the disk
/// ([`crate::sandbox::syscall::mark_top_dir`]): a step's new files then
/// land in a block group of their own rather than among the inodes that
/// the last prune freed next to `steps`, which ext4 without a journal
/// skips one by one on every creation for a minute after (six while their
/// inode table block is unwritten) — 20,000 new files past 20,000 freed
/// ones doubled a COPY's time. The store makes `steps` anew (0700) each
/// time it opens, so each worker marks it. Only a placement hint: a
/// filesystem without the flag (tmpfs, xfs) is used as it is.
fn spread_dirs(steps: &Path) {
    use std::os::unix::fs::DirBuilderExt as _;
    let made = fs::DirBuilder::new().mode(0o700).create(steps);
    if made.is_err() && !steps.is_dir() {
        return;
    }
    if let Ok(dir) = File::open(steps) {
        let _ = crate::sandbox::syscall::mark_top_dir(std::os::fd::AsFd::as_fd(&dir));
    }
}

/// A step's directories under `steps/`: the overlay's upper (the new
/// layer), work and merged directories, the sandbox's state, the secrets'
/// files; and the root filesystem's lowerdirs.
struct StepDirs {
    /// The image's layers, top first; for scratch, an empty directory of
    /// the step's own.
    lowerdirs: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    merged: PathBuf,
    state: PathBuf,
    secrets: PathBuf,
}

impl StepDirs {
    /// Makes the directories under `step_dir`, for a root filesystem of
    /// the layer directories `rootfs` (top first; empty for scratch).
    fn create(step_dir: &Path, rootfs: &[PathBuf]) -> Result<Self> {
        let d = |name: &str| -> Result<PathBuf> {
            let p = step_dir.join(name);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
            Ok(p)
        };
        let (upper, work, merged, state, secrets) = (
            d("upper")?,
            d("work")?,
            d("merged")?,
            d("state")?,
            d("secrets")?,
        );
        let lowerdirs = if rootfs.is_empty() {
            vec![d("empty")?]
        } else {
            rootfs.to_vec()
        };
        Ok(Self {
            lowerdirs,
            upper,
            work,
            merged,
            state,
            secrets,
        })
    }
}

/// A step's mounts as the sandbox takes them, the environment they make,
/// and what they hold until the step ends.
struct StepMounts {
    /// Where secret files and agent sockets are made: the step's own
    /// `secrets/`, removed when it ends.
    secrets_dir: PathBuf,
    /// The request's environment, then the secrets given as variables.
    env: Vec<String>,
    mounts: Vec<Mount>,
    /// SSH agent relays: dropped, they stop and remove their sockets.
    relays: Vec<AgentRelay>,
    /// Cache locks and private cache copies: dropped, they are released
    /// and removed.
    guards: Vec<CacheGuard>,
}

impl StepMounts {
    fn push(&mut self, target: &str, kind: MountKind) {
        self.mounts.push(Mount {
            target: target.to_owned(),
            kind,
        });
    }

    /// The secret `id` (`value`) as the step asks for it: the variable
    /// `var`, a read-only file at `target` (by default
    /// `/run/secrets/<id>`), or both.
    fn secret(
        &mut self,
        id: &str,
        value: &[u8],
        target: Option<&str>,
        var: Option<&str>,
        perms: Perms,
    ) -> Result<()> {
        if let Some(var) = var {
            let text =
                std::str::from_utf8(value).map_err(|_| ExecError::SecretNotText(id.to_owned()))?;
            self.env.push(format!("{var}={text}"));
        }
        if var.is_none() || target.is_some() {
            let file = self.secrets_dir.join(format!("{}", self.mounts.len()));
            write_secret(&file, value, perms.uid, perms.gid, perms.mode)?;
            let target = target.map_or_else(|| format!("/run/secrets/{id}"), str::to_owned);
            self.push(
                &target,
                MountKind::Bind {
                    source: file,
                    readonly: true,
                },
            );
        }
        Ok(())
    }

    /// A socket at `target` relayed to the SSH agent listening at `agent`.
    fn ssh_agent(&mut self, agent: &Path, target: &str, perms: Perms) -> Result<()> {
        let socket = self.secrets_dir.join(format!("ssh-{}", self.mounts.len()));
        self.relays.push(
            AgentRelay::start(&socket, agent, perms.uid, perms.gid, perms.mode)
                .map_err(io_err("forwarding the SSH agent to", &socket))?,
        );
        self.push(
            target,
            MountKind::Bind {
                source: socket,
                readonly: true,
            },
        );
        Ok(())
    }
}

/// The owner and mode of what a mount makes for the step: a cache
/// directory, a secret file, an agent socket.
#[derive(Debug, Clone, Copy)]
struct Perms {
    uid: u32,
    gid: u32,
    mode: u32,
}

impl Perms {
    fn new(uid: u32, gid: u32, mode: u32) -> Self {
        Self { uid, gid, mode }
    }
}

/// A secret or SSH agent the build was not given: `error` when the mount
/// requires it, else nothing (the mount is left out).
fn missing(required: bool, error: impl FnOnce() -> ExecError) -> Result<()> {
    if required {
        return Err(error());
    }
    Ok(())
}

/// What the sandbox runs: the request's step on the root filesystem of
/// `dirs`, with `mounts` and `env`, its hostname (the build's or
/// [`DEFAULT_HOSTNAME`]) and the `/etc` files that go with it, written in
/// the step's state directory.
fn run_spec(
    req: &ExecRequest,
    dirs: &StepDirs,
    mounts: Vec<Mount>,
    env: Vec<String>,
    shm_size: u64,
) -> Result<RunSpec> {
    let hostname = req
        .sandbox
        .hostname
        .clone()
        .unwrap_or_else(|| DEFAULT_HOSTNAME.to_owned());
    let etc = etc_files(
        &dirs.state.join("etc"),
        &hostname,
        &req.sandbox.extra_hosts,
        req.network,
    )?;
    Ok(RunSpec {
        rootfs: Rootfs {
            lowerdirs: dirs.lowerdirs.clone(),
            upperdir: dirs.upper.clone(),
            workdir: dirs.work.clone(),
            target: dirs.merged.clone(),
        },
        args: req.args.clone(),
        env,
        cwd: req.cwd.clone(),
        user: req.user.clone(),
        hostname,
        network: req.network,
        privileged: req.privileged,
        mounts,
        etc_files: etc,
        ulimits: req.sandbox.ulimits.clone(),
        shm_size,
        state_dir: dirs.state.clone(),
    })
}

/// A file-system-safe name for a cache id (ids are free text: `/root/.cache`):
/// its directory under `cache-mounts/`.
pub fn cache_dir_name(id: &str) -> String {
    use std::fmt::Write;
    let digest = kiln_cache::Digest::of(id.as_bytes());
    let mut name: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    let _ = write!(name, "-{}", &digest.hex()[..16]);
    name
}

fn make_dir(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<()> {
    fs::create_dir_all(path).map_err(io_err("creating", path))?;
    chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("chmod", path))
}

fn write_secret(path: &Path, value: &[u8], uid: u32, gid: u32, mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(io_err("creating", path))?;
    std::io::Write::write_all(&mut file, value).map_err(io_err("writing", path))?;
    chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("chmod", path))
}
