//! The image commands over a store: list, inspect, tag, remove, prune and
//! disk usage. Each returns data; the CLI and kilnd render it. What a
//! prune deletes is in `prune`.

mod prune;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kiln_cache::{Digest, Store, referenced};
use serde::Serialize;

use crate::image::config::parse_rfc3339;
use crate::image::index::{self, PlatformImage};
use crate::image::{self, Image, ImageError, Platform, Result};

pub use prune::{Pruned, prune};

/// One row of `kiln images`: a tag, and the image or multi-platform image
/// (one row for all its platforms, as docker's containerd store shows it)
/// it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    pub repository: String,
    pub tag: String,
    /// docker's image ID: the config digest; of a multi-platform image,
    /// its index's digest.
    pub id: String,
    /// What the tag names: a manifest or an index.
    pub digest: String,
    /// Creation time, seconds since the epoch (0 when unknown); of a
    /// multi-platform image, its newest platform's.
    pub created: u64,
    /// Bytes of the configs and layers of every platform here.
    pub size: u64,
    /// The platforms here (`os/arch[/variant]`), in the index's order.
    pub platforms: Vec<String>,
}

/// Every tagged image.
pub fn list(store: &Store) -> Result<Vec<ImageSummary>> {
    let mut rows = Vec::new();
    for (name, record) in store.meta.images()? {
        // One image that cannot be read (indexes nested past the bound, a
        // damaged blob) does not hide the others; `rmi` still removes it.
        let images = match index::present_images(store, &record.target) {
            Ok(images) if !images.is_empty() => images,
            Ok(_) => {
                tracing::warn!("{name}: no image of a platform in the store");
                continue;
            }
            Err(e) => {
                tracing::warn!("{name}: {e}");
                continue;
            }
        };
        let familiar = image::familiar(&name);
        let (repository, tag) = match familiar.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((r, t)) => (r.to_owned(), t.to_owned()),
            None => (familiar, "<none>".to_owned()),
        };
        rows.push(ImageSummary {
            repository,
            tag,
            id: image_id(&record.target, &images).to_string(),
            digest: record.target.to_string(),
            created: images
                .iter()
                .filter_map(|i| i.image.config.created.as_deref().and_then(parse_rfc3339))
                .max()
                .unwrap_or(0),
            size: images.iter().map(|i| i.image.size()).sum(),
            platforms: images.into_iter().map(|i| i.platform).collect(),
        });
    }
    Ok(rows)
}

/// docker's image ID of what a tag targets: one manifest's config
/// digest, or an index's own digest.
fn image_id<'a>(target: &'a Digest, images: &'a [PlatformImage]) -> &'a Digest {
    match images {
        [one] if one.image.manifest_digest == *target => &one.image.config_digest,
        _ => target,
    }
}

/// `kiln inspect [--platform P]`: docker's shape, plus the manifest and
/// its layers (each `stored`, or not yet: a build's layer made from its
/// snapshot when read). Of a multi-platform image, `platform`'s entry
/// (none: the host's, else the first here), with `Index`: the index's
/// digest and the platforms here.
pub fn inspect(
    store: &Store,
    name: &str,
    platform: Option<&Platform>,
) -> Result<serde_json::Value> {
    let (_, target) = index::resolve_target(store, name)?;
    let chosen = index::image_for(store, &target, platform)?;
    let present = index::present_images(store, &target)?;
    let image = &chosen.image;
    let tags: Vec<String> = store
        .meta
        .images()?
        .into_iter()
        .filter(|(_, r)| r.target == target)
        .map(|(n, _)| image::familiar(&n))
        .collect();
    let layers: Vec<serde_json::Value> = image
        .layers()
        .into_iter()
        .map(|(digest, media_type, size)| {
            // A build's layer whose blob is still its snapshot's tar.
            let stored = store.content.has(&digest);
            serde_json::json!({"digest": digest, "mediaType": media_type, "size": size, "stored": stored})
        })
        .collect();
    let is_index = target != image.manifest_digest;
    let index = is_index.then(|| {
        serde_json::json!({
            "digest": target,
            "platforms": present.iter().map(|i| i.platform.clone()).collect::<Vec<_>>(),
        })
    });
    let c = &image.config;
    Ok(serde_json::json!({
        "Id": image_id(&target, &present),
        "RepoTags": tags,
        "Created": c.created,
        "Author": c.author,
        "Architecture": c.architecture,
        "Os": c.os,
        "Variant": c.variant,
        "Platform": chosen.platform,
        "Config": c.config,
        "RootFS": {"Type": c.rootfs.kind, "Layers": c.rootfs.diff_ids},
        "History": c.history,
        "Size": image.size(),
        "Manifest": {"digest": image.manifest_digest, "layers": layers},
        "Index": index,
    }))
}

