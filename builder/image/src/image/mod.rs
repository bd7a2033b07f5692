//! The OCI image model over kiln's store: manifests and indexes (oci-spec),
//! configs (kiln's own type, see [`config`]), names, and the operations the
//! image commands share.
//!
//! Both OCI and Docker schema-2 media types are read; kiln writes OCI,
//! and Docker's for what leaves when asked ([`media_types`]).

pub mod annotations;
pub mod config;
pub mod index;
pub mod media_types;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use kiln_cache::{ContentError, Digest, MetaError, Store, StoreError};
pub use kiln_frontend::platform::Platform;
use kiln_frontend::reference::{Reference, ReferenceError};
use oci_spec::image::{Descriptor, ImageManifest, MediaType};
use serde::Serialize;
use thiserror::Error;

use self::config::ImageConfiguration;
pub use self::media_types::MediaTypes;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// How deep indexes may nest (an index naming an index…) before a
/// manifest. OCI allows nesting but real images use one index; each level
/// is a blob read to resolve an image, and without a bound a chain of
/// thousands made every listing walk them all.
pub const MAX_INDEX_DEPTH: usize = 16;

/// The largest manifest, index or config read into memory: the
/// distribution registry's limit on a manifest body (4 MiB), which
/// containerd and BuildKit apply when they fetch one too.
pub const MAX_METADATA: u64 = 4 << 20;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Name(#[from] ReferenceError),
    /// A snapshot could not be unpacked or removed.
    #[error(transparent)]
    Snapshot(#[from] kiln_worker::layer::LayerError),
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("{what} {digest} is not valid JSON of its kind: {source}")]
    Json {
        what: &'static str,
        digest: String,
        source: serde_json::Error,
    },
    #[error("{what} uses an unsupported media type {media_type:?}")]
    MediaType {
        what: &'static str,
        media_type: String,
    },
    #[error("{path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("index {index} has no manifest for {platform}")]
    NoPlatform { index: String, platform: String },
    /// The index has the platform, but it was not pulled.
    #[error(
        "image index {index}: the {platform} image is not in the store (pull it with --platform {platform})"
    )]
    NotPulled { index: String, platform: String },
    #[error("index {index} has {entries} entries, more than {limit} (the limit)")]
    TooManyEntries {
        index: String,
        entries: usize,
        limit: usize,
    },
    #[error("index {digest}: indexes nested more than {limit} deep (the limit)")]
    TooDeep { digest: String, limit: usize },
    #[error("{what} is larger than {limit} bytes (the limit of a metadata file): {size} bytes")]
    TooLarge { what: String, size: u64, limit: u64 },
    /// A layer's bytes are not what the image config says they are.
    #[error(
        "layer {layer}: its content is {actual}, not the diff ID {claimed} the image config claims"
    )]
    DiffId {
        layer: Digest,
        claimed: String,
        actual: String,
    },
    /// A layer whose blob was never written lost its snapshot.
    #[error(
        "layer {layer} is lost: its blob was never written and its snapshot {} is gone (rebuild the image)",
        snapshot.display()
    )]
    LayerLost { layer: Digest, snapshot: PathBuf },
    /// A layer's snapshot no longer makes the layer's bytes.
    #[error(
        "layer {layer}: its snapshot {} was changed since the layer was made (it now makes {actual}); rebuild the image",
        snapshot.display()
    )]
    SnapshotChanged {
        layer: Digest,
        snapshot: PathBuf,
        actual: Digest,
    },
    #[error(
        "image {image}: {layers} layer(s) in the manifest but {diff_ids} diff IDs in the config"
    )]
    LayerCount {
        image: Digest,
        layers: usize,
        diff_ids: usize,
    },
    #[error("image {image}: {what} {value:?} is not a sha256 digest")]
    BadDigest {
        image: Digest,
        what: &'static str,
        value: String,
    },
}

pub type Result<T> = std::result::Result<T, ImageError>;

/// Normalizes a user's image name: `busybox` →
/// `docker.io/library/busybox:latest`.
pub fn normalize(name: &str) -> Result<String> {
    Ok(Reference::parse(name)?.to_string())
}

/// The short form docker shows: `docker.io/library/busybox:latest` →
/// `busybox:latest`, `docker.io/team/app:1` → `team/app:1`.
pub fn familiar(name: &str) -> String {
    let rest = name.strip_prefix("docker.io/").unwrap_or(name);
    rest.strip_prefix("library/")
        .filter(|r| !r.contains('/'))
        .unwrap_or(rest)
        .to_owned()
}

