//! `kiln save`: images as a docker-archive (what `docker load` reads) or an
//! OCI layout tar, streamed blob by blob.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use kiln_cache::{Digest, Store};

use crate::image::{
    self, Image, ImageError, OCI_MANIFEST, Platform, Result, canonical_json, familiar,
};
use kiln_worker::layer::compression::decompressed;

/// The archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// docker-archive: `manifest.json`, `<id>.json`, `<diffid>/layer.tar`.
    Docker,
    /// OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/…`.
    Oci,
}

/// What a save did that the user should hear of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveReport {
    /// Multi-platform images a docker-archive took one platform of: the
    /// name and the platform.
    pub one_platform: Vec<(String, String)>,
}

/// Writes the images `names` to `out` (a new file, written beside and
/// renamed into place, so a failed save leaves nothing half-written). Of
/// a multi-platform image, an OCI layout keeps the index; a docker-archive
/// takes `platform` (none: the host's, else the first here).
pub fn save_to_file(
    store: &Store,
    names: &[String],
    format: Format,
    platform: Option<&Platform>,
    out: &Path,
) -> Result<SaveReport> {
    let targets = resolve_targets(store, names)?;
    let mut report = SaveReport::default();
    write_file(out, |writer| {
        report = save_targets(store, &targets, format, platform, writer)?;
        Ok(())
    })?;
    Ok(report)
}

/// The full name and target (manifest or index) of each name.
fn resolve_targets(store: &Store, names: &[String]) -> Result<Vec<(String, Digest)>> {
    names
        .iter()
        .map(|n| image::index::resolve_target(store, n))
        .collect()
}

/// [`save_targets`] into the new file `out`.
pub fn save_targets_to_file(
    store: &Store,
    targets: &[(String, Digest)],
    format: Format,
    platform: Option<&Platform>,
    out: &Path,
) -> Result<SaveReport> {
    let mut report = SaveReport::default();
    write_file(out, |writer| {
        report = save_targets(store, targets, format, platform, writer)?;
        Ok(())
    })?;
    Ok(report)
}

/// Writes what `targets` (full name — empty: none — and a manifest or
/// index digest) name to `out`: an OCI layout keeps an index whole (the
/// platforms here), a docker-archive takes `platform`'s image of it (none:
/// the host's, else the first here) and says so in the report.
pub fn save_targets<W: Write>(
    store: &Store,
    targets: &[(String, Digest)],
    format: Format,
    platform: Option<&Platform>,
    out: W,
) -> Result<SaveReport> {
    let mut report = SaveReport::default();
    let mut tar = tar::Builder::new(out);
    match format {
        Format::Docker => {
            let mut images = Vec::new();
            for (name, target) in targets {
                let chosen = image::index::image_for(store, target, platform)?;
                if chosen.image.manifest_digest != *target {
                    report.one_platform.push((name.clone(), chosen.platform));
                }
                images.push((name.clone(), chosen.image));
            }
            docker_archive(store, &images, &mut tar)?;
        }
        Format::Oci => {
            let layout: Vec<(String, LayoutTarget)> = targets
                .iter()
                .map(|(name, target)| Ok((name.clone(), layout_target(store, target)?)))
                .collect::<Result<_>>()?;
            oci_layout(store, &layout, &mut tar)?;
        }
    }
    finish(tar)?;
    Ok(report)
}

