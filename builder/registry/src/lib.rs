//! The OCI Distribution client: images between kiln's store and
//! registries (`kiln pull`, `kiln push`, `FROM` of an image not in the
//! store), with Docker's credentials.
//!
//! Owns: HTTP to registries (blocking reqwest over rustls, the system's
//! roots; plain HTTP only for loopback and `--insecure-registry` hosts,
//! which kilnd grants its clients only within its own: [`insecure`]),
//! authentication challenges (basic, bearer tokens), credentials
//! (`~/.docker/config.json` and `docker-credential-*` helpers), and
//! retrying rate-limited requests; the build cache outside the store
//! (`cache`: its artifact and its backends — registry, local directory,
//! S3, inline).
//!
//! Does not own: what an image is ([`kiln_image::image`]) or where blobs live
//! (`kiln-cache`): blobs stream into the content store, which verifies
//! their digests.

mod auth;
pub mod cache;
pub mod insecure;
mod pull;
mod push;
mod session;

pub use auth::{Credentials, config_path, login};
pub use insecure::{InsecureError, InsecureRegistries};
pub use pull::{Platforms, PullPolicy, Pulled, pull, pull_platforms};
pub use push::{Pushed, push, push_compressing};
pub use session::Options;

use thiserror::Error;

/// Every error names the registry and the repository; none carries a
/// credential.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{registry}/{repository}: {what}: HTTP {status}{detail}")]
    Status {
        registry: String,
        repository: String,
        what: String,
        status: u16,
        /// The registry's own error message, when it sent one.
        detail: String,
    },
    #[error("{registry}/{repository}: {what}: {reason}")]
    Failed {
        registry: String,
        repository: String,
        what: String,
        reason: String,
    },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error(transparent)]
    Image(#[from] kiln_image::image::ImageError),
    #[error(transparent)]
    Content(#[from] kiln_cache::ContentError),
    #[error(transparent)]
    Meta(#[from] kiln_cache::MetaError),
    #[error(transparent)]
    Name(#[from] kiln_frontend::reference::ReferenceError),
    /// A build cache backend (`type=local`, `type=s3`, …).
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// Manifest media types kiln reads, most wanted first.
const MANIFEST_TYPES: [&str; 4] = [
    kiln_image::image::OCI_INDEX,
    kiln_image::image::DOCKER_LIST,
    kiln_image::image::OCI_MANIFEST,
    kiln_image::image::DOCKER_MANIFEST,
];
