//! The solver: runs a build graph's vertices, each after its inputs, on the
//! local worker, with the step cache.
//!
//! A vertex's cache key (`key.rs`) is the SHA-256 of its op digest, its
//! inputs' cache keys, and — for ops that read the build context — a digest
//! of the context files they read (`context::digest`). A key found in the
//! store with its layer blob present is a hit: nothing runs. A missing blob
//! is a miss.

mod cancel;
mod context;
mod executor;
mod flight;
mod key;
mod local;
mod ops;

pub use cancel::Cancellation;
pub use context::ContextDigests;
pub use executor::{ContextForms, Executor, Source, Step, StepMount, StepOutcome};
pub use flight::InFlight;
pub use local::Local;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use kiln_cache::Store;
use kiln_frontend::convert::BuildGraph;
use kiln_proto::dockerignore::Matcher;
use kiln_worker::exec::Worker;
use kiln_worker::snapshot::Snapshots;
use thiserror::Error;

use crate::fetch;
use kiln_image::image::Layer;

/// What a vertex produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fs {
    /// Layers, bottom first (empty: scratch).
    Layers(Vec<Layer>),
    /// Files from the client: the build context (`context`) or a named
    /// one (`context:NAME`), by its source's name.
    Context(String),
    /// A downloaded file or a Git checkout (`ADD <url>`).
    Fetched(std::sync::Arc<fetch::Fetched>),
}

/// What the solver reports while it works (`--progress=json` prints one
/// per line: `{"event":"started","vertex":3,"description":"…"}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        vertex: usize,
        description: String,
    },
    Cached {
        vertex: usize,
    },
    Log {
        vertex: usize,
        line: String,
    },
    Done {
        vertex: usize,
        seconds: f64,
    },
    /// Bytes of a download so far (`ADD <url>`), about once a second and
    /// at the end; `total` when the server said.
    Bytes {
        vertex: usize,
        current: u64,
        total: Option<u64>,
    },
    /// The step failed; the build stops (`error` is the cause alone).
    Failed {
        vertex: usize,
        error: String,
    },
    /// A build check found something (before any step runs); BuildKit's
    /// `VertexWarning`.
    Warning {
        warning: kiln_frontend::checks::Violation,
    },
}

