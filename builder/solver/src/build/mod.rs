//! `kiln build`: Dockerfile → graph (one per target platform, `graphs`)
//! → solve → image in the store (`write`: a manifest per platform, and an
//! index of them for several).

mod graphs;
mod write;

pub use self::graphs::{CheckResult, check};
pub use self::write::write_image;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kiln_cache::Digest;
use kiln_cache::Store;
use kiln_frontend::checks::CheckError;
use kiln_frontend::convert::{self, BuildGraph};
use kiln_proto::ops::v1::Platform;
use kiln_worker::exec::Worker;
use kiln_worker::sandbox::spec::Network;
use thiserror::Error;

use crate::solve::{Event, Fs, SolveError, SolveOptions, Solver, SolverSetupError};
pub use kiln_image::compress::LayerCompression;
use kiln_image::image::{self, ImageError};
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
    /// `--platform`: the platforms to build for, in order; none: the host's.
    pub platforms: Vec<Platform>,
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
    /// `--build-context`s, by name (the frontend's key), made ready.
    pub named_contexts: BTreeMap<String, NamedInput>,
    /// Manifests (and indexes) of images only this store has, which a
    /// `name@digest` reference pins and no registry is asked for: the
    /// images of `oci-layout://` contexts.
    pub local_images: BTreeSet<String>,
}

/// A named context as a build reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedInput {
    /// A directory (its own `.dockerignore` patterns): read as the build
    /// context is.
    Dir {
        path: PathBuf,
        dockerignore: Vec<String>,
    },
    /// An image reference, resolved as a `FROM` image (pulled as `--pull`
    /// says, unless it is one of [`BuildRequest::local_images`]).
    Image(String),
    /// `target:STAGE`: a stage of the Dockerfile under the name.
    Stage(String),
}

impl BuildRequest {
    /// The named contexts as the frontend takes them.
    fn frontend_contexts(&self) -> BTreeMap<String, convert::NamedContext> {
        self.named_contexts
            .iter()
            .map(|(name, input)| {
                let context = match input {
                    NamedInput::Dir { dockerignore, .. } => convert::NamedContext::Local {
                        exclude_patterns: dockerignore.clone(),
                    },
                    NamedInput::Image(reference) => convert::NamedContext::Image(reference.clone()),
                    NamedInput::Stage(stage) => convert::NamedContext::Stage(stage.clone()),
                };
                (name.clone(), context)
            })
            .collect()
    }

    /// The named directories as the solver reads them.
    fn named_dirs(&self) -> BTreeMap<String, crate::solve::NamedDir> {
        self.named_contexts
            .iter()
            .filter_map(|(name, input)| match input {
                NamedInput::Dir { path, dockerignore } => Some((
                    name.clone(),
                    crate::solve::NamedDir {
                        dir: path.clone(),
                        dockerignore: dockerignore.clone(),
                    },
                )),
                NamedInput::Image(_) | NamedInput::Stage(_) => None,
            })
            .collect()
    }
}

/// The image built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The image's manifest in the store (what its tags name): for several
    /// platforms, the index of theirs.
    pub manifest: Digest,
    /// The image as it left the machine (pushed, an OCI output), its
    /// layers compressed as the build asked, when it did.
    pub distribution: Option<Digest>,
    /// The image ID: its config's digest, or for several platforms the
    /// index's (as docker's containerd image store shows an index).
    pub id: Digest,
    /// Every step's cache key and layer, for `--cache-to`.
    pub steps: Vec<(String, kiln_image::image::Layer)>,
    /// The ids of the cache mounts this build's RUN steps name, for
    /// `--cache-to …,cache-mounts=true` (only these, never another build's).
    pub cache_mounts: std::collections::BTreeSet<String>,
    /// The diff IDs of the built image's layers (every platform's): the
    /// steps a `mode=min` cache export holds.
    pub image_layers: std::collections::BTreeSet<Digest>,
    /// Through kilnd: the manifests of the `type=local` cache exports, in
    /// the request's order, made in the store for the client to fetch
    /// (`None`: one that failed with `ignore-error=true`).
    pub local_caches: Vec<Option<Digest>>,
}

impl BuildRequest {
    /// The platforms to build for: those asked, or the host's.
    pub fn targets(&self) -> Vec<Platform> {
        if self.platforms.is_empty() {
            vec![image::host_platform()]
        } else {
            self.platforms.clone()
        }
    }
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

/// What the solver made of the target stage for one platform, before
/// its image is written: the pipeline may change the config (`--label`)
/// in between.
#[derive(Debug, Clone)]
pub struct SolvedImage {
    /// The target's layers, base image's first.
    pub layers: Vec<kiln_image::image::Layer>,
    /// The target stage's image: config, history, platform, base.
    pub image: convert::StageImage,
    /// Top-level config fields besides the image's own (the inline
    /// cache: `kiln_registry::cache::inline`).
    pub config_extra: BTreeMap<String, serde_json::Value>,
}

/// What the solver made: an image per target platform, in the order asked.
#[derive(Debug, Clone)]
pub struct Solved {
    pub images: Vec<SolvedImage>,
    /// `SOURCE_DATE_EPOCH`, resolved: the images' created time.
    pub source_date_epoch: Option<u64>,
    /// Every step's cache key and layer, for `--cache-to`.
    pub steps: Vec<(String, kiln_image::image::Layer)>,
    /// The build's own cache mounts (see [`Built::cache_mounts`]).
    pub cache_mounts: BTreeSet<String>,
}

/// Converts, checks and solves `req`: the target's layers and image for
/// every platform. The platforms' graphs are solved as one, so an op that
/// is the same for several (a `FROM --platform=$BUILDPLATFORM` stage, the
/// context) runs once.
pub fn solve(
    store: &Store,
    worker: &Worker,
    req: &BuildRequest,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<Solved, BuildError> {
    let graphs = graphs::checked_graphs(store, req, progress)?;
    let graph = convert::merged(&graphs);
    let cache_mounts = cache_mount_ids(&graph);
    let options = SolveOptions {
        context: req.context.clone(),
        dockerignore: req.dockerignore.clone(),
        named_dirs: req.named_dirs(),
        no_cache: req.no_cache,
        no_cache_stages: no_cache_stages(&graphs, &req.no_cache_filter),
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
    let roots: Vec<Option<&str>> = graphs
        .iter()
        .map(|g| g.target_stage().root.as_deref())
        .collect();
    let solved = solver.solve_roots(&graph, &roots)?;
    let images = graphs
        .iter()
        .zip(solved)
        .map(|(g, fs)| {
            let Fs::Layers(layers) = fs else {
                unreachable!("a stage's root is a filesystem, never the context")
            };
            SolvedImage {
                layers,
                image: g.target_stage().image.clone(),
                config_extra: BTreeMap::new(),
            }
        })
        .collect();
    Ok(Solved {
        images,
        source_date_epoch: graph.source_date_epoch,
        steps: solver.into_steps(),
        cache_mounts,
    })
}

/// `--no-cache-filter`: the indexes of the stages named, in any
/// platform's graph (`FROM base-$TARGETARCH` converts other stages).
fn no_cache_stages(graphs: &[BuildGraph], filter: &[String]) -> BTreeSet<usize> {
    graphs
        .iter()
        .flat_map(|g| &g.stages)
        .filter(|st| {
            st.name
                .as_ref()
                .is_some_and(|n| filter.iter().any(|f| f.eq_ignore_ascii_case(n)))
        })
        .map(|st| st.index)
        .collect()
}
