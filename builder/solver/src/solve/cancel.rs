//! Cancelling a build: no new step starts, and every running step's
//! processes are killed (a client that went away, Ctrl-C through kilnd).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_worker::sandbox::Cancel;

/// One build's cancellation, shared by its steps.
#[derive(Debug, Default)]
pub struct Cancellation {
    cancelled: AtomicBool,
    /// The running steps' handles.
    running: Mutex<Vec<Cancel>>,
}

impl Cancellation {
    /// Stops the build: running steps are killed, no step starts.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        for step in self.lock().iter() {
            step.cancel();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// A handle for a step about to run; `None` when the build is
    /// cancelled already. Drop it with [`Cancellation::finished`].
    pub(super) fn step(&self) -> Option<Cancel> {
        let mut running = self.lock();
        // Checked under the lock: a cancel either sees this step or is
        // seen by it.
        if self.is_cancelled() {
            return None;
        }
        let step = Cancel::default();
        running.push(step.clone());
        Some(step)
    }

    pub(super) fn finished(&self, step: &Cancel) {
        self.lock().retain(|s| !s.same(step));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Cancel>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
