//! One entry of the tree, read by a reader thread: its stat, its xattrs,
//! and a small regular file's contents, through its parent directory's
//! descriptor and never through a symlink.
//!
//! A regular file is opened (`O_NOFOLLOW`, `O_NONBLOCK`: a fifo put in its
//! place could not block us) and everything else about it comes from that
//! descriptor, so its stat, xattrs and data are of one and the same file.
//! Directories are read by the walk, which opens them anyway. Other
//! entries are never opened (a device's open can have effects):
//! they are `fstatat`'d, and their xattrs read by a path through
//! `/proc/self/fd` with the `l*` calls, which do not follow the last
//! component.

use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};
use xattr::FileExt;

use super::sys;
use super::walk::{Dir, Job};
use crate::layer::{LayerError, OVERLAY_OPAQUE_XATTR, Result, io_err};

/// Regular files up to this size are read ahead whole; larger ones are
/// handed over open and streamed as the tar reaches them. With a few
/// dozen entries in flight, this bounds the memory read ahead to a few
/// MiB. (A file's second name is read too, for nothing but one call: the
/// reader cannot know it is not the first.)
pub(super) const READ_AHEAD_MAX: u64 = 64 * 1024;

/// What the tar needs of an entry's `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) size: u64,
    pub(super) mtime: i64,
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) nlink: u64,
    pub(super) rdev: u64,
}

impl Stat {
    // `st_nlink` is not u64 on every target; `st_size` is never negative.
    #[allow(clippy::useless_conversion, clippy::cast_sign_loss)]
    pub(super) fn of(st: &FileStat) -> Self {
        Self {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: st.st_mtime,
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: u64::from(st.st_nlink),
            rdev: st.st_rdev,
        }
    }

    fn kind(&self) -> u32 {
        self.mode & nix::libc::S_IFMT
    }

    pub(super) fn is_dir(&self) -> bool {
        self.kind() == nix::libc::S_IFDIR
    }

    pub(super) fn is_symlink(&self) -> bool {
        self.kind() == nix::libc::S_IFLNK
    }

    fn is_file(&self) -> bool {
        self.kind() == nix::libc::S_IFREG
    }

    /// overlayfs's whiteout: a character device 0/0.
    fn is_whiteout(&self) -> bool {
        self.kind() == nix::libc::S_IFCHR && self.rdev == 0
    }
}

/// An entry as read, ready to be written.
pub(super) struct Entry {
    /// Its path on disk, for messages.
    pub(super) path: PathBuf,
    /// Its path in the layer (names made UTF-8, lossily, as ever).
    pub(super) rel: String,
    /// Where its own name starts in `rel`.
    pub(super) name_at: usize,
    pub(super) stat: Stat,
    /// PAX records `SCHILY.xattr.<name>`, in the order the file system
    /// lists them, overlay's own left out.
    pub(super) xattrs: Vec<(String, Vec<u8>)>,
    pub(super) body: Body,
}

pub(super) enum Body {
    Whiteout,
    Dir {
        opaque: bool,
    },
    Symlink(OsString),
    File(Data),
    /// A device, fifo or socket.
    Other,
}

/// A regular file's contents.
pub(super) enum Data {
    /// All of it (exactly its size).
    Read(Vec<u8>),
    /// Still to be read, by [`Exact`].
    Open(File),
}

/// Reads what the walk dealt.
pub(super) fn read(job: Job) -> Result<Entry> {
    let job = match job {
        Job::Ready(entry) => return Ok(entry),
        Job::Read(job) => job,
    };
    let path = job.parent.path.join(OsStr::from_bytes(job.name.to_bytes()));
    let (stat, xattrs, body) = if job.file {
        file(&job.parent, &job.name, &path)?
    } else {
        other(&job.parent, &job.name, &path)?
    };
    Ok(Entry {
        path,
        rel: job.rel,
        name_at: job.name_at,
        stat,
        xattrs,
        body,
    })
}

type Read3 = (Stat, Vec<(String, Vec<u8>)>, Body);

/// The directory `dir`, just opened by the walk, as the entry `rel`.
pub(super) fn directory(dir: &Dir, rel: String, name_at: usize) -> Result<Entry> {
    let stat = Stat::of(&fstat(&dir.fd).map_err(sys("reading", &dir.path))?);
    if !stat.is_dir() {
        return Err(changed(&dir.path));
    }
    let xattrs = records(dir.fd.list_xattr(), |name| dir.fd.get_xattr(name));
    let opaque = dir
        .fd
        .get_xattr(OVERLAY_OPAQUE_XATTR)
        .ok()
        .flatten()
        .as_deref()
        == Some(b"y");
    Ok(Entry {
        path: dir.path.clone(),
        rel,
        name_at,
        stat,
        xattrs,
        body: Body::Dir { opaque },
    })
}

/// A regular file, by the descriptor it is opened with.
fn file(parent: &Dir, name: &CStr, path: &Path) -> Result<Read3> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let mut file =
        File::from(openat(&parent.fd, name, flags, Mode::empty()).map_err(sys("opening", path))?);
    let stat = Stat::of(&fstat(&file).map_err(sys("reading", path))?);
    if !stat.is_file() {
        return Err(changed(path));
    }
    let xattrs = records(file.list_xattr(), |name| file.get_xattr(name));
    let data = if stat.size > READ_AHEAD_MAX {
        Data::Open(file)
    } else {
        Data::Read(read_whole(&mut file, stat.size, path)?)
    };
    Ok((stat, xattrs, Body::File(data)))
}