/// Writes a new file `out` with `write`: beside it first, synced, then
/// renamed into place; a failure leaves nothing.
fn write_file(
    out: &Path,
    write: impl FnOnce(&mut io::BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let io = |action| {
        move |source| ImageError::Io {
            action,
            path: out.to_owned(),
            source,
        }
    };
    let mut temp_name = out.file_name().unwrap_or_default().to_owned();
    temp_name.push(format!(".kiln-{}.tmp", std::process::id()));
    let temp = out.with_file_name(temp_name);
    let result = File::create(&temp)
        .map_err(io("creating"))
        .and_then(|file| {
            let mut writer = io::BufWriter::with_capacity(1 << 20, file);
            // An entry that failed to go in names the archive too (which
            // disk filled).
            write(&mut writer).map_err(|e| match e {
                ImageError::Io { .. } => ImageError::Archive {
                    path: out.to_owned(),
                    reason: e.to_string(),
                },
                other => other,
            })?;
            let file = writer
                .into_inner()
                .map_err(|e| io("writing")(e.into_error()))?;
            file.sync_all().map_err(io("syncing"))
        });
    match result {
        Ok(()) => fs::rename(&temp, out).map_err(io("renaming")),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// [`save_to_file`] for images already read, each with the full name it is
/// saved under (empty: no name).
pub fn save_images_to_file(
    store: &Store,
    images: &[(String, Image)],
    format: Format,
    out: &Path,
) -> Result<()> {
    write_file(out, |writer| save_images(store, images, format, writer))
}

/// Writes the images `names` to `out`, as [`save_to_file`].
pub fn save<W: Write>(
    store: &Store,
    names: &[String],
    format: Format,
    platform: Option<&Platform>,
    out: W,
) -> Result<SaveReport> {
    let targets = resolve_targets(store, names)?;
    save_targets(store, &targets, format, platform, out)
}

/// Writes `images` (full name, image) to `out`.
pub fn save_images<W: Write>(
    store: &Store,
    images: &[(String, Image)],
    format: Format,
    out: W,
) -> Result<()> {
    let mut tar = tar::Builder::new(out);
    match format {
        Format::Docker => docker_archive(store, images, &mut tar)?,
        Format::Oci => {
            let layout: Vec<(String, LayoutTarget)> = images
                .iter()
                .map(|(name, image)| {
                    Ok((name.clone(), layout_target(store, &image.manifest_digest)?))
                })
                .collect::<Result<_>>()?;
            oci_layout(store, &layout, &mut tar)?;
        }
    }
    finish(tar)
}

fn finish<W: Write>(tar: tar::Builder<W>) -> Result<()> {
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|source| ImageError::Io {
            action: "writing",
            path: "archive".into(),
            source,
        })
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl Read,
) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, data)
        .map_err(|source| ImageError::Io {
            action: "writing",
            path: path.into(),
            source,
        })
}

fn append_blob<W: Write>(
    store: &Store,
    tar: &mut tar::Builder<W>,
    path: &str,
    digest: &Digest,
) -> Result<()> {
    if crate::blobs::is_pending(store, digest) {
        // A layer a build left unwritten: made from its snapshot straight
        // into the archive.
        let size = crate::blobs::size(store, digest)?;
        return crate::blobs::with_tar(store, digest, |layer| append(tar, path, size, layer));
    }
    let size = store.content.size(digest)?;
    append(tar, path, size, store.content.open_blob(digest)?)
}

fn docker_archive<W: Write>(
    store: &Store,
    images: &[(String, Image)],
    tar: &mut tar::Builder<W>,
) -> Result<()> {
    let mut entries: BTreeMap<Digest, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let mut written: BTreeSet<String> = BTreeSet::new();
    for (name, image) in images {
        let config_path = format!("{}.json", image.config_digest.hex());
        if written.insert(config_path.clone()) {
            append_blob(store, tar, &config_path, &image.config_digest)?;
        }
        let mut layer_paths = Vec::new();
        for layer in image.layer_pairs()? {
            let (digest, media_type) = (&layer.blob, &layer.media_type);
            let path = format!("{}/layer.tar", layer.diff_id.hex());
            if written.insert(path.clone()) {
                append_layer(store, tar, &path, digest, media_type)?;
            }
            layer_paths.push(path);
        }
        let entry = entries
            .entry(image.config_digest.clone())
            .or_insert_with(|| (Vec::new(), layer_paths));
        if !name.is_empty() {
            entry.0.push(familiar(name));
        }
    }
    let manifest: Vec<serde_json::Value> = entries
        .iter()
        .map(|(config, (tags, layers))| {
            serde_json::json!({ "Config": format!("{}.json", config.hex()), "RepoTags": tags, "Layers": layers })
        })
        .collect();
    let bytes = canonical_json(&manifest);
    append(tar, "manifest.json", bytes.len() as u64, bytes.as_slice())
}

/// A layer as an uncompressed tar: stored uncompressed layers go as they
/// are; compressed ones are unpacked to a temp file first (a tar header
/// needs the size before the data).
fn append_layer<W: Write>(
    store: &Store,
    tar: &mut tar::Builder<W>,
    path: &str,
    digest: &Digest,
    media_type: &str,
) -> Result<()> {
    if !crate::compress::is_compressed(media_type) {
        return append_blob(store, tar, path, digest);
    }
    let tmp_dir = store.root().join("tmp");
    let io = |action| {
        move |source| ImageError::Io {
            action,
            path: store.root().join("tmp"),
            source,
        }
    };
    fs::create_dir_all(&tmp_dir).map_err(io("creating"))?;
    let mut temp = tempfile::tempfile_in(&tmp_dir).map_err(io("creating"))?;
    let size = io::copy(
        &mut decompressed(store.content.open_blob(digest)?).map_err(io("reading"))?,
        &mut temp,
    )
    .map_err(io("decompressing into"))?;
    io::Seek::rewind(&mut temp).map_err(io("reading"))?;
    append(tar, path, size, temp)
}

