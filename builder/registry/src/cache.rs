//! The build cache in a registry (`--cache-to` / `--cache-from
//! type=registry,ref=R`): every step of a build — all stages, not only the
//! final one — as (cache key → layer) records, pushed as an OCI artifact
//! whose config lists the records and whose layers are the steps' layers;
//! with `cache-mounts=true`, also the contents of `RUN --mount=type=cache`
//! directories, one layer each.
//!
//! An import fetches the artifact's blobs the store lacks and writes the
//! records into the local index, so the solver's ordinary lookups hit.
//! Cache keys are portable: they are digests of ops, inputs and file
//! contents, never of paths on one machine.

use std::collections::BTreeSet;
use std::path::Path;

use kiln_cache::{CacheRecord, Digest, Store};
use kiln_frontend::reference::Reference;
use kiln_worker::layer;
use serde::{Deserialize, Serialize};

use super::session::{Options, Session};
use super::{Pushed, Result, pull, push};
use kiln_image::compress::{Encoder, LayerCompression};
use kiln_image::image;
use kiln_image::image::Layer;

/// The artifact's config media type.
pub const CACHE_CONFIG: &str = "application/vnd.kiln.buildcache.config.v1+json";

#[derive(Debug, Serialize, Deserialize)]
struct CacheConfig {
    records: Vec<Record>,
    #[serde(default)]
    mounts: Vec<MountDir>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    key: String,
    blob: Digest,
    diff_id: Digest,
    media_type: String,
    size: u64,
}

/// A cache mount's directory (its name under `cache-mounts/`) as a layer.
#[derive(Debug, Serialize, Deserialize)]
struct MountDir {
    name: String,
    blob: Digest,
    size: u64,
}

/// A `--cache-to`/`--cache-from` value (`type=registry,ref=REF[,cache-mounts=true]`):
/// the registry reference and whether cache mounts go along. `flag` names
/// the option in the error.
pub fn parse_spec(flag: &str, spec: &str) -> std::result::Result<(String, bool), String> {
    let (mut kind, mut reference, mut mounts) = (None, None, false);
    for field in spec.split(',') {
        match field.split_once('=') {
            Some(("type", t)) => kind = Some(t),
            Some(("ref", r)) => reference = Some(r.to_owned()),
            Some(("cache-mounts", v)) => mounts = v == "true",
            // BuildKit's export modes: kiln always exports every step.
            Some(("mode", "max" | "min")) => {}
            _ => return Err(format!("{flag} {spec}: unknown field {field:?}")),
        }
    }
    if kind != Some("registry") {
        return Err(format!(
            "{flag} {spec}: kiln keeps caches in registries only (type=registry,ref=REF)"
        ));
    }
    let reference = reference.ok_or_else(|| format!("{flag} {spec}: no ref="))?;
    Ok((reference, mounts))
}

/// What an import brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub records: usize,
    pub mounts: usize,
}

/// Pushes `steps` (cache key and layer of every step of a build) and, with
/// `mounts`, the contents of the cache mounts of those ids (the build's
/// own: `Built::cache_mounts`), to `reference`. A step's layer kept
/// uncompressed leaves compressed `how` (the build's compression).
pub fn export(
    store: &Store,
    reference: &str,
    steps: &[(String, Layer)],
    mounts: Option<&BTreeSet<String>>,
    how: LayerCompression,
    options: &Options,
) -> Result<Pushed> {
    let reference = Reference::parse(reference)?;
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
    let mut seen = std::collections::BTreeSet::new();
    for (digest, media_type, size) in config
        .records
        .iter()
        .map(|r| (&r.blob, r.media_type.as_str(), r.size))
        .chain(
            config
                .mounts
                .iter()
                .map(|m| (&m.blob, LayerCompression::default().media_type(), m.size)),
        )
    {
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
    push::push_manifest(store, &reference, &manifest, &blobs, options)
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

fn io_error(path: &Path, e: std::io::Error) -> super::RegistryError {
    kiln_image::image::ImageError::Io {
        action: "exporting the cache",
        path: path.to_owned(),
        source: e,
    }
    .into()
}

/// Fetches the cache at `reference` and records it in the store's index;
/// cache mounts not present here are unpacked.
pub fn import(store: &Store, reference: &str, options: &Options) -> Result<Imported> {
    let reference = Reference::parse(reference)?;
    let session = Session::new(&reference.domain, &reference.path, options, "pull")?;
    let wanted = reference.tag.clone().unwrap_or_else(|| "latest".into());
    let (bytes, _) = pull::manifest(&session, &wanted)?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| session.failed("reading the cache", e))?;
    if manifest["config"]["mediaType"] != CACHE_CONFIG {
        return Err(session.failed(
            &format!("manifest {wanted}"),
            "not a kiln build cache (--cache-to writes one)",
        ));
    }
    let config_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| session.failed("reading the cache", "no config digest"))?;
    let mut blobs = vec![(config_digest.clone(), 0)];
    for l in manifest["layers"].as_array().into_iter().flatten() {
        if let Some(d) = l["digest"].as_str().and_then(|d| d.parse().ok()) {
            blobs.push((d, l["size"].as_u64().unwrap_or(0)));
        }
    }
    blobs.retain(|(d, _)| !store.content.has(d));
    pull::fetch_all(store, &session, &blobs)?;
    let config: CacheConfig = serde_json::from_slice(&store.content.read(&config_digest)?)
        .map_err(|e| session.failed("reading the cache config", e))?;
    for r in &config.records {
        // A registry's word for what a layer is, is checked as a loaded
        // image's is: a record whose blob is not its diff ID is dropped
        // (a build would otherwise name the layer by the lie).
        if let Err(e) = kiln_image::compress::verify_layer(store, &r.blob, &r.diff_id) {
            tracing::warn!("cache record {}: {e}; ignored", r.key);
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
    }
    let mut mounts = 0;
    for m in &config.mounts {
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
        mounts += 1;
    }
    store.meta.flush()?;
    Ok(Imported {
        records: config.records.len(),
        mounts,
    })
}
