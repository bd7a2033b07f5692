//! An OCI layer tar → a directory overlayfs can use as a lowerdir.
//!
//! Nothing is ever written outside `dest`: entries with absolute paths or
//! `..`, entries whose parent in `dest` is a symlink (a layer that plants
//! `etc -> /etc` and then writes `etc/passwd`), and hard links to paths
//! outside the layer are refused with an error.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, lchown};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

use super::{LayerError, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, Result, WHITEOUT_PREFIX, io_err};

/// What an unpack wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
}

/// Ownership, mode and time, applied to directories after their contents.
struct DirMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// Unpacks the (uncompressed) layer tar `reader` into `dest`, which must
/// exist.
pub fn unpack<R: Read>(reader: R, dest: &Path) -> Result<Unpacked> {
    unpack_with(reader, dest, Whiteouts::Overlay)
}

/// What to do with a layer's whiteouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Keep them as overlayfs marks: the directory is a lowerdir.
    Overlay,
    /// Apply them: delete the paths they name (`-o type=local`, where the
    /// layers are unpacked one over the other into one directory).
    Apply,
}

/// [`unpack`], with a choice of what whiteouts become.
pub fn unpack_with<R: Read>(reader: R, dest: &Path, whiteouts: Whiteouts) -> Result<Unpacked> {
    let mut archive = tar::Archive::new(reader);
    let mut stats = Unpacked::default();
    let mut dirs: BTreeMap<PathBuf, DirMeta> = BTreeMap::new();
    for entry in archive.entries().map_err(LayerError::Tar)? {
        let mut entry = entry.map_err(LayerError::Tar)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let hostile = |reason| LayerError::Hostile {
            path: raw.clone(),
            reason,
        };
        let rel =
            clean(&raw).ok_or_else(|| hostile("the path is absolute or climbs out with .."))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let parent =
            ensure_parent(dest, rel.parent().unwrap_or(Path::new(""))).map_err(|e| match e {
                ParentError::Symlink => hostile("a parent directory in the layer is a symlink"),
                ParentError::NotDir => hostile("a parent path in the layer is not a directory"),
                ParentError::Io(e) => e,
            })?;
        stats.entries += 1;

        if name == OPAQUE_MARKER {
            match whiteouts {
                Whiteouts::Overlay => {
                    xattr::set(&parent, OVERLAY_OPAQUE_XATTR, b"y")
                        .map_err(io_err("marking opaque", &parent))?;
                }
                // The marker follows its directory's entry: what is there now
                // came from lower layers.
                Whiteouts::Apply => {
                    for child in fs::read_dir(&parent).map_err(io_err("reading", &parent))? {
                        remove_existing(&child.map_err(io_err("reading", &parent))?.path())?;
                    }
                }
            }
            stats.opaque_dirs += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let target = parent.join(hidden);
            remove_existing(&target)?;
            if whiteouts == Whiteouts::Overlay {
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| io_err("making whiteout", &target)(e.into()))?;
            }
            stats.whiteouts += 1;
            continue;
        }

        let path = parent.join(&name);
        let xattrs = pax_xattrs(&mut entry)?;
        let header = entry.header();
        // Empty numeric fields are 0, as Go's archive/tar reads them.
        let mode = header.mode().unwrap_or(0o644);
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();
        let major = header.device_major().ok().flatten().unwrap_or(0);
        let minor = header.device_minor().ok().flatten().unwrap_or(0);
        match kind {
            tar::EntryType::Directory => {
                if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    remove_existing(&path)?;
                    fs::create_dir(&path).map_err(io_err("creating", &path))?;
                }
                dirs.insert(
                    path.clone(),
                    DirMeta {
                        mode,
                        uid,
                        gid,
                        mtime,
                    },
                );
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&path)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(io_err("creating", &path))?;
                io::copy(&mut entry, &mut file).map_err(io_err("writing", &path))?;
                set_owner_mode(&path, &file, uid, gid, mode)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(LayerError::Tar)?
                    .unwrap_or_default()
                    .into_owned();
                remove_existing(&path)?;
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(io_err("creating symlink", &path))?;
                lchown_ids(&path, uid, gid)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(LayerError::Tar)?
                    .unwrap_or_default();
                let target_text = target.to_string_lossy().into_owned();
                let rel_target = clean(&target_text)
                    .ok_or_else(|| hostile("a hard link points outside the layer"))?;
                let target_parent =
                    ensure_parent_exists(dest, rel_target.parent().unwrap_or(Path::new("")))
                        .ok_or_else(|| {
                            hostile("a hard link's target is missing or behind a symlink")
                        })?;
                let source = target_parent.join(rel_target.file_name().unwrap_or_default());
                if !fs::symlink_metadata(&source).is_ok_and(|m| !m.is_dir()) {
                    return Err(hostile("a hard link's target is not a file of the layer"));
                }
                remove_existing(&path)?;
                fs::hard_link(&source, &path).map_err(io_err("linking", &path))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let flag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                remove_existing(&path)?;
                mknod(
                    &path,
                    flag,
                    Mode::from_bits_truncate(mode),
                    makedev(major.into(), minor.into()),
                )
                .map_err(|e| io_err("making device", &path)(e.into()))?;
                lchown_ids(&path, uid, gid)?;
            }
            _ => continue,
        }
        for (key, value) in xattrs {
            xattr::set(&path, &key, &value).map_err(io_err("setting xattr on", &path))?;
        }
        if kind != tar::EntryType::Directory && kind != tar::EntryType::Link {
            set_mtime(&path, mtime)?;
        }
    }
    // Directories last, deepest first: their contents changed their mtime.
    for (path, meta) in dirs.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode & 0o7777))
            .map_err(io_err("chmod", path))?;
        lchown_ids(path, meta.uid, meta.gid)?;
        set_mtime(path, meta.mtime)?;
    }
    Ok(stats)
}

