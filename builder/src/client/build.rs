//! A build through kilnd: the request and the context (a session's
//! changes) out, the pipeline's reports back, forwarded SSH agents
//! relayed, then the file outputs fetched.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use kiln_proto::control::v1::{self as pb, BuildInput, build_input, build_output};
use kiln_proto::dockerignore::Matcher;

use super::{Client, ClientError, Result};
use kiln_daemon::chunks::ChunkWriter;
use kiln_daemon::control::{Tunnels, event_from_message, notice_from_message};
use kiln_solver::pipeline::{Report, Request};
use kiln_solver::solve::Event;

/// A message carrying this end of an SSH agent tunnel.
fn ssh_input(frame: pb::SshFrame) -> BuildInput {
    BuildInput {
        input: Some(build_input::Input::Ssh(frame)),
    }
}

/// The last lines of each step, for the error of the one that fails.
#[derive(Default)]
struct Tails {
    lines: HashMap<usize, Vec<String>>,
    failed: Option<usize>,
}

impl Tails {
    fn see(&mut self, event: &Event) {
        match event {
            Event::Log { vertex, line } => {
                let tail = self.lines.entry(*vertex).or_default();
                tail.push(line.clone());
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            Event::Failed { vertex, .. } => self.failed = Some(*vertex),
            _ => {}
        }
    }

    fn of_failed(&mut self) -> Vec<String> {
        let failed = self.failed.and_then(|v| self.lines.remove(&v));
        failed.unwrap_or_default()
    }
}

impl Client {
    /// Builds `request` with the context directory `context` (less what
    /// `request.dockerignore` excludes): sends what kilnd does not hold of
    /// the context yet, reports the build's progress to `on_report`,
    /// relays the SSH agents of `request.ssh`, then writes the file
    /// outputs of `request.files` here. The result names the image.
    pub fn build(
        &mut self,
        request: &Request,
        context: &Path,
        on_report: &mut dyn FnMut(Report),
    ) -> Result<pb::BuildResult> {
        self.import_local_caches(request, on_report);
        let mut spec = pb::BuildSpec::from(request);
        let ignore = Matcher::new(&request.dockerignore)?;
        let (session, removed, send) = self.session_changes(context, &ignore, None)?;
        spec.session = session;
        spec.removed = removed;
        let mut trees = vec![(context.to_owned(), send)];
        trees.extend(self.named_sessions(request, &mut spec)?);
        let (tx, rx) = tokio::sync::mpsc::channel::<BuildInput>(16);
        tx.blocking_send(BuildInput {
            input: Some(build_input::Input::Spec(spec)),
        })
        .map_err(|_| ClientError::Closed)?;
        // The call stays open after the context (forwarded agents' frames
        // go over it) until the result.
        let tunnels = Tunnels::new(&tx, ssh_input);
        let sender = send_trees(trees, tx.clone());
        let mut tails = Tails::default();
        let (runtime, mut client) = self.parts();
        let outcome = runtime.block_on(async {
            let input = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut stream = client.build(input).await?.into_inner();
            while let Some(message) = stream.message().await? {
                if let Some(result) =
                    received(message, &request.ssh, &tunnels, &mut tails, on_report).await
                {
                    return Ok(Some(result));
                }
            }
            Ok::<_, tonic::Status>(None)
        });
        drop(tx);
        let sent = sender.join();
        let result = match outcome {
            Ok(Some(result)) => result,
            Ok(None) => return Err(ClientError::NoResult),
            Err(status) => return Err(failure(status, &mut tails, sent)),
        };
        self.export_local_caches(request, &result, on_report)?;
        for output in &request.files {
            self.export(
                &result.manifest,
                result.tags.first().map(String::as_str),
                output,
            )?;
        }
        Ok(result)
    }