/// Why a solve failed. A step's failure names the step (its description
/// and Dockerfile line) and says where it failed.
#[derive(Debug, Error)]
pub enum SolveError {
    /// The build was cancelled (its client went away); running steps were
    /// killed.
    #[error("cancelled")]
    Cancelled,
    /// A RUN step's process exited with a code other than 0.
    #[error("{description}: did not complete successfully: exit code {code}")]
    ExitCode {
        description: String,
        code: i32,
        log_tail: Vec<String>,
    },
    /// A file op (COPY, ADD, WORKDIR, mkdir) failed.
    #[error("{description}: {reason}")]
    FileOp { description: String, reason: String },
    /// A step on a remote worker failed there or on its way (not its
    /// process: that is [`SolveError::ExitCode`]).
    #[error("{description}: {reason}")]
    Remote { description: String, reason: String },
    /// Any other step failure: a source, a mount, a layer.
    #[error("{description}: {reason}")]
    Step { description: String, reason: String },
    #[error(transparent)]
    Image(#[from] kiln_image::image::ImageError),
    #[error(transparent)]
    Content(#[from] kiln_cache::ContentError),
    #[error(transparent)]
    Meta(#[from] kiln_cache::MetaError),
    /// A step needs an entitlement the build was not granted.
    #[error(transparent)]
    Entitlement(#[from] crate::entitlements::EntitlementError),
}

pub type Result<T> = std::result::Result<T, SolveError>;

impl SolveError {
    /// What a failed step's progress line says: the cause alone; `None`
    /// for an error that is not one step's.
    fn step_reason(&self) -> Option<String> {
        match self {
            Self::Cancelled => Some("cancelled".into()),
            Self::ExitCode { code, .. } => {
                Some(format!("did not complete successfully: exit code {code}"))
            }
            Self::FileOp { reason, .. }
            | Self::Remote { reason, .. }
            | Self::Step { reason, .. } => Some(reason.clone()),
            Self::Image(_) | Self::Content(_) | Self::Meta(_) | Self::Entitlement(_) => None,
        }
    }

    /// The error, naming the step it happened in.
    fn of_step(self, described: String) -> Self {
        match self {
            Self::ExitCode { code, log_tail, .. } => Self::ExitCode {
                description: described,
                code,
                log_tail,
            },
            Self::FileOp { reason, .. } => Self::FileOp {
                description: described,
                reason,
            },
            Self::Remote { reason, .. } => Self::Remote {
                description: described,
                reason,
            },
            Self::Step { reason, .. } => Self::Step {
                description: described,
                reason,
            },
            other => other,
        }
    }
}

/// The stack of a step's thread. A step that reads the context walks it
/// for its digest (`context::digest`): 1 KB a level in a debug build
/// (measured), and from any level on, `.dockerignore`'s walk into an
/// excluded directory for an exception (`Matcher::keeps`) another 1 KB a
/// level: about 2.1 MB down to
/// [`MAX_TREE_DEPTH`](kiln_proto::depth::MAX_TREE_DEPTH) levels, more
/// than a thread's default 2 MiB. Only touched pages are used.
const STEP_STACK: usize = 8 << 20;

/// How many steps run at once: twice the CPUs, at least 4 (RUN steps often
/// wait on the network or on `sleep`, not on a CPU).
pub fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (n.get() * 2).max(4))
}

/// A vertex's cache key, and the key of its line of results.
struct Keys {
    key: String,
    lineage: Option<String>,
}

/// What the step cache keeps of a layer a step made.
fn cache_record(layer: &Layer) -> kiln_cache::CacheRecord {
    kiln_cache::CacheRecord {
        blob: layer.blob.clone(),
        diff_id: layer.diff_id.clone(),
        media_type: layer.media_type.clone(),
        size: layer.size,
        created: kiln_image::image::now(),
        annotations: layer.annotations.clone(),
    }
}

/// A step's cache lookup: a hit, or the claim to run it.
enum Lookup<'a> {
    Hit(kiln_cache::CacheRecord),
    Claimed(flight::Claim<'a>),
}

/// A merge: its inputs' layers, in order.
fn merged(inputs: &[(Fs, String)]) -> Fs {
    Fs::Layers(
        inputs
            .iter()
            .flat_map(|(fs, _)| match fs {
                Fs::Layers(l) => l.clone(),
                Fs::Context(_) | Fs::Fetched(_) => Vec::new(),
            })
            .collect(),
    )
}

/// What a solve is asked to do, beside its store and worker: the build's
/// flags and what it shares with other builds.
pub struct SolveOptions<'a> {
    /// The build context directory.
    pub context: PathBuf,
    /// Its `.dockerignore` patterns, as written.
    pub dockerignore: Vec<String>,
    /// The named contexts that are directories (`--build-context
    /// NAME=DIR`), by name: each read as the build context is, with its
    /// own `.dockerignore` patterns.
    pub named_dirs: std::collections::BTreeMap<String, NamedDir>,
    /// Run every step, using no cache hit.
    pub no_cache: bool,
    /// Stages (by index) whose steps run again (`--no-cache-filter`).
    pub no_cache_stages: std::collections::BTreeSet<usize>,
    /// The network of RUN steps without `--network` (`kiln build --network`).
    pub network: kiln_worker::sandbox::spec::Network,
    /// What the build was granted (`--allow`, within kilnd's
    /// `--allow-insecure-entitlement`); checked before any step runs.
    pub entitlements: crate::entitlements::Entitlements,
    /// `SOURCE_DATE_EPOCH`: new layers' mtimes are clamped to it.
    pub source_date_epoch: Option<u64>,
    /// How new layers are written (the build's `-o …,compression=`).
    pub compression: kiln_image::compress::LayerCompression,
    /// Cancels this build.
    pub cancellation: std::sync::Arc<Cancellation>,
    /// Steps running now in this process, shared by concurrent builds.
    pub in_flight: std::sync::Arc<InFlight>,
    /// Context digests computed before, for contexts that did not change.
    pub context_digests: std::sync::Arc<ContextDigests>,
    /// Workers elsewhere RUN steps may go to (kilnd's farm; `None`: all
    /// run here).
    pub farm: Option<&'a dyn Executor>,
}

/// A named context's directory and its `.dockerignore` patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedDir {
    pub dir: PathBuf,
    pub dockerignore: Vec<String>,
}

