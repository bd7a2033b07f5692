//! Content digests of build-context files, for cache keys: path, type,
//! mode (unless an octal `--chmod` replaces it), size and content — never mtimes, so
//! touching a file without changing it keeps the cache.
//!
//! A file's content digest is remembered in the store's index under what
//! changes whenever its content does (device, inode, size, mtime, ctime),
//! so a rebuild reads only files that changed — as BuildKit's content hash
//! cache and git's index do.
//!
//! The digest is part of every step cache key that reads the context, so
//! the bytes hashed must never change: the tests pin the digests the
//! first, path-based walk gave. Below the top of a source the walk goes by
//! descriptor (`fstatat`, `openat`, `readlinkat` in the open directory)
//! rather than by full path, so each entry costs one short lookup instead
//! of resolving every leading component again, and by reused buffers
//! rather than an allocation per path and memo key.
//!
//! The digest cannot fail: a directory deeper than
//! [`MAX_TREE_DEPTH`](kiln_proto::depth::MAX_TREE_DEPTH) levels below a
//! source's top is hashed as a marker, not walked, and the copy that reads
//! the source then fails, naming it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_cache::{Digest, Hasher, MetaStore};
use kiln_proto::depth::MAX_TREE_DEPTH;
use kiln_proto::dockerignore::Matcher;
use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::libc;
use nix::sys::stat::{FileStat, Mode};

/// The longest path the kernel resolves (`PATH_MAX` less its NUL). The
/// first walk looked every entry up by its full path, so a longer one
/// counted as missing; a lookup by descriptor has no such limit, so the
/// walk applies it itself.
const PATH_MAX_LEN: usize = libc::PATH_MAX as usize - 1;

/// How many directory levels keep their descriptor open while the walk is
/// below them. Deeper levels go by path, as the first walk did, so a deep
/// tree cannot run the process out of descriptors.
const FD_DEPTH: usize = 64;

/// Context digests already computed, by context directory and what was
/// asked. kilnd shares one across builds and forgets a directory when its
/// session's tree changes, so a rebuild of an unchanged context reads
/// nothing at all; the CLI starts with an empty one per build.
#[derive(Debug, Default)]
pub struct ContextDigests(Mutex<HashMap<(PathBuf, String), String>>);

impl ContextDigests {
    /// The digest for `ask` (sources, mode, ignore patterns) in `context`,
    /// computed by `compute` on a miss.
    pub(super) fn get_or(
        &self,
        context: &Path,
        ask: String,
        compute: impl FnOnce() -> String,
    ) -> String {
        let key = (context.to_owned(), ask);
        if let Some(d) = self.lock().get(&key) {
            return d.clone();
        }
        let digest = compute();
        self.lock().insert(key, digest.clone());
        digest
    }

    /// Forgets every digest of `context` (its files changed, or it is gone).
    pub fn forget(&self, context: &Path) {
        self.lock().retain(|(dir, _), _| dir != context);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(PathBuf, String), String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The digest of what `sources` (context paths, possibly with wildcards)
/// cover in `context`, minus what `.dockerignore` excludes.
pub(super) fn digest(
    context: &Path,
    sources: &[String],
    ignore: &Matcher,
    with_mode: bool,
    memo: &dyn MetaStore,
) -> String {
    let mut walk = Walk::new(context, ignore, with_mode, memo);
    for source in sources {
        walk.h.update(source.as_bytes());
        walk.h.update(b"\0");
        walk.source(&plain_base(source));
    }
    walk.h.finish().to_string()
}

/// Where hashing of `source` starts: its components up to the first with a
/// wildcard (a wildcard covers its directory), without empty and `.` ones.
fn plain_base(source: &str) -> String {
    let parts: Vec<&str> = source
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let plain = parts
        .iter()
        .take_while(|p| !p.contains(['*', '?', '[']))
        .count();
    parts[..plain].join("/")
}

/// One digest's walk: the hasher, and buffers reused from entry to entry
/// so that a warm walk allocates little per file.
struct Walk<'a> {
    context: &'a Path,
    /// The length of `context.join(rel)` less `rel`'s: where the kernel's
    /// path limit is counted from.
    prefix_len: usize,
    ignore: &'a Matcher,
    with_mode: bool,
    memo: &'a dyn MetaStore,
    h: Hasher,
    /// The current entry's path from the context: grown going down, cut
    /// back coming up.
    rel: String,
    /// The memo key of the current file.
    key: String,
    /// File reads, allocated on the first file not remembered.
    buf: Vec<u8>,
    /// How many directories down from the top the walk is: the first
    /// [`FD_DEPTH`] of them keep their descriptor, and a directory deeper
    /// than [`MAX_TREE_DEPTH`] is not entered (each level is two frames
    /// of this thread's stack).
    depth: usize,
}

/// An entry to look at: by path (the top of a source, where symlinks
/// among the leading components are followed as they always were, and
/// levels below [`FD_DEPTH`]), or by name in an open directory.
#[derive(Clone, Copy)]
enum At<'a> {
    Path(&'a Path),
    In(BorrowedFd<'a>, &'a str),
}

impl<'a> Walk<'a> {
    fn new(
        context: &'a Path,
        ignore: &'a Matcher,
        with_mode: bool,
        memo: &'a dyn MetaStore,
    ) -> Self {
        Self {
            context,
            prefix_len: context.join("x").as_os_str().len() - 1,
            ignore,
            with_mode,
            memo,
            h: Hasher::default(),
            rel: String::new(),
            key: String::new(),
            buf: Vec::new(),
            depth: 0,
        }
    }