/// A layer path as a clean relative path; `None` when absolute or when
/// `..` would leave the layer.
fn clean(raw: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

enum ParentError {
    Symlink,
    NotDir,
    Io(LayerError),
}

/// Creates the parent directories of an entry inside `dest`, refusing to go
/// through a symlink or a non-directory.
fn ensure_parent(dest: &Path, rel: &Path) -> std::result::Result<PathBuf, ParentError> {
    let mut path = dest.to_owned();
    for c in rel.components() {
        path.push(c);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return Err(ParentError::Symlink),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(ParentError::NotDir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path).map_err(|e| ParentError::Io(io_err("creating", &path)(e)))?;
            }
            Err(e) => return Err(ParentError::Io(io_err("reading", &path)(e))),
        }
    }
    Ok(path)
}

/// The existing directory `rel` inside `dest`, reached without symlinks.
fn ensure_parent_exists(dest: &Path, rel: &Path) -> Option<PathBuf> {
    let mut path = dest.to_owned();
    for c in rel.components() {
        path.push(c);
        let m = fs::symlink_metadata(&path).ok()?;
        if !m.is_dir() || m.file_type().is_symlink() {
            return None;
        }
    }
    Some(path)
}

/// Removes whatever is at `path` (a directory with its contents); nothing
/// there is fine.
fn remove_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("replacing", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("replacing", path)),
        Err(_) => Ok(()),
    }
}

fn lchown_ids(path: &Path, uid: u64, gid: u64) -> Result<()> {
    let id = |n: u64| u32::try_from(n).ok();
    lchown(path, id(uid), id(gid)).map_err(io_err("chown", path))
}

fn set_owner_mode(path: &Path, file: &File, uid: u64, gid: u64, mode: u32) -> Result<()> {
    lchown_ids(path, uid, gid)?;
    // After chown, which clears set-id bits.
    file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("chmod", path))
}

fn set_mtime(path: &Path, mtime: u64) -> Result<()> {
    let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err("setting mtime of", path)(e.into()))
}

/// Extended attributes the entry carries in PAX records
/// (`SCHILY.xattr.<name>`), e.g. file capabilities.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(LayerError::Tar)? {
        for ext in extensions {
            let ext = ext.map_err(LayerError::Tar)?;
            if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr."))
                && !name.starts_with("trusted.overlay.")
            {
                out.push((name.to_owned(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}
