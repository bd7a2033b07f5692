//! Blobs by digest under `content/blobs/sha256/<hex>`.
//!
//! A blob is written to `content/ingest/` while its digest is computed,
//! fsynced, checked against the expected digest, then renamed into place and
//! the directory fsynced: a blob path either holds exactly the bytes of its
//! digest or does not exist. Leftover ingest files (a crash, a kill) are
//! removed by [`ContentStore::recover`].
//!
//! A layer a build made may be *pending* instead (`content/pending/<hex>`,
//! holding the blob's size): an uncompressed layer whose bytes are the tar
//! of the snapshot of the same name, not written until something first
//! reads them (`kiln-image`'s `blobs` makes them, checked against the
//! digest). [`ContentStore::has`] and [`ContentStore::open_blob`] see
//! stored blobs only; [`crate::Store::available`] sees both.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::digest::{Digest, Hasher};

#[derive(Debug, Error)]
pub enum ContentError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("blob {0} is not in the store")]
    NotFound(Digest),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Mismatch { expected: Digest, actual: Digest },
}

type Result<T> = std::result::Result<T, ContentError>;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContentError + use<> {
    let path = path.to_owned();
    move |source| ContentError::Io {
        action,
        path,
        source,
    }
}

/// The blob store of one root.
#[derive(Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    pending: PathBuf,
}

/// Distinguishes concurrent ingest files of one process.
static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

impl ContentStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let blobs = dir.join("blobs/sha256");
        let ingest = dir.join("ingest");
        let pending = dir.join("pending");
        for d in [&blobs, &ingest, &pending] {
            fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        Ok(Self {
            blobs,
            ingest,
            pending,
        })
    }

    /// Removes unfinished writes left by a process that died. Call only
    /// while holding the root's lock. Returns how many were removed.
    pub fn recover(&self) -> Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.ingest).map_err(io_err("reading", &self.ingest))? {
            let path = entry.map_err(io_err("reading", &self.ingest))?.path();
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Where the blob `digest` lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The blob's size in bytes.
    pub fn size(&self, digest: &Digest) -> Result<u64> {
        match fs::metadata(self.path(digest)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::NotFound(digest.clone()))
            }
            Err(e) => Err(io_err("reading", &self.path(digest))(e)),
        }
    }

    /// Opens the blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ContentError::NotFound(digest.clone()),
            _ => io_err("opening", &path)(e),
        })
    }

    /// A whole (small) blob: manifests, configs.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let path = self.path(digest);
        self.open_blob(digest)?
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", &path))?;
        Ok(bytes)
    }

    /// Stores `bytes` and returns their digest.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        Ok(self.put_bytes(bytes)?.digest)
    }

    /// Stores `bytes`; says whether the blob is new.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Committed> {
        let mut w = self.writer()?;
        w.write_all(bytes).map_err(io_err("writing", &w.temp))?;
        w.commit(None)
    }

    /// A writer for a new blob; nothing is visible until [`BlobWriter::commit`].
    pub fn writer(&self) -> Result<BlobWriter> {
        let name = format!(
            "{}-{}",
            std::process::id(),
            INGEST_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let temp = self.ingest.join(name);
        let file = File::create(&temp).map_err(io_err("creating", &temp))?;
        Ok(BlobWriter {
            // Large writes: callers often copy in 8 KiB pieces.
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            temp,
            blobs: self.blobs.clone(),
            hasher: Hasher::default(),
            size: 0,
        })
    }

    /// Deletes a blob (no error when absent).
    pub fn delete(&self, digest: &Digest) -> Result<()> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Every blob with its size.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let mut blobs = Vec::new();
        for (digest, path) in digests_in(&self.blobs)? {
            let size = fs::metadata(&path).map_err(io_err("reading", &path))?.len();
            blobs.push((digest, size));
        }
        blobs.sort();
        Ok(blobs)
    }

    /// The size of the pending blob `digest` (see the module's text), or
    /// `None` when it is not pending (stored, or unknown).
    pub fn pending(&self, digest: &Digest) -> Option<u64> {
        let text = fs::read_to_string(self.pending.join(digest.hex())).ok()?;
        text.trim().parse().ok()
    }

    /// Records `digest` as pending, `size` bytes once made: written aside,
    /// then renamed, so a marker is whole or absent. The caller has put the
    /// snapshot of that name in place first.
    pub fn set_pending(&self, digest: &Digest, size: u64) -> Result<()> {
        let temp = self.ingest.join(format!(
            "{}-{}-pending",
            std::process::id(),
            INGEST_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&temp, size.to_string()).map_err(io_err("writing", &temp))?;
        let target = self.pending.join(digest.hex());
        fs::rename(&temp, &target).map_err(|e| {
            let _ = fs::remove_file(&temp);
            io_err("renaming", &target)(e)
        })
    }

    /// Forgets that `digest` is pending (no error when it is not): its blob
    /// is stored now, or the layer is deleted.
    pub fn clear_pending(&self, digest: &Digest) -> Result<()> {
        let path = self.pending.join(digest.hex());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Every pending blob with its size once made.
    pub fn list_pending(&self) -> Result<Vec<(Digest, u64)>> {
        let mut pending: Vec<_> = digests_in(&self.pending)?
            .into_iter()
            .filter_map(|(digest, _)| self.pending(&digest).map(|size| (digest, size)))
            .collect();
        pending.sort();
        Ok(pending)
    }
}

/// The entries of `dir` named by a digest's hex, with their paths (others,
/// such as a stray temp file, are skipped).
fn digests_in(dir: &Path) -> Result<Vec<(Digest, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let entry = entry.map_err(io_err("reading", dir))?;
        if let Some(digest) = entry
            .file_name()
            .to_str()
            .and_then(|h| format!("sha256:{h}").parse().ok())
        {
            found.push((digest, entry.path()));
        }
    }
    Ok(found)
}