    /// Hashes what `base` (a source's plain part) covers.
    fn source(&mut self, base: &str) {
        self.rel.clear();
        self.rel.push_str(base);
        let path = self.context.join(base);
        self.entry(At::Path(&path));
    }

    /// Hashes the entry at `self.rel`, found at `at`.
    fn entry(&mut self, at: At<'_>) {
        let meta = self.stat(at);
        if !self.rel.is_empty()
            && self.ignore.excludes(&self.rel)
            && !self.kept(meta.is_some_and(|m| m.kind() == b'd'))
        {
            return;
        }
        let Some(meta) = meta else {
            self.h.update(b"missing\0");
            return;
        };
        self.h.update(self.rel.as_bytes());
        self.h.update(b"\0");
        let kind = meta.kind();
        self.h.update(&[kind]);
        if self.with_mode {
            self.h.update(&meta.mode.to_le_bytes());
        }
        match kind {
            // Not walked: the copy that reads it refuses it, naming it.
            b'd' if self.depth > MAX_TREE_DEPTH => self.h.update(b"too deep\0"),
            b'd' => self.dir(at),
            b'l' => {
                if let Some(target) = at.read_link() {
                    self.h.update(target.as_bytes());
                }
            }
            _ => {
                self.h.update(&meta.size.to_le_bytes());
                let digest = self.file_digest(at, &meta);
                self.h.update(digest.hex().as_bytes());
            }
        }
    }

    /// The entry's metadata, symlinks not followed; `None` when it cannot
    /// be read (it then counts as missing), including when its full path
    /// is longer than the kernel resolves, as for a lookup by path.
    fn stat(&self, at: At<'_>) -> Option<Meta> {
        match at {
            At::Path(path) => fs::symlink_metadata(path).ok().map(|m| Meta::from(&m)),
            At::In(..) if self.prefix_len + self.rel.len() > PATH_MAX_LEN => None,
            At::In(dir, name) => nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .ok()
                .map(Meta::from),
        }
    }

    /// Whether an excluded entry comes back: an exception below an
    /// excluded directory brings it back.
    fn kept(&self, is_dir: bool) -> bool {
        let context = self.context;
        let mut list = |r: &str| kiln_worker::fileop::dir_entries(&context.join(r));
        self.ignore.keeps(&self.rel, is_dir, &mut list)
    }

    /// Hashes the entries of the directory at `at`, sorted by name.
    fn dir(&mut self, at: At<'_>) {
        let Some(mut dir) = at.open_dir() else {
            return;
        };
        let names = sorted_names(&mut dir);
        let dir = (self.depth < FD_DEPTH).then_some(dir);
        let len = self.rel.len();
        self.depth += 1;
        for name in &names {
            if len > 0 {
                self.rel.push('/');
            }
            self.rel.push_str(name);
            match &dir {
                Some(dir) => self.entry(At::In(dir.as_fd(), name)),
                None => {
                    let path = self.context.join(&self.rel);
                    self.entry(At::Path(&path));
                }
            }
            self.rel.truncate(len);
        }
        self.depth -= 1;
    }