/// JSON with object keys sorted, so the same value always has the same
/// bytes (and digest), whatever map type it was built from.
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    // serde_json's `Value` keeps objects in a BTreeMap (no preserve_order).
    let value = serde_json::to_value(value).expect("image metadata serializes");
    serde_json::to_vec(&value).expect("a JSON value serializes")
}

/// One layer: its blob, paired with its diff ID (an image's, a step's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub blob: Digest,
    pub media_type: String,
    pub size: u64,
    /// What the config claims the uncompressed layer's digest is; checked
    /// whenever the layer is read ([`crate::compress::verify_layer`], the
    /// worker's snapshots).
    pub diff_id: Digest,
    /// The descriptor annotations a layer keeps wherever it goes: an
    /// eStargz layer's TOC digest and uncompressed size
    /// ([`crate::estargz::Made::annotations`]); empty for others.
    pub annotations: BTreeMap<String, String>,
}

/// The layer descriptor annotations kept when a manifest is written anew
/// (BuildKit's: eStargz's; others are the registry's or a tool's business).
pub const KEPT_LAYER_ANNOTATIONS: [&str; 2] = [
    crate::estargz::TOC_DIGEST_ANNOTATION,
    crate::estargz::UNCOMPRESSED_SIZE_ANNOTATION,
];

/// An image in the store: its manifest and config, read and parsed.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
}

impl Image {
    /// Layers as (digest, media type, size), bottom first.
    pub fn layers(&self) -> Vec<(Digest, String, u64)> {
        self.manifest
            .layers()
            .iter()
            .filter_map(|d| {
                Some((
                    d.digest().to_string().parse().ok()?,
                    d.media_type().to_string(),
                    d.size(),
                ))
            })
            .collect()
    }

