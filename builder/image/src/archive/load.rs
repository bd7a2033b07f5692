//! `kiln load`: a docker-archive (as `docker save` writes it) or an OCI
//! layout tar into the store, streaming every file straight into a blob.
//!
//! An archive is hostile until checked: only the four files that describe
//! it are held in memory, each within [`MAX_METADATA`], as are every
//! config (streamed to a blob) and the tar's own extension headers; the
//! entries, their names and how deep indexes nest are bounded too.
//!
//! Nothing in an archive is trusted: a blob named by a digest must have it,
//! and every layer must hash to the diff ID its config claims (as `docker
//! load` checks), before anything is tagged.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path};

use kiln_cache::{Committed, Digest, Store};
use serde::Deserialize;

use crate::compress::verify_layer;
use crate::image::{self, ImageError, MAX_METADATA, OCI_MANIFEST, Result};
use kiln_worker::layer::compression::{Compression, decompressed};

/// The entries an archive may have. `docker save` writes three or four per
/// layer and an OCI layout one per blob; this is thousands of images.
const MAX_ENTRIES: usize = 1 << 16;

/// The longest entry name (or link target), in bytes: layout names are
/// under 100, and every name read is kept until the load ends.
const MAX_NAME: usize = 1024;

/// The largest tar extension header (GNU long name, PAX records), which
/// is read into memory (the tar crate would read any size).
const MAX_EXTENSION: u64 = 64 << 10;

/// The files that describe an archive; they stay in memory.
const DESCRIPTIONS: [&str; 4] = ["manifest.json", "index.json", "oci-layout", "repositories"];

/// What a load added.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Names tagged, in full form.
    pub tags: Vec<String>,
    /// Manifests of images that came without a name.
    pub untagged: Vec<Digest>,
}

/// `manifest.json` of a docker-archive.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Files of the archive: small metadata in memory, the rest as blobs.
#[derive(Default)]
struct Contents {
    metadata: BTreeMap<String, Vec<u8>>,
    blobs: BTreeMap<String, (Digest, u64)>,
    links: BTreeMap<String, String>,
    /// Blobs this load added (removed again if it fails).
    new_blobs: Vec<Digest>,
}

impl Contents {
    fn add(&mut self, name: String, blob: Committed) {
        if blob.new {
            self.new_blobs.push(blob.digest.clone());
        }
        self.blobs.insert(name, (blob.digest, blob.size));
    }

    fn blob(&self, path: &str) -> Option<&(Digest, u64)> {
        let mut path = path.trim_start_matches("./").to_owned();
        for _ in 0..8 {
            if let Some(found) = self.blobs.get(&path) {
                return Some(found);
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }
}

/// Loads `path` into the store and tags what it names. On error, blobs the
/// load added are removed and no tag is set.
pub fn load(store: &Store, path: &Path) -> Result<Loaded> {
    let mut contents = Contents::default();
    let result =
        read_archive(store, path, &mut contents).and_then(|()| register(store, path, &contents));
    if result.is_err() {
        for digest in &contents.new_blobs {
            let _ = store.content.delete(digest);
        }
    }
    let loaded = result?;
    store.meta.flush()?;
    Ok(loaded)
}

fn read_archive(store: &Store, path: &Path, contents: &mut Contents) -> Result<()> {
    let io = |action| {
        move |source| ImageError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let bad = |reason: String| ImageError::Archive {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(io("opening"))?;
    let mut archive = tar::Archive::new(
        decompressed(BufReader::with_capacity(1 << 20, file)).map_err(io("reading"))?,
    );
    // The tar crate's messages quote raw header bytes; say it plainly.
    let not_tar = |e: std::io::Error, first: bool| match first {
        true => bad("not an image archive: not a tar file".into()),
        false => bad(format!(
            "damaged tar archive: {}",
            e.to_string().lines().next().unwrap_or_default()
        )),
    };
    let mut first = true;
    let mut count = 0;
    // Raw entries: extension headers come as entries, checked here.
    let mut pending = Extensions::default();
    for entry in archive.entries().map_err(|e| not_tar(e, true))?.raw(true) {
        let mut entry = entry.map_err(|e| not_tar(e, first))?;
        first = false;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(bad(format!(
                "more than {MAX_ENTRIES} entries (the limit of an archive)"
            )));
        }
        let kind = entry.header().entry_type();
        if pending.read(&mut entry, kind).map_err(&bad)? {
            continue;
        }
        let extensions = std::mem::take(&mut pending);
        let raw_name = extensions
            .path
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let name = name_of(&raw_name).map_err(&bad)?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                read_file(store, path, &mut entry, name, contents)?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = extensions
                    .link
                    .or_else(|| entry.link_name_bytes().map(|t| t.into_owned()));
                add_link(contents, name, target);
            }
            _ => {}
        }
    }
    Ok(())
}

/// A link entry, recorded by the name it points to (resolved against its
/// own directory) so that a docker-archive's layers may be links; a target
/// too long or leaving the archive is left out.
fn add_link(contents: &mut Contents, name: String, target: Option<Vec<u8>>) {
    if let Some(target) = target.filter(|t| t.len() <= MAX_NAME) {
        let base = Path::new(&name).parent().unwrap_or(Path::new(""));
        let target = String::from_utf8_lossy(&target).into_owned();
        if let Some(target) = entry_name(&base.join(target)) {
            contents.links.insert(name, target);
        }
    }
}

/// A file entry: a description (`manifest.json`, `index.json`, …) read
/// into memory within [`MAX_METADATA`]; anything else a blob in the store,
/// checked against the digest its name claims under `blobs/sha256/`.
fn read_file<R: Read>(
    store: &Store,
    path: &Path,
    entry: &mut tar::Entry<'_, R>,
    name: String,
    contents: &mut Contents,
) -> Result<()> {
    let io = |source| ImageError::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    };
    let top_json = !name.contains('/') && name.ends_with(".json");
    if (DESCRIPTIONS.contains(&name.as_str()) || top_json) && entry.size() > MAX_METADATA {
        return Err(ImageError::TooLarge {
            what: format!("{}: {name}", path.display()),
            size: entry.size(),
            limit: MAX_METADATA,
        });
    }
    if DESCRIPTIONS.contains(&name.as_str()) {
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(io)?;
        contents.metadata.insert(name, bytes);
        return Ok(());
    }
    // OCI layouts name blobs by digest: check what arrives.
    let expected: Option<Digest> = name
        .strip_prefix("blobs/sha256/")
        .and_then(|hex| format!("sha256:{hex}").parse().ok());
    if let Some(d) = expected.as_ref().filter(|d| store.content.has(d)) {
        contents.blobs.insert(name, (d.clone(), entry.size()));
        return Ok(());
    }
    // Everything else — layers, and a docker-archive's configs — goes
    // straight to a blob.
    let mut writer = store.content.writer()?;
    std::io::copy(entry, &mut writer).map_err(io)?;
    let blob = writer.commit(expected.as_ref())?;
    contents.add(name, blob);
    Ok(())
}

