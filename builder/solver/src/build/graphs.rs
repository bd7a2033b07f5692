//! The Dockerfile converted for each target platform, base images
//! resolved from the store (pulled as `--pull` says), and the build checks.

use std::collections::BTreeSet;

use kiln_cache::Store;
use kiln_frontend::checks::{self, CheckError, CheckOptions, Report, Violation};
use kiln_frontend::convert::{self, BuildGraph, ConvertOptions, ImageResolver, ResolvedImage};
use kiln_frontend::platform;
use kiln_frontend::reference::Reference;
use kiln_frontend::shell::Cancel;
use kiln_image::image::{self, ImageError, Platform};
use kiln_registry::PullPolicy;

use super::{BuildError, BuildRequest};
use crate::solve::Event;

/// Base images come from kiln's store, pulled into it as `--pull` says.
struct StoreImages<'a> {
    store: &'a Store,
    pull: PullPolicy,
    registry: &'a kiln_registry::Options,
    /// Names pulled by this build, with the platform (`--pull=always`
    /// pulls each once).
    pulled: std::sync::Mutex<BTreeSet<String>>,
    /// Digests of images only the store has (`oci-layout://` contexts):
    /// read by digest, never pulled.
    local: &'a BTreeSet<String>,
}

impl StoreImages<'_> {
    /// Pulls `name` for `platform` once per build.
    fn pull(&self, name: &str, platform: &Platform) -> Result<(), String> {
        let key = format!("{name} {}", platform::format(platform));
        tracing::info!("pulling {key}");
        let options = kiln_registry::Options {
            platform: Some(platform.clone()),
            ..self.registry.clone()
        };
        kiln_registry::pull(self.store, name, &options).map_err(|e| e.to_string())?;
        self.lock().insert(key);
        Ok(())
    }

    fn pulled(&self, name: &str, platform: &Platform) -> bool {
        let key = format!("{name} {}", platform::format(platform));
        self.lock().contains(&key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.pulled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ImageResolver for StoreImages<'_> {
    /// The image `reference` tags for `platform`: a multi-platform image's
    /// entry for it, pinned by its manifest's digest.
    fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String> {
        if let Some(digest) = reference
            .digest
            .as_ref()
            .filter(|d| self.local.contains(*d))
        {
            let pinned = digest.parse().map_err(|_| format!("digest {digest}"))?;
            let img =
                image::read_image(self.store, &pinned, platform).map_err(|e| e.to_string())?;
            return Ok(Some(ResolvedImage {
                digest: Some(img.manifest_digest.to_string()),
                config: img.config.config,
            }));
        }
        let name = Reference {
            digest: None,
            ..reference.clone()
        }
        .to_string();
        if self.pull == PullPolicy::Always && !self.pulled(&name, platform) {
            self.pull(&name, platform)?;
        }
        let found = match image::resolve_for(self.store, &name, platform) {
            Err(
                ImageError::NotFound(_)
                | ImageError::NoPlatform { .. }
                | ImageError::NotPulled { .. },
            ) if self.pull == PullPolicy::Missing => {
                self.pull(&name, platform)?;
                image::resolve_for(self.store, &name, platform)
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

/// Converts the Dockerfile for every target platform on a thread of its
/// own with the stack conversion needs at its bounds
/// ([`convert::CONVERT_STACK`]; a build thread of kilnd has 2 MiB),
/// stopping when the build is cancelled. One resolver serves them all, so
/// a base image is pulled once per platform.
fn convert_on_own_stack(store: &Store, req: &BuildRequest) -> Result<Vec<Converted>, BuildError> {
    let targets = req.targets();
    let convert = || {
        let resolver = StoreImages {
            store,
            pull: req.pull,
            registry: &req.registry,
            pulled: Default::default(),
            local: &req.local_images,
        };
        let cancelled = || req.cancellation.is_cancelled();
        let mut options = ConvertOptions::new(&resolver);
        options.build_args = req.build_args.clone();
        options.target = req.target.clone();
        options.dockerignore = req.dockerignore.clone();
        options.context_time = req.context_time;
        options.sandbox = req.sandbox.clone();
        options.cancel = Some(Cancel(&cancelled));
        options.name_platforms = targets.len() > 1;
        options.named_contexts = req.frontend_contexts();
        targets
            .iter()
            .map(|target| {
                options.target_platform = target.clone();
                convert_and_check(req, &options, &resolver)
            })
            .collect()
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

/// The graph to build for each target platform, after the build checks:
/// their violations (each once, whichever platforms it holds for) go to
/// `progress` first, then a conversion error, then (with `# check=
/// error=true`) the checks' own failure, so that nothing is built.
pub(super) fn checked_graphs(
    store: &Store,
    req: &BuildRequest,
    progress: &mut (dyn FnMut(Event) + Send),
) -> Result<Vec<BuildGraph>, BuildError> {
    let converted = convert_on_own_stack(store, req)?;
    let mut reports = Vec::with_capacity(converted.len());
    let mut graphs = Vec::with_capacity(converted.len());
    for Converted { graph, checks } in converted {
        reports.push(checks?);
        graphs.push(graph);
    }
    let mut told: Vec<&Violation> = Vec::new();
    for warning in reports.iter().flat_map(|r| &r.violations) {
        if !told.contains(&warning) {
            told.push(warning);
            progress(Event::Warning {
                warning: warning.clone(),
            });
        }
    }
    let graphs = graphs.into_iter().collect::<Result<Vec<_>, _>>()?;
    match reports.iter().find_map(Report::failure) {
        Some(failure) => Err(failure.into()),
        None => Ok(graphs),
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
        local: &req.local_images,
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
