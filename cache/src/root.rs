//! A store root: its layout, its lock, and recovery when it is opened.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

use crate::content::{ContentError, ContentStore};
use crate::digest::Digest;
use crate::meta::{MetaError, MetaStore, SledMeta};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("locking {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

type Result<T> = std::result::Result<T, StoreError>;

/// The default root: `$KILN_ROOT`, else `/var/lib/kiln` for root and
/// `$XDG_DATA_HOME/kiln` (or `~/.local/share/kiln`) for other users.
pub fn default_root() -> PathBuf {
    if let Some(root) = std::env::var_os("KILN_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("kiln")
}

/// What opening a root had to clean up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Unfinished blob writes removed.
    pub ingest_files: usize,
    /// Tags dropped because a blob they need is missing.
    pub dangling_tags: Vec<String>,
    /// Leases of operations that no longer run.
    pub stale_leases: usize,
}

/// An open store root.
pub struct Store {
    root: PathBuf,
    pub content: ContentStore,
    pub meta: Box<dyn MetaStore>,
    recovery: Recovery,
    _lock: Flock<File>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating) the store at `root`: waits for the root's lock,
    /// removes unfinished writes, drops records that point at missing
    /// blobs, and forgets leases of dead operations.
    ///
    /// The root and the directories it holds are the store owner's alone
    /// (0700), also those of a store an older kiln made: snapshots hold
    /// unpacked layers (setuid binaries among them) and sessions other
    /// clients' contexts.
    pub fn open(root: &Path) -> Result<Self> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        // Absolute: the store's paths go to the sandbox helper and to
        // mounts, which do not share this process's working directory
        // (a relative `KILN_ROOT` failed at the first RUN's mount).
        let root = &std::path::absolute(root).map_err(io("resolving", root))?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        // The root may be a link its owner made; what it holds may not.
        private_dir(&root.canonicalize().unwrap_or_else(|_| root.to_owned()))?;
        let lock = lock(&root.join("lock"))?;
        for dir in PRIVATE_DIRS {
            private_dir(&root.join(dir))?;
        }
        let content = ContentStore::open(&root.join("content"))?;
        let meta = Box::new(SledMeta::open(&root.join("meta.sled"))?);
        let mut store = Self {
            root: root.to_owned(),
            content,
            meta,
            recovery: Recovery::default(),
            _lock: lock,
        };
        store.recovery = store.recover()?;
        // Recovery emptied the scratch directories by removing them.
        for dir in PRIVATE_DIRS {
            private_dir(&root.join(dir))?;
        }
        if store.recovery != Recovery::default() {
            tracing::info!(recovery = ?store.recovery, "store recovered");
        }
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What [`Store::open`] cleaned up.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The size of the filesystem the root is on (what a default bound of
    /// kiln's disk use is a share of).
    pub fn filesystem_size(&self) -> Result<u64> {
        let stat = nix::sys::statvfs::statvfs(&self.root).map_err(|e| StoreError::Io {
            action: "measuring the filesystem of",
            path: self.root.clone(),
            source: e.into(),
        })?;
        Ok(stat.blocks().saturating_mul(stat.fragment_size()))
    }

    /// The metadata database's directory (for disk accounting).
    pub fn meta_dir(&self) -> PathBuf {
        self.root.join("meta.sled")
    }

    fn recover(&self) -> Result<Recovery> {
        let ingest_files = self.content.recover()?;
        // Scratch of processes that died: their running steps (mounts lived
        // in the helpers' own namespaces and are gone) and temp files.
        for dir in ["steps", "tmp"] {
            let _ = crate::remove_all(&self.root.join(dir));
        }
        let leases = self.meta.leases()?;
        for lease in &leases {
            self.meta.remove_lease(&lease.id)?;
        }
        let mut dangling_tags = Vec::new();
        for (name, record) in self.meta.images()? {
            if !self.complete(&record.target)? {
                self.meta.remove_image(&name)?;
                dangling_tags.push(name);
            }
        }
        self.meta.flush()?;
        Ok(Recovery {
            ingest_files,
            dangling_tags,
            stale_leases: leases.len(),
        })
    }

    /// Whether the blob `digest` is here: stored, or pending (an
    /// uncompressed layer made from its snapshot when first read) with that
    /// snapshot in place — a pending layer whose snapshot is gone is lost.
    pub fn available(&self, digest: &Digest) -> bool {
        self.content.has(digest)
            || (self.content.pending(digest).is_some() && self.snapshot_dir(digest).is_dir())
    }

    /// Where the worker's `Snapshots` keeps unpacked layers.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// The snapshot directory of the layer whose diff ID is `digest`: its
    /// hex, as the worker's `Snapshots::name` gives it for a valid diff ID
    /// (a pending blob is the tar of this directory).
    pub fn snapshot_dir(&self, digest: &Digest) -> PathBuf {
        self.snapshots_dir().join(digest.hex())
    }

    /// Whether `digest` and everything it needs are here: a manifest's
    /// config and layers, all of them; an index's entries, those present.
    /// An image index is complete when its blob is here, at least one of
    /// its entries is, and every entry here is complete: a pull fetches
    /// only the platforms asked for, so an absent entry is a platform not
    /// pulled, not damage (its tag stays). A walk with its own stack, each
    /// blob read once: an index nested thousands deep (written by an
    /// archive or an older kiln) cannot overflow the thread's stack.
    pub fn complete(&self, digest: &Digest) -> Result<bool> {
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![digest.clone()];
        while let Some(digest) = todo.pop() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            if !self.content.has(&digest) {
                if self.available(&digest) {
                    // A pending layer: it references nothing.
                    continue;
                }
                return Ok(false);
            }
            let bytes = match fs::metadata(self.content.path(&digest)) {
                // Layers are large and reference nothing; only JSON is read.
                Ok(m) if m.len() > 4 << 20 => continue,
                _ => self.content.read(&digest)?,
            };
            let refs = references(&bytes);
            todo.extend(refs.needed);
            let present: Vec<Digest> = refs
                .entries
                .into_iter()
                .filter(|d| self.content.has(d))
                .collect();
            if refs.is_index && present.is_empty() {
                return Ok(false);
            }
            todo.extend(present);
        }
        Ok(true)
    }
}

