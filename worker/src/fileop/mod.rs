//! File operations (COPY, ADD, WORKDIR, heredoc files) between two
//! directory roots, with Docker's COPY rules.
//!
//! Every path, source and destination, is resolved inside its root
//! ([`root::Root`], `openat2(RESOLVE_IN_ROOT)`): a symlink in the image that
//! points to `/` or `..` can never make a copy land outside it, nor read
//! from outside the source.

mod copy;
pub mod root;
mod tree;
mod unchanged;

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use thiserror::Error;

pub use self::copy::{CopyRequest, Onto, copy, copy_over};

/// The entries of directory `path` as (name, is_dir) — a symlink is no
/// directory — for `.dockerignore`'s walk into excluded directories
/// (`Matcher::keeps`); nothing when it cannot be read.
pub fn dir_entries(path: &std::path::Path) -> Vec<(String, bool)> {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                    (e.file_name().to_string_lossy().into_owned(), is_dir)
                })
                .collect()
        })
        .unwrap_or_default()
}
use self::root::Root;
use crate::sandbox::user;

#[derive(Debug, Error)]
pub enum FileOpError {
    #[error("{action} {path}: {errno}")]
    Sys {
        action: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error(
        "copying {count} files to {dest}: the destination must be a directory and end with a /"
    )]
    DestNotDirectory { dest: String, count: usize },
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error("{0}")]
    Invalid(String),
    #[error("unpacking {path}: {source}")]
    Unpack {
        path: String,
        source: crate::layer::LayerError,
    },
    /// A copied tree is deeper than kiln walks.
    #[error(transparent)]
    TooDeep(#[from] kiln_proto::depth::TooDeep),
}

impl FileOpError {
    /// Whether what was looked up is not there (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Sys {
                errno: Errno::ENOENT,
                ..
            }
        )
    }

    pub(crate) fn sys(action: &'static str, path: &Path, errno: Errno) -> Self {
        Self::Sys {
            action,
            path: path.to_owned(),
            errno,
        }
    }

    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, FileOpError>;

/// An owner as written (`--chown`, `USER`): ids, or names resolved in the
/// destination root's `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnerSpec(pub String);

impl OwnerSpec {
    /// The uid and gid in `root`. As BuildKit's chown (`UserOpt_ByID`), a
    /// numeric user without a group is its own group, whatever
    /// `/etc/passwd` says; a name is looked up there.
    pub fn resolve(&self, root: &Root) -> Result<(u32, u32)> {
        if let Ok(uid) = self.0.parse::<u32>() {
            return Ok((uid, uid));
        }
        let read = |rel: &str| -> String {
            root.open_follow(rel, nix::fcntl::OFlag::O_RDONLY)
                .ok()
                .and_then(|fd| std::io::read_to_string(std::fs::File::from(fd)).ok())
                .unwrap_or_default()
        };
        let id = user::resolve(&self.0, &read("/etc/passwd"), &read("/etc/group"))?;
        Ok((id.uid, id.gid))
    }
}

/// WORKDIR's mkdir: `path` and (with `parents`) missing parents, owned by
/// `owner`.
pub fn mkdir(
    dest: &Path,
    path: &str,
    mode: u32,
    parents: bool,
    owner: Option<&OwnerSpec>,
) -> Result<()> {
    let root = Root::open(dest)?;
    let owner = owner.map(|o| o.resolve(&root)).transpose()?;
    let parts = root::components(path);
    if !parents && parts.len() > 1 && root.stat(&parts[..parts.len() - 1].join("/"))?.is_none() {
        return Err(FileOpError::NotFound(path.to_owned()));
    }
    root.mkdir_all(path, mode, owner)?;
    Ok(())
}

/// A heredoc file: `path` (whose parent must exist) with `data`.
pub fn mkfile(
    dest: &Path,
    path: &str,
    mode: u32,
    data: &[u8],
    owner: Option<&OwnerSpec>,
) -> Result<()> {
    let root = Root::open(dest)?;
    let owner = owner.map(|o| o.resolve(&root)).transpose()?;
    let mut file = root.create_file(path, mode)?;
    io::Write::write_all(&mut file, data)
        .map_err(|e| FileOpError::io("writing", &dest.join(path.trim_start_matches('/')), e))?;
    root.chmod(path, mode)?;
    if let Some((uid, gid)) = owner {
        root.chown(path, uid, gid)?;
    }
    Ok(())
}

/// One action of a file op.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileAction {
    /// Copy from `FileJob::sources[source]`.
    Copy { source: usize, request: CopyRequest },
    Mkdir {
        path: String,
        mode: u32,
        parents: bool,
        owner: Option<OwnerSpec>,
    },
    Mkfile {
        path: String,
        mode: u32,
        data: Vec<u8>,
        owner: Option<OwnerSpec>,
    },
}

/// A file op over layered roots, run by the helper in its own mount
/// namespace: the destination is an overlay of `dest.lowerdirs` whose
/// changes land in `dest.upperdir` (the new layer); each source is a stack
/// of layer directories (or the context) mounted read-only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileJob {
    pub dest: crate::sandbox::spec::Rootfs,
    pub sources: Vec<Vec<PathBuf>>,
    pub actions: Vec<FileAction>,
    pub state_dir: PathBuf,
    /// An earlier result of the same op (the snapshot of its layer, made
    /// from other context files): what a copy would write again is linked
    /// from there (`unchanged.rs`).
    #[serde(default)]
    pub previous: Option<PathBuf>,
}

/// Runs `job`'s actions on already-mounted roots: `dest` (the merged
/// destination) and `sources` (one directory per source). A copy may
/// write a directory it makes straight into `job.dest.upperdir`
/// ([`copy_over`]).
pub fn apply(job: &FileJob, dest: &Path, sources: &[PathBuf]) -> Result<()> {
    for action in &job.actions {
        match action {
            FileAction::Copy { source, request } => {
                let src = sources.get(*source).ok_or_else(|| {
                    FileOpError::Invalid(format!("copy from source {source}, of {}", sources.len()))
                })?;
                let onto = Onto {
                    upper: Some(&job.dest.upperdir),
                    previous: job.previous.as_deref(),
                };
                copy_over(src, dest, onto, request)?;
            }
            FileAction::Mkdir {
                path,
                mode,
                parents,
                owner,
            } => mkdir(dest, path, *mode, *parents, owner.as_ref())?,
            FileAction::Mkfile {
                path,
                mode,
                data,
                owner,
            } => mkfile(dest, path, *mode, data, owner.as_ref())?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
