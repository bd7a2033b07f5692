//! Metadata beside the blobs: image names, leases, last-used times.
//!
//! Blobs are the truth; this is an index that can be rebuilt or dropped.
//! [`MetaStore`] is the contract; [`SledMeta`] keeps it on disk and
//! [`MemoryMeta`] in memory (tests, and a store that must not touch disk).
//! Both run through one test suite.

mod memory;
mod sled_store;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use self::memory::MemoryMeta;
pub use self::sled_store::SledMeta;
use crate::digest::Digest;

#[derive(Debug, Error)]
pub enum MetaError {
    #[error("metadata database {path}: {source}")]
    Db { path: String, source: sled::Error },
    #[error("metadata record {key:?} is corrupt: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, MetaError>;

/// What a tag points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The manifest (or index) digest.
    pub target: Digest,
    /// Its media type, as it was stored.
    pub media_type: String,
    /// When the tag was set (seconds since the Unix epoch).
    pub tagged: u64,
}

/// What a build step made, found again by its cache key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The layer blob as stored.
    pub blob: Digest,
    /// Digest of the uncompressed layer tar.
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
    /// When the step ran (seconds since the epoch).
    pub created: u64,
    /// The layer descriptor's annotations (an eStargz layer's TOC digest
    /// and uncompressed size); absent in records from before the field.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Blobs a running operation uses; they are not collected while it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: String,
    pub digests: Vec<Digest>,
}

/// The metadata index of one store root.
///
/// Implementations are used by one process at a time (the root's lock
/// guarantees it) but by many threads.
pub trait MetaStore: Send + Sync {
    /// The record of the image named `name` (a full reference).
    fn image(&self, name: &str) -> Result<Option<ImageRecord>>;
    /// Every image, sorted by name.
    fn images(&self) -> Result<Vec<(String, ImageRecord)>>;
    /// Sets (or moves) a tag.
    fn put_image(&self, name: &str, record: &ImageRecord) -> Result<()>;
    /// Removes a tag; returns what it pointed at.
    fn remove_image(&self, name: &str) -> Result<Option<ImageRecord>>;

    fn put_lease(&self, lease: &Lease) -> Result<()>;
    fn remove_lease(&self, id: &str) -> Result<()>;
    fn leases(&self) -> Result<Vec<Lease>>;

    /// The build step with cache key `key`, if one ran before.
    fn cache_record(&self, key: &str) -> Result<Option<CacheRecord>>;
    fn put_cache_record(&self, key: &str, record: &CacheRecord) -> Result<()>;
    /// Every step record, by key (for collection: which layers the build
    /// cache knows, and their diff IDs).
    fn cache_records(&self) -> Result<Vec<(String, CacheRecord)>>;
    /// Forgets a step record (its layer was deleted).
    fn remove_cache_record(&self, key: &str) -> Result<()>;

    /// The remembered content digest of a build-context file, by a key of
    /// what changes whenever its content does (device, inode, size, mtime,
    /// ctime): an unchanged file is not read again to compute a cache key.
    fn file_digest(&self, key: &str) -> Result<Option<Digest>>;
    fn put_file_digest(&self, key: &str, digest: &Digest) -> Result<()>;

    /// Records that `digest` was used at `when` (seconds since the epoch).
    fn touch(&self, digest: &Digest, when: u64) -> Result<()>;
    /// When `digest` was last used, if ever recorded.
    fn last_used(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Forgets the last-used time of a deleted blob.
    fn forget(&self, digest: &Digest) -> Result<()>;

    /// Makes every change so far durable.
    fn flush(&self) -> Result<()>;
}

#[cfg(test)]
pub(crate) mod suite {
    //! The behaviour every [`MetaStore`] must have.

    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    pub(crate) fn run(store: &dyn MetaStore) {
        assert_eq!(store.file_digest("1:2:3").unwrap(), None);
        store.put_file_digest("1:2:3", &digest(9)).unwrap();
        assert_eq!(store.file_digest("1:2:3").unwrap(), Some(digest(9)));
        assert_eq!(store.images().unwrap(), []);
        let a = ImageRecord {
            target: digest(1),
            media_type: "m".into(),
            tagged: 10,
        };
        let b = ImageRecord {
            target: digest(2),
            media_type: "m".into(),
            tagged: 20,
        };
        store.put_image("docker.io/library/b:latest", &b).unwrap();
        store.put_image("docker.io/library/a:latest", &a).unwrap();
        assert_eq!(
            store.image("docker.io/library/a:latest").unwrap(),
            Some(a.clone())
        );
        let names: Vec<String> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            ["docker.io/library/a:latest", "docker.io/library/b:latest"]
        );
        store.put_image("docker.io/library/a:latest", &b).unwrap();
        assert_eq!(
            store.image("docker.io/library/a:latest").unwrap(),
            Some(b.clone())
        );
        assert_eq!(
            store.remove_image("docker.io/library/a:latest").unwrap(),
            Some(b)
        );
        assert_eq!(
            store.remove_image("docker.io/library/a:latest").unwrap(),
            None
        );
        assert_eq!(store.image("nope").unwrap(), None);

        let lease = Lease {
            id: "build-1".into(),
            digests: vec![digest(3)],
        };
        store.put_lease(&lease).unwrap();
        assert_eq!(store.leases().unwrap(), [lease]);
        store.remove_lease("build-1").unwrap();
        assert_eq!(store.leases().unwrap(), []);

        assert_eq!(store.cache_record("key").unwrap(), None);
        let record = CacheRecord {
            blob: digest(5),
            diff_id: digest(6),
            media_type: "m".into(),
            size: 7,
            created: 8,
            annotations: std::collections::BTreeMap::new(),
        };
        store.put_cache_record("key", &record).unwrap();
        assert_eq!(store.cache_record("key").unwrap(), Some(record.clone()));
        assert_eq!(store.cache_records().unwrap(), [("key".to_owned(), record)]);
        store.remove_cache_record("key").unwrap();
        assert_eq!(store.cache_record("key").unwrap(), None);

        assert_eq!(store.last_used(&digest(4)).unwrap(), None);
        store.touch(&digest(4), 100).unwrap();
        store.touch(&digest(4), 200).unwrap();
        assert_eq!(store.last_used(&digest(4)).unwrap(), Some(200));
        store.forget(&digest(4)).unwrap();
        assert_eq!(store.last_used(&digest(4)).unwrap(), None);
        store.flush().unwrap();
    }
}
