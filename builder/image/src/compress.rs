//! Layer compression: how an image's layers leave this machine
//! (`-o …,compression=gzip|estargz|zstd|uncompressed[,compression-level=N]
//! [,force-compression=true]`), an
//! encoder that compresses as a layer is written, and conversion of a
//! stored layer to another compression.
//!
//! A build keeps its steps' layers uncompressed (as dockerd's BuildKit
//! does): nothing on the build path waits for a compressor, and an
//! uncompressed layer's blob digest is its diff ID, hashed once. A layer is
//! compressed when it first leaves the machine — a push, an OCI output, a
//! cache export ([`distributed`]) — and that blob is kept for the next
//! time ([`converted`]). The compressor and the tar stream are the same as
//! when layers were compressed at build time, so the bytes that leave are
//! the same too.

use std::io::{self, Write};

use kiln_cache::{Hasher, Store};
use kiln_worker::layer::compression::{Compression, decompressed};

use crate::image::{self, ImageError, Layer, MediaTypes};

/// Stores the directory `upper` (a step's changes) as a layer blob of
/// `store`, compressed `how`, in one pass: the tar is hashed (its diff ID)
/// on its way to the encoder. With `source_date_epoch`, mtimes are clamped
/// to it.
pub fn store_layer(
    store: &Store,
    upper: &std::path::Path,
    how: LayerCompression,
    source_date_epoch: Option<u64>,
) -> Result<Layer, ImageError> {
    let compressing = |source: io::Error| ImageError::Io {
        action: "compressing the layer of",
        path: upper.to_owned(),
        source,
    };
    if how.kind == Kind::Uncompressed {
        return store_uncompressed(store, upper, source_date_epoch);
    }
    let encoder = Encoder::new(how, store.content.writer()?).map_err(compressing)?;
    let hashing = kiln_worker::layer::diff_clamped(upper, Hashing::new(encoder), source_date_epoch)
        .map_err(|e| ImageError::Archive {
            path: upper.to_owned(),
            reason: e.to_string(),
        })?;
    let (encoder, diff_id) = hashing.finish();
    let (writer, estargz) = encoder.finish_layer().map_err(compressing)?;
    let blob = writer.commit(None)?;
    // An eStargz blob gunzips to the tar and its TOC: that is its diff ID.
    let (diff_id, annotations) = match estargz {
        Some(made) => (made.diff_id.clone(), made.annotations()),
        None => (diff_id, std::collections::BTreeMap::new()),
    };
    Ok(Layer {
        blob: blob.digest,
        diff_id,
        media_type: how.media_type().to_owned(),
        size: blob.size,
        annotations,
    })
}

/// An uncompressed layer: its blob is its tar, so the blob's digest (the
/// store hashes what it writes) is the diff ID; the stream is hashed once.
fn store_uncompressed(
    store: &Store,
    upper: &std::path::Path,
    source_date_epoch: Option<u64>,
) -> Result<Layer, ImageError> {
    let writer =
        kiln_worker::layer::diff_clamped(upper, store.content.writer()?, source_date_epoch)
            .map_err(|e| ImageError::Archive {
                path: upper.to_owned(),
                reason: e.to_string(),
            })?;
    let blob = writer.commit(None)?;
    Ok(Layer {
        diff_id: blob.digest.clone(),
        blob: blob.digest,
        media_type: LayerCompression::of(Kind::Uncompressed)
            .media_type()
            .to_owned(),
        size: blob.size,
        annotations: std::collections::BTreeMap::new(),
    })
}