/// A blob written by [`BlobWriter::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub digest: Digest,
    pub size: u64,
    /// The store did not have the blob before.
    pub new: bool,
}

/// A blob being written: bytes go to a temp file and through SHA-256.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<BufWriter<File>>,
    temp: PathBuf,
    blobs: PathBuf,
    hasher: Hasher,
    size: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already committed"))?;
        // The blob's path in the error: "No space left on device" alone
        // does not say which disk filled.
        let temp = &self.temp;
        let n = file.write(buf).map_err(|e| with_path(e, temp))?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let temp = &self.temp;
        self.file
            .as_mut()
            .map_or(Ok(()), |f| f.flush().map_err(|e| with_path(e, temp)))
    }
}

/// `e` (same kind) saying which file was being written.
fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("writing {}: {e}", path.display()))
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the blob durable and visible; fails (and keeps nothing) when
    /// `expected` is given and differs.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<Committed> {
        let file = self.file.take().expect("commit consumes the writer");
        let file = file
            .into_inner()
            .map_err(|e| io_err("writing", &self.temp)(e.into_error()))?;
        file.sync_all().map_err(io_err("syncing", &self.temp))?;
        drop(file);
        let digest = std::mem::take(&mut self.hasher).finish();
        if let Some(expected) = expected.filter(|e| **e != digest) {
            return Err(ContentError::Mismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        let target = self.blobs.join(digest.hex());
        let new = !target.exists();
        if new {
            fs::rename(&self.temp, &target).map_err(io_err("renaming", &target))?;
            File::open(&self.blobs)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing", &self.blobs))?;
            self.temp = PathBuf::new();
        }
        Ok(Committed {
            digest,
            size: self.size,
            new,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = store.write_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(store.read(&d).unwrap(), b"hello");
        assert_eq!(store.size(&d).unwrap(), 5);
        assert_eq!(store.list().unwrap(), [(d.clone(), 5)]);

        let mut w = store.writer().unwrap();
        w.write_all(b"other").unwrap();
        let e = w.commit(Some(&d)).unwrap_err();
        assert!(matches!(e, ContentError::Mismatch { .. }), "{e}");
        assert_eq!(
            fs::read_dir(dir.path().join("ingest")).unwrap().count(),
            0,
            "a failed write leaves nothing"
        );
        assert_eq!(store.list().unwrap().len(), 1);

        let w = store.writer().unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);

        store.delete(&d).unwrap();
        assert!(matches!(store.read(&d), Err(ContentError::NotFound(_))));
    }

    #[test]
    fn a_pending_blob_is_listed_apart_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"a layer's tar");
        assert_eq!(store.pending(&d), None);
        store.set_pending(&d, 13).unwrap();
        assert_eq!(store.pending(&d), Some(13));
        assert_eq!(store.list_pending().unwrap(), [(d.clone(), 13)]);
        assert!(!store.has(&d), "not stored");
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.open_blob(&d),
            Err(ContentError::NotFound(_))
        ));
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        store.clear_pending(&d).unwrap();
        store.clear_pending(&d).unwrap();
        assert!(store.list_pending().unwrap().is_empty());
    }

    #[test]
    fn recover_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("ingest/123-0"), b"partial").unwrap();
        assert_eq!(store.recover().unwrap(), 1);
        assert_eq!(store.recover().unwrap(), 0);
    }
}
