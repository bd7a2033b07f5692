//! `kiln push`: an image's blobs the registry lacks (asked with HEAD),
//! mounted from a sibling repository of the same registry when kiln knows
//! one that has the blob, else uploaded — in one request when small, in
//! chunks when large — and then the manifest under the tag.

use std::io::Read;

use kiln_cache::{Digest, Store};
use kiln_frontend::reference::Reference;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};

use super::session::{Options, Session};
use super::{RegistryError, Result};
use crate::image;

/// Blobs up to this size go in one PUT; larger ones in PATCH chunks of it.
const CHUNK: u64 = 32 << 20;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub manifest: Digest,
    pub uploaded: usize,
    pub mounted: usize,
    /// Blobs the registry had already.
    pub skipped: usize,
}

/// Pushes the image `name` names in the store to the registry in its name.
pub fn push(store: &Store, name: &str, options: &Options) -> Result<Pushed> {
    let (full, image) = image::resolve(store, name)?;
    let reference = Reference::parse(&full)?;
    let manifest_bytes = store.content.read(&image.manifest_digest)?;
    let mut blobs = vec![(image.config_digest.clone(), image.manifest.config().size())];
    blobs.extend(image.layers().into_iter().map(|(d, _, size)| (d, size)));
    push_manifest(store, &reference, &manifest_bytes, &blobs, options)
}

/// Pushes `blobs` (from the store) and then `manifest` under the
/// reference's tag (or its digest): an image, or kiln's build cache.
pub(super) fn push_manifest(
    store: &Store,
    reference: &Reference,
    manifest: &[u8],
    blobs: &[(Digest, u64)],
    options: &Options,
) -> Result<Pushed> {
    let session = Session::new(&reference.domain, &reference.path, options, "pull,push")?;
    let media_type = serde_json::from_slice::<serde_json::Value>(manifest)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
        .unwrap_or_else(|| image::OCI_MANIFEST.to_owned());
    let mut pushed = Pushed {
        manifest: Digest::of(manifest),
        uploaded: 0,
        mounted: 0,
        skipped: 0,
    };
    for (digest, size) in blobs {
        if exists(&session, digest)? {
            pushed.skipped += 1;
        } else if mount(store, &session, reference, digest)? {
            pushed.mounted += 1;
        } else {
            upload(store, &session, digest, *size)?;
            pushed.uploaded += 1;
        }
    }
    let tag = reference
        .tag
        .clone()
        .unwrap_or_else(|| pushed.manifest.to_string());
    let what = format!("manifest {tag}");
    let url = session.url(&format!("manifests/{tag}"));
    let body = manifest.to_vec();
    let response = session.send(&what, &|http| {
        http.put(&url)
            .header(CONTENT_TYPE, &media_type)
            .body(body.clone())
    })?;
    if !response.status().is_success() {
        return Err(session.status_error(&what, response));
    }
    Ok(pushed)
}

fn exists(session: &Session, digest: &Digest) -> Result<bool> {
    let what = format!("blob {digest}");
    let url = session.url(&format!("blobs/{digest}"));
    let response = session.send(&what, &|http| http.head(&url))?;
    match response.status() {
        s if s.is_success() => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(session.status_error(&what, response)),
    }
}

/// Other repositories of the same registry that kiln has images of with
/// this blob: the registry may link it instead of an upload.
fn mount_sources(store: &Store, reference: &Reference, digest: &Digest) -> Result<Vec<String>> {
    let (os, arch) = image::host_platform();
    let mut sources = Vec::new();
    for (name, record) in store.meta.images()? {
        let Ok(other) = Reference::parse(&name) else {
            continue;
        };
        if other.domain != reference.domain || other.path == reference.path {
            continue;
        }
        let Ok(img) = image::read_image(store, &record.target, (&os, &arch)) else {
            continue;
        };
        if img.config_digest == *digest || img.layers().iter().any(|(d, _, _)| d == digest) {
            sources.push(other.path);
        }
    }
    sources.dedup();
    Ok(sources)
}

/// A cross-repository mount; `false` when there is no source or the
/// registry declined (202: an upload session to use instead, which is
/// abandoned here; a new one is started by `upload`).
fn mount(store: &Store, session: &Session, reference: &Reference, digest: &Digest) -> Result<bool> {
    for from in mount_sources(store, reference, digest)? {
        let what = format!("mounting blob {digest} from {from}");
        let url = session.url("blobs/uploads/");
        let query = [("mount", digest.to_string()), ("from", from.clone())];
        let response = session.send(&what, &|http| {
            http.post(&url).query(&query).header(CONTENT_LENGTH, "0")
        })?;
        match response.status() {
            StatusCode::CREATED => return Ok(true),
            StatusCode::ACCEPTED => {}
            _ => return Err(session.status_error(&what, response)),
        }
    }
    Ok(false)
}

/// Starts an upload; the session's URL.
fn start_upload(session: &Session, what: &str) -> Result<String> {
    let url = session.url("blobs/uploads/");
    let response = session.send(what, &|http| http.post(&url).header(CONTENT_LENGTH, "0"))?;
    if response.status() != StatusCode::ACCEPTED {
        return Err(session.status_error(what, response));
    }
    location(session, what, &response)
}

fn location(
    session: &Session,
    what: &str,
    response: &reqwest::blocking::Response,
) -> Result<String> {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| session.absolute(l))
        .ok_or_else(|| session.failed(what, "no Location for the upload"))
}

/// `url` with `?digest=` (or `&digest=`) appended.
fn with_digest(url: &str, digest: &Digest) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

fn upload(store: &Store, session: &Session, digest: &Digest, size: u64) -> Result<()> {
    let what = format!("uploading blob {digest}");
    let mut location = start_upload(session, &what)?;
    let mut blob = store.content.open_blob(digest)?;
    let read_chunk = |blob: &mut std::fs::File, len: u64| -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        blob.take(len)
            .read_to_end(&mut buf)
            .map_err(|e| RegistryError::Failed {
                registry: session.registry.clone(),
                repository: session.repository.clone(),
                what: what.clone(),
                reason: format!("reading the blob: {e}"),
            })?;
        Ok(buf)
    };
    if size <= CHUNK {
        let body = read_chunk(&mut blob, size)?;
        let url = with_digest(&location, digest);
        let response = session.send(&what, &|http| {
            http.put(&url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body.clone())
        })?;
        if response.status() != StatusCode::CREATED {
            return Err(session.status_error(&what, response));
        }
        return Ok(());
    }
    let mut offset = 0u64;
    while offset < size {
        let chunk = read_chunk(&mut blob, CHUNK.min(size - offset))?;
        let end = offset + chunk.len() as u64 - 1;
        let url = location.clone();
        let response = session.send(&what, &|http| {
            http.patch(&url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_RANGE, format!("{offset}-{end}"))
                .body(chunk.clone())
        })?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(session.status_error(&what, response));
        }
        location = self::location(session, &what, &response)?;
        offset = end + 1;
    }
    let url = with_digest(&location, digest);
    let response = session.send(&what, &|http| http.put(&url).header(CONTENT_LENGTH, "0"))?;
    if response.status() != StatusCode::CREATED {
        return Err(session.status_error(&what, response));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_goes_into_the_upload_url() {
        let d = Digest::of(b"x");
        assert_eq!(
            with_digest("http://r/u/1", &d),
            format!("http://r/u/1?digest={d}")
        );
        assert_eq!(
            with_digest("http://r/u/1?_state=abc", &d),
            format!("http://r/u/1?_state=abc&digest={d}")
        );
    }
}
