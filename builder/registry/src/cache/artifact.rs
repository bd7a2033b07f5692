//! kiln's build-cache artifact, the same in every backend (as BuildKit
//! shares its cache format between registry, local and s3): an OCI image
//! manifest whose config ([`CACHE_CONFIG`]) lists (cache key → layer)
//! records and the cache mounts' layers, and whose layers are those
//! layers. [`build`] makes one in the store from a build's steps; [`read`]
//! checks one a backend fetched; [`apply`] writes its records into the
//! store's index, so the solver's ordinary lookups hit.

use std::collections::BTreeSet;
use std::path::Path;

use kiln_cache::{CacheRecord, Digest, Store};
use kiln_image::compress::{Encoder, LayerCompression};
use kiln_image::image::{self, Layer};
use kiln_worker::layer;
use serde::{Deserialize, Serialize};

use super::{CacheError, Imported};
use crate::Result;

/// The artifact's config media type.
pub const CACHE_CONFIG: &str = "application/vnd.kiln.buildcache.config.v1+json";

/// The records a cache config may hold: far more than any build's steps
/// (each one is a lookup and maybe a layer to fetch).
pub(super) const MAX_RECORDS: usize = 100_000;

#[derive(Debug, Serialize, Deserialize)]
struct CacheConfig {
    records: Vec<Record>,
    #[serde(default)]
    mounts: Vec<MountDir>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) key: String,
    pub(super) blob: Digest,
    pub(super) diff_id: Digest,
    pub(super) media_type: String,
    pub(super) size: u64,
}

/// A cache mount's directory (its name under `cache-mounts/`) as a layer.
#[derive(Debug, Serialize, Deserialize)]
struct MountDir {
    name: String,
    blob: Digest,
    size: u64,
}

/// An artifact in the store, ready to go to a backend.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The manifest's bytes (also a blob in the store).
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    /// The config, then every layer once: what a backend must hold.
    pub blobs: Vec<(Digest, u64)>,
}

/// A manifest a backend gave, checked to be a kiln cache: its config and
/// layers to fetch.
#[derive(Debug, Clone)]
pub(super) struct Wanted {
    /// The manifest's digest and bytes, when the reader kept them.
    pub(super) manifest: Option<(Digest, Vec<u8>)>,
    pub(super) config: (Digest, u64),
    pub(super) layers: Vec<(Digest, u64)>,
}

/// Makes the artifact of `steps` (and, with `mounts`, the contents of the
/// cache mounts of those ids: the build's own, `Built::cache_mounts`) in
/// the store. A step's layer kept uncompressed leaves compressed `how`.
pub fn build(
    store: &Store,
    steps: &[(String, Layer)],
    mounts: Option<&BTreeSet<String>>,
    how: LayerCompression,
) -> Result<Artifact> {
    let mut records = Vec::with_capacity(steps.len());
    for (key, layer) in steps {
        let l = if kiln_image::compress::is_compressed(&layer.media_type) {
            layer.clone()
        } else {
            kiln_image::compress::converted(store, layer, how)?
        };
        records.push(Record {
            key: key.clone(),
            blob: l.blob,
            diff_id: l.diff_id,
            media_type: l.media_type,
            size: l.size,
        });
    }
    let mut config = CacheConfig {
        records,
        mounts: Vec::new(),
    };
    if let Some(ids) = mounts {
        config.mounts = mount_layers(store, ids)?;
    }
    let config_bytes = image::canonical_json(&config);
    let config_digest = store.content.write_bytes(&config_bytes)?;
    let mut layers: Vec<serde_json::Value> = Vec::new();
    let mut blobs = vec![(config_digest.clone(), config_bytes.len() as u64)];
    let mut seen = BTreeSet::new();
    let mount_type = LayerCompression::default().media_type();
    let records = config.records.iter();
    let all = records
        .map(|r| (&r.blob, r.media_type.as_str(), r.size))
        .chain(config.mounts.iter().map(|m| (&m.blob, mount_type, m.size)));
    for (digest, media_type, size) in all {
        if seen.insert(digest.clone()) {
            layers
                .push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
            blobs.push((digest.clone(), size));
        }
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": image::OCI_MANIFEST,
        "artifactType": CACHE_CONFIG,
        "config": {"mediaType": CACHE_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": layers,
    });
    let manifest = image::canonical_json(&manifest);
    let manifest_digest = store.content.write_bytes(&manifest)?;
    Ok(Artifact {
        manifest,
        manifest_digest,
        blobs,
    })
}

