//! kiln's storage: blobs by digest and the metadata index beside them.
//!
//! Owns: one store root (`--root` / `KILN_ROOT`), its lock, the content
//! store ([`content`]: blobs under `content/blobs/sha256/`, written through
//! a temp file, fsynced, verified, renamed), the metadata index ([`meta`]:
//! image names, leases, last-used times in sled), recovery after a
//! crash, and removing a tree under the root however deep a step made it
//! ([`remove_all`]).
//!
//! Does not own: what the blobs mean (the image model lives in
//! `kiln-builder`), or unpacking layers (`kiln-worker`).
//!
//! Concurrency: one process uses a root at a time. [`Store::open`] takes an
//! exclusive `flock` on `<root>/lock`; a second process waits for it. Inside
//! a process, the store is shared by threads.

pub mod content;
pub mod digest;
pub mod meta;
mod remove;
mod root;

pub use self::content::{BlobWriter, Committed, ContentError, ContentStore};
pub use self::digest::{Digest, DigestError, Hasher};
pub use self::meta::{CacheRecord, ImageRecord, Lease, MemoryMeta, MetaError, MetaStore, SledMeta};
pub use self::remove::remove_all;
pub use self::root::{
    Recovery, References, Store, StoreError, default_root, private_dir, referenced, references,
};