    /// The sessions of the named contexts that send files (directories,
    /// OCI layouts), in the spec's order, filled into it: each directory
    /// and what to send of it.
    fn named_sessions(
        &mut self,
        request: &Request,
        spec: &mut pb::BuildSpec,
    ) -> Result<Vec<(PathBuf, Vec<kiln_solver::context::Entry>)>> {
        use kiln_solver::pipeline::NamedContext;
        use pb::named_context::Source;
        let mut trees = Vec::new();
        for message in &mut spec.named_contexts {
            let (dir, patterns, local) = match (
                request.named_contexts.get(&message.name),
                message.source.as_mut(),
            ) {
                (Some(NamedContext::Dir { path, dockerignore }), Some(Source::Local(local))) => {
                    (path, dockerignore.as_slice(), local)
                }
                (Some(NamedContext::OciLayout { path, .. }), Some(Source::OciLayout(layout))) => {
                    match layout.files.as_mut() {
                        Some(local) => (path, &[][..], local),
                        None => continue,
                    }
                }
                _ => continue,
            };
            let ignore = Matcher::new(patterns)?;
            let role = format!("context:{}", message.name);
            let (session, removed, send) = self.session_changes(dir, &ignore, Some(&role))?;
            local.session = session;
            local.removed = removed;
            trees.push((dir.clone(), send));
        }
        Ok(trees)
    }

    /// The session of one tree (the context, or a named context's
    /// directory, `role` naming which): kilnd keeps the tree from the last
    /// build of this directory on this machine; only what changed goes
    /// over. The session, the paths kilnd removes first, and the entries
    /// to send.
    fn session_changes(
        &mut self,
        context: &Path,
        ignore: &Matcher,
        role: Option<&str>,
    ) -> Result<(String, Vec<String>, Vec<kiln_solver::context::Entry>)> {
        let local = kiln_solver::context::entries(context, ignore).map_err(|source| {
            ClientError::Context {
                path: context.to_owned(),
                source,
            }
        })?;
        let kept = SessionFile::new(&self.addr, context, role);
        let session = kept
            .as_ref()
            .and_then(SessionFile::read)
            .unwrap_or_default();
        let state = self.call(|mut c| async move {
            c.context_state(pb::ContextStateRequest { session }).await
        })?;
        if let Some(kept) = &kept {
            kept.write(&state.session);
        }
        let (send, removed) = changes(&local, &state.files);
        Ok((state.session, removed, send))
    }
}

/// The trees' tars — the context's, then each named context's — made on
/// a thread of their own while they are sent, one after the other, each
/// ended by its `eof` chunk.
fn send_trees(
    trees: Vec<(PathBuf, Vec<kiln_solver::context::Entry>)>,
    tx: tokio::sync::mpsc::Sender<BuildInput>,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || -> std::io::Result<()> {
        for (dir, send) in trees {
            let chunks = kiln_solver::context::write_tar(
                &dir,
                &send,
                ChunkWriter::new(tx.clone(), |data, eof| BuildInput {
                    input: Some(build_input::Input::Context(pb::ContextChunk { data, eof })),
                }),
            )?;
            chunks.finish()?;
        }
        Ok(())
    })
}

/// Handles one message of kilnd's: the result, when it is that.
async fn received(
    message: pb::BuildOutput,
    agents: &std::collections::BTreeMap<String, PathBuf>,
    tunnels: &std::sync::Arc<Tunnels<BuildInput>>,
    tails: &mut Tails,
    on_report: &mut dyn FnMut(Report),
) -> Option<pb::BuildResult> {
    match message.output? {
        build_output::Output::Event(e) => {
            if let Some(event) = event_from_message(&e) {
                tails.see(&event);
                on_report(Report::Step(event));
            }
        }
        build_output::Output::Notice(n) => on_report(Report::Notice(notice_from_message(n))),
        build_output::Output::Result(r) => return Some(r),
        build_output::Output::Ssh(frame) if frame.id.is_empty() => tunnels.deliver(frame).await,
        build_output::Output::Ssh(frame) => {
            let agent = agents.get(&frame.id);
            match agent.map(tokio::net::UnixStream::connect) {
                Some(connecting) => match connecting.await {
                    Ok(stream) => tunnels.attach(frame.conn, stream),
                    Err(e) => {
                        tracing::warn!("SSH agent {:?}: {e}", frame.id);
                        tunnels.refuse(frame.conn).await;
                    }
                },
                None => tunnels.refuse(frame.conn).await,
            }
        }
    }
    None
}

