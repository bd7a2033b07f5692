//! kiln's worker: runs the ops that change a filesystem.
//!
//! Owns (as it is built, see ARCHITECTURE.md): layer snapshots as
//! directories, overlayfs mounts, the Linux sandbox for RUN (namespaces,
//! pivot_root, capabilities; all syscalls behind one trait), file ops for
//! COPY/ADD/WORKDIR, and the `kiln-worker` binary of the build farm.
//!
//! Does not own: deciding what to run (the solver in `kiln-builder`) or
//! storing results (`kiln-cache`).
//!
//! Nothing is implemented here yet; the worker issue fills it.
