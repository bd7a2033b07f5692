//! Removing a directory tree however deep it is.
//!
//! A RUN step (or a cache mount it writes) can make a tree as deep as it
//! likes without a long path (`mkdir b && mv a b/a && mv b a`, again and
//! again). `std::fs::remove_dir_all` recurses once per level, holding a
//! descriptor at each: tens of thousands of levels run it out of
//! descriptors, or its thread out of stack — and a stack overflow aborts
//! the whole process (kilnd, for every client). [`remove_all`] keeps its
//! levels on the heap and at most [`KEPT_OPEN`] descriptors, reopening a
//! parent through `..` (checked to be the same directory) below that.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{Mode, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// How many levels keep their directory open while the removal is below
/// them; deeper ones are reopened through `..`.
const KEPT_OPEN: usize = 64;

/// One directory on the way down: what is left to remove in it.
struct Level {
    /// Open while within [`KEPT_OPEN`] levels of the top, and always for
    /// the deepest level.
    fd: Option<OwnedFd>,
    /// Its (device, inode), to check a reopening through `..` against.
    id: (u64, u64),
    /// Its subdirectories not removed yet, the one being removed last
    /// (everything else in it is already gone).
    subdirs: Vec<CString>,
}

/// Removes `path` and, when it is a directory, everything in it, without
/// following a symlink (a symlink at `path` is removed itself, as
/// `std::fs::remove_dir_all` does). Nothing at `path` is an error
/// (`NotFound`), as for std's.
pub fn remove_all(path: &Path) -> io::Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let top = match open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        // A symlink (ELOOP) or any other file (ENOTDIR): that alone.
        Err(Errno::ELOOP | Errno::ENOTDIR) => return std::fs::remove_file(path),
        Err(e) => return Err(e.into()),
    };
    let mut levels = vec![level(top)?];
    loop {
        let depth = levels.len();
        let Some(deepest) = levels.last_mut() else {
            break;
        };
        if let Some(name) = deepest.subdirs.last() {
            let fd = deepest.fd.as_ref().ok_or_else(closed)?;
            let sub = openat(fd, name.as_c_str(), flags, Mode::empty())?;
            if depth > KEPT_OPEN {
                deepest.fd = None;
            }
            levels.push(level(sub)?);
            continue;
        }
        // Empty: up a level, and remove it there by its name.
        let done = levels.pop().ok_or_else(closed)?;
        let Some(parent) = levels.last_mut() else {
            break;
        };
        if parent.fd.is_none() {
            parent.fd = Some(reopen_parent(&done, parent.id)?);
        }
        drop(done);
        let name = parent.subdirs.pop().ok_or_else(closed)?;
        let fd = parent.fd.as_ref().ok_or_else(closed)?;
        unlinkat(fd, name.as_c_str(), UnlinkatFlags::RemoveDir)?;
    }
    std::fs::remove_dir(path)
}

/// The level for the open directory `fd`: everything in it but its
/// subdirectories removed, and those listed.
fn level(fd: OwnedFd) -> io::Result<Level> {
    let st = fstat(&fd)?;
    let mut subdirs = Vec::new();
    let mut others = Vec::new();
    let mut dir = Dir::from_fd(fd.try_clone()?)?;
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            Some(kind) => kind == Type::Directory,
            None => is_dir_at(&fd, name)?,
        };
        if is_dir {
            subdirs.push(name.to_owned());
        } else {
            others.push(name.to_owned());
        }
    }
    for name in others {
        match unlinkat(&fd, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Level {
        fd: Some(fd),
        id: (st.st_dev, st.st_ino),
        subdirs,
    })
}

/// Whether `name` in `dir` is a directory (not following a symlink), on a
/// file system whose listing does not say.
fn is_dir_at(dir: &OwnedFd, name: &CStr) -> io::Result<bool> {
    let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR)
}

/// The parent of `done` through `..`, which must be the directory `id`: a
/// tree moved meanwhile is not followed elsewhere.
fn reopen_parent(done: &Level, id: (u64, u64)) -> io::Result<OwnedFd> {
    let fd = done.fd.as_ref().ok_or_else(closed)?;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let parent = openat(fd, c"..", flags, Mode::empty())?;
    let st = fstat(&parent)?;
    if (st.st_dev, st.st_ino) != id {
        return Err(io::Error::other(
            "the directory moved while it was being removed",
        ));
    }
    Ok(parent)
}

/// A level's descriptor is missing where it must be open: a bug.
fn closed() -> io::Error {
    io::Error::other("removing a tree: a directory was not open")
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    /// Deeper than std's `remove_dir_all` goes on this stack (it recurses,
    /// with a descriptor a level: measured, it overflows 64 KiB at a few
    /// hundred levels, 2 MiB at about 15,000), and deeper than the levels
    /// kept open.
    #[test]
    fn a_tree_of_any_depth_is_removed_on_a_small_stack() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        fs::create_dir(&top).unwrap();
        kiln_testing::deep_tree(&top, 1_000);
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(move || remove_all(&top))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn everything_goes_and_nothing_a_symlink_names() {
        let tmp = tempfile::tempdir().unwrap();
        let (top, outside) = (tmp.path().join("top"), tmp.path().join("outside"));
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("kept"), "kept").unwrap();
        for d in 0..50 {
            let dir = top.join(format!("d{d}/e/f"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("file"), "x").unwrap();
            symlink(&outside, top.join(format!("d{d}/to-outside"))).unwrap();
        }
        nix::unistd::mkfifo(&top.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        remove_all(&top).unwrap();
        assert!(!top.exists());
        assert_eq!(fs::read_to_string(outside.join("kept")).unwrap(), "kept");

        // A symlink named is removed, not what it names.
        symlink(&outside, &top).unwrap();
        remove_all(&top).unwrap();
        assert!(fs::symlink_metadata(&top).is_err() && outside.join("kept").exists());
        let file = tmp.path().join("file");
        fs::write(&file, "f").unwrap();
        remove_all(&file).unwrap();
        assert!(!file.exists());
        let missing = remove_all(&tmp.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