/// The directories of a root, all made 0700 when it opens: what the
/// worker (`snapshots`, `cache-mounts`, `steps`) and kilnd (`sessions`)
/// keep there is then never created with the umask's mode.
const PRIVATE_DIRS: &[&str] = &[
    "content",
    "meta.sled",
    "tmp",
    "snapshots",
    "cache-mounts",
    "steps",
    "sessions",
];

/// Creates directory `path` (its parent exists) with mode 0700, or makes an
/// existing one 0700. A symlink in its place is refused: the root's
/// contents must be where its owner put them.
pub fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let err = |action| {
        move |source| StoreError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err("creating")(e)),
    }
    let meta = fs::symlink_metadata(path).map_err(err("reading"))?;
    if !meta.is_dir() {
        return Err(err("opening")(io::Error::other(
            "not a directory (a store directory must not be a link)",
        )));
    }
    if meta.permissions().mode() & 0o7777 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(err("restricting"))?;
    }
    Ok(())
}

fn lock(path: &Path) -> Result<Flock<File>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = OpenOptions::new()
        .create(true)
        .mode(0o600)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| StoreError::Io {
            action: "opening",
            path: path.to_owned(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            tracing::warn!(path = %path.display(), "waiting for another kiln process using this root");
            eprintln!(
                "waiting for another kiln process to release {}",
                path.display()
            );
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| StoreError::Lock {
                path: path.to_owned(),
                source,
            })
        }
        Err((_, source)) => Err(StoreError::Lock {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Digests a manifest or index names (config, layers, manifests), read
/// without knowing which of the OCI/Docker shapes it is; nothing for other
/// blobs.
pub fn referenced(manifest: &[u8]) -> Vec<Digest> {
    let refs = references(manifest);
    refs.needed.into_iter().chain(refs.entries).collect()
}

/// What a manifest or an index names, split by need.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    /// Whether the blob is an index (it has `manifests`).
    pub is_index: bool,
    /// Blobs that must be here for it to be whole: a manifest's config and
    /// layers.
    pub needed: Vec<Digest>,
    /// An index's entries: each a platform's manifest (or a nested index),
    /// here only if that platform was pulled.
    pub entries: Vec<Digest>,
}

/// [`referenced`], with a manifest's needs apart from an index's entries.
pub fn references(manifest: &[u8]) -> References {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return References::default();
    };
    let descriptor = |v: &serde_json::Value| {
        v.get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse().ok())
    };
    let list = |key: &str| -> Vec<Digest> {
        value
            .get(key)
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter_map(descriptor)
            .collect()
    };
    let mut needed: Vec<Digest> = value
        .get("config")
        .and_then(descriptor)
        .into_iter()
        .collect();
    needed.extend(list("layers"));
    References {
        is_index: value
            .get("manifests")
            .is_some_and(serde_json::Value::is_array),
        needed,
        entries: list("manifests"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{ImageRecord, Lease};

    #[test]
    fn open_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, broken) = {
            let store = Store::open(dir.path()).unwrap();
            let layer = store.content.write_bytes(b"layer").unwrap();
            let manifest =
                format!(r#"{{"config":{{"digest":"{layer}"}},"layers":[{{"digest":"{layer}"}}]}}"#);
            let kept = store.content.write_bytes(manifest.as_bytes()).unwrap();
            let missing = Digest::of(b"never written");
            let manifest = format!(
                r#"{{"config":{{"digest":"{layer}"}},"layers":[{{"digest":"{missing}"}}]}}"#
            );
            let broken = store.content.write_bytes(manifest.as_bytes()).unwrap();
            for (name, target) in [("kept", &kept), ("broken", &broken)] {
                let record = ImageRecord {
                    target: target.clone(),
                    media_type: "m".into(),
                    tagged: 1,
                };
                store.meta.put_image(name, &record).unwrap();
            }
            store
                .meta
                .put_lease(&Lease {
                    id: "dead".into(),
                    digests: vec![layer],
                })
                .unwrap();
            store.meta.flush().unwrap();
            (kept, broken)
        };
        fs::write(dir.path().join("content/ingest/999-1"), b"half a layer").unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = store.recovery();
        assert_eq!(
            (r.ingest_files, r.dangling_tags.as_slice(), r.stale_leases),
            (1, ["broken".to_owned()].as_slice(), 1)
        );
        assert_eq!(store.meta.image("kept").unwrap().unwrap().target, kept);
        assert!(
            store.content.has(&broken),
            "blobs are collected by prune, not by recovery"
        );
    }

    /// A pending layer counts while its snapshot is there; without it the
    /// image is incomplete and its tag goes.
    #[test]
    fn a_pending_layer_is_whole_with_its_snapshot_only() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let config = store.content.write_bytes(b"{}").unwrap();
            for (name, tar) in [("kept", "tar one"), ("lost", "tar two")] {
                let layer = Digest::of(tar.as_bytes());
                store.content.set_pending(&layer, 7).unwrap();
                if name == "kept" {
                    fs::create_dir_all(store.snapshot_dir(&layer)).unwrap();
                }
                assert_eq!(store.available(&layer), name == "kept");
                let manifest = format!(
                    r#"{{"config":{{"digest":"{config}"}},"layers":[{{"digest":"{layer}"}}]}}"#
                );
                let target = store.content.write_bytes(manifest.as_bytes()).unwrap();
                let record = ImageRecord {
                    target,
                    media_type: "m".into(),
                    tagged: 1,
                };
                store.meta.put_image(name, &record).unwrap();
            }
            store.meta.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.recovery().dangling_tags, ["lost"]);
        assert!(store.meta.image("kept").unwrap().is_some());
    }

    /// An index whose other platforms were never pulled keeps its tag; one
    /// with no entry here, or a present entry missing a layer, does not.
    #[test]
    fn an_index_is_whole_with_the_entries_it_has() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let layer = store.content.write_bytes(b"layer").unwrap();
            let whole =
                format!(r#"{{"config":{{"digest":"{layer}"}},"layers":[{{"digest":"{layer}"}}]}}"#);
            let whole = store.content.write_bytes(whole.as_bytes()).unwrap();
            let lost = Digest::of(b"a layer never fetched");
            let broken =
                format!(r#"{{"config":{{"digest":"{layer}"}},"layers":[{{"digest":"{lost}"}}]}}"#);
            let broken = store.content.write_bytes(broken.as_bytes()).unwrap();
            let absent = Digest::of(b"a platform not pulled");
            let index = |entries: &[&Digest]| {
                let list: Vec<String> = entries
                    .iter()
                    .map(|d| format!(r#"{{"digest":"{d}"}}"#))
                    .collect();
                let text = format!(r#"{{"manifests":[{}]}}"#, list.join(","));
                store.content.write_bytes(text.as_bytes()).unwrap()
            };
            for (name, target) in [
                ("partial", index(&[&absent, &whole])),
                ("none-here", index(&[&absent])),
                ("damaged", index(&[&whole, &broken])),
            ] {
                let record = ImageRecord {
                    target,
                    media_type: "i".into(),
                    tagged: 1,
                };
                store.meta.put_image(name, &record).unwrap();
            }
            store.meta.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let mut dropped = store.recovery().dangling_tags.clone();
        dropped.sort();
        assert_eq!(dropped, ["damaged", "none-here"]);
        assert!(store.meta.image("partial").unwrap().is_some());
    }

    #[test]
    fn a_second_open_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let path = dir.path().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let second = Store::open(&path);
            tx.send(()).unwrap();
            second.map(|_| ())
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "second open must wait"
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("second open proceeds");
        waiter.join().unwrap().unwrap();
    }

    #[test]
    fn complete_walks_a_deep_index_chain_without_recursion() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = store.content.write_bytes(b"layer").unwrap();
        let manifest =
            format!(r#"{{"config":{{"digest":"{layer}"}},"layers":[{{"digest":"{layer}"}}]}}"#);
        let mut top = store.content.write_bytes(manifest.as_bytes()).unwrap();
        // Deep enough to overflow the 256 KiB stack below one frame per
        // level (each blob is synced: keep it small).
        for _ in 0..3000 {
            let index = format!(r#"{{"manifests":[{{"digest":"{top}"}}]}}"#);
            top = store.content.write_bytes(index.as_bytes()).unwrap();
        }
        let deep = top.clone();
        let checked = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || store.complete(&deep).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(checked);
    }
}
