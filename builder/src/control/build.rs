//! Builds through kilnd: the spec and the context (whole, or a session's
//! changes) in, events and the result out; context sessions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_cache::Store;
use kiln_frontend::sandbox::SandboxOptions;
use kiln_proto::control::v1::{self as pb, BuildInput, BuildOutput, build_input, build_output};
use kiln_worker::exec::Worker;
use kiln_worker::sandbox::Sandbox;
use kiln_worker::sandbox::spec::Network;
use tokio::io::AsyncWriteExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::agent_tunnel::{ForwardedAgents, Tunnels};
use super::wire::event_message;
use super::{ControlError, ControlService};
use crate::build::{BuildRequest, LayerCompression, build};
use crate::entitlements::Entitlements;
use crate::registry::{self, PullPolicy};
use crate::solve::{Cancellation, ContextDigests, Event, InFlight};

type BuildMessage = Result<BuildOutput, Status>;
type BuildSender = tokio::sync::mpsc::Sender<BuildMessage>;
pub(super) type BuildStream = ReceiverStream<BuildMessage>;

/// A new context session id: 128 random bits as 32 hex digits. kilnd
/// issues them (`ContextState`); holding one is what lets a client see and
/// reuse the session's tree, so none can be guessed or derived from a
/// client's host and directory.
fn new_session_id() -> Result<String, ControlError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| ControlError::Context(format!("making a session id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `id` has the form of an id kilnd issues.
fn is_session_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The directory of a context session's tree (named by a digest of its
/// id: a listing of the store does not give the ids away).
fn session_dir(store: &Store, session: &str) -> PathBuf {
    let digest = kiln_cache::Digest::of(session.as_bytes());
    store.root().join("sessions").join(&digest.hex()[..32])
}

/// Removes `rel` under `root` — never outside it: every parent must be a
/// real directory (not a link), and `..` is refused.
fn remove_inside(root: &std::path::Path, rel: &str) -> Result<(), ControlError> {
    let parts: Vec<&std::ffi::OsStr> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(std::ffi::OsStr::new)
        .collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "..") {
        return Err(ControlError::Invalid(format!("removed path {rel:?}")));
    }
    // Beneath the session's tree and through no symlink, as it was written.
    kiln_worker::fileop::root::Root::open(root)
        .and_then(|root| root.remove_beneath(&parts))
        .map(drop)
        .map_err(|e| ControlError::Context(format!("removing {rel}: {e}")))
}

/// What builds share in kilnd.
struct ControlShared {
    in_flight: Arc<InFlight>,
    context_digests: Arc<ContextDigests>,
    farm: Arc<crate::farm::Farm>,
}

/// The entitlements the spec asks for, if `allowed` (kilnd's
/// `--allow-insecure-entitlement`) has them all: BuildKit's check, before
/// the build's context is even read. `--network=host` is not taken as an
/// ask here: a client that wants it asks for `network.host` (the `kiln`
/// CLI does), else the solver refuses its steps.
fn granted(allowed: &Entitlements, spec: &pb::BuildSpec) -> Result<Entitlements, ControlError> {
    if spec.network_none && spec.network_host {
        return Err(ControlError::Invalid(
            "network_none and network_host: one build network".into(),
        ));
    }
    let asked = Entitlements::from_flag("BuildSpec.entitlements", &spec.entitlements)?;
    Ok(allowed.grant(&asked)?)
}

/// What the spec asks, as the solver's request (with what it was granted).
fn request_of(
    spec: pb::BuildSpec,
    entitlements: Entitlements,
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
    let compression = LayerCompression::from_outputs(&spec.outputs).map_err(invalid)?;
    let pull = if spec.pull.is_empty() {
        PullPolicy::default()
    } else {
        PullPolicy::parse(&spec.pull).ok_or_else(|| invalid(format!("--pull {}", spec.pull)))?
    };
    // Checked as the CLI checks its flags (the messages name them).
    let sandbox = SandboxOptions::from_flags(&spec.add_hosts, &spec.ulimits, Some(&spec.shm_size))
        .map_err(|e| invalid(e.to_string()))?;
    let mut build_args = spec.build_args.into_iter().collect::<BTreeMap<_, _>>();
    if let Some(epoch) = spec.source_date_epoch {
        build_args
            .entry("SOURCE_DATE_EPOCH".to_owned())
            .or_insert_with(|| epoch.to_string());
    }
    Ok(BuildRequest {
        dockerfile: spec.dockerfile,
        context,
        dockerignore: spec.dockerignore,
        build_args,
        target: (!spec.target.is_empty()).then_some(spec.target),
        tags,
        no_cache: spec.no_cache,
        no_cache_filter: spec.no_cache_filter,
        context_time: spec.context_time,
        network: match (spec.network_none, spec.network_host) {
            (true, _) => Network::None,
            (false, true) => Network::Host,
            (false, false) => Network::Private,
        },
        sandbox,
        entitlements,
        compression,
        pull,
        registry: registry::Options::default(),
        cancellation,
        in_flight: Arc::clone(&shared.in_flight),
        context_digests: Arc::clone(&shared.context_digests),
        farm: Some(shared.farm.clone()),
    })
}

/// A message carrying kilnd's side of an SSH agent tunnel.
fn ssh_output(frame: pb::SshFrame) -> Result<BuildOutput, Status> {
    Ok(BuildOutput {
        output: Some(build_output::Output::Ssh(frame)),
    })
}

/// The agents the client forwards (`BuildSpec.ssh`): sockets in the
/// build's scratch directory (only kilnd enters it), tunnelled over the
/// call; the rest of the client's stream carries its side of them.
fn forward_agents(
    ids: &[String],
    dir: &std::path::Path,
    mut input: Streaming<BuildInput>,
    tx: &BuildSender,
) -> Result<Option<ForwardedAgents>, ControlError> {
    if ids.is_empty() {
        return Ok(None);
    }
    let tunnels = Tunnels::new(tx, ssh_output);
    let agents = ForwardedAgents::listen(ids, dir, &tunnels).map_err(ControlError::Agents)?;
    tokio::spawn(async move {
        while let Ok(Some(message)) = input.message().await {
            match message.input {
                Some(build_input::Input::Ssh(frame)) => tunnels.deliver(frame).await,
                _ => tracing::warn!("after the context, a build's client sends only SSH frames"),
            }
        }
    });
    Ok(Some(agents))
}

impl ControlService {
    pub(super) async fn build_call(
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
        let entitlements = granted(&self.insecure_entitlements, &spec)?;
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
        if !spec.session.is_empty() && !self.known_session(&spec.session) {
            return Err(ControlError::Invalid(format!(
                "context session {:?}: kilnd did not issue it (ask ContextState for one)",
                spec.session
            ))
            .into());
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let agents = forward_agents(&spec.ssh, scratch.path(), input, &tx)?;
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
        let store = Arc::clone(&self.store);
        let shared = ControlShared {
            in_flight: Arc::clone(&self.in_flight),
            context_digests: Arc::clone(&self.context_digests),
            farm: Arc::clone(&self.farm),
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
        // Waits while a prune runs; holds prunes off until the build ends.
        let building = self.collector.using().await;
        let collector = Arc::clone(&self.collector);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // A panic in this build is this client's error; kilnd goes on.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                || -> Result<pb::BuildResult, ControlError> {
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
                    // The client's tar, written beneath the context directory as
                    // layers are (a tree: `.wh.` files are files).
                    kiln_worker::layer::unpack_with(
                        std::io::BufReader::new(file),
                        &context,
                        kiln_worker::layer::Whiteouts::Plain,
                    )
                    .map_err(|e| ControlError::Context(e.to_string()))?;
                    let request = request_of(spec, entitlements, context, cancellation, &shared)?;
                    let mut worker = Worker::new(store.root(), Sandbox::beside_current_exe());
                    for (id, value) in secrets {
                        worker = worker.with_secret(&id, value);
                    }
                    for (id, socket) in agents.iter().flat_map(ForwardedAgents::sockets) {
                        worker = worker.with_ssh_agent(id, socket.clone());
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
                        let (reference, _) =
                            crate::registry::cache::parse_spec("--cache-from", spec)
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
                            mounts.then_some(&built.cache_mounts),
                            &registry_options,
                        )?;
                    }
                    Ok(pb::BuildResult {
                        manifest: built.manifest.to_string(),
                        config: built.config.to_string(),
                        tags: request.tags,
                        context_bytes,
                    })
                },
            ))
            .unwrap_or_else(|panic| Err(ControlError::Panic(super::panic_message(&*panic))));
            let last = result
                .map(|r| BuildOutput {
                    output: Some(build_output::Output::Result(r)),
                })
                .map_err(Status::from);
            let _ = tx.blocking_send(last);
            let _ = done_tx.send(());
            drop(agents);
            drop(scratch);
            drop(building);
            collector.after_build(store, &runtime);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    pub(super) async fn context_state_call(
        &self,
        request: Request<pb::ContextStateRequest>,
    ) -> Result<Response<pb::ContextStateResponse>, Status> {
        let asked = request.into_inner().session;
        let session = if self.known_session(&asked) {
            asked
        } else {
            self.issue_session()?
        };
        let id = session.clone();
        let files = self
            .blocking(move |s| {
                let dir = session_dir(s, &id);
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
            session,
        }))
    }

    /// Whether kilnd issued session `id`: since it started, or before (it
    /// holds the session's tree).
    fn known_session(&self, id: &str) -> bool {
        if !is_session_id(id) {
            return false;
        }
        let issued = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(id);
        issued || session_dir(&self.store, id).is_dir()
    }

    /// A new session, known from now on.
    fn issue_session(&self) -> Result<String, ControlError> {
        let id = new_session_id()?;
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), Arc::default());
        Ok(id)
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;

    #[test]
    fn session_ids_are_random_and_checked() {
        let (a, b) = (new_session_id().unwrap(), new_session_id().unwrap());
        assert_ne!(a, b);
        assert!(is_session_id(&a) && is_session_id(&b));
        for bad in ["", "host:/ctx", "../x", &a.to_uppercase(), &a[..31]] {
            assert!(!is_session_id(bad), "{bad}");
        }
    }
}
