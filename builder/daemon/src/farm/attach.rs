//! A `kiln-worker`'s session with kilnd: say hello (with the layers it
//! holds), beat, and run the steps kilnd sends, each on a thread of its own
//! in this worker's sandbox and store. A step's missing layers are fetched
//! from kilnd by digest; its new layer is stored here (and kept unpacked,
//! so that the next step on it starts at once) and sent to kilnd before the
//! step is reported done.
//!
//! Its operator stops it through a [`Phase`]: `Drain` tells kilnd (no new
//! steps), runs to the end every step it has or is still sent, and ends
//! when kilnd ends the session (it runs nothing); `Stop` cancels the steps
//! running without reporting them, so kilnd runs them elsewhere as for a
//! lost worker.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use kiln_cache::{ContentError, Digest, Store};
use kiln_proto::farm::v1::{self as pb, farm_client::FarmClient, worker_message::Message};
use kiln_worker::exec::{ExecError, Worker};
use kiln_worker::layer::LayerError;
use kiln_worker::sandbox::{Cancel, Sandbox};
use kiln_worker::snapshot::Snapshots;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::gc::Gc;
use super::token::SendToken;
use super::{HEARTBEAT, wire};

/// The farm client: every call carries the worker token.
type Client = FarmClient<InterceptedService<Channel, SendToken>>;
use crate::chunks::ChunkWriter;
use kiln_image::image::ImageError;
use kiln_solver::entitlements::{EntitlementError, Entitlements, check_step};

/// Who this worker is to kilnd.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    /// Steps at once.
    pub parallelism: u32,
    /// kilnd's `--worker-token`, if it has one.
    pub token: Option<String>,
    /// Keep the store under this many bytes (`--keep-storage`).
    pub keep_storage: Option<u64>,
    /// What this worker's operator allows a step (`--allow-insecure-entitlement`),
    /// whatever kilnd granted its build.
    pub insecure_entitlements: Entitlements,
}

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("kilnd: {}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("kilnd ended the session")]
    Ended,
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Entitlement(#[from] EntitlementError),
    #[error("the step's sandbox: {0}")]
    Sandbox(#[from] kiln_proto::sandbox::SandboxOptionError),
    #[error("stopped with {0} step(s) running: kilnd runs them elsewhere")]
    Stopped(usize),
}

/// What this worker's operator asks of its session, in order: a phase
/// never goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Take and run kilnd's steps.
    Run,
    /// Take no new steps (kilnd is told), finish the running ones, then end.
    Drain,
    /// End now: the running steps are cancelled unreported (kilnd runs
    /// them elsewhere, as for a lost worker).
    Stop,
}

impl AttachError {
    /// Whether kilnd refused this worker itself (its token): attaching
    /// again with the same settings cannot help.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Status(s) if matches!(
                s.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            )
        )
    }
}

fn message(message: Message) -> pb::WorkerMessage {
    pb::WorkerMessage {
        message: Some(message),
    }
}

/// The steps running in a session, each cancellable.
type Running = Arc<Mutex<HashMap<u64, Cancel>>>;

