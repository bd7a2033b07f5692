//! Layer blobs that are not written until something reads them.
//!
//! A step's result is its snapshot ([`record`]): the tar of the step's
//! upperdir is hashed on its way to nowhere — its diff ID, which is also
//! the digest of the layer's uncompressed blob — and the upperdir becomes
//! the layer's snapshot. The store marks that blob *pending* (see
//! `kiln_cache::content`): a local build writes each byte once, into the
//! snapshot, and never a blob.
//!
//! What reads a layer makes what it needs from the snapshot: [`open`] the
//! uncompressed blob (made, checked against its digest and kept for the
//! next reader), [`tar_into`] the tar streamed into a writer without
//! keeping it (`compress::converted` encodes it straight from the
//! snapshot for a push). The tar of a directory is the same bytes every
//! time (entries sorted, no access times), and every production is
//! checked against the digest: a snapshot changed since cannot pass for
//! the layer.
//!
//! A layer's snapshot may be removed only with the layer itself while its
//! blob is pending (`rmi`, `prune` keep to that); [`forget`] drops the mark.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use kiln_cache::{ContentError, Digest, Hasher, Store};
use kiln_worker::snapshot::Snapshots;

use crate::compress::{Kind, LayerCompression};
use crate::image::{ImageError, Layer, Result};

/// Records the directory `upper` (a step's changes, whiteouts in overlay
/// form) as an uncompressed layer: hashed, then taken as the layer's
/// snapshot, its blob pending. When the layer is here already, `upper`
/// becomes its snapshot only if it has none (else the caller discards
/// it); when a snapshot of that name exists
/// without a blob (a pulled layer unpacked, say), the blob is written
/// from `upper` now, as its snapshot can not be trusted to make these
/// very bytes.
pub fn record(store: &Store, snapshots: &Snapshots, upper: &Path) -> Result<Layer> {
    let mut measure = Measure::default();
    kiln_worker::layer::diff(upper, &mut measure).map_err(|e| archive_error(upper, &e))?;
    let (digest, size) = measure.finish();
    let layer = Layer {
        blob: digest.clone(),
        diff_id: digest.clone(),
        media_type: LayerCompression::of(Kind::Uncompressed)
            .media_type()
            .to_owned(),
        size,
        annotations: std::collections::BTreeMap::new(),
    };
    let adopted = snapshots.adopt(&digest.to_string(), upper);
    if store.available(&digest) {
        // Here already; `upper` is its snapshot now if it had none.
        return Ok(layer);
    }
    if adopted.is_ok() && !upper.exists() {
        store.content.set_pending(&digest, size)?;
        return Ok(layer);
    }
    if let Err(e) = adopted {
        tracing::debug!("keeping a step's upperdir as a snapshot: {e}");
    }
    crate::compress::store_layer(store, upper, LayerCompression::of(Kind::Uncompressed), None)
}

/// The size of the blob `digest`, stored or pending.
pub fn size(store: &Store, digest: &Digest) -> Result<u64> {
    match store.content.size(digest) {
        Err(ContentError::NotFound(_)) => store
            .content
            .pending(digest)
            .ok_or_else(|| ContentError::NotFound(digest.clone()).into()),
        stored => Ok(stored?),
    }
}

/// Opens the blob `digest`, making it first from its snapshot when it is
/// pending.
pub fn open(store: &Store, digest: &Digest) -> Result<File> {
    match store.content.open_blob(digest) {
        Err(ContentError::NotFound(_)) if store.content.pending(digest).is_some() => {
            make(store, digest)?;
            Ok(store.content.open_blob(digest)?)
        }
        opened => Ok(opened?),
    }
}

/// Writes the pending blob `digest` from its snapshot into the store
/// (checked: nothing is kept unless the bytes are that digest), and drops
/// the mark. Two makers at once both succeed; the blob is stored once.
pub fn make(store: &Store, digest: &Digest) -> Result<()> {
    let writer = tar_into(store, digest, store.content.writer()?)?;
    writer.commit(Some(digest))?;
    Ok(store.content.clear_pending(digest)?)
}

/// Streams the tar of the pending layer `digest` from its snapshot into
/// `out`; fails when the bytes were not that digest (after writing them:
/// the caller keeps nothing then).
pub fn tar_into<W: Write>(store: &Store, digest: &Digest, out: W) -> Result<W> {
    let dir = store.snapshot_dir(digest);
    if !dir.is_dir() {
        return Err(ImageError::LayerLost {
            layer: digest.clone(),
            snapshot: dir,
        });
    }
    let mut hashing = crate::compress::Hashing::new(out);
    kiln_worker::layer::diff(&dir, &mut hashing).map_err(|e| archive_error(&dir, &e))?;
    let (out, actual) = hashing.finish();
    if actual != *digest {
        return Err(ImageError::SnapshotChanged {
            layer: digest.clone(),
            snapshot: dir,
            actual,
        });
    }
    Ok(out)
}

