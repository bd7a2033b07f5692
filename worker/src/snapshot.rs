//! Layers unpacked once, as directories that overlayfs stacks as lowerdirs
//! (`<root>/snapshots/<hex>`).
//!
//! A snapshot is named by its layer's diff ID (the digest of the
//! uncompressed tar), all 64 hex digits, and holds exactly what that digest
//! names: [`Snapshots::ensure`] hashes the stream while unpacking and keeps
//! nothing that does not match, so an image that claims another layer's
//! diff ID can never poison that layer's snapshot for other builds. The
//! same layer stored with another compression is unpacked only once. A
//! snapshot is unpacked into a `tmp-` directory and renamed into place, so a
//! snapshot directory is always complete; leftovers of a crash are removed
//! by [`Snapshots::recover`].
//!
//! Overlay mounts name lowerdirs relative to their common parent, and 64
//! digits each would not fit a deep image in the one page of mount options.
//! So, as Docker's overlay2 does, [`Snapshots::ensure`] hands out a short
//! link for each snapshot, `l/<first 16 digits>` → `../<64 digits>`: made
//! by kiln only, it points at the one snapshot whose full name it checked.
//! A second layer with the same 16 digits (a collision someone made) gets
//! its full path instead.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::layer::{self, LayerError, compression::decompressed};

/// Hex digits of a sha256 diff ID: a snapshot's name.
const NAME_LEN: usize = 64;

/// Hex digits of a snapshot's short link.
const LINK_LEN: usize = 16;
/// The directory of short links.
const LINKS: &str = "l";