/// A directory of files from the client as steps read it: the build
/// context or a named one. Its view and layer are made on first use and
/// kept for the build.
struct LocalDir {
    dir: PathBuf,
    dockerignore: Vec<String>,
    matcher: Matcher,
    /// The directory minus `.dockerignore`d files, for RUN bind mounts.
    view: std::sync::OnceLock<std::result::Result<tempfile::TempDir, String>>,
    /// That view as a layer for remote workers.
    layer: std::sync::OnceLock<std::result::Result<Layer, String>>,
}

impl LocalDir {
    fn new(dir: PathBuf, dockerignore: Vec<String>) -> std::result::Result<Self, SolverSetupError> {
        Ok(Self {
            matcher: Matcher::new(&dockerignore)?,
            dir,
            dockerignore,
            view: Default::default(),
            layer: Default::default(),
        })
    }
}

/// The source name of the build context (`LocalSource.name`).
const BUILD_CONTEXT: &str = "context";

/// One solve: a build graph's vertices run on the local worker (or handed
/// to remote workers), with the step cache.
pub struct Solver<'a> {
    store: &'a Store,
    worker: &'a Worker,
    snapshots: Snapshots,
    options: SolveOptions<'a>,
    progress: std::sync::Mutex<&'a mut (dyn FnMut(Event) + Send)>,
    /// The build context and the named directories, by source name.
    locals: std::collections::BTreeMap<String, LocalDir>,
    /// Every step's cache key and layer, run or cached, as the build went
    /// (what `--cache-to` exports).
    steps: std::sync::Mutex<Vec<(String, Layer)>>,
}

impl<'a> Solver<'a> {
    /// A solver over `store`'s snapshots, running steps on `worker`;
    /// `progress` hears every [`Event`] (from any step's thread).
    pub fn new(
        store: &'a Store,
        worker: &'a Worker,
        options: SolveOptions<'a>,
        progress: &'a mut (dyn FnMut(Event) + Send),
    ) -> std::result::Result<Self, SolverSetupError> {
        let snapshots = Snapshots::open(store.snapshots_dir())?;
        // Unpacks a killed build left half done (the root's lock is ours).
        snapshots.recover()?;
        let mut locals = std::collections::BTreeMap::new();
        locals.insert(
            BUILD_CONTEXT.to_owned(),
            LocalDir::new(options.context.clone(), options.dockerignore.clone())?,
        );
        for (name, named) in &options.named_dirs {
            locals.insert(
                kiln_frontend::convert::local_name(name),
                LocalDir::new(named.dir.clone(), named.dockerignore.clone())?,
            );
        }
        Ok(Self {
            store,
            worker,
            snapshots,
            options,
            progress: std::sync::Mutex::new(progress),
            locals,
            steps: Default::default(),
        })
    }

