//! An OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) opened once and read and written only beneath
//! its descriptor: every path is resolved with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` (openat2(2)), so neither `..` nor a symlink
//! planted in the directory (a blobs directory that points elsewhere, a
//! blob that is a link) leads a read or a write out of it. Files are
//! written to a temp name and renamed into place, so a reader never sees
//! half a blob or half an index; blobs are verified by digest as written.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use kiln_cache::{Digest, Hasher};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// The lock file beside `index.json` (BuildKit's client's name for it):
/// exclusive while the index is changed, shared while it is read.
const LOCK: &str = "index.json.lock";

/// How often an `EAGAIN` from openat2 is retried (a rename elsewhere on the
/// host raced with the lookup; openat2(2) leaves the retry to the caller).
const RETRIES: u32 = 128;

/// A layout directory.
#[derive(Debug)]
pub(super) struct Layout {
    dir: OwnedFd,
    path: PathBuf,
}

fn how(flags: OFlag, mode: u32) -> OpenHow {
    OpenHow::new()
        // O_NONBLOCK: a FIFO planted in the directory does not hang the
        // open (it is then refused as no regular file); O_NOCTTY: a
        // device node never becomes a terminal.
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

fn open_beneath(dir: BorrowedFd<'_>, rel: &str, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(dir, rel, how(flags, mode)) {
            Err(Errno::EAGAIN) if tries < RETRIES => tries += 1,
            done => return done.map_err(io::Error::from),
        }
    }
}

/// A regular file, else an error saying what it is.
fn regular(file: File, rel: &str) -> io::Result<File> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("{rel} is not a regular file")));
    }
    Ok(file)
}

