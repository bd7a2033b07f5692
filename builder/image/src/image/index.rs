//! Multi-platform images: an OCI image index (or Docker manifest list)
//! tagged in the store, of which only some platforms may be here.
//!
//! A pull fetches the platforms asked for (the host's by default, as
//! docker does) and stores the index as the registry has it, so its digest
//! stays the registry's; an entry whose manifest blob is absent is a
//! platform not pulled. Every reader goes through [`entries`] and
//! [`present_images`], which treat such an entry as "not here": never an
//! error, never a reason to drop the tag (`Store::complete`).

use kiln_cache::{Digest, Store};
use oci_spec::image::{Descriptor, ImageIndex};

use super::{Image, ImageError, Result, read_image, read_metadata};
use crate::image::Platform;

/// The most entries an index may have. Real ones have a platform or two
/// per architecture (and as many attestations): a few dozen. Each entry
/// is a manifest, a config and layers to read, fetch or save, so an index
/// of a million entries is refused before anything is fetched.
pub const MAX_INDEX_ENTRIES: usize = 256;

/// Whether a manifest blob is an index (it lists `manifests`).
pub fn is_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("manifests").is_some_and(serde_json::Value::is_array))
}

/// The entries of the index `digest` (its bytes), refused over
/// [`MAX_INDEX_ENTRIES`].
pub fn entries(digest: &str, bytes: &[u8]) -> Result<Vec<Descriptor>> {
    let index: ImageIndex = serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: "index",
        digest: digest.to_owned(),
        source,
    })?;
    let manifests = index.manifests();
    if manifests.len() > MAX_INDEX_ENTRIES {
        return Err(ImageError::TooManyEntries {
            index: digest.to_owned(),
            entries: manifests.len(),
            limit: MAX_INDEX_ENTRIES,
        });
    }
    Ok(manifests.clone())
}

/// An entry's platform as users write it (`linux/arm64/v8`); empty when
/// the entry names none.
pub fn platform_text(entry: &Descriptor) -> String {
    entry.platform().as_ref().map_or_else(String::new, |p| {
        let mut text = format!("{}/{}", p.os(), p.architecture());
        if let Some(v) = p.variant().as_deref().filter(|v| !v.is_empty()) {
            text.push('/');
            text.push_str(v);
        }
        text
    })
}

/// Whether an entry is an image a platform runs: not an attestation
/// (BuildKit's provenance and SBOMs are entries of platform
/// `unknown/unknown`) and not a nested index.
pub fn is_platform_image(entry: &Descriptor) -> bool {
    let media_type = entry.media_type().to_string();
    let manifest = media_type == super::OCI_MANIFEST || media_type == super::DOCKER_MANIFEST;
    manifest
        && entry
            .platform()
            .as_ref()
            .is_none_or(|p| p.os().to_string() != "unknown")
}

/// A platform's image: its platform as text and the image.
#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub platform: String,
    pub image: Image,
}

impl PlatformImage {
    /// Its platform, parsed; `None` when it is none kiln can name.
    pub fn parsed(&self) -> Option<Platform> {
        kiln_frontend::platform::parse(&self.platform).ok()
    }
}

/// The images `digest` (a tag's target) holds here: the manifest itself,
/// or each entry of an index whose manifest is in the store, in the
/// index's order (attestations and nested indexes left out).
pub fn present_images(store: &Store, digest: &Digest) -> Result<Vec<PlatformImage>> {
    let bytes = read_metadata(store, digest)?;
    if !is_index(&bytes) {
        let image = read_image(store, digest, &super::host_platform())?;
        let platform = config_platform(&image);
        return Ok(vec![PlatformImage { platform, image }]);
    }
    let mut images = Vec::new();
    for entry in entries(&digest.to_string(), &bytes)? {
        let Ok(manifest) = entry.digest().to_string().parse::<Digest>() else {
            continue;
        };
        if !is_platform_image(&entry) || !store.content.has(&manifest) {
            continue;
        }
        let image = read_image(store, &manifest, &super::host_platform())?;
        let platform = match platform_text(&entry) {
            text if text.is_empty() => config_platform(&image),
            text => text,
        };
        images.push(PlatformImage { platform, image });
    }
    Ok(images)
}

