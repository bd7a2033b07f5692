//! A tar (an OCI layer, an `ADD` archive, a build context) → a directory.
//!
//! Every writer of an unpacked tree goes through here, and everything here
//! is written by descriptor beneath `dest` ([`Root::dir_beneath`]:
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, then `*at` calls on
//! the parent's descriptor with the last name never followed). So nothing
//! is ever written or deleted outside `dest`: entries with absolute paths
//! or `..`, entries whose parent in `dest` is a symlink (a layer that plants
//! `etc -> /etc` and then writes `etc/passwd`), hard links to paths outside
//! the tree and whiteouts that name no entry of their directory (`.wh.`,
//! `.wh..`, `.wh...`) are refused with an error.
//!
//! The uncompressed stream is hashed while it is read (to its very end, past
//! the tar's end blocks): [`Unpacked::diff_id`] is what a layer's diff ID
//! must be, checked by the caller that knows the claim.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_cache::Hasher;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    Mode, SFlag, UtimensatFlags, fchmod, fstatat, futimens, makedev, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

use super::{LayerError, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, Result, WHITEOUT_PREFIX};
use crate::fileop::FileOpError;
use crate::fileop::root::{Root, proc_fd_path, remove_entry};

/// What an unpack wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// `sha256:<hex>` of the whole uncompressed stream: the layer's diff ID.
    pub diff_id: String,
}

/// An entry's mode, ownership and time; a directory's are applied after
/// its contents.
#[derive(Clone, Copy)]
struct EntryMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

/// What to do with a tar's whiteouts (`.wh.<name>`, `.wh..wh..opq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Keep them as overlayfs marks: the directory is a lowerdir.
    Overlay,
    /// Apply them: delete the paths they name (`-o type=local`, where the
    /// layers are unpacked one over the other into one directory).
    Apply,
    /// None: the tar is a tree, not a layer (`ADD` of an archive, a build
    /// context), and `.wh.` files are files, as Docker's ADD keeps them.
    Plain,
}

/// Unpacks the (uncompressed) layer tar `reader` into `dest`, which must
/// exist.
pub fn unpack<R: Read>(reader: R, dest: &Path) -> Result<Unpacked> {
    unpack_with(reader, dest, Whiteouts::Overlay)
}

/// [`unpack`], with a choice of what whiteouts become.
pub fn unpack_with<R: Read>(reader: R, dest: &Path, whiteouts: Whiteouts) -> Result<Unpacked> {
    unpack_owned(reader, dest, whiteouts, None)
}

/// [`unpack_with`], every entry owned by `owner` (uid, gid) when given
/// instead of the owner its header names (`ADD --chown` of an archive).
pub fn unpack_owned<R: Read>(
    reader: R,
    dest: &Path,
    whiteouts: Whiteouts,
    owner: Option<(u32, u32)>,
) -> Result<Unpacked> {
    let root = Root::open(dest).map_err(|e| fileop_err(dest, e))?;
    let mut hashed = Hashing {
        inner: reader,
        hasher: Hasher::default(),
    };
    let mut tree = Tree {
        root,
        whiteouts,
        owner,
        dirs: BTreeMap::new(),
        parent: None,
        stats: Unpacked::default(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashed);
        for entry in archive.entries().map_err(LayerError::Tar)? {
            tree.entry(&mut entry.map_err(LayerError::Tar)?)?;
        }
    }
    // What follows the end blocks is part of the layer's bytes too.
    io::copy(&mut hashed, &mut io::sink()).map_err(LayerError::Tar)?;
    tree.finish_dirs()?;
    let mut stats = tree.stats;
    stats.diff_id = hashed.hasher.finish().to_string();
    Ok(stats)
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The tree being written.
struct Tree {
    root: Root,
    whiteouts: Whiteouts,
    /// Every entry's owner, when set.
    owner: Option<(u32, u32)>,
    /// Directories met, by path, for their metadata at the end.
    dirs: BTreeMap<Vec<u8>, EntryMeta>,
    /// The last parent directory opened (entries come grouped by
    /// directory); dropped whenever a directory is removed.
    parent: Option<(Vec<u8>, File)>,
    stats: Unpacked,
}

/// An entry's path as names, or why it is refused.
fn names(raw: &[u8]) -> std::result::Result<Vec<&OsStr>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("the path is absolute");
    }
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("the path climbs out with .."),
            name => out.push(OsStr::from_bytes(name)),
        }
    }
    Ok(out)
}

fn fileop_err(path: &Path, e: FileOpError) -> LayerError {
    LayerError::Io {
        action: "opening",
        path: path.to_owned(),
        source: io::Error::other(e.to_string()),
    }
}

