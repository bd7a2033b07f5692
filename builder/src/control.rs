//! kilnd's side of the control API (`kiln.control.v1`): builds and the
//! image commands over one store, for the `kiln` CLI and CI systems.
//!
//! Builds run on blocking threads (the solver and sandbox are synchronous
//! and never fork from the async runtime); their events stream back as
//! they happen. Every error reaches the client through one conversion,
//! [`ControlError`] → [`tonic::Status`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_cache::Store;
use kiln_proto::control::v1::{
    self as pb, BuildInput, BuildOutput, build_input, build_output, control_server::Control,
};
use kiln_worker::exec::Worker;
use kiln_worker::sandbox::Sandbox;
use thiserror::Error;
use tokio::io::AsyncWriteExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::build::{BuildError, BuildRequest, LayerCompression, build};
use crate::image::ImageError;
use crate::images;
use crate::registry::{self, PullPolicy};
use crate::solve::{Cancellation, ContextDigests, Event, InFlight, SolveError};

/// Errors of the control service; [`Status`] is made from them in one place.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("receiving the build context: {0}")]
    Context(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Self {
        let text = match &e {
            // A failed RUN: the same words `kiln build` prints embedded.
            ControlError::Build(BuildError::Solve(SolveError::ExitCode {
                description,
                code,
                ..
            })) => format!("{description}: did not complete successfully: exit code {code}"),
            other => other.to_string(),
        };
        match e {
            ControlError::Invalid(_) | ControlError::Context(_) => Status::invalid_argument(text),
            ControlError::Image(ImageError::NotFound(_)) => Status::not_found(text),
            ControlError::Build(BuildError::Frontend(_)) => Status::invalid_argument(text),
            ControlError::Build(BuildError::Solve(_)) => Status::aborted(text),
            _ => Status::internal(text),
        }
    }
}

/// The service over one store root.
pub struct ControlService {
    store: Arc<Store>,
    /// Steps running now, shared by all builds: one runs, the others wait.
    in_flight: Arc<InFlight>,
    /// Context digests of session trees, forgotten when a tree changes.
    context_digests: Arc<ContextDigests>,
    /// A lock per context session: one build at a time changes and reads
    /// a session's tree.
    sessions: Arc<std::sync::Mutex<BTreeMap<String, Arc<std::sync::Mutex<()>>>>>,
}

/// The directory of a context session's tree (named by a digest of the
/// client's key, which may be any text).
fn session_dir(store: &Store, session: &str) -> PathBuf {
    let digest = kiln_cache::Digest::of(session.as_bytes());
    store.root().join("sessions").join(&digest.hex()[..32])
}

/// Removes `rel` under `root` — never outside it: every parent must be a
/// real directory (not a link), and `..` is refused.
fn remove_inside(root: &std::path::Path, rel: &str) -> Result<(), ControlError> {
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(ControlError::Invalid(format!("removed path {rel:?}")));
    }
    let mut path = root.to_owned();
    for parent in &parts[..parts.len() - 1] {
        path.push(parent);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            // Gone already with its parent, or not a directory here.
            _ => return Ok(()),
        }
    }
    path.push(parts[parts.len() - 1]);
    let removed = match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
        Ok(_) => std::fs::remove_file(&path),
        Err(_) => Ok(()),
    };
    removed.map_err(|e| ControlError::Context(format!("removing {rel}: {e}")))
}

impl ControlService {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            in_flight: Arc::default(),
            context_digests: Arc::default(),
            sessions: Arc::default(),
        }
    }

    /// Writes a stream's data (what `data` picks from each message; `each`
    /// sees every message) into a file in a scratch directory of the
    /// store, removed with the directory.
    async fn receive<M>(
        &self,
        input: &mut Streaming<M>,
        data: impl Fn(&M) -> &[u8],
        mut each: impl FnMut(&M),
    ) -> Result<(tempfile::TempDir, PathBuf), Status> {
        let io = |e: std::io::Error| Status::from(ControlError::Context(e.to_string()));
        let scratch = tempfile::Builder::new()
            .prefix("upload-")
            .tempdir_in(self.store.root().join("tmp"))
            .map_err(io)?;
        let path = scratch.path().join("data");
        let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
        while let Some(message) = input.message().await? {
            each(&message);
            file.write_all(data(&message)).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok((scratch, path))
    }

    /// Runs `f` with the store on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("a kilnd task failed: {e}")))?
            .map_err(Status::from)
    }
}