    /// The digest of a file's content, remembered or read. A file changed in
    /// the last second is not remembered: timestamps are coarser than writes
    /// (git's "racy" entries).
    fn file_digest(&mut self, at: At<'_>, meta: &Meta) -> Digest {
        self.key.clear();
        meta.write_key(&mut self.key);
        if let Ok(Some(digest)) = self.memo.file_digest(&self.key) {
            return digest;
        }
        let digest = self.content_digest(at);
        if !meta.racy() {
            // Only a lost shortcut if it cannot be written.
            let _ = self.memo.put_file_digest(&self.key, &digest);
        }
        digest
    }

    /// The digest of what can be read of the file at `at` (nothing, if it
    /// cannot be opened; up to the first error).
    fn content_digest(&mut self, at: At<'_>) -> Digest {
        let mut h = Hasher::default();
        if let Some(mut file) = at.open_file() {
            if self.buf.is_empty() {
                self.buf = vec![0u8; 1 << 16];
            }
            while let Ok(n) = file.read(&mut self.buf) {
                if n == 0 {
                    break;
                }
                h.update(&self.buf[..n]);
            }
        }
        h.finish()
    }
}

impl At<'_> {
    /// The directory, for listing. By path, symlinks are followed as
    /// `read_dir` did; by name, the entry was just seen to be a directory
    /// and a symlink put in its place is not followed.
    fn open_dir(self) -> Option<Dir> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match self {
            At::Path(path) => Dir::open(path, flags, Mode::empty()),
            At::In(dir, name) => Dir::openat(dir, name, flags | OFlag::O_NOFOLLOW, Mode::empty()),
        }
        .ok()
    }

    /// A symlink's target.
    fn read_link(self) -> Option<OsString> {
        match self {
            At::Path(path) => fs::read_link(path).ok().map(PathBuf::into_os_string),
            At::In(dir, name) => nix::fcntl::readlinkat(dir, name).ok(),
        }
    }

    /// The file, for reading. By name, a symlink put in its place since
    /// it was seen is not followed.
    fn open_file(self) -> Option<fs::File> {
        match self {
            At::Path(path) => fs::File::open(path).ok(),
            At::In(dir, name) => nix::fcntl::openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
            .ok()
            .map(fs::File::from),
        }
    }
}

/// The names in `dir` as the first walk had them: without `.` and `..`,
/// up to the first error (as `read_dir`), converted lossily to UTF-8 —
/// a name that is not UTF-8 is then looked up by its lossy form, and
/// counts as missing — and sorted.
fn sorted_names(dir: &mut Dir) -> Vec<String> {
    let mut names: Vec<String> = dir
        .iter()
        .map_while(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_bytes();
            (name != b"." && name != b"..").then(|| String::from_utf8_lossy(name).into_owned())
        })
        .collect();
    names.sort();
    names
}

/// What the digest reads of an entry's metadata, the same from `statx` by
/// path as from `fstatat` by descriptor.
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// `st_mode`: type and permission bits.
    mode: u32,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl From<&fs::Metadata> for Meta {
    fn from(m: &fs::Metadata) -> Self {
        Self {
            mode: m.mode(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

impl From<FileStat> for Meta {
    fn from(st: FileStat) -> Self {
        Self {
            mode: st.st_mode,
            dev: st.st_dev,
            ino: st.st_ino,
            // As std's `MetadataExt::size`.
            size: st.st_size as u64,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            ctime: st.st_ctime,
            ctime_nsec: st.st_ctime_nsec,
        }
    }
}

impl Meta {
    /// `d`irectory, `l`ink, or `f`ile (anything else).
    fn kind(&self) -> u8 {
        match self.mode & libc::S_IFMT {
            libc::S_IFDIR => b'd',
            libc::S_IFLNK => b'l',
            _ => b'f',
        }
    }

    /// Appends the memo key, "dev:ino:size:mtime.ns:ctime.ns": what
    /// changes whenever the content does.
    fn write_key(&self, key: &mut String) {
        // Writing to a String cannot fail.
        let _ = write!(
            key,
            "{}:{}:{}:{}.{}:{}.{}",
            self.dev, self.ino, self.size, self.mtime, self.mtime_nsec, self.ctime, self.ctime_nsec
        );
    }

    /// Changed within the last second, by the clock now.
    fn racy(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.ctime >= i64::try_from(now).unwrap_or(i64::MAX) - 1
    }
}

#[cfg(test)]
mod tests;