/// Checks that the stored layer `blob` uncompresses to `diff_id`: the
/// whole stream hashed, as a snapshot would be. For layers kiln did not
/// make itself (loaded archives, a farm worker's) before they are used or
/// kept under that diff ID.
pub fn verify_layer(
    store: &Store,
    blob: &kiln_cache::Digest,
    diff_id: &kiln_cache::Digest,
) -> Result<(), ImageError> {
    let reading = |source: io::Error| ImageError::Io {
        action: "reading layer",
        path: store.content.path(blob),
        source,
    };
    let mut reader = decompressed(store.content.open_blob(blob)?).map_err(reading)?;
    let mut hashing = Hashing::new(io::sink());
    io::copy(&mut reader, &mut hashing).map_err(reading)?;
    let (_, actual) = hashing.finish();
    if actual == *diff_id {
        Ok(())
    } else {
        Err(ImageError::DiffId {
            layer: blob.clone(),
            claimed: diff_id.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// How a built image's layers leave: their compression and the media
/// types of what names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerCompression {
    pub kind: Kind,
    /// gzip and eStargz 1–9, zstd 1–22.
    pub level: u32,
    /// `force-compression=true`: every layer leaves in `kind`, a base
    /// image's too; without it only layers kept uncompressed (the build's
    /// own) are compressed, and a base image's layers leave as they came
    /// (BuildKit: "compression option isn't applied to layers that
    /// already exist").
    pub force: bool,
    /// `oci-mediatypes=`: the manifests (and layer descriptors) that leave;
    /// the store's blobs and their conversions are the same for both.
    pub media_types: MediaTypes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gzip,
    /// gzip in eStargz's layout ([`crate::estargz`]); OCI media types only.
    Estargz,
    Zstd,
    Uncompressed,
}

impl Default for LayerCompression {
    /// gzip, as BuildKit; level 6, BuildKit's (Go's default level).
    fn default() -> Self {
        Self::of(Kind::Gzip)
    }
}

impl LayerCompression {
    /// `kind` at its default level (gzip and eStargz 6, zstd 3).
    pub fn of(kind: Kind) -> Self {
        let level = match kind {
            Kind::Gzip | Kind::Estargz => 6,
            Kind::Zstd => 3,
            Kind::Uncompressed => 0,
        };
        Self {
            kind,
            level,
            force: false,
            media_types: MediaTypes::Oci,
        }
    }

    /// `gzip`, `estargz`, `zstd` or `uncompressed`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(Self::of(match name {
            "gzip" => Kind::Gzip,
            "estargz" => Kind::Estargz,
            "zstd" => Kind::Zstd,
            "uncompressed" => Kind::Uncompressed,
            _ => return None,
        }))
    }

    /// The name [`LayerCompression::parse`] reads.
    pub fn name(self) -> &'static str {
        match self.kind {
            Kind::Gzip => "gzip",
            Kind::Estargz => "estargz",
            Kind::Zstd => "zstd",
            Kind::Uncompressed => "uncompressed",
        }
    }

    /// Which layers leave compressed again: all of them with
    /// `force-compression`, else only those kept uncompressed.
    pub fn recompress(self) -> Recompress {
        if self.force {
            Recompress::Every
        } else {
            Recompress::Uncompressed
        }
    }

    /// Whether `layer` already is what this compression makes (an eStargz
    /// layer is a gzip one too; a gzip one is eStargz only if its
    /// descriptor names its TOC).
    pub fn holds(self, layer: &Layer) -> bool {
        // Docker's and OCI's gzip (or plain tar) types are the same bytes.
        let family = |m: &str| {
            MediaTypes::Docker
                .layer(m)
                .map_or(m.to_owned(), str::to_owned)
        };
        let same_type = family(&layer.media_type) == family(self.media_type());
        match self.kind {
            Kind::Estargz => {
                same_type
                    && layer
                        .annotations
                        .contains_key(crate::estargz::TOC_DIGEST_ANNOTATION)
            }
            _ => same_type,
        }
    }

    /// With `compression-level=N`, checked against the kind's range.
    pub fn with_level(self, level: u32) -> Option<Self> {
        let max = match self.kind {
            Kind::Gzip | Kind::Estargz => 9,
            Kind::Zstd => 22,
            Kind::Uncompressed => return Some(self),
        };
        (1..=max).contains(&level).then_some(Self { level, ..self })
    }

    /// What the `-o` values ask (`compression=`, `compression-level=`,
    /// `force-compression=`, `oci-mediatypes=`, in any of them); gzip at
    /// level 6 in OCI types when none does. zstd and eStargz in Docker
    /// types are refused: Docker has no zstd layer type (BuildKit forces
    /// OCI types for zstd instead), and eStargz's TOC digest is an
    /// annotation, which Docker's manifests lack (BuildKit refuses it).
    pub fn from_outputs(outputs: &[String]) -> Result<Self, String> {
        let mut compression = Self::default();
        let mut level = None;
        let mut force = false;
        let mut media_types = MediaTypes::Oci;
        for spec in outputs {
            for field in spec.split(',') {
                if let Some(value) = field.strip_prefix("compression=") {
                    compression = Self::parse(value).ok_or_else(|| {
                        format!(
                            "--output {spec}: compression is gzip, estargz, zstd or uncompressed"
                        )
                    })?;
                } else if let Some(value) = field.strip_prefix("force-compression=") {
                    force = match value {
                        "" | "true" => true,
                        "false" => false,
                        _ => {
                            return Err(format!(
                                "--output {spec}: force-compression is true or false"
                            ));
                        }
                    };
                } else if let Some(value) = field.strip_prefix("compression-level=") {
                    level = Some((spec, value));
                } else if let Some(value) = field.strip_prefix("oci-mediatypes=") {
                    media_types = MediaTypes::parse(value).ok_or_else(|| {
                        format!("--output {spec}: oci-mediatypes is true or false")
                    })?;
                }
            }
        }
        let compression = match level {
            None => compression,
            Some((spec, value)) => value
                .parse()
                .ok()
                .and_then(|l| compression.with_level(l))
                .ok_or_else(|| {
                    format!(
                        "--output {spec}: compression-level is 1-9 for gzip and estargz, 1-22 for zstd"
                    )
                })?,
        };
        Self {
            force,
            ..compression
        }
        .with_media_types(media_types)
    }

    /// In `media_types`; zstd has no Docker type, and eStargz needs OCI's.
    pub fn with_media_types(self, media_types: MediaTypes) -> Result<Self, String> {
        if self.kind == Kind::Zstd && media_types == MediaTypes::Docker {
            return Err("--output compression=zstd needs OCI media types: \
                 Docker's have no zstd layer (drop oci-mediatypes=false)"
                .to_owned());
        }
        if self.kind == Kind::Estargz && media_types == MediaTypes::Docker {
            return Err(
                "--output compression=estargz conflicts with oci-mediatypes=false: \
                 eStargz needs OCI media types (drop oci-mediatypes=false)"
                    .to_owned(),
            );
        }
        Ok(Self {
            media_types,
            ..self
        })
    }

    fn format(self) -> Compression {
        match self.kind {
            Kind::Gzip | Kind::Estargz => Compression::Gzip,
            Kind::Zstd => Compression::Zstd,
            Kind::Uncompressed => Compression::None,
        }
    }

    /// The OCI media type of a layer compressed so (as the store keeps
    /// it; [`MediaTypes::layer`] gives what a Docker manifest says).
    pub fn media_type(self) -> &'static str {
        self.format().layer_media_type()
    }
}

