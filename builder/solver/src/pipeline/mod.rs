//! One build, from a typed [`Request`] to a tagged image: cache import,
//! solve, image, cache export, outputs, push. The embedded `kiln build`
//! and kilnd's Build call both run [`run`]; what differs between them is
//! only the [`Env`] (kilnd shares its in-flight steps, context digests
//! and farm between builds, and leaves file outputs to its client).
//!
//! What happens besides the solver's steps reaches the user as a
//! [`Notice`] — embedded on standard error, through kilnd as a `Notice`
//! message of the Build call — so both say the same.

pub mod contexts;
pub mod metadata;
pub mod request;
pub mod wire;
mod wire_cache;

use std::path::PathBuf;
use std::sync::Arc;

use kiln_cache::{Digest, Store};
use kiln_worker::exec::Worker;
use kiln_worker::sandbox::Sandbox;
use thiserror::Error;

pub use self::contexts::NamedContext;
pub use self::metadata::Metadata;
pub use self::request::{CacheRef, Outputs, Request, RequestError};
use crate::build::{self, BuildError, BuildRequest, Built, NamedInput, Solved};
use crate::solve::{Cancellation, ContextDigests, Event, InFlight};
use kiln_image::image::ImageError;
use kiln_registry::RegistryError;
use kiln_registry::cache::Mode;

/// Why a build failed.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A file output (`-o type=docker|oci|tar|local`).
    #[error(transparent)]
    Output(#[from] ImageError),
    /// A cache export or a push.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// An `oci-layout://` context that could not be read.
    #[error("--build-context {name}=oci-layout://…: {source}")]
    Layout {
        name: String,
        path: PathBuf,
        source: Box<ImageError>,
    },
}

type Result<T> = std::result::Result<T, PipelineError>;

/// How much a [`Notice`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something done (a cache imported, an image pushed); hidden by `-q`.
    Info,
    /// Something that did not work and the build went on without.
    Warning,
}

/// What the pipeline says besides the solver's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub level: Level,
    /// As `kiln build` prints it (a warning after `warning: `).
    pub text: String,
}

/// What a build reports while it runs.
#[derive(Debug, Clone)]
pub enum Report {
    /// A solver event: a step started, logged, finished; a check warning.
    Step(Event),
    Notice(Notice),
}

/// What builds in one process share: one-off builds share nothing; kilnd
/// passes the same for all its builds.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    /// Steps running now: the same step runs once.
    pub in_flight: Arc<InFlight>,
    /// Context digests kept between builds of an unchanged context.
    pub context_digests: Arc<ContextDigests>,
    /// Where RUN steps may run besides here (kilnd's attached workers).
    pub farm: Option<Arc<dyn crate::solve::Executor>>,
}

/// Where a build runs: the store, its context directory, and what it
/// shares with other builds.
pub struct Env<'a> {
    pub store: &'a Store,
    /// The context directory, already canonical.
    pub context: PathBuf,
    pub shared: Shared,
    /// Cancels the build from another thread (kilnd: the client left).
    pub cancellation: Arc<Cancellation>,
    /// Whether the request's file outputs are written here (embedded);
    /// kilnd's client fetches them with Export instead.
    pub write_files: bool,
}

/// Runs the build `request` asks for in `env`, reporting as it goes.
pub fn run(
    request: &Request,
    env: &Env<'_>,
    report: &mut (dyn FnMut(Report) + Send),
) -> Result<Built> {
    request::check_outputs_for_platforms(request)?;
    import_caches(request, env, report);
    let mut solved = solve(request, env, report)?;
    inline_cache(request, &mut solved, report);
    let mut built = write_image(request, env, solved)?;
    export_caches(request, env, &mut built, report)?;
    built.distribution = distribution(request, env, &built)?;
    if env.write_files {
        for output in &request.files {
            kiln_image::output::export(
                env.store,
                built.leaving(),
                request.tags.first().map(String::as_str),
                output,
            )?;
        }
    }
    push(request, env, &mut built, report)?;
    Ok(built)
}

/// The image as it leaves the machine — its layers compressed as the
/// build asks, for every platform — for an OCI output. The store keeps a
/// build's layers uncompressed (`kiln_image::compress`); a push alone
/// makes this image itself, each layer uploaded while it is compressed.
fn distribution(request: &Request, env: &Env<'_>, built: &Built) -> Result<Option<Digest>> {
    if !request.oci_elsewhere && !request::has_oci(&request.files) {
        return Ok(None);
    }
    Ok(Some(kiln_image::compress::distributed_all(
        env.store,
        &built.manifest,
        request.compression,
        request.compression.recompress(),
    )?))
}