/// What an OCI layout holds of one target: the top blob index.json
/// names (its digest, media type and bytes) and every blob under it.
struct LayoutTarget {
    digest: Digest,
    media_type: String,
    /// The top blob's bytes when they are not the stored blob's: an index
    /// whose platforms are not all here, cut to those that are (a layout
    /// names only blobs it has, or `skopeo copy --all` refuses it).
    rewritten: Option<Vec<u8>>,
    size: u64,
    /// Blobs under the top one (manifests, configs, layers), each once.
    blobs: Vec<Digest>,
}

/// A manifest's or index's blobs for a layout.
fn layout_target(store: &Store, target: &Digest) -> Result<LayoutTarget> {
    image::check_index_depth(store, target)?;
    let bytes = image::read_metadata(store, target)?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            what: "manifest",
            digest: target.to_string(),
            source,
        })?;
    let is_index = image::index::is_index(&bytes);
    if is_index {
        // Bounded, and refused as a whole when it is not one.
        image::index::entries(&target.to_string(), &bytes)?;
    }
    let default_type = if is_index {
        image::OCI_INDEX
    } else {
        OCI_MANIFEST
    };
    let media_type = value
        .get("mediaType")
        .and_then(|t| t.as_str())
        .unwrap_or(default_type)
        .to_owned();
    let blobs: Vec<Digest> = image::index::blobs_of(store, target)?
        .into_iter()
        .filter(|d| d != target)
        .collect();
    let mut rewritten = None;
    if let Some(entries) = value.get_mut("manifests").and_then(|m| m.as_array_mut()) {
        let before = entries.len();
        entries.retain(|e| {
            e.get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| d.parse::<Digest>().ok())
                .is_some_and(|d| blobs.contains(&d))
        });
        if entries.len() != before {
            rewritten = Some(canonical_json(&value));
        }
    }
    let (digest, size) = match &rewritten {
        Some(bytes) => (Digest::of(bytes), bytes.len() as u64),
        None => (target.clone(), bytes.len() as u64),
    };
    Ok(LayoutTarget {
        digest,
        media_type,
        rewritten,
        size,
        blobs,
    })
}

/// An OCI image layout of `targets`: every blob once under
/// `blobs/sha256/`, and `index.json` naming each target (an image index
/// for a multi-platform image) with its name as BuildKit's OCI exporter
/// writes it: `io.containerd.image.name` (the full name) and
/// `org.opencontainers.image.ref.name` (the tag).
fn oci_layout<W: Write>(
    store: &Store,
    targets: &[(String, LayoutTarget)],
    tar: &mut tar::Builder<W>,
) -> Result<()> {
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    append(tar, "oci-layout", layout.len() as u64, layout.as_slice())?;
    let mut written: BTreeSet<Digest> = BTreeSet::new();
    let mut manifests = Vec::new();
    for (name, target) in targets {
        for digest in &target.blobs {
            if written.insert(digest.clone()) {
                append_blob(
                    store,
                    tar,
                    &format!("blobs/sha256/{}", digest.hex()),
                    digest,
                )?;
            }
        }
        if written.insert(target.digest.clone()) {
            let path = format!("blobs/sha256/{}", target.digest.hex());
            match &target.rewritten {
                Some(bytes) => append(tar, &path, bytes.len() as u64, bytes.as_slice())?,
                None => append_blob(store, tar, &path, &target.digest)?,
            }
        }
        let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
        let mut descriptor = serde_json::json!({
            "mediaType": target.media_type,
            "digest": target.digest.to_string(),
            "size": target.size,
        });
        if !name.is_empty() {
            descriptor["annotations"] = serde_json::json!({
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            });
        }
        manifests.push(descriptor);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::image::OCI_INDEX,
        "manifests": manifests,
    });
    let bytes = canonical_json(&index);
    append(tar, "index.json", bytes.len() as u64, bytes.as_slice())
}
