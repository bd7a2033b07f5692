//! `kiln build`: Dockerfile → graph → solve → image in the store.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_cache::{Digest, Store};
use kiln_frontend::convert::{self, ConvertOptions, ImageResolver, ResolvedImage};
use kiln_frontend::dockerignore::Matcher;
use kiln_frontend::reference::Reference;
use kiln_proto::ops::v1::Platform;
use kiln_worker::exec::Worker;
use kiln_worker::snapshot::Snapshots;
use thiserror::Error;

use crate::image::config::{HistoryEntry, ImageConfiguration, RootFs, rfc3339};
use crate::image::{self, ImageError, OCI_MANIFEST, canonical_json};
use crate::solve::{Event, Fs, SolveError, Solver};

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Frontend(#[from] kiln_frontend::Error),
    #[error(transparent)]
    Solve(#[from] SolveError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(".dockerignore: {0}")]
    Dockerignore(#[from] kiln_frontend::dockerignore::DockerignoreError),
    #[error(transparent)]
    Layer(#[from] kiln_worker::layer::LayerError),
    #[error(transparent)]
    Content(#[from] kiln_cache::ContentError),
    #[error(transparent)]
    Meta(#[from] kiln_cache::MetaError),
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub dockerfile: String,
    pub context: PathBuf,
    pub dockerignore: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// Full names to tag.
    pub tags: Vec<String>,
    pub no_cache: bool,
    /// `--no-cache-filter`: stage names whose steps run again.
    pub no_cache_filter: Vec<String>,
    /// `SOURCE_DATE_EPOCH`: the image's created time.
    pub source_date_epoch: Option<u64>,
    /// `--network=none`: RUN steps that ask for no network get none.
    pub network_none: bool,
    /// How the image's layers are compressed.
    pub compression: LayerCompression,
}

/// Layer compression of a built image (`-o …,compression=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LayerCompression {
    #[default]
    Gzip,
    Zstd,
    Uncompressed,
}

impl LayerCompression {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gzip" => Some(Self::Gzip),
            "zstd" => Some(Self::Zstd),
            "uncompressed" => Some(Self::Uncompressed),
            _ => None,
        }
    }
}

/// The layer compressed as asked; compressed once per layer and kind, then
/// found again through the cache index.
fn compressed(
    store: &Store,
    layer: &crate::solve::Layer,
    how: LayerCompression,
) -> Result<crate::solve::Layer, BuildError> {
    use kiln_worker::layer::compression::Compression;
    use std::io::Write as _;
    let (kind, media) = match how {
        LayerCompression::Uncompressed => return Ok(layer.clone()),
        LayerCompression::Gzip => ("gzip", Compression::Gzip),
        LayerCompression::Zstd => ("zstd", Compression::Zstd),
    };
    if layer.media_type != Compression::None.layer_media_type() {
        return Ok(layer.clone());
    }
    let key = format!("compressed:{kind}:{}", layer.diff_id);
    if let Some(r) = store
        .meta
        .cache_record(&key)?
        .filter(|r| store.content.has(&r.blob))
    {
        return Ok(crate::solve::Layer {
            blob: r.blob,
            diff_id: r.diff_id,
            media_type: r.media_type,
            size: r.size,
        });
    }
    let io = |e: std::io::Error| ImageError::Io {
        action: "compressing",
        path: store.content.path(&layer.blob),
        source: e,
    };
    let mut input = store.content.open_blob(&layer.blob)?;
    let writer = store.content.writer()?;
    let writer = match how {
        LayerCompression::Gzip => {
            // No name and mtime 0 in the header: the same layer, the same bytes.
            let mut gz = flate2::GzBuilder::new().write(writer, flate2::Compression::default());
            std::io::copy(&mut input, &mut gz).map_err(io)?;
            gz.finish().map_err(io)?
        }
        _ => {
            let mut z = zstd::stream::Encoder::new(writer, 3).map_err(io)?;
            std::io::copy(&mut input, &mut z).map_err(io)?;
            let mut w = z.finish().map_err(io)?;
            w.flush().map_err(io)?;
            w
        }
    };
    let blob = writer.commit(None)?;
    let out = crate::solve::Layer {
        blob: blob.digest,
        diff_id: layer.diff_id.clone(),
        media_type: media.layer_media_type().to_owned(),
        size: blob.size,
    };
    let record = kiln_cache::CacheRecord {
        blob: out.blob.clone(),
        diff_id: out.diff_id.clone(),
        media_type: out.media_type.clone(),
        size: out.size,
        created: image::now(),
    };
    store.meta.put_cache_record(&key, &record)?;
    Ok(out)
}

/// The image built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub manifest: Digest,
    pub config: Digest,
}

/// Base images come from kiln's store.
struct StoreImages<'a>(&'a Store);

