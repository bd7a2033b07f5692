//! Builds through kilnd: the transport around [`pipeline::run`]. The spec
//! (decoded into the same typed request the CLI makes, with its checks)
//! and the context (whole, or a session's changes) in; the pipeline's
//! events and notices and the result out; context sessions.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_cache::Store;
use kiln_proto::control::v1::{self as pb, BuildInput, BuildOutput, build_input, build_output};
use tokio::io::AsyncWriteExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::agent_tunnel::{ForwardedAgents, Tunnels};
use super::wire::{event_message, notice_message};
use super::{ControlError, ControlService, granted_insecure};
use kiln_solver::pipeline::{self, Env, Report, Request as BuildRequest, Shared};
use kiln_solver::solve::{Cancellation, ContextDigests};

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

/// The build a client asks for, checked as the CLI checks its flags, with
/// what kilnd's operator allows granted: the entitlements of
/// `--allow-insecure-entitlement` (BuildKit's check) and the plain-HTTP
/// registries of `--insecure-registry`, before the build's context is even
/// read. `--network=host` is not taken as an ask here: a client that wants
/// it asks for `network.host` (the `kiln` CLI does), else the solver
/// refuses its steps.
fn checked_request(
    service: &ControlService,
    spec: pb::BuildSpec,
) -> Result<BuildRequest, ControlError> {
    let mut request = BuildRequest::try_from(spec)?;
    request.entitlements = service.insecure_entitlements.grant(&request.entitlements)?;
    request.registry.insecure =
        granted_insecure(&service.insecure_registries, &request.registry.insecure)?;
    Ok(request)
}