/// `kiln tag SRC DST`: DST names what SRC names (a multi-platform image's
/// index, whole).
pub fn tag(store: &Store, source: &str, target: &str) -> Result<String> {
    let (source_name, _) = index::resolve_target(store, source)?;
    let record = store
        .meta
        .image(&source_name)?
        .ok_or_else(|| ImageError::NotFound(source.to_owned()))?;
    let full = image::normalize(target)?;
    image::tag(store, &full, &record.target, &record.media_type)?;
    store.meta.flush()?;
    Ok(full)
}

/// What `kiln rmi` did to one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub untagged: String,
    /// Blobs deleted because nothing else uses them.
    pub deleted: Vec<Digest>,
}

/// `kiln rmi NAME`: removes the tag, then the blobs only it used.
pub fn remove(store: &Store, name: &str) -> Result<Removed> {
    remove_tag(store, name, true)
}

/// `kiln rmi NAME` while builds may be using the image's blobs: removes
/// the tag only; `prune` (or kilnd's collection) deletes the blobs later.
pub fn untag(store: &Store, name: &str) -> Result<Removed> {
    remove_tag(store, name, false)
}

fn remove_tag(store: &Store, name: &str, delete: bool) -> Result<Removed> {
    let (full, target) = index::resolve_target(store, name)?;
    let readable = image::check_index_depth(store, &target)
        .and_then(|_| index::present_images(store, &target));
    store.meta.remove_image(&full)?;
    store.meta.flush()?;
    let untagged = image::familiar(&full);
    let images = match readable {
        Ok(images) if delete => images,
        Ok(_) => {
            return Ok(Removed {
                untagged,
                deleted: Vec::new(),
            });
        }
        // A tag whose image cannot be read goes alone; prune collects its
        // blobs.
        Err(e) => {
            tracing::warn!("{full}: {e}");
            return Ok(Removed {
                untagged,
                deleted: Vec::new(),
            });
        }
    };
    let live = reachable(store)?;
    let mut deleted = Vec::new();
    // The index, then the manifests go first: a crash then leaves only
    // unreferenced blobs (and snapshots of layers no longer stored, which
    // prune collects).
    for digest in index::blobs_of(store, &target)? {
        if live.contains(&digest) {
            continue;
        }
        if store.content.has(&digest) {
            store.content.delete(&digest)?;
        } else if crate::blobs::is_pending(store, &digest) {
            crate::blobs::forget(store, &digest)?;
        } else {
            continue;
        }
        store.meta.forget(&digest)?;
        deleted.push(digest);
    }
    // The unpacked forms of the deleted layers (of every platform) go with
    // them.
    let snapshots = kiln_worker::snapshot::Snapshots::new(store.snapshots_dir());
    for image in images.iter().map(|i| &i.image) {
        for ((layer, _, _), diff_id) in image.layers().iter().zip(&image.config.rootfs.diff_ids) {
            if deleted.contains(layer) {
                snapshots.remove(diff_id)?;
            }
        }
    }
    Ok(Removed { untagged, deleted })
}

/// Every blob a tag or a lease keeps alive, with what they reference.
pub fn reachable(store: &Store) -> Result<BTreeSet<Digest>> {
    let mut roots: Vec<Digest> = store
        .meta
        .images()?
        .into_iter()
        .map(|(_, r)| r.target)
        .collect();
    roots.extend(store.meta.leases()?.into_iter().flat_map(|l| l.digests));
    let mut live = BTreeSet::new();
    while let Some(digest) = roots.pop() {
        if !live.insert(digest.clone()) || !store.content.has(&digest) {
            continue;
        }
        if store.content.size(&digest)? <= 4 << 20 {
            roots.extend(referenced(&store.content.read(&digest)?));
        }
    }
    Ok(live)
}

/// A size flag's value that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a size (e.g. 20GB, 512MiB)")]
pub struct NotASize(pub String);

