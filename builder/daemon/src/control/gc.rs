//! Builds and collection over kilnd's store, kept apart.
//!
//! A running build uses what no tag holds yet: its steps' layers and their
//! unpacked snapshots (the lower directories of the step running now), its
//! cache mounts. Load, import and pull write blobs before their tag; save
//! and push read an image's. So collecting never overlaps those calls:
//! `prune` waits for them (calls that arrive meanwhile wait behind it, so
//! it is not starved), and `rmi` while they run only removes the tag,
//! leaving the blobs to the next collection. After a build, when nothing
//! else runs, kilnd keeps its store under `--keep-storage` (by default a
//! tenth of the filesystem, as BuildKit's default), measuring it at most
//! once a minute.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kiln_cache::Store;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use kiln_image::images;

/// How often the store is measured after builds, at most.
const EVERY: Duration = Duration::from_secs(60);

/// The builds (and other calls using blobs) running on one store, and its
/// bound.
pub struct Collector {
    keep: Option<u64>,
    /// Read: a build runs. Write: collecting.
    builds: Arc<RwLock<()>>,
    checked: Mutex<Option<Instant>>,
}

impl Collector {
    /// Keeps the store under `keep` bytes after builds (`None`: only
    /// `prune` collects).
    pub fn new(keep: Option<u64>) -> Self {
        Self {
            keep,
            builds: Arc::default(),
            checked: Mutex::default(),
        }
    }

    /// Held for the whole of a call that writes blobs before their tag
    /// (a build, load, import, pull) or reads an image's (save, push).
    pub(super) async fn using(&self) -> OwnedRwLockReadGuard<()> {
        Arc::clone(&self.builds).read_owned().await
    }

    /// Held while collecting: no build runs.
    pub(super) async fn exclusive(&self) -> OwnedRwLockWriteGuard<()> {
        Arc::clone(&self.builds).write_owned().await
    }

    /// The same, only when no build runs now.
    pub(super) fn try_exclusive(&self) -> Option<OwnedRwLockWriteGuard<()>> {
        Arc::clone(&self.builds).try_write_owned().ok()
    }

    /// After a build (its guard dropped): when a bound is set and the last
    /// measure is a minute old, measures the store on a blocking thread of
    /// `runtime` (builds go on meanwhile) and, if it is over the bound and
    /// no build runs, collects.
    pub(super) fn after_build(&self, store: Arc<Store>, runtime: &tokio::runtime::Handle) {
        let Some(keep) = self.keep else { return };
        {
            let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
            if checked.is_some_and(|at| at.elapsed() < EVERY) {
                return;
            }
            *checked = Some(Instant::now());
        }
        let builds = Arc::clone(&self.builds);
        runtime.spawn_blocking(move || {
            match images::usage(&store) {
                Ok(usage) if usage.total() <= keep => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("measuring the store: {e}");
                    return;
                }
            }
            // Busy: the next build's end, a minute on, tries again.
            let Ok(_exclusive) = builds.try_write_owned() else {
                return;
            };
            match images::prune(&store, Some(keep), false) {
                Ok(p) => tracing::info!(
                    deleted = p.deleted.len(),
                    reclaimed = p.reclaimed,
                    keep,
                    "the store was over --keep-storage: collected"
                ),
                Err(e) => tracing::warn!("collecting the store: {e}"),
            }
        });
    }
}