impl Layout {
    /// The directory `path` (the user's: it may be reached through
    /// symlinks of theirs); with `create`, made when missing.
    pub(super) fn open(path: &Path, create: bool) -> io::Result<Self> {
        if create {
            std::fs::create_dir_all(path)?;
        }
        let dir = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            dir,
            path: path.to_owned(),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The regular file `rel`, at most `limit` bytes of it (more is an
    /// error: a hostile directory may hold a huge `index.json`).
    pub(super) fn read(&self, rel: &str, limit: u64) -> io::Result<Vec<u8>> {
        let file = open_beneath(self.dir.as_fd(), rel, OFlag::O_RDONLY, 0)?;
        let file = regular(File::from(file), rel)?;
        let mut bytes = Vec::new();
        file.take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(io::Error::other(format!("{rel} is over {limit} bytes")));
        }
        Ok(bytes)
    }

    /// A blob's file, to read.
    pub(super) fn blob(&self, digest: &Digest) -> io::Result<File> {
        let rel = blob_path(digest);
        let file = open_beneath(self.dir.as_fd(), &rel, OFlag::O_RDONLY, 0)?;
        regular(File::from(file), &rel)
    }

    /// Whether the blob is here (a regular file of that name).
    pub(super) fn has_blob(&self, digest: &Digest) -> bool {
        self.blob(digest).is_ok()
    }

    /// `blobs/sha256`, made when missing (each part beneath the last,
    /// never through a symlink).
    fn blobs_dir(&self) -> io::Result<OwnedFd> {
        let mut dir = open_beneath(
            self.dir.as_fd(),
            ".",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            0,
        )?;
        for part in ["blobs", "sha256"] {
            match nix::sys::stat::mkdirat(dir.as_fd(), part, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            dir = open_beneath(dir.as_fd(), part, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)?;
        }
        Ok(dir)
    }

    /// Writes the blob `digest` from `from` unless it is here: to a temp
    /// file, checked against the digest, then renamed into place. Whether
    /// it was written.
    pub(super) fn put_blob(&self, digest: &Digest, from: &mut dyn Read) -> io::Result<bool> {
        if self.has_blob(digest) {
            return Ok(false);
        }
        let dir = self.blobs_dir()?;
        let hex = digest.hex();
        write_atomically(dir.as_fd(), hex, |out| {
            let mut hashing = HashingWriter {
                out,
                hasher: Hasher::default(),
            };
            io::copy(from, &mut hashing)?;
            let actual = hashing.hasher.finish();
            if actual != *digest {
                return Err(io::Error::other(format!(
                    "blob {digest}: the bytes are {actual}"
                )));
            }
            Ok(())
        })?;
        Ok(true)
    }

    /// Replaces the top-level file `name` (`index.json`, `oci-layout`)
    /// with `bytes`, atomically.
    pub(super) fn put_file(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let dir = open_beneath(
            self.dir.as_fd(),
            ".",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            0,
        )?;
        write_atomically(dir.as_fd(), name, |out| out.write_all(bytes))
    }

    /// The index lock, exclusive or shared; `None` for a shared lock in a
    /// directory this process cannot write (a read-only cache is read
    /// without one, as BuildKit's client does).
    pub(super) fn lock(&self, exclusive: bool) -> io::Result<Option<Flock<File>>> {
        let file = match open_beneath(
            self.dir.as_fd(),
            LOCK,
            OFlag::O_RDWR | OFlag::O_CREAT,
            0o644,
        ) {
            Ok(f) => regular(File::from(f), LOCK)?,
            Err(e)
                if !exclusive
                    && matches!(
                        e.raw_os_error(),
                        Some(libc_codes::EROFS | libc_codes::EACCES | libc_codes::EPERM)
                    ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        Flock::lock(file, arg)
            .map(Some)
            .map_err(|(_, e)| io::Error::from(e))
    }

    /// The digests of the blobs here (temp files and odd names left out).
    pub(super) fn list_blobs(&self) -> io::Result<Vec<Digest>> {
        let dir = match open_beneath(
            self.dir.as_fd(),
            "blobs/sha256",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            0,
        ) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            d => d?,
        };
        let mut listing = nix::dir::Dir::from_fd(dir)?;
        let mut out = Vec::new();
        for entry in listing.iter() {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy();
            if let Ok(d) = format!("sha256:{name}").parse::<Digest>() {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Removes a blob (gone already is fine).
    pub(super) fn remove_blob(&self, digest: &Digest) -> io::Result<()> {
        let dir = self.blobs_dir()?;
        match nix::unistd::unlinkat(
            dir.as_fd(),
            digest.hex(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The errno values a read-only directory answers with.
mod libc_codes {
    pub(super) const EROFS: i32 = nix::errno::Errno::EROFS as i32;
    pub(super) const EACCES: i32 = nix::errno::Errno::EACCES as i32;
    pub(super) const EPERM: i32 = nix::errno::Errno::EPERM as i32;
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Writes `name` in `dir` through a temp file beside it (made with
/// `O_EXCL`, so two writers never share one), synced, then renamed over
/// the name; the temp file is removed on failure.
fn write_atomically(
    dir: BorrowedFd<'_>,
    name: &str,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let temp = temp_name(name);
    let file = open_beneath(
        dir,
        &temp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
        0o644,
    )?;
    let mut file = File::from(file);
    let done = fill(&mut file)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            nix::fcntl::renameat(dir, temp.as_str(), dir, name).map_err(io::Error::from)
        });
    if done.is_err() {
        let _ = nix::unistd::unlinkat(dir, temp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    done
}

/// `.tmp-NAME-PID-NANOS-N`: unique to this process and call, and not a
/// digest, so [`Layout::list_blobs`] never takes one for a blob.
fn temp_name(name: &str) -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(".tmp-{name}-{}-{nanos}-{n}", std::process::id())
}

struct HashingWriter<'a> {
    out: &'a mut File,
    hasher: Hasher,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_stay_beneath() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(&dir.path().join("cache"), true).unwrap();
        let digest = Digest::of(b"hello");
        assert!(layout.put_blob(&digest, &mut &b"hello"[..]).unwrap());
        assert!(!layout.put_blob(&digest, &mut &b"hello"[..]).unwrap());
        let wrong = Digest::of(b"other");
        assert!(layout.put_blob(&wrong, &mut &b"hello"[..]).is_err());
        assert!(!layout.has_blob(&wrong));
        assert_eq!(layout.list_blobs().unwrap(), vec![digest.clone()]);
        let mut read = String::new();
        layout
            .blob(&digest)
            .unwrap()
            .read_to_string(&mut read)
            .unwrap();
        assert_eq!(read, "hello");
        layout.put_file("index.json", b"{}").unwrap();
        assert!(layout.read("index.json", 1).is_err());
        assert_eq!(layout.read("index.json", 2).unwrap(), b"{}");
    }

    #[test]
    fn a_symlinked_blobs_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("sha256")).unwrap();
        let root = dir.path().join("cache");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("blobs")).unwrap();
        let layout = Layout::open(&root, false).unwrap();
        let digest = Digest::of(b"x");
        assert!(layout.put_blob(&digest, &mut &b"x"[..]).is_err());
        assert_eq!(
            std::fs::read_dir(outside.join("sha256")).unwrap().count(),
            0
        );
        std::fs::write(outside.join("sha256").join(digest.hex()), b"x").unwrap();
        assert!(layout.blob(&digest).is_err());
        std::os::unix::fs::symlink("/etc/passwd", root.join("index.json")).unwrap();
        assert!(layout.read("index.json", 1 << 20).is_err());
    }
}
