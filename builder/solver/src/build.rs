//! `kiln build`: Dockerfile → graph → solve → image in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kiln_cache::{Digest, Store};
use kiln_frontend::checks::{self, CheckError, CheckOptions, Report};
use kiln_frontend::convert::{self, BuildGraph, ConvertOptions, ImageResolver, ResolvedImage};
use kiln_frontend::reference::Reference;
use kiln_frontend::shell::Cancel;
use kiln_proto::ops::v1::Platform;
use kiln_worker::exec::Worker;
use kiln_worker::sandbox::spec::Network;
use thiserror::Error;

use crate::solve::{Event, Fs, SolveError, SolveOptions, Solver, SolverSetupError};
pub use kiln_image::compress::LayerCompression;
use kiln_image::image::config::{HistoryEntry, ImageConfiguration, RootFs, rfc3339};
use kiln_image::image::{self, ImageError, OCI_MANIFEST, canonical_json};
use kiln_registry::PullPolicy;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Frontend(#[from] kiln_frontend::Error),
    #[error(transparent)]
    Solve(#[from] SolveError),
    #[error(transparent)]
    SolverSetup(#[from] SolverSetupError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(".dockerignore: {0}")]
    Dockerignore(#[from] kiln_proto::dockerignore::DockerignoreError),
    #[error(transparent)]
    Layer(#[from] kiln_worker::layer::LayerError),
    #[error(transparent)]
    Content(#[from] kiln_cache::ContentError),
    #[error(transparent)]
    Meta(#[from] kiln_cache::MetaError),
    #[error("starting the conversion thread: {0}")]
    Thread(std::io::Error),
    /// `# check=error=true` and a violation, or invalid check options.
    #[error(transparent)]
    Check(#[from] CheckError),
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub dockerfile: String,
    pub context: PathBuf,
    pub dockerignore: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
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
    pub sandbox: kiln_proto::sandbox::SandboxOptions,
    /// The entitlements granted to this build (see [`crate::entitlements`]).
    pub entitlements: crate::entitlements::Entitlements,
    /// When base images are pulled (`--pull`).
    pub pull: PullPolicy,
    /// How registries are reached.
    pub registry: kiln_registry::Options,
    /// Cancels the build from another thread.
    pub cancellation: std::sync::Arc<crate::solve::Cancellation>,
    /// Steps running in this process, shared with concurrent builds (kilnd
    /// passes one for all its builds).
    pub in_flight: std::sync::Arc<crate::solve::InFlight>,
    /// Context digests kept between builds of an unchanged context (kilnd's
    /// sessions); empty for a one-off build.
    pub context_digests: std::sync::Arc<crate::solve::ContextDigests>,
    /// Where RUN steps may run besides here (kilnd's attached workers).
    pub farm: Option<std::sync::Arc<dyn crate::solve::Executor>>,
}

/// The image built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The image's manifest in the store (what its tags name).
    pub manifest: Digest,
    /// The image as it left the machine (pushed, an OCI output), its
    /// layers compressed as the build asked, when it did.
    pub distribution: Option<Digest>,
    pub config: Digest,
    /// Every step's cache key and layer, for `--cache-to`.
    pub steps: Vec<(String, kiln_image::image::Layer)>,
    /// The ids of the cache mounts this build's RUN steps name, for
    /// `--cache-to …,cache-mounts=true` (only these, never another build's).
    pub cache_mounts: std::collections::BTreeSet<String>,
}

impl Built {
    /// The manifest file outputs and pushes are made from: as it left the
    /// machine when it did, else as it is in the store.
    pub fn leaving(&self) -> &Digest {
        self.distribution.as_ref().unwrap_or(&self.manifest)
    }
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
    registry: &'a kiln_registry::Options,
    /// Names pulled by this build (`--pull=always` pulls each once).
    pulled: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl StoreImages<'_> {
    fn pull(&self, name: &str) -> Result<(), String> {
        tracing::info!("pulling {name}");
        kiln_registry::pull(self.store, name, self.registry).map_err(|e| e.to_string())?;
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

/// What the conversion thread found: the graph (or why there is none) and
/// the build checks' report.
struct Converted {
    graph: Result<BuildGraph, BuildError>,
    checks: Result<Report, CheckError>,
}

/// Parses, converts and checks the Dockerfile. The checks run after the
/// conversion, on the stages it converted (BuildKit's checks of what
/// instructions do run as it dispatches the stages the target needs), with
/// the same resolver (so a base image is looked up once); when there is no
/// graph they run on every stage, so that the warnings come with the error.
fn convert_and_check(
    req: &BuildRequest,
    options: &ConvertOptions<'_>,
    resolver: &dyn ImageResolver,
) -> Result<Converted, BuildError> {
    let ast = kiln_frontend::parser::parse(&req.dockerfile).map_err(kiln_frontend::Error::from)?;
    let graph = kiln_frontend::instructions::parse(&ast)
        .map_err(kiln_frontend::Error::from)
        .and_then(|instructions| Ok(convert::convert(&instructions, options)?))
        .map(|mut graph| {
            graph.warnings.splice(0..0, ast.warnings.iter().cloned());
            graph
        });
    let built: Option<BTreeSet<usize>> = graph
        .as_ref()
        .ok()
        .map(|g| g.stages.iter().map(|s| s.index).collect());
    let check_options = CheckOptions {
        build_args: &req.build_args,
        dockerignore: &req.dockerignore,
        stages: built.as_ref(),
        resolver: Some(resolver),
        build_platform: options.build_platform.clone(),
        target_platform: options.target_platform.clone(),
    };
    Ok(Converted {
        checks: checks::run(&ast, &check_options),
        graph: graph.map_err(BuildError::from),
    })
}

/// Converts the Dockerfile on a thread of its own with the stack
/// conversion needs at its bounds ([`convert::CONVERT_STACK`]; a build
/// thread of kilnd has 2 MiB), stopping when the build is cancelled.
fn convert_on_own_stack(store: &Store, req: &BuildRequest) -> Result<Converted, BuildError> {
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
        convert_and_check(req, &options, &resolver)
    };
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("convert".to_owned())
            .stack_size(convert::CONVERT_STACK)
            .spawn_scoped(scope, convert)
            .map_err(BuildError::Thread)?;
        match thread.join() {
            Ok(converted) => converted,
            // A panic stays this build's error (reported to its client).
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The graph to build, after the build checks: their violations go to
/// `progress` first, then a conversion error, then (with `# check=
/// error=true`) the checks' own failure, so that nothing is built.
fn checked_graph(
    store: &Store,
    req: &BuildRequest,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<BuildGraph, BuildError> {
    let Converted { graph, checks } = convert_on_own_stack(store, req)?;
    let report = checks?;
    for warning in &report.violations {
        progress(Event::Warning {
            warning: warning.clone(),
        });
    }
    let graph = graph?;
    match report.failure() {
        Some(failure) => Err(failure.into()),
        None => Ok(graph),
    }
}

/// What `kiln build --check` found: the violations of every stage, and
/// the error the build would stop at (an invalid Dockerfile, or `# check=
/// error=true` with a violation).
#[derive(Debug, Clone, Default)]
pub struct CheckResult {
    pub violations: Vec<kiln_frontend::checks::Violation>,
    pub error: Option<String>,
}

/// Runs the build checks on every stage and builds nothing (`kiln build
/// --check`, BuildKit's lint subrequest). Base images come from `store`
/// when given and never from a registry: a check fetches nothing; a stage
/// on an image not there is not checked for undefined variables.
pub fn check(store: Option<&Store>, req: &BuildRequest) -> Result<CheckResult, BuildError> {
    let stored = store.map(|store| StoreImages {
        store,
        pull: PullPolicy::Never,
        registry: &req.registry,
        pulled: Default::default(),
    });
    let resolver: &dyn ImageResolver = match &stored {
        Some(images) => images,
        None => &convert::NoImages,
    };
    let ast = kiln_frontend::parser::parse(&req.dockerfile).map_err(kiln_frontend::Error::from)?;
    let check_options = CheckOptions {
        resolver: Some(resolver),
        dockerignore: &req.dockerignore,
        ..CheckOptions::new(&req.build_args)
    };
    let report = checks::run(&ast, &check_options)?;
    let mut options = ConvertOptions::new(resolver);
    options.build_args = req.build_args.clone();
    options.target = req.target.clone();
    let converted = kiln_frontend::instructions::parse(&ast)
        .map_err(kiln_frontend::Error::from)
        .and_then(|instructions| Ok(convert::convert(&instructions, &options)?));
    let error = match converted {
        Err(e) => Some(e.to_string()),
        Ok(_) => report.failure().map(|f| f.to_string()),
    };
    Ok(CheckResult {
        violations: report.violations,
        error,
    })
}

/// What the solver made of the target stage, before its image is
/// written: the pipeline may change the config (`--label`) in between.
#[derive(Debug, Clone)]
pub struct Solved {
    /// The target's layers, base image's first.
    pub layers: Vec<kiln_image::image::Layer>,
    /// The target stage's image: config, history, platform, base.
    pub image: convert::StageImage,
    /// `SOURCE_DATE_EPOCH`, resolved: the image's created time.
    pub source_date_epoch: Option<u64>,
    /// Every step's cache key and layer, for `--cache-to`.
    pub steps: Vec<(String, kiln_image::image::Layer)>,
    /// The build's own cache mounts (see [`Built::cache_mounts`]).
    pub cache_mounts: BTreeSet<String>,
}

/// Converts, checks and solves `req`: the target's layers and image.
pub fn solve(
    store: &Store,
    worker: &Worker,
    req: &BuildRequest,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<Solved, BuildError> {
    let graph = checked_graph(store, req, progress)?;
    let target = graph.target_stage().clone();
    let cache_mounts = cache_mount_ids(&graph);
    let options = SolveOptions {
        context: req.context.clone(),
        dockerignore: req.dockerignore.clone(),
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
        // Kept uncompressed: compressed when they leave the machine.
        compression: LayerCompression::of(kiln_image::compress::Kind::Uncompressed),
        cancellation: std::sync::Arc::clone(&req.cancellation),
        in_flight: std::sync::Arc::clone(&req.in_flight),
        context_digests: std::sync::Arc::clone(&req.context_digests),
        farm: req.farm.as_deref(),
    };
    let solver = Solver::new(store, worker, options, progress)?;
    let Fs::Layers(layers) = solver.solve(&graph, target.root.as_deref())? else {
        unreachable!("a stage's root is a filesystem, never the context")
    };
    Ok(Solved {
        layers,
        image: target.image,
        source_date_epoch: graph.source_date_epoch,
        steps: solver.into_steps(),
        cache_mounts,
    })
}

/// Writes `solved`'s image: its config (history after the base image's),
/// the manifest of its layers as they are in the store (the steps'
/// uncompressed, the base image's as pulled), tagged with every name of
/// `tags`. Nothing is compressed here: see `kiln_image::compress`.
pub fn write_image(store: &Store, solved: Solved, tags: &[String]) -> Result<Built, BuildError> {
    let Solved {
        layers,
        image: target,
        source_date_epoch,
        steps,
        cache_mounts,
    } = solved;
    let created = rfc3339(source_date_epoch.unwrap_or_else(image::now));
    let mut history = match &target.base {
        Some(base) => {
            image::resolve(store, base.split('@').next().unwrap_or(base))?
                .1
                .config
                .history
        }
        None => Vec::new(),
    };
    history.extend(target.history.iter().map(|h| HistoryEntry {
        created: Some(created.clone()),
        created_by: Some(h.created_by.clone()),
        author: None,
        comment: Some("kiln.dockerfile.v0".to_owned()),
        empty_layer: h.empty_layer,
    }));
    let platform = &target.platform;
    let config = ImageConfiguration {
        created: Some(created),
        author: target.author.clone(),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: (!platform.variant.is_empty()).then(|| platform.variant.clone()),
        config: target.config.clone(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|l| l.diff_id.to_string()).collect(),
        },
        history,
        other: BTreeMap::new(),
    };
    let config_bytes = canonical_json(&config);
    // kiln (and registries) read a config back only up to this size: an
    // image whose config is larger would be tagged but unusable.
    if config_bytes.len() as u64 > image::MAX_METADATA {
        return Err(image::ImageError::TooLarge {
            what: "the image config (its ENV, LABEL and history)".into(),
            size: config_bytes.len() as u64,
            limit: image::MAX_METADATA,
        }
        .into());
    }
    let config_digest = store.content.write_bytes(&config_bytes)?;
    let manifest_layers: Vec<_> = layers
        .into_iter()
        .map(|l| (l.blob, l.media_type, l.size))
        .collect();
    let (manifest, _) = image::write_manifest(
        store,
        (&config_digest, config_bytes.len() as u64),
        &manifest_layers,
    )?;
    for tag in tags {
        image::tag(store, tag, &manifest, OCI_MANIFEST)?;
    }
    store.meta.flush()?;
    Ok(Built {
        manifest,
        distribution: None,
        config: config_digest,
        steps,
        cache_mounts,
    })
}