/// Runs kilnd's steps over `channel` until the session ends (then the steps
/// still running are killed: kilnd runs them elsewhere). `Ok` when the
/// session ended as `phase` asked: drained.
pub async fn serve(
    store: Arc<Store>,
    channel: Channel,
    config: &WorkerConfig,
    mut phase: watch::Receiver<Phase>,
) -> Result<(), AttachError> {
    let snapshots = Snapshots::open(store.snapshots_dir())?;
    snapshots.recover()?;
    let send = SendToken::new(config.token.as_deref())
        .ok_or_else(|| AttachError::Invalid("the worker token is not printable ASCII".into()))?;
    let client: Client =
        FarmClient::with_interceptor(channel, send).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(64);
    let host = kiln_image::image::host_platform();
    let hello = pb::Hello {
        id: config.id.clone(),
        platform: kiln_frontend::platform::format(&host),
        parallelism: config.parallelism,
        layers: snapshots.names(),
        token: config.token.clone().unwrap_or_default(),
        emulated: kiln_worker::platforms::Platforms::detect().emulated_platforms(),
    };
    tx.send(message(Message::Hello(hello)))
        .await
        .map_err(|_| AttachError::Ended)?;
    let mut steps = client
        .clone()
        .attach(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(id = config.id, "attached to kilnd");
    let heartbeat = tokio::spawn(heartbeats(tx.clone()));
    let running: Running = Arc::default();
    // Set before a stop cancels the steps: their ends are not reported.
    let abandoned = Arc::new(AtomicBool::new(false));
    let gc = Arc::new(Gc::new(config.keep_storage));
    let mut draining = false;
    let ended = loop {
        let now = *phase.borrow_and_update();
        if now >= Phase::Drain && !draining {
            draining = true;
            tracing::info!(
                running = lock(&running).len(),
                "draining: no new steps; finishing the running ones"
            );
            if tx
                .send(message(Message::Draining(pb::Draining {})))
                .await
                .is_err()
            {
                break Err(AttachError::Ended);
            }
        }
        if now == Phase::Stop {
            break Err(AttachError::Stopped(lock(&running).len()));
        }
        let next = tokio::select! {
            next = steps.message() => next,
            changed = phase.changed() => {
                if changed.is_err() {
                    // The operator's side is gone: nobody asks for more.
                    break Err(AttachError::Stopped(lock(&running).len()));
                }
                continue;
            }
        };
        let next = match next {
            Ok(Some(next)) => next,
            // kilnd ends a draining worker's session when it runs nothing
            // (or kilnd stops: then what runs here is lost either way).
            Ok(None) if draining => break Ok(()),
            Ok(None) => break Err(AttachError::Ended),
            Err(status) => break Err(status.into()),
        };
        match next.message {
            Some(pb::farm_message::Message::Run(step)) => {
                let runner = StepRunner {
                    store: Arc::clone(&store),
                    snapshots: snapshots.clone(),
                    client: client.clone(),
                    tx: tx.clone(),
                    runtime: tokio::runtime::Handle::current(),
                    gc: Arc::clone(&gc),
                    allowed: config.insecure_entitlements.clone(),
                    abandoned: Arc::clone(&abandoned),
                };
                // Draining or not: kilnd may have sent it before it read
                // `Draining`, and a drain fails no step.
                start_step(runner, step, &running);
            }
            Some(pb::farm_message::Message::Cancel(c)) => {
                if let Some(cancel) = lock(&running).get(&c.step) {
                    cancel.cancel();
                }
            }
            None => {}
        }
    };
    heartbeat.abort();
    // Whatever still runs was not asked of it any more, or is given up:
    // not reported (its killed end would fail the step), run elsewhere.
    abandoned.store(true, Ordering::SeqCst);
    for cancel in lock(&running).values() {
        cancel.cancel();
    }
    if ended.is_ok() {
        tracing::info!("drained: kilnd ended the session");
    }
    ended
}

/// Says the worker is alive every [`HEARTBEAT`] until the session ends.
async fn heartbeats(tx: mpsc::Sender<pb::WorkerMessage>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if tx
            .send(message(Message::Heartbeat(pb::Heartbeat {})))
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Runs `step` on a blocking thread, cancellable through `running` while it
/// runs; its end goes to kilnd.
fn start_step(runner: StepRunner, step: pb::RunStep, running: &Running) {
    let cancel = Cancel::default();
    lock(running).insert(step.step, cancel.clone());
    let running = Arc::clone(running);
    tokio::task::spawn_blocking(move || {
        let id = step.step;
        let step_running = runner.gc.step();
        let done = runner.run(step, &cancel);
        drop(step_running);
        lock(&running).remove(&id);
        // A step cancelled by a stop is not over for kilnd: it runs it
        // elsewhere (the session's end tells it).
        if !runner.abandoned.load(Ordering::SeqCst) {
            let _ = runner.tx.blocking_send(message(Message::Done(done)));
        }
        runner.gc.after_step(&runner.store, &runner.snapshots);
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one step needs of the session (on a blocking thread).
struct StepRunner {
    store: Arc<Store>,
    snapshots: Snapshots,
    client: Client,
    tx: mpsc::Sender<pb::WorkerMessage>,
    runtime: tokio::runtime::Handle,
    gc: Arc<Gc>,
    /// This worker's `--allow-insecure-entitlement`.
    allowed: Entitlements,
    /// The session gave its steps up (a stop): their ends are not sent.
    abandoned: Arc<AtomicBool>,
}

impl StepRunner {
    /// Runs `step`; how it ended, as kilnd hears it.
    fn run(&self, step: pb::RunStep, cancel: &Cancel) -> pb::StepDone {
        let id = step.step;
        self.execute(&step, cancel).unwrap_or_else(|e| {
            tracing::warn!(step = id, "a step could not run: {e}");
            pb::StepDone {
                step: id,
                error: e.to_string(),
                ..Default::default()
            }
        })
    }

    fn execute(&self, step: &pb::RunStep, cancel: &Cancel) -> Result<pb::StepDone, AttachError> {
        // Before anything is fetched or run: kilnd is trusted only as far
        // as this worker's operator allows.
        check_step(step, &self.allowed)?;
        let compression = wire::compression_of(step).ok_or_else(|| {
            AttachError::Invalid(format!(
                "layer compression {} {}",
                step.compression, step.compression_level
            ))
        })?;
        let scratch = tempfile::Builder::new()
            .prefix("farm-step-")
            .tempdir_in(self.store.root().join("tmp"))
            .map_err(|e| AttachError::Invalid(format!("a scratch directory: {e}")))?;
        let mut held = Vec::new();
        let (request, secrets) =
            wire::exec_request(step, scratch.path(), |layers| self.dirs(layers, &mut held))?;
        let mut worker = Worker::new(self.store.root(), Sandbox::beside_current_exe());
        for (id, value) in secrets {
            worker = worker.with_secret(&id, value);
        }
        let outcome = worker.exec(
            &request,
            &mut |_, data: &[u8]| {
                let output = pb::StepOutput {
                    step: step.step,
                    data: data.to_vec(),
                };
                let _ = self.tx.blocking_send(message(Message::Output(output)));
            },
            cancel,
        )?;
        if outcome.exit_code != 0 {
            let exit_code = outcome.exit_code;
            worker.discard(outcome)?;
            return Ok(pb::StepDone {
                step: step.step,
                exit_code,
                layers: held,
                ..Default::default()
            });
        }
        let layer = kiln_image::compress::store_layer(
            &self.store,
            &outcome.layer,
            compression,
            step.source_date_epoch,
        )?;
        self.upload(&layer.blob)?;
        let diff_id = layer.diff_id.to_string();
        // Clamped mtimes are in the layer, not in the upperdir.
        if step.source_date_epoch.is_none()
            && self.snapshots.adopt(&diff_id, &outcome.layer).is_ok()
        {
            let name = Snapshots::name(&diff_id);
            self.gc.used(name);
            held.push(name.to_owned());
        }
        worker.discard(outcome)?;
        Ok(pb::StepDone {
            step: step.step,
            exit_code: 0,
            layer: Some(wire::layer_message(&layer)),
            error: String::new(),
            layers: held,
        })
    }

    /// The directories of `layers` (bottom first in the message; top first
    /// here), fetched and unpacked when missing.
    fn dirs(
        &self,
        layers: &[pb::Layer],
        held: &mut Vec<String>,
    ) -> Result<Vec<PathBuf>, AttachError> {
        let mut dirs = Vec::with_capacity(layers.len());
        for message in layers.iter().rev() {
            let layer = wire::layer_of(message)
                .ok_or_else(|| AttachError::Invalid(format!("layer {message:?}")))?;
            let diff_id = layer.diff_id.to_string();
            self.gc.used(Snapshots::name(&diff_id));
            // Unpacked already (perhaps from another blob of the same
            // diff ID: kilnd's may be uncompressed, this worker's zstd).
            if let Some(dir) = self.snapshots.unpacked(&diff_id)? {
                dirs.push(dir);
                continue;
            }
            if !self.store.content.has(&layer.blob) {
                self.fetch(&layer.blob)?;
            }
            held.push(Snapshots::name(&diff_id).to_owned());
            let blob = self.store.content.open_blob(&layer.blob)?;
            dirs.push(self.snapshots.ensure(&diff_id, blob)?);
        }
        Ok(dirs)
    }

    /// A blob from kilnd's store into this one (its digest checked).
    fn fetch(&self, digest: &Digest) -> Result<(), AttachError> {
        let mut client = self.client.clone();
        let mut writer = self.store.content.writer()?;
        self.runtime.block_on(async {
            let request = pb::ReadBlobRequest {
                digest: digest.to_string(),
            };
            let mut chunks = client.read_blob(request).await?.into_inner();
            while let Some(chunk) = chunks.message().await? {
                writer.write_all(&chunk.data).map_err(|e| {
                    AttachError::Invalid(format!("storing {digest} from kilnd: {e}"))
                })?;
            }
            Ok::<_, AttachError>(())
        })?;
        writer.commit(Some(digest))?;
        Ok(())
    }

    /// A blob of this store into kilnd's: a first message naming it, then
    /// the bytes.
    fn upload(&self, digest: &Digest) -> Result<(), AttachError> {
        let mut file = self.store.content.open_blob(digest)?;
        let (tx, rx) = mpsc::channel(8);
        let first = pb::BlobChunk {
            digest: digest.to_string(),
            data: Vec::new(),
        };
        tx.blocking_send(first).map_err(|_| AttachError::Ended)?;
        let reader = std::thread::spawn(move || {
            let mut out = ChunkWriter::new(tx, |data, _| pb::BlobChunk {
                digest: String::new(),
                data,
            });
            std::io::copy(&mut file, &mut out).and_then(|_| out.finish())
        });
        let mut client = self.client.clone();
        self.runtime
            .block_on(client.write_blob(ReceiverStream::new(rx)))?;
        reader
            .join()
            .map_err(|_| AttachError::Invalid("reading a layer panicked".into()))?
            .map_err(|e| AttachError::Invalid(format!("sending {digest}: {e}")))?;
        Ok(())
    }
}
