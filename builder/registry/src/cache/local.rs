//! `type=local`: the artifact in an OCI image layout on disk, as
//! BuildKit's client keeps it (`client/ociindex`, `client/solve.go`):
//! blobs by digest under `blobs/sha256/`, and `index.json` holding the
//! latest cache manifest per tag (annotation
//! `org.opencontainers.image.ref.name`, default `latest`): an export
//! replaces the entry of its tag and leaves the others. Blobs no manifest
//! of the index references are removed only with `reset=true`, as
//! BuildKit's client does; otherwise they stay (buildx's documented
//! growth, moby/buildkit#1896).
//!
//! Concurrent exporters into one directory are safe: blobs are written
//! by digest through temp files and renamed, and `index.json` is changed
//! under an exclusive `flock` on `index.json.lock` and replaced by rename,
//! so a reader sees the old index or the new one, never half of one. An
//! exporter checks its blobs are still there under that lock (another's
//! `reset=true` may have removed them) before it names them. A reader
//! takes the lock shared (when it can write the directory).
//!
//! Every read is hostile: sizes bounded, digests verified, paths beneath
//! the directory ([`super::layout`]).

use std::collections::BTreeSet;
use std::path::Path;

use kiln_cache::{Digest, Store};
use kiln_image::image;
use serde::{Deserialize, Serialize};

use super::artifact::{self, Artifact};
use super::layout::Layout;
use super::{CacheError, Exported, Imported};
use crate::Result;

/// The annotation naming an index entry's tag.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation for an image's full name (BuildKit's client
/// looks it up first).
const IMAGE_NAME: &str = "io.containerd.image.name";
/// The entries an index may hold (every tag of a shared cache directory).
const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
}

impl Entry {
    fn tag(&self) -> Option<&str> {
        self.annotations.get(REF_NAME).map(String::as_str)
    }
}

fn failed(dir: &Path, what: &str, source: std::io::Error) -> CacheError {
    CacheError::Local {
        dir: dir.to_owned(),
        what: what.to_owned(),
        source,
    }
}

fn invalid(dir: &Path, reason: impl std::fmt::Display) -> CacheError {
    CacheError::Invalid {
        cache: format!("local {}", dir.display()),
        reason: reason.to_string(),
    }
}

/// Writes `artifact` (in `store`) into the layout at `dir` under `tag`.
pub(super) fn export(
    store: &Store,
    dir: &Path,
    tag: &str,
    reset: bool,
    artifact: &Artifact,
) -> Result<Exported> {
    let layout = Layout::open(dir, true).map_err(|e| failed(dir, "opening", e))?;
    let mut all = vec![(
        artifact.manifest_digest.clone(),
        artifact.manifest.len() as u64,
    )];
    all.extend(artifact.blobs.iter().cloned());
    let mut exported = Exported::default();
    put_blobs(store, &layout, &all, &mut exported)?;
    let _lock = layout
        .lock(true)
        .map_err(|e| failed(dir, "locking index.json", e))?;
    // Another exporter's reset may have removed a blob since.
    put_blobs(store, &layout, &all, &mut Exported::default())?;
    put_tag(
        &layout,
        tag,
        &artifact.manifest_digest,
        artifact.manifest.len() as u64,
        reset,
    )?;
    Ok(exported)
}

/// Names `manifest` (`size` bytes, its blobs here) `tag` in the index,
/// in place of the tag's last manifest; with `reset`, then removes the
/// blobs no manifest references. Under the exclusive lock.
fn put_tag(layout: &Layout, tag: &str, manifest: &Digest, size: u64, reset: bool) -> Result<()> {
    let dir = layout.path();
    let mut index = read_index(layout)?.unwrap_or_default();
    index.schema_version = 2;
    index.media_type = image::OCI_INDEX.to_owned();
    index
        .manifests
        .retain(|e| e.tag() != Some(tag) || e.annotations.contains_key(IMAGE_NAME));
    index.manifests.push(Entry {
        media_type: image::OCI_MANIFEST.to_owned(),
        digest: manifest.to_string(),
        size,
        annotations: [(REF_NAME.to_owned(), tag.to_owned())].into(),
    });
    let layout_file = br#"{"imageLayoutVersion":"1.0.0"}"#;
    layout
        .put_file("oci-layout", layout_file)
        .map_err(|e| failed(dir, "writing oci-layout", e))?;
    layout
        .put_file("index.json", &image::canonical_json(&index))
        .map_err(|e| failed(dir, "writing index.json", e))?;
    if reset {
        remove_unreferenced(layout, &index)?;
    }
    Ok(())
}

