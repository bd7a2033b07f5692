//! A directory used as a root: every path is resolved inside it with
//! `openat2(RESOLVE_IN_ROOT)`, so `..` and symlinks (even to `/`) never lead
//! out of it. See openat2(2).
//!
//! Trees written from archives (layers, `ADD` of a tar, contexts) resolve
//! more strictly, with [`Root::dir_beneath`]: beneath the root and through
//! no symlink at all, since a symlink an archive planted is not a path the
//! archive may write through. That is the one mechanism every writer of an
//! unpacked tree goes through (`layer::unpack`).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, fchownat};

use super::{FileOpError, Result};

/// A root directory.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// How often [`open_in`] retries an `EAGAIN`.
const RESOLVE_RETRIES: u32 = 128;

/// `openat2`, retried on `EAGAIN`: with `RESOLVE_IN_ROOT` or
/// `RESOLVE_BENEATH` the kernel refuses a `..` when any rename or mount on
/// the host raced with the lookup (it cannot then prove the walk stayed
/// inside), and openat2(2) leaves the retry to the caller. Bounded, so a
/// host that renames without pause gets the error rather than a spin.
fn open_in<P: ?Sized + nix::NixPath>(
    dir: BorrowedFd<'_>,
    path: &P,
    how: OpenHow,
) -> nix::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(dir, path, how) {
            Err(Errno::EAGAIN) if tries < RESOLVE_RETRIES => tries += 1,
            done => return done,
        }
    }
}

/// Resolution for writers of archived trees: never above the starting
/// directory, never through a symlink (`ELOOP` when one is in the way).
fn how_beneath(flags: OFlag) -> OpenHow {
    OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    )
}

/// The parts of a path inside the root (`/a/./b/` → `["a", "b"]`).
pub fn components(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect()
}

