//! The walk: every entry of the tree in tar order (names sorted per
//! directory, depth first), each directory opened once from its parent's
//! descriptor with `O_NOFOLLOW` — the tree came out of a sandboxed step,
//! and no path through it is ever resolved again.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::dir::Type;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{Mode, fstat, fstatat};

use kiln_proto::depth;

use super::read::{self, Entry};
use super::sys;
use crate::layer::{LayerError, Result, io_err};

/// How many levels of directories the walk keeps open. Deeper, it closes
/// a directory while it walks a subdirectory and opens it again from
/// there (`..`, checked to be the same) after: a tree thousands deep (the
/// walk by paths took those, up to `PATH_MAX`) must not run out of
/// descriptors.
const KEPT_OPEN: usize = 64;

/// A directory of the tree, open.
pub(super) struct Dir {
    /// Its descriptor (a `File`, for the xattr calls).
    pub(super) fd: File,
    /// Its path, for messages.
    pub(super) path: PathBuf,
}

impl Dir {
    /// The top of the tree, `upper` itself, which may be reached through
    /// symlinks (it is the caller's path, not the tree's).
    pub(super) fn open_root(upper: &Path) -> Result<Self> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = open(upper, flags, Mode::empty()).map_err(sys("reading", upper))?;
        Ok(Self {
            fd: File::from(fd),
            path: upper.to_owned(),
        })
    }

    /// Its subdirectory `name`, which must be a directory and no symlink.
    fn open_sub(&self, name: &CStr) -> Result<Self> {
        let path = self.path.join(OsStr::from_bytes(name.to_bytes()));
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, name, flags, Mode::empty()).map_err(sys("reading", &path))?;
        Ok(Self {
            fd: File::from(fd),
            path,
        })
    }

    /// Its names (but `.` and `..`) sorted bytewise, each with its type
    /// when the file system gives it.
    fn list(&self) -> Result<Vec<(CString, Option<Type>)>> {
        // fdopendir takes the descriptor it reads: it reads a duplicate.
        let fd = self.fd.try_clone().map_err(io_err("reading", &self.path))?;
        let mut dir = nix::dir::Dir::from_fd(fd.into()).map_err(sys("reading", &self.path))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(sys("reading", &self.path))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push((name.to_owned(), entry.file_type()));
            }
        }
        names.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(names)
    }

    /// Its (device, inode).
    fn id(&self) -> Result<(u64, u64)> {
        let st = fstat(&self.fd).map_err(sys("reading", &self.path))?;
        Ok((st.st_dev, st.st_ino))
    }
}

/// One entry, in walk order.
pub(super) enum Job {
    /// For a reader to read.
    Read(ToRead),
    /// A directory, read by the walk as it opened it: no job then holds
    /// its descriptor, and the descriptors in flight stay few (the
    /// parents of the entries dealt, mostly one).
    Ready(Entry),
}

/// An entry for a reader: a name in an open directory.
pub(super) struct ToRead {
    pub(super) parent: Arc<Dir>,
    pub(super) name: CString,
    /// Its path in the layer: its parent's, then its name made UTF-8.
    pub(super) rel: String,
    /// Where its own name starts in `rel`.
    pub(super) name_at: usize,
    /// Whether the walk saw a regular file (else a symlink, device,
    /// whiteout, fifo or socket); the reader checks.
    pub(super) file: bool,
}

/// What the walk sees an entry to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    Dir,
    File,
    Other,
}

/// Why the walk stopped early.
pub(super) enum Stop {
    Failed(LayerError),
    /// Nothing takes its entries any more (the writer failed).
    Gone,
}

impl From<LayerError> for Stop {
    fn from(e: LayerError) -> Self {
        Self::Failed(e)
    }
}

/// Walks the tree below `root`, giving every entry to `emit` in tar
/// order; `emit` returns `Err(Stop::Gone)` when nobody listens. A
/// directory deeper than [`depth::MAX_TREE_DEPTH`] levels stops it with
/// [`LayerError::TooDeep`]: each level is a frame of this thread's stack.
pub(super) fn walk(
    root: Dir,
    emit: &mut impl FnMut(Job) -> std::result::Result<(), Stop>,
) -> std::result::Result<(), Stop> {
    Walker { emit }.dir(Arc::new(root), "", 0).map(drop)
}

struct Walker<'a, F> {
    emit: &'a mut F,
}

impl<F: FnMut(Job) -> std::result::Result<(), Stop>> Walker<'_, F> {
    /// Emits the entries of `dir` (at `depth`; its layer path is
    /// `prefix`), and returns it open again (it may have been reopened).
    fn dir(
        &mut self,
        mut dir: Arc<Dir>,
        prefix: &str,
        depth: usize,
    ) -> std::result::Result<Arc<Dir>, Stop> {
        for (name, seen) in dir.list()? {
            let rel = format!("{prefix}{}", String::from_utf8_lossy(name.to_bytes()));
            let name_at = prefix.len();
            let seen = match seen {
                Some(Type::Directory) => Seen::Dir,
                Some(Type::File) => Seen::File,
                Some(_) => Seen::Other,
                None => look(&dir, &name)?,
            };
            if seen == Seen::Dir {
                depth::check(depth + 1, || format!("/{rel}")).map_err(LayerError::from)?;
                let sub = dir.open_sub(&name)?;
                (self.emit)(Job::Ready(read::directory(&sub, rel.clone(), name_at)?))?;
                dir = self.sub(dir, sub, &format!("{rel}/"), depth)?;
            } else {
                (self.emit)(Job::Read(ToRead {
                    parent: Arc::clone(&dir),
                    name,
                    rel,
                    name_at,
                    file: seen == Seen::File,
                }))?;
            }
        }
        Ok(dir)
    }

    /// Walks `sub` of `dir`; returns `dir` open (again, when deep).
    fn sub(
        &mut self,
        dir: Arc<Dir>,
        sub: Dir,
        prefix: &str,
        depth: usize,
    ) -> std::result::Result<Arc<Dir>, Stop> {
        if depth < KEPT_OPEN {
            self.dir(Arc::new(sub), prefix, depth + 1)?;
            return Ok(dir);
        }
        let id = dir.id()?;
        let path = dir.path.clone();
        drop(dir);
        let sub = self.dir(Arc::new(sub), prefix, depth + 1)?;
        Ok(Arc::new(reopen_parent(&sub, path, id)?))
    }
}

/// What `name` in `dir` is, on a file system that does not say in its
/// listing.
pub(super) fn look(dir: &Dir, name: &CStr) -> Result<Seen> {
    let path = || dir.path.join(OsStr::from_bytes(name.to_bytes()));
    let st = fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| sys("reading", &path())(e))?;
    Ok(match st.st_mode & nix::libc::S_IFMT {
        nix::libc::S_IFDIR => Seen::Dir,
        nix::libc::S_IFREG => Seen::File,
        _ => Seen::Other,
    })
}

/// The parent of `sub` again, which must be the directory `id` at `path`.
fn reopen_parent(sub: &Dir, path: PathBuf, id: (u64, u64)) -> Result<Dir> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let fd = openat(&sub.fd, "..", flags, Mode::empty()).map_err(sys("reopening", &path))?;
    let dir = Dir {
        fd: File::from(fd),
        path,
    };
    if dir.id()? != id {
        let moved = io::Error::other("the directory moved while the layer was read");
        return Err(io_err("reopening", &dir.path)(moved));
    }
    Ok(dir)
}
