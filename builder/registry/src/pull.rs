//! `kiln pull`: a manifest (the machine's platform picked from an index),
//! its config and layers into the store — only blobs the store lacks,
//! several at once, each verified against its digest as it streams — and
//! then, last, the tag.

use std::io::Read;

use kiln_cache::{Digest, Store};
use kiln_frontend::reference::Reference;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::session::{Options, Session};
use super::{MANIFEST_TYPES, Result};
use kiln_image::image;

/// When `FROM` pulls (`kiln build --pull`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only images not in the store (the default).
    #[default]
    Missing,
    /// Every base image, to get what its tag points at now.
    Always,
    /// Never: a missing image is an error.
    Never,
}

impl PullPolicy {
    /// A policy, or buildx's boolean `--pull[=true|false]` (false: pull
    /// only what is missing, as docker does without `--pull`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "missing" | "false" => Some(Self::Missing),
            "always" | "true" => Some(Self::Always),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
}

/// What a pull brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The full name tagged.
    pub name: String,
    /// The platform manifest's digest.
    pub manifest: Digest,
    /// Blobs fetched (the rest were in the store already).
    pub fetched: usize,
    pub bytes: u64,
}

/// Manifests larger than this are refused (real ones are a few KiB).
const MANIFEST_LIMIT: u64 = 4 << 20;
/// Blobs fetched at once.
const PARALLEL: usize = 4;

/// Pulls `name` (`repo[:tag]` or `repo@digest`) into the store and tags it.
pub fn pull(store: &Store, name: &str, options: &Options) -> Result<Pulled> {
    let reference = Reference::parse(name)?;
    let session = Session::new(&reference.domain, &reference.path, options, "pull")?;
    let wanted = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let (mut bytes, mut media_type) = manifest(&session, &wanted)?;
    if let Some(pinned) = &reference.digest {
        let got = Digest::of(&bytes);
        if got.to_string() != *pinned {
            return Err(session.failed(
                &format!("manifest {wanted}"),
                format!("digest mismatch: got {got}"),
            ));
        }
    }
    if media_type == image::OCI_INDEX || media_type == image::DOCKER_LIST {
        let chosen = pick_platform(&session, &bytes, options)?;
        (bytes, media_type) = manifest(&session, &chosen)?;
        if Digest::of(&bytes).to_string() != chosen {
            return Err(session.failed(&format!("manifest {chosen}"), "digest mismatch"));
        }
    }
    let parsed: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| session.failed("reading the manifest", e))?;
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    for descriptor in std::iter::once(&parsed["config"]).chain(
        parsed["layers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    ) {
        let digest: Digest = descriptor["digest"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| {
                session.failed("reading the manifest", "a descriptor without a digest")
            })?;
        blobs.push((digest, descriptor["size"].as_u64().unwrap_or(0)));
    }
    let missing: Vec<(Digest, u64)> = blobs
        .into_iter()
        .filter(|(d, _)| !store.content.has(d))
        .collect();
    let bytes_fetched = fetch_all(store, &session, &missing)?;
    // Blobs first, the manifest, the tag last: a crash leaves no tag to a
    // half-pulled image.
    let manifest = store.content.write_bytes(&bytes)?;
    let full = Reference {
        digest: None,
        ..reference.clone()
    }
    .to_string();
    let tag_name = if reference.tag.is_some() || reference.digest.is_none() {
        full
    } else {
        // `repo@digest`: named by the digest, as Docker does.
        reference.to_string()
    };
    image::tag(store, &tag_name, &manifest, &media_type)?;
    store.meta.flush()?;
    Ok(Pulled {
        name: tag_name,
        manifest,
        fetched: missing.len(),
        bytes: bytes_fetched,
    })
}

/// A manifest's bytes and media type.
pub(super) fn manifest(session: &Session, reference: &str) -> Result<(Vec<u8>, String)> {
    let what = format!("manifest {reference}");
    let url = session.url(&format!("manifests/{reference}"));
    let accept = MANIFEST_TYPES.join(", ");
    let response = session.send(&what, &|http| http.get(&url).header(ACCEPT, &accept))?;
    if !response.status().is_success() {
        return Err(session.status_error(&what, response));
    }
    let header_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
    let mut bytes = Vec::new();
    response
        .take(MANIFEST_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| session.failed(&what, e))?;
    if bytes.len() as u64 > MANIFEST_LIMIT {
        return Err(session.failed(&what, "larger than 4 MiB"));
    }
    let body_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned));
    let media_type = body_type
        .or(header_type)
        .unwrap_or_else(|| image::OCI_MANIFEST.to_owned());
    Ok((bytes, media_type))
}

/// The digest of the index entry for the wanted platform ([`image::runs`]).
fn pick_platform(session: &Session, index: &[u8], options: &Options) -> Result<String> {
    let wanted = options
        .platform
        .clone()
        .unwrap_or_else(image::host_platform);
    let parsed: oci_spec::image::ImageIndex =
        serde_json::from_slice(index).map_err(|e| session.failed("reading the index", e))?;
    parsed
        .manifests()
        .iter()
        .find(|m| {
            m.platform()
                .as_ref()
                .is_some_and(|p| image::runs(p, &wanted))
        })
        .map(|m| m.digest().to_string())
        .ok_or_else(|| {
            let wanted = kiln_frontend::platform::format(&wanted);
            session.failed("choosing a platform", format!("no {wanted} image"))
        })
}

/// Fetches `blobs` into the store, up to [`PARALLEL`] at once; the bytes
/// fetched.
pub(super) fn fetch_all(store: &Store, session: &Session, blobs: &[(Digest, u64)]) -> Result<u64> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<u64>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PARALLEL.min(blobs.len()))
            .map(|_| {
                scope.spawn(|| -> Result<u64> {
                    let mut total = 0;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((digest, _)) = blobs.get(i) else {
                            return Ok(total);
                        };
                        total += fetch(store, session, digest)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(session.failed("fetching", "a fetch thread panicked")))
            })
            .collect()
    });
    results.into_iter().sum()
}

/// One blob, streamed into the store and verified there.
fn fetch(store: &Store, session: &Session, digest: &Digest) -> Result<u64> {
    let what = format!("blob {digest}");
    let url = session.url(&format!("blobs/{digest}"));
    let mut response = session.send(&what, &|http| http.get(&url))?;
    if !response.status().is_success() {
        return Err(session.status_error(&what, response));
    }
    let mut writer = store.content.writer()?;
    let copied = std::io::copy(&mut response, &mut writer).map_err(|e| session.failed(&what, e))?;
    // The store verifies the digest and keeps nothing that does not match.
    writer
        .commit(Some(digest))
        .map_err(|e| session.failed(&what, e))?;
    Ok(copied)
}
