//! How deep kiln walks a directory tree: one bound for every walker, so
//! that a tree a Dockerfile makes (a RUN step, a build context, a stage
//! copied from) cannot run a walking thread out of stack and abort the
//! process — in kilnd, for every client at once.
//!
//! A RUN step makes a tree as deep as it likes without a long path
//! (`mkdir b && mv a b/a && mv b a`, again and again), and the walks below
//! a directory's descriptor never meet `PATH_MAX`. So each walker counts
//! the levels it goes down and refuses to go below [`MAX_TREE_DEPTH`] with
//! [`TooDeep`]; the context digest, which cannot fail, hashes a marker
//! there instead and leaves the refusal to the copy that reads the tree.
//!
//! The bound lives here because every walker's crate (the worker's layer
//! and copy walks, the solver's context digest and session walk, kilnd's)
//! already depends on `kiln-proto`, whose `.dockerignore` matcher walks
//! excluded directories too; and a client and kilnd must agree on it.

use thiserror::Error;

/// The most levels of directories below its top that a walk enters: a
/// directory at level 1024 (`top/d1/…/d1024`) is walked, one at level 1025
/// is refused.
///
/// Why 1024: a path the kernel resolves has at most `PATH_MAX` (4096)
/// bytes, so at most about 2048 components (`a/a/…`); trees that real
/// images and contexts hold are a few dozen levels deep at most. Half of
/// what a path can name is far beyond any real tree, and small enough that
/// every walking thread's stack holds it with room to spare: each thread
/// that walks is given a stack measured for this many levels (in a debug
/// build, whose frames are the largest).
pub const MAX_TREE_DEPTH: usize = 1024;

/// How much of a refused path a message shows: a path 1025 levels deep
/// is kilobytes long.
const SHOWN_BYTES: usize = 200;

/// A walk refused to go below [`MAX_TREE_DEPTH`] levels of directories.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("refusing {shown}: deeper than {MAX_TREE_DEPTH} directories")]
pub struct TooDeep {
    /// The refused directory's path, its first [`SHOWN_BYTES`] bytes and
    /// `…` when longer.
    shown: String,
}

impl TooDeep {
    /// The directory at `path` is too deep; `path` is shown shortened.
    pub fn new(path: &str) -> Self {
        Self {
            shown: shorten(path),
        }
    }
}

/// Whether a walk may enter a directory `level` levels below its top (the
/// top's own subdirectories are at level 1); else why not, naming the
/// directory at `path` (called only then).
pub fn check(level: usize, path: impl FnOnce() -> String) -> Result<(), TooDeep> {
    if level > MAX_TREE_DEPTH {
        return Err(TooDeep::new(&path()));
    }
    Ok(())
}

/// `path` cut to at most [`SHOWN_BYTES`] bytes (on a character boundary)
/// and `…` when it was longer.
fn shorten(path: &str) -> String {
    if path.len() <= SHOWN_BYTES {
        return path.to_owned();
    }
    let mut end = SHOWN_BYTES;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_inclusive() {
        assert!(check(MAX_TREE_DEPTH, || unreachable!()).is_ok());
        let e = check(MAX_TREE_DEPTH + 1, || "/deep/a".to_owned()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "refusing /deep/a: deeper than 1024 directories"
        );
    }

    #[test]
    fn a_long_path_is_shown_shortened() {
        let path = format!("/deep{}", "/a".repeat(MAX_TREE_DEPTH + 1));
        let message = TooDeep::new(&path).to_string();
        assert!(message.starts_with("refusing /deep/a/a/"), "{message}");
        assert!(
            message.ends_with("…: deeper than 1024 directories"),
            "{message}"
        );
        assert!(message.len() < 300, "{message}");
        // A cut never splits a character.
        let wide = "é".repeat(SHOWN_BYTES);
        assert!(TooDeep::new(&wide).to_string().contains("é…"));
    }
}