/// Tar extension headers read so far, for the entry that follows them.
#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

impl Extensions {
    /// Reads `entry` when it is an extension header (then `true`), within
    /// [`MAX_EXTENSION`].
    fn read<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: tar::EntryType,
    ) -> std::result::Result<bool, String> {
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        if !extension {
            return Ok(false);
        }
        if entry.size() > MAX_EXTENSION {
            return Err(format!(
                "a tar extension header of {} bytes is larger than {MAX_EXTENSION} bytes (the limit)",
                entry.size()
            ));
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("damaged tar archive: {e}"))?;
        let strip = |mut d: Vec<u8>| {
            while d.last() == Some(&0) {
                d.pop();
            }
            d
        };
        if kind.is_gnu_longname() {
            self.path = Some(strip(data));
        } else if kind.is_gnu_longlink() {
            self.link = Some(strip(data));
        } else if kind.is_pax_local_extensions() {
            for ext in tar::PaxExtensions::new(&data).flatten() {
                match ext.key() {
                    Ok("path") => self.path = Some(ext.value_bytes().to_vec()),
                    Ok("linkpath") => self.link = Some(ext.value_bytes().to_vec()),
                    _ => {}
                }
            }
        }
        Ok(true)
    }
}

/// An entry's name, checked: within [`MAX_NAME`], UTF-8, inside the archive.
fn name_of(raw: &[u8]) -> std::result::Result<String, String> {
    let shown = || String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned();
    if raw.len() > MAX_NAME {
        return Err(format!(
            "an entry name longer than {MAX_NAME} bytes (the limit): {}…",
            shown()
        ));
    }
    let text =
        std::str::from_utf8(raw).map_err(|_| format!("a name that is not UTF-8: {}", shown()))?;
    entry_name(Path::new(text)).ok_or_else(|| format!("unsafe path in archive: {}", shown()))
}

