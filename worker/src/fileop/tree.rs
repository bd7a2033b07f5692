//! Copying inside a tree by directory descriptors: once a tree's top is
//! resolved inside its root, every entry below is reached with `*at` calls
//! on its parent's descriptor and `O_NOFOLLOW`, so nothing is resolved by
//! path again (fast for many small files) and no symlink is ever followed.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{
    FileStat, Mode, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, symlinkat, unlinkat};

use super::root::proc_fd_path;
use super::unchanged::{link_unchanged, open_dir_in};
use super::{FileOpError, Result};
use kiln_proto::chmod::Chmod;
use kiln_proto::depth;
use kiln_proto::dockerignore::Matcher;

/// What every copied entry gets instead of the source's, when set.
pub(super) struct Meta<'a> {
    pub(super) owner: Option<(u32, u32)>,
    pub(super) mode: Option<&'a Chmod>,
    /// `--exclude`, against paths below the copied source.
    pub(super) excludes: &'a Matcher,
    /// `.dockerignore`, against paths from the source root.
    pub(super) root_excludes: &'a Matcher,
    /// The copied source's path from the source root.
    pub(super) base: String,
    /// The files `root_excludes` hides, by inode: their other names (hard
    /// links) are hidden too.
    pub(super) hidden_files: &'a HiddenFiles,
    /// Files with several names copied so far: their other names become
    /// hard links of the copy, as BuildKit's copy keeps them.
    pub(super) links: &'a Links,
}

/// How many multiply-linked files one copy remembers (each holds a
/// directory descriptor); past that, further names are copied as files.
const MAX_LINKED: usize = 256;

/// The copies of multiply-linked source files, by source (device, inode):
/// the directory holding the copy and its name there.
#[derive(Default)]
pub(super) struct Links(std::cell::RefCell<std::collections::HashMap<(u64, u64), LinkedCopy>>);

/// Where the copy of a multiply-linked file is: its directory and name.
type LinkedCopy = (OwnedFd, Vec<u8>);

impl Links {
    /// Links `name` in `dst` to the copy of the file `st` describes, when
    /// one was made; `false` when none was.
    fn link(&self, st: &FileStat, dst: &OwnedFd, name: &[u8]) -> Result<bool> {
        let copies = self.0.borrow();
        let Some((dir, first)) = copies.get(&(st.st_dev, st.st_ino)) else {
            return Ok(false);
        };
        let link = || {
            nix::unistd::linkat(
                dir.as_fd(),
                first.as_slice(),
                dst.as_fd(),
                name,
                AtFlags::empty(),
            )
        };
        replacing(dst, name, "linking", link)?;
        Ok(true)
    }

    /// Remembers `name` in `dst` as the copy of the file `st` describes.
    fn remember(&self, st: &FileStat, dst: &OwnedFd, name: &[u8]) -> Result<()> {
        let mut copies = self.0.borrow_mut();
        if copies.len() < MAX_LINKED {
            let dir = dst
                .try_clone()
                .map_err(|e| FileOpError::io("duplicating", std::path::Path::new("."), e))?;
            copies.insert((st.st_dev, st.st_ino), (dir, name.to_vec()));
        }
        Ok(())
    }
}

impl Meta<'_> {
    /// The mode an entry copied from one described by `st` gets.
    pub(super) fn mode_of(&self, st: &FileStat) -> u32 {
        let is_dir = st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR;
        self.mode
            .map_or(st.st_mode & 0o7777, |chmod| chmod.apply(st.st_mode, is_dir))
    }
}

/// The (device, inode) of every file with more than one name that a
/// source root's `.dockerignore` hides, found on first need (a file with
/// several names among those copied): an ignored file must not be read
/// through a hard link of another name either.
pub(super) struct HiddenFiles {
    root: OwnedFd,
    inodes: std::cell::OnceCell<HashSet<(u64, u64)>>,
}

impl HiddenFiles {
    /// For the source root open as `root` (a directory descriptor).
    pub(super) fn new(root: OwnedFd) -> Self {
        Self {
            root,
            inodes: std::cell::OnceCell::new(),
        }
    }

