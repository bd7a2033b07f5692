//! [`MetaStore`] in a sled database (`meta.sled/` in the root).
//!
//! sled is used as a rebuildable index, as CRATES.md advises: values are
//! JSON, a schema version is kept, and a database that fails to open is
//! moved aside rather than trusted.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CacheRecord, ImageRecord, Lease, MetaError, MetaStore, Result};
use crate::digest::Digest;

/// Bumped when the layout of the trees changes incompatibly.
const SCHEMA_VERSION: &[u8] = b"1";

/// Metadata on disk.
pub struct SledMeta {
    db: sled::Db,
    path: String,
    images: sled::Tree,
    leases: sled::Tree,
    cache: sled::Tree,
    used: sled::Tree,
    files: sled::Tree,
}

impl std::fmt::Debug for SledMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledMeta")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SledMeta {
    /// Opens (creating) the database at `path`. A database that cannot be
    /// opened, or has another schema version, is renamed to
    /// `<path>.broken-<time>` and a new one started: the blobs stay, and the
    /// index is rebuilt from what is tagged again.
    pub fn open(path: &Path) -> Result<Self> {
        match Self::try_open(path) {
            Ok(meta) => Ok(meta),
            Err(e) => {
                let aside = path.with_extension(format!(
                    "broken-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                ));
                tracing::warn!(error = %e, aside = %aside.display(), "metadata database unusable; moving it aside");
                std::fs::rename(path, &aside).map_err(|source| MetaError::Db {
                    path: path.display().to_string(),
                    source: sled::Error::Io(source),
                })?;
                Self::try_open(path)
            }
        }
    }

    fn try_open(path: &Path) -> Result<Self> {
        let display = path.display().to_string();
        let db_err = |source| MetaError::Db {
            path: display.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(16 << 20)
            .open()
            .map_err(db_err)?;
        match db.get("schema").map_err(db_err)? {
            Some(v) if v.as_ref() != SCHEMA_VERSION => {
                return Err(db_err(sled::Error::Unsupported(format!(
                    "schema version {} (this kiln uses {})",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(SCHEMA_VERSION)
                ))));
            }
            Some(_) => {}
            None => {
                db.insert("schema", SCHEMA_VERSION).map_err(db_err)?;
            }
        }
        let tree = |name: &str| db.open_tree(name).map_err(db_err);
        Ok(Self {
            images: tree("images")?,
            leases: tree("leases")?,
            cache: tree("cache")?,
            used: tree("used")?,
            files: tree("files")?,
            db,
            path: display.clone(),
        })
    }

    fn err(&self, source: sled::Error) -> MetaError {
        MetaError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn get<T: DeserializeOwned>(&self, tree: &sled::Tree, key: &str) -> Result<Option<T>> {
        match tree.get(key).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => decode(key, &bytes).map(Some),
        }
    }

    fn put<T: Serialize>(&self, tree: &sled::Tree, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|source| MetaError::Corrupt {
            key: key.to_owned(),
            source,
        })?;
        tree.insert(key, bytes).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn all<T: DeserializeOwned>(&self, tree: &sled::Tree) -> Result<Vec<(String, T)>> {
        tree.iter()
            .map(|item| {
                let (k, v) = item.map_err(|e| self.err(e))?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let value = decode(&key, &v)?;
                Ok((key, value))
            })
            .collect()
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| MetaError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

impl MetaStore for SledMeta {
    fn image(&self, name: &str) -> Result<Option<ImageRecord>> {
        self.get(&self.images, name)
    }

    fn images(&self) -> Result<Vec<(String, ImageRecord)>> {
        self.all(&self.images)
    }

    fn put_image(&self, name: &str, record: &ImageRecord) -> Result<()> {
        self.put(&self.images, name, record)
    }

    fn remove_image(&self, name: &str) -> Result<Option<ImageRecord>> {
        match self.images.remove(name).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(bytes) => decode(name, &bytes).map(Some),
        }
    }

    fn put_lease(&self, lease: &Lease) -> Result<()> {
        self.put(&self.leases, &lease.id, lease)
    }

    fn remove_lease(&self, id: &str) -> Result<()> {
        self.leases.remove(id).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        Ok(self
            .all(&self.leases)?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    fn cache_record(&self, key: &str) -> Result<Option<CacheRecord>> {
        self.get(&self.cache, key)
    }

    fn put_cache_record(&self, key: &str, record: &CacheRecord) -> Result<()> {
        self.put(&self.cache, key, record)
    }

    fn cache_records(&self) -> Result<Vec<(String, CacheRecord)>> {
        self.all(&self.cache)
    }

    fn remove_cache_record(&self, key: &str) -> Result<()> {
        self.cache.remove(key).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn file_digest(&self, key: &str) -> Result<Option<Digest>> {
        self.get(&self.files, key)
    }

    fn put_file_digest(&self, key: &str, digest: &Digest) -> Result<()> {
        self.put(&self.files, key, digest)
    }

    fn touch(&self, digest: &Digest, when: u64) -> Result<()> {
        self.used
            .insert(digest.hex(), &when.to_be_bytes())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn last_used(&self, digest: &Digest) -> Result<Option<u64>> {
        let value = self.used.get(digest.hex()).map_err(|e| self.err(e))?;
        Ok(value
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    fn forget(&self, digest: &Digest) -> Result<()> {
        self.used.remove(digest.hex()).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.sled");
        {
            let meta = SledMeta::open(&path).unwrap();
            super::super::suite::run(&meta);
            let r = ImageRecord {
                target: Digest::of(b"x"),
                media_type: "m".into(),
                tagged: 1,
            };
            meta.put_image("kept", &r).unwrap();
            meta.flush().unwrap();
        }
        let meta = SledMeta::open(&path).unwrap();
        assert!(meta.image("kept").unwrap().is_some());
    }

    #[test]
    fn unusable_database_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.sled");
        {
            let meta = SledMeta::open(&path).unwrap();
            meta.db.insert("schema", b"999".as_slice()).unwrap();
            meta.flush().unwrap();
        }
        let meta = SledMeta::open(&path).unwrap();
        assert_eq!(meta.images().unwrap(), []);
        let aside = std::fs::read_dir(dir.path()).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("meta.broken-")
        });
        assert_eq!(aside.count(), 1);
    }
}
