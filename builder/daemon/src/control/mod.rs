//! kilnd's side of the control API (`kiln.control.v1`): builds and the
//! image commands over one store, for the `kiln` CLI and CI systems.
//!
//! Builds run on blocking threads (the solver and sandbox are synchronous
//! and never fork from the async runtime); their events stream back as
//! they happen. Every error reaches the client through one conversion,
//! [`ControlError`] → [`tonic::Status`].
//!
//! Here: the service, its errors, the image commands. `build` has builds
//! and context sessions, `agent_tunnel` the SSH agents a client forwards
//! over its build, `gc` what keeps collection away from running builds,
//! `transfer` the streamed archives and files, `wire` the mapping between
//! the API's messages and kiln's types.

mod agent_tunnel;
mod build;
mod client;
mod gc;
mod transfer;
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_cache::Store;
use kiln_proto::control::v1::{self as pb, BuildInput, control_server::Control};
use thiserror::Error;
use tokio::io::AsyncWriteExt as _;
use tonic::{Request, Response, Status, Streaming};

use kiln_image::image::ImageError;
use kiln_image::images;
use kiln_registry::{InsecureError, InsecureRegistries};
use kiln_solver::build::BuildError;
use kiln_solver::entitlements::{EntitlementError, Entitlements};
use kiln_solver::pipeline::request::check_count;
use kiln_solver::pipeline::{PipelineError, RequestError};
use kiln_solver::solve::{ContextDigests, InFlight, SolveError};

pub use agent_tunnel::Tunnels;
use build::BuildStream;
pub use client::{ConnectError, channel, client_tls};
pub use gc::Collector;
use transfer::SaveStream;
pub use wire::{event_from_message, notice_from_message, summary_of, usage_of};

/// Errors of the control service; [`Status`] is made from them in one place.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A build request that fails the CLI's checks.
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("receiving the build context: {0}")]
    Context(String),
    #[error(transparent)]
    Registry(#[from] kiln_registry::RegistryError),
    #[error("forwarding SSH agents: {0}")]
    Agents(std::io::Error),
    #[error("{0}")]
    Unauthenticated(String),
    #[error(transparent)]
    Entitlement(#[from] EntitlementError),
    /// A client's `--insecure-registry` outside kilnd's.
    #[error(transparent)]
    InsecureRegistry(#[from] InsecureError),
    /// A bug met by one request: reported to its client, kilnd goes on.
    #[error("internal error (a bug in kilnd; other requests are unaffected): {0}")]
    Panic(String),
}

impl From<PipelineError> for ControlError {
    /// Each kind keeps the status it had when kilnd ran its steps itself.
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Request(e) => Self::Request(e),
            PipelineError::Build(e) => Self::Build(e),
            PipelineError::Output(e) => Self::Image(e),
            PipelineError::Registry(e) => Self::Registry(e),
            // The client's layout, as kilnd received it: the client's to fix.
            e @ PipelineError::Layout { .. } => Self::Invalid(e.to_string()),
        }
    }
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
            ControlError::Request(RequestError::Entitlement(EntitlementError::Unknown {
                ..
            })) => Status::invalid_argument(text),
            ControlError::Request(RequestError::Entitlement(_)) => Status::permission_denied(text),
            ControlError::Request(_) => Status::invalid_argument(text),
            ControlError::Unauthenticated(_) => Status::unauthenticated(text),
            ControlError::Entitlement(EntitlementError::Unknown { .. }) => {
                Status::invalid_argument(text)
            }
            ControlError::Entitlement(_)
            | ControlError::InsecureRegistry(InsecureError::NotAllowedByDaemon(_))
            | ControlError::Build(BuildError::Solve(SolveError::Entitlement(_))) => {
                Status::permission_denied(text)
            }
            ControlError::InsecureRegistry(InsecureError::Malformed { .. }) => {
                Status::invalid_argument(text)
            }
            ControlError::Image(ImageError::NotFound(_)) => Status::not_found(text),
            ControlError::Build(BuildError::Frontend(_) | BuildError::Check(_)) => {
                Status::invalid_argument(text)
            }
            // Its client went away: what gRPC calls a cancelled call.
            ControlError::Build(BuildError::Solve(SolveError::Cancelled)) => {
                Status::cancelled(text)
            }
            ControlError::Build(BuildError::Solve(_)) => Status::aborted(text),
            _ => Status::internal(text),
        }
    }
}