    /// Whether `st` is another name of a file `root_excludes` hides.
    fn hides(&self, st: &FileStat, root_excludes: &Matcher) -> Result<bool> {
        if root_excludes.is_empty()
            || st.st_nlink < 2
            || st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG
        {
            return Ok(false);
        }
        if self.inodes.get().is_none() {
            let mut found = HashSet::new();
            hidden_links(&self.root, "", root_excludes, &mut found)?;
            let _ = self.inodes.set(found);
        }
        let key = (st.st_dev, st.st_ino);
        Ok(self.inodes.get().is_some_and(|set| set.contains(&key)))
    }
}

/// Adds to `found` the regular files with several names below directory
/// `dir` (at `rel` from the root) that `root_excludes` hides. Every
/// directory is walked, hidden ones too, by descriptor and never through
/// a symlink, down to [`depth::MAX_TREE_DEPTH`] levels: a deeper one is
/// refused.
fn hidden_links(
    dir: &OwnedFd,
    rel: &str,
    root_excludes: &Matcher,
    found: &mut HashSet<(u64, u64)>,
) -> Result<()> {
    let path = proc_fd_path(dir);
    let names: Vec<Vec<u8>> = std::fs::read_dir(&path)
        .map_err(|e| FileOpError::io("reading", &path, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().as_bytes().to_vec()))
        .collect();
    for name in names {
        let text = String::from_utf8_lossy(&name);
        let child = if rel.is_empty() {
            text.into_owned()
        } else {
            format!("{rel}/{text}")
        };
        let st = fstatat(dir.as_fd(), name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(sys("reading", &name))?;
        match st.st_mode & nix::libc::S_IFMT {
            nix::libc::S_IFDIR => {
                depth::check(depth_of(&child), || format!("/{child}"))?;
                let sub = openat(
                    dir.as_fd(),
                    name.as_slice(),
                    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(sys("opening", &name))?;
                hidden_links(&sub, &child, root_excludes, found)?;
            }
            nix::libc::S_IFREG if st.st_nlink > 1 && root_excludes.excludes(&child) => {
                found.insert((st.st_dev, st.st_ino));
            }
            _ => {}
        }
    }
    Ok(())
}

fn sys(action: &'static str, name: &[u8]) -> impl FnOnce(Errno) -> FileOpError + use<> {
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name));
    move |e| FileOpError::sys(action, &path, e)
}

