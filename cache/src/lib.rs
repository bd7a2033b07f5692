//! kiln's storage: the content store and the build-cache metadata.
//!
//! Owns (as it is built, see ARCHITECTURE.md): blobs addressed by sha256
//! (temp file, fsync, rename, verified), the sled index of image names,
//! cache records, leases and last-used times, crash recovery and garbage
//! collection.
//!
//! Does not own: what the blobs mean (image model: `kiln-builder`) or how
//! layers are unpacked for overlayfs (`kiln-worker`).
//!
//! Nothing is implemented here yet; the content-store issue fills it.
