//! Mount points in a step's root filesystem: each resolved inside the
//! root (`openat2` with `RESOLVE_IN_ROOT`), made there when missing and
//! listed as a stub, and mounted onto through its descriptor, so that no
//! symlink of the image or of a step leads a mount, or a file kiln makes
//! for one, onto the host.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;

use super::setup::SetupError;
use super::setup::fail;
use super::syscall::Syscall;
use crate::fileop::FileOpError;
use crate::fileop::root::{Root, components, proc_fd_path};

/// Mount points in the root filesystem. Every target is resolved inside
/// the root (`openat2` with `RESOLVE_IN_ROOT`: an image's symlink, even to
/// a host path, leads inside it), made there when missing, and mounted
/// onto through its descriptor. What it makes is listed in `state/stubs`
/// (paths relative to the root with no symlink in them, each ended by a
/// NUL) so that the worker removes it from the layer afterwards.
pub(super) struct Stubs {
    file: File,
}

impl Stubs {
    /// The list in the state directory (appended to; close-on-exec, so
    /// the step never sees it).
    pub(super) fn open(state: &Path) -> Result<Self, SetupError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(state.join("stubs"))
            .map_err(|e| fail("opening the stub list", e))?;
        Ok(Self { file })
    }

    fn note(&mut self, root: &Root, fd: &OwnedFd) -> Result<(), SetupError> {
        let rel = root
            .relative_path(fd)
            .map_err(|e| fail("recording a mount stub", e))?;
        if rel.as_os_str().is_empty() {
            return Ok(());
        }
        self.file
            .write_all(rel.as_os_str().as_bytes())
            .and_then(|()| self.file.write_all(b"\0"))
            .map_err(|e| fail("recording a mount stub", e))
    }

    /// Notes `rel`, and first its parent: a directory of a lower layer that
    /// making `rel` copied up into the layer (removed when left empty).
    fn note_made(&mut self, root: &Root, rel: &str) -> Result<(), SetupError> {
        let found = |rel: &str| {
            root.open_follow(rel, OFlag::O_PATH)
                .map_err(|e| fail("finding a mount stub", e))
        };
        let parts = components(rel);
        let parent = parts[..parts.len().saturating_sub(1)].join("/");
        self.note(root, &found(&parent)?)?;
        self.note(root, &found(rel)?)
    }

    /// The mount point `target` (absolute, in the sandbox), a directory or,
    /// when `file`, a file; made with its missing parents when missing.
    pub(super) fn target(
        &mut self,
        root: &Root,
        target: &str,
        file: bool,
    ) -> Result<OwnedFd, SetupError> {
        let err = |e: FileOpError| fail(format!("making the mount point {target}"), e);
        match root.open_follow(target, OFlag::O_PATH) {
            Ok(fd) => return Ok(fd),
            Err(FileOpError::Sys {
                errno: Errno::ENOENT,
                ..
            }) => {}
            Err(e) => return Err(err(e)),
        }
        // A dangling symlink at the end is followed inside the root, as
        // `mkdir_all` does for the directories before it.
        let rel = root.through_links(target).map_err(err)?;
        let parts = components(&rel);
        let Some((name, dirs)) = parts.split_last() else {
            return Err(err(FileOpError::Invalid("the root itself".into())));
        };
        let parent = dirs.join("/");
        let made = root.mkdir_all(&parent, 0o755, None).map_err(err)?;
        if let Some(first) = made.first() {
            self.note_made(root, first)?;
        }
        for dir in made.iter().skip(1) {
            self.note(root, &root.open_follow(dir, OFlag::O_PATH).map_err(err)?)?;
        }
        let rel = format!("{parent}/{name}");
        if file {
            root.create_file(&rel, 0o644).map_err(err)?;
        } else {
            root.mkdir_all(&rel, 0o755, None).map_err(err)?;
        }
        if made.is_empty() {
            self.note_made(root, &rel)?;
        } else {
            self.note(root, &root.open_follow(&rel, OFlag::O_PATH).map_err(err)?)?;
        }
        root.open_follow(&rel, OFlag::O_PATH).map_err(err)
    }
}

/// Mounts through descriptors; errors name the path in the sandbox.
pub(super) struct Mounter<'a, S> {
    pub(super) sys: &'a S,
}

impl<S: Syscall> Mounter<'_, S> {
    pub(super) fn mount(
        &self,
        what: &str,
        source: Option<&Path>,
        onto: &OwnedFd,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), SetupError> {
        self.sys
            .mount(source, &proc_fd_path(onto), fstype, flags, data)
            .map_err(|e| fail(format!("mounting {what}"), e))
    }

    /// Binds `source` onto `rel` in `root`, then remounts the bind with
    /// `flags` (`MS_RDONLY`, `MS_NODEV`, …): a bind takes its flags only
    /// from a remount, made through the mount's own root (reopened).
    pub(super) fn bind(
        &self,
        root: &Root,
        what: &str,
        source: &Path,
        onto: &OwnedFd,
        rel: &str,
        flags: MsFlags,
    ) -> Result<(), SetupError> {
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        self.mount(what, Some(source), onto, None, bind, None)?;
        if flags.is_empty() {
            return Ok(());
        }
        let top = root
            .open_follow(rel, OFlag::O_PATH)
            .map_err(|e| fail(format!("finding {what}"), e))?;
        self.mount(
            what,
            None,
            &top,
            None,
            bind | MsFlags::MS_REMOUNT | flags,
            None,
        )
    }
}

/// `path` in the root when it exists (after the mounts before it).
pub(super) fn existing(root: &Root, path: &str) -> Result<Option<OwnedFd>, SetupError> {
    match root.open_follow(path, OFlag::O_PATH) {
        Ok(fd) => Ok(Some(fd)),
        Err(FileOpError::Sys {
            errno: Errno::ENOENT,
            ..
        }) => Ok(None),
        Err(e) => Err(fail(format!("finding {path}"), e)),
    }
}