/// A size as `--keep-storage` takes it: `10GB`, `512MiB`, `1.5g`, `1000000`.
pub fn parse_size(text: &str) -> std::result::Result<u64, NotASize> {
    size_of_text(text).ok_or_else(|| NotASize(text.to_owned()))
}

fn size_of_text(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0_f64.powi(4),
        _ => return None,
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((value * scale) as u64)
}

/// Space on disk by kind (allocated blocks, not apparent sizes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Blobs that tags (or leases) use.
    pub images: u64,
    /// Blobs nothing uses: what `prune` reclaims.
    pub unused: u64,
    /// Unpacked layers (`snapshots/`).
    pub snapshots: u64,
    /// `RUN --mount=type=cache` directories (`cache-mounts/`).
    pub cache_mounts: u64,
    /// The metadata database and everything else under the root.
    pub metadata: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.images + self.unused + self.snapshots + self.cache_mounts + self.metadata
    }
}

/// `kiln du`: everything under the root, by kind.
pub fn usage(store: &Store) -> Result<Usage> {
    usage_of(store, &reachable(store)?)
}

/// [`usage`], given the blobs tags and leases keep alive.
fn usage_of(store: &Store, live: &BTreeSet<Digest>) -> Result<Usage> {
    let mut usage = Usage::default();
    for (digest, _) in store.content.list()? {
        let size = allocated(&store.content.path(&digest));
        if live.contains(&digest) {
            usage.images += size;
        } else {
            usage.unused += size;
        }
    }
    let root = store.root();
    usage.snapshots = tree_size(&store.snapshots_dir());
    usage.cache_mounts = tree_size(&root.join("cache-mounts"));
    let blobs = usage.images + usage.unused;
    usage.metadata = tree_size(root).saturating_sub(blobs + usage.snapshots + usage.cache_mounts);
    Ok(usage)
}

/// Bytes a file occupies on disk.
fn allocated(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Removes a file or a directory tree, however deep a step made it (a
/// cache mount's: [`kiln_cache::remove_all`]).
pub fn remove_tree(path: &Path) -> Result<()> {
    kiln_cache::remove_all(path).map_err(|source| ImageError::Io {
        action: "removing",
        path: path.to_owned(),
        source,
    })
}

/// Bytes everything under `dir` occupies (hard links counted once).
pub fn tree_size(dir: &Path) -> u64 {
    sizes(dir).0
}

/// Bytes that removing `dir` frees: [`tree_size`] less the files that also
/// have names outside it (a COPY run again shares the files it did not
/// change with its earlier result).
pub fn freed_by_removing(dir: &Path) -> u64 {
    sizes(dir).1
}

/// What [`tree_size`] and [`freed_by_removing`] count.
fn sizes(dir: &Path) -> (u64, u64) {
    // Per inode: names seen here, its link count, its bytes.
    let mut seen: BTreeMap<(u64, u64), (u64, u64, u64)> = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        // A directory's link count is not its names: it is all here.
        let links = if meta.is_dir() { 1 } else { meta.nlink() };
        let entry = seen
            .entry((meta.dev(), meta.ino()))
            .or_insert((0, links, meta.blocks() * 512));
        entry.0 += 1;
        if entry.0 > 1 {
            continue;
        }
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    seen.values()
        .fold((0, 0), |(total, alone), &(names, links, bytes)| {
            let freed = if names >= links { bytes } else { 0 };
            (total + bytes, alone + freed)
        })
}

/// The images a name list resolves to (for commands taking several).
pub fn resolve_all(store: &Store, names: &[String]) -> Result<Vec<(String, Image)>> {
    names.iter().map(|n| image::resolve(store, n)).collect()
}

#[cfg(test)]
mod multi_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_removing_a_tree_frees_leaves_out_files_named_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, other) = (dir.path().join("tree"), dir.path().join("other"));
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let block = |path: &Path| std::fs::write(path, vec![7u8; 64 << 10]).unwrap();
        block(&tree.join("own"));
        std::fs::hard_link(tree.join("own"), tree.join("sub/own-again")).unwrap();
        block(&tree.join("shared"));
        std::fs::hard_link(tree.join("shared"), other.join("shared")).unwrap();
        let bytes = |rel: &str| std::fs::metadata(tree.join(rel)).unwrap().blocks() * 512;
        let dirs = bytes(".") + bytes("sub");
        assert_eq!(tree_size(&tree), dirs + bytes("own") + bytes("shared"));
        assert_eq!(freed_by_removing(&tree), dirs + bytes("own"));
    }
}
