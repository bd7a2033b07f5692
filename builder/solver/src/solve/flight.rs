//! Single flight: a step that several concurrent builds need (the same
//! cache key) runs once; the others wait for it and then find its result
//! in the cache.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

/// The steps running now, by cache key. One per kilnd, shared by its builds.
#[derive(Debug, Default)]
pub struct InFlight {
    running: Mutex<HashMap<String, Arc<Flight>>>,
}

#[derive(Debug, Default)]
struct Flight {
    done: Mutex<bool>,
    finished: Condvar,
}

/// The right to run a key's step; others wait until it is dropped.
#[derive(Debug)]
pub(super) struct Claim<'a> {
    flights: &'a InFlight,
    key: String,
    flight: Arc<Flight>,
}

impl InFlight {
    /// `Some(claim)`: run the step. `None`: another build ran it while
    /// this one waited; look in the cache again.
    pub(super) fn claim(&self, key: &str) -> Option<Claim<'_>> {
        let existing = {
            let mut running = self.lock();
            match running.get(key) {
                Some(flight) => Arc::clone(flight),
                None => {
                    let flight = Arc::new(Flight::default());
                    running.insert(key.to_owned(), Arc::clone(&flight));
                    return Some(Claim {
                        flights: self,
                        key: key.to_owned(),
                        flight,
                    });
                }
            }
        };
        let mut done = existing
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !*done {
            done = existing
                .finished
                .wait(done)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Claim<'_> {
    /// Done (or failed): the waiting builds look again.
    fn drop(&mut self) {
        self.flights.lock().remove(&self.key);
        *self
            .flight
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.flight.finished.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_runs_the_others_wait_then_look_again() {
        let flights = InFlight::default();
        let claim = flights.claim("k").expect("the first claims");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| flights.claim("k").is_none());
            // The waiter holds the flight (beside the map and the claim).
            kiln_testing::wait_until(
                std::time::Duration::from_secs(10),
                "the second build to wait on the flight",
                || Arc::strong_count(&flights.lock()["k"]) == 3,
            );
            assert!(
                !waiter.is_finished(),
                "the second waits while the first runs"
            );
            assert!(flights.claim("other").is_some(), "other keys do not wait");
            drop(claim);
            assert!(waiter.join().unwrap(), "then looks in the cache again");
        });
        assert!(flights.lock().is_empty());
        assert!(flights.claim("k").is_some(), "a later build claims anew");
    }
}
