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
use crate::solve::{Cancellation, Event, InFlight, SolveError};

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
}

impl ControlService {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            in_flight: Arc::default(),
        }
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

/// What the spec asks, as the solver's request.
fn request_of(
    spec: pb::BuildSpec,
    context: PathBuf,
    cancellation: Arc<Cancellation>,
    in_flight: Arc<InFlight>,
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
        in_flight,
    })
}

type BuildStream = ReceiverStream<Result<BuildOutput, Status>>;

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
        let mut tar = tokio::fs::File::create(&tar_path)
            .await
            .map_err(|e| ControlError::Context(e.to_string()))?;
        loop {
            match input.message().await? {
                Some(BuildInput {
                    input: Some(build_input::Input::Context(chunk)),
                }) => {
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
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let store = Arc::clone(&self.store);
        let in_flight = Arc::clone(&self.in_flight);
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
                let context = scratch.path().join("context");
                std::fs::create_dir(&context).map_err(|e| ControlError::Context(e.to_string()))?;
                let file = std::fs::File::open(&tar_path)
                    .map_err(|e| ControlError::Context(e.to_string()))?;
                kiln_worker::layer::unpack(std::io::BufReader::new(file), &context)
                    .map_err(|e| ControlError::Context(e.to_string()))?;
                let request = request_of(spec, context, cancellation, in_flight)?;
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
                let built = build(&store, &worker, &request, &mut progress)?;
                Ok(pb::BuildResult {
                    manifest: built.manifest.to_string(),
                    config: built.config.to_string(),
                    tags: request.tags,
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
            images: rows
                .into_iter()
                .map(|r| pb::ImageSummary {
                    repository: r.repository,
                    tag: r.tag,
                    id: r.id,
                    digest: r.digest,
                    created: r.created,
                    size: r.size,
                })
                .collect(),
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
        let u = self.blocking(|s| Ok(images::usage(s)?)).await?;
        Ok(Response::new(pb::DiskUsageResponse {
            images: u.images,
            unused: u.unused,
            snapshots: u.snapshots,
            cache_mounts: u.cache_mounts,
            metadata: u.metadata,
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