/// Copies each blob the layout lacks from the store.
fn put_blobs(
    store: &Store,
    layout: &Layout,
    blobs: &[(Digest, u64)],
    exported: &mut Exported,
) -> Result<()> {
    for (digest, _) in blobs {
        if layout.has_blob(digest) {
            exported.skipped += 1;
            continue;
        }
        let mut file = store.content.open_blob(digest)?;
        layout
            .put_blob(digest, &mut file)
            .map_err(|e| failed(layout.path(), &format!("writing blob {digest}"), e))?;
        exported.uploaded += 1;
    }
    Ok(())
}

/// The index, or `None` when there is none yet.
fn read_index(layout: &Layout) -> Result<Option<Index>> {
    let bytes = match layout.read("index.json", image::MAX_METADATA) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(layout.path(), "reading index.json", e).into()),
    };
    let index: Index = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(layout.path(), format!("index.json: {e}")))?;
    if index.manifests.len() > MAX_ENTRIES {
        return Err(invalid(
            layout.path(),
            format!("index.json: over {MAX_ENTRIES} entries"),
        )
        .into());
    }
    Ok(Some(index))
}

/// BuildKit's `reset=true`: removes every blob no manifest of `index`
/// references (the manifests, their configs and layers).
fn remove_unreferenced(layout: &Layout, index: &Index) -> Result<()> {
    let mut keep = BTreeSet::new();
    for entry in &index.manifests {
        let Ok(digest) = entry.digest.parse::<Digest>() else {
            continue;
        };
        keep.insert(digest.clone());
        // A manifest this directory holds names the rest; one it cannot
        // read keeps only itself.
        if let Ok(bytes) = read_blob(layout, &digest, image::MAX_METADATA) {
            let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let descriptors = std::iter::once(&parsed["config"])
                .chain(parsed["layers"].as_array().into_iter().flatten())
                .chain(parsed["manifests"].as_array().into_iter().flatten());
            keep.extend(
                descriptors.filter_map(|d| d["digest"].as_str().and_then(|d| d.parse().ok())),
            );
        }
    }
    let present = layout
        .list_blobs()
        .map_err(|e| failed(layout.path(), "listing blobs", e))?;
    for digest in present.into_iter().filter(|d| !keep.contains(d)) {
        layout
            .remove_blob(&digest)
            .map_err(|e| failed(layout.path(), &format!("removing blob {digest}"), e))?;
    }
    Ok(())
}

/// A small blob (a manifest, a config), bounded and verified.
fn read_blob(layout: &Layout, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
    let rel = format!("blobs/sha256/{}", digest.hex());
    let bytes = layout
        .read(&rel, limit)
        .map_err(|e| failed(layout.path(), &format!("reading blob {digest}"), e))?;
    if Digest::of(&bytes) != *digest {
        return Err(invalid(
            layout.path(),
            format!("blob {digest}: its bytes do not match"),
        )
        .into());
    }
    Ok(bytes)
}

/// The cache manifest `digest` names, else the one `tag` names: its
/// digest and bytes, what it names, and its config's bytes (all bounded
/// and verified).
fn chosen(layout: &Layout, tag: &str, digest: Option<&str>) -> Result<(artifact::Wanted, Vec<u8>)> {
    let (dir, name) = (layout.path(), format!("local {}", layout.path().display()));
    let manifest: Digest = match digest {
        Some(d) => d
            .parse()
            .map_err(|e| invalid(dir, format!("digest={d}: {e}")))?,
        None => {
            let index = read_index(layout)?.ok_or_else(|| invalid(dir, "no index.json"))?;
            let by = |key: &str| {
                index
                    .manifests
                    .iter()
                    .rfind(|e| e.annotations.get(key).map(String::as_str) == Some(tag))
            };
            let entry = by(IMAGE_NAME)
                .or_else(|| by(REF_NAME))
                .ok_or_else(|| invalid(dir, format!("no manifest tagged {tag:?} in index.json")))?;
            entry
                .digest
                .parse()
                .map_err(|e| invalid(dir, format!("index.json: {e}")))?
        }
    };
    let bytes = read_blob(layout, &manifest, image::MAX_METADATA)?;
    let mut wanted = artifact::read(&name, &bytes)?;
    wanted.manifest = Some((manifest, bytes));
    let config = read_blob(layout, &wanted.config.0, image::MAX_METADATA)?;
    Ok((wanted, config))
}

