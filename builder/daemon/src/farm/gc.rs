//! Keeping a worker's store under a bound (`kiln-worker --keep-storage`).
//!
//! A worker's store is a cache of kilnd's: every blob in it is one kilnd
//! holds too (fetched from it, or sent to it before the step ended), and a
//! snapshot is a layer it can fetch again. So collecting removes every
//! blob, then unpacked layers, least recently used first, until the store
//! is under the bound; cache mounts stay (as BuildKit's do). It runs only
//! when no step is running (steps hold [`Gc::step`] while they run; a step
//! that arrives meanwhile waits), at most once a minute.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use kiln_cache::Store;
use kiln_worker::snapshot::Snapshots;

use kiln_image::image::ImageError;
use kiln_image::images::{remove_tree, tree_size};

/// How often the store is measured, at most.
const EVERY: Duration = Duration::from_secs(60);

pub(super) struct Gc {
    keep: Option<u64>,
    /// Read: a step runs. Write: collecting.
    running: RwLock<()>,
    /// When each snapshot was last used by a step of this process.
    used: Mutex<HashMap<String, SystemTime>>,
    checked: Mutex<Option<Instant>>,
}

impl Gc {
    pub(super) fn new(keep: Option<u64>) -> Self {
        Self {
            keep,
            running: RwLock::new(()),
            used: Mutex::default(),
            checked: Mutex::default(),
        }
    }

    /// Held while a step runs: nothing it uses is collected.
    pub(super) fn step(&self) -> RwLockReadGuard<'_, ()> {
        self.running.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The snapshot `name` was used now.
    pub(super) fn used(&self, name: &str) {
        self.used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), SystemTime::now());
    }

    /// After a step: collects when a bound is set, no step runs, and the
    /// last measure is a minute old.
    pub(super) fn after_step(&self, store: &Store, snapshots: &Snapshots) {
        let Some(keep) = self.keep else { return };
        let Ok(_collecting) = self.running.try_write() else {
            return;
        };
        {
            let mut checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
            if checked.is_some_and(|at| at.elapsed() < EVERY) {
                return;
            }
            *checked = Some(Instant::now());
        }
        let used = self
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match collect(store, snapshots, keep, &used) {
            Ok(0) => {}
            Ok(reclaimed) => tracing::info!(reclaimed, keep, "the worker's store was collected"),
            Err(e) => tracing::warn!("collecting the worker's store: {e}"),
        }
    }
}

/// Removes every blob, then snapshots least recently used first (by
/// `used`, else their directory's time) until the store under `keep`
/// bytes; what was reclaimed. Nothing of the store may be in use.
pub(super) fn collect(
    store: &Store,
    snapshots: &Snapshots,
    keep: u64,
    used: &HashMap<String, SystemTime>,
) -> Result<u64, ImageError> {
    let root = store.root();
    let mut total = tree_size(root);
    if total <= keep {
        return Ok(0);
    }
    let start = total;
    for (digest, _) in store.content.list()? {
        let path = store.content.path(&digest);
        total = total.saturating_sub(tree_size(&path));
        store.content.delete(&digest)?;
    }
    let mut unpacked: Vec<(SystemTime, String)> = snapshots
        .names()
        .into_iter()
        .map(|name| {
            let when = used.get(&name).copied().unwrap_or_else(|| {
                std::fs::metadata(snapshots.dir_named(&name))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            });
            (when, name)
        })
        .collect();
    unpacked.sort();
    for (_, name) in unpacked {
        if total <= keep {
            break;
        }
        let dir = snapshots.dir_named(&name);
        total = total.saturating_sub(tree_size(&dir));
        remove_tree(&dir)?;
        snapshots.unlink(&name);
    }
    Ok(start.saturating_sub(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_go_then_the_least_recently_used_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.content.write_bytes(&vec![7u8; 1 << 20]).unwrap();
        let snapshots = Snapshots::open(dir.path().join("snapshots")).unwrap();
        for name in ["old", "mid", "new"] {
            let snapshot = snapshots.dir_named(name);
            std::fs::create_dir_all(&snapshot).unwrap();
            std::fs::write(snapshot.join("data"), vec![1u8; 1 << 20]).unwrap();
        }
        let now = SystemTime::now();
        let used: HashMap<String, SystemTime> = [
            ("old", now - Duration::from_secs(30)),
            ("mid", now - Duration::from_secs(20)),
            ("new", now),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_owned(), t))
        .collect();
        // 2.5 MiB too much: the blob and two snapshots go, oldest first.
        let keep = tree_size(dir.path()) - (5 << 19);
        let reclaimed = collect(&store, &snapshots, keep, &used).unwrap();
        assert!(
            reclaimed >= 3 << 20,
            "the blob and two snapshots: {reclaimed}"
        );
        assert!(store.content.list().unwrap().is_empty());
        assert_eq!(snapshots.names(), vec!["new".to_owned()]);
        assert!(tree_size(dir.path()) <= keep);
        assert_eq!(collect(&store, &snapshots, keep, &used).unwrap(), 0);
    }
}
