//! One image of an OCI image layout directory into the store, untagged:
//! what an `oci-layout://DIR[:TAG][@DIGEST]` build context reads.
//!
//! The directory is hostile: every file is opened beneath it through no
//! symlink (`Root::file_beneath`), so nothing outside it is read; every
//! blob must have the digest it is named by, every layer the diff ID its
//! config claims; metadata files stay within [`MAX_METADATA`], indexes
//! within their entry and depth bounds. Blobs this import added are
//! removed again when it fails.

use std::ffi::OsStr;
use std::path::Path;

use kiln_cache::{Digest, Store};
use kiln_worker::fileop::FileOpError;
use kiln_worker::fileop::root::Root;

use super::load::verify_image;
use crate::image::{self, ImageError, MAX_INDEX_DEPTH, MAX_METADATA, Result, index};

/// Which image of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The manifest or index `index.json` names by this tag (its
    /// `io.containerd.image.name`, else `org.opencontainers.image.ref.name`
    /// annotation, as buildx looks it up), else the only one it lists.
    Tag(String),
    /// The manifest or index of this digest (listed or not).
    Digest(Digest),
}

/// The annotations a tag is looked up in, in buildx's order.
const NAME_ANNOTATIONS: [&str; 2] = [
    "io.containerd.image.name",
    "org.opencontainers.image.ref.name",
];

/// Copies the image `selector` names from the layout at `dir` into the
/// store (what is there already is not read again) and checks it: its
/// manifest's (or index's) digest. The platforms of an index that the
/// layout lacks are left out, as a pull of some platforms leaves them.
pub fn import_layout(store: &Store, dir: &Path, selector: &Selector) -> Result<Digest> {
    let bad = |reason: String| ImageError::Archive {
        path: dir.to_owned(),
        reason,
    };
    let root = Root::open(dir).map_err(|e| bad(e.to_string()))?;
    let mut import = Import {
        store,
        root: &root,
        new_blobs: Vec::new(),
    };
    let result = import.run(selector);
    if result.is_err() {
        for digest in &import.new_blobs {
            let _ = store.content.delete(digest);
        }
    }
    result
}

struct Import<'a> {
    store: &'a Store,
    root: &'a Root,
    /// Blobs this import added (removed again if it fails).
    new_blobs: Vec<Digest>,
}