/// The name of no snapshot: what [`Snapshots::name`] gives for a diff ID
/// that is not `sha256:<64 hex>` (such a layer is refused, never stored).
const INVALID: &str = "invalid-diff-id";

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The error of `action` failing on `path`, for `map_err`.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LayerError {
    let path = path.to_owned();
    move |source| LayerError::Io {
        action,
        path,
        source,
    }
}

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

    /// The snapshot name of the layer with diff ID `diff_id`
    /// (`sha256:<hex>`, or the bare hex of a name). Anything else — it
    /// comes from image configs — is a name no snapshot has, never a path.
    pub fn name(diff_id: &str) -> &str {
        let hex = diff_id.strip_prefix("sha256:").unwrap_or(diff_id);
        if hex.len() == NAME_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            hex
        } else {
            INVALID
        }
    }

    /// The directory for the layer with diff ID `diff_id`.
    pub fn path(&self, diff_id: &str) -> PathBuf {
        self.dir.join(Self::name(diff_id))
    }

    /// The directory of a snapshot listed by [`Snapshots::names`] (old
    /// stores' shorter names included, so collection can remove them).
    pub fn dir_named(&self, name: &str) -> PathBuf {
        self.dir
            .join(Path::new(name).file_name().unwrap_or_default())
    }

    fn valid(diff_id: &str) -> layer::Result<()> {
        match Self::name(diff_id) {
            INVALID => Err(LayerError::InvalidDiffId(diff_id.to_owned())),
            _ => Ok(()),
        }
    }

    /// The names of the snapshots there are (not those being unpacked).
    pub fn names(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with("tmp-") && name != LINKS)
            .collect()
    }

    /// Whether the layer is unpacked.
    pub fn has(&self, diff_id: &str) -> bool {
        self.path(diff_id).is_dir()
    }

    /// The layer's directory when it is unpacked already (no blob is
    /// needed then: any blob of that diff ID made it), else `None`.
    pub fn unpacked(&self, diff_id: &str) -> layer::Result<Option<PathBuf>> {
        Self::valid(diff_id)?;
        if !self.path(diff_id).is_dir() {
            return Ok(None);
        }
        self.short(diff_id).map(Some)
    }

    /// The layer's directory, unpacking `blob` (compressed or not) first
    /// when it is not there yet. The uncompressed stream must hash to
    /// `diff_id` ([`LayerError::DiffId`] when not; nothing is kept).
    pub fn ensure(&self, diff_id: &str, blob: impl Read) -> layer::Result<PathBuf> {
        if let Some(dir) = self.unpacked(diff_id)? {
            return Ok(dir);
        }
        let target = self.path(diff_id);
        let tmp = self.dir.join(format!(
            "tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&tmp).map_err(io_error("creating", &tmp))?;
        let result = decompressed(blob)
            .map_err(LayerError::Tar)
            .and_then(|reader| layer::unpack(reader, &tmp))
            .and_then(|unpacked| {
                let expected = format!("sha256:{}", Self::name(diff_id));
                match unpacked.diff_id == expected {
                    true => Ok(()),
                    false => Err(LayerError::DiffId {
                        expected,
                        actual: unpacked.diff_id,
                    }),
                }
            });
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match fs::rename(&tmp, &target) {
            Ok(()) => {}
            // Unpacked meanwhile by someone else: theirs is as good.
            Err(_) if target.is_dir() => {
                let _ = fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(io_error("renaming", &target)(e)),
        }
        self.short(diff_id)
    }

    /// The snapshot's short link (made when missing), or its full path when
    /// the link's name is another snapshot's.
    fn short(&self, diff_id: &str) -> layer::Result<PathBuf> {
        let name = Self::name(diff_id);
        let links = self.dir.join(LINKS);
        let link = links.join(&name[..LINK_LEN]);
        let wanted = Path::new("..").join(name);
        for _ in 0..2 {
            match fs::read_link(&link) {
                Ok(found) if found == wanted => return Ok(link),
                // A link to a snapshot that is gone is stale.
                Ok(found) if !links.join(&found).is_dir() => {
                    let _ = fs::remove_file(&link);
                }
                Ok(_) => return Ok(self.path(diff_id)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("reading", &link)(e)),
            }
            fs::create_dir_all(&links).map_err(io_error("creating", &links))?;
            match std::os::unix::fs::symlink(&wanted, &link) {
                Ok(()) => return Ok(link),
                // Made meanwhile: read again.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error("linking", &link)(e)),
            }
        }
        Ok(self.path(diff_id))
    }

    /// Takes `dir` — a step's upperdir, which is the layer `diff_id`
    /// already unpacked, whiteouts in overlay form — as that layer's
    /// snapshot, so the next step need not unpack the layer again (as
    /// Docker's overlay2 driver does). Moved, not copied: `dir` must be on
    /// the snapshots' filesystem. Does nothing when the snapshot exists.
    pub fn adopt(&self, diff_id: &str, dir: &Path) -> layer::Result<()> {
        Self::valid(diff_id)?;
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
        // Links to snapshots collected since.
        let links = self.dir.join(LINKS);
        for entry in fs::read_dir(&links).into_iter().flatten().flatten() {
            if !entry.path().is_dir() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(removed)
    }

    /// Removes the short link of the snapshot `name` (as [`Snapshots::names`]
    /// lists it) when it leads there; collection calls it with the
    /// snapshot's directory, so no link outlives its snapshot.
    pub fn unlink(&self, name: &str) {
        let name = Self::name(name);
        if name != INVALID {
            let link = self.dir.join(LINKS).join(&name[..LINK_LEN]);
            if fs::read_link(&link).is_ok_and(|t| t == Path::new("..").join(name)) {
                let _ = fs::remove_file(&link);
            }
        }
    }

    /// Removes a snapshot (no error when absent).
    pub fn remove(&self, diff_id: &str) -> layer::Result<()> {
        self.discard(Self::name(diff_id))
    }

    /// Removes the snapshot `name` (as [`Snapshots::names`] lists it; no
    /// error when absent). It leaves its name first, by a rename: a kill
    /// midway leaves an unfinished removal, which [`Snapshots::recover`]
    /// clears, never a layer missing files under its name that a later
    /// step would mount as complete.
    pub fn discard(&self, name: &str) -> layer::Result<()> {
        let dir = self.dir_named(name);
        let doomed = self.dir.join(format!(
            "tmp-{}-discard-{}",
            std::process::id(),
            Path::new(name)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        ));
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| LayerError::Io {
                action,
                path,
                source,
            }
        };
        match fs::rename(&dir, &doomed) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            renamed => renamed.map_err(io("renaming", &dir))?,
        }
        self.unlink(name);
        fs::remove_dir_all(&doomed).map_err(io("removing", &doomed))
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
    fn unpacked_once_under_its_full_name_with_a_short_link() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path().join("snapshots")).unwrap();
        let tar = layer_tar();
        let diff_id = sha256(&tar);
        let path = snaps.ensure(&diff_id, tar.as_slice()).unwrap();
        assert_eq!(path.file_name().unwrap().len(), LINK_LEN);
        assert_eq!(fs::canonicalize(&path).unwrap(), snaps.path(&diff_id));
        assert_eq!(snaps.names(), [Snapshots::name(&diff_id)]);
        assert_eq!(Snapshots::name(&diff_id).len(), NAME_LEN);
        assert_eq!(fs::read_to_string(path.join("etc/motd")).unwrap(), "hi");
        // Already there: the blob is not even read.
        assert_eq!(snaps.ensure(&diff_id, std::io::empty()).unwrap(), path);
        assert!(snaps.has(&diff_id));
        snaps.remove(&diff_id).unwrap();
        assert!(!snaps.has(&diff_id));
        assert!(fs::symlink_metadata(&path).is_err(), "the link goes too");
    }

    fn sha256(bytes: &[u8]) -> String {
        kiln_cache::Digest::of(bytes).to_string()
    }

    #[test]
    fn a_layer_that_is_not_its_diff_id_is_refused_and_kept_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path().join("snapshots")).unwrap();
        let claimed = format!("sha256:{}", "ab".repeat(32));
        let e = snaps.ensure(&claimed, layer_tar().as_slice()).unwrap_err();
        assert!(
            matches!(&e, LayerError::DiffId { expected, actual }
                if *expected == claimed && *actual == sha256(&layer_tar())),
            "{e}"
        );
        assert!(!snaps.has(&claimed));
        assert_eq!(
            fs::read_dir(dir.path().join("snapshots")).unwrap().count(),
            0
        );
        // A diff ID that is no digest names no directory at all.
        for bad in [
            "sha256:../../etc",
            "sha256:abc",
            "",
            "sha256:../../../../../../..",
        ] {
            assert!(matches!(
                snaps.ensure(bad, layer_tar().as_slice()),
                Err(LayerError::InvalidDiffId(_))
            ));
            assert!(
                !snaps
                    .path(bad)
                    .starts_with(dir.path().join("snapshots").join(".."))
            );
            assert_eq!(
                snaps.path(bad).parent(),
                Some(dir.path().join("snapshots").as_path())
            );
        }
    }

    #[test]
    fn a_short_name_taken_by_another_snapshot_gives_the_full_path() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(dir.path().join("snapshots")).unwrap();
        let tar = layer_tar();
        let diff_id = sha256(&tar);
        let hex = Snapshots::name(&diff_id);
        // Another snapshot with the same first 16 digits holds the link.
        let other = format!("{}{}", &hex[..LINK_LEN], "0".repeat(NAME_LEN - LINK_LEN));
        fs::create_dir_all(snaps.path(&other)).unwrap();
        fs::create_dir_all(dir.path().join("snapshots/l")).unwrap();
        std::os::unix::fs::symlink(
            Path::new("..").join(&other),
            dir.path().join("snapshots/l").join(&hex[..LINK_LEN]),
        )
        .unwrap();
        let path = snaps.ensure(&diff_id, tar.as_slice()).unwrap();
        assert_eq!(path, snaps.path(&diff_id));
        assert_eq!(fs::read_to_string(path.join("etc/motd")).unwrap(), "hi");
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
        let diff_id = sha256(&bad.get_ref().clone());
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
