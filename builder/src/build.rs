//! `kiln build`: Dockerfile → graph → solve → image in the store.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_cache::{Digest, Store};
use kiln_frontend::convert::{self, BuildGraph, ConvertOptions, ImageResolver, ResolvedImage};
use kiln_frontend::dockerignore::Matcher;
use kiln_frontend::reference::Reference;
use kiln_frontend::shell::Cancel;
use kiln_proto::ops::v1::Platform;
use kiln_worker::exec::Worker;
use kiln_worker::sandbox::spec::Network;
use kiln_worker::snapshot::Snapshots;
use thiserror::Error;

pub use crate::compress::LayerCompression;
use crate::compress::converted;
use crate::image::config::{HistoryEntry, ImageConfiguration, RootFs, rfc3339};
use crate::image::{self, ImageError, OCI_MANIFEST, canonical_json};
use crate::registry::{self, PullPolicy};
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
    #[error("starting the conversion thread: {0}")]
    Thread(std::io::Error),
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
    /// When the context last changed (a fetched Git or HTTP context), what
    /// `SOURCE_DATE_EPOCH=context` stands for; the epoch itself is a build
    /// arg, resolved by the frontend.
    pub context_time: Option<u64>,
    /// `--network`: the network of RUN steps that do not ask for one
    /// (`RUN --network=default`).
    pub network: Network,
    /// `--add-host`, `--ulimit`, `--shm-size`: every RUN step's sandbox
    /// (the frontend puts them in each exec op; the hostname is the
    /// `BUILDKIT_SANDBOX_HOSTNAME` build arg).
    pub sandbox: kiln_frontend::sandbox::SandboxOptions,
    /// The entitlements granted to this build (see [`crate::entitlements`]).
    pub entitlements: crate::entitlements::Entitlements,
    /// How the image's layers are compressed.
    pub compression: LayerCompression,
    /// When base images are pulled (`--pull`).
    pub pull: PullPolicy,
    /// How registries are reached.
    pub registry: registry::Options,
    /// Cancels the build from another thread.
    pub cancellation: std::sync::Arc<crate::solve::Cancellation>,
    /// Steps running in this process, shared with concurrent builds (kilnd
    /// passes one for all its builds).
    pub in_flight: std::sync::Arc<crate::solve::InFlight>,
    /// Context digests kept between builds of an unchanged context (kilnd's
    /// sessions); empty for a one-off build.
    pub context_digests: std::sync::Arc<crate::solve::ContextDigests>,
    /// Where RUN steps may run besides here (kilnd's attached workers).
    pub farm: Option<std::sync::Arc<crate::farm::Farm>>,
}

/// The image built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub manifest: Digest,
    pub config: Digest,
    /// Every step's cache key and layer, for `--cache-to`.
    pub steps: Vec<(String, crate::solve::Layer)>,
    /// The ids of the cache mounts this build's RUN steps name, for
    /// `--cache-to …,cache-mounts=true` (only these, never another build's).
    pub cache_mounts: std::collections::BTreeSet<String>,
}

/// The keys ([`kiln_worker::exec::cache_key`]) of the `RUN
/// --mount=type=cache` mounts in `graph`. Caches seeded from a stage are
/// not among them: they are only changes over that stage's layers.
fn cache_mount_ids(graph: &convert::BuildGraph) -> std::collections::BTreeSet<String> {
    use kiln_proto::ops::v1::{MountType, op};
    graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op.kind {
            Some(op::Kind::Exec(exec)) => Some(exec),
            _ => None,
        })
        .flat_map(|exec| &exec.mounts)
        .filter(|m| m.r#type == MountType::Cache as i32 && m.input < 0)
        .filter_map(|m| m.cache.as_ref())
        .map(|c| kiln_worker::exec::cache_key(&c.id, c.uid, c.gid, c.mode, None))
        .collect()
}

/// Base images come from kiln's store, pulled into it as `--pull` says.
struct StoreImages<'a> {
    store: &'a Store,
    pull: PullPolicy,
    registry: &'a registry::Options,
    /// Names pulled by this build (`--pull=always` pulls each once).
    pulled: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl StoreImages<'_> {
    fn pull(&self, name: &str) -> Result<(), String> {
        tracing::info!("pulling {name}");
        registry::pull(self.store, name, self.registry).map_err(|e| e.to_string())?;
        self.pulled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned());
        Ok(())
    }
}

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
        let already = self
            .pulled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&name);
        if self.pull == PullPolicy::Always && !already {
            self.pull(&name)?;
        }
        let found = match image::resolve(self.store, &name) {
            Err(ImageError::NotFound(_)) if self.pull == PullPolicy::Missing => {
                self.pull(&name)?;
                image::resolve(self.store, &name)
            }
            other => other,
        };
        match found {
            Ok((_, img)) => Ok(Some(ResolvedImage {
                digest: Some(img.manifest_digest.to_string()),
                config: img.config.config,
            })),
            Err(ImageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Converts the Dockerfile on a thread of its own with the stack
/// conversion needs at its bounds ([`convert::CONVERT_STACK`]; a build
/// thread of kilnd has 2 MiB), stopping when the build is cancelled.
fn convert_on_own_stack(store: &Store, req: &BuildRequest) -> Result<BuildGraph, BuildError> {
    let convert = || {
        let resolver = StoreImages {
            store,
            pull: req.pull,
            registry: &req.registry,
            pulled: Default::default(),
        };
        let cancelled = || req.cancellation.is_cancelled();
        let mut options = ConvertOptions::new(&resolver);
        options.build_args = req.build_args.clone();
        options.target = req.target.clone();
        options.dockerignore = req.dockerignore.clone();
        options.context_time = req.context_time;
        options.sandbox = req.sandbox.clone();
        options.cancel = Some(Cancel(&cancelled));
        convert::convert_dockerfile(&req.dockerfile, &options)
    };
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("convert".to_owned())
            .stack_size(convert::CONVERT_STACK)
            .spawn_scoped(scope, convert)
            .map_err(BuildError::Thread)?;
        match thread.join() {
            Ok(graph) => Ok(graph?),
            // A panic stays this build's error (reported to its client).
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Builds `req` and tags the result.
pub fn build(
    store: &Store,
    worker: &Worker,
    req: &BuildRequest,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<Built, BuildError> {
    let graph = convert_on_own_stack(store, req)?;
    let target = graph.target_stage().clone();
    let cache_mounts = cache_mount_ids(&graph);
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
        network: req.network,
        entitlements: req.entitlements.clone(),
        source_date_epoch: graph.source_date_epoch,
        progress: std::sync::Mutex::new(progress),
        context_view: Default::default(),
        context_layer: Default::default(),
        compression: req.compression,
        steps: Default::default(),
        cancellation: std::sync::Arc::clone(&req.cancellation),
        in_flight: std::sync::Arc::clone(&req.in_flight),
        context_digests: std::sync::Arc::clone(&req.context_digests),
        farm: req.farm.as_deref(),
    };
    let Fs::Layers(layers) = solver.solve(&graph, target.root.as_deref())? else {
        unreachable!("a stage's root is a filesystem, never the context")
    };

    let created = rfc3339(graph.source_date_epoch.unwrap_or_else(image::now));
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
        let l = converted(store, layer, req.compression)?;
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
        steps: solver
            .steps
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        cache_mounts,
    })
}
