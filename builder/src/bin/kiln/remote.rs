//! The CLI as kilnd's client: `--addr` / `KILN_ADDR`, or a kilnd listening
//! at the default socket. Output and exit codes are those of the embedded
//! commands.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use kiln_builder::control::{ChunkWriter, Tunnels, event_from_message};
use kiln_frontend::dockerignore::Matcher;
use kiln_proto::control::v1::{
    self as pb, BuildInput, build_input, build_output, control_client::ControlClient,
};
use tonic::transport::Channel;

use crate::progress::Printer;

/// Where kilnd listens unless told otherwise.
pub(crate) const DEFAULT_SOCKET: &str = "/run/kiln/kilnd.sock";

/// A connection to kilnd, with the runtime its calls run on.
pub(crate) struct Remote {
    runtime: tokio::runtime::Runtime,
    client: ControlClient<Channel>,
    /// kilnd's address as given (what context sessions are kept under).
    addr: String,
}

/// Mutual TLS for `tcp://` addresses: the CA kilnd's certificate is signed
/// by, and this client's certificate and key (PEM files; `KILN_TLS_CA`,
/// `KILN_TLS_CERT`, `KILN_TLS_KEY`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Tls {
    #[arg(
        long = "tls-ca",
        global = true,
        env = "KILN_TLS_CA",
        value_name = "PEM"
    )]
    ca: Option<std::path::PathBuf>,
    #[arg(
        long = "tls-cert",
        global = true,
        env = "KILN_TLS_CERT",
        value_name = "PEM"
    )]
    cert: Option<std::path::PathBuf>,
    #[arg(
        long = "tls-key",
        global = true,
        env = "KILN_TLS_KEY",
        value_name = "PEM"
    )]
    key: Option<std::path::PathBuf>,
}

impl Tls {
    fn config(&self) -> Result<Option<tonic::transport::ClientTlsConfig>> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        Ok(Some(kiln_builder::control::client_tls(ca, identity)?))
    }
}