// The image commands' data on the wire and back: one mapping each way.
impl From<images::ImageSummary> for pb::ImageSummary {
    fn from(r: images::ImageSummary) -> Self {
        Self {
            repository: r.repository,
            tag: r.tag,
            id: r.id,
            digest: r.digest,
            created: r.created,
            size: r.size,
        }
    }
}

impl From<pb::ImageSummary> for images::ImageSummary {
    fn from(r: pb::ImageSummary) -> Self {
        Self {
            repository: r.repository,
            tag: r.tag,
            id: r.id,
            digest: r.digest,
            created: r.created,
            size: r.size,
        }
    }
}

impl From<images::Usage> for pb::DiskUsageResponse {
    fn from(u: images::Usage) -> Self {
        Self {
            images: u.images,
            unused: u.unused,
            snapshots: u.snapshots,
            cache_mounts: u.cache_mounts,
            metadata: u.metadata,
        }
    }
}

impl From<pb::DiskUsageResponse> for images::Usage {
    fn from(u: pb::DiskUsageResponse) -> Self {
        Self {
            images: u.images,
            unused: u.unused,
            snapshots: u.snapshots,
            cache_mounts: u.cache_mounts,
            metadata: u.metadata,
        }
    }
}

/// The solver's event on the wire.
fn event_message(event: Event) -> pb::Event {
    use pb::event::Kind;
    let mut m = pb::Event::default();
    let (kind, vertex) = match event {
        Event::Started {
            vertex,
            description,
        } => {
            m.text = description;
            (Kind::Started, vertex)
        }
        Event::Cached { vertex } => (Kind::Cached, vertex),
        Event::Log { vertex, line } => {
            m.text = line;
            (Kind::Log, vertex)
        }
        Event::Done { vertex, seconds } => {
            m.seconds = seconds;
            (Kind::Done, vertex)
        }
        Event::Bytes {
            vertex,
            current,
            total,
        } => {
            m.current = current;
            m.total = total.unwrap_or(0);
            (Kind::Bytes, vertex)
        }
        Event::Failed { vertex, error } => {
            m.text = error;
            (Kind::Failed, vertex)
        }
    };
    m.kind = kind as i32;
    m.vertex = u32::try_from(vertex).unwrap_or(u32::MAX);
    m
}

/// The wire event back as the solver's (for the CLI's printer).
pub fn event_from_message(m: &pb::Event) -> Option<Event> {
    use pb::event::Kind;
    let vertex = m.vertex as usize;
    Some(match Kind::try_from(m.kind).ok()? {
        Kind::Started => Event::Started {
            vertex,
            description: m.text.clone(),
        },
        Kind::Cached => Event::Cached { vertex },
        Kind::Log => Event::Log {
            vertex,
            line: m.text.clone(),
        },
        Kind::Done => Event::Done {
            vertex,
            seconds: m.seconds,
        },
        Kind::Bytes => Event::Bytes {
            vertex,
            current: m.current,
            total: (m.total > 0).then_some(m.total),
        },
        Kind::Failed => Event::Failed {
            vertex,
            error: m.text.clone(),
        },
        Kind::Unspecified => return None,
    })
}

/// What builds share in kilnd.
struct ControlShared {
    in_flight: Arc<InFlight>,
    context_digests: Arc<ContextDigests>,
}