/// Compresses what is written into `W`. Gzip runs on every CPU: fixed-size
/// blocks, each with the previous block's tail as its dictionary (pigz's
/// scheme, by `gzp`), so the bytes do not depend on the number of threads;
/// mtime 0 and no name in the header.
pub enum Encoder<W: Write + Send + 'static> {
    Plain(W),
    Gzip(GzipWriter<W>),
    Estargz(Box<crate::estargz::Writer<W>>),
    Zstd(zstd::stream::Encoder<'static, W>),
}

impl<W: Write + Send + 'static> Encoder<W> {
    pub fn new(how: LayerCompression, out: W) -> io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self::with_threads(how, out, threads)
    }

    fn with_threads(how: LayerCompression, out: W, threads: usize) -> io::Result<Self> {
        Ok(match how.kind {
            Kind::Uncompressed => Self::Plain(out),
            Kind::Gzip => Self::Gzip(GzipWriter::new(
                gzp::par::compress::ParCompressBuilder::<gzp::deflate::Gzip>::new()
                    .num_threads(threads)
                    .map_err(gzp_err)?
                    .compression_level(gzp::Compression::new(how.level))
                    .from_writer(out),
            )),
            Kind::Estargz => Self::Estargz(Box::new(crate::estargz::Writer::new(out, how.level))),
            Kind::Zstd => Self::Zstd(zstd::stream::Encoder::new(
                out,
                i32::try_from(how.level).unwrap_or(3),
            )?),
        })
    }

    /// Writes what is buffered and the trailer; returns the writer.
    pub fn finish(self) -> io::Result<W> {
        Ok(self.finish_layer()?.0)
    }

    /// [`Encoder::finish`], and what an eStargz layer is besides its
    /// bytes (its TOC digest and diff ID).
    pub fn finish_layer(self) -> io::Result<(W, Option<crate::estargz::Made>)> {
        match self {
            Self::Plain(w) => Ok((w, None)),
            Self::Gzip(mut gz) => Ok((gz.finish()?, None)),
            Self::Estargz(e) => e.finish().map(|(w, made)| (w, Some(made))),
            Self::Zstd(z) => Ok((z.finish()?, None)),
        }
    }
}