impl ImageResolver for StoreImages<'_> {
    fn resolve(
        &self,
        reference: &Reference,
        _platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String> {
        let name = Reference {
            digest: None,
            ..reference.clone()
        }
        .to_string();
        match image::resolve(self.0, &name) {
            Ok((_, img)) => Ok(Some(ResolvedImage {
                digest: Some(img.manifest_digest.to_string()),
                config: img.config.config,
            })),
            Err(ImageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Builds `req` and tags the result.
pub fn build(
    store: &Store,
    worker: &Worker,
    req: &BuildRequest,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<Built, BuildError> {
    let resolver = StoreImages(store);
    let mut options = ConvertOptions::new(&resolver);
    options.build_args = req.build_args.clone();
    options.target = req.target.clone();
    options.dockerignore = req.dockerignore.clone();
    let graph = convert::convert_dockerfile(&req.dockerfile, &options)?;
    let target = graph.target_stage().clone();
    let snapshots = Snapshots::open(store.root().join("snapshots"))?;
    // Unpacks a killed build left half done (the root's lock is ours).
    snapshots.recover()?;
    let solver = Solver {
        store,
        worker,
        snapshots,
        context: req.context.clone(),
        dockerignore: Matcher::new(&req.dockerignore)?,
        dockerignore_patterns: req.dockerignore.clone(),
        no_cache: req.no_cache,
        no_cache_stages: graph
            .stages
            .iter()
            .filter(|st| {
                st.name.as_ref().is_some_and(|n| {
                    req.no_cache_filter
                        .iter()
                        .any(|f| f.eq_ignore_ascii_case(n))
                })
            })
            .map(|st| st.index)
            .collect(),
        network_none: req.network_none,
        source_date_epoch: req.source_date_epoch,
        progress: std::sync::Mutex::new(progress),
        context_view: Default::default(),
    };
    let Fs::Layers(layers) = solver.solve(&graph, target.root.as_deref())? else {
        unreachable!("a stage's root is a filesystem, never the context")
    };

    let created = rfc3339(req.source_date_epoch.unwrap_or_else(image::now));
    let mut history = match &target.image.base {
        Some(base) => {
            image::resolve(store, base.split('@').next().unwrap_or(base))?
                .1
                .config
                .history
        }
        None => Vec::new(),
    };
    history.extend(target.image.history.iter().map(|h| HistoryEntry {
        created: Some(created.clone()),
        created_by: Some(h.created_by.clone()),
        author: None,
        comment: Some("kiln.dockerfile.v0".to_owned()),
        empty_layer: h.empty_layer,
    }));
    let platform = &target.image.platform;
    let config = ImageConfiguration {
        created: Some(created),
        author: target.image.author.clone(),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: (!platform.variant.is_empty()).then(|| platform.variant.clone()),
        config: target.image.config.clone(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|l| l.diff_id.to_string()).collect(),
        },
        history,
        other: BTreeMap::new(),
    };
    let config_bytes = canonical_json(&config);
    let config_digest = store.content.write_bytes(&config_bytes)?;
    let mut manifest_layers = Vec::with_capacity(layers.len());
    for layer in &layers {
        let l = compressed(store, layer, req.compression)?;
        manifest_layers.push((l.blob, l.media_type, l.size));
    }
    let (manifest, _) = image::write_manifest(
        store,
        (&config_digest, config_bytes.len() as u64),
        &manifest_layers,
    )?;
    for tag in &req.tags {
        image::tag(store, tag, &manifest, OCI_MANIFEST)?;
    }
    store.meta.flush()?;
    Ok(Built {
        manifest,
        config: config_digest,
    })
}
