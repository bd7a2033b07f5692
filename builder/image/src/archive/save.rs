//! `kiln save`: images as a docker-archive (what `docker load` reads) or an
//! OCI layout tar, streamed blob by blob.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use kiln_cache::{Digest, Store};

use crate::image::{self, Image, ImageError, OCI_MANIFEST, Result, canonical_json, familiar};
use kiln_worker::layer::compression::decompressed;

/// The archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// docker-archive: `manifest.json`, `<id>.json`, `<diffid>/layer.tar`.
    Docker,
    /// OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/…`.
    Oci,
}

/// Writes the images `names` to `out` (a new file, written beside and
/// renamed into place, so a failed save leaves nothing half-written).
pub fn save_to_file(store: &Store, names: &[String], format: Format, out: &Path) -> Result<()> {
    let images = names
        .iter()
        .map(|n| image::resolve(store, n))
        .collect::<Result<Vec<_>>>()?;
    save_images_to_file(store, &images, format, out)
}

/// [`save_to_file`] for images already read, each with the full name it is
/// saved under (empty: no name).
pub fn save_images_to_file(
    store: &Store,
    images: &[(String, Image)],
    format: Format,
    out: &Path,
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
            save_images(store, images, format, &mut writer).map_err(|e| match e {
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

/// Writes the images `names` to `out`.
pub fn save<W: Write>(store: &Store, names: &[String], format: Format, out: W) -> Result<()> {
    let images = names
        .iter()
        .map(|n| image::resolve(store, n))
        .collect::<Result<Vec<_>>>()?;
    save_images(store, &images, format, out)
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
        Format::Oci => oci_layout(store, images, &mut tar)?,
    }
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

fn oci_layout<W: Write>(
    store: &Store,
    images: &[(String, Image)],
    tar: &mut tar::Builder<W>,
) -> Result<()> {
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    append(tar, "oci-layout", layout.len() as u64, layout.as_slice())?;
    let mut written: BTreeSet<Digest> = BTreeSet::new();
    let mut manifests = Vec::new();
    for (name, image) in images {
        let blobs = std::iter::once(image.config_digest.clone())
            .chain(image.layers().into_iter().map(|(d, _, _)| d))
            .chain(std::iter::once(image.manifest_digest.clone()));
        for digest in blobs {
            if written.insert(digest.clone()) {
                append_blob(
                    store,
                    tar,
                    &format!("blobs/sha256/{}", digest.hex()),
                    &digest,
                )?;
            }
        }
        let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
        let media_type = image
            .manifest
            .media_type()
            .as_ref()
            .map_or(OCI_MANIFEST.to_owned(), ToString::to_string);
        let mut descriptor = serde_json::json!({
            "mediaType": media_type,
            "digest": image.manifest_digest.to_string(),
            "size": store.content.size(&image.manifest_digest)?,
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