/// The hosts a client asks kilnd to speak plain HTTP to — a build's, a
/// pull's or a push's `--insecure-registry` — as granted by kilnd's own
/// `--insecure-registry` (`allowed`): kilnd speaks to registries with its
/// credentials, so plain HTTP is its operator's decision. The one check of
/// the Build, Pull and Push calls, made before anything is fetched.
pub(crate) fn granted_insecure(
    allowed: &InsecureRegistries,
    asked: &[String],
) -> Result<Vec<String>, ControlError> {
    check_count("--insecure-registry", asked.len())?;
    Ok(allowed.grant(asked)?)
}

/// The service over one store root.
pub struct ControlService {
    store: Arc<Store>,
    /// Steps running now, shared by all builds: one runs, the others wait.
    in_flight: Arc<InFlight>,
    /// Context digests of session trees, forgotten when a tree changes.
    context_digests: Arc<ContextDigests>,
    /// Attached workers, which RUN steps go to.
    farm: Arc<crate::farm::Farm>,
    /// A lock per context session: one build at a time changes and reads
    /// a session's tree.
    sessions: Arc<std::sync::Mutex<BTreeMap<String, Arc<std::sync::Mutex<()>>>>>,
    /// Builds against collection (`prune`, `rmi`, `--keep-storage`).
    collector: Arc<Collector>,
    /// The most a build is granted (`--allow-insecure-entitlement`).
    insecure_entitlements: Entitlements,
    /// The registries a client may have spoken to over plain HTTP
    /// (`--insecure-registry`).
    insecure_registries: InsecureRegistries,
}

impl ControlService {
    pub fn new(store: Arc<Store>, farm: Arc<crate::farm::Farm>, collector: Collector) -> Self {
        Self {
            store,
            in_flight: Arc::default(),
            context_digests: Arc::default(),
            farm,
            sessions: Arc::default(),
            collector: Arc::new(collector),
            insecure_entitlements: Entitlements::default(),
            insecure_registries: InsecureRegistries::default(),
        }
    }

    /// Entitlements this service may grant builds that ask for them
    /// (kilnd's `--allow-insecure-entitlement`); none by default.
    #[must_use]
    pub fn with_insecure_entitlements(mut self, allowed: Entitlements) -> Self {
        self.insecure_entitlements = allowed;
        self
    }

    /// Registries this service lets clients that ask have spoken to over
    /// plain HTTP (kilnd's `--insecure-registry`); none by default.
    #[must_use]
    pub fn with_insecure_registries(mut self, allowed: InsecureRegistries) -> Self {
        self.insecure_registries = allowed;
        self
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
            .map_err(|e| match e.try_into_panic() {
                Ok(panic) => Status::from(ControlError::Panic(kiln_image::panic_message(&*panic))),
                Err(e) => Status::internal(format!("a kilnd task failed: {e}")),
            })?
            .map_err(Status::from)
    }

