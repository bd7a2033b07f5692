//! Linking what a copy would write again. A COPY re-runs when a few files
//! of its context changed, and its earlier result (another snapshot of the
//! same step) already holds the others. A file found there with the
//! metadata and the bytes this copy would give it is hard-linked into the
//! new result instead of written: no inode is allocated, no data written
//! (and after a large delete ext4 allocates inodes slowly).
//!
//! Snapshots are never written in place, and only regular files are
//! shared, so a shared inode is never changed through either name: a copy
//! makes files with `O_EXCL` and replaces a name by unlinking it, and
//! overlayfs copies a lower file up before changing it.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat};

use super::tree::Meta;
use super::{FileOpError, Result};

/// The largest file compared in one read of each side.
const CHUNK: usize = 64 << 10;

/// The directory `name` in `dir`, when it is one (no symlink followed).
pub(super) fn open_dir_in(dir: &OwnedFd, name: &[u8]) -> Option<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(dir.as_fd(), name, flags, Mode::empty()).ok()
}

/// Links `name` from `previous` into `dst` when it is what copying `from`
/// (described by `st`) would make there: a regular file with the same
/// size, mode, owner and mtime, and the same bytes. Otherwise `false`, with
/// `from` back at its start for the copy; a link that fails (another
/// filesystem, too many links) is a copy too.
pub(super) fn link_unchanged(
    previous: &OwnedFd,
    from: &mut File,
    st: &FileStat,
    dst: &OwnedFd,
    name: &[u8],
    meta: &Meta<'_>,
) -> Result<bool> {
    let Some(mut old) = open_same(previous, name, st, meta) else {
        return Ok(false);
    };
    let path = || std::path::Path::new(std::ffi::OsStr::from_bytes(name)).to_owned();
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let same =
        same_bytes(from, &mut old, size).map_err(|e| FileOpError::io("comparing", &path(), e))?;
    if same
        && nix::unistd::linkat(previous.as_fd(), name, dst.as_fd(), name, AtFlags::empty()).is_ok()
    {
        return Ok(true);
    }
    from.rewind()
        .map_err(|e| FileOpError::io("rewinding", &path(), e))?;
    Ok(false)
}

/// `name` in `previous`, open, when its metadata is what the copy of the
/// file `st` describes gets.
fn open_same(previous: &OwnedFd, name: &[u8], st: &FileStat, meta: &Meta<'_>) -> Option<File> {
    // O_NONBLOCK: a fifo there must not stall the copy (it fails the
    // type check below).
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(previous.as_fd(), name, flags, Mode::empty()).ok()?;
    let old = fstat(fd.as_fd()).ok()?;
    let owner = meta.owner.unwrap_or((st.st_uid, st.st_gid));
    let same = old.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG
        && old.st_size == st.st_size
        && (old.st_mtime, old.st_mtime_nsec) == (st.st_mtime, st.st_mtime_nsec)
        && old.st_mode & 0o7777 == meta.mode_of(st)
        && (old.st_uid, old.st_gid) == owner;
    same.then(|| File::from(fd))
}

/// Whether `a` and `b` both hold exactly `size` bytes, the same ones. A
/// file that grew or shrank since it was looked at is not the same: the
/// copy then takes what it holds. As the copy does, a read that returns
/// less than asked is taken for the end of a regular file.
fn same_bytes(a: &mut File, b: &mut File, size: u64) -> io::Result<bool> {
    // One byte more than `size` is asked for: a file that has it grew.
    let mut left = size + 1;
    let len = usize::try_from(left).map_or(CHUNK, |n| n.min(CHUNK));
    let (mut x, mut y) = (vec![0; len], vec![0; len]);
    let mut total = 0;
    while left > 0 {
        let want = usize::try_from(left).map_or(len, |n| n.min(len));
        let n = read_once(a, &mut x[..want])?;
        if read_once(b, &mut y[..want])? != n || x[..n] != y[..n] {
            return Ok(false);
        }
        total += n as u64;
        if n < want {
            break;
        }
        left -= want as u64;
    }
    Ok(total == size)
}

/// One read into `buf` (again when interrupted).
fn read_once(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            read => return read,
        }
    }
}
