//! `type=registry,ref=REF`: the artifact pushed as a manifest under REF
//! (its blobs first); imported from REF, which may also be an image
//! pushed with inline cache (a manifest, or an index of them).

use kiln_cache::{Digest, Store};
use kiln_frontend::reference::Reference;

use super::artifact::{self, Artifact, Record};
use super::{Exported, Imported, inline};
use crate::session::{Options, Session};
use crate::{Result, pull, push};
use kiln_image::image;

/// How many platforms of an index an inline import reads.
const MAX_PLATFORMS: usize = 16;

pub(super) fn export(
    store: &Store,
    reference: &str,
    artifact: &Artifact,
    options: &Options,
) -> Result<Exported> {
    let reference = Reference::parse(reference)?;
    let pushed = push::push_manifest(
        store,
        &reference,
        &artifact.manifest,
        &artifact.blobs,
        options,
    )?;
    Ok(Exported {
        uploaded: pushed.uploaded + pushed.mounted,
        skipped: pushed.skipped,
    })
}

pub(super) fn import(store: &Store, reference: &str, options: &Options) -> Result<Imported> {
    let reference = Reference::parse(reference)?;
    let session = Session::new(&reference.domain, &reference.path, options, "pull")?;
    let wanted = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let (bytes, media_type) = pull::manifest(&session, &wanted)?;
    let parsed: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| session.failed("reading the cache", e))?;
    if parsed["config"]["mediaType"] == artifact::CACHE_CONFIG {
        let name = reference.to_string();
        let wanted = artifact::read(&name, &bytes)?;
        let mut blobs = vec![wanted.config.clone()];
        blobs.extend(wanted.layers);
        blobs.retain(|(d, _)| !store.content.has(d));
        pull::fetch_all(store, &session, &blobs)?;
        return artifact::apply(store, &name, &wanted.config.0);
    }
    let manifests = if media_type == image::OCI_INDEX || media_type == image::DOCKER_LIST {
        platform_manifests(&session, &parsed)?
    } else {
        vec![parsed]
    };
    let mut records = Vec::new();
    for manifest in &manifests {
        records.extend(inline_records(store, &session, manifest)?);
    }
    if records.is_empty() {
        return Err(session.failed(
            &format!("manifest {wanted}"),
            "holds no kiln cache (--cache-to type=registry or type=inline writes one)",
        ));
    }
    let mut layers: Vec<(Digest, u64)> = records.iter().map(|r| (r.blob.clone(), r.size)).collect();
    layers.sort();
    layers.dedup();
    layers.retain(|(d, _)| !store.content.has(d));
    pull::fetch_all(store, &session, &layers)?;
    let kept = artifact::put_records(store, &records)?;
    store.meta.flush()?;
    Ok(Imported {
        records: kept,
        mounts: 0,
    })
}

/// The platform manifests of an index (at most [`MAX_PLATFORMS`]).
fn platform_manifests(
    session: &Session,
    index: &serde_json::Value,
) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let entries = index["manifests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for entry in entries.iter().take(MAX_PLATFORMS) {
        let Some(digest) = entry["digest"].as_str() else {
            continue;
        };
        let media_type = entry["mediaType"].as_str().unwrap_or_default();
        if media_type != image::OCI_MANIFEST && media_type != image::DOCKER_MANIFEST {
            continue;
        }
        let (bytes, _) = pull::manifest(session, digest)?;
        if Digest::of(&bytes).to_string() != digest {
            return Err(session.failed(&format!("manifest {digest}"), "digest mismatch"));
        }
        out.push(
            serde_json::from_slice(&bytes)
                .map_err(|e| session.failed(&format!("manifest {digest}"), e))?,
        );
    }
    Ok(out)
}

/// The inline records of one image manifest: its config fetched and read.
fn inline_records(
    store: &Store,
    session: &Session,
    manifest: &serde_json::Value,
) -> Result<Vec<Record>> {
    let what = "reading the image's inline cache";
    let digest = |d: &serde_json::Value| -> Result<Digest> {
        d["digest"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| session.failed(what, "a descriptor without a digest"))
    };
    let config = digest(&manifest["config"])?;
    if !store.content.has(&config) {
        pull::fetch_all(store, session, &[(config.clone(), 0)])?;
    }
    if store.content.size(&config)? > image::MAX_METADATA {
        return Err(session.failed(what, "config over 4 MiB"));
    }
    let parsed: serde_json::Value = serde_json::from_slice(&store.content.read(&config)?)
        .map_err(|e| session.failed(what, e))?;
    let mut layers = Vec::new();
    for l in manifest["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let media_type = l["mediaType"].as_str().unwrap_or_default().to_owned();
        layers.push((digest(l)?, media_type, l["size"].as_u64().unwrap_or(0)));
    }
    Ok(inline::records(&parsed, &layers).unwrap_or_default())
}