impl Import<'_> {
    fn bad(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Archive {
            path: self.root.path().to_owned(),
            reason: reason.into(),
        }
    }

    fn run(&mut self, selector: &Selector) -> Result<Digest> {
        let target = match selector {
            Selector::Digest(digest) => digest.clone(),
            Selector::Tag(tag) => self.tagged(tag)?,
        };
        self.copy_tree(&target, 0)?;
        if !self
            .store
            .complete(&target)
            .map_err(|e| self.bad(e.to_string()))?
        {
            return Err(self.bad(format!("{target}: a blob it names is not in the layout")));
        }
        verify_image(self.store, &target).map_err(|e| self.bad(e))?;
        Ok(target)
    }

    /// The digest `index.json` names by `tag`.
    fn tagged(&self, tag: &str) -> Result<Digest> {
        let bytes = self.read_small(&["index.json"])?;
        let index: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("index.json: {e}")))?;
        let manifests = index
            .get("manifests")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| self.bad("index.json lists no manifests"))?;
        let named = |key: &str| {
            manifests.iter().find(|m| {
                m.get("annotations")
                    .and_then(|a| a.get(key))
                    .and_then(serde_json::Value::as_str)
                    == Some(tag)
            })
        };
        let found = NAME_ANNOTATIONS
            .iter()
            .find_map(|key| named(key))
            .or(match manifests.as_slice() {
                [only] => Some(only),
                _ => None,
            })
            .ok_or_else(|| self.bad(format!("index.json names no image {tag:?}")))?;
        found
            .get("digest")
            .and_then(serde_json::Value::as_str)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| self.bad(format!("index.json: the image {tag:?} has no valid digest")))
    }

    /// A file of the layout read whole, within [`MAX_METADATA`].
    fn read_small(&self, parts: &[&str]) -> Result<Vec<u8>> {
        use std::io::Read as _;
        let file = self.open(parts)?;
        let mut bytes = Vec::new();
        file.take(MAX_METADATA + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.bad(format!("reading {}: {e}", parts.join("/"))))?;
        if bytes.len() as u64 > MAX_METADATA {
            return Err(ImageError::TooLarge {
                what: format!("{}/{}", self.root.path().display(), parts.join("/")),
                size: bytes.len() as u64,
                limit: MAX_METADATA,
            });
        }
        Ok(bytes)
    }

    fn open(&self, parts: &[&str]) -> Result<std::fs::File> {
        self.open_raw(parts).map_err(|e| self.bad(e.to_string()))
    }

    fn open_raw(&self, parts: &[&str]) -> std::result::Result<std::fs::File, FileOpError> {
        let names: Vec<&OsStr> = parts.iter().map(OsStr::new).collect();
        self.root.file_beneath(&names)
    }

    /// Copies blob `digest` into the store (checked against its digest)
    /// unless the store has it; `false` when the layout does not have it.
    fn copy_blob(&mut self, digest: &Digest) -> Result<bool> {
        if self.store.content.has(digest) {
            return Ok(true);
        }
        let hex = digest.hex();
        let mut file = match self.open_raw(&["blobs", "sha256", hex]) {
            Ok(file) => file,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(self.bad(e.to_string())),
        };
        let mut writer = self.store.content.writer()?;
        std::io::copy(&mut file, &mut writer).map_err(|e| ImageError::Io {
            action: "reading",
            path: self.root.path().join("blobs/sha256").join(hex),
            source: e,
        })?;
        let committed = writer
            .commit(Some(digest))
            .map_err(|e| self.bad(format!("blobs/sha256/{hex}: {e}")))?;
        if committed.new {
            self.new_blobs.push(committed.digest);
        }
        Ok(true)
    }

    /// Copies a manifest or index and every blob it names that the layout
    /// has; `depth` indexes above it.
    fn copy_tree(&mut self, digest: &Digest, depth: usize) -> Result<()> {
        if depth > MAX_INDEX_DEPTH {
            return Err(ImageError::TooDeep {
                digest: digest.to_string(),
                limit: MAX_INDEX_DEPTH,
            });
        }
        if !self.copy_blob(digest)? {
            return Err(self.bad(format!("{digest} is not in the layout")));
        }
        let bytes = image::read_metadata(self.store, digest)?;
        if index::is_index(&bytes) {
            // Bounded (MAX_INDEX_ENTRIES) and parsed by the index reader.
            for entry in index::entries(&digest.to_string(), &bytes)? {
                let Ok(child) = entry.digest().to_string().parse::<Digest>() else {
                    return Err(self.bad(format!("index {digest}: an entry's digest")));
                };
                // A platform the layout lacks is left out.
                if self.store.content.has(&child) || self.has_blob(&child) {
                    self.copy_tree(&child, depth + 1)?;
                }
            }
            return Ok(());
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                what: "manifest",
                digest: digest.to_string(),
                source,
            })?;
        let config = manifest.get("config").into_iter();
        let layers = manifest
            .get("layers")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten();
        for descriptor in config.chain(layers) {
            let blob: Digest = descriptor
                .get("digest")
                .and_then(serde_json::Value::as_str)
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| self.bad(format!("manifest {digest}: a blob without a digest")))?;
            if !self.copy_blob(&blob)? {
                return Err(self.bad(format!("manifest {digest}: {blob} is not in the layout")));
            }
        }
        Ok(())
    }

    /// Whether the layout has blob `digest` (a file that cannot be
    /// opened there is the copy's error).
    fn has_blob(&self, digest: &Digest) -> bool {
        !matches!(self.open_raw(&["blobs", "sha256", digest.hex()]), Err(e) if e.is_not_found())
    }
}
