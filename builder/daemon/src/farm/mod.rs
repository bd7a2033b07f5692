//! The build farm: `kiln-worker` processes attached to kilnd over
//! `kiln.farm.v1` run RUN steps, moving layers by digest.
//!
//! kilnd's side is [`Farm`] (who is attached, what each holds, which steps
//! run where; the solver hands it steps as `solve::Executor`, which
//! `wire` turns into `kiln.farm.v1` messages, [`Farm::place_and_run`]) and its gRPC
//! face `service`. The worker's side is `attach`: a session with kilnd
//! that fetches missing layers, runs steps in its own sandbox and store, and
//! sends the new layers back. `wire` maps steps between the two.
//!
//! A step goes to the worker with free capacity that holds the most bytes
//! of its layers unpacked, less [`BUSY_BYTES`] for each step it runs now
//! (then the least busy). A worker that goes away
//! mid-step (its call ends, or it misses three heartbeats) takes nothing
//! with it: the step runs again elsewhere, up to [`ATTEMPTS`] times.
//!
//! A worker that is stopping says `Draining`: it gets no new steps
//! ([`Attached::takes_steps`]), runs to the end the ones it has (and one sent
//! before kilnd read its word), and kilnd detaches it once none is left, so
//! that scaling the farm down loses no work.

pub mod attach;
mod gc;
mod service;
pub mod token;
pub mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use kiln_proto::farm::v1 as pb;
use thiserror::Error;
use tonic::Status;

use kiln_solver::solve::{Executor, SolveError, Step, StepOutcome};

pub use service::FarmService;

/// How often a worker says it is alive; three missed is gone.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// What a step already running on a worker weighs against sending it
/// there, in layer bytes it would have to fetch elsewhere: an idle worker
/// is worth fetching a small base, not a large one.
pub const BUSY_BYTES: u64 = 64 << 20;

/// Workers a step may be lost with before its build fails.
pub const ATTEMPTS: u32 = 3;

/// The emulated platforms kept of a worker's hello (a kernel registers a
/// few dozen handlers at most).
const MAX_EMULATED: usize = 64;

pub use token::read_token;

/// Why a step did not run on the farm.
#[derive(Debug, Error)]
pub enum FarmError {
    #[error("worker {worker}: {reason}")]
    Worker { worker: String, reason: String },
    #[error("lost with {ATTEMPTS} workers in a row (last: {worker})")]
    Lost { worker: String },
    #[error("cancelled")]
    Cancelled,
}

/// A step's input layers for placing it: snapshot name and size of each.
pub type StepLayers = Vec<(String, u64)>;

type ToWorker = tokio::sync::mpsc::Sender<Result<pb::FarmMessage, Status>>;

/// What a waiting step hears of its worker.
enum Update {
    Output(Vec<u8>),
    Done(pb::StepDone),
    Lost,
}

/// One attached worker.
struct Attached {
    /// Tells this attachment from a later one of the same id.
    session: u64,
    platform: String,
    /// Platforms it runs under emulation.
    emulated: Vec<String>,
    parallelism: usize,
    /// Snapshot names of the layers it holds unpacked.
    snapshots: HashSet<String>,
    running: HashMap<u64, mpsc::Sender<Update>>,
    to_worker: ToWorker,
    steps_run: u64,
    /// It said it is stopping: it finishes its running steps, gets no new ones.
    draining: bool,
}

impl Attached {
    /// Whether new steps may be placed here (not a draining worker).
    fn takes_steps(&self) -> bool {
        !self.draining
    }
}

#[derive(Default)]
struct State {
    workers: BTreeMap<String, Attached>,
    next_step: u64,
    next_session: u64,
    /// kilnd is stopping: no worker attaches.
    closed: bool,
}

/// An attached worker, as `ListWorkers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: String,
    pub platform: String,
    /// Platforms it runs under emulation.
    pub emulated: Vec<String>,
    pub parallelism: usize,
    pub running: usize,
    pub steps_run: u64,
    /// Stopping: it finishes its running steps and takes no new ones.
    pub draining: bool,
}

/// What a step run on the farm gave: its exit code, and its layer (in
/// kilnd's store) when it succeeded.
#[derive(Debug)]
pub struct FarmOutcome {
    pub exit_code: i32,
    pub layer: Option<pb::Layer>,
}