/// A tar entry's path as a clean relative string; `None` when it climbs
/// out (`..`) or is absolute.
fn entry_name(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Tags what the archive describes.
fn register(store: &Store, path: &Path, contents: &Contents) -> Result<Loaded> {
    let bad = |reason: String| ImageError::Archive {
        path: path.to_owned(),
        reason,
    };
    if let Some(manifest) = contents.metadata.get("manifest.json") {
        let entries: Vec<DockerEntry> =
            serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest.json: {e}")))?;
        // Every image checked before the first tag: a bad one tags nothing.
        let mut images = Vec::new();
        for entry in entries {
            let digest = docker_entry(store, contents, &entry).map_err(&bad)?;
            let names = entry.repo_tags.unwrap_or_default();
            let names = names
                .iter()
                .map(|tag| image::normalize(tag))
                .collect::<Result<Vec<_>>>()?;
            images.push((digest, names, OCI_MANIFEST));
        }
        return tag_all(store, images);
    }
    if let Some(index) = contents.metadata.get("index.json") {
        return oci_layout(store, index, path);
    }
    Err(bad("not an image archive: it has neither manifest.json (docker-archive) nor index.json (OCI layout)".into()))
}

/// Writes the OCI manifest of one docker-archive image.
fn docker_entry(
    store: &Store,
    contents: &Contents,
    entry: &DockerEntry,
) -> std::result::Result<Digest, String> {
    let missing =
        |what: &str, p: &str| format!("{what} {p} named in manifest.json is not in the archive");
    let (config, config_size) = contents
        .blob(&entry.config)
        .ok_or_else(|| missing("config", &entry.config))?;
    let mut layers = Vec::new();
    for layer in &entry.layers {
        let (digest, size) = contents
            .blob(layer)
            .ok_or_else(|| missing("layer", layer))?;
        let file = store.content.open_blob(digest).map_err(|e| e.to_string())?;
        let compression =
            Compression::detect(&mut BufReader::new(file)).map_err(|e| e.to_string())?;
        layers.push((
            digest.clone(),
            compression.layer_media_type().to_owned(),
            *size,
        ));
    }
    let config_bytes = image::read_metadata(store, config).map_err(|e| e.to_string())?;
    let parsed = serde_json::from_slice::<image::config::ImageConfiguration>(&config_bytes)
        .map_err(|e| format!("config {}: {e}", entry.config))?;
    let diff_ids = &parsed.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(format!(
            "config {}: {} layer(s) in manifest.json but {} diff IDs in the config",
            entry.config,
            layers.len(),
            diff_ids.len()
        ));
    }
    for ((blob, _, _), (diff_id, name)) in layers.iter().zip(diff_ids.iter().zip(&entry.layers)) {
        let diff_id: Digest = diff_id.parse().map_err(|_| {
            format!(
                "config {}: diff ID {diff_id:?} is not a sha256 digest",
                entry.config
            )
        })?;
        verify_layer(store, blob, &diff_id).map_err(|e| format!("{name}: {e}"))?;
    }
    image::write_manifest(store, (config, *config_size), &layers)
        .map(|(d, _)| d)
        .map_err(|e| e.to_string())
}

/// Every layer of the images `target` holds (a manifest, or each platform
/// of an index that the archive has) checked against its diff ID: a
/// multi-platform image's other platforms run here too (under emulation),
/// and a load is the last time their bytes are checked against the config.
pub(super) fn verify_image(store: &Store, target: &Digest) -> std::result::Result<(), String> {
    let images = image::index::present_images(store, target).map_err(|e| e.to_string())?;
    for img in images {
        for layer in img.image.layer_pairs().map_err(|e| e.to_string())? {
            verify_layer(store, &layer.blob, &layer.diff_id).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Tags the manifests of an OCI layout's `index.json`.
fn oci_layout(store: &Store, index: &[u8], path: &Path) -> Result<Loaded> {
    oci_layout_entries(store, index).map_err(|reason| match reason {
        Rejected::Bound(e) => e,
        Rejected::Other(reason) => ImageError::Archive {
            path: path.to_owned(),
            reason,
        },
    })
}

/// Why an OCI layout's entries were refused.
enum Rejected {
    /// A bound: its own error, which names the limit.
    Bound(ImageError),
    Other(String),
}

impl From<String> for Rejected {
    fn from(reason: String) -> Self {
        Self::Other(reason)
    }
}

impl From<&str> for Rejected {
    fn from(reason: &str) -> Self {
        Self::Other(reason.to_owned())
    }
}

fn oci_layout_entries(store: &Store, index: &[u8]) -> std::result::Result<Loaded, Rejected> {
    let index: serde_json::Value =
        serde_json::from_slice(index).map_err(|e| format!("index.json: {e}"))?;
    let manifests = index
        .get("manifests")
        .and_then(|m| m.as_array())
        .ok_or("index.json has no manifests")?;
    let mut images = Vec::new();
    for m in manifests {
        let digest: Digest = m
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse().ok())
            .ok_or("index.json: a manifest without a valid digest")?;
        let media_type = m
            .get("mediaType")
            .and_then(|t| t.as_str())
            .unwrap_or(OCI_MANIFEST);
        image::check_index_depth(store, &digest).map_err(Rejected::Bound)?;
        if store.content.has(&digest) {
            let bytes = image::read_metadata(store, &digest).map_err(Rejected::Bound)?;
            if image::index::is_index(&bytes) {
                image::index::entries(&digest.to_string(), &bytes).map_err(Rejected::Bound)?;
            }
        }
        if !store.complete(&digest).map_err(|e| e.to_string())? {
            return Err(
                format!("manifest {digest} or a blob it names is not in the archive").into(),
            );
        }
        verify_image(store, &digest)?;
        let annotations = m.get("annotations");
        let annotation = |key: &str| {
            annotations
                .and_then(|a| a.get(key))
                .and_then(|v| v.as_str())
        };
        let name = match (
            annotation("io.containerd.image.name"),
            annotation("org.opencontainers.image.ref.name"),
        ) {
            (Some(full), _) => Some(full.to_owned()),
            // A bare tag names nothing by itself; a full reference does.
            (None, Some(r)) if r.contains(['/', ':']) => Some(r.to_owned()),
            _ => None,
        };
        let names = match name {
            Some(name) => vec![image::normalize(&name).map_err(|e| e.to_string())?],
            None => Vec::new(),
        };
        let platform = m.get("platform").and_then(platform_of);
        images.push(Listed {
            digest,
            names,
            media_type,
            platform,
        });
    }
    let images = join_platforms(store, images)?;
    tag_all(store, images).map_err(Rejected::Bound)
}

/// What is tagged: a manifest or index, its names (none: untagged), its
/// media type.
type ToTag<'a> = (Digest, Vec<String>, &'a str);

/// One image `index.json` lists.
struct Listed<'a> {
    digest: Digest,
    names: Vec<String>,
    media_type: &'a str,
    /// The descriptor's platform, when it names one.
    platform: Option<image::Platform>,
}