/// A symlink, device, fifo or socket (or a whiteout), never opened.
fn other(parent: &Dir, name: &CStr, path: &Path) -> Result<Read3> {
    let st = fstatat(&parent.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW);
    let stat = Stat::of(&st.map_err(sys("reading", path))?);
    if stat.is_whiteout() {
        return Ok((stat, Vec::new(), Body::Whiteout));
    }
    if stat.is_dir() || stat.is_file() {
        // The walk saw something else there.
        return Err(changed(path));
    }
    let body = if stat.is_symlink() {
        let target = readlinkat(&parent.fd, name).map_err(sys("reading", path))?;
        Body::Symlink(target)
    } else {
        Body::Other
    };
    let xattrs = xattrs_by_proc(parent, name, &stat, path)?;
    Ok((stat, xattrs, body))
}

/// The xattrs of an entry that is not opened, by the path
/// `/proc/self/fd/<parent>/<name>`: its parent by descriptor, and the
/// `l*` calls do not follow `name` itself.
fn xattrs_by_proc(
    parent: &Dir,
    name: &CStr,
    stat: &Stat,
    path: &Path,
) -> Result<Vec<(String, Vec<u8>)>> {
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", parent.fd.as_raw_fd()))
        .join(OsStr::from_bytes(name.to_bytes()));
    let listed = match xattr::list(&by_fd) {
        // An entry that cannot list its xattrs has none, as ever; but
        // when /proc cannot be used, the layer would lose them: an error.
        Err(e) if !reaches(&by_fd, stat) => {
            return Err(io_err("listing xattrs (by /proc/self/fd) of", path)(e));
        }
        listed => listed,
    };
    Ok(records(listed, |name| xattr::get(&by_fd, name)))
}

/// Whether `by_fd` is the entry of `stat` (and not missing, closed to
/// us, or something else: /proc not mounted as it should be).
pub(super) fn reaches(by_fd: &Path, stat: &Stat) -> bool {
    fstatat(AT_FDCWD, by_fd, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| (st.st_dev, st.st_ino) == (stat.dev, stat.ino))
}

/// The PAX records of an entry's xattrs: every one the file system lists
/// and gives, but overlay's own (`trusted.overlay.*`). Names are made
/// UTF-8 lossily, and the value asked by that name, as ever; an entry
/// whose xattrs cannot be listed, or a value that cannot be read, is
/// simply without (a file system without xattrs).
fn records(
    listed: io::Result<xattr::XAttrs>,
    get: impl Fn(&str) -> io::Result<Option<Vec<u8>>>,
) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = listed else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        if let Ok(Some(value)) = get(&name) {
            records.push((format!("SCHILY.xattr.{name}"), value));
        }
    }
    records
}

/// All of a small file, which must be exactly `size` bytes long. One
/// `read` of `size + 1` bytes does it: a regular file gives less than
/// asked only at its end, so `size` bytes back means all of it; fewer or
/// more, and the file is not the size its stat said.
pub(super) fn read_whole(file: &mut File, size: u64, path: &Path) -> Result<Vec<u8>> {
    let len = usize::try_from(size).map_err(|_| changed(path))?;
    let mut buf = vec![0; len + 1];
    let mut got = 0;
    loop {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("reading", path)(e)),
        }
        if got >= len {
            break;
        }
    }
    if got != len {
        return Err(io_err("reading", path)(size_changed(got as u64, size)));
    }
    buf.truncate(len);
    Ok(buf)
}

/// A large file's contents as the tar reads them: exactly `size` bytes,
/// an error if the file turns out shorter or longer.
pub(super) struct Exact<'a> {
    file: File,
    left: u64,
    size: u64,
    path: &'a Path,
}

impl<'a> Exact<'a> {
    pub(super) fn new(file: File, size: u64, path: &'a Path) -> Self {
        Self {
            file,
            left: size,
            size,
            path,
        }
    }

    fn error(&self, got: u64) -> io::Error {
        let e = size_changed(got, self.size);
        io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))
    }
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Its size is all the tar may hold: there must be no more.
            let n = self.file.read(&mut [0])?;
            return if n == 0 {
                Ok(0)
            } else {
                Err(self.error(self.size + 1))
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(self.error(self.size - self.left));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The error of a file whose contents are not the size its stat said: the
/// tree changed while it was read (it must not), and a tar with the wrong
/// size would be corrupt.
fn size_changed(got: u64, size: u64) -> io::Error {
    let what = if got < size { "shorter" } else { "longer" };
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the file is {what} than its size, {size} bytes: it changed while it was read"),
    )
}

/// The error of an entry that is not what it was a moment ago.
fn changed(path: &Path) -> LayerError {
    LayerError::Io {
        action: "reading",
        path: path.to_owned(),
        source: io::Error::other("the entry changed type while the layer was read"),
    }
}