/// What the spec asks, as the solver's request.
fn request_of(
    spec: pb::BuildSpec,
    context: PathBuf,
    cancellation: Arc<Cancellation>,
    shared: &ControlShared,
) -> Result<BuildRequest, ControlError> {
    let invalid = ControlError::Invalid;
    let tags = spec
        .tags
        .iter()
        .map(|t| crate::image::normalize(t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut compression = LayerCompression::default();
    for output in &spec.outputs {
        for field in output.split(',') {
            if let Some(v) = field.strip_prefix("compression=") {
                compression = LayerCompression::parse(v)
                    .ok_or_else(|| invalid(format!("--output {output}: unknown compression")))?;
            }
        }
    }
    let pull = if spec.pull.is_empty() {
        PullPolicy::default()
    } else {
        PullPolicy::parse(&spec.pull).ok_or_else(|| invalid(format!("--pull {}", spec.pull)))?
    };
    Ok(BuildRequest {
        dockerfile: spec.dockerfile,
        context,
        dockerignore: spec.dockerignore,
        build_args: spec.build_args.into_iter().collect::<BTreeMap<_, _>>(),
        target: (!spec.target.is_empty()).then_some(spec.target),
        tags,
        no_cache: spec.no_cache,
        no_cache_filter: spec.no_cache_filter,
        source_date_epoch: spec.source_date_epoch,
        network_none: spec.network_none,
        compression,
        pull,
        registry: registry::Options::default(),
        cancellation,
        in_flight: Arc::clone(&shared.in_flight),
        context_digests: Arc::clone(&shared.context_digests),
    })
}

type BuildStream = ReceiverStream<Result<BuildOutput, Status>>;
type SaveStream = ReceiverStream<Result<pb::DataChunk, Status>>;

/// A writer whose bytes go to a stream of chunks (an archive to a client).
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Result<pb::DataChunk, Status>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    const SIZE: usize = 1 << 20;

    fn send(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::SIZE));
        self.tx
            .blocking_send(Ok(pb::DataChunk { data }))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::SIZE {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    type BuildStream = BuildStream;

    async fn build(
        &self,
        request: Request<Streaming<BuildInput>>,
    ) -> Result<Response<BuildStream>, Status> {
        let mut input = request.into_inner();
        let spec = match input.message().await? {
            Some(BuildInput {
                input: Some(build_input::Input::Spec(spec)),
            }) => spec,
            _ => {
                return Err(ControlError::Invalid(
                    "the first message of a build is its spec".into(),
                )
                .into());
            }
        };
        // The context: received into a scratch directory of the store
        // (removed with it), unpacked with the layer unpacker, which
        // refuses paths that leave it.
        let scratch = tempfile::Builder::new()
            .prefix("context-")
            .tempdir_in(self.store.root().join("tmp"))
            .map_err(|e| ControlError::Context(e.to_string()))?;
        let tar_path = scratch.path().join("context.tar");
        let mut context_bytes = 0u64;
        let mut tar = tokio::fs::File::create(&tar_path)
            .await
            .map_err(|e| ControlError::Context(e.to_string()))?;
        loop {
            match input.message().await? {
                Some(BuildInput {
                    input: Some(build_input::Input::Context(chunk)),
                }) => {
                    context_bytes += chunk.data.len() as u64;
                    tar.write_all(&chunk.data)
                        .await
                        .map_err(|e| ControlError::Context(e.to_string()))?;
                    if chunk.eof {
                        break;
                    }
                }
                None => break,
                Some(_) => {
                    return Err(ControlError::Invalid(
                        "after the spec, a build sends only context chunks".into(),
                    )
                    .into());
                }
            }
        }
        tar.flush()
            .await
            .map_err(|e| ControlError::Context(e.to_string()))?;
        drop(tar);
        let secrets = spec.secrets.clone();
        let (cache_from, cache_to) = (spec.cache_from.clone(), spec.cache_to.clone());
        let session = (!spec.session.is_empty()).then(|| {
            let mut sessions = self
                .sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                session_dir(&self.store, &spec.session),
                Arc::clone(sessions.entry(spec.session.clone()).or_default()),
            )
        });
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let store = Arc::clone(&self.store);
        let shared = ControlShared {
            in_flight: Arc::clone(&self.in_flight),
            context_digests: Arc::clone(&self.context_digests),
        };
        // A client that goes away (Ctrl-C, a dropped connection) cancels
        // its build: running steps are killed, no new one starts.
        let cancellation = Arc::new(Cancellation::default());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        {
            let (watch, cancellation) = (tx.clone(), Arc::clone(&cancellation));
            tokio::spawn(async move {
                tokio::select! {
                    () = watch.closed() => {
                        tracing::info!("the client went away: cancelling its build");
                        cancellation.cancel();
                    }
                    _ = done_rx => {}
                }
            });
        }
        tokio::task::spawn_blocking(move || {
            let result = (|| -> Result<pb::BuildResult, ControlError> {
                // A session's tree is changed in place (what was removed or
                // changed goes first, then the new entries); else a fresh
                // directory for this build.
                let _session_lock;
                let context = match &session {
                    Some((dir, lock)) => {
                        _session_lock = lock
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        std::fs::create_dir_all(dir)
                            .map_err(|e| ControlError::Context(e.to_string()))?;
                        for rel in &spec.removed {
                            remove_inside(dir, rel)?;
                        }
                        // An empty tar is its two zero blocks: nothing new.
                        if !spec.removed.is_empty() || context_bytes > 1024 {
                            shared.context_digests.forget(dir);
                        }
                        dir.clone()
                    }
                    None => {
                        let dir = scratch.path().join("context");
                        std::fs::create_dir(&dir)
                            .map_err(|e| ControlError::Context(e.to_string()))?;
                        dir
                    }
                };
                let file = std::fs::File::open(&tar_path)
                    .map_err(|e| ControlError::Context(e.to_string()))?;
                kiln_worker::layer::unpack(std::io::BufReader::new(file), &context)
                    .map_err(|e| ControlError::Context(e.to_string()))?;
                let request = request_of(spec, context, cancellation, &shared)?;
                let mut worker = Worker::new(store.root(), Sandbox::beside_current_exe());
                for (id, value) in secrets {
                    worker = worker.with_secret(&id, value);
                }
                let progress_tx = tx.clone();
                let mut progress = move |event: Event| {
                    let message = BuildOutput {
                        output: Some(build_output::Output::Event(event_message(event))),
                    };
                    let _ = progress_tx.blocking_send(Ok(message));
                };
                let registry_options = request.registry.clone();
                for spec in &cache_from {
                    let (reference, _) = crate::registry::cache::parse_spec("--cache-from", spec)
                        .map_err(ControlError::Invalid)?;
                    // As BuildKit: a cache that cannot be imported is a warning.
                    if let Err(e) =
                        crate::registry::cache::import(&store, &reference, &registry_options)
                    {
                        tracing::warn!("importing cache from {reference}: {e}");
                    }
                }
                let built = build(&store, &worker, &request, &mut progress);
                if session.is_none() {
                    // The scratch context goes with this build.
                    shared.context_digests.forget(&request.context);
                }
                let built = built?;
                for spec in &cache_to {
                    let (reference, mounts) =
                        crate::registry::cache::parse_spec("--cache-to", spec)
                            .map_err(ControlError::Invalid)?;
                    crate::registry::cache::export(
                        &store,
                        &reference,
                        &built.steps,
                        mounts,
                        &registry_options,
                    )?;
                }
                Ok(pb::BuildResult {
                    manifest: built.manifest.to_string(),
                    config: built.config.to_string(),
                    tags: request.tags,
                    context_bytes,
                })
            })();
            let last = result
                .map(|r| BuildOutput {
                    output: Some(build_output::Output::Result(r)),
                })
                .map_err(Status::from);
            let _ = tx.blocking_send(last);
            let _ = done_tx.send(());
            drop(scratch);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_images(
        &self,
        _: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let rows = self.blocking(|s| Ok(images::list(s)?)).await?;
        Ok(Response::new(pb::ListImagesResponse {
            images: rows.into_iter().map(Into::into).collect(),
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let names = request.into_inner().names;
        let all = self
            .blocking(move |s| {
                names
                    .iter()
                    .map(|n| images::inspect(s, n).map_err(ControlError::from))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(Response::new(pb::InspectResponse {
            json: serde_json::to_string_pretty(&all).unwrap_or_default(),
        }))
    }

    async fn tag(
        &self,
        request: Request<pb::TagRequest>,
    ) -> Result<Response<pb::TagResponse>, Status> {
        let r = request.into_inner();
        self.blocking(move |s| Ok(images::tag(s, &r.source, &r.target)?))
            .await?;
        Ok(Response::new(pb::TagResponse {}))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let names = request.into_inner().names;
        let removed = self
            .blocking(move |s| {
                names
                    .iter()
                    .map(|n| images::remove(s, n).map_err(ControlError::from))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(Response::new(pb::RemoveResponse {
            untagged: removed.iter().map(|r| r.untagged.clone()).collect(),
            deleted: removed
                .iter()
                .flat_map(|r| r.deleted.iter().map(ToString::to_string))
                .collect(),
        }))
    }

    async fn prune(
        &self,
        request: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let r = request.into_inner();
        let keep = (r.keep_storage > 0).then_some(r.keep_storage);
        let pruned = self
            .blocking(move |s| Ok(images::prune(s, keep, r.all)?))
            .await?;
        Ok(Response::new(pb::PruneResponse {
            deleted: pruned.deleted.iter().map(ToString::to_string).collect(),
            reclaimed: pruned.reclaimed,
        }))
    }

    async fn disk_usage(
        &self,
        _: Request<pb::DiskUsageRequest>,
    ) -> Result<Response<pb::DiskUsageResponse>, Status> {
        let usage = self.blocking(|s| Ok(images::usage(s)?)).await?;
        Ok(Response::new(usage.into()))
    }

    type SaveStream = SaveStream;
    type ExportStream = SaveStream;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<SaveStream>, Status> {
        let r = request.into_inner();
        let manifest: kiln_cache::Digest = r
            .manifest
            .parse()
            .map_err(|_| ControlError::Invalid(format!("manifest {}", r.manifest)))?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let sent = (|| -> Result<(), ControlError> {
                let scratch = tempfile::Builder::new()
                    .prefix("export-")
                    .tempdir_in(store.root().join("tmp"))
                    .map_err(|e| ControlError::Context(e.to_string()))?;
                let file = scratch.path().join("out");
                let output = match r.kind.as_str() {
                    "docker" => crate::output::Output::Docker(file.clone()),
                    "oci" => crate::output::Output::Oci(file.clone()),
                    "tar" => crate::output::Output::Tar(file.clone()),
                    other => return Err(ControlError::Invalid(format!("output type {other}"))),
                };
                let name = (!r.name.is_empty()).then_some(r.name.as_str());
                crate::output::export(&store, &manifest, name, &output)?;
                let mut out = ChunkSender {
                    tx: tx.clone(),
                    buf: Vec::with_capacity(ChunkSender::SIZE),
                };
                let mut input =
                    std::fs::File::open(&file).map_err(|e| ControlError::Context(e.to_string()))?;
                std::io::copy(&mut input, &mut out)
                    .and_then(|_| std::io::Write::flush(&mut out))
                    .map_err(|e| ControlError::Context(e.to_string()))?;
                Ok(())
            })();
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn save(
        &self,
        request: Request<pb::SaveRequest>,
    ) -> Result<Response<SaveStream>, Status> {
        let r = request.into_inner();
        let format = match r.format.as_str() {
            "" | "docker" => crate::archive::Format::Docker,
            "oci" => crate::archive::Format::Oci,
            other => return Err(ControlError::Invalid(format!("--format {other}")).into()),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkSender {
                tx: tx.clone(),
                buf: Vec::with_capacity(ChunkSender::SIZE),
            };
            let saved = crate::archive::save(&store, &r.names, format, &mut out)
                .map_err(ControlError::from)
                .and_then(|()| {
                    std::io::Write::flush(&mut out)
                        .map_err(|e| ControlError::Invalid(e.to_string()))
                });
            if let Err(e) = saved {
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn load(
        &self,
        request: Request<Streaming<pb::DataChunk>>,
    ) -> Result<Response<pb::LoadResponse>, Status> {
        let mut input = request.into_inner();
        let (scratch, path) = self
            .receive(&mut input, |chunk: &pb::DataChunk| &chunk.data, |_| {})
            .await?;
        let loaded = self
            .blocking(move |s| {
                let loaded = crate::archive::load(s, &path)?;
                drop(scratch);
                Ok(loaded)
            })
            .await?;
        Ok(Response::new(pb::LoadResponse {
            tags: loaded.tags,
            untagged: loaded.untagged.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn import(
        &self,
        request: Request<Streaming<pb::ImportChunk>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let mut input = request.into_inner();
        let mut first: Option<(String, Option<u64>)> = None;
        let (scratch, path) = self
            .receive(
                &mut input,
                |chunk: &pb::ImportChunk| &chunk.data,
                |chunk| {
                    first.get_or_insert((chunk.name.clone(), chunk.created));
                },
            )
            .await?;
        let (name, created) = first.ok_or_else(|| ControlError::Invalid("no image name".into()))?;
        let digest = self
            .blocking(move |s| {
                let created = created.unwrap_or_else(crate::image::now);
                let digest = crate::archive::import(s, &path, &name, created)?;
                drop(scratch);
                Ok(digest)
            })
            .await?;
        Ok(Response::new(pb::ImportResponse {
            digest: digest.to_string(),
        }))
    }

    async fn pull(
        &self,
        request: Request<pb::PullRequest>,
    ) -> Result<Response<pb::PullResponse>, Status> {
        let r = request.into_inner();
        let platform = match r.platform.split_once('/') {
            Some((os, arch)) => Some((os.to_owned(), arch.to_owned())),
            None if r.platform.is_empty() => None,
            None => return Err(ControlError::Invalid(format!("--platform {}", r.platform)).into()),
        };
        let options = registry::Options {
            insecure: r.insecure_registries,
            platform,
            chunk_size: 0,
        };
        let pulled = self
            .blocking(move |s| Ok(registry::pull(s, &r.name, &options)?))
            .await?;
        Ok(Response::new(pb::PullResponse {
            name: pulled.name,
            manifest: pulled.manifest.to_string(),
            fetched: pulled.fetched as u64,
            bytes: pulled.bytes,
        }))
    }

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let r = request.into_inner();
        let options = registry::Options {
            insecure: r.insecure_registries,
            ..registry::Options::default()
        };
        let pushed = self
            .blocking(move |s| Ok(registry::push(s, &r.name, &options)?))
            .await?;
        Ok(Response::new(pb::PushResponse {
            manifest: pushed.manifest.to_string(),
            uploaded: pushed.uploaded as u64,
            mounted: pushed.mounted as u64,
            skipped: pushed.skipped as u64,
        }))
    }

    async fn context_state(
        &self,
        request: Request<pb::ContextStateRequest>,
    ) -> Result<Response<pb::ContextStateResponse>, Status> {
        let session = request.into_inner().session;
        if session.is_empty() {
            return Err(ControlError::Invalid("no session".into()).into());
        }
        let files = self
            .blocking(move |s| {
                let dir = session_dir(s, &session);
                if !dir.is_dir() {
                    return Ok(Vec::new());
                }
                let none = kiln_frontend::dockerignore::Matcher::new(&[])
                    .map_err(|e| ControlError::Context(e.to_string()))?;
                crate::context::entries(&dir, &none)
                    .map_err(|e| ControlError::Context(e.to_string()))
            })
            .await?;
        Ok(Response::new(pb::ContextStateResponse {
            files: files
                .into_iter()
                .map(|e| pb::FileStat {
                    path: e.path,
                    size: e.size,
                    mtime: e.mtime,
                    mode: e.mode,
                })
                .collect(),
        }))
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let (os, arch) = crate::image::host_platform();
        Ok(Response::new(pb::ListWorkersResponse {
            workers: vec![pb::Worker {
                id: "local".into(),
                platform: format!("{os}/{arch}"),
                parallelism: u32::try_from(crate::solve::parallelism()).unwrap_or(u32::MAX),
            }],
        }))
    }
}
