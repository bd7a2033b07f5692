//! The build cache outside the store (`--cache-to` / `--cache-from`):
//! every step of a build (`mode=max`) or those of the built image
//! (`mode=min`) as (cache key → layer) records, in one artifact format
//! ([`artifact`]: an OCI manifest whose config lists the records and
//! whose layers are the steps' layers; with `cache-mounts=true` also the
//! contents of `RUN --mount=type=cache` directories) kept by a backend:
//!
//! - `registry` ([`registry`]): pushed under a reference;
//! - `local` ([`local`]): an OCI image layout directory;
//! - `s3` ([`s3`]): blobs and manifests in an S3 bucket;
//! - `inline` ([`inline`]): the image's own steps in its config, pushed
//!   or stored with it, and imported with `type=registry` from the image.
//!
//! An import fetches the blobs the store lacks and writes the records
//! into the local index, so the solver's ordinary lookups hit. Cache keys
//! are portable: they are digests of ops, inputs and file contents, never
//! of paths on one machine. The values are parsed in [`spec`].

mod artifact;
pub mod inline;
mod layout;
mod local;
mod registry;
mod s3;
mod sigv4;
pub mod spec;

use std::collections::BTreeSet;
use std::path::PathBuf;

use kiln_cache::Store;
use kiln_image::compress::LayerCompression;
use kiln_image::image::Layer;
use thiserror::Error;

pub use self::artifact::{Artifact, CACHE_CONFIG, build as build_artifact};
pub use self::spec::{Backend, CacheSpec, Direction, Mode, S3Spec};
use crate::Result;
use crate::session::Options;

/// Why a cache backend failed; every message names the cache (the
/// directory, the bucket), never a credential.
#[derive(Debug, Error)]
pub enum CacheError {
    /// A `type=local` directory could not be read or written.
    #[error("local cache {dir}: {what}: {source}")]
    Local {
        dir: PathBuf,
        what: String,
        source: std::io::Error,
    },
    /// What a backend holds is not a kiln cache, or is malformed.
    #[error("{cache}: {reason}")]
    Invalid { cache: String, reason: String },
    /// An S3 request failed.
    #[error("s3 bucket {bucket}: {what}: {reason}")]
    S3 {
        bucket: String,
        what: String,
        reason: String,
    },
    /// `type=inline` is written with the image, not by [`export`].
    #[error("type=inline is exported with the image")]
    Inline,
}

/// What an import brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub records: usize,
    pub mounts: usize,
}

/// What an export sent: blobs written, and blobs the backend had already.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exported {
    pub uploaded: usize,
    pub skipped: usize,
}

/// Makes the artifact of `steps` (with `mounts`, the contents of the
/// cache mounts of those ids too) in the store and sends it where `spec`
/// says. A step's layer kept uncompressed leaves compressed as the spec
/// says, else `how` (the build's compression).
pub fn export(
    store: &Store,
    spec: &CacheSpec,
    steps: &[(String, Layer)],
    mounts: Option<&BTreeSet<String>>,
    how: LayerCompression,
    options: &Options,
) -> Result<Exported> {
    if spec.backend == Backend::Inline {
        return Err(CacheError::Inline.into());
    }
    let artifact = artifact::build(store, steps, mounts, spec.compression.unwrap_or(how))?;
    send(store, spec, &artifact, options)
}

/// Sends an artifact made in the store where `spec` says.
pub fn send(
    store: &Store,
    spec: &CacheSpec,
    artifact: &Artifact,
    options: &Options,
) -> Result<Exported> {
    match &spec.backend {
        Backend::Registry { reference } => registry::export(store, reference, artifact, options),
        Backend::Local {
            dir, tag, reset, ..
        } => local::export(store, dir, tag, *reset, artifact),
        Backend::S3(s3) => s3::export(store, s3, artifact, options),
        Backend::Inline => Err(CacheError::Inline.into()),
    }
}

/// Imports the cache `spec` names into the store.
pub fn import(store: &Store, spec: &CacheSpec, options: &Options) -> Result<Imported> {
    match &spec.backend {
        Backend::Registry { reference } => registry::import(store, reference, options),
        Backend::Local {
            dir, tag, digest, ..
        } => local::import(store, dir, tag, digest.as_deref()),
        Backend::S3(s3) => s3::import(store, s3, options),
        Backend::Inline => Err(CacheError::Inline.into()),
    }
}

/// The steps an export of `mode` holds: all of them (`max`), or those
/// whose layer is one of the built image's (`min`: `image_layers`, diff
/// IDs of every platform's image).
pub fn steps_for(
    mode: Mode,
    steps: &[(String, Layer)],
    image_layers: &BTreeSet<kiln_cache::Digest>,
) -> Vec<(String, Layer)> {
    let mut chosen: Vec<(String, Layer)> = steps
        .iter()
        .filter(|(_, l)| mode == Mode::Max || image_layers.contains(&l.diff_id))
        .cloned()
        .collect();
    // Steps finish in any order; the same build makes the same artifact.
    chosen.sort_by(|a, b| a.0.cmp(&b.0));
    chosen.dedup_by(|a, b| a.0 == b.0);
    chosen
}

pub use self::local::{
    import_tar as import_local_tar, pack as pack_local, receive_tar as receive_local_tar,
    write_tar as write_local_tar,
};