/// The directories of cache mounts `ids` (those that exist) as gzip
/// layers in the store. Other builds' cache mounts stay where they are:
/// they may hold what those builds fetched with their own credentials.
fn mount_layers(store: &Store, ids: &BTreeSet<String>) -> Result<Vec<MountDir>> {
    let dir = store.root().join("cache-mounts");
    let mut out = Vec::new();
    for id in ids {
        let name = kiln_worker::exec::cache_dir_name(id);
        let path = dir.join(&name);
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue; // never used here (a farm worker's, or a cached step's)
        }
        let encoder = Encoder::new(LayerCompression::default(), store.content.writer()?)
            .map_err(|e| io_error(&path, e))?;
        let encoder = layer::diff_clamped(&path, encoder, None)
            .map_err(|e| io_error(&path, std::io::Error::other(e.to_string())))?;
        let blob = encoder
            .finish()
            .map_err(|e| io_error(&path, e))?
            .commit(None)?;
        out.push(MountDir {
            name,
            blob: blob.digest,
            size: blob.size,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn io_error(path: &Path, e: std::io::Error) -> crate::RegistryError {
    kiln_image::image::ImageError::Io {
        action: "exporting the cache",
        path: path.to_owned(),
        source: e,
    }
    .into()
}

/// Checks that `manifest` (from the cache `name`) is a kiln cache
/// artifact; its config and layers.
pub(super) fn read(name: &str, manifest: &[u8]) -> Result<Wanted> {
    let invalid = |reason: &str| CacheError::Invalid {
        cache: name.to_owned(),
        reason: reason.to_owned(),
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| invalid(&format!("manifest: {e}")))?;
    if manifest["config"]["mediaType"] != CACHE_CONFIG {
        return Err(invalid("not a kiln build cache (--cache-to writes one)").into());
    }
    let descriptor = |d: &serde_json::Value| -> Result<(Digest, u64)> {
        let digest = d["digest"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| invalid("a descriptor without a digest"))?;
        Ok((digest, d["size"].as_u64().unwrap_or(0)))
    };
    let config = descriptor(&manifest["config"])?;
    let layers = manifest["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if layers.len() > MAX_RECORDS {
        return Err(invalid(&format!("over {MAX_RECORDS} layers")).into());
    }
    let layers = layers.iter().map(descriptor).collect::<Result<_>>()?;
    Ok(Wanted {
        manifest: None,
        config,
        layers,
    })
}

/// Writes the records of the cache config `config` (in the store, its
/// layers too) into the store's index; cache mounts not present here are
/// unpacked.
pub(super) fn apply(store: &Store, name: &str, config: &Digest) -> Result<Imported> {
    let invalid = |reason: String| CacheError::Invalid {
        cache: name.to_owned(),
        reason,
    };
    if store.content.size(config)? > image::MAX_METADATA {
        return Err(invalid(format!("config over {} bytes", image::MAX_METADATA)).into());
    }
    let config: CacheConfig = serde_json::from_slice(&store.content.read(config)?)
        .map_err(|e| invalid(format!("config: {e}")))?;
    if config.records.len() > MAX_RECORDS || config.mounts.len() > MAX_RECORDS {
        return Err(invalid(format!("over {MAX_RECORDS} records")).into());
    }
    let records = put_records(store, &config.records)?;
    let mounts = unpack_mounts(store, &config.mounts)?;
    store.meta.flush()?;
    Ok(Imported { records, mounts })
}

/// Writes `records` (their layers in the store) into the index; a record
/// whose blob is not its diff ID is dropped, as a loaded image's lie is
/// (a build would otherwise name the layer by the lie). The records kept.
pub(super) fn put_records(store: &Store, records: &[Record]) -> Result<usize> {
    let mut kept = 0;
    let mut checked: std::collections::BTreeMap<&Digest, bool> = Default::default();
    for r in records {
        let good = *checked.entry(&r.blob).or_insert_with(|| {
            kiln_image::compress::verify_layer(store, &r.blob, &r.diff_id)
                .inspect_err(|e| tracing::warn!("cache record {}: {e}; ignored", r.key))
                .is_ok()
        });
        if !good {
            continue;
        }
        store.meta.put_cache_record(
            &r.key,
            &CacheRecord {
                blob: r.blob.clone(),
                diff_id: r.diff_id.clone(),
                media_type: r.media_type.clone(),
                size: r.size,
                created: image::now(),
                // A registry's annotations are not taken on its word.
                annotations: std::collections::BTreeMap::new(),
            },
        )?;
        kept += 1;
    }
    Ok(kept)
}

fn unpack_mounts(store: &Store, mounts: &[MountDir]) -> Result<usize> {
    let mut unpacked = 0;
    for m in mounts {
        // A name is a file name kiln made (a hash of the id); nothing else.
        if m.name.is_empty() || m.name.contains('/') || m.name.starts_with('.') {
            continue;
        }
        let target = store.root().join("cache-mounts").join(&m.name);
        if target.exists() {
            continue;
        }
        let tmp = store
            .root()
            .join("tmp")
            .join(format!("cache-mount-{}", m.name));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
        let blob = store.content.open_blob(&m.blob)?;
        let reader = layer::compression::decompressed(blob).map_err(|e| io_error(&tmp, e))?;
        // A directory's files, not a layer: `.wh.` names are files.
        layer::unpack_with(reader, &tmp, layer::Whiteouts::Plain)
            .map_err(|e| io_error(&tmp, std::io::Error::other(e.to_string())))?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        std::fs::rename(&tmp, &target).map_err(|e| io_error(&target, e))?;
        unpacked += 1;
    }
    Ok(unpacked)
}