/// gzp's writer, finished exactly once. After gzp returned an error its
/// channels are gone and any further call (`write`, `finish`, and so the
/// finish a drop would do) panics on them: a failed writer is only
/// dropped. One dropped on another error path is finished here, quietly
/// (gzp's own Drop would panic if that failed).
pub struct GzipWriter<W: Write + Send + 'static> {
    gz: Option<Box<gzp::par::compress::ParCompress<'static, gzp::deflate::Gzip, W>>>,
    failed: bool,
}

impl<W: Write + Send + 'static> GzipWriter<W> {
    fn new(gz: gzp::par::compress::ParCompress<'static, gzp::deflate::Gzip, W>) -> Self {
        Self {
            gz: Some(Box::new(gz)),
            failed: false,
        }
    }

    fn finish(&mut self) -> io::Result<W> {
        let mut gz = self.usable()?;
        let result = gzp::ZWriter::finish(&mut *gz).map_err(gzp_err);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// The writer, taken, unless finished or failed.
    fn usable(
        &mut self,
    ) -> io::Result<Box<gzp::par::compress::ParCompress<'static, gzp::deflate::Gzip, W>>> {
        match self.gz.take() {
            Some(gz) if !self.failed => Ok(gz),
            _ => Err(io::Error::other("gzip already finished or failed")),
        }
    }

    /// Runs `f` on the writer; an error marks it failed.
    fn with<T>(&mut self, f: impl FnOnce(&mut dyn Write) -> io::Result<T>) -> io::Result<T> {
        let gz = match self.gz.as_deref_mut() {
            Some(gz) if !self.failed => gz,
            _ => return Err(io::Error::other("gzip already finished or failed")),
        };
        let result = f(gz);
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

impl<W: Write + Send + 'static> Drop for GzipWriter<W> {
    fn drop(&mut self) {
        if self.gz.is_some() && !self.failed {
            let _ = self.finish();
        }
    }
}

impl<W: Write + Send + 'static> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(w) => w.write(buf),
            Self::Gzip(gz) => gz.with(|w| w.write(buf)),
            Self::Estargz(e) => e.write(buf),
            Self::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.flush(),
            Self::Gzip(gz) => gz.with(|w| w.flush()),
            Self::Estargz(e) => e.flush(),
            Self::Zstd(z) => z.flush(),
        }
    }
}

