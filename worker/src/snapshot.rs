//! Layers unpacked once, as directories that overlayfs stacks as lowerdirs
//! (`<root>/snapshots/<name>`).
//!
//! A snapshot is named by its layer's diff ID (the digest of the
//! uncompressed tar), cut to 16 hex digits: short names keep deep images
//! within one page of overlay mount options, and the same layer stored with
//! another compression is unpacked only once. A snapshot is unpacked into a
//! `tmp-` directory and renamed into place, so a snapshot directory is
//! always complete; leftovers of a crash are removed by [`Snapshots::recover`].

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::layer::{self, LayerError, compression::decompressed};

/// Hex digits of the diff ID in a snapshot's name.
const NAME_LEN: usize = 16;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The snapshot directory of one store root.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

impl Snapshots {
    pub fn open(dir: impl Into<PathBuf>) -> layer::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| LayerError::Io {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The snapshots under `dir`, which may not exist yet (for reading
    /// names and removing; [`Snapshots::open`] creates it).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The snapshot name of the layer with diff ID `diff_id` (`sha256:<hex>`).
    pub fn name(diff_id: &str) -> &str {
        let hex = diff_id.strip_prefix("sha256:").unwrap_or(diff_id);
        &hex[..hex.len().min(NAME_LEN)]
    }

    /// The directory for the layer with diff ID `diff_id`.
    pub fn path(&self, diff_id: &str) -> PathBuf {
        self.dir.join(Self::name(diff_id))
    }

    /// The names of the snapshots there are (not those being unpacked).
    pub fn names(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with("tmp-"))
            .collect()
    }

    /// Whether the layer is unpacked.
    pub fn has(&self, diff_id: &str) -> bool {
        self.path(diff_id).is_dir()
    }

    /// The layer's directory, unpacking `blob` (compressed or not) first
    /// when it is not there yet.
    pub fn ensure(&self, diff_id: &str, blob: impl Read) -> layer::Result<PathBuf> {
        let target = self.path(diff_id);
        if target.is_dir() {
            return Ok(target);
        }
        let tmp = self.dir.join(format!(
            "tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| LayerError::Io {
                action,
                path,
                source,
            }
        };
        fs::create_dir(&tmp).map_err(io("creating", &tmp))?;
        let result = decompressed(blob)
            .map_err(LayerError::Tar)
            .and_then(|reader| layer::unpack(reader, &tmp));
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match fs::rename(&tmp, &target) {
            Ok(()) => Ok(target),
            // Unpacked meanwhile by someone else: theirs is as good.
            Err(_) if target.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(target)
            }
            Err(e) => Err(io("renaming", &target)(e)),
        }
    }

    /// Takes `dir` — a step's upperdir, which is the layer `diff_id`
    /// already unpacked, whiteouts in overlay form — as that layer's
    /// snapshot, so the next step need not unpack the layer again (as
    /// Docker's overlay2 driver does). Moved, not copied: `dir` must be on
    /// the snapshots' filesystem. Does nothing when the snapshot exists.
    pub fn adopt(&self, diff_id: &str, dir: &Path) -> layer::Result<()> {
        let target = self.path(diff_id);
        if target.is_dir() {
            return Ok(());
        }
        match fs::rename(dir, &target) {
            Err(_) if target.is_dir() => Ok(()),
            Err(source) => Err(LayerError::Io {
                action: "adopting",
                path: target,
                source,
            }),
            Ok(()) => Ok(()),
        }
    }

    /// Removes unfinished unpacks of processes that died. Returns how many
    /// there were.
    pub fn recover(&self) -> layer::Result<usize> {
        let mut removed = 0;
        let entries = fs::read_dir(&self.dir).map_err(|source| LayerError::Io {
            action: "reading",
            path: self.dir.clone(),
            source,
        })?;
        // This process's own are in use by its other builds (kilnd runs
        // several at once); only a dead process's are left over.
        let ours = format!("tmp-{}-", std::process::id());
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp-") && !name.starts_with(&ours) {
                let _ = fs::remove_dir_all(entry.path());
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes a snapshot (no error when absent).
    pub fn remove(&self, diff_id: &str) -> layer::Result<()> {
        let path = self.path(diff_id);
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LayerError::Io {
                action: "removing",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/motd", &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacked_once_under_a_short_name() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path().join("snapshots")).unwrap();
        let diff_id = format!("sha256:{}", "ab".repeat(32));
        let tar = layer_tar();
        let path = snaps.ensure(&diff_id, tar.as_slice()).unwrap();
        assert_eq!(path.file_name().unwrap().len(), NAME_LEN);
        assert_eq!(fs::read_to_string(path.join("etc/motd")).unwrap(), "hi");
        // Already there: the blob is not even read.
        assert_eq!(snaps.ensure(&diff_id, std::io::empty()).unwrap(), path);
        assert!(snaps.has(&diff_id));
        snaps.remove(&diff_id).unwrap();
        assert!(!snaps.has(&diff_id));
    }

    #[test]
    fn a_bad_layer_leaves_nothing_and_leftovers_are_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path().join("snapshots")).unwrap();
        let mut bad = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        bad.append_link(&mut h, "x", "../../etc/passwd").unwrap();
        let diff_id = format!("sha256:{}", "cd".repeat(32));
        assert!(
            snaps
                .ensure(&diff_id, bad.into_inner().unwrap().as_slice())
                .is_err()
        );
        assert_eq!(
            fs::read_dir(dir.path().join("snapshots")).unwrap().count(),
            0
        );
        fs::create_dir(dir.path().join("snapshots/tmp-1-1")).unwrap();
        assert_eq!(snaps.recover().unwrap(), 1);
    }
}