/// The solver's steps, placed on attached workers; the farm's wire format
/// and placement are its own.
impl Executor for Farm {
    fn run(
        &self,
        step: &Step<'_>,
        output: &mut dyn FnMut(&[u8]),
        cancelled: &dyn Fn() -> bool,
    ) -> kiln_solver::solve::Result<Option<StepOutcome>> {
        let Some(message) = wire::run_step(step)? else {
            return Ok(None);
        };
        let layers = wire::step_layers(&message);
        let outcome = self
            .place_and_run(message, &step.platform, &layers, output, cancelled)
            .map_err(|e| match e {
                FarmError::Cancelled => SolveError::Cancelled,
                e => SolveError::remote(e),
            })?;
        let Some(outcome) = outcome else {
            return Ok(None);
        };
        if outcome.exit_code != 0 {
            return Ok(Some(StepOutcome::Exit(outcome.exit_code)));
        }
        outcome
            .layer
            .as_ref()
            .and_then(wire::layer_of)
            .map(|layer| Some(StepOutcome::Made(layer)))
            .ok_or_else(|| SolveError::remote("the worker named no layer it made"))
    }
}

/// kilnd's view of the farm.
pub struct Farm {
    state: Mutex<State>,
    /// Signalled when a step ends or a worker comes or goes.
    changed: Condvar,
    /// What a worker's hello must carry, when set.
    token: Option<String>,
}

impl Farm {
    /// A farm whose workers must present `token`, when given.
    pub fn new(token: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            changed: Condvar::new(),
            token,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The attached workers.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.state()
            .workers
            .iter()
            .map(|(id, w)| WorkerInfo {
                id: id.clone(),
                platform: w.platform.clone(),
                emulated: w.emulated.clone(),
                parallelism: w.parallelism,
                running: w.running.len(),
                steps_run: w.steps_run,
                draining: w.draining,
            })
            .collect()
    }