    /// Every step's cache key and layer, run or cached, in the order they
    /// ended.
    pub fn into_steps(self) -> Vec<(String, Layer)> {
        self.steps
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why a solver could not start.
#[derive(Debug, Error)]
pub enum SolverSetupError {
    #[error(transparent)]
    Snapshots(#[from] kiln_worker::layer::LayerError),
    #[error(transparent)]
    Dockerignore(#[from] kiln_proto::dockerignore::DockerignoreError),
}

impl Solver<'_> {
    /// Reports `event` (from any step's thread).
    pub(super) fn emit(&self, event: Event) {
        let mut progress = self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        progress(event);
    }

    /// Solves every vertex of `graph` — independent ones at the same time,
    /// up to [`parallelism`] — and returns the filesystem of the vertex
    /// `root` (`None`: scratch). After a failure no new step starts; the
    /// first error is returned once running steps have ended.
    pub fn solve(&self, graph: &BuildGraph, root: Option<&str>) -> Result<Fs> {
        let mut solved = self.solve_roots(graph, &[root])?;
        Ok(solved.pop().expect("one filesystem per root"))
    }

    /// [`Solver::solve`] for several roots of one graph (a build for
    /// several platforms): each vertex once, the filesystem of each root
    /// in the order given.
    pub fn solve_roots(&self, graph: &BuildGraph, roots: &[Option<&str>]) -> Result<Vec<Fs>> {
        crate::entitlements::check_graph(
            graph,
            &self.options.entitlements,
            self.options.network == kiln_worker::sandbox::spec::Network::Host,
        )?;
        let index_of: HashMap<&str, usize> = graph
            .vertices
            .iter()
            .enumerate()
            .map(|(i, v)| (v.digest.as_str(), i))
            .collect();
        let deps: Vec<Vec<usize>> = graph
            .vertices
            .iter()
            .map(|v| v.op.inputs.iter().map(|d| index_of[d.as_str()]).collect())
            .collect();
        let done = self.run_all(graph, &deps)?;
        Ok(roots
            .iter()
            .map(|root| match root {
                None => Fs::Layers(Vec::new()),
                Some(d) => done[index_of[d]]
                    .as_ref()
                    .map(|(fs, _)| fs.clone())
                    .expect("the root is a solved vertex"),
            })
            .collect())
    }

    /// Runs every vertex once its inputs (`deps`, by index) are done, up to
    /// [`parallelism`] at a time: what each made and the key it passes on.
    fn run_all(
        &self,
        graph: &BuildGraph,
        deps: &[Vec<usize>],
    ) -> Result<Vec<Option<(Fs, String)>>> {
        let mut done: Vec<Option<(Fs, String)>> = vec![None; graph.vertices.len()];
        let mut started = vec![false; graph.vertices.len()];
        let mut running = 0;
        let mut failure: Option<SolveError> = None;
        let limit = parallelism();
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<(Fs, String)>)>();
            loop {
                if failure.is_none() && self.options.cancellation.is_cancelled() {
                    failure = Some(SolveError::Cancelled);
                }
                for index in 0..graph.vertices.len() {
                    if failure.is_some() || running >= limit {
                        break;
                    }
                    if started[index] || !deps[index].iter().all(|d| done[*d].is_some()) {
                        continue;
                    }
                    started[index] = true;
                    running += 1;
                    let inputs: Vec<(Fs, String)> = deps[index]
                        .iter()
                        .map(|d| done[*d].clone().expect("inputs are done"))
                        .collect();
                    let tx = tx.clone();
                    let vertex = &graph.vertices[index];
                    let spawned = std::thread::Builder::new()
                        .stack_size(STEP_STACK)
                        .spawn_scoped(scope, move || {
                            let _ = tx.send((index, self.caught(index, vertex, &inputs)));
                        });
                    if let Err(e) = spawned {
                        running -= 1;
                        failure.get_or_insert(SolveError::Step {
                            description: vertex.meta.description.clone(),
                            reason: format!("starting a thread for the step: {e}"),
                        });
                    }
                }
                if running == 0 {
                    break;
                }
                let Ok((index, result)) = rx.recv() else {
                    break;
                };
                running -= 1;
                match result {
                    Ok(r) => done[index] = Some(r),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
        });
        match failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Solves one vertex; a panicking step fails the build instead of
    /// leaving the loop waiting for its result.
    fn caught(
        &self,
        index: usize,
        vertex: &kiln_frontend::convert::Vertex,
        inputs: &[(Fs, String)],
    ) -> Result<(Fs, String)> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.vertex(index, vertex, inputs)
        }))
        .unwrap_or_else(|panic| {
            Err(SolveError::Step {
                description: vertex.meta.description.clone(),
                reason: format!(
                    "internal error (a bug in kiln): {}",
                    kiln_image::panic_message(&*panic)
                ),
            })
        })
    }

    /// Computes the cache key of one vertex and solves it.
    fn vertex(
        &self,
        index: usize,
        vertex: &kiln_frontend::convert::Vertex,
        inputs: &[(Fs, String)],
    ) -> Result<(Fs, String)> {
        let op_digest = kiln_frontend::convert::op_cache_digest(&vertex.op);
        let step_key = key::StepKey::new(
            &op_digest,
            &vertex.op,
            inputs.iter().map(|(_, key)| key.as_str()).collect(),
            self.context_part(&vertex.op, inputs),
            self.options.source_date_epoch,
            self.options.network,
        );
        let keys = Keys {
            key: step_key.digest(),
            lineage: step_key.lineage(),
        };
        let result = self.run_vertex(index, vertex, inputs, &keys).map_err(|e| {
            if let Some(error) = e.step_reason() {
                self.emit(Event::Failed {
                    vertex: index,
                    error,
                });
            }
            e.of_step(vertex.meta.described())
        })?;
        // What depends on this step is keyed by what it made, not only by
        // what it was asked.
        let key = key::passed_on(keys.key, &vertex.op, &result);
        Ok((result, key))
    }

    fn run_vertex(
        &self,
        index: usize,
        vertex: &kiln_frontend::convert::Vertex,
        inputs: &[(Fs, String)],
        keys: &Keys,
    ) -> Result<Fs> {
        use kiln_proto::ops::v1::op::Kind;
        let key = keys.key.as_str();
        let chain_of = |i: i32| -> Vec<Layer> {
            match usize::try_from(i).ok().and_then(|i| inputs.get(i)) {
                Some((Fs::Layers(l), _)) => l.clone(),
                _ => Vec::new(),
            }
        };
        // Sources and merges do no work worth caching.
        let base = match &vertex.op.kind {
            None => return Err(ops::step_err("an op without a kind")),
            Some(Kind::Source(source)) => return self.source_vertex(index, vertex, source),
            Some(Kind::Merge(_)) => return Ok(merged(inputs)),
            Some(Kind::Exec(e)) => chain_of(e.rootfs),
            Some(Kind::File(f)) => chain_of(f.base),
        };
        let start = Instant::now();
        self.emit(Event::Started {
            vertex: index,
            description: vertex.meta.description.clone(),
        });
        let no_cache = self.options.no_cache
            || vertex
                .meta
                .stage
                .is_some_and(|s| self.options.no_cache_stages.contains(&s));
        let layer = match self.cached_or_claim(key, no_cache)? {
            Lookup::Hit(record) => {
                self.store
                    .meta
                    .touch(&record.blob, kiln_image::image::now())?;
                self.emit(Event::Cached { vertex: index });
                Layer {
                    blob: record.blob,
                    diff_id: record.diff_id,
                    media_type: record.media_type,
                    size: record.size,
                    annotations: record.annotations,
                }
            }
            Lookup::Claimed(claim) => {
                let layer = match &vertex.op.kind {
                    Some(Kind::Exec(exec)) => self.exec(index, vertex, exec, inputs, &base)?,
                    Some(Kind::File(file)) => {
                        let previous = keys
                            .lineage
                            .as_deref()
                            .and_then(|line| self.previous_result(line, &base));
                        self.file(vertex, file, inputs, &base, previous)?
                    }
                    _ => unreachable!("sources and merges returned above"),
                };
                if let Some(line) = &keys.lineage {
                    self.store
                        .meta
                        .put_cache_record(line, &cache_record(&layer))?;
                }
                self.remember(key, &layer)?;
                drop(claim);
                self.emit(Event::Done {
                    vertex: index,
                    seconds: start.elapsed().as_secs_f64(),
                });
                layer
            }
        };
        self.record_step(key, &layer);
        let mut chain = base;
        chain.push(layer);
        Ok(Fs::Layers(chain))
    }

    /// A source: downloads and clones are work to show; images and the
    /// context are not.
    fn source_vertex(
        &self,
        index: usize,
        vertex: &kiln_frontend::convert::Vertex,
        source: &kiln_proto::ops::v1::SourceOp,
    ) -> Result<Fs> {
        use kiln_proto::ops::v1::source_op::Source;
        let platform = vertex.op.platform.as_ref();
        if !matches!(source.source, Some(Source::Http(_) | Source::Git(_))) {
            return self.source(index, source, platform);
        }
        let start = Instant::now();
        self.emit(Event::Started {
            vertex: index,
            description: vertex.meta.description.clone(),
        });
        let fs = self.source(index, source, platform)?;
        self.emit(Event::Done {
            vertex: index,
            seconds: start.elapsed().as_secs_f64(),
        });
        Ok(fs)
    }

    /// The step's cache record, or the right to run it: another build may
    /// be running this very step, so wait for it and look again rather than
    /// run it twice.
    fn cached_or_claim(&self, key: &str, no_cache: bool) -> Result<Lookup<'_>> {
        let lookup = || -> Result<Option<kiln_cache::CacheRecord>> {
            if no_cache {
                return Ok(None);
            }
            Ok(self
                .store
                .meta
                .cache_record(key)?
                .filter(|r| self.store.available(&r.blob)))
        };
        loop {
            if let Some(record) = lookup()? {
                return Ok(Lookup::Hit(record));
            }
            if let Some(claim) = self.options.in_flight.claim(key) {
                return Ok(Lookup::Claimed(claim));
            }
        }
    }

    /// Records the layer a step made under its key (durably: the next
    /// build, or a crash, finds it).
    fn remember(&self, key: &str, layer: &Layer) -> Result<()> {
        self.store
            .meta
            .put_cache_record(key, &cache_record(layer))?;
        self.store.meta.flush()?;
        Ok(())
    }

    /// The snapshot of the latest result of the step line `lineage`
    /// ([`key::StepKey::lineage`]), when it is unpacked and not one of the
    /// layers under this step (those are mounted, and never linked from).
    fn previous_result(&self, lineage: &str, base: &[Layer]) -> Option<PathBuf> {
        let record = self.store.meta.cache_record(lineage).ok()??;
        if base.iter().any(|layer| layer.diff_id == record.diff_id) {
            return None;
        }
        self.snapshots
            .unpacked(&record.diff_id.to_string())
            .ok()
            .flatten()
    }

    fn record_step(&self, key: &str, layer: &Layer) {
        self.steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((key.to_owned(), layer.clone()));
    }

    /// The files from the client a source of that name reads.
    fn local(&self, name: &str) -> Result<&LocalDir> {
        self.locals
            .get(name)
            .ok_or_else(|| ops::step_err(format!("no files from the client are named {name:?}")))
    }

    /// The digest of the files of `local` that `sources` cover (see
    /// `context.rs`).
    fn context_digest(&self, local: &LocalDir, sources: &[String], with_mode: bool) -> String {
        let ask = format!("{sources:?}\0{with_mode}\0{:?}", local.dockerignore);
        self.options.context_digests.get_or(&local.dir, ask, || {
            context::digest(
                &local.dir,
                sources,
                &local.matcher,
                with_mode,
                &*self.store.meta,
            )
        })
    }

    /// The part of the cache key that comes from context files the op reads.
    fn context_part(&self, op: &kiln_proto::ops::v1::Op, inputs: &[(Fs, String)]) -> String {
        use kiln_proto::ops::v1::{file_action::Action, op::Kind};
        let local_of = |i: i32| match usize::try_from(i).ok().and_then(|i| inputs.get(i)) {
            Some((Fs::Context(name), _)) => self.locals.get(name),
            _ => None,
        };
        let mut parts = Vec::new();
        match &op.kind {
            Some(Kind::File(f)) => {
                for action in &f.actions {
                    if let Some(Action::Copy(c)) = &action.action
                        && let Some(local) = local_of(c.input)
                    {
                        parts.push(self.context_digest(local, &c.sources, c.mode.is_none()));
                    }
                }
            }
            Some(Kind::Exec(e)) => {
                for m in &e.mounts {
                    if m.r#type == kiln_proto::ops::v1::MountType::Bind as i32
                        && let Some(local) = local_of(m.input)
                    {
                        let sources = std::slice::from_ref(&m.source);
                        parts.push(self.context_digest(local, sources, true));
                    }
                }
            }
            _ => {}
        }
        parts.join(",")
    }
}