/// A pipeline's report as a message of the Build call.
fn report_message(report: Report) -> BuildOutput {
    let output = match report {
        Report::Step(event) => build_output::Output::Event(event_message(event)),
        Report::Notice(notice) => build_output::Output::Notice(notice_message(notice)),
    };
    BuildOutput {
        output: Some(output),
    }
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

/// The first message of a Build call: its spec.
async fn first_spec(input: &mut Streaming<BuildInput>) -> Result<pb::BuildSpec, Status> {
    match input.message().await? {
        Some(BuildInput {
            input: Some(build_input::Input::Spec(spec)),
        }) => Ok(spec),
        _ => Err(ControlError::Invalid("the first message of a build is its spec".into()).into()),
    }
}

/// The context's tar, received into `tar_path` until its last chunk; its
/// size in bytes.
async fn receive_tar(
    input: &mut Streaming<BuildInput>,
    tar_path: &std::path::Path,
) -> Result<u64, Status> {
    let failed = |e: std::io::Error| ControlError::Context(e.to_string());
    let mut bytes = 0u64;
    let mut tar = tokio::fs::File::create(tar_path).await.map_err(failed)?;
    loop {
        match input.message().await? {
            Some(BuildInput {
                input: Some(build_input::Input::Context(chunk)),
            }) => {
                bytes += chunk.data.len() as u64;
                tar.write_all(&chunk.data).await.map_err(failed)?;
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
    tar.flush().await.map_err(failed)?;
    Ok(bytes)
}

/// One tree of files a build's client sent — the context, or a named
/// context's directory — as received: the tar, and the session it changes.
struct Tree {
    /// `None`: the build context; else the named context's name.
    name: Option<String>,
    tar_path: PathBuf,
    bytes: u64,
    /// The session's tree and its lock; `None`: a fresh directory.
    session: Option<(PathBuf, Arc<std::sync::Mutex<()>>)>,
    /// The session's paths to remove first.
    removed: Vec<String>,
    /// Where a tree of no session goes.
    fresh: PathBuf,
}

/// A build's trees as received, in the scratch directory they go with.
struct Received {
    trees: Vec<Tree>,
    /// Holds the tars and the fresh trees; removed with them.
    _scratch: tempfile::TempDir,
}

/// A session a tree is sent in (`BuildSpec.session`, or a named
/// context's `LocalContext.session`), with its paths to remove first.
struct TreeSession {
    name: Option<String>,
    session: String,
    removed: Vec<String>,
}

/// The trees a spec says follow its context, in order: the build
/// context's, then each named context's that sends files.
fn tree_sessions(spec: &pb::BuildSpec) -> Vec<TreeSession> {
    use pb::named_context::Source;
    let mut trees = vec![TreeSession {
        name: None,
        session: spec.session.clone(),
        removed: spec.removed.clone(),
    }];
    for named in &spec.named_contexts {
        let local = match &named.source {
            Some(Source::Local(local)) => Some(local),
            Some(Source::OciLayout(layout)) => layout.files.as_ref(),
            _ => None,
        };
        let Some(local) = local else {
            // An OCI layout without its files: the request's decoding says.
            continue;
        };
        trees.push(TreeSession {
            name: Some(named.name.clone()),
            session: local.session.clone(),
            removed: local.removed.clone(),
        });
    }
    trees
}

impl Tree {
    /// Writes the tree into its directory: a session's tree is changed in
    /// place (what was removed or changed goes first, then the new
    /// entries) — the caller holds the session's lock; else a fresh
    /// directory of the scratch one.
    fn unpack(&self, digests: &ContextDigests) -> Result<PathBuf, ControlError> {
        let failed = |e: std::io::Error| ControlError::Context(e.to_string());
        let context = match &self.session {
            Some((dir, _)) => {
                std::fs::create_dir_all(dir).map_err(failed)?;
                for rel in &self.removed {
                    remove_inside(dir, rel)?;
                }
                // An empty tar is its two zero blocks: nothing new.
                if !self.removed.is_empty() || self.bytes > 1024 {
                    digests.forget(dir);
                }
                dir.clone()
            }
            None => {
                std::fs::create_dir(&self.fresh).map_err(failed)?;
                self.fresh.clone()
            }
        };
        let file = std::fs::File::open(&self.tar_path).map_err(failed)?;
        // The client's tar, written beneath the context directory as
        // layers are (a tree: `.wh.` files are files).
        kiln_worker::layer::unpack_with(
            std::io::BufReader::new(file),
            &context,
            kiln_worker::layer::Whiteouts::Plain,
        )
        .map_err(|e| ControlError::Context(e.to_string()))?;
        Ok(context)
    }
}

impl Received {
    /// Writes every tree into its directory, holding the locks of their
    /// sessions (taken in the order of their directories, so that two
    /// builds never wait on each other) while the build runs: the build
    /// context's directory, and each named context's set in `request`.
    fn unpack(
        &self,
        digests: &ContextDigests,
        request: &mut BuildRequest,
    ) -> Result<(PathBuf, Vec<std::sync::MutexGuard<'_, ()>>), ControlError> {
        let mut locks: Vec<&(PathBuf, Arc<std::sync::Mutex<()>>)> = self
            .trees
            .iter()
            .filter_map(|t| t.session.as_ref())
            .collect();
        locks.sort_by(|a, b| a.0.cmp(&b.0));
        let guards = locks
            .into_iter()
            .map(|(_, lock)| {
                lock.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            })
            .collect();
        let mut context = None;
        for tree in &self.trees {
            let dir = tree.unpack(digests)?;
            match &tree.name {
                None => context = Some(dir),
                Some(name) => set_named_dir(request, name, dir)?,
            }
        }
        let context = context.ok_or_else(|| ControlError::Invalid("no build context".into()))?;
        Ok((context, guards))
    }

    /// The trees' fresh directories, which go with this build.
    fn fresh_dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.trees
            .iter()
            .filter(|t| t.session.is_none())
            .map(|t| &t.fresh)
    }

    /// Bytes received for every tree.
    fn bytes(&self) -> u64 {
        self.trees.iter().map(|t| t.bytes).sum()
    }
}

/// A named context's files arrived in `dir`: its directory from now on.
fn set_named_dir(request: &mut BuildRequest, name: &str, dir: PathBuf) -> Result<(), ControlError> {
    use kiln_solver::pipeline::NamedContext;
    match request.named_contexts.get_mut(name) {
        Some(NamedContext::Dir { path, .. } | NamedContext::OciLayout { path, .. }) => {
            *path = dir;
            Ok(())
        }
        _ => Err(ControlError::Invalid(format!(
            "files sent for the named context {name:?}, which takes none"
        ))),
    }
}

/// One build on a blocking thread: its trees unpacked, the pipeline run.
fn run_build(
    mut request: BuildRequest,
    received: &Received,
    store: &Store,
    shared: Shared,
    cancellation: Arc<Cancellation>,
    tx: &BuildSender,
) -> Result<pb::BuildResult, ControlError> {
    let (context, _session_locks) = received.unpack(&shared.context_digests, &mut request)?;
    let request = &request;
    let digests = Arc::clone(&shared.context_digests);
    let env = Env {
        store,
        context: context.clone(),
        shared,
        cancellation,
        // The client's: it fetches them with Export.
        write_files: false,
    };
    let progress_tx = tx.clone();
    let mut report = move |report: Report| {
        let _ = progress_tx.blocking_send(Ok(report_message(report)));
    };
    let built = pipeline::run(request, &env, &mut report);
    // The scratch trees go with this build.
    for dir in received.fresh_dirs() {
        digests.forget(dir);
    }
    let built = built?;
    let build_ref = pipeline::metadata::new_build_ref("kilnd")
        .map_err(|e| ControlError::Invalid(format!("making a build ref: {e}")))?;
    let metadata = pipeline::Metadata::of(store, &built, &request.tags, build_ref)?;
    Ok(pb::BuildResult {
        // What the client's file outputs are made from (Export).
        manifest: built.leaving().to_string(),
        config: built.id.to_string(),
        tags: request.tags.clone(),
        context_bytes: received.bytes(),
        metadata: Some(pb::BuildMetadata {
            build_ref: metadata.build_ref,
            media_type: metadata.media_type,
            size: metadata.size,
            created: metadata.created.unwrap_or_default(),
            config: metadata
                .config
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }),
        local_caches: built
            .local_caches
            .iter()
            .map(|c| c.as_ref().map(ToString::to_string).unwrap_or_default())
            .collect(),
    })
}

/// A client that goes away (Ctrl-C, a dropped connection) cancels its
/// build: running steps are killed, no new one starts. Send on the
/// returned sender when the build is over.
fn cancel_when_gone(tx: &BuildSender) -> (Arc<Cancellation>, tokio::sync::oneshot::Sender<()>) {
    let cancellation = Arc::new(Cancellation::default());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (watch, cancelling) = (tx.clone(), Arc::clone(&cancellation));
    tokio::spawn(async move {
        tokio::select! {
            () = watch.closed() => {
                tracing::info!("the client went away: cancelling its build");
                cancelling.cancel();
            }
            _ = done_rx => {}
        }
    });
    (cancellation, done_tx)
}

impl ControlService {
    pub(super) async fn build_call(
        &self,
        request: Request<Streaming<BuildInput>>,
    ) -> Result<Response<BuildStream>, Status> {
        let mut input = request.into_inner();
        let spec = first_spec(&mut input).await?;
        let sessions = tree_sessions(&spec);
        let mut request = checked_request(self, spec)?;
        // The context: received into a scratch directory of the store
        // (removed with it), unpacked with the layer unpacker, which
        // refuses paths that leave it.
        let scratch = tempfile::Builder::new()
            .prefix("context-")
            .tempdir_in(self.store.root().join("tmp"))
            .map_err(|e| ControlError::Context(e.to_string()))?;
        let mut trees = Vec::with_capacity(sessions.len());
        let mut seen = std::collections::BTreeSet::new();
        for (i, tree) in sessions.into_iter().enumerate() {
            let tar_path = scratch.path().join(format!("tree-{i}.tar"));
            let bytes = receive_tar(&mut input, &tar_path).await?;
            let id = tree.session;
            if !id.is_empty() && !self.known_session(&id) {
                return Err(ControlError::Invalid(format!(
                    "context session {id:?}: kilnd did not issue it (ask ContextState for one)"
                ))
                .into());
            }
            // One tree per session: two would write one directory.
            if !id.is_empty() && !seen.insert(id.clone()) {
                return Err(ControlError::Invalid(format!(
                    "context session {id:?} is given for two trees of one build"
                ))
                .into());
            }
            trees.push(Tree {
                name: tree.name,
                tar_path,
                bytes,
                session: (!id.is_empty()).then(|| self.session(&id)),
                removed: tree.removed,
                fresh: scratch.path().join(format!("tree-{i}")),
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let ids: Vec<String> = request.ssh.keys().cloned().collect();
        let agents = forward_agents(&ids, scratch.path(), input, &tx)?;
        // kilnd's relays stand for the client's agents.
        for (id, socket) in agents.iter().flat_map(ForwardedAgents::sockets) {
            request.ssh.insert(id.clone(), socket.clone());
        }
        let received = Received {
            trees,
            _scratch: scratch,
        };
        let store = Arc::clone(&self.store);
        let shared = Shared {
            in_flight: Arc::clone(&self.in_flight),
            context_digests: Arc::clone(&self.context_digests),
            farm: Some(self.farm.clone()),
        };
        let (cancellation, done_tx) = cancel_when_gone(&tx);
        // Waits while a prune runs; holds prunes off until the build ends.
        let building = self.collector.using().await;
        let collector = Arc::clone(&self.collector);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // A panic in this build is this client's error; kilnd goes on.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_build(request, &received, &store, shared, cancellation, &tx)
            }))
            .unwrap_or_else(|panic| Err(ControlError::Panic(kiln_image::panic_message(&*panic))));
            let last = result
                .map(|r| BuildOutput {
                    output: Some(build_output::Output::Result(r)),
                })
                .map_err(Status::from);
            let _ = tx.blocking_send(last);
            let _ = done_tx.send(());
            drop(agents);
            drop(received);
            drop(building);
            collector.after_build(store, &runtime);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    /// A session's tree and the lock builds of it take.
    fn session(&self, id: &str) -> (PathBuf, Arc<std::sync::Mutex<()>>) {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (
            session_dir(&self.store, id),
            Arc::clone(sessions.entry(id.to_owned()).or_default()),
        )
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
                let none = kiln_proto::dockerignore::Matcher::new(&[])
                    .map_err(|e| ControlError::Context(e.to_string()))?;
                kiln_solver::context::entries(&dir, &none)
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