/// The image of `platform` among `images`, as [`super::runs`] matches;
/// without a platform, the host's, else the first.
pub fn pick<'a>(
    images: &'a [PlatformImage],
    platform: Option<&Platform>,
) -> Option<&'a PlatformImage> {
    let runs = |wanted: &Platform, i: &PlatformImage| {
        i.parsed().is_some_and(|p| super::serves(&p, wanted))
    };
    match platform {
        Some(wanted) => images.iter().find(|i| runs(wanted, i)),
        None => {
            let host = super::host_platform();
            images.iter().find(|i| runs(&host, i)).or(images.first())
        }
    }
}

/// The platform an image's config claims.
fn config_platform(image: &Image) -> String {
    let c = &image.config;
    let mut text = format!("{}/{}", c.os, c.architecture);
    if let Some(v) = c.variant.as_deref().filter(|v| !v.is_empty()) {
        text.push('/');
        text.push_str(v);
    }
    text
}

/// The tag a user's name (or image ID prefix) names: its full name and
/// what it targets, a manifest or an index, without reading a platform's
/// image (an index need not have the host's). An ID is a multi-platform
/// image's index digest, else the config digest (as `docker images`
/// shows them).
pub fn resolve_target(store: &Store, name: &str) -> Result<(String, Digest)> {
    if let Ok(full) = super::normalize(name)
        && let Some(record) = store.meta.image(&full)?
    {
        return Ok((full, record.target));
    }
    let id = name.strip_prefix("sha256:").unwrap_or(name);
    if id.len() >= 4 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (full, record) in store.meta.images()? {
            let Ok(images) = present_images(store, &record.target) else {
                continue;
            };
            let shown = match images.as_slice() {
                [one] if one.image.manifest_digest == record.target => {
                    one.image.config_digest.clone()
                }
                _ => record.target.clone(),
            };
            if shown.hex().starts_with(id) {
                return Ok((full, record.target));
            }
        }
    }
    Err(ImageError::NotFound(name.to_owned()))
}

/// The image of `platform` (none: the host's, else the first here) that
/// `target` holds: [`ImageError::NotPulled`] when its index has the
/// platform but not here, [`ImageError::NoPlatform`] when it has not.
pub fn image_for(
    store: &Store,
    target: &Digest,
    platform: Option<&Platform>,
) -> Result<PlatformImage> {
    let images = present_images(store, target)?;
    if let Some(found) = pick(&images, platform) {
        return Ok(found.clone());
    }
    let wanted = platform.cloned().unwrap_or_else(super::host_platform);
    // Whether the index has the platform at all decides which error.
    match read_image(store, target, &wanted) {
        Err(e) => Err(e),
        Ok(_) => Err(ImageError::NoPlatform {
            index: target.to_string(),
            platform: kiln_frontend::platform::format(&wanted),
        }),
    }
}

/// Every blob `target` reaches in the store, the target first and each
/// blob before those it names (an index, its manifests, their configs and
/// layers; pending layers too): what removing it may delete, in an order
/// where a crash midway leaves only unreferenced blobs.
pub fn blobs_of(store: &Store, target: &Digest) -> Result<Vec<Digest>> {
    let mut order = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut queue = std::collections::VecDeque::from([target.clone()]);
    while let Some(digest) = queue.pop_front() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        if store.content.has(&digest) {
            if store.content.size(&digest)? <= super::MAX_METADATA {
                queue.extend(kiln_cache::referenced(&store.content.read(&digest)?));
            }
        } else if !crate::blobs::is_pending(store, &digest) {
            // A platform not pulled, or a blob already gone.
            continue;
        }
        order.push(digest);
    }
    Ok(order)
}
