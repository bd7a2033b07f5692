//! What a prune deletes (`kiln prune`, kilnd's `--keep-storage`).
//!
//! Three things take a store's disk: blobs, snapshots (layers unpacked for
//! overlayfs) and cache mounts. Blobs no tag or lease reaches are build
//! cache. A snapshot is only a faster form of a stored layer: it is made
//! again from the blob when a step needs it — except the snapshot of a
//! layer whose blob is pending (`crate::blobs`: a build's layer not yet
//! read), which *is* the layer and goes only with it. So a prune deletes,
//! in order: unused blobs (pending ones too), least recently used first,
//! with the step records that name them; every snapshot whose layer is no
//! longer stored (whatever the bound: nothing can use it); then, while
//! still over the bound, the least recently made snapshots of stored
//! layers, and last the least recently used cache mounts (what a step
//! would fetch again). `all` empties every snapshot and cache mount but
//! those of pending layers still used.
//! The caller holds collection apart from builds (the root's lock, or
//! kilnd's collector), so nothing deleted here is in use.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use kiln_cache::{Digest, Store};
use kiln_worker::snapshot::Snapshots;
use serde::Serialize;

use super::{allocated, freed_by_removing, reachable, remove_tree, tree_size, usage_of};
use crate::image::{self, Result};

/// What `kiln prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub deleted: Vec<Digest>,
    pub reclaimed: u64,
}

/// `kiln prune [-a] [--keep-storage N]`: deletes blobs no tag or lease
/// uses (build-cache layers among them), least recently used first, until
/// kiln's disk use is at most `keep` bytes (all of them when `keep` is
/// `None`); snapshots of layers no longer stored; then, over the bound,
/// the least recently made snapshots, then the least recently used cache
/// mounts. Tagged and leased blobs are never touched, so
/// the bound may not be reachable. `all` also empties every snapshot and
/// `RUN --mount=type=cache` directory (as `docker builder prune -a`
/// does): the next build starts cold.
pub fn prune(store: &Store, keep: Option<u64>, all: bool) -> Result<Pruned> {
    let live = reachable(store)?;
    // The whole root is walked only when there is a bound to meet.
    let mut total = match keep {
        Some(_) => usage_of(store, &live)?.total(),
        None => 0,
    };
    let over = |total: u64| keep.is_some_and(|k| total > k);
    let mut pruned = Pruned::default();
    let blobs = prune_blobs(store, &live, keep.is_some(), &over, &mut total, &mut pruned)?;

    let snapshots = Snapshots::new(store.snapshots_dir());
    // A pending blob's snapshot is the layer itself: it goes with the blob.
    let pinned: BTreeSet<String> = blobs
        .iter()
        .filter(|d| crate::blobs::is_pending(store, d))
        .map(|d| d.hex().to_owned())
        .collect();
    let stored = stored_layers(store, &blobs)?;
    let mut kept: Vec<(i64, String)> = Vec::new();
    for name in snapshots.names() {
        if pinned.contains(&name) {
            continue;
        }
        if stored.contains(&name) {
            // The change time: when it was renamed into place (its mtime
            // is the layer's own).
            let made =
                std::fs::symlink_metadata(snapshots.dir_named(&name)).map_or(0, |m| m.ctime());
            kept.push((made, name));
            continue;
        }
        discard_counted(&snapshots, &name, &mut total, &mut pruned)?;
    }
    kept.sort();
    for (_, name) in kept {
        if !over(total) {
            break;
        }
        discard_counted(&snapshots, &name, &mut total, &mut pruned)?;
    }
    store.meta.flush()?;
    if over(total) {
        for dir in caches_least_recently_used_first(&store.root().join("cache-mounts")) {
            if !over(total) {
                break;
            }
            remove_counted(&dir, &mut total, &mut pruned)?;
        }
    }
    if all {
        empty(store, &snapshots, &pinned, &mut total, &mut pruned)?;
    }
    Ok(pruned)
}

/// Deletes blobs no tag or lease uses, least recently used first, with
/// the step records that name them (pending ones: their marks), while
/// over the bound (every one with no bound). The blobs left, stored or
/// pending.
fn prune_blobs(
    store: &Store,
    live: &BTreeSet<Digest>,
    bounded: bool,
    over: &dyn Fn(u64) -> bool,
    total: &mut u64,
    pruned: &mut Pruned,
) -> Result<BTreeSet<Digest>> {
    let mut blobs: BTreeSet<Digest> = store.content.list()?.into_iter().map(|(d, _)| d).collect();
    blobs.extend(store.content.list_pending()?.into_iter().map(|(d, _)| d));
    let mut unused: Vec<(u64, Digest, u64)> = Vec::new();
    for digest in &blobs {
        if !live.contains(digest) {
            let used = store.meta.last_used(digest)?.unwrap_or(0);
            // A pending blob takes nothing yet: its snapshot is counted
            // when it goes.
            let size = allocated(&store.content.path(digest));
            unused.push((used, digest.clone(), size));
        }
    }
    unused.sort();
    for (_, digest, size) in unused {
        if bounded && !over(*total) {
            break;
        }
        store.content.delete(&digest)?;
        store.content.clear_pending(&digest)?;
        store.meta.forget(&digest)?;
        *total = total.saturating_sub(size);
        pruned.reclaimed += size;
        blobs.remove(&digest);
        pruned.deleted.push(digest);
    }
    Ok(blobs)
}