    /// Layers bottom first, each with the diff ID the config gives it: as
    /// many diff IDs as layers, every one a digest, or an error.
    pub fn layer_pairs(&self) -> Result<Vec<Layer>> {
        let layers = self.manifest.layers();
        let diff_ids = &self.config.rootfs.diff_ids;
        if layers.len() != diff_ids.len() {
            return Err(ImageError::LayerCount {
                image: self.manifest_digest.clone(),
                layers: layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let bad = |what, value: String| ImageError::BadDigest {
            image: self.manifest_digest.clone(),
            what,
            value,
        };
        layers
            .iter()
            .zip(diff_ids)
            .map(|(d, diff_id)| {
                Ok(Layer {
                    blob: d
                        .digest()
                        .to_string()
                        .parse()
                        .map_err(|_| bad("layer digest", d.digest().to_string()))?,
                    media_type: d.media_type().to_string(),
                    size: d.size(),
                    diff_id: diff_id
                        .parse()
                        .map_err(|_| bad("diff ID", diff_id.clone()))?,
                    annotations: d
                        .annotations()
                        .iter()
                        .flatten()
                        .filter(|(k, _)| KEPT_LAYER_ANNOTATIONS.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
            })
            .collect()
    }

    /// Bytes of the config and layer blobs.
    pub fn size(&self) -> u64 {
        self.manifest.config().size()
            + self
                .manifest
                .layers()
                .iter()
                .map(Descriptor::size)
                .sum::<u64>()
    }
}

fn parse_digest(d: &oci_spec::image::Digest) -> Result<Digest> {
    d.to_string().parse().map_err(|_| ImageError::MediaType {
        what: "descriptor digest",
        media_type: d.to_string(),
    })
}

/// Reads the image a manifest or index digest names; an index resolves to
/// its first manifest for `platform` ([`runs`]) that is in the store
/// ([`ImageError::NotPulled`] when the index has one but none was pulled).
/// Follows at most [`MAX_INDEX_DEPTH`] indexes.
pub fn read_image(store: &Store, digest: &Digest, platform: &Platform) -> Result<Image> {
    let top = digest;
    let mut digest = digest.clone();
    let mut depth = 0;
    let bytes = loop {
        let bytes = read_metadata(store, &digest)?;
        let json = |what, source| ImageError::Json {
            what,
            digest: digest.to_string(),
            source,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| json("manifest", e))?;
        if value.get("manifests").is_none() {
            break bytes;
        }
        if depth == MAX_INDEX_DEPTH {
            return Err(ImageError::TooDeep {
                digest: top.to_string(),
                limit: MAX_INDEX_DEPTH,
            });
        }
        depth += 1;
        let entries = index::entries(&digest.to_string(), &bytes)?;
        let mut runnable = entries
            .iter()
            .filter(|m| m.platform().as_ref().is_none_or(|p| runs(p, platform)))
            .peekable();
        let platform_text = || kiln_frontend::platform::format(platform);
        if runnable.peek().is_none() {
            return Err(ImageError::NoPlatform {
                index: digest.to_string(),
                platform: platform_text(),
            });
        }
        // An entry whose manifest is absent is a platform not pulled.
        let chosen = runnable
            .find(|m| parse_digest(m.digest()).is_ok_and(|d| store.content.has(&d)))
            .ok_or_else(|| ImageError::NotPulled {
                index: digest.to_string(),
                platform: platform_text(),
            })?;
        digest = parse_digest(chosen.digest())?;
    };
    let digest = &digest;
    let json = |what, source| ImageError::Json {
        what,
        digest: digest.to_string(),
        source,
    };
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).map_err(|e| json("manifest", e))?;
    let config_digest = parse_digest(manifest.config().digest())?;
    let config_bytes = read_metadata(store, &config_digest)?;
    let config = serde_json::from_slice(&config_bytes).map_err(|source| ImageError::Json {
        what: "image config",
        digest: config_digest.to_string(),
        source,
    })?;
    Ok(Image {
        manifest_digest: digest.clone(),
        manifest,
        config_digest,
        config,
    })
}

/// Whether `digest` is an index (its JSON lists `manifests`).
pub fn is_index(store: &Store, digest: &Digest) -> Result<bool> {
    Ok(index::is_index(&read_metadata(store, digest)?))
}

/// A manifest, index or config blob, refused over [`MAX_METADATA`].
pub fn read_metadata(store: &Store, digest: &Digest) -> Result<Vec<u8>> {
    let size = store.content.size(digest)?;
    if size > MAX_METADATA {
        return Err(ImageError::TooLarge {
            what: format!("blob {digest}"),
            size,
            limit: MAX_METADATA,
        });
    }
    Ok(store.content.read(digest)?)
}

/// How deep indexes nest under `digest` (0 for a manifest), refused over
/// [`MAX_INDEX_DEPTH`]. Level by level, each blob once per level, so a
/// chain costs its length and sharing cannot make it exponential.
pub fn check_index_depth(store: &Store, digest: &Digest) -> Result<usize> {
    let mut level = std::collections::BTreeSet::from([digest.clone()]);
    for depth in 0..=MAX_INDEX_DEPTH {
        let mut next = std::collections::BTreeSet::new();
        for d in &level {
            if !store.content.has(d) || store.content.size(d)? > MAX_METADATA {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_slice(&store.content.read(d)?).unwrap_or_default();
            let children = value.get("manifests").and_then(|m| m.as_array());
            next.extend(
                children
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.get("digest")?.as_str()?.parse::<Digest>().ok()),
            );
        }
        if next.is_empty() {
            return Ok(depth);
        }
        level = next;
    }
    Err(ImageError::TooDeep {
        digest: digest.to_string(),
        limit: MAX_INDEX_DEPTH,
    })
}

/// The host's platform as an image names it (`linux/amd64`).
pub fn host_platform() -> Platform {
    kiln_frontend::platform::host()
}

/// Whether an index entry for `entry` serves `wanted`, as containerd's
/// default matcher decides: the same OS and architecture once aliases are
/// normalized (`aarch64` is `arm64`, `arm64/v8` is `arm64`), and the
/// same variant unless `wanted` names none.
pub fn runs(entry: &oci_spec::image::Platform, wanted: &Platform) -> bool {
    platform_of(entry).is_some_and(|entry| serves(&entry, wanted))
}

/// Whether an image of platform `have` serves `wanted` (both normalized):
/// the same OS and architecture, and the same variant unless `wanted`
/// names none.
pub fn serves(have: &Platform, wanted: &Platform) -> bool {
    have.os == wanted.os
        && have.architecture == wanted.architecture
        && (wanted.variant.is_empty() || have.variant == wanted.variant)
}

/// An index entry's platform, normalized as `--platform` is (`aarch64`
/// is `arm64`); `None` when it is no platform kiln can name.
pub fn platform_of(entry: &oci_spec::image::Platform) -> Option<Platform> {
    let mut text = format!("{}/{}", entry.os(), entry.architecture());
    if let Some(v) = entry.variant().as_deref().filter(|v| !v.is_empty()) {
        text.push('/');
        text.push_str(v);
    }
    kiln_frontend::platform::parse(&text).ok()
}

/// Whether a media type is an index's (OCI, or Docker's manifest list).
pub fn is_index_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Resolves a user's name (or image ID prefix) to the image it tags.
pub fn resolve(store: &Store, name: &str) -> Result<(String, Image)> {
    resolve_for(store, name, &host_platform())
}

/// The image a build's pinned reference (`name@sha256:…`, as the
/// frontend pins a base image) names for `platform`: the manifest pinned
/// when the store still has it, else what the name tags now.
pub fn resolve_pinned(store: &Store, reference: &str, platform: &Platform) -> Result<Image> {
    let (name, pinned) = match reference.split_once('@') {
        Some((name, digest)) => (name, digest.parse::<Digest>().ok()),
        None => (reference, None),
    };
    match pinned.filter(|d| store.content.has(d)) {
        Some(digest) => read_image(store, &digest, platform),
        None => Ok(resolve_for(store, name, platform)?.1),
    }
}

/// Resolves a user's name (or image ID prefix) to the image it tags for
/// `platform` (an index's entry for it).
pub fn resolve_for(store: &Store, name: &str, platform: &Platform) -> Result<(String, Image)> {
    if let Ok(full) = normalize(name)
        && let Some(record) = store.meta.image(&full)?
    {
        return Ok((full, read_image(store, &record.target, platform)?));
    }
    // `docker` also accepts an image ID (the config digest) or a prefix.
    let id = name.strip_prefix("sha256:").unwrap_or(name);
    if id.len() >= 4 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (full, record) in store.meta.images()? {
            // An index's ID is its own digest (as docker's containerd
            // store shows it), a manifest's its config's.
            if is_index_type(&record.media_type) && record.target.hex().starts_with(id) {
                return Ok((full.clone(), read_image(store, &record.target, platform)?));
            }
            let Ok(image) = read_image(store, &record.target, platform) else {
                continue;
            };
            if image.config_digest.hex().starts_with(id) {
                return Ok((full, image));
            }
        }
    }
    Err(ImageError::NotFound(name.to_owned()))
}

/// Writes an OCI manifest for `config` and `layers` (digest, media type,
/// size) and returns its digest and size.
pub fn write_manifest(
    store: &Store,
    config: (&Digest, u64),
    layers: &[(Digest, String, u64)],
) -> Result<(Digest, u64)> {
    write_manifest_as(store, MediaTypes::Oci, config, layers)
}

/// [`write_manifest`] in `types`: the manifest's, the config's and each
/// layer's media type ([`MediaTypes::layer`]; a layer Docker has no type
/// for is an error).
pub fn write_manifest_as(
    store: &Store,
    types: MediaTypes,
    config: (&Digest, u64),
    layers: &[(Digest, String, u64)],
) -> Result<(Digest, u64)> {
    let layers: Vec<Descriptor> = layers
        .iter()
        .map(|(d, m, s)| descriptor(types.layer(m)?, d, *s))
        .collect::<Result<_>>()?;
    write_manifest_of(store, types, config, layers)
}

/// [`write_manifest_as`] of [`Layer`]s: their descriptors carry the
/// layers' annotations.
pub fn write_manifest_layers(
    store: &Store,
    types: MediaTypes,
    config: (&Digest, u64),
    layers: &[Layer],
) -> Result<(Digest, u64)> {
    let layers: Vec<Descriptor> = layers
        .iter()
        .map(|l| {
            let mut d = descriptor(types.layer(&l.media_type)?, &l.blob, l.size)?;
            if !l.annotations.is_empty() {
                d.set_annotations(Some(l.annotations.clone().into_iter().collect()));
            }
            Ok(d)
        })
        .collect::<Result<_>>()?;
    write_manifest_of(store, types, config, layers)
}

fn descriptor(media: &str, digest: &Digest, size: u64) -> Result<Descriptor> {
    let d: oci_spec::image::Digest =
        digest
            .to_string()
            .parse()
            .map_err(|_| ImageError::MediaType {
                what: "digest",
                media_type: digest.to_string(),
            })?;
    Ok(Descriptor::new(MediaType::from(media), size, d))
}

fn write_manifest_of(
    store: &Store,
    types: MediaTypes,
    config: (&Digest, u64),
    layers: Vec<Descriptor>,
) -> Result<(Digest, u64)> {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": types.manifest(),
        "config": descriptor(types.config(), config.0, config.1)?,
        "layers": layers,
    });
    let bytes = canonical_json(&manifest);
    let digest = store.content.write_bytes(&bytes)?;
    Ok((digest, bytes.len() as u64))
}

/// Writes an OCI index of `manifests` (digest, size, platform) and
/// returns its digest and size.
pub fn write_index(store: &Store, manifests: &[(Digest, u64, Platform)]) -> Result<(Digest, u64)> {
    write_index_as(store, MediaTypes::Oci, manifests)
}

/// [`write_index`] in `types` (Docker: a manifest list of Docker
/// manifests, which `manifests` must be).
pub fn write_index_as(
    store: &Store,
    types: MediaTypes,
    manifests: &[(Digest, u64, Platform)],
) -> Result<(Digest, u64)> {
    let entries: Vec<serde_json::Value> = manifests
        .iter()
        .map(|(digest, size, platform)| {
            let mut p = serde_json::json!({
                "os": platform.os,
                "architecture": platform.architecture,
            });
            if !platform.variant.is_empty() {
                p["variant"] = platform.variant.clone().into();
            }
            serde_json::json!({
                "mediaType": types.manifest(),
                "digest": digest.to_string(),
                "size": size,
                "platform": p,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": types.index(),
        "manifests": entries,
    });
    let bytes = canonical_json(&index);
    let digest = store.content.write_bytes(&bytes)?;
    Ok((digest, bytes.len() as u64))
}

/// The `mediaType` a manifest or index names itself with (OCI's when it
/// names none): what a tag of it records.
pub fn media_type_of(store: &Store, digest: &Digest) -> Result<String> {
    let bytes = read_metadata(store, digest)?;
    serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|source| ImageError::Json {
        what: "manifest",
        digest: digest.to_string(),
        source,
    })?;
    Ok(media_type_in(&bytes))
}

/// The `mediaType` manifest or index `bytes` name themselves with; OCI's
/// manifest or index type when they name none (or are no JSON).
pub fn media_type_in(bytes: &[u8]) -> String {
    let named = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned));
    named.unwrap_or_else(|| {
        if index::is_index(bytes) {
            OCI_INDEX
        } else {
            OCI_MANIFEST
        }
        .to_owned()
    })
}

/// Points `name` at a manifest.
pub fn tag(store: &Store, name: &str, manifest: &Digest, media_type: &str) -> Result<()> {
    let record = kiln_cache::ImageRecord {
        target: manifest.clone(),
        media_type: media_type.to_owned(),
        tagged: now(),
    };
    store.meta.put_image(name, &record)?;
    Ok(())
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("docker.io/team/app:1"), "team/app:1");
        assert_eq!(familiar("127.0.0.1:5000/app:1"), "127.0.0.1:5000/app:1");
    }

    #[test]
    fn an_index_entry_serves_a_platform_as_containerd_matches_it() {
        let entry = |os: &str, arch: &str, variant: Option<&str>| {
            let mut p = oci_spec::image::Platform::default();
            p.set_os(os.into());
            p.set_architecture(arch.into());
            p.set_variant(variant.map(str::to_owned));
            p
        };
        let want = |text: &str| kiln_frontend::platform::parse(text).unwrap();
        let arm64 = want("linux/arm64");
        assert!(runs(&entry("linux", "arm64", None), &arm64));
        assert!(runs(&entry("linux", "arm64", Some("v8")), &arm64));
        assert!(runs(&entry("linux", "aarch64", None), &arm64));
        assert!(!runs(&entry("linux", "amd64", None), &arm64));
        assert!(!runs(&entry("windows", "arm64", None), &arm64));
        // arm with no variant is v7; a wanted variant must be the entry's.
        assert!(runs(&entry("linux", "arm", None), &want("linux/arm/v7")));
        assert!(!runs(
            &entry("linux", "arm", Some("v6")),
            &want("linux/arm/v7")
        ));
        // Hostile text in an index is no platform at all.
        assert!(!runs(&entry("linux", "arm64/../x", None), &arm64));
    }
}
