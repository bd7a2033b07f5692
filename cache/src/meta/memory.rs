//! [`MetaStore`] in memory.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{CacheRecord, ImageRecord, Lease, MetaStore, Result};
use crate::digest::Digest;

#[derive(Debug, Default)]
struct Inner {
    images: BTreeMap<String, ImageRecord>,
    leases: BTreeMap<String, Lease>,
    cache: BTreeMap<String, CacheRecord>,
    used: BTreeMap<Digest, u64>,
    files: BTreeMap<String, Digest>,
}

/// Metadata that lives as long as the process.
#[derive(Debug, Default)]
pub struct MemoryMeta(Mutex<Inner>);

impl MemoryMeta {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Result<T> {
        // A panic while holding the lock cannot leave a map half-updated.
        let mut inner = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(f(&mut inner))
    }
}

impl MetaStore for MemoryMeta {
    fn image(&self, name: &str) -> Result<Option<ImageRecord>> {
        self.with(|i| i.images.get(name).cloned())
    }

    fn images(&self) -> Result<Vec<(String, ImageRecord)>> {
        self.with(|i| {
            i.images
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn put_image(&self, name: &str, record: &ImageRecord) -> Result<()> {
        self.with(|i| {
            i.images.insert(name.to_owned(), record.clone());
        })
    }

    fn remove_image(&self, name: &str) -> Result<Option<ImageRecord>> {
        self.with(|i| i.images.remove(name))
    }

    fn put_lease(&self, lease: &Lease) -> Result<()> {
        self.with(|i| {
            i.leases.insert(lease.id.clone(), lease.clone());
        })
    }

    fn remove_lease(&self, id: &str) -> Result<()> {
        self.with(|i| {
            i.leases.remove(id);
        })
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        self.with(|i| i.leases.values().cloned().collect())
    }

    fn cache_record(&self, key: &str) -> Result<Option<CacheRecord>> {
        self.with(|i| i.cache.get(key).cloned())
    }

    fn put_cache_record(&self, key: &str, record: &CacheRecord) -> Result<()> {
        self.with(|i| {
            i.cache.insert(key.to_owned(), record.clone());
        })
    }

    fn cache_records(&self) -> Result<Vec<(String, CacheRecord)>> {
        self.with(|i| {
            i.cache
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    fn remove_cache_record(&self, key: &str) -> Result<()> {
        self.with(|i| {
            i.cache.remove(key);
        })
    }

    fn file_digest(&self, key: &str) -> Result<Option<Digest>> {
        self.with(|i| i.files.get(key).cloned())
    }

    fn put_file_digest(&self, key: &str, digest: &Digest) -> Result<()> {
        self.with(|i| {
            i.files.insert(key.to_owned(), digest.clone());
        })
    }

    fn touch(&self, digest: &Digest, when: u64) -> Result<()> {
        self.with(|i| {
            i.used.insert(digest.clone(), when);
        })
    }

    fn last_used(&self, digest: &Digest) -> Result<Option<u64>> {
        self.with(|i| i.used.get(digest).copied())
    }

    fn forget(&self, digest: &Digest) -> Result<()> {
        self.with(|i| {
            i.used.remove(digest);
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn suite() {
        super::super::suite::run(&super::MemoryMeta::default());
    }
}