/// `prune -a`: every snapshot but the `pinned` ones (layers whose blob
/// is pending) and every cache mount.
fn empty(
    store: &Store,
    snapshots: &Snapshots,
    pinned: &BTreeSet<String>,
    total: &mut u64,
    pruned: &mut Pruned,
) -> Result<()> {
    for name in snapshots.names() {
        if !pinned.contains(&name) {
            discard_counted(snapshots, &name, total, pruned)?;
        }
    }
    for dir in ["snapshots", "cache-mounts"] {
        let dir = store.root().join(dir);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(dir.ends_with("snapshots") && pinned.contains(&name)) {
                remove_counted(&entry.path(), total, pruned)?;
            }
        }
    }
    Ok(())
}

/// The `RUN --mount=type=cache` directories under `dir`, least recently
/// used first (by their lock file's mtime, set at each use).
fn caches_least_recently_used_first(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut caches: Vec<(SystemTime, std::path::PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .map(|p| {
            let mut lock = p.clone().into_os_string();
            lock.push(".lock");
            let used = std::fs::metadata(&lock)
                .or_else(|_| std::fs::metadata(&p))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (used, p)
        })
        .collect();
    caches.sort();
    caches.into_iter().map(|(_, p)| p).collect()
}

/// Removes a snapshot or a cache, counting what it held.
fn remove_counted(dir: &std::path::Path, total: &mut u64, pruned: &mut Pruned) -> Result<()> {
    let size = tree_size(dir);
    remove_tree(dir)?;
    *total = total.saturating_sub(size);
    pruned.reclaimed += size;
    Ok(())
}

/// Removes the snapshot `name` (out of its name first: see
/// [`Snapshots::discard`]), counting what it held.
fn discard_counted(
    snapshots: &Snapshots,
    name: &str,
    total: &mut u64,
    pruned: &mut Pruned,
) -> Result<()> {
    let size = freed_by_removing(&snapshots.dir_named(name));
    snapshots.discard(name)?;
    *total = total.saturating_sub(size);
    pruned.reclaimed += size;
    Ok(())
}

/// The snapshot names of every stored layer (`blobs`: the blobs there
/// are) whose diff ID is known: from step records (those of deleted blobs
/// are forgotten here), from tagged images' configs, and uncompressed
/// blobs (a digest that is its own diff ID).
fn stored_layers(store: &Store, blobs: &BTreeSet<Digest>) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let mut add = |diff_id: &str| names.insert(Snapshots::name(diff_id).to_owned());
    for (key, record) in store.meta.cache_records()? {
        if blobs.contains(&record.blob) {
            add(&record.diff_id.to_string());
        } else {
            store.meta.remove_cache_record(&key)?;
        }
    }
    for (_, record) in store.meta.images()? {
        // Every platform of a multi-platform image here is live: a build
        // for another platform unpacks its layers too.
        for image in image::index::present_images(store, &record.target).unwrap_or_default() {
            for diff_id in &image.image.config.rootfs.diff_ids {
                add(diff_id);
            }
        }
    }
    for digest in blobs {
        add(&digest.to_string());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::remove;

    /// A store an older kiln filled: a tag on indexes nested thousands
    /// deep (no load refuses it any more). Listing, rmi, prune and a
    /// reopen go on, on a thread with tokio's 2 MiB of stack.
    #[test]
    fn a_deep_index_already_stored_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let s = Store::open(&root).unwrap();
        let tarball = dir.path().join("rootfs.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
        let mut header = tar::Header::new_ustar();
        header.set_size(3);
        header.set_mode(0o644);
        tar.append_data(&mut header, "hi", &b"hi\n"[..]).unwrap();
        tar.finish().unwrap();
        crate::archive::import(&s, &tarball, "base:1", 1, None).unwrap();
        let (_, base) = image::resolve(&s, "base:1").unwrap();
        let mut top = base.manifest_digest.clone();
        for _ in 0..3000 {
            let index = format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{top}","size":1}}]}}"#,
                image::OCI_INDEX,
                image::OCI_INDEX
            );
            top = s.content.write_bytes(index.as_bytes()).unwrap();
        }
        image::tag(&s, "docker.io/library/deep:1", &top, image::OCI_INDEX).unwrap();
        drop(s);
        let run = move || {
            // Recovery walks every tag's blobs.
            let s = Store::open(&root).unwrap();
            let err = image::resolve(&s, "deep:1").unwrap_err().to_string();
            assert!(
                err.ends_with("indexes nested more than 16 deep (the limit)"),
                "{err}"
            );
            let listed = crate::images::list(&s).unwrap();
            assert_eq!(listed.len(), 1, "the readable image is still listed");
            remove(&s, "deep:1").unwrap();
            let pruned = prune(&s, None, false).unwrap();
            assert!(pruned.deleted.len() >= 3000, "the indexes are collected");
            assert!(image::resolve(&s, "base:1").is_ok());
            drop(s);
            Store::open(&root).unwrap();
        };
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
    }

    /// A snapshot directory holding 64 KiB.
    fn unpacked(snapshots: &Snapshots, diff_id: &str) {
        let dir = snapshots.path(diff_id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data"), vec![3u8; 64 << 10]).unwrap();
    }

    #[test]
    fn snapshots_go_with_their_layers_and_over_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s")).unwrap();
        let snapshots = Snapshots::open(s.snapshots_dir()).unwrap();
        let tarball = dir.path().join("rootfs.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
        let mut header = tar::Header::new_ustar();
        header.set_size(6);
        header.set_mode(0o644);
        tar.append_data(&mut header, "hello", &b"hello\n"[..])
            .unwrap();
        tar.finish().unwrap();
        crate::archive::import(&s, &tarball, "base:1", 1, None).unwrap();
        let (_, base) = image::resolve(&s, "base:1").unwrap();
        let tagged = base.config.rootfs.diff_ids[0].clone();
        unpacked(&snapshots, &tagged);
        // A step's layer, compressed: its snapshot is named by its diff ID.
        let blob = s.content.write_bytes(b"a gzip layer").unwrap();
        let step = Digest::of(b"its uncompressed tar");
        let record = kiln_cache::CacheRecord {
            blob: blob.clone(),
            diff_id: step.clone(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: 12,
            created: 1,
            annotations: std::collections::BTreeMap::new(),
        };
        s.meta.put_cache_record("step", &record).unwrap();
        unpacked(&snapshots, &step.to_string());
        // Left by a layer deleted before: nothing names it.
        unpacked(&snapshots, "sha256:0123456789abcdef0123");

        let pruned = prune(&s, Some(u64::MAX), false).unwrap();
        assert!(pruned.deleted.is_empty() && pruned.reclaimed >= 64 << 10);
        let mut left = snapshots.names();
        left.sort();
        let mut expected = vec![
            Snapshots::name(&tagged).to_owned(),
            Snapshots::name(&step.to_string()).to_owned(),
        ];
        expected.sort();
        assert_eq!(left, expected, "only the orphan went");

        // Unbounded: the step's blob goes, with its record and snapshot.
        let pruned = prune(&s, None, false).unwrap();
        assert_eq!(pruned.deleted, [blob]);
        assert_eq!(s.meta.cache_record("step").unwrap(), None);
        assert_eq!(snapshots.names(), [Snapshots::name(&tagged)]);

        // Over a bound no unused blob meets: snapshots of tagged layers go
        // (they are made again from their blobs), then cache mounts, least
        // recently used first; the blobs stay.
        let caches = s.root().join("cache-mounts");
        for (name, used) in [("old", 100), ("new", 200)] {
            std::fs::create_dir_all(caches.join(name)).unwrap();
            std::fs::write(caches.join(name).join("data"), vec![4u8; 64 << 10]).unwrap();
            std::fs::File::create(caches.join(format!("{name}.lock")))
                .unwrap()
                .set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(used))
                .unwrap();
        }
        let total = crate::images::usage(&s).unwrap().total();
        let snapshot = tree_size(&snapshots.path(&tagged));
        prune(&s, Some(total - snapshot - 1), false).unwrap();
        assert!(snapshots.names().is_empty());
        assert!(
            !caches.join("old").exists(),
            "the least recently used cache"
        );
        assert!(caches.join("new").exists(), "only as much as needed");
        prune(&s, Some(0), false).unwrap();
        assert!(!caches.join("new").exists());
        assert!(s.complete(&base.manifest_digest).unwrap());

        // rmi deletes the snapshots of the layers it deletes.
        unpacked(&snapshots, &tagged);
        remove(&s, "base:1").unwrap();
        assert!(snapshots.names().is_empty());
    }
}