/// `--cache-from`: as BuildKit, a cache that cannot be imported is a
/// warning, and the build goes on without it. A `type=local` cache through
/// kilnd is the client's to send (its directory is on the client's
/// machine): kilnd never reads a path a client names.
fn import_caches(request: &Request, env: &Env<'_>, report: &mut (dyn FnMut(Report) + Send)) {
    for cache in &request.cache_imports {
        if is_local(cache) && !env.write_files {
            continue;
        }
        let name = cache.name();
        let notice = match kiln_registry::cache::import(env.store, cache, &request.registry) {
            Ok(i) => Notice {
                level: Level::Info,
                text: format!(
                    "importing cache from {name}: {} steps, {} cache mounts",
                    i.records, i.mounts
                ),
            },
            Err(e) => Notice {
                level: Level::Warning,
                text: format!("importing cache from {name}: {e}"),
            },
        };
        if notice.level == Level::Warning {
            tracing::warn!("{}", notice.text);
        }
        report(Report::Notice(notice));
    }
}

fn is_local(cache: &CacheRef) -> bool {
    matches!(cache.backend, kiln_registry::cache::Backend::Local { .. })
}

/// Whether the build exports its cache inline: `--cache-to type=inline`,
/// or `--build-arg BUILDKIT_INLINE_CACHE=1` (the same request, as buildx).
fn inline_export(request: &Request) -> Option<Mode> {
    let asked = request
        .cache_exports
        .iter()
        .find(|c| c.backend == kiln_registry::cache::Backend::Inline)
        .map(|c| c.mode);
    let by_arg = request
        .build_args
        .get("BUILDKIT_INLINE_CACHE")
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True" | "TRUE"));
    asked.or(by_arg.then_some(Mode::Min))
}

/// `type=inline`: each platform's image config gets the records of the
/// steps whose layers it holds. BuildKit exports inline cache in
/// `mode=min` only; kiln does the same and says so when `mode=max` was
/// asked.
fn inline_cache(request: &Request, solved: &mut Solved, report: &mut (dyn FnMut(Report) + Send)) {
    let Some(mode) = inline_export(request) else {
        return;
    };
    if mode == Mode::Max {
        report(Report::Notice(Notice {
            level: Level::Warning,
            text: "type=inline cache supports mode=min only (the image holds only its own \
                   stage's layers): exporting mode=min"
                .to_owned(),
        }));
    }
    for image in &mut solved.images {
        let value = kiln_registry::cache::inline::value(&image.layers, &solved.steps);
        image
            .config_extra
            .insert(kiln_registry::cache::inline::INLINE_KEY.to_owned(), value);
    }
}

/// The named contexts as the build reads them: each OCI layout's image
/// copied into the store (checked, untagged) and named by its digest,
/// which is then never pulled.
fn named_inputs(
    request: &Request,
    env: &Env<'_>,
) -> Result<(
    std::collections::BTreeMap<String, NamedInput>,
    std::collections::BTreeSet<String>,
)> {
    let mut inputs = std::collections::BTreeMap::new();
    let mut local_images = std::collections::BTreeSet::new();
    for (name, context) in &request.named_contexts {
        let input = match context {
            NamedContext::Dir { path, dockerignore } => NamedInput::Dir {
                path: path.clone(),
                dockerignore: dockerignore.clone(),
            },
            NamedContext::Image(reference) => NamedInput::Image(reference.clone()),
            NamedContext::Stage(stage) => NamedInput::Stage(stage.clone()),
            NamedContext::OciLayout { path, tag, digest } => {
                let failed = |source| PipelineError::Layout {
                    name: name.clone(),
                    path: path.clone(),
                    source: Box::new(source),
                };
                let selector = match (digest, tag) {
                    (Some(d), _) => kiln_image::archive::Selector::Digest(
                        d.parse()
                            .map_err(|_| failed(ImageError::NotFound(d.clone())))?,
                    ),
                    (None, tag) => kiln_image::archive::Selector::Tag(
                        tag.clone().unwrap_or_else(|| "latest".to_owned()),
                    ),
                };
                let target = kiln_image::archive::import_layout(env.store, path, &selector)
                    .map_err(failed)?;
                // BuildKit's reference for it: the context's name pinned.
                let named = kiln_frontend::reference::Reference::parse(name)
                    .map_err(|e| failed(ImageError::Name(e)))?
                    .with_digest(&target.to_string());
                local_images.insert(target.to_string());
                NamedInput::Image(named.to_string())
            }
        };
        inputs.insert(name.clone(), input);
    }
    Ok((inputs, local_images))
}

/// The solver's request: the typed request and the environment.
fn build_request(request: &Request, env: &Env<'_>) -> Result<BuildRequest> {
    let (named_contexts, local_images) = named_inputs(request, env)?;
    Ok(BuildRequest {
        dockerfile: request.dockerfile.clone(),
        context: env.context.clone(),
        dockerignore: request.dockerignore.clone(),
        build_args: request.build_args.clone(),
        target: request.target.clone(),
        platforms: request.platforms.clone(),
        no_cache: request.no_cache,
        no_cache_filter: request.no_cache_filter.clone(),
        context_time: request.context_time,
        network: request.network,
        sandbox: request.sandbox.clone(),
        entitlements: request.entitlements.clone(),
        pull: request.pull,
        registry: request.registry.clone(),
        cancellation: Arc::clone(&env.cancellation),
        in_flight: Arc::clone(&env.shared.in_flight),
        context_digests: Arc::clone(&env.shared.context_digests),
        farm: env.shared.farm.clone(),
        named_contexts,
        local_images,
    })
}

