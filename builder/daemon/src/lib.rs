//! kilnd's services: the control API ([`control`]: builds through the
//! pipeline, context sessions, the image store, over gRPC) and the build
//! farm ([`farm`]: kilnd's view of attached workers and step placement, its
//! gRPC service, and a `kiln-worker`'s session).
//!
//! Does not own: what a build does (`kiln-solver`), images
//! (`kiln-image`), registries (`kiln-registry`); the binaries that serve
//! these and kilnd's client library (`kiln-builder`).

pub mod chunks;
pub mod control;
pub mod farm;