fn gzp_err(e: gzp::GzpError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Passes writes on, keeping a copy of the first error for whoever
/// started them: an encoder writing on threads of its own reports a
/// broken pipe, not why.
pub struct Witness<W> {
    inner: W,
    first: std::sync::Arc<std::sync::Mutex<Option<io::Error>>>,
}

/// The first error a [`Witness`] saw.
pub struct Failure(std::sync::Arc<std::sync::Mutex<Option<io::Error>>>);

impl Failure {
    /// The error, once.
    pub fn take(&self) -> Option<io::Error> {
        self.0.lock().ok()?.take()
    }
}

impl<W: Write> Witness<W> {
    pub fn new(inner: W) -> (Self, Failure) {
        let first = std::sync::Arc::default();
        let failure = Failure(std::sync::Arc::clone(&first));
        (Self { inner, first }, failure)
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    fn seen<T>(&self, result: io::Result<T>) -> io::Result<T> {
        result.inspect_err(|e| {
            if let Ok(mut first) = self.first.lock() {
                first.get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

impl<W: Write> Write for Witness<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.inner.write(buf);
        self.seen(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.inner.flush();
        self.seen(result)
    }
}

/// Passes writes on while hashing them: the diff ID of a layer written
/// compressed.
pub struct Hashing<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::default(),
        }
    }

    /// The writer and the digest of everything written.
    pub fn finish(self) -> (W, kiln_cache::Digest) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `layer` stored as `how` asks: itself when it already is, else converted
/// once per layer and compression and found again through the cache index.
pub fn converted(store: &Store, layer: &Layer, how: LayerCompression) -> Result<Layer, ImageError> {
    match converted_before(store, layer, how)? {
        Some(found) => Ok(found),
        None => Ok(convert(store, layer, how, io::sink())?.0),
    }
}

/// `layer` as `how` asks when that needs no work: itself, or its
/// conversion kept from before.
pub fn converted_before(
    store: &Store,
    layer: &Layer,
    how: LayerCompression,
) -> Result<Option<Layer>, ImageError> {
    if how.holds(layer) {
        return Ok(Some(layer.clone()));
    }
    let found = store
        .meta
        .cache_record(&conversion_key(layer, how))?
        .filter(|r| store.available(&r.blob))
        .map(|r| Layer {
            blob: r.blob,
            diff_id: r.diff_id,
            media_type: r.media_type,
            size: r.size,
            annotations: r.annotations,
        });
    Ok(found)
}

fn conversion_key(layer: &Layer, how: LayerCompression) -> String {
    format!("compressed:{:?}-{}:{}", how.kind, how.level, layer.diff_id)
}

/// Converts `layer` to `how` (from its snapshot when its blob is pending,
/// the uncompressed blob is then not written), keeps the new blob and
/// records the conversion; every byte of the new blob also goes to `also`
/// as it is made (a push streams it to the registry), which is given back.
pub fn convert<W: Write + Send + 'static>(
    store: &Store,
    layer: &Layer,
    how: LayerCompression,
    also: W,
) -> Result<(Layer, W), ImageError> {
    let io = |e: io::Error| ImageError::Io {
        action: "compressing",
        path: store.content.path(&layer.blob),
        source: e,
    };
    let (writer, failure) = Witness::new(Tee(store.content.writer()?, also));
    let mut encoder = Encoder::new(how, writer).map_err(io)?;
    let streamed = if crate::blobs::is_pending(store, &layer.blob) {
        crate::blobs::tar_into(store, &layer.blob, &mut encoder).map(drop)
    } else {
        decompressed(store.content.open_blob(&layer.blob)?)
            .and_then(|mut input| io::copy(&mut input, &mut encoder))
            .map(drop)
            .map_err(io)
    };
    let finished = streamed.and_then(|()| encoder.finish_layer().map_err(io));
    // gzip writes on threads of its own and says only that its pipe broke:
    // what the writers met (a full disk) is the cause.
    let (witness, estargz) = finished.map_err(|e| failure.take().map_or(e, io))?;
    let Tee(writer, mut also) = witness.into_inner();
    also.flush().map_err(io)?;
    let blob = writer.commit(None)?;
    // An eStargz blob gunzips to the layer's tar and then its TOC's: that
    // is its diff ID, which the image's config names.
    let (diff_id, annotations) = match estargz {
        Some(made) => (made.diff_id.clone(), made.annotations()),
        None => (layer.diff_id.clone(), std::collections::BTreeMap::new()),
    };
    let out = Layer {
        blob: blob.digest,
        diff_id,
        media_type: how.media_type().to_owned(),
        size: blob.size,
        annotations,
    };
    store.meta.put_cache_record(
        &conversion_key(layer, how),
        &kiln_cache::CacheRecord {
            blob: out.blob.clone(),
            diff_id: out.diff_id.clone(),
            media_type: out.media_type.clone(),
            size: out.size,
            created: image::now(),
            annotations: out.annotations.clone(),
        },
    )?;
    Ok((out, also))
}

/// Writes everything to both.
struct Tee<A, B>(A, B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// Which layers of an image are compressed again as it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recompress {
    /// Every layer not already in the compression asked for
    /// (`force-compression=true`).
    Every,
    /// Only uncompressed ones: a build's own layers (the store keeps them
    /// uncompressed), while what a registry gave stays as it came (a
    /// build's push and outputs by default, as BuildKit's; `kiln push`).
    Uncompressed,
}

/// The image `image` as it leaves this machine, its layers compressed
/// `how` as `which` says: the manifest's digest. The same manifest when no
/// layer changes; otherwise a new one, written as a build writes its own
/// (so a layer compressed now gives the manifest a build compressing at
/// build time gave).
pub fn distributed(
    store: &Store,
    image: &image::Image,
    how: LayerCompression,
    which: Recompress,
) -> Result<kiln_cache::Digest, ImageError> {
    distributed_with(store, image, how, which, &mut |layer| {
        converted(store, layer, how)
    })
}

/// [`distributed`] for what `digest` names: a manifest, or an index,
/// each of whose platforms' images leaves so, under an index of the
/// manifests that leave (the same index when none changes).
pub fn distributed_all(
    store: &Store,
    digest: &kiln_cache::Digest,
    how: LayerCompression,
    which: Recompress,
) -> Result<kiln_cache::Digest, ImageError> {
    index_with(store, digest, how.media_types, &mut |image| {
        distributed(store, image, how, which)
    })
}

/// The index (or single manifest) `digest` names again, each platform's
/// image turned into the manifest `leave` gives for it, the index written
/// in `types` (Docker's: a manifest list, whose entries `leave` must make
/// Docker manifests).
pub fn index_with<E: From<ImageError>>(
    store: &Store,
    digest: &kiln_cache::Digest,
    types: MediaTypes,
    leave: &mut dyn FnMut(&image::Image) -> Result<kiln_cache::Digest, E>,
) -> Result<kiln_cache::Digest, E> {
    if !image::is_index(store, digest)? {
        let image = image::read_image(store, digest, &image::host_platform())?;
        return leave(&image);
    }
    let mut entries = Vec::new();
    for present in image::index::present_images(store, digest)? {
        let Some(platform) = present.parsed() else {
            continue;
        };
        let image = present.image;
        let manifest = leave(&image)?;
        let size = store.content.size(&manifest).map_err(ImageError::from)?;
        entries.push((manifest, size, platform));
    }
    let (index, _) = image::write_index_as(store, types, &entries)?;
    // The index's own annotations and its entries' go along.
    Ok(image::annotations::carried(store, digest, &index)?)
}

/// [`distributed`], each layer that changes made by `convert`. In Docker
/// media types the manifest is always written anew (the store's is OCI);
/// its layers are the same blobs as the OCI one's. A layer whose diff ID
/// changes (eStargz: its blob gunzips to the tar and the TOC) gets the
/// image a config naming the new diff IDs.
pub fn distributed_with<E: From<ImageError>>(
    store: &Store,
    image: &image::Image,
    how: LayerCompression,
    which: Recompress,
    convert: &mut dyn FnMut(&Layer) -> Result<Layer, E>,
) -> Result<kiln_cache::Digest, E> {
    let layers = image.layer_pairs()?;
    let changes = |l: &Layer| {
        // A layer Docker's types cannot name leaves converted whatever
        // `which` says.
        !how.holds(l)
            && (which == Recompress::Every
                || !is_compressed(&l.media_type)
                || how.media_types.layer(&l.media_type).is_err())
    };
    let same_types = how.media_types == MediaTypes::Oci;
    if same_types && !layers.iter().any(changes) {
        return Ok(image.manifest_digest.clone());
    }
    let mut out = Vec::with_capacity(layers.len());
    for layer in &layers {
        let mut l = if changes(layer) {
            convert(layer)?
        } else {
            layer.clone()
        };
        if how.media_types == MediaTypes::Oci {
            // An OCI manifest names a Docker-typed layer by OCI's type for
            // the same bytes (BuildKit's `ConvertAllLayerMediaTypes`).
            l.media_type = image::media_types::oci_layer(&l.media_type).to_owned();
        }
        out.push(l);
    }
    let diff_ids: Vec<&kiln_cache::Digest> = out.iter().map(|l| &l.diff_id).collect();
    let config = if layers
        .iter()
        .map(|l| &l.diff_id)
        .eq(diff_ids.iter().copied())
    {
        (image.config_digest.clone(), image.manifest.config().size())
    } else {
        with_diff_ids(store, image, &diff_ids)?
    };
    let (manifest, _) =
        image::write_manifest_layers(store, how.media_types, (&config.0, config.1), &out)?;
    // The store's manifest's annotations go along (`image` has them read).
    let own: std::collections::BTreeMap<String, String> = image
        .manifest
        .annotations()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(image::annotations::annotate(store, &manifest, &own)?.0)
}

/// `image`'s config with `diff_ids` in its `rootfs`, everything else as it
/// was: its digest and size.
fn with_diff_ids(
    store: &Store,
    image: &image::Image,
    diff_ids: &[&kiln_cache::Digest],
) -> Result<(kiln_cache::Digest, u64), ImageError> {
    let bytes = store.content.read(&image.config_digest)?;
    let json = |source| ImageError::Json {
        what: "config",
        digest: image.config_digest.to_string(),
        source,
    };
    let mut config: serde_json::Value = serde_json::from_slice(&bytes).map_err(json)?;
    let ids: Vec<String> = diff_ids.iter().map(ToString::to_string).collect();
    config["rootfs"]["diff_ids"] = serde_json::json!(ids);
    let bytes = image::canonical_json(&config);
    let digest = store.content.write_bytes(&bytes)?;
    Ok((digest, bytes.len() as u64))
}

/// Whether a layer's media type says gzip or zstd.
pub fn is_compressed(media_type: &str) -> bool {
    media_type.contains("gzip") || media_type.contains("zstd")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk that fills after `room` bytes.
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room < buf.len() {
                return Err(io::Error::from_raw_os_error(28));
            }
            self.room -= buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_is_an_error_not_a_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..8 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        // Full at once, and full midway.
        for room in [0, 1 << 20] {
            let mut e =
                Encoder::with_threads(LayerCompression::default(), Full { room }, 2).unwrap();
            let written = e.write_all(&noise);
            let err = match written {
                Err(err) => err,
                Ok(()) => match e.finish() {
                    Err(err) => err,
                    Ok(_) => panic!("a full disk went unnoticed"),
                },
            };
            assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
        }
    }

    /// What kilnd does with a farm worker's layer (`solve/executor.rs`, `Solver::checked`):
    /// one whose bytes are not the diff ID it claims is refused, gzip or not.
    #[test]
    fn a_layer_that_is_not_its_claimed_diff_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        tar.append_data(&mut h, "made", &b"step\n"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let real = kiln_cache::Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let plain = store.content.write_bytes(&tar).unwrap();
        let gzipped = store.content.write_bytes(&gz.finish().unwrap()).unwrap();
        let claimed = kiln_cache::Digest::of(b"the layer the worker says it made");
        for blob in [&plain, &gzipped] {
            verify_layer(&store, blob, &real).unwrap();
            let e = verify_layer(&store, blob, &claimed).unwrap_err();
            assert!(
                matches!(&e, ImageError::DiffId { layer, claimed: c, actual }
                    if layer == blob && *c == claimed.to_string() && *actual == real.to_string()),
                "{e}"
            );
        }
    }

    #[test]
    fn gzip_bytes_do_not_depend_on_threads() {
        // Several blocks of mixed text and noise.
        let mut data = Vec::new();
        let mut x = 7u32;
        for i in 0..200_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let word = if i % 3 == 0 {
                x.to_le_bytes()
            } else {
                *b"kiln"
            };
            data.extend_from_slice(&word);
        }
        let gz = |threads| {
            let mut e =
                Encoder::with_threads(LayerCompression::default(), Vec::new(), threads).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let one = gz(1);
        assert_eq!(one, gz(2));
        assert_eq!(one, gz(4));
        let mut back = Vec::new();
        io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&one[..]), &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(&one[4..8], &[0, 0, 0, 0], "mtime 0");
    }

    #[test]
    fn outputs_name_the_compression() {
        let of = |specs: &[&str]| {
            LayerCompression::from_outputs(
                &specs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(of(&[]), Ok(LayerCompression::default()));
        let zstd = of(&["type=image,compression=zstd,compression-level=19"]).unwrap();
        assert_eq!((zstd.kind, zstd.level), (Kind::Zstd, 19));
        assert!(
            of(&["type=image,compression=brotli"])
                .unwrap_err()
                .contains("gzip, estargz, zstd")
        );
        assert!(
            of(&["type=image,compression-level=12"])
                .unwrap_err()
                .contains("1-9")
        );
        assert_eq!(of(&[]).unwrap().media_types, MediaTypes::Oci);
        let docker = of(&["type=image,push=true,oci-mediatypes=false"]).unwrap();
        assert_eq!(
            (docker.kind, docker.media_types),
            (Kind::Gzip, MediaTypes::Docker)
        );
        let plain = of(&["type=oci,compression=uncompressed,oci-mediatypes=false"]).unwrap();
        assert_eq!(plain.media_types, MediaTypes::Docker);
        assert!(
            of(&["type=image,compression=zstd,oci-mediatypes=false"])
                .unwrap_err()
                .contains("zstd needs OCI media types")
        );
        assert!(
            of(&["type=image,oci-mediatypes=maybe"])
                .unwrap_err()
                .contains("true or false")
        );
    }

    #[test]
    fn estargz_and_force_compression_as_buildkit_reads_them() {
        let of = |spec: &str| LayerCompression::from_outputs(&[spec.to_owned()]);
        let esgz = of("type=image,compression=estargz,compression-level=9").unwrap();
        assert_eq!(
            (esgz.kind, esgz.level, esgz.force),
            (Kind::Estargz, 9, false)
        );
        assert_eq!(
            esgz.media_type(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(esgz.recompress(), Recompress::Uncompressed);
        assert!(of("type=image,compression=estargz,compression-level=10").is_err());
        let forced = of("type=image,compression=zstd,force-compression=true").unwrap();
        assert_eq!(forced.recompress(), Recompress::Every);
        assert!(of("type=image,force-compression=").unwrap().force);
        assert!(!of("type=image,force-compression=false").unwrap().force);
        assert!(
            of("type=image,force-compression=maybe")
                .unwrap_err()
                .contains("true or false")
        );
        assert!(
            of("type=image,compression=estargz,oci-mediatypes=false")
                .unwrap_err()
                .contains("conflicts with oci-mediatypes=false")
        );
        // A gzip layer is eStargz only if its descriptor names its TOC; an
        // eStargz one is gzip.
        let mut layer = Layer {
            blob: kiln_cache::Digest::of(b"blob"),
            diff_id: kiln_cache::Digest::of(b"tar"),
            media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
            size: 1,
            annotations: std::collections::BTreeMap::new(),
        };
        assert!(!esgz.holds(&layer));
        assert!(LayerCompression::default().holds(&layer));
        layer.annotations.insert(
            crate::estargz::TOC_DIGEST_ANNOTATION.to_owned(),
            kiln_cache::Digest::of(b"toc").to_string(),
        );
        assert!(esgz.holds(&layer));
        assert!(!LayerCompression::of(Kind::Zstd).holds(&layer));
    }

    #[test]
    fn levels_are_checked() {
        let gzip = LayerCompression::parse("gzip").unwrap();
        assert_eq!(gzip.with_level(1).unwrap().level, 1);
        assert!(gzip.with_level(10).is_none() && gzip.with_level(0).is_none());
        assert_eq!(
            LayerCompression::parse("zstd")
                .unwrap()
                .with_level(19)
                .unwrap()
                .level,
            19
        );
        assert!(LayerCompression::parse("brotli").is_none());
    }
}