impl Tree {
    fn host_path(&self, rel: &[u8]) -> PathBuf {
        self.root.path().join(OsStr::from_bytes(rel))
    }

    fn io(&self, action: &'static str, rel: &[u8]) -> impl FnOnce(io::Error) -> LayerError + use<> {
        let path = self.host_path(rel);
        move |source| LayerError::Io {
            action,
            path,
            source,
        }
    }

    fn sys(&self, action: &'static str, rel: &[u8]) -> impl FnOnce(Errno) -> LayerError + use<> {
        let io = self.io(action, rel);
        move |e| io(e.into())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let hostile = |reason| LayerError::Hostile {
            path: String::from_utf8_lossy(&raw).into_owned(),
            reason,
        };
        let parts = names(&raw).map_err(hostile)?;
        let Some((name, dirs)) = parts.split_last() else {
            // `./`: the tree's own top, which is `dest`.
            return Ok(());
        };
        let name = name.to_os_string();
        let rel = raw_rel(&parts);
        let parent = self.parent_dir(dirs, true).map_err(|e| match e {
            Parent::Symlink => hostile("a parent directory in the layer is a symlink"),
            Parent::NotDir => hostile("a parent path in the layer is not a directory"),
            Parent::Missing => hostile("a parent directory is missing"),
            Parent::Other(e) => e,
        })?;
        self.stats.entries += 1;

        if self.whiteouts != Whiteouts::Plain {
            let bytes = name.as_bytes();
            if bytes == OPAQUE_MARKER.as_bytes() {
                self.opaque(&parent, &rel)?;
                return Ok(());
            }
            if let Some(hidden) = bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                // AUFS's own metadata (`.wh..wh.plnk`, …) is no part of the
                // tree; Docker skips it too.
                if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                    return Ok(());
                }
                if matches!(hidden, b"" | b"." | b"..") {
                    return Err(hostile("a whiteout must name one entry of its directory"));
                }
                self.whiteout(&parent, OsStr::from_bytes(hidden), &rel)?;
                return Ok(());
            }
        }
        self.write(entry, &parent, &name, &rel, &hostile)
    }

    /// The directory `dirs` beneath the root, made when missing (`create`).
    fn parent_dir(&mut self, dirs: &[&OsStr], create: bool) -> std::result::Result<File, Parent> {
        let key = raw_rel(dirs);
        if let Some((cached, dir)) = &self.parent
            && *cached == key
        {
            return dir
                .try_clone()
                .map_err(|e| Parent::Other(self.io("opening", &key)(e)));
        }
        let dir = match self.root.dir_beneath(dirs, create) {
            Ok(fd) => File::from(fd),
            Err(FileOpError::Sys { errno, .. }) => {
                return Err(match errno {
                    Errno::ELOOP => Parent::Symlink,
                    Errno::ENOTDIR | Errno::EEXIST => Parent::NotDir,
                    Errno::ENOENT => Parent::Missing,
                    e => Parent::Other(self.sys("opening", &key)(e)),
                });
            }
            Err(e) => return Err(Parent::Other(fileop_err(&self.host_path(&key), e))),
        };
        let copy = dir
            .try_clone()
            .map_err(|e| Parent::Other(self.io("opening", &key)(e)))?;
        self.parent = Some((key, copy));
        Ok(dir)
    }

    /// Removes `name` of `parent`, whatever it is.
    fn remove(&mut self, parent: &File, name: &OsStr, rel: &[u8]) -> Result<()> {
        let fd = OwnedFd::from(parent.try_clone().map_err(self.io("replacing", rel))?);
        if remove_entry(&fd, name).map_err(self.io("replacing", rel))? {
            // A cached descriptor may name a directory that is gone.
            self.parent = None;
        }
        Ok(())
    }

    fn opaque(&mut self, parent: &File, rel: &[u8]) -> Result<()> {
        match self.whiteouts {
            Whiteouts::Overlay => {
                xattr::FileExt::set_xattr(parent, OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(self.io("marking opaque", parent_of(rel)))?;
            }
            // The marker follows its directory's entry: what is there now
            // came from lower layers.
            Whiteouts::Apply => {
                let fd = OwnedFd::from(parent.try_clone().map_err(self.io("reading", rel))?);
                let listed = std::fs::read_dir(proc_fd_path(&fd))
                    .map_err(self.io("reading", parent_of(rel)))?;
                for child in listed {
                    let child = child.map_err(self.io("reading", parent_of(rel)))?;
                    self.remove(parent, &child.file_name(), rel)?;
                }
            }
            Whiteouts::Plain => {}
        }
        self.stats.opaque_dirs += 1;
        Ok(())
    }

    fn whiteout(&mut self, parent: &File, hidden: &OsStr, rel: &[u8]) -> Result<()> {
        self.remove(parent, hidden, rel)?;
        if self.whiteouts == Whiteouts::Overlay {
            mknodat(
                parent.as_fd(),
                hidden,
                SFlag::S_IFCHR,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(self.sys("making whiteout", rel))?;
        }
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// Writes a file, directory, link or device entry as `name` of
    /// `parent`; then its extended attributes, and its mtime (a directory's
    /// is set after its contents, a hard link has its target's).
    fn write<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &File,
        name: &OsStr,
        rel: &[u8],
        hostile: &dyn Fn(&'static str) -> LayerError,
    ) -> Result<()> {
        let xattrs = pax_xattrs(entry)?;
        let meta = self.entry_meta(entry.header());
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => self.dir(parent, name, rel, meta)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(entry, parent, name, rel, meta)?;
            }
            tar::EntryType::Symlink => self.symlink(entry, parent, name, rel, meta)?,
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.hard_link(parent, name, rel, &target, hostile)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.device(entry.header(), parent, name, rel, meta)?;
            }
            _ => return Ok(()),
        }
        if !xattrs.is_empty() {
            self.set_xattrs(parent, name, rel, xattrs)?;
        }
        if kind != tar::EntryType::Directory && kind != tar::EntryType::Link {
            let t = timespec(meta.mtime);
            let pfd = parent.as_fd();
            utimensat(pfd, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                .map_err(self.sys("setting mtime of", rel))?;
        }
        Ok(())
    }

    /// The mode, owner (the tree's `owner` when set) and mtime an entry's
    /// header gives it.
    fn entry_meta(&self, header: &tar::Header) -> EntryMeta {
        // Empty numeric fields are 0, as Go's archive/tar reads them.
        let mode = header.mode().unwrap_or(0o644);
        let (uid, gid) = match self.owner {
            Some((uid, gid)) => (u64::from(uid), u64::from(gid)),
            None => (header.uid().unwrap_or(0), header.gid().unwrap_or(0)),
        };
        let mtime = header.mtime().unwrap_or(0);
        EntryMeta {
            mode,
            uid,
            gid,
            mtime,
        }
    }

    /// A directory: made (owner-only until [`Tree::finish_dirs`]) unless
    /// one is there already; its metadata is kept for `finish_dirs`.
    fn dir(&mut self, parent: &File, name: &OsStr, rel: &[u8], meta: EntryMeta) -> Result<()> {
        let pfd = parent.as_fd();
        let is_dir = fstatat(pfd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR);
        if !is_dir {
            self.remove(parent, name, rel)?;
            mkdirat(pfd, name, Mode::from_bits_truncate(0o700))
                .map_err(self.sys("creating", rel))?;
        }
        self.dirs.insert(rel.to_vec(), meta);
        Ok(())
    }

    /// A regular file, made anew in place of what was there (never
    /// through it), with the entry's contents, owner and mode.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &File,
        name: &OsStr,
        rel: &[u8],
        meta: EntryMeta,
    ) -> Result<()> {
        self.remove(parent, name, rel)?;
        let fd = openat(
            parent.as_fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(self.sys("creating", rel))?;
        let mut file = File::from(fd);
        io::copy(entry, &mut file).map_err(self.io("writing", rel))?;
        fchown(
            &file,
            id(meta.uid).map(Uid::from_raw),
            id(meta.gid).map(Gid::from_raw),
        )
        .map_err(self.sys("chown", rel))?;
        // After chown, which clears set-id bits.
        fchmod(&file, Mode::from_bits_truncate(meta.mode & 0o7777))
            .map_err(self.sys("chmod", rel))?;
        Ok(())
    }

    /// A symlink in place of what was there; its target is never followed.
    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        parent: &File,
        name: &OsStr,
        rel: &[u8],
        meta: EntryMeta,
    ) -> Result<()> {
        let target = entry
            .link_name_bytes()
            .map(|t| OsString::from(OsStr::from_bytes(&t)))
            .unwrap_or_default();
        self.remove(parent, name, rel)?;
        symlinkat(target.as_os_str(), parent.as_fd(), name)
            .map_err(self.sys("creating symlink", rel))?;
        self.lchown(parent, name, rel, meta.uid, meta.gid)
    }

    /// A character or block device, or a fifo, in place of what was there.
    fn device(
        &mut self,
        header: &tar::Header,
        parent: &File,
        name: &OsStr,
        rel: &[u8],
        meta: EntryMeta,
    ) -> Result<()> {
        let flag = match header.entry_type() {
            tar::EntryType::Char => SFlag::S_IFCHR,
            tar::EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let dev = makedev(
            header.device_major().ok().flatten().unwrap_or(0).into(),
            header.device_minor().ok().flatten().unwrap_or(0).into(),
        );
        self.remove(parent, name, rel)?;
        let mode = Mode::from_bits_truncate(meta.mode);
        mknodat(parent.as_fd(), name, flag, mode, dev).map_err(self.sys("making device", rel))?;
        self.lchown(parent, name, rel, meta.uid, meta.gid)
    }

    /// The entry's extended attributes, set on `name` of `parent`.
    fn set_xattrs(
        &self,
        parent: &File,
        name: &OsStr,
        rel: &[u8],
        xattrs: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        // The parent's real path by its descriptor; `name` itself is not
        // followed (lsetxattr).
        let fd = OwnedFd::from(parent.try_clone().map_err(self.io("opening", rel))?);
        let path = proc_fd_path(&fd).join(name);
        for (key, value) in xattrs {
            xattr::set(&path, &key, &value).map_err(self.io("setting xattr on", rel))?;
        }
        Ok(())
    }

    fn lchown(&self, parent: &File, name: &OsStr, rel: &[u8], uid: u64, gid: u64) -> Result<()> {
        fchownat(
            parent.as_fd(),
            name,
            id(uid).map(Uid::from_raw),
            id(gid).map(Gid::from_raw),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(self.sys("chown", rel))
    }

    /// A hard link to a non-directory already in the tree, reached without
    /// symlinks.
    fn hard_link(
        &mut self,
        parent: &File,
        name: &OsStr,
        rel: &[u8],
        target: &[u8],
        hostile: &dyn Fn(&'static str) -> LayerError,
    ) -> Result<()> {
        let parts = names(target).map_err(|_| hostile("a hard link points outside the layer"))?;
        let Some((target_name, target_dirs)) = parts.split_last() else {
            return Err(hostile("a hard link's target is not a file of the layer"));
        };
        let source = self.parent_dir(target_dirs, false).map_err(|e| match e {
            Parent::Other(e) => e,
            _ => hostile("a hard link's target is missing or behind a symlink"),
        })?;
        match fstatat(source.as_fd(), *target_name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFDIR => {}
            _ => return Err(hostile("a hard link's target is not a file of the layer")),
        }
        if raw_rel(&parts) == rel {
            // A link to itself: what is there stays.
            return Ok(());
        }
        self.remove(parent, name, rel)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
        linkat(
            source.as_fd(),
            *target_name,
            parent.as_fd(),
            name,
            AtFlags::empty(),
        )
        .map_err(self.sys("linking", rel))
    }

    /// Directories last, deepest first: their contents changed their mtime.
    /// Each is opened again beneath the root: one a later entry replaced
    /// (with a symlink, say) is skipped, never followed.
    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, meta) in dirs.iter().rev() {
            let parts: Vec<&OsStr> = rel.split(|b| *b == b'/').map(OsStr::from_bytes).collect();
            let dir = match self.root.dir_beneath(&parts, false) {
                Ok(fd) => fd,
                Err(FileOpError::Sys {
                    errno: Errno::ELOOP | Errno::ENOTDIR | Errno::ENOENT,
                    ..
                }) => continue,
                Err(e) => return Err(fileop_err(&self.host_path(rel), e)),
            };
            fchown(
                &dir,
                id(meta.uid).map(Uid::from_raw),
                id(meta.gid).map(Gid::from_raw),
            )
            .map_err(self.sys("chown", rel))?;
            fchmod(&dir, Mode::from_bits_truncate(meta.mode & 0o7777))
                .map_err(self.sys("chmod", rel))?;
            let t = timespec(meta.mtime);
            futimens(&dir, &t, &t).map_err(self.sys("setting mtime of", rel))?;
        }
        Ok(())
    }
}

/// Why a parent directory could not be had.
enum Parent {
    Symlink,
    NotDir,
    Missing,
    Other(LayerError),
}

/// Names joined with `/` (the key of a path in the tree).
fn raw_rel(parts: &[&OsStr]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

fn parent_of(rel: &[u8]) -> &[u8] {
    rel.iter()
        .rposition(|b| *b == b'/')
        .map_or(&[][..], |i| &rel[..i])
}

/// An id as the kernel takes it; one that does not fit is left unchanged.
fn id(n: u64) -> Option<u32> {
    u32::try_from(n).ok()
}

fn timespec(mtime: u64) -> TimeSpec {
    TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0)
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
