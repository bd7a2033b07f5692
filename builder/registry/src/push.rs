//! `kiln push`: an image's blobs the registry lacks (asked with HEAD),
//! mounted from a sibling repository of the same registry when kiln knows
//! one that has the blob, else uploaded — in one request when small, in
//! chunks when large — and then the manifest under the tag.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use kiln_cache::{Digest, Store};
use kiln_frontend::reference::Reference;
use reqwest::StatusCode;
use reqwest::blocking::Body;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};

use super::Result;
use super::session::{Options, Session};
use kiln_image::compress::{self, LayerCompression, Recompress};
use kiln_image::image;

/// Blobs up to this size go in one PUT; larger ones in PATCH chunks of it
/// (registries and proxies in front of them limit a request's size).
/// `Options::chunk_size` overrides it.
const CHUNK: u64 = 128 << 20;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub manifest: Digest,
    pub uploaded: usize,
    pub mounted: usize,
    /// Blobs the registry had already.
    pub skipped: usize,
}

/// Pushes the image `name` names in the store to the registry in its name:
/// a multi-platform image as an index of its platforms' images.
///
/// Layers kept uncompressed (a build's own) leave gzip-compressed, as
/// `docker push` sends them; layers that came compressed go as they are.
/// After the push, `name` names the manifest (or index) the registry has.
pub fn push(store: &Store, name: &str, options: &Options) -> Result<Pushed> {
    let (full, image) = image::resolve(store, name)?;
    let target = match store.meta.image(&full)? {
        Some(record) => record.target,
        None => image.manifest_digest.clone(),
    };
    let pushed = push_compressing(
        store,
        &full,
        &target,
        LayerCompression::default(),
        Recompress::Uncompressed,
        options,
    )?;
    if pushed.manifest != target {
        let media_type = image::media_type_of(store, &pushed.manifest)?;
        image::tag(store, &full, &pushed.manifest, &media_type)?;
        store.meta.flush()?;
    }
    Ok(pushed)
}

/// Pushes what `digest` names — an image, or an index of several
/// platforms' — as `name`, layers compressed `how` as `which` says
/// (`compress::distributed`): a layer compressed before goes as it was
/// kept; one compressed now is uploaded while it is being compressed, and
/// its blob kept for the next push. An index's images go by digest, then
/// the index of them under the tag. [`Pushed::manifest`] is what the
/// registry has under the tag (in the store too).
pub fn push_compressing(
    store: &Store,
    name: &str,
    digest: &Digest,
    how: LayerCompression,
    which: Recompress,
    options: &Options,
) -> Result<Pushed> {
    let reference = Reference::parse(name)?;
    let session = Session::new(&reference.domain, &reference.path, options, "pull,push")?;
    let index = image::is_index(store, digest)?;
    let by_digest = Reference {
        tag: None,
        digest: None,
        ..reference.clone()
    };
    let each = if index { &by_digest } else { &reference };
    let mut total = Pushed {
        manifest: digest.clone(),
        uploaded: 0,
        mounted: 0,
        skipped: 0,
    };
    let top = compress::index_with(store, digest, how.media_types, &mut |image| {
        let pushed = push_one(store, &session, each, image, (how, which), options)?;
        total.uploaded += pushed.uploaded;
        total.mounted += pushed.mounted;
        total.skipped += pushed.skipped;
        Ok::<_, super::RegistryError>(pushed.manifest)
    })?;
    if index {
        let bytes = store.content.read(&top)?;
        send_all(store, &session, &reference, &bytes, &[], &[], options)?;
    }
    total.manifest = top;
    Ok(total)
}

/// Pushes one platform's `image` in `session` as `reference` (its tag, or
/// by digest when it has none).
fn push_one(
    store: &Store,
    session: &Session,
    reference: &Reference,
    image: &image::Image,
    (how, which): (LayerCompression, Recompress),
    options: &Options,
) -> Result<Pushed> {
    let mut sent = Vec::new();
    let manifest = compress::distributed_with(store, image, how, which, &mut |layer| {
        if let Some(kept) = compress::converted_before(store, layer, how)? {
            return Ok(kept);
        }
        let made = stream::upload_while_compressing(store, session, layer, how, options)?;
        sent.push(made.blob.clone());
        Ok::<_, super::RegistryError>(made)
    })?;
    let (bytes, blobs) = image_blobs(store, &manifest)?;
    send_all(store, session, reference, &bytes, &blobs, &sent, options)
}

/// Blobs with their sizes.
type Blobs = Vec<(Digest, u64)>;

/// The manifest's bytes and the blobs it names (config, layers).
fn image_blobs(store: &Store, manifest: &Digest) -> Result<(Vec<u8>, Blobs)> {
    let host = image::host_platform();
    let image = image::read_image(store, manifest, &host)?;
    let mut blobs = vec![(image.config_digest.clone(), image.manifest.config().size())];
    blobs.extend(image.layers().into_iter().map(|(d, _, size)| (d, size)));
    Ok((store.content.read(manifest)?, blobs))
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
    send_all(store, &session, reference, manifest, blobs, &[], options)
}