    /// [`Self::blocking`] with collection held off: for calls that write
    /// blobs before their tag or read an image's.
    async fn blocking_using<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, Status> {
        let using = self.collector.using().await;
        self.blocking(move |s| {
            let _using = using;
            f(s)
        })
        .await
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    type BuildStream = BuildStream;

    async fn build(
        &self,
        request: Request<Streaming<BuildInput>>,
    ) -> Result<Response<BuildStream>, Status> {
        self.build_call(request).await
    }

    async fn list_images(
        &self,
        _: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let rows = self.blocking(|s| Ok(images::list(s)?)).await?;
        Ok(Response::new(pb::ListImagesResponse {
            images: rows.into_iter().map(wire::summary_message).collect(),
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let r = request.into_inner();
        let platform = match r.platform.as_str() {
            "" => None,
            p => Some(
                kiln_frontend::platform::parse(p)
                    .map_err(|e| ControlError::Invalid(format!("--platform {p}: {e}")))?,
            ),
        };
        let names = r.names;
        let all = self
            .blocking(move |s| {
                names
                    .iter()
                    .map(|n| images::inspect(s, n, platform.as_ref()).map_err(ControlError::from))
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
        // While builds run, their layers may be the image's: the blobs
        // stay for the next collection.
        let exclusive = self.collector.try_exclusive();
        let removed = self
            .blocking(move |s| {
                let remove = if exclusive.is_some() {
                    images::remove
                } else {
                    images::untag
                };
                names
                    .iter()
                    .map(|n| remove(s, n).map_err(ControlError::from))
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
        // Held by the task, not this call: a client that goes away does
        // not let builds start under a running prune.
        let exclusive = self.collector.exclusive().await;
        let pruned = self
            .blocking(move |s| {
                let _exclusive = exclusive;
                Ok(images::prune(s, keep, r.all)?)
            })
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
        Ok(Response::new(wire::usage_message(usage)))
    }

    type SaveStream = SaveStream;
    type ExportStream = SaveStream;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<SaveStream>, Status> {
        self.export_call(request).await
    }

    async fn import_cache(
        &self,
        request: Request<Streaming<pb::DataChunk>>,
    ) -> Result<Response<pb::ImportCacheResponse>, Status> {
        self.import_cache_call(request).await
    }

    async fn save(
        &self,
        request: Request<pb::SaveRequest>,
    ) -> Result<Response<SaveStream>, Status> {
        self.save_call(request).await
    }

    async fn load(
        &self,
        request: Request<Streaming<pb::DataChunk>>,
    ) -> Result<Response<pb::LoadResponse>, Status> {
        self.load_call(request).await
    }

    async fn import(
        &self,
        request: Request<Streaming<pb::ImportChunk>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        self.import_call(request).await
    }

    async fn pull(
        &self,
        request: Request<pb::PullRequest>,
    ) -> Result<Response<pb::PullResponse>, Status> {
        let r = request.into_inner();
        let wanted = kiln_registry::Platforms::parse(&r.platform, r.all_platforms, None)
            .map_err(ControlError::Invalid)?;
        let options = kiln_registry::Options {
            insecure: granted_insecure(&self.insecure_registries, &r.insecure_registries)?,
            ..kiln_registry::Options::default()
        };
        let pulled = self
            .blocking_using(move |s| {
                Ok(kiln_registry::pull_platforms(
                    s, &r.name, &options, &wanted,
                )?)
            })
            .await?;
        Ok(Response::new(pb::PullResponse {
            name: pulled.name,
            manifest: pulled.manifest.to_string(),
            fetched: pulled.fetched as u64,
            bytes: pulled.bytes,
            platforms: pulled.platforms,
        }))
    }

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let r = request.into_inner();
        let options = kiln_registry::Options {
            insecure: granted_insecure(&self.insecure_registries, &r.insecure_registries)?,
            ..kiln_registry::Options::default()
        };
        let pushed = self
            .blocking_using(move |s| Ok(kiln_registry::push(s, &r.name, &options)?))
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
        self.context_state_call(request).await
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let local = local_worker();
        let attached = self.farm.workers().into_iter().map(|w| pb::Worker {
            id: w.id,
            platform: w.platform,
            parallelism: u32::try_from(w.parallelism).unwrap_or(u32::MAX),
            running: u32::try_from(w.running).unwrap_or(u32::MAX),
            steps_run: w.steps_run,
            draining: w.draining,
            emulated: w.emulated,
        });
        Ok(Response::new(pb::ListWorkersResponse {
            workers: std::iter::once(local).chain(attached).collect(),
        }))
    }
}

/// This machine as a worker (`kiln workers`' "local"): steps that no farm
/// worker takes run here, natively or under emulation.
pub fn local_worker() -> pb::Worker {
    let host = kiln_image::image::host_platform();
    pb::Worker {
        id: "local".into(),
        platform: kiln_frontend::platform::format(&host),
        parallelism: u32::try_from(kiln_solver::solve::parallelism()).unwrap_or(u32::MAX),
        running: 0,
        steps_run: 0,
        emulated: kiln_worker::platforms::Platforms::detect().emulated_platforms(),
        draining: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize, host: &str) -> Vec<String> {
        vec![host.to_owned(); n]
    }

    /// A host outside kilnd's list: PERMISSION_DENIED, as an entitlement
    /// kilnd does not allow, naming the host and the flag that allows it.
    #[test]
    fn a_clients_insecure_host_outside_kilnds_is_denied() {
        let allowed =
            InsecureRegistries::from_flag("--insecure-registry", &["registry.lan:5000"]).unwrap();
        assert_eq!(
            granted_insecure(&allowed, &hosts(2, "registry.lan:5000")).unwrap(),
            hosts(2, "registry.lan:5000")
        );
        assert!(granted_insecure(&InsecureRegistries::default(), &[]).is_ok());
        let status = Status::from(granted_insecure(&allowed, &hosts(1, "evil.lan")).unwrap_err());
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status
                .message()
                .contains("registry evil.lan is not allowed")
                && status
                    .message()
                    .contains("kilnd --insecure-registry evil.lan"),
            "{}",
            status.message()
        );
    }

    /// Too many hosts: INVALID_ARGUMENT, as the CLI's flags.
    #[test]
    fn a_clients_insecure_hosts_are_bounded() {
        let allowed = InsecureRegistries::from_flag("--insecure-registry", &["r.lan"]).unwrap();
        let max = kiln_solver::pipeline::request::MAX_LIST_ENTRIES;
        assert!(granted_insecure(&allowed, &hosts(max, "r.lan")).is_ok());
        let status =
            Status::from(granted_insecure(&allowed, &hosts(max + 1, "r.lan")).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("--insecure-registry: "),
            "{}",
            status.message()
        );
    }
}