impl Root {
    pub fn open(path: &Path) -> Result<Self> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FileOpError::sys("opening", path, e))?;
        Ok(Self {
            fd,
            path: path.to_owned(),
        })
    }

    /// The root directory's descriptor.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory `parts` (names: no `/`, `.` or `..`) beneath
    /// the root without following any symlink; with `create`, missing
    /// directories are made (mode 0755 less the umask; an unpacker sets
    /// the real mode afterwards). A symlink in the way is `ELOOP`, a
    /// non-directory `ENOTDIR`.
    pub fn dir_beneath(&self, parts: &[&OsStr], create: bool) -> Result<OwnedFd> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        let joined = join_parts(parts);
        let whole = if parts.is_empty() {
            OsStr::new(".")
        } else {
            joined.as_os_str()
        };
        match open_in(self.fd.as_fd(), whole, how_beneath(flags)) {
            Err(Errno::ENOENT) if create => {}
            found => return found.map_err(|e| self.err_os("opening", whole, e)),
        }
        let mut dir = open_in(self.fd.as_fd(), ".", how_beneath(flags))
            .map_err(|e| self.err("opening", ".", e))?;
        for (i, part) in parts.iter().enumerate() {
            let sub = || join_parts(&parts[..=i]);
            match mkdirat(dir.as_fd(), *part, Mode::from_bits_truncate(0o755)) {
                // EEXIST: there already (or made meanwhile); opening it
                // below says whether it is a directory.
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(self.err_os("creating", &sub(), e)),
            }
            dir = open_in(dir.as_fd(), *part, how_beneath(flags))
                .map_err(|e| self.err_os("opening", &sub(), e))?;
        }
        Ok(dir)
    }

    /// Opens the regular file `parts` (names, as for
    /// [`Root::dir_beneath`]) for reading, beneath the root and through no
    /// symlink: what a reader of a hostile tree (an OCI layout) reads is
    /// in it. A symlink in the way is `ELOOP`, anything but a regular file
    /// an error.
    pub fn file_beneath(&self, parts: &[&OsStr]) -> Result<File> {
        let joined = join_parts(parts);
        let fd = open_in(
            self.fd.as_fd(),
            joined.as_os_str(),
            // O_NONBLOCK: a FIFO planted in the tree does not hang the open.
            how_beneath(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK),
        )
        .map_err(|e| self.err_os("opening", &joined, e))?;
        let file = File::from(fd);
        let regular = file
            .metadata()
            .map_err(|e| FileOpError::io("reading", &self.path.join(&joined), e))?
            .is_file();
        if !regular {
            return Err(FileOpError::Invalid(format!(
                "{}: not a regular file",
                self.path.join(&joined).display()
            )));
        }
        Ok(file)
    }

    /// Removes `parts` (names, as for [`Root::dir_beneath`]) whatever it
    /// is, reached beneath the root through no symlink. Nothing there — or
    /// a parent that is no directory, or a symlink — is fine: `false`.
    pub fn remove_beneath(&self, parts: &[&OsStr]) -> Result<bool> {
        let Some((name, dirs)) = parts.split_last() else {
            return Err(FileOpError::Invalid("removing the root itself".into()));
        };
        let dir = match self.dir_beneath(dirs, false) {
            Ok(dir) => dir,
            Err(FileOpError::Sys {
                errno: Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP,
                ..
            }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let rel = join_parts(parts);
        match fstatat(dir.as_fd(), *name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(self.err_os("removing", &rel, e)),
            Ok(_) => {}
        }
        remove_entry(&dir, name)
            .map_err(|e| FileOpError::io("removing", &self.path.join(&rel), e))?;
        Ok(true)
    }

    fn err_os(&self, action: &'static str, rel: &OsStr, e: Errno) -> FileOpError {
        FileOpError::sys(action, &self.path.join(rel), e)
    }

    /// The root's host path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, action: &'static str, rel: &str, e: Errno) -> FileOpError {
        FileOpError::sys(action, &self.path.join(rel.trim_start_matches('/')), e)
    }

    /// Opens `rel` following symlinks within the root.
    pub fn open_follow(&self, rel: &str, flags: OFlag) -> Result<OwnedFd> {
        let rel = if components(rel).is_empty() { "." } else { rel };
        open_in(self.fd.as_fd(), rel, how(flags)).map_err(|e| self.err("opening", rel, e))
    }

    /// Metadata of `rel`, symlinks followed within the root; `None` when
    /// missing.
    pub fn stat(&self, rel: &str) -> Result<Option<FileStat>> {
        match self.open_follow(rel, OFlag::O_PATH) {
            Ok(fd) => nix::sys::stat::fstat(fd.as_fd())
                .map(Some)
                .map_err(|e| self.err("reading", rel, e)),
            Err(FileOpError::Sys {
                errno: Errno::ENOENT | Errno::ENOTDIR,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The directory holding `rel` and the last component's name.
    pub fn parent(&self, rel: &str) -> Result<(OwnedFd, String)> {
        let parts = components(rel);
        let Some((name, dirs)) = parts.split_last() else {
            return Err(FileOpError::Invalid(format!(
                "{rel:?} names the root itself"
            )));
        };
        Ok((
            self.open_follow(&dirs.join("/"), OFlag::O_DIRECTORY | OFlag::O_RDONLY)?,
            (*name).to_owned(),
        ))
    }

    /// Metadata of `rel` itself (a symlink is not followed); `None` when
    /// missing.
    pub fn lstat(&self, rel: &str) -> Result<Option<FileStat>> {
        if components(rel).is_empty() {
            return self.stat(rel);
        }
        let (dir, name) = match self.parent(rel) {
            Ok(found) => found,
            Err(FileOpError::Sys {
                errno: Errno::ENOENT | Errno::ENOTDIR,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match fstatat(dir.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.err("reading", rel, e)),
        }
    }

    /// Where a write to `rel` lands when its last component is a symlink:
    /// the link followed (again and again, at most 40 times, as the kernel
    /// does) inside the root, even when it dangles — as BuildKit's copy
    /// writes a file through a destination symlink, and as a mount point is
    /// made. `rel` itself when it is no symlink or missing. The path may
    /// hold `..`: every open of it resolves that within the root.
    pub fn through_links(&self, rel: &str) -> Result<String> {
        // As the kernel's SYMLOOP_MAX.
        const MAX_LINKS: usize = 40;
        let mut path = components(rel).join("/");
        for _ in 0..MAX_LINKS {
            match self.lstat(&path)? {
                Some(st) if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK => {}
                _ => return Ok(path),
            }
            let link = self.read_link(&path)?;
            let link = link.to_string_lossy();
            path = if link.starts_with('/') {
                components(&link).join("/")
            } else {
                let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                components(&format!("{parent}/{link}")).join("/")
            };
        }
        Err(self.err("resolving", rel, Errno::ELOOP))
    }

    /// Makes directory `rel` and missing parents (like `mkdir -p`), each new
    /// one with `mode` and `owner`. Returns the created ones, outermost
    /// first. An existing non-directory in the way is an error.
    pub fn mkdir_all(
        &self,
        rel: &str,
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<Vec<String>> {
        self.mkdir_all_depth(rel, mode, owner, 0)
    }

    fn mkdir_all_depth(
        &self,
        rel: &str,
        mode: u32,
        owner: Option<(u32, u32)>,
        depth: u32,
    ) -> Result<Vec<String>> {
        // As the kernel's SYMLOOP_MAX: dangling symlinks followed at most this often.
        const MAX_LINKS: u32 = 40;
        let parts = components(rel);
        let mut created = Vec::new();
        for i in 0..parts.len() {
            let prefix = parts[..=i].join("/");
            match self.open_follow(&prefix, OFlag::O_DIRECTORY | OFlag::O_PATH) {
                Ok(_) => continue,
                Err(FileOpError::Sys {
                    errno: Errno::ENOENT,
                    ..
                }) => {}
                Err(FileOpError::Sys {
                    errno: Errno::ENOTDIR,
                    ..
                }) => {
                    return Err(FileOpError::NotADirectory(prefix));
                }
                Err(e) => return Err(e),
            }
            let (dir, name) = self.parent(&prefix)?;
            match mkdirat(dir.as_fd(), name.as_str(), Mode::from_bits_truncate(mode)) {
                Ok(()) => {}
                // Made meanwhile by someone else (steps that share a cache
                // mount make their mount points in it at once): theirs.
                Err(Errno::EEXIST)
                    if self
                        .lstat(&prefix)?
                        .is_some_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR) =>
                {
                    continue;
                }
                // A dangling symlink: make its target, inside the root.
                Err(Errno::EEXIST) if depth < MAX_LINKS => {
                    let target = self.read_link(&prefix)?;
                    let target = target.to_string_lossy();
                    let inside = if target.starts_with('/') {
                        target.into_owned()
                    } else {
                        format!("{}/{target}", parts[..i].join("/"))
                    };
                    created.extend(self.mkdir_all_depth(&inside, mode, owner, depth + 1)?);
                    continue;
                }
                Err(e) => return Err(self.err("creating", &prefix, e)),
            }
            // mkdir applies the umask; the mode asked for is the mode wanted.
            self.chmod(&prefix, mode)?;
            if let Some((uid, gid)) = owner {
                self.chown(&prefix, uid, gid)?;
            }
            created.push(prefix);
        }
        Ok(created)
    }

    /// Removes whatever non-directory is at `rel` (nothing there is fine);
    /// a directory is removed with its contents.
    pub fn remove(&self, rel: &str) -> Result<()> {
        if self.lstat(rel)?.is_none() {
            return Ok(());
        }
        let (dir, name) = self.parent(rel)?;
        remove_entry(&dir, OsStr::new(&name))
            .map(drop)
            .map_err(|e| {
                FileOpError::io("removing", &self.path.join(rel.trim_start_matches('/')), e)
            })
    }

    /// Creates (replacing) the regular file `rel`, never through a symlink.
    pub fn create_file(&self, rel: &str, mode: u32) -> Result<File> {
        if self
            .lstat(rel)?
            .is_some_and(|st| st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFDIR)
        {
            self.remove(rel)?;
        }
        let (dir, name) = self.parent(rel)?;
        let fd = nix::fcntl::openat(
            dir.as_fd(),
            name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(|e| self.err("creating", rel, e))?;
        Ok(File::from(fd))
    }

    /// The target of the symlink `rel`.
    pub fn read_link(&self, rel: &str) -> Result<std::ffi::OsString> {
        let (dir, name) = self.parent(rel)?;
        nix::fcntl::readlinkat(dir.as_fd(), name.as_str())
            .map_err(|e| self.err("reading link", rel, e))
    }

    /// Directory `rel` as a root of its own: what is mounted there, when
    /// something is (the resolution crosses into it).
    pub fn subroot(&self, rel: &str) -> Result<Root> {
        Ok(Root {
            fd: self.open_follow(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY)?,
            path: self.path.join(rel.trim_start_matches('/')),
        })
    }

    /// Where the already-resolved `fd` is, relative to this root: a path
    /// with no symlink in it (empty for the root itself).
    pub fn relative_path(&self, fd: &OwnedFd) -> Result<PathBuf> {
        let read = |fd: &OwnedFd| {
            let link = proc_fd_path(fd);
            std::fs::read_link(&link).map_err(|e| FileOpError::io("reading link", &link, e))
        };
        let (root, at) = (read(&self.fd)?, read(fd)?);
        at.strip_prefix(&root).map(Path::to_owned).map_err(|_| {
            FileOpError::Invalid(format!("{} is outside {}", at.display(), root.display()))
        })
    }

    /// Makes the symlink `rel` pointing at `target` (never through a symlink).
    pub fn symlink(&self, rel: &str, target: &str) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        nix::unistd::symlinkat(target, dir.as_fd(), name.as_str())
            .map_err(|e| self.err("creating", rel, e))
    }

    /// Removes `rel` when it is an empty directory or an empty regular
    /// file reached without following any symlink; returns whether it did.
    /// A symlink put in its way since it was made, or anything else there,
    /// is left alone: what the caller made is gone, nothing else is touched.
    pub fn remove_if_empty(&self, rel: &str) -> Result<bool> {
        let parts = components(rel);
        let Some((name, dirs)) = parts.split_last() else {
            return Ok(false);
        };
        if parts.contains(&"..") {
            return Ok(false);
        }
        let dirs = if dirs.is_empty() {
            ".".to_owned()
        } else {
            dirs.join("/")
        };
        let how = OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        let dir = match open_in(self.fd.as_fd(), dirs.as_str(), how) {
            Ok(dir) => dir,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::EXDEV) => return Ok(false),
            Err(e) => return Err(self.err("opening", &dirs, e)),
        };
        let st = match fstatat(dir.as_fd(), *name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(self.err("reading", rel, e)),
        };
        let flag = match st.st_mode & nix::libc::S_IFMT {
            nix::libc::S_IFDIR => nix::unistd::UnlinkatFlags::RemoveDir,
            nix::libc::S_IFREG if st.st_size == 0 => nix::unistd::UnlinkatFlags::NoRemoveDir,
            _ => return Ok(false),
        };
        match nix::unistd::unlinkat(dir.as_fd(), *name, flag) {
            Ok(()) => Ok(true),
            Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::EBUSY | Errno::ENOENT) => Ok(false),
            Err(e) => Err(self.err("removing", rel, e)),
        }
    }

    /// Names in directory `rel`, sorted.
    pub fn list(&self, rel: &str) -> Result<Vec<String>> {
        let fd = self.open_follow(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY)?;
        let path = proc_fd_path(&fd);
        let mut names: Vec<String> = std::fs::read_dir(&path)
            .map_err(|e| FileOpError::io("reading", &path, e))?
            .filter_map(|e| {
                e.ok()
                    .map(|e| String::from_utf8_lossy(e.file_name().as_bytes()).into_owned())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn chown(&self, rel: &str, uid: u32, gid: u32) -> Result<()> {
        let (dir, name) = self.parent_or_self(rel)?;
        fchownat(
            dir.as_fd(),
            name.as_str(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err("chown", rel, e))
    }

    pub fn chmod(&self, rel: &str, mode: u32) -> Result<()> {
        let fd = self.open_follow(rel, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
        // fchmod does not work on O_PATH descriptors; its /proc path does.
        let path = proc_fd_path(&fd);
        std::fs::set_permissions(
            &path,
            std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
        )
        .map_err(|e| FileOpError::io("chmod", &self.path.join(rel.trim_start_matches('/')), e))
    }

    fn parent_or_self(&self, rel: &str) -> Result<(OwnedFd, String)> {
        if components(rel).is_empty() {
            Ok((
                self.open_follow(".", OFlag::O_DIRECTORY | OFlag::O_RDONLY)?,
                ".".to_owned(),
            ))
        } else {
            self.parent(rel)
        }
    }
}

/// Removes entry `name` of directory `dir` whatever it is (a directory
/// with its contents, never following a symlink); nothing there is fine.
/// Returns whether a directory was removed.
pub fn remove_entry(dir: &OwnedFd, name: &OsStr) -> std::io::Result<bool> {
    let st = match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR {
        // The parent was resolved inside and the entry itself is no
        // symlink; std's remove_dir_all walks by descriptors from there.
        std::fs::remove_dir_all(proc_fd_path(dir).join(name))?;
        return Ok(true);
    }
    nix::unistd::unlinkat(dir.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
    Ok(false)
}

fn join_parts(parts: &[&OsStr]) -> std::ffi::OsString {
    let mut out = std::ffi::OsString::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push("/");
        }
        out.push(part);
    }
    out
}

/// `/proc/self/fd/N`: a path to what an already-resolved descriptor names.
pub fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}