/// Why the build failed: a failed step with its last lines, kilnd's
/// status, or — when kilnd did not hang up on its own — the context that
/// could not be sent.
fn failure(
    status: tonic::Status,
    tails: &mut Tails,
    sent: std::thread::Result<std::io::Result<()>>,
) -> ClientError {
    // kilnd hanging up is what its status explains (a build it refused
    // before reading the context); another failure to send is the cause.
    if let Ok(Err(e)) = sent
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return ClientError::Send(e);
    }
    if status.code() == tonic::Code::Aborted {
        return ClientError::Step {
            message: status.message().to_owned(),
            log_tail: tails.of_failed(),
        };
    }
    ClientError::Status(status)
}

/// Where this user keeps the context session kilnd issued for a context
/// directory (one file per kilnd address and directory, under
/// `$XDG_STATE_HOME/kiln/sessions`, else `~/.local/state/kiln/sessions`;
/// 0700, files 0600): the id is what gives access to kilnd's copy of the
/// context, so it stays this user's. Without a home, every build starts
/// a new session.
struct SessionFile(PathBuf);

impl SessionFile {
    /// The file of `context`'s session; `role` tells a named context's
    /// session (`context:NAME`) from the build context's of the same
    /// directory, so that each tree kilnd keeps is one build's one tree.
    fn new(addr: &str, context: &Path, role: Option<&str>) -> Option<Self> {
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|h| PathBuf::from(h).join(".local/state"))
            })?;
        let dir = context
            .canonicalize()
            .unwrap_or_else(|_| context.to_owned());
        let key = match role {
            None => format!("{addr}\0{}", dir.display()),
            Some(role) => format!("{addr}\0{}\0{role}", dir.display()),
        };
        let digest = kiln_cache::Digest::of(key.as_bytes());
        Some(Self(state.join("kiln/sessions").join(&digest.hex()[..32])))
    }

    fn read(&self) -> Option<String> {
        std::fs::read_to_string(&self.0)
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Keeps `id`; a failure only costs a full context next time.
    fn write(&self, id: &str) {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        if self.read().as_deref() == Some(id) {
            return;
        }
        let written = self.0.parent().map_or(Ok(()), |dir| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
        });
        let written = written.and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&self.0)?
                .write_all(id.as_bytes())
        });
        if let Err(e) = written {
            tracing::debug!("keeping the context session in {}: {e}", self.0.display());
        }
    }
}

/// What to send (new or changed entries, parents first) and what kilnd
/// must remove first (entries gone here, and changed ones), given what it
/// holds. A file modified in the last 2 seconds is always sent: a tar keeps
/// whole seconds, so a change within one would not show.
fn changes(
    local: &[kiln_solver::context::Entry],
    held: &[pb::FileStat],
) -> (Vec<kiln_solver::context::Entry>, Vec<String>) {
    const DIR: u32 = 0o040000;
    let held: HashMap<&str, &pb::FileStat> = held.iter().map(|f| (f.path.as_str(), f)).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let is_dir = |mode: u32| mode & 0o170000 == DIR;
    let mut send = Vec::new();
    let mut removed = Vec::new();
    // A directory sent anew takes everything under it along.
    let mut fresh: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for entry in local {
        // Its parent directories, nearest first: `a/b/c` → `a/b`, `a`.
        let under_fresh = entry
            .path
            .rmatch_indices('/')
            .any(|(i, _)| fresh.contains(&entry.path[..i]));
        let same = held.get(entry.path.as_str()).is_some_and(|h| {
            h.mode == entry.mode
                && (is_dir(entry.mode) || (h.size == entry.size && h.mtime == entry.mtime))
        });
        let racy = !is_dir(entry.mode) && entry.mtime >= now - 2;
        if under_fresh || !same || racy {
            if !under_fresh && held.contains_key(entry.path.as_str()) {
                removed.push(entry.path.clone());
            }
            if is_dir(entry.mode) {
                fresh.insert(entry.path.as_str());
            }
            send.push(entry.clone());
        }
    }
    let here: std::collections::HashSet<&str> = local.iter().map(|e| e.path.as_str()).collect();
    removed.extend(
        held.keys()
            .filter(|p| !here.contains(*p))
            .map(|p| (*p).to_owned()),
    );
    (send, removed)
}