/// [`push_manifest`] in `session`; the blobs in `sent` were uploaded
/// already (while they were compressed).
fn send_all(
    store: &Store,
    session: &Session,
    reference: &Reference,
    manifest: &[u8],
    blobs: &[(Digest, u64)],
    sent: &[Digest],
    options: &Options,
) -> Result<Pushed> {
    let media_type = image::media_type_in(manifest);
    let mut pushed = Pushed {
        manifest: Digest::of(manifest),
        uploaded: 0,
        mounted: 0,
        skipped: 0,
    };
    for (digest, size) in blobs {
        if sent.contains(digest) {
            pushed.uploaded += 1;
        } else if exists(session, digest)? {
            pushed.skipped += 1;
        } else if mount(store, session, reference, digest)? {
            pushed.mounted += 1;
        } else {
            let chunk = if options.chunk_size == 0 {
                CHUNK
            } else {
                options.chunk_size
            };
            upload(store, session, digest, *size, chunk)?;
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
    let host = image::host_platform();
    let mut sources = Vec::new();
    for (name, record) in store.meta.images()? {
        let Ok(other) = Reference::parse(&name) else {
            continue;
        };
        if other.domain != reference.domain || other.path == reference.path {
            continue;
        }
        let Ok(img) = image::read_image(store, &record.target, &host) else {
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

/// A byte range of a blob, read with `pread`: a request body made afresh
/// for every attempt without buffering the chunk or sharing a file offset.
struct Section {
    file: Arc<std::fs::File>,
    pos: u64,
    end: u64,
}

impl Read for Section {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let n = buf.len().min(left);
        if n == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += read as u64;
        Ok(read)
    }
}

fn section(file: &Arc<std::fs::File>, start: u64, end: u64) -> Body {
    Body::sized(
        Section {
            file: Arc::clone(file),
            pos: start,
            end,
        },
        end - start,
    )
}

fn upload(store: &Store, session: &Session, digest: &Digest, size: u64, chunk: u64) -> Result<()> {
    let what = format!("uploading blob {digest}");
    let mut location = start_upload(session, &what)?;
    let file = Arc::new(kiln_image::blobs::open(store, digest)?);
    if size <= chunk {
        let url = with_digest(&location, digest);
        let response = session.send(&what, &|http| {
            http.put(&url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(section(&file, 0, size))
        })?;
        if response.status() != StatusCode::CREATED {
            return Err(session.status_error(&what, response));
        }
        return Ok(());
    }
    let mut offset = 0u64;
    while offset < size {
        let end = (offset + chunk).min(size);
        let url = location.clone();
        let response = session.send(&what, &|http| {
            http.patch(&url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_RANGE, format!("{offset}-{}", end - 1))
                .body(section(&file, offset, end))
        })?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(session.status_error(&what, response));
        }
        location = self::location(session, &what, &response)?;
        offset = end;
    }
    finish_upload(session, &what, &location, digest)
}

/// Ends a chunked upload: the blob's digest, for the registry to check.
fn finish_upload(session: &Session, what: &str, location: &str, digest: &Digest) -> Result<()> {
    let url = with_digest(location, digest);
    let response = session.send(what, &|http| http.put(&url).header(CONTENT_LENGTH, "0"))?;
    if response.status() != StatusCode::CREATED {
        return Err(session.status_error(what, response));
    }
    Ok(())
}

/// A layer uploaded while it is compressed: the encoder's output goes to
/// the store and, in pieces, to a thread that sends each as a PATCH of one
/// upload; the digest, known at the end, closes it.
mod stream {
    use std::io::{self, Write};
    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

    use kiln_cache::Store;
    use kiln_image::compress::{self, LayerCompression};
    use kiln_image::image::Layer;
    use reqwest::StatusCode;
    use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE};

    use super::{Options, Result, Session, finish_upload, location, start_upload};

    /// Pieces sent as they fill (a registry's chunk limit, when one is
    /// set, is `Options::chunk_size`).
    const PIECE: usize = 16 << 20;

    pub(super) fn upload_while_compressing(
        store: &Store,
        session: &Session,
        layer: &Layer,
        how: LayerCompression,
        options: &Options,
    ) -> Result<Layer> {
        let what = format!("uploading layer {} as it is compressed", layer.diff_id);
        let piece = match usize::try_from(options.chunk_size) {
            Ok(0) | Err(_) => PIECE,
            Ok(n) => n,
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(2);
        std::thread::scope(|scope| {
            let uploader = scope.spawn(|| send_pieces(session, &what, rx));
            let made = compress::convert(store, layer, how, Pieces::new(tx, piece))
                .map_err(super::super::RegistryError::from)
                .and_then(|(layer, pieces)| {
                    pieces.close().map_err(|e| session.failed(&what, e))?;
                    Ok(layer)
                });
            let uploaded = match uploader.join() {
                Ok(uploaded) => uploaded,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            match (made, uploaded) {
                (Ok(layer), Ok(location)) => {
                    finish_upload(session, &what, &location, &layer.blob)?;
                    Ok(layer)
                }
                // A failed upload ended the stream: it is the cause.
                (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
            }
        })
    }

    /// Sends each piece as the next PATCH of a new upload; its location
    /// once the pieces end.
    fn send_pieces(session: &Session, what: &str, pieces: Receiver<Vec<u8>>) -> Result<String> {
        let mut location = start_upload(session, what)?;
        let mut offset = 0u64;
        for piece in pieces {
            let end = offset + piece.len() as u64;
            let url = location.clone();
            let response = session.send(what, &|http| {
                http.patch(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{offset}-{}", end - 1))
                    .body(piece.clone())
            })?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(session.status_error(what, response));
            }
            location = self::location(session, what, &response)?;
            offset = end;
        }
        Ok(location)
    }

    /// Gathers writes into pieces of `size` and hands each to the sender.
    struct Pieces {
        tx: SyncSender<Vec<u8>>,
        buf: Vec<u8>,
        size: usize,
    }

    impl Pieces {
        fn new(tx: SyncSender<Vec<u8>>, size: usize) -> Self {
            Self {
                tx,
                buf: Vec::with_capacity(size),
                size,
            }
        }

        fn send(&mut self) -> io::Result<()> {
            let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(self.size));
            self.tx
                .send(piece)
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
        }

        /// Sends what is left; the upload's pieces end.
        fn close(mut self) -> io::Result<()> {
            if self.buf.is_empty() {
                Ok(())
            } else {
                self.send()
            }
        }
    }

    impl Write for Pieces {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let n = data.len().min(self.size - self.buf.len());
            self.buf.extend_from_slice(&data[..n]);
            if self.buf.len() == self.size {
                self.send()?;
            }
            Ok(n)
        }

        /// Pieces go when full or closed, not on a flush.
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunked upload to Debian's docker-registry, when it is installed.
    #[test]
    fn large_blobs_go_up_in_chunks() {
        use kiln_testing::{Need, REGISTRY, require, wait_until};
        if !require(&[Need::Registry]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until(
            std::time::Duration::from_secs(30),
            "the registry to listen",
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        let store = Store::open(&dir.path().join("store")).unwrap();
        // 2.5 chunks of noise, a config, a manifest naming both.
        let mut x = 1u64;
        let data: Vec<u8> = (0..(5 << 19))
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect();
        let layer = store.content.write_bytes(&data).unwrap();
        let config = store.content.write_bytes(b"{}").unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_MANIFEST,
            "config": {"mediaType": image::OCI_CONFIG, "digest": config, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": data.len()}],
        }))
        .unwrap();
        let reference = Reference::parse(&format!("127.0.0.1:{port}/chunks/blob:1")).unwrap();
        let options = Options {
            chunk_size: 1 << 20,
            ..Options::default()
        };
        let blobs = [(config.clone(), 2), (layer.clone(), data.len() as u64)];
        let pushed = push_manifest(&store, &reference, &manifest, &blobs, &options).unwrap();
        assert_eq!(pushed.uploaded, 2);
        let back = reqwest::blocking::get(format!(
            "http://127.0.0.1:{port}/v2/chunks/blob/blobs/{layer}"
        ))
        .unwrap()
        .bytes()
        .unwrap();
        assert_eq!(
            Digest::of(&back),
            layer,
            "the registry assembled the chunks"
        );

        // The same layer compressed on the way: uploaded in pieces while
        // gzip makes it, the gzip blob kept, the manifest the new one.
        let host = image::host_platform();
        let config = serde_json::json!({
            "architecture": host.architecture, "os": host.os,
            "rootfs": {"type": "layers", "diff_ids": [layer]},
        });
        let config = store
            .content
            .write_bytes(config.to_string().as_bytes())
            .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_MANIFEST,
            "config": {"mediaType": image::OCI_CONFIG, "digest": config, "size": store.content.size(&config).unwrap()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": data.len()}],
        }))
        .unwrap();
        let manifest = store.content.write_bytes(&manifest).unwrap();
        let name = format!("127.0.0.1:{port}/chunks/gz:1");
        let how = LayerCompression::default();
        let pushed =
            push_compressing(&store, &name, &manifest, how, Recompress::Every, &options).unwrap();
        assert_eq!((pushed.uploaded, pushed.skipped), (2, 0), "{pushed:?}");
        let gz: serde_json::Value =
            serde_json::from_slice(&store.content.read(&pushed.manifest).unwrap()).unwrap();
        let gz: Digest = gz["layers"][0]["digest"].as_str().unwrap().parse().unwrap();
        assert!(store.content.has(&gz), "the gzip blob is kept");
        let back =
            reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/chunks/gz/blobs/{gz}"))
                .unwrap()
                .bytes()
                .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(Digest::of(&back), gz, "the registry has the kept blob");
        let mut plain = Vec::new();
        kiln_worker::layer::compression::decompressed(&back[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(Digest::of(&plain), layer, "and it is the layer");
    }

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
