//! Content digests of build-context files, for cache keys: path, type,
//! mode (unless an octal `--chmod` replaces it), size and content — never mtimes, so
//! touching a file without changing it keeps the cache.
//!
//! A file's content digest is remembered in the store's index under what
//! changes whenever its content does (device, inode, size, mtime, ctime),
//! so a rebuild reads only files that changed — as BuildKit's content hash
//! cache and git's index do.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use kiln_cache::{Digest, Hasher, MetaStore};
use kiln_proto::dockerignore::Matcher;

/// Context digests already computed, by context directory and what was
/// asked. kilnd shares one across builds and forgets a directory when its
/// session's tree changes, so a rebuild of an unchanged context reads
/// nothing at all; the CLI starts with an empty one per build.
#[derive(Debug, Default)]
pub struct ContextDigests(Mutex<HashMap<(PathBuf, String), String>>);

impl ContextDigests {
    /// The digest for `ask` (sources, mode, ignore patterns) in `context`,
    /// computed by `compute` on a miss.
    pub(super) fn get_or(
        &self,
        context: &Path,
        ask: String,
        compute: impl FnOnce() -> String,
    ) -> String {
        let key = (context.to_owned(), ask);
        if let Some(d) = self.lock().get(&key) {
            return d.clone();
        }
        let digest = compute();
        self.lock().insert(key, digest.clone());
        digest
    }

    /// Forgets every digest of `context` (its files changed, or it is gone).
    pub fn forget(&self, context: &Path) {
        self.lock().retain(|(dir, _), _| dir != context);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(PathBuf, String), String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The digest of what `sources` (context paths, possibly with wildcards)
/// cover in `context`, minus what `.dockerignore` excludes.
pub(super) fn digest(
    context: &Path,
    sources: &[String],
    ignore: &Matcher,
    with_mode: bool,
    memo: &dyn MetaStore,
) -> String {
    let mut h = Hasher::default();
    for source in sources {
        // A wildcard covers its directory: hash from the last plain part.
        let parts: Vec<&str> = source
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let plain = parts
            .iter()
            .take_while(|p| !p.contains(['*', '?', '[']))
            .count();
        let base = parts[..plain].join("/");
        h.update(source.as_bytes());
        h.update(b"\0");
        let mut walk = Walk {
            context,
            ignore,
            with_mode,
            memo,
            h: &mut h,
        };
        walk.entry(&base);
    }
    h.finish().to_string()
}

struct Walk<'a> {
    context: &'a Path,
    ignore: &'a Matcher,
    with_mode: bool,
    memo: &'a dyn MetaStore,
    h: &'a mut Hasher,
}

impl Walk<'_> {
    fn entry(&mut self, rel: &str) {
        let (context, ignore, with_mode) = (self.context, self.ignore, self.with_mode);
        let path = context.join(rel);
        let meta = fs::symlink_metadata(&path);
        if !rel.is_empty() && ignore.excludes(rel) {
            // An exception below an excluded directory brings it back.
            let is_dir = meta.as_ref().is_ok_and(fs::Metadata::is_dir);
            let mut list = |r: &str| kiln_worker::fileop::dir_entries(&context.join(r));
            if !ignore.keeps(rel, is_dir, &mut list) {
                return;
            }
        }
        let Ok(meta) = meta else {
            self.h.update(b"missing\0");
            return;
        };
        self.h.update(rel.as_bytes());
        self.h.update(b"\0");
        let kind = if meta.is_dir() {
            b'd'
        } else if meta.file_type().is_symlink() {
            b'l'
        } else {
            b'f'
        };
        self.h.update(&[kind]);
        if with_mode {
            self.h.update(&meta.permissions().mode().to_le_bytes());
        }
        match kind {
            b'd' => {
                let mut names: Vec<String> = fs::read_dir(&path)
                    .map(|d| {
                        d.filter_map(|e| {
                            e.ok().map(|e| e.file_name().to_string_lossy().into_owned())
                        })
                        .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                for name in names {
                    let child = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    self.entry(&child);
                }
            }
            b'l' => {
                if let Ok(target) = fs::read_link(&path) {
                    self.h.update(target.as_os_str().as_encoded_bytes());
                }
            }
            _ => {
                self.h.update(&meta.size().to_le_bytes());
                self.h
                    .update(self.file_digest(&path, &meta).hex().as_bytes());
            }
        }
    }

    /// The digest of a file's content, remembered or read. A file changed in
    /// the last second is not remembered: timestamps are coarser than writes
    /// (git's "racy" entries).
    fn file_digest(&self, path: &Path, meta: &fs::Metadata) -> Digest {
        let key = format!(
            "{}:{}:{}:{}.{}:{}.{}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        );
        if let Ok(Some(digest)) = self.memo.file_digest(&key) {
            return digest;
        }
        let mut h = Hasher::default();
        if let Ok(mut file) = fs::File::open(path) {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        let digest = h.finish();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if meta.ctime() < i64::try_from(now).unwrap_or(i64::MAX) - 1 {
            // Only a lost shortcut if it cannot be written.
            let _ = self.memo.put_file_digest(&key, &digest);
        }
        digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_not_mtime() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), "a").unwrap();
        fs::write(dir.path().join("b.txt"), "b").unwrap();
        fs::write(dir.path().join("ignored.log"), "x").unwrap();
        let ignore = Matcher::new(&["*.log".into()]).unwrap();
        let memo = kiln_cache::MemoryMeta::default();
        let all = || digest(dir.path(), &["/".into()], &ignore, true, &memo);
        let only_a = || digest(dir.path(), &["/a.txt".into()], &ignore, true, &memo);
        let (d1, a1) = (all(), only_a());
        let f = fs::File::options()
            .write(true)
            .open(dir.path().join("a.txt"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            (all(), only_a()),
            (d1.clone(), a1.clone()),
            "mtime does not count"
        );
        fs::write(dir.path().join("ignored.log"), "changed").unwrap();
        assert_eq!(all(), d1, ".dockerignore'd files do not count");
        fs::write(dir.path().join("b.txt"), "B").unwrap();
        assert_ne!(all(), d1);
        assert_eq!(only_a(), a1, "a copy of a.txt does not depend on b.txt");
        fs::set_permissions(dir.path().join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(only_a(), a1);
        assert_eq!(
            digest(dir.path(), &["/a.txt".into()], &ignore, false, &memo),
            digest(dir.path(), &["/a.txt".into()], &ignore, false, &memo)
        );
    }
}