    /// Runs `step` on an attached worker of `platform`, retrying on another
    /// when one is lost; `None` when there is none (the caller runs the step
    /// itself). `layers` are the step's input layers (snapshot name, size)
    /// for placement; the step's output goes to `output` as it comes;
    /// `cancelled` is asked while waiting.
    pub fn place_and_run(
        &self,
        mut step: pb::RunStep,
        platform: &str,
        layers: &[(String, u64)],
        output: &mut dyn FnMut(&[u8]),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<FarmOutcome>, FarmError> {
        let mut lost = 0;
        loop {
            let Some((worker, session, updates, to_worker)) =
                self.place(&mut step, platform, layers, cancelled)?
            else {
                return Ok(None);
            };
            let id = step.step;
            tracing::debug!(worker, step = id, "running a step on the farm");
            let message = pb::FarmMessage {
                message: Some(pb::farm_message::Message::Run(step.clone())),
            };
            let waited = if to_worker.blocking_send(Ok(message)).is_err() {
                // Its call ended; it is being detached.
                self.forget(&worker, session, id);
                Waited::Lost
            } else {
                self.wait(&updates, output, cancelled)
            };
            match waited {
                Waited::Done(done) if !done.error.is_empty() => {
                    return Err(FarmError::Worker {
                        worker,
                        reason: done.error,
                    });
                }
                Waited::Done(done) => {
                    return Ok(Some(FarmOutcome {
                        exit_code: done.exit_code,
                        layer: done.layer,
                    }));
                }
                Waited::Lost => {
                    lost += 1;
                    tracing::warn!(worker, "a worker was lost mid-step; running it elsewhere");
                    if lost >= ATTEMPTS {
                        return Err(FarmError::Lost { worker });
                    }
                }
                Waited::Cancelled => {
                    let cancel = pb::FarmMessage {
                        message: Some(pb::farm_message::Message::Cancel(pb::CancelStep {
                            step: id,
                        })),
                    };
                    let _ = to_worker.try_send(Ok(cancel));
                    self.forget(&worker, session, id);
                    return Err(FarmError::Cancelled);
                }
            }
        }
    }

    /// Picks the worker for `step` (numbering it), waiting while all are
    /// busy; `None` when no worker of `platform` is attached.
    #[allow(clippy::type_complexity)]
    fn place(
        &self,
        step: &mut pb::RunStep,
        platform: &str,
        layers: &[(String, u64)],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<(String, u64, mpsc::Receiver<Update>, ToWorker)>, FarmError> {
        let mut state = self.state();
        loop {
            if cancelled() {
                return Err(FarmError::Cancelled);
            }
            let mut any = false;
            let mut best: Option<(&String, i128, usize)> = None;
            let serves = Self::serving(&state, platform);
            for (id, w) in &state.workers {
                if !w.takes_steps() || !serves(w) {
                    continue;
                }
                any = true;
                if w.running.len() >= w.parallelism {
                    continue;
                }
                let held: u64 = layers
                    .iter()
                    .filter(|(name, _)| w.snapshots.contains(name))
                    .map(|(_, size)| size)
                    .sum();
                let score = i128::from(held) - w.running.len() as i128 * i128::from(BUSY_BYTES);
                let better = best.is_none_or(|(_, best_score, best_running)| {
                    (score, std::cmp::Reverse(w.running.len()))
                        > (best_score, std::cmp::Reverse(best_running))
                });
                if better {
                    best = Some((id, score, w.running.len()));
                }
            }
            if !any {
                return Ok(None);
            }
            if let Some((id, _, _)) = best {
                let id = id.clone();
                state.next_step += 1;
                step.step = state.next_step;
                let (tx, rx) = mpsc::channel();
                let w = state.workers.get_mut(&id).expect("the worker just picked");
                w.running.insert(step.step, tx);
                return Ok(Some((id, w.session, rx, w.to_worker.clone())));
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn wait(
        &self,
        updates: &mpsc::Receiver<Update>,
        output: &mut dyn FnMut(&[u8]),
        cancelled: &dyn Fn() -> bool,
    ) -> Waited {
        loop {
            match updates.recv_timeout(Duration::from_millis(100)) {
                Ok(Update::Output(data)) => output(&data),
                Ok(Update::Done(done)) => return Waited::Done(done),
                Ok(Update::Lost) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Waited::Lost;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if cancelled() => return Waited::Cancelled,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Stops waiting for `step` on a worker's attachment.
    fn forget(&self, worker: &str, session: u64, step: u64) {
        let mut state = self.state();
        if let Some(w) = state.workers.get_mut(worker)
            && w.session == session
        {
            w.running.remove(&step);
        }
        Self::detach_drained(&mut state, worker);
        drop(state);
        self.changed.notify_all();
    }

    /// Which workers take a step of `platform`: those of that platform when
    /// one is attached (busy or not: a native run beats an emulated one, as
    /// BuildKit prefers a native worker), else those that emulate it.
    fn serving<'s>(state: &State, platform: &'s str) -> impl Fn(&Attached) -> bool + use<'s> {
        let native = state.workers.values().any(|w| w.platform == platform);
        move |w: &Attached| {
            if native {
                w.platform == platform
            } else {
                w.emulated.iter().any(|p| p == platform)
            }
        }
    }

    /// Takes a worker's hello: its attachment's session number.
    fn attach(&self, hello: &pb::Hello, to_worker: ToWorker) -> Result<u64, AttachRefused> {
        if let Some(token) = &self.token
            && !token::matches(token, &hello.token)
        {
            return Err(AttachRefused::Token);
        }
        if hello.id.is_empty() || hello.parallelism == 0 {
            return Err(AttachRefused::Hello);
        }
        let mut state = self.state();
        if state.closed {
            return Err(AttachRefused::Closed);
        }
        if state.workers.contains_key(&hello.id) {
            return Err(AttachRefused::Taken(hello.id.clone()));
        }
        state.next_session += 1;
        let session = state.next_session;
        state.workers.insert(
            hello.id.clone(),
            Attached {
                session,
                platform: hello.platform.clone(),
                emulated: emulated_platforms(&hello.emulated),
                parallelism: hello.parallelism as usize,
                snapshots: hello.layers.iter().cloned().collect(),
                running: HashMap::new(),
                to_worker,
                steps_run: 0,
                draining: false,
            },
        );
        drop(state);
        tracing::info!(
            worker = hello.id,
            platform = hello.platform,
            "a worker attached"
        );
        self.changed.notify_all();
        Ok(session)
    }

    /// A message from an attached worker.
    fn deliver(&self, worker: &str, session: u64, message: pb::WorkerMessage) {
        let mut state = self.state();
        let Some(w) = state.workers.get_mut(worker) else {
            return;
        };
        if w.session != session {
            return;
        }
        match message.message {
            Some(pb::worker_message::Message::Output(out)) => {
                if let Some(waiter) = w.running.get(&out.step) {
                    let _ = waiter.send(Update::Output(out.data));
                }
            }
            Some(pb::worker_message::Message::Done(done)) => {
                w.snapshots.extend(done.layers.iter().cloned());
                w.steps_run += 1;
                if let Some(waiter) = w.running.remove(&done.step) {
                    let _ = waiter.send(Update::Done(done));
                }
                Self::detach_drained(&mut state, worker);
                drop(state);
                self.changed.notify_all();
            }
            Some(pb::worker_message::Message::Draining(_)) => {
                if !w.draining {
                    tracing::info!(
                        worker,
                        running = w.running.len(),
                        "a worker is draining: no new steps for it"
                    );
                }
                w.draining = true;
                Self::detach_drained(&mut state, worker);
                drop(state);
                self.changed.notify_all();
            }
            Some(pb::worker_message::Message::Heartbeat(_)) | None => {}
            Some(pb::worker_message::Message::Hello(_)) => {
                tracing::warn!(worker, "a second hello from a worker; ignored");
            }
        }
    }

    /// Detaches every worker and takes no more (kilnd is stopping): their
    /// running steps are retried here.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        let workers = std::mem::take(&mut state.workers);
        drop(state);
        for w in workers.into_values() {
            for waiter in w.running.into_values() {
                let _ = waiter.send(Update::Lost);
            }
        }
        self.changed.notify_all();
    }

    /// Detaches `worker` if it is draining and runs nothing now (every step
    /// placed on it, sent or about to be, is in its `running`). Its call
    /// then ends with OK once the last `ToWorker` clone is gone (each is
    /// held only while one of its steps runs), which tells the worker its
    /// drain is over.
    fn detach_drained(state: &mut State, worker: &str) {
        if state
            .workers
            .get(worker)
            .is_some_and(|w| w.draining && w.running.is_empty())
        {
            state.workers.remove(worker);
            tracing::info!(worker, "a worker drained and detached");
        }
    }

    /// A worker's call ended: its running steps are lost (and retried).
    fn detach(&self, worker: &str, session: u64) {
        let mut state = self.state();
        if state
            .workers
            .get(worker)
            .is_some_and(|w| w.session == session)
            && let Some(w) = state.workers.remove(worker)
        {
            for waiter in w.running.into_values() {
                let _ = waiter.send(Update::Lost);
            }
            tracing::info!(worker, "a worker went away");
        }
        drop(state);
        self.changed.notify_all();
    }
}

impl std::fmt::Debug for Farm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Farm")
            .field("workers", &self.workers())
            .finish_non_exhaustive()
    }
}

enum Waited {
    Done(pb::StepDone),
    Lost,
    Cancelled,
}

/// Why kilnd refused a worker.
#[derive(Debug, Error)]
enum AttachRefused {
    #[error("the worker's token is not kilnd's --worker-token")]
    Token,
    #[error("a hello needs an id and a parallelism above 0")]
    Hello,
    #[error("a worker named {0:?} is attached already")]
    Taken(String),
    #[error("kilnd is stopping")]
    Closed,
}

/// The platforms a worker's hello says it emulates, as kilnd keeps them:
/// each one a platform (`os/arch[/variant]`, parsed and normalized, so a
/// step's platform finds it), at most [`MAX_EMULATED`] of them. What a
/// worker sends is not trusted: anything else is dropped.
fn emulated_platforms(said: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for text in said {
        if kept.len() == MAX_EMULATED {
            break;
        }
        let Ok(platform) = kiln_frontend::platform::parse(text) else {
            continue;
        };
        let platform = kiln_frontend::platform::format(&platform);
        if !kept.contains(&platform) {
            kept.push(platform);
        }
    }
    kept
}

#[cfg(test)]
mod tests;
