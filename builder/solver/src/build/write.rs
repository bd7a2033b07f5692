//! The images a build made, written to the store: per platform a config
//! (history after the base image's) and a manifest of its layers as they
//! are in the store (the steps' uncompressed, the base image's as
//! pulled); for several platforms an index of those manifests. The tags
//! are set last, so a failure leaves no tag on a half-written image.
//! Nothing is compressed here: see `kiln_image::compress`.

use kiln_cache::{Digest, Store};
use kiln_image::image::annotations::{self, Annotations, Target};
use kiln_image::image::config::{HistoryEntry, ImageConfiguration, RootFs, rfc3339};
use kiln_image::image::{self, OCI_INDEX, OCI_MANIFEST, canonical_json};

use super::{BuildError, Built, Solved, SolvedImage};

/// Writes `solved`'s images, annotated as `annotations` asks, and tags
/// them with every name of `tags`: the manifest of the one platform, or
/// the index of several.
pub fn write_image(
    store: &Store,
    solved: Solved,
    tags: &[String],
    annotations: &Annotations,
) -> Result<Built, BuildError> {
    let Solved {
        images,
        source_date_epoch,
        steps,
        cache_mounts,
    } = solved;
    let created = rfc3339(source_date_epoch.unwrap_or_else(image::now));
    let image_layers = images
        .iter()
        .flat_map(|i| &i.layers)
        .map(|l| l.diff_id.clone())
        .collect();
    let written = images
        .into_iter()
        .map(|solved| write_one(store, solved, &created, annotations))
        .collect::<Result<Vec<_>, _>>()?;
    let (manifest, media_type, id) = match written.as_slice() {
        [one] => (one.manifest.clone(), OCI_MANIFEST, one.config.clone()),
        several => {
            let entries: Vec<_> = several
                .iter()
                .map(|w| (w.manifest.clone(), w.size, w.platform.clone()))
                .collect();
            let (mut index, _) = image::write_index(store, &entries)?;
            if !annotations.is_empty() {
                index = annotations::annotate_index(
                    store,
                    &index,
                    &annotations.on(Target::Index, None),
                    &|p| annotations.on(Target::ManifestDescriptor, p),
                )?
                .0;
            }
            (index.clone(), OCI_INDEX, index)
        }
    };
    for tag in tags {
        image::tag(store, tag, &manifest, media_type)?;
    }
    store.meta.flush()?;
    Ok(Built {
        manifest,
        distribution: None,
        id,
        steps,
        cache_mounts,
        image_layers,
        local_caches: Vec::new(),
    })
}

/// One platform's image, written.
struct Written {
    manifest: Digest,
    /// The manifest's size.
    size: u64,
    config: Digest,
    platform: image::Platform,
}

/// Writes one platform's config and manifest.
fn write_one(
    store: &Store,
    solved: SolvedImage,
    created: &str,
    annotations: &Annotations,
) -> Result<Written, BuildError> {
    let SolvedImage {
        layers,
        image: target,
        config_extra,
    } = solved;
    let platform = target.platform.clone();
    let mut history = match &target.base {
        Some(base) => {
            image::resolve_pinned(store, base, &platform)?
                .config
                .history
        }
        None => Vec::new(),
    };
    history.extend(target.history.iter().map(|h| HistoryEntry {
        created: Some(created.to_owned()),
        created_by: Some(h.created_by.clone()),
        author: None,
        comment: Some("kiln.dockerfile.v0".to_owned()),
        empty_layer: h.empty_layer,
    }));
    let config = ImageConfiguration {
        created: Some(created.to_owned()),
        author: target.author.clone(),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: (!platform.variant.is_empty()).then(|| platform.variant.clone()),
        config: target.config.clone(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|l| l.diff_id.to_string()).collect(),
        },
        history,
        other: config_extra,
    };
    let config_bytes = canonical_json(&config);
    // kiln (and registries) read a config back only up to this size: an
    // image whose config is larger would be tagged but unusable.
    if config_bytes.len() as u64 > image::MAX_METADATA {
        return Err(image::ImageError::TooLarge {
            what: "the image config (its ENV, LABEL and history)".into(),
            size: config_bytes.len() as u64,
            limit: image::MAX_METADATA,
        }
        .into());
    }
    let config_digest = store.content.write_bytes(&config_bytes)?;
    let manifest_layers: Vec<_> = layers
        .into_iter()
        .map(|l| (l.blob, l.media_type, l.size))
        .collect();
    let (manifest, _) = image::write_manifest(
        store,
        (&config_digest, config_bytes.len() as u64),
        &manifest_layers,
    )?;
    let (manifest, size) = annotations::annotate(
        store,
        &manifest,
        &annotations.on(Target::Manifest, Some(&platform)),
    )?;
    Ok(Written {
        manifest,
        size,
        config: config_digest,
        platform,
    })
}
