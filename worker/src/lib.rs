//! kiln's worker: runs the ops that change a filesystem.
//!
//! Owns: layers as directories ([`layer`]: unpacking an OCI layer into a
//! directory overlayfs can use as a lowerdir, whiteouts and opaque
//! directories included, refusing hostile archives; and the reverse, an
//! overlay upperdir back into an OCI layer tar). Next: overlay mounts, the
//! Linux sandbox for RUN (all syscalls behind one trait), file ops for
//! COPY/ADD/WORKDIR, and the `kiln-worker` binary of the build farm.
//!
//! Does not own: deciding what to run (the solver in `kiln-builder`) or
//! storing blobs (`kiln-cache`).

pub mod exec;
pub mod fileop;
pub mod layer;
pub mod platforms;
pub mod sandbox;
pub mod snapshot;
mod ssh_agent;