/// Copies the contents of directory `src` into directory `dst`; `rel` is
/// the path below the copied source (for excludes). `previous` is the same
/// directory in an earlier result of this copy ([`link_unchanged`]). A
/// directory deeper than [`depth::MAX_TREE_DEPTH`] below the copied
/// source is refused ([`FileOpError::TooDeep`]).
pub(super) fn copy_dir(
    src: &OwnedFd,
    dst: &OwnedFd,
    previous: Option<&OwnedFd>,
    rel: &str,
    meta: &Meta<'_>,
) -> Result<()> {
    let made = made_owner(dst)?;
    let path = proc_fd_path(src);
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(&path)
        .map_err(|e| FileOpError::io("reading", &path, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().as_bytes().to_vec()))
        .collect();
    names.sort();
    for name in names {
        let text = String::from_utf8_lossy(&name);
        let child_rel = if rel.is_empty() {
            text.into_owned()
        } else {
            format!("{rel}/{text}")
        };
        if !meta.excludes.is_empty() && meta.excludes.excludes(&child_rel) {
            continue;
        }
        let st = fstatat(src.as_fd(), name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(sys("reading", &name))?;
        if !meta.root_excludes.is_empty() {
            let from_root = path_from_root(meta, &child_rel);
            if meta.root_excludes.excludes(&from_root)
                && !kept_below(src, &name, &st, &from_root, meta)
            {
                continue;
            }
        }
        if meta.hidden_files.hides(&st, meta.root_excludes)? {
            continue;
        }
        copy_entry(src, (dst, made), previous, &name, &st, &child_rel, meta)?;
    }
    Ok(())
}

/// The path from the source root of `rel`, a path below the copied source.
fn path_from_root(meta: &Meta<'_>, rel: &str) -> String {
    if meta.base.is_empty() {
        rel.to_owned()
    } else {
        format!("{}/{rel}", meta.base)
    }
}

/// How many levels of directories below the walk's top the directory at
/// `rel` (a path from that top) is: each is a frame of the walk (this
/// one's, [`copy_dir`] and [`copy_entry`], on the helper's stack).
fn depth_of(rel: &str) -> usize {
    rel.split('/').count()
}

/// The owner a file made in the directory `dir` gets: this process's
/// effective ids, the directory's group when it is set-group-ID (see
/// inode(7), "The set-group-ID bit"). A copy then need not chown a file
/// that is already its owner's.
pub(super) fn made_owner(dir: &OwnedFd) -> Result<(u32, u32)> {
    let st = nix::sys::stat::fstat(dir.as_fd()).map_err(sys("reading", b"."))?;
    let gid = if st.st_mode & nix::libc::S_ISGID != 0 {
        st.st_gid
    } else {
        nix::unistd::getegid().as_raw()
    };
    Ok((nix::unistd::geteuid().as_raw(), gid))
}

/// Whether the excluded entry `name` of `src` (`from_root` in the
/// context) is a directory that `.dockerignore` brings back for an
/// exception below it. Only names are read here, through the directory's
/// descriptor; what is copied is then opened without following links.
fn kept_below(src: &OwnedFd, name: &[u8], st: &FileStat, from_root: &str, meta: &Meta<'_>) -> bool {
    let is_dir = st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR;
    if !is_dir {
        return false;
    }
    let base = proc_fd_path(src).join(std::ffi::OsStr::from_bytes(name));
    let mut list = |rel: &str| {
        let below = rel
            .strip_prefix(from_root)
            .unwrap_or("")
            .trim_start_matches('/');
        let dir = if below.is_empty() {
            base.clone()
        } else {
            base.join(below)
        };
        super::dir_entries(&dir)
    };
    meta.root_excludes.keeps(from_root, true, &mut list)
}

/// Copies entry `name` of directory `src` to the same name in `dst`.
/// `dst` comes with the owner a file made there gets ([`made_owner`]);
/// `previous`, when given, is where an unchanged file may be linked from.
pub(super) fn copy_entry(
    src: &OwnedFd,
    (dst, made): (&OwnedFd, (u32, u32)),
    previous: Option<&OwnedFd>,
    name: &[u8],
    st: &FileStat,
    rel: &str,
    meta: &Meta<'_>,
) -> Result<()> {
    let (uid, gid) = meta.owner.unwrap_or((st.st_uid, st.st_gid));
    match st.st_mode & nix::libc::S_IFMT {
        nix::libc::S_IFDIR => {
            depth::check(depth_of(rel), || format!("/{}", path_from_root(meta, rel)))?;
            let to = open_or_make_dir(dst, name)?;
            let from = openat(
                src.as_fd(),
                name,
                OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys("opening", name))?;
            let previous = previous.and_then(|dir| open_dir_in(dir, name));
            copy_dir(&from, &to, previous.as_ref(), rel, meta)?;
            finish(&to, uid, gid, meta.mode_of(st), st, name)
        }
        nix::libc::S_IFREG => {
            let linked = st.st_nlink > 1;
            if linked && meta.links.link(st, dst, name)? {
                return Ok(());
            }
            let from = openat(
                src.as_fd(),
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys("opening", name))?;
            let mut from = File::from(from);
            let unchanged = match previous {
                Some(dir) => link_unchanged(dir, &mut from, st, dst, name, meta)?,
                None => false,
            };
            if !unchanged {
                copy_file(from, st, (dst, made), name, meta)?;
            }
            if linked {
                meta.links.remember(st, dst, name)?;
            }
            Ok(())
        }
        nix::libc::S_IFLNK => {
            let target = readlinkat(src.as_fd(), name).map_err(sys("reading link", name))?;
            replacing(dst, name, "creating symlink", || {
                symlinkat(target.as_os_str(), dst.as_fd(), name)
            })?;
            fchownat(
                dst.as_fd(),
                name,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(sys("chown", name))?;
            let t = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
            utimensat(dst.as_fd(), name, &t, &t, UtimensatFlags::NoFollowSymlink)
                .map_err(sys("setting mtime of", name))
        }
        // Devices, fifos and sockets are not part of a build context.
        _ => Ok(()),
    }
}

/// Copies the open regular file `from` (described by `st`) to `name` in
/// the directory `dst`, where a file made gets the owner `made`.
pub(super) fn copy_file(
    mut from: File,
    st: &FileStat,
    (dst, made): (&OwnedFd, (u32, u32)),
    name: &[u8],
    meta: &Meta<'_>,
) -> Result<()> {
    let create = || {
        openat(
            dst.as_fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
    };
    let to = replacing(dst, name, "creating", create)?;
    let mut to = File::from(to);
    copy_data(&mut from, &mut to, u64::try_from(st.st_size).unwrap_or(0)).map_err(|e| {
        FileOpError::io(
            "copying",
            std::path::Path::new(std::ffi::OsStr::from_bytes(name)),
            e,
        )
    })?;
    let (uid, gid) = meta.owner.unwrap_or((st.st_uid, st.st_gid));
    let owner = ((uid, gid) != made).then_some((uid, gid));
    finish_made(&to.into(), owner, meta.mode_of(st), st, name)
}

/// Copies the file `from`, of `size` bytes when it was looked at, to `to`.
/// A small file is read whole and written in one call each (one read of a
/// byte more than `size` shows it ended there); a larger one, or one that
/// changed size, goes through `std::io::copy` (`copy_file_range(2)`, which
/// between two filesystems fails with `EXDEV` before `sendfile(2)`: three
/// calls for each small file).
fn copy_data(from: &mut File, to: &mut File, size: u64) -> io::Result<()> {
    /// The largest file read whole into memory.
    const SMALL: u64 = 64 << 10;
    if size >= SMALL {
        return io::copy(from, to).map(drop);
    }
    let mut buf = vec![0; usize::try_from(size).unwrap_or(0) + 1];
    let read = loop {
        match io::Read::read(from, &mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            read => break read?,
        }
    };
    io::Write::write_all(to, &buf[..read])?;
    if read as u64 != size {
        // Grown, shrunk or read short: the rest up to its end.
        io::copy(from, to)?;
    }
    Ok(())
}

/// `make` (a creation of `name` in `dst` that fails with `EEXIST` when
/// something is there), again after removing what is there: one call for
/// the usual new name, rather than a look first.
fn replacing<T>(
    dst: &OwnedFd,
    name: &[u8],
    action: &'static str,
    make: impl Fn() -> nix::Result<T>,
) -> Result<T> {
    match make() {
        Err(Errno::EEXIST) => {
            replace(dst, name)?;
            make().map_err(sys(action, name))
        }
        made => made.map_err(sys(action, name)),
    }
}

/// The directory `name` in `dst`: opened when it is one, else made (a file
/// or symlink in the way is replaced).
fn open_or_make_dir(dst: &OwnedFd, name: &[u8]) -> Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dst.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(_) => replace(dst, name)?,
    }
    mkdirat(dst.as_fd(), name, Mode::from_bits_truncate(0o755)).map_err(sys("creating", name))?;
    openat(dst.as_fd(), name, flags, Mode::empty()).map_err(sys("opening", name))
}

/// Removes a non-directory at `name` (nothing there is fine).
fn replace(dst: &OwnedFd, name: &[u8]) -> Result<()> {
    match fstatat(dst.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR => {
            let path = proc_fd_path(dst).join(std::ffi::OsStr::from_bytes(name));
            std::fs::remove_dir_all(&path).map_err(|e| FileOpError::io("replacing", &path, e))
        }
        Ok(_) => {
            unlinkat(dst.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(sys("replacing", name))
        }
        Err(_) => Ok(()),
    }
}

/// Owner, then mode (chown clears set-id bits), then mtime, on an open
/// file or directory.
pub(super) fn finish(
    fd: &OwnedFd,
    uid: u32,
    gid: u32,
    mode: u32,
    st: &FileStat,
    name: &[u8],
) -> Result<()> {
    finish_made(fd, Some((uid, gid)), mode, st, name)
}

/// [`finish`] of a file whose owner is already right when `owner` is
/// `None`.
fn finish_made(
    fd: &OwnedFd,
    owner: Option<(u32, u32)>,
    mode: u32,
    st: &FileStat,
    name: &[u8],
) -> Result<()> {
    if let Some((uid, gid)) = owner {
        fchown(
            fd.as_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(sys("chown", name))?;
    }
    fchmod(fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(sys("chmod", name))?;
    let t = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    futimens(fd.as_fd(), &t, &t).map_err(sys("setting mtime of", name))
}