/// A descriptor's `platform` object as kiln's platform, when it is one.
fn platform_of(value: &serde_json::Value) -> Option<image::Platform> {
    let field = |key: &str| value.get(key).and_then(|v| v.as_str());
    let mut text = format!("{}/{}", field("os")?, field("architecture")?);
    if let Some(variant) = field("variant").filter(|v| !v.is_empty()) {
        text.push('/');
        text.push_str(variant);
    }
    kiln_frontend::platform::parse(&text).ok()
}

/// An `index.json` listing one name's platform manifests side by side
/// (instead of naming their index) becomes one multi-platform image: an
/// index of them, written here and tagged with the name, as containerd
/// imports such a layout.
fn join_platforms<'a>(
    store: &Store,
    images: Vec<Listed<'a>>,
) -> std::result::Result<Vec<ToTag<'a>>, Rejected> {
    let mut by_name: BTreeMap<Vec<String>, Vec<Listed<'a>>> = BTreeMap::new();
    let mut out = Vec::new();
    for listed in images {
        if listed.names.is_empty() || listed.platform.is_none() {
            out.push((listed.digest, listed.names, listed.media_type));
        } else {
            by_name
                .entry(listed.names.clone())
                .or_default()
                .push(listed);
        }
    }
    for (names, group) in by_name {
        if let [one] = group.as_slice() {
            out.push((one.digest.clone(), names, one.media_type));
            continue;
        }
        if group.len() > image::index::MAX_INDEX_ENTRIES {
            return Err(Rejected::Bound(ImageError::TooManyEntries {
                index: "index.json".into(),
                entries: group.len(),
                limit: image::index::MAX_INDEX_ENTRIES,
            }));
        }
        let mut entries = Vec::new();
        for listed in group {
            let size = store
                .content
                .size(&listed.digest)
                .map_err(|e| e.to_string())?;
            let platform = listed.platform.unwrap_or_else(image::host_platform);
            entries.push((listed.digest, size, platform));
        }
        let (index, _) = image::write_index(store, &entries).map_err(Rejected::Bound)?;
        out.push((index, names, image::OCI_INDEX));
    }
    Ok(out)
}

/// Tags each checked image with its names (none: untagged).
fn tag_all(store: &Store, images: Vec<ToTag<'_>>) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    for (digest, names, media_type) in images {
        if names.is_empty() {
            loaded.untagged.push(digest);
            continue;
        }
        for full in names {
            image::tag(store, &full, &digest, media_type)?;
            loaded.tags.push(full);
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::entry_name;
    use std::path::Path;

    #[test]
    fn entry_names() {
        assert_eq!(
            entry_name(Path::new("./a/b.tar")).as_deref(),
            Some("a/b.tar")
        );
        assert_eq!(entry_name(Path::new("a/../b")).as_deref(), Some("b"));
        assert_eq!(entry_name(Path::new("../b")), None);
        assert_eq!(entry_name(Path::new("/etc/passwd")), None);
    }
}
