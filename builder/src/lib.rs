//! kiln's builder: everything between a build request and an image.
//!
//! Owns: the build context on the client side ([`context`]: the Dockerfile
//! and `.dockerignore` lookup), and — as kiln grows — the solver, the image
//! model, exporters, the registry client and the control service, with the
//! `kiln` CLI and `kilnd` daemon binaries on top.
//!
//! Does not own: Dockerfile semantics (`kiln-frontend`), running ops
//! (`kiln-worker`), or storage (`kiln-cache`).

pub mod archive;
pub mod build;
pub mod compress;
pub mod context;
pub mod image;
pub mod images;
pub mod output;
pub mod solve;