/// Runs `read` on the uncompressed tar of the layer `blob`: the stored
/// blob decompressed, or a pending layer's tar made from its snapshot on a
/// thread as `read` takes it (nothing written to disk). When `read`
/// fails, its error is the result (the maker then meets a closed pipe);
/// when it succeeds, a production error (the snapshot changed, say) still
/// is.
pub fn with_tar<T>(
    store: &Store,
    blob: &Digest,
    read: impl FnOnce(&mut dyn io::Read) -> Result<T>,
) -> Result<T> {
    let reading = |source| ImageError::Io {
        action: "reading layer",
        path: store.content.path(blob),
        source,
    };
    if !is_pending(store, blob) {
        let file = store.content.open_blob(blob)?;
        let mut tar = kiln_worker::layer::compression::decompressed(file).map_err(reading)?;
        return read(&mut tar);
    }
    let (mut reader, writer) = io::pipe().map_err(reading)?;
    std::thread::scope(|scope| {
        let made = scope.spawn(move || tar_into(store, blob, writer).map(drop));
        let result = read(&mut reader);
        // Unblocks the maker when `read` stopped early.
        drop(reader);
        match made.join() {
            Ok(made) => result.and_then(|out| made.map(|()| out)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Whether the blob `digest` is pending (not stored; made when read).
pub fn is_pending(store: &Store, digest: &Digest) -> bool {
    !store.content.has(digest) && store.content.pending(digest).is_some()
}

/// Drops the pending mark of `digest` (its layer is being deleted; the
/// caller removes the snapshot after).
pub fn forget(store: &Store, digest: &Digest) -> Result<()> {
    Ok(store.content.clear_pending(digest)?)
}

fn archive_error(dir: &Path, e: &kiln_worker::layer::LayerError) -> ImageError {
    ImageError::Archive {
        path: dir.to_owned(),
        reason: e.to_string(),
    }
}

/// A writer that keeps only the digest and the length of what it is given.
#[derive(Default)]
struct Measure {
    hasher: Hasher,
    size: u64,
}

impl Measure {
    fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.size)
    }
}

impl Write for Measure {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Read as _;

    use super::*;

    /// A store and a step's upperdir: a file, a directory, a whiteout-free
    /// change.
    fn setup() -> (tempfile::TempDir, Store, Snapshots, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let snapshots = Snapshots::open(store.snapshots_dir()).unwrap();
        let upper = store.root().join("steps/upper");
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/motd"), vec![b'x'; 100_000]).unwrap();
        (dir, store, snapshots, upper)
    }

    fn tar_of(dir: &Path) -> Vec<u8> {
        kiln_worker::layer::diff(dir, Vec::new()).unwrap()
    }

    #[test]
    fn a_recorded_layer_is_its_snapshot_until_read_then_its_blob() {
        let (_dir, store, snapshots, upper) = setup();
        let expected = tar_of(&upper);
        let layer = record(&store, &snapshots, &upper).unwrap();
        assert_eq!(layer.diff_id, Digest::of(&expected));
        assert_eq!(layer.blob, layer.diff_id);
        assert_eq!(layer.size, expected.len() as u64);
        assert!(!upper.exists(), "the upperdir became the snapshot");
        assert!(is_pending(&store, &layer.blob) && !store.content.has(&layer.blob));
        assert!(store.available(&layer.blob));
        assert_eq!(size(&store, &layer.blob).unwrap(), layer.size);

        // Streamed without being kept.
        let streamed = with_tar(&store, &layer.blob, |r| {
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes).unwrap();
            Ok(bytes)
        })
        .unwrap();
        assert_eq!(streamed, expected);
        assert!(is_pending(&store, &layer.blob));

        // Opened: made, kept, the mark gone.
        let mut bytes = Vec::new();
        open(&store, &layer.blob)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes, expected);
        assert!(store.content.has(&layer.blob) && !is_pending(&store, &layer.blob));
        assert_eq!(store.content.pending(&layer.blob), None);
    }

    #[test]
    fn a_changed_or_lost_snapshot_makes_no_blob() {
        let (_dir, store, snapshots, upper) = setup();
        let layer = record(&store, &snapshots, &upper).unwrap();
        let snapshot = store.snapshot_dir(&layer.blob);
        fs::write(snapshot.join("etc/motd"), b"tampered").unwrap();
        let e = open(&store, &layer.blob).unwrap_err();
        assert!(matches!(e, ImageError::SnapshotChanged { .. }), "{e}");
        let e = with_tar(&store, &layer.blob, |r| {
            std::io::copy(r, &mut std::io::sink()).unwrap();
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(e, ImageError::SnapshotChanged { .. }), "{e}");
        assert!(!store.content.has(&layer.blob), "nothing kept");
        assert_eq!(
            fs::read_dir(store.root().join("content/ingest"))
                .unwrap()
                .count(),
            0
        );

        fs::remove_dir_all(&snapshot).unwrap();
        assert!(!store.available(&layer.blob));
        let e = open(&store, &layer.blob).unwrap_err();
        assert!(matches!(e, ImageError::LayerLost { .. }), "{e}");
        assert!(e.to_string().contains("rebuild the image"), "{e}");
    }

    #[test]
    fn a_layer_here_already_leaves_the_upperdir_to_the_caller() {
        let (_dir, store, snapshots, upper) = setup();
        let first = record(&store, &snapshots, &upper).unwrap();
        // The same change again (mtimes and all).
        let again = store.root().join("steps/again");
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(store.snapshot_dir(&first.blob))
            .arg(&again)
            .status()
            .unwrap();
        assert!(copied.success());
        assert_eq!(record(&store, &snapshots, &again).unwrap(), first);
        assert!(again.exists(), "not taken: the layer is here");

        // A snapshot of that name made otherwise (a pulled layer unpacked)
        // does not stand for the blob: the blob is written now.
        let (_dir2, store2, snapshots2, upper2) = setup();
        let tar = tar_of(&upper2);
        snapshots2
            .ensure(&Digest::of(&tar).to_string(), tar.as_slice())
            .unwrap();
        let layer = record(&store2, &snapshots2, &upper2).unwrap();
        assert!(store2.content.has(&layer.blob) && !is_pending(&store2, &layer.blob));
    }
}