/// Imports the cache manifest `digest` names, else the one `tag` names,
/// from the layout at `dir`.
pub(super) fn import(
    store: &Store,
    dir: &Path,
    tag: &str,
    digest: Option<&str>,
) -> Result<Imported> {
    let layout = Layout::open(dir, false).map_err(|e| failed(dir, "opening", e))?;
    let _lock = layout
        .lock(false)
        .map_err(|e| failed(dir, "locking index.json", e))?;
    let (wanted, config) = chosen(&layout, tag, digest)?;
    let name = format!("local {}", dir.display());
    store.content.write_bytes(&config)?;
    for (digest, size) in &wanted.layers {
        if store.content.has(digest) {
            continue;
        }
        let file = layout
            .blob(digest)
            .map_err(|e| failed(dir, &format!("reading blob {digest}"), e))?;
        let mut writer = store.content.writer()?;
        // No more than the manifest says (a file that grows while read).
        let copied = std::io::copy(
            &mut std::io::Read::take(file, size.saturating_add(1)),
            &mut writer,
        )
        .map_err(|e| failed(dir, &format!("reading blob {digest}"), e))?;
        if copied != *size {
            let short =
                std::io::Error::other(format!("{copied} bytes where the manifest says {size}"));
            return Err(failed(dir, &format!("reading blob {digest}"), short).into());
        }
        // The store keeps nothing whose bytes are not its digest.
        writer.commit(Some(digest))?;
    }
    artifact::apply(store, &name, &wanted.config.0)
}

/// What a layout tar may hold: far more entries than a cache's blobs.
const MAX_TAR_ENTRIES: usize = artifact::MAX_RECORDS + 16;

/// Through kilnd, `--cache-to type=local`: the cache `manifest` (made in
/// the store by the build) as a tar of an OCI layout holding it, for the
/// client to write into its directory ([`receive_tar`]).
pub fn write_tar(store: &Store, manifest: &Digest, out: &mut dyn std::io::Write) -> Result<()> {
    let name = Path::new("kiln store");
    if store.content.size(manifest)? > image::MAX_METADATA {
        return Err(invalid(name, "manifest over 4 MiB").into());
    }
    let bytes = store.content.read(manifest)?;
    let wanted = artifact::read("kiln store", &bytes)?;
    let tar = LayoutTar {
        manifest: (manifest, &bytes),
        config: (&wanted.config.0, None),
        layers: &wanted.layers,
    };
    tar.write(out, (name, "writing the cache's tar"), &mut |digest| {
        Ok(store.content.open_blob(digest)?)
    })
}

/// Through kilnd, `--cache-from type=local`: the manifest `tag` or
/// `digest` names in the layout at `dir`, with its blobs, as a tar of an
/// OCI layout holding only it, for kilnd's [`import_tar`]. Read as an
/// embedded import reads it (bounded, verified, beneath `dir`).
pub fn pack(
    dir: &Path,
    tag: &str,
    digest: Option<&str>,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let layout = Layout::open(dir, false).map_err(|e| failed(dir, "opening", e))?;
    let _lock = layout
        .lock(false)
        .map_err(|e| failed(dir, "locking index.json", e))?;
    let (wanted, config) = chosen(&layout, tag, digest)?;
    let (manifest, bytes) = wanted
        .manifest
        .clone()
        .ok_or_else(|| invalid(dir, "no manifest"))?;
    let tar = LayoutTar {
        manifest: (&manifest, &bytes),
        config: (&wanted.config.0, Some(&config)),
        layers: &wanted.layers,
    };
    tar.write(out, (dir, "packing the cache"), &mut |digest| {
        layout
            .blob(digest)
            .map_err(|e| failed(dir, &format!("reading blob {digest}"), e).into())
    })
}

/// A tar of an OCI layout that holds one cache manifest: its `index.json`,
/// the manifest, the config, and each layer's blob once.
struct LayoutTar<'a> {
    manifest: (&'a Digest, &'a [u8]),
    /// The config's bytes when read already; else a blob `open` gives.
    config: (&'a Digest, Option<&'a [u8]>),
    layers: &'a [(Digest, u64)],
}

impl LayoutTar<'_> {
    /// Writes the tar to `out`, each blob not in hand from `open`; a write
    /// error is said of `context` (a path and what was done).
    fn write(
        &self,
        out: &mut dyn std::io::Write,
        (path, what): (&Path, &str),
        open: &mut dyn FnMut(&Digest) -> Result<std::fs::File>,
    ) -> Result<()> {
        let tar_error = |e: std::io::Error| crate::RegistryError::from(failed(path, what, e));
        let (manifest, bytes) = self.manifest;
        let index = Index {
            schema_version: 2,
            media_type: image::OCI_INDEX.to_owned(),
            manifests: vec![Entry {
                media_type: image::OCI_MANIFEST.to_owned(),
                digest: manifest.to_string(),
                size: bytes.len() as u64,
                annotations: Default::default(),
            }],
        };
        let mut tar = tar::Builder::new(out);
        append(&mut tar, "index.json", &image::canonical_json(&index)).map_err(tar_error)?;
        let blob = |digest: &Digest| format!("blobs/sha256/{}", digest.hex());
        append(&mut tar, &blob(manifest), bytes).map_err(tar_error)?;
        match self.config {
            (digest, Some(bytes)) => append(&mut tar, &blob(digest), bytes).map_err(tar_error)?,
            (digest, None) => append_blob(&mut tar, digest, open(digest)?).map_err(tar_error)?,
        }
        let mut seen = BTreeSet::new();
        for (digest, _) in self.layers {
            if seen.insert(digest) {
                append_blob(&mut tar, digest, open(digest)?).map_err(tar_error)?;
            }
        }
        tar.into_inner()
            .map_err(tar_error)?
            .flush()
            .map_err(tar_error)?;
        Ok(())
    }
}