/// The kilnd to talk to: `addr` when given; else the default socket when a
/// kilnd answers there; else none (the CLI runs embedded).
pub(crate) fn connect(addr: Option<&str>, tls: &Tls) -> Result<Option<Remote>> {
    // An empty `KILN_ADDR=` is unset, as an empty DOCKER_HOST is.
    let addr = match addr.filter(|a| !a.is_empty()) {
        Some(a) => a.to_owned(),
        None if std::os::unix::net::UnixStream::connect(DEFAULT_SOCKET).is_ok() => {
            format!("unix://{DEFAULT_SOCKET}")
        }
        None => return Ok(None),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tls = tls.config()?;
    let channel = runtime
        .block_on(kiln_builder::control::channel(&addr, tls))
        .with_context(|| format!("connecting to kilnd at {addr}"))?;
    Ok(Some(Remote {
        runtime,
        client: ControlClient::new(channel).max_decoding_message_size(64 << 20),
        addr,
    }))
}

/// A message carrying this end of an SSH agent tunnel.
fn ssh_input(frame: pb::SshFrame) -> BuildInput {
    BuildInput {
        input: Some(build_input::Input::Ssh(frame)),
    }
}

/// A failed call as the embedded command would say it.
fn failed(status: tonic::Status) -> anyhow::Error {
    anyhow::Error::msg(status.message().to_owned())
}

impl Remote {
    /// Sends the spec and the context, shows the events, relays the
    /// connections of forwarded SSH `agents` (by id), returns the result.
    pub(crate) fn build(
        &mut self,
        mut spec: pb::BuildSpec,
        context: &Path,
        ignore: &Matcher,
        agents: &BTreeMap<String, PathBuf>,
        printer: &mut Printer,
    ) -> Result<pb::BuildResult> {
        // The context session: kilnd keeps the tree from the last build of
        // this directory on this machine; only what changed goes over.
        let local = kiln_builder::context::entries(context, ignore)
            .with_context(|| format!("reading the build context {}", context.display()))?;
        let kept = SessionFile::new(&self.addr, context);
        let client = &mut self.client;
        let state = self
            .runtime
            .block_on(
                client.context_state(pb::ContextStateRequest {
                    session: kept
                        .as_ref()
                        .and_then(SessionFile::read)
                        .unwrap_or_default(),
                }),
            )
            .map_err(failed)?
            .into_inner();
        if let Some(kept) = &kept {
            kept.write(&state.session);
        }
        spec.session = state.session;
        let held = state.files;
        let (send, removed) = changes(&local, &held);
        spec.removed = removed;
        let (tx, rx) = tokio::sync::mpsc::channel::<BuildInput>(16);
        tx.blocking_send(BuildInput {
            input: Some(build_input::Input::Spec(spec)),
        })
        .ok()
        .context("kilnd closed the build")?;
        // With agents, the call stays open after the context for their
        // frames, until the result.
        let tunnels = Tunnels::new(&tx, ssh_input);
        let open_for_agents = (!agents.is_empty()).then(|| tx.clone());
        // The context tar is made on a thread of its own while it is sent.
        let sender = {
            let context = context.to_owned();
            std::thread::spawn(move || -> std::io::Result<()> {
                let chunks = kiln_builder::context::write_tar(
                    &context,
                    &send,
                    ChunkWriter::new(tx.clone(), |data, eof| BuildInput {
                        input: Some(build_input::Input::Context(pb::ContextChunk { data, eof })),
                    }),
                )?;
                chunks.finish()
            })
        };
        let client = &mut self.client;
        let mut tails: HashMap<usize, Vec<String>> = HashMap::new();
        let mut failed_vertex = None;
        let outcome = self.runtime.block_on(async {
            let request = tokio_stream::wrappers::ReceiverStream::new(rx);
            let mut stream = client.build(request).await?.into_inner();
            while let Some(message) = stream.message().await? {
                match message.output {
                    Some(build_output::Output::Event(e)) => {
                        if let Some(event) = event_from_message(&e) {
                            match &event {
                                kiln_builder::solve::Event::Log { vertex, line } => {
                                    let tail = tails.entry(*vertex).or_default();
                                    tail.push(line.clone());
                                    if tail.len() > 20 {
                                        tail.remove(0);
                                    }
                                }
                                kiln_builder::solve::Event::Failed { vertex, .. } => {
                                    failed_vertex = Some(*vertex);
                                }
                                _ => {}
                            }
                            printer.event(event);
                        }
                    }
                    Some(build_output::Output::Result(r)) => return Ok(Some(r)),
                    Some(build_output::Output::Ssh(frame)) if frame.id.is_empty() => {
                        tunnels.deliver(frame).await;
                    }
                    Some(build_output::Output::Ssh(frame)) => {
                        let agent = agents.get(&frame.id);
                        match agent.map(tokio::net::UnixStream::connect) {
                            Some(connecting) => match connecting.await {
                                Ok(stream) => tunnels.attach(frame.conn, stream),
                                Err(e) => {
                                    eprintln!("warning: SSH agent {:?}: {e}", frame.id);
                                    tunnels.refuse(frame.conn).await;
                                }
                            },
                            None => tunnels.refuse(frame.conn).await,
                        }
                    }
                    None => {}
                }
            }
            Ok::<_, tonic::Status>(None)
        });
        printer.finish();
        drop(open_for_agents);
        let sent = sender.join();
        match outcome {
            Ok(Some(result)) => Ok(result),
            Ok(None) => bail!("kilnd ended the build without a result"),
            Err(status) => {
                // A failed step's last lines come with its error, as embedded.
                if status.code() == tonic::Code::Aborted
                    && let Some(tail) = failed_vertex.and_then(|v| tails.get(&v))
                {
                    for line in tail {
                        eprintln!("  {line}");
                    }
                }
                // kilnd hanging up is what its status explains (a build it
                // refused before reading the context); another failure to
                // send is the cause.
                if let Ok(Err(e)) = sent
                    && e.kind() != std::io::ErrorKind::BrokenPipe
                {
                    bail!("sending the build context: {e}");
                }
                Err(failed(status))
            }
        }
    }

    pub(crate) fn list_images(&mut self) -> Result<Vec<pb::ImageSummary>> {
        let client = &mut self.client;
        let response = self
            .runtime
            .block_on(client.list_images(pb::ListImagesRequest {}))
            .map_err(failed)?;
        Ok(response.into_inner().images)
    }

    pub(crate) fn tag(&mut self, source: String, target: String) -> Result<()> {
        let client = &mut self.client;
        self.runtime
            .block_on(client.tag(pb::TagRequest { source, target }))
            .map_err(failed)?;
        Ok(())
    }

    /// The name untagged and the digests deleted.
    pub(crate) fn remove(&mut self, name: &str) -> Result<(String, Vec<String>)> {
        let client = &mut self.client;
        let r = self
            .runtime
            .block_on(client.remove(pb::RemoveRequest {
                names: vec![name.to_owned()],
            }))
            .map_err(failed)?
            .into_inner();
        Ok((r.untagged.concat(), r.deleted))
    }

    /// The digests deleted and the bytes reclaimed.
    pub(crate) fn prune(&mut self, all: bool, keep_storage: u64) -> Result<(Vec<String>, u64)> {
        let client = &mut self.client;
        let r = self
            .runtime
            .block_on(client.prune(pb::PruneRequest { all, keep_storage }))
            .map_err(failed)?
            .into_inner();
        Ok((r.deleted, r.reclaimed))
    }

    pub(crate) fn list_workers(&mut self) -> Result<Vec<pb::Worker>> {
        let client = &mut self.client;
        Ok(self
            .runtime
            .block_on(client.list_workers(pb::ListWorkersRequest {}))
            .map_err(failed)?
            .into_inner()
            .workers)
    }

    pub(crate) fn disk_usage(&mut self) -> Result<kiln_builder::images::Usage> {
        let client = &mut self.client;
        let usage = self
            .runtime
            .block_on(client.disk_usage(pb::DiskUsageRequest {}))
            .map_err(failed)?
            .into_inner();
        Ok(usage.into())
    }

    /// Writes the archive kilnd streams into `output`.
    pub(crate) fn save(&mut self, names: Vec<String>, format: &str, output: &Path) -> Result<()> {
        let client = &mut self.client;
        let request = pb::SaveRequest {
            names,
            format: format.to_owned(),
        };
        let tmp = self.runtime.block_on(async {
            let stream = client.save(request).await.map_err(failed)?.into_inner();
            receive_file(stream, output).await
        })?;
        tmp.persist(output)
            .with_context(|| format!("writing {}", output.display()))?;
        Ok(())
    }

    /// A built image as a file output (`-o type=docker|oci|tar|local`).
    pub(crate) fn export(
        &mut self,
        manifest: &str,
        name: Option<&str>,
        output: &kiln_builder::output::Output,
    ) -> Result<()> {
        use kiln_builder::output::{Dest, Output};
        let (kind, dest) = match output {
            Output::Docker(d) | Output::Oci(d) | Output::Tar(d) => (output.kind(), d.clone()),
            // A directory: the root filesystem's tar, unpacked here (from a
            // temporary file first).
            Output::Local(_) => ("tar", Dest::File(std::env::temp_dir().join("kiln-export"))),
            Output::Image { .. } => return Ok(()),
        };
        let request = pb::ExportRequest {
            manifest: manifest.to_owned(),
            kind: kind.to_owned(),
            name: name.unwrap_or_default().to_owned(),
        };
        let client = &mut self.client;
        let place = match dest {
            Dest::File(path) => path,
            Dest::Stdout => {
                return self.runtime.block_on(async {
                    let stream = client.export(request).await.map_err(failed)?.into_inner();
                    receive_into(stream, &mut std::io::stdout().lock(), Path::new("-")).await
                });
            }
        };
        let tmp = self.runtime.block_on(async {
            let stream = client.export(request).await.map_err(failed)?.into_inner();
            receive_file(stream, &place).await
        })?;
        if let Output::Local(dir) = output {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            // kilnd's tar of the root filesystem: a tree, whiteouts applied.
            kiln_worker::layer::unpack_with(
                std::io::BufReader::new(tmp.reopen()?),
                dir,
                kiln_worker::layer::Whiteouts::Plain,
            )
            .with_context(|| format!("writing {}", dir.display()))?;
            return Ok(());
        }
        tmp.persist(&place)
            .with_context(|| format!("writing {}", place.display()))?;
        Ok(())
    }

    /// Streams the archive at `input` to kilnd; the names tagged and the
    /// digests of untagged images.
    pub(crate) fn load(&mut self, input: &Path) -> Result<(Vec<String>, Vec<String>)> {
        let (chunks, reader) = file_chunks(input, |data| pb::DataChunk { data })?;
        let client = &mut self.client;
        let response = self.runtime.block_on(client.load(chunks));
        read_fully(input, reader)?;
        let r = response.map_err(failed)?.into_inner();
        Ok((r.tags, r.untagged))
    }

    /// `kiln import`: the tarball streamed to kilnd; the manifest digest.
    pub(crate) fn import(
        &mut self,
        file: &Path,
        name: &str,
        created: Option<u64>,
    ) -> Result<String> {
        let name = name.to_owned();
        let (chunks, reader) = file_chunks(file, move |data| pb::ImportChunk {
            name: name.clone(),
            data,
            created,
        })?;
        let client = &mut self.client;
        let response = self.runtime.block_on(client.import(chunks));
        read_fully(file, reader)?;
        Ok(response.map_err(failed)?.into_inner().digest)
    }

    pub(crate) fn pull(&mut self, request: pb::PullRequest) -> Result<pb::PullResponse> {
        let client = &mut self.client;
        Ok(self
            .runtime
            .block_on(client.pull(request))
            .map_err(failed)?
            .into_inner())
    }

    pub(crate) fn push(&mut self, request: pb::PushRequest) -> Result<pb::PushResponse> {
        let client = &mut self.client;
        Ok(self
            .runtime
            .block_on(client.push(request))
            .map_err(failed)?
            .into_inner())
    }

    pub(crate) fn inspect(&mut self, names: Vec<String>) -> Result<String> {
        let client = &mut self.client;
        let response = self
            .runtime
            .block_on(client.inspect(pb::InspectRequest { names }))
            .map_err(failed)?;
        Ok(response.into_inner().json)
    }
}

/// Where this user keeps the context session kilnd issued for a context
/// directory (one file per kilnd address and directory, under
/// `$XDG_STATE_HOME/kiln/sessions`, else `~/.local/state/kiln/sessions`;
/// 0700, files 0600): the id is what gives access to kilnd's copy of the
/// context, so it stays this user's. Without a home, every build starts
/// a new session.
struct SessionFile(PathBuf);

impl SessionFile {
    fn new(addr: &str, context: &Path) -> Option<Self> {
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
        let key = format!("{addr}\0{}", dir.display());
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
    local: &[kiln_builder::context::Entry],
    held: &[pb::FileStat],
) -> (Vec<kiln_builder::context::Entry>, Vec<String>) {
    let held: HashMap<&str, &pb::FileStat> = held.iter().map(|f| (f.path.as_str(), f)).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    const DIR: u32 = 0o040000;
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

/// A stream of chunks into a temporary file beside `dest` (no half-written
/// file under its name; the caller persists it).
async fn receive_file(
    stream: tonic::Streaming<pb::DataChunk>,
    dest: &Path,
) -> Result<tempfile::NamedTempFile> {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    receive_into(stream, &mut tmp, dest).await?;
    Ok(tmp)
}

/// Writes every chunk of `stream` to `out` (`dest` names it in errors).
async fn receive_into(
    mut stream: tonic::Streaming<pb::DataChunk>,
    out: &mut impl Write,
    dest: &Path,
) -> Result<()> {
    while let Some(chunk) = stream.message().await.map_err(failed)? {
        out.write_all(&chunk.data)
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    out.flush()
        .with_context(|| format!("writing {}", dest.display()))
}

/// A file as a stream of messages `make` wraps its chunks in, read on a
/// thread of its own; join the thread with [`read_fully`].
fn file_chunks<M: Send + 'static>(
    path: &Path,
    make: impl Fn(Vec<u8>) -> M + Send + 'static,
) -> Result<(
    tokio_stream::wrappers::ReceiverStream<M>,
    std::thread::JoinHandle<std::io::Result<()>>,
)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<M>(8);
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)?;
            // kilnd hung up: its answer says why.
            if n == 0 || tx.blocking_send(make(buf[..n].to_vec())).is_err() {
                return Ok(());
            }
        }
    });
    Ok((tokio_stream::wrappers::ReceiverStream::new(rx), reader))
}

fn read_fully(path: &Path, reader: std::thread::JoinHandle<std::io::Result<()>>) -> Result<()> {
    match reader.join() {
        Ok(Err(e)) => bail!("reading {}: {e}", path.display()),
        _ => Ok(()),
    }
}

/// Files go to kilnd in chunks of this size.
const CHUNK: usize = 1 << 20;