/// Resolves the base images, converts, checks and runs the steps.
fn solve(
    request: &Request,
    env: &Env<'_>,
    report: &mut (dyn FnMut(Report) + Send),
) -> Result<Solved> {
    let mut worker = Worker::new(env.store.root(), Sandbox::beside_current_exe());
    for (id, value) in &request.secrets {
        worker = worker.with_secret(id, value.clone());
    }
    for (id, socket) in &request.ssh {
        worker = worker.with_ssh_agent(id, socket.clone());
    }
    let mut progress = |event: Event| report(Report::Step(event));
    Ok(build::solve(
        env.store,
        &worker,
        &build_request(request, env)?,
        &mut progress,
    )?)
}

/// The image: `--label`s over the Dockerfile's (BuildKit sets its
/// `label:KEY` frontend attributes on the target's config last), then
/// config, layers and manifest, tagged.
fn write_image(request: &Request, env: &Env<'_>, mut solved: Solved) -> Result<Built> {
    if !request.labels.is_empty() {
        for solved in &mut solved.images {
            let labels = solved
                .image
                .config
                .labels
                .get_or_insert_with(Default::default);
            labels.extend(request.labels.clone());
        }
    }
    Ok(build::write_image(
        env.store,
        solved,
        &request.tags,
        &request.annotations,
    )?)
}

/// `--cache-to`: the steps `mode=` asks for (and, when asked, the
/// build's cache mounts) to each cache; `type=inline` went with the image.
/// A failed export fails the build, unless `ignore-error=true` makes it a
/// warning (as BuildKit). A `type=local` cache through kilnd is made in
/// the store and its manifest left in [`Built::local_caches`] for the
/// client to fetch into its directory.
fn export_caches(
    request: &Request,
    env: &Env<'_>,
    built: &mut Built,
    report: &mut (dyn FnMut(Report) + Send),
) -> Result<()> {
    for cache in &request.cache_exports {
        if cache.backend == kiln_registry::cache::Backend::Inline {
            continue;
        }
        let name = cache.name();
        let steps = kiln_registry::cache::steps_for(cache.mode, &built.steps, &built.image_layers);
        let mounts = cache.cache_mounts.then_some(&built.cache_mounts);
        let how = cache.compression.unwrap_or(request.compression);
        let for_client = is_local(cache) && !env.write_files;
        let done = if for_client {
            kiln_registry::cache::build_artifact(env.store, &steps, mounts, how).map(|a| {
                built.local_caches.push(Some(a.manifest_digest));
                None
            })
        } else {
            kiln_registry::cache::export(env.store, cache, &steps, mounts, how, &request.registry)
                .map(Some)
        };
        let text = match done {
            Ok(None) => continue,
            Ok(Some(exported)) => format!(
                "exporting cache to {name} done ({} steps; {} uploaded, {} already there)",
                steps.len(),
                exported.uploaded,
                exported.skipped
            ),
            Err(e) if cache.ignore_error => {
                if for_client {
                    // Its place in the client's list stays, empty.
                    built.local_caches.push(None);
                }
                let text = format!("exporting cache to {name}: {e} (ignore-error=true)");
                tracing::warn!("{text}");
                report(Report::Notice(Notice {
                    level: Level::Warning,
                    text,
                }));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        report(Report::Notice(Notice {
            level: Level::Info,
            text,
        }));
    }
    Ok(())
}

/// `--output type=image,push=true`: every tag to its registry. The first
/// push makes the image as it leaves when no output did
/// (`Built::distribution`).
fn push(
    request: &Request,
    env: &Env<'_>,
    built: &mut Built,
    report: &mut (dyn FnMut(Report) + Send),
) -> Result<()> {
    if !request.push {
        return Ok(());
    }
    for tag in &request.tags {
        // What left before (an OCI output, the first tag) goes as it is:
        // its layers are compressed as asked, so none is made again.
        let pushed = kiln_registry::push_compressing(
            env.store,
            tag,
            built.leaving(),
            request.compression,
            request.compression.recompress(),
            &request.registry,
        )?;
        built.distribution = Some(pushed.manifest.clone());
        // The tag names what the registry has, as after `kiln push` (in
        // Docker media types with `oci-mediatypes=false`).
        let media_type = kiln_image::image::media_type_of(env.store, &pushed.manifest)?;
        kiln_image::image::tag(env.store, tag, &pushed.manifest, &media_type)?;
        env.store.meta.flush().map_err(ImageError::from)?;
        report(Report::Notice(Notice {
            level: Level::Info,
            text: format!(
                "pushing {tag} done ({} uploaded, {} mounted, {} already there)",
                pushed.uploaded, pushed.mounted, pushed.skipped
            ),
        }));
    }
    Ok(())
}