/// `file` as the layout tar's `blobs/sha256/<hex>` of `digest`.
fn append_blob<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    digest: &Digest,
    file: std::fs::File,
) -> std::io::Result<()> {
    let size = file.metadata()?.len();
    let mut header = tar_header(size);
    tar.append_data(&mut header, format!("blobs/sha256/{}", digest.hex()), file)
}

fn tar_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn append(
    tar: &mut tar::Builder<&mut dyn std::io::Write>,
    path: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut header = tar_header(bytes.len() as u64);
    tar.append_data(&mut header, path, bytes)
}

/// Writes a layout tar's blobs into `layout` (each verified against its
/// name) and returns the one manifest its `index.json` names. Anything
/// but `oci-layout`, `index.json` and `blobs/sha256/<hex>` files is refused.
fn unpack(reader: &mut dyn std::io::Read, layout: &Layout) -> Result<Digest> {
    let dir = layout.path();
    let bad = |why: String| invalid(dir, format!("the cache's tar: {why}"));
    let mut manifest = None;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| failed(dir, "reading the cache's tar", e))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_TAR_ENTRIES {
            return Err(bad(format!("over {MAX_TAR_ENTRIES} entries")).into());
        }
        let mut entry = entry.map_err(|e| failed(dir, "reading the cache's tar", e))?;
        let path = entry
            .path()
            .map_err(|e| failed(dir, "reading the cache's tar", e))?
            .to_string_lossy()
            .into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad(format!("{path} is not a regular file")).into());
        }
        if path == "oci-layout" {
            continue;
        }
        if path == "index.json" {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut entry, image::MAX_METADATA + 1),
                &mut bytes,
            )
            .map_err(|e| failed(dir, "reading the cache's tar", e))?;
            let index: Index =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("index.json: {e}")))?;
            let [entry] = index.manifests.as_slice() else {
                return Err(bad("index.json names not exactly one manifest".into()).into());
            };
            manifest = Some(
                entry
                    .digest
                    .parse::<Digest>()
                    .map_err(|e| bad(format!("index.json: {e}")))?,
            );
            continue;
        }
        let digest: Digest = path
            .strip_prefix("blobs/sha256/")
            .and_then(|hex| format!("sha256:{hex}").parse().ok())
            .ok_or_else(|| bad(format!("unexpected entry {path:?}")))?;
        layout
            .put_blob(&digest, &mut entry)
            .map_err(|e| failed(dir, &format!("writing blob {digest}"), e))?;
    }
    manifest.ok_or_else(|| bad("no index.json".into()).into())
}

/// Through kilnd, the client's side of `--cache-to type=local`: the tar
/// kilnd sent ([`write_tar`]) written into the layout at `dir` and tagged
/// `tag`, under the index lock.
pub fn receive_tar(
    reader: &mut dyn std::io::Read,
    dir: &Path,
    tag: &str,
    reset: bool,
) -> Result<Digest> {
    let layout = Layout::open(dir, true).map_err(|e| failed(dir, "opening", e))?;
    let _lock = layout
        .lock(true)
        .map_err(|e| failed(dir, "locking index.json", e))?;
    let manifest = unpack(reader, &layout)?;
    let bytes = read_blob(&layout, &manifest, image::MAX_METADATA)?;
    let wanted = artifact::read(&format!("local {}", dir.display()), &bytes)?;
    for (digest, _) in std::iter::once(&wanted.config).chain(&wanted.layers) {
        if !layout.has_blob(digest) {
            return Err(invalid(dir, format!("the cache's tar lacks blob {digest}")).into());
        }
    }
    put_tag(&layout, tag, &manifest, bytes.len() as u64, reset)?;
    Ok(manifest)
}

/// kilnd's side of `--cache-from type=local`: the tar a client packed
/// ([`pack`]) unpacked into `scratch` (a fresh directory of kilnd's) and
/// imported from there as any layout is.
pub fn import_tar(
    store: &Store,
    reader: &mut dyn std::io::Read,
    scratch: &Path,
) -> Result<Imported> {
    let layout = Layout::open(scratch, true).map_err(|e| failed(scratch, "opening", e))?;
    let manifest = unpack(reader, &layout)?;
    import(store, scratch, "latest", Some(&manifest.to_string()))
}
