//! OCI layers ⇄ directories.
//!
//! An OCI layer marks a deleted path with a `.wh.<name>` file and a
//! directory whose lower contents are hidden with `.wh..wh..opq`. overlayfs
//! marks the same with a character device 0/0 named `<name>` and the xattr
//! `trusted.overlay.opaque=y`. [`unpack`] turns the first into the second,
//! so an unpacked layer is a ready lowerdir; [`diff`] turns an upperdir
//! back into a layer. [`unpack`] is also the one way an archived tree
//! (`ADD`, a build context) is written: beneath its root, by descriptor.

pub mod compression;
mod diff;
mod unpack;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub use self::diff::{diff, diff_clamped};
pub use self::unpack::{Unpacked, Whiteouts, unpack, unpack_owned, unpack_with};

/// The prefix of an OCI whiteout file.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI marker of an opaque directory.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// overlayfs's opaque-directory xattr.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, Error)]
pub enum LayerError {
    #[error("refusing layer entry {path:?}: {reason}")]
    Hostile { path: String, reason: &'static str },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("reading the layer: {0}")]
    Tar(io::Error),
    /// The layer's bytes are not those its image claims: nothing of it
    /// may be used under the claimed name.
    #[error("the layer's content is {actual}, not the diff ID {expected} the image claims")]
    DiffId { expected: String, actual: String },
    #[error("diff ID {0:?} is not sha256:<64 hex digits>")]
    InvalidDiffId(String),
    /// The tree (a step's upperdir) is deeper than kiln walks.
    #[error(transparent)]
    TooDeep(#[from] kiln_proto::depth::TooDeep),
}

pub type Result<T> = std::result::Result<T, LayerError>;

fn io_err(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(io::Error) -> LayerError + use<> {
    let path = path.to_owned();
    move |source| LayerError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests;
