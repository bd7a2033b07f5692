//! Where a RUN step runs. The solver describes a step in its own terms — a
//! process over layers, with mounts whose sources are layers, the build
//! context or a directory of this machine — and offers it to an
//! [`Executor`]: kilnd's farm first when there is one (which takes what may
//! leave this machine), then this machine's worker ([`super::local::Local`],
//! which takes everything). How a step travels, where it is placed and how
//! its sources become directories is the executor's, not the solver's.

use std::path::PathBuf;

use kiln_image::compress::{Kind, LayerCompression};
use kiln_image::image::Layer;
use kiln_proto::ops::v1::{ExecOp, MountType};
use kiln_worker::exec::{ExecMount, ExecRequest};

use super::local::Local;
use super::ops::{StepLog, step_err};
use super::{Fs, Result, SolveError, Solver};
use crate::entitlements::Entitlements;

/// Runs RUN steps: this machine's worker, or workers elsewhere.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Runs `step`: how its process ended, or `None` when this executor
    /// does not take it (no worker attached, none of the platform, a mount
    /// that cannot leave this machine) and the next one is asked. `output`
    /// gets the step's output as it comes; `cancelled` is polled while it
    /// waits.
    fn run(
        &self,
        step: &Step<'_>,
        output: &mut dyn FnMut(&[u8]),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<StepOutcome>>;
}

/// A RUN step as the solver hands it to an executor.
pub struct Step<'a> {
    /// What runs, and how (its `rootfs` and `mounts` are empty: the
    /// executor makes them from the fields below).
    pub request: &'a ExecRequest,
    /// The root filesystem, bottom layer first.
    pub rootfs: &'a [Layer],
    pub mounts: Vec<StepMount<'a>>,
    /// The build's grants; a worker elsewhere checks them against its own.
    pub entitlements: &'a Entitlements,
    /// How the step's new layer is written.
    pub compression: LayerCompression,
    pub source_date_epoch: Option<u64>,
    /// The platform it runs as (`os/arch[/variant]`): a worker of that
    /// platform runs it.
    pub platform: String,
}

/// A mount of a step.
pub enum StepMount<'a> {
    /// `path` of `source` at `target` (`RUN --mount=type=bind`).
    Bind {
        target: String,
        source: Source<'a>,
        path: String,
        readonly: bool,
    },
    /// A mount the executor makes: a cache, a tmpfs, a secret (its value
    /// carried for a worker elsewhere; this machine's worker has its own),
    /// an SSH agent (this machine's).
    Made {
        mount: ExecMount,
        secret: Option<Vec<u8>>,
    },
    /// A cache seeded, when it is new, from `path` of `source`
    /// (`RUN --mount=type=cache,from=…`): kept with the seed's layers, so
    /// on this machine.
    SeededCache {
        mount: ExecMount,
        source: Source<'a>,
        path: String,
    },
}

/// What a mount's files come from.
pub enum Source<'a> {
    /// Layers, bottom first (none: an empty directory).
    Layers(Vec<Layer>),
    /// The build context as steps see it (without what `.dockerignore`
    /// excludes): a directory here, a layer for a worker elsewhere, each
    /// made when first asked for and kept for the build.
    Context(&'a ContextForms<'a>),
    /// A directory only this machine has (a download, `ADD <url>`).
    Dir(PathBuf),
}

/// The build context in the two forms executors ask for.
pub struct ContextForms<'a> {
    pub dir: &'a (dyn Fn() -> Result<PathBuf> + Sync),
    pub layer: &'a (dyn Fn() -> Result<Layer> + Sync),
}

/// How a RUN step's process ended.
#[derive(Debug)]
pub enum StepOutcome {
    /// It exited 0 and made this layer, in this machine's store (one a
    /// worker elsewhere made is checked before the solver trusts it).
    Made(Layer),
    /// It exited with this code (not 0).
    Exit(i32),
}

impl SolveError {
    /// A step failed on a worker elsewhere or on its way there or back.
    pub fn remote(reason: impl std::fmt::Display) -> Self {
        Self::Remote {
            description: String::new(),
            reason: reason.to_string(),
        }
    }
}

impl Solver<'_> {
    /// Runs the step on the farm when it takes it, else here: its layer, or
    /// its exit code when that is not 0.
    pub(super) fn run_step(
        &self,
        request: &ExecRequest,
        exec: &ExecOp,
        inputs: &[(Fs, String)],
        base: &[Layer],
        log: &mut StepLog<'_, '_>,
    ) -> Result<StepOutcome> {
        // Each directory from the client the step mounts, in both forms.
        type Forms<'f> = (
            Box<dyn Fn() -> Result<PathBuf> + Sync + 'f>,
            Box<dyn Fn() -> Result<Layer> + Sync + 'f>,
        );
        let names: std::collections::BTreeSet<&str> = inputs
            .iter()
            .filter_map(|(fs, _)| match fs {
                Fs::Context(name) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let made: Vec<(&str, Forms<'_>)> = names
            .into_iter()
            .map(|name| {
                let forms: Forms<'_> = (
                    Box::new(move || self.context_view(name)),
                    Box::new(move || self.context_layer(name)),
                );
                (name, forms)
            })
            .collect();
        let contexts: std::collections::BTreeMap<&str, ContextForms<'_>> = made
            .iter()
            .map(|(name, (dir, layer))| {
                let forms = ContextForms {
                    dir: &**dir,
                    layer: &**layer,
                };
                (*name, forms)
            })
            .collect();
        // The op's platform (a farm worker of it runs the step), else the
        // host's.
        let platform = match request.platform.as_str() {
            "" => kiln_frontend::platform::format(&kiln_image::image::host_platform()),
            op => op.to_owned(),
        };
        let step = Step {
            request,
            rootfs: base,
            mounts: self.step_mounts(exec, inputs, &contexts)?,
            entitlements: &self.options.entitlements,
            compression: self.options.compression,
            source_date_epoch: self.options.source_date_epoch,
            platform,
        };
        let cancelled = || self.options.cancellation.is_cancelled();
        let farm = self.options.farm;
        if let Some(outcome) = farm
            .map(|farm| farm.run(&step, &mut |chunk| log.push(chunk), &cancelled))
            .transpose()?
            .flatten()
        {
            if let StepOutcome::Made(layer) = &outcome {
                self.checked(layer)?;
            }
            return Ok(outcome);
        }
        let local = Local::new(
            self.store,
            self.worker,
            &self.snapshots,
            &self.options.cancellation,
        );
        local
            .run(&step, &mut |chunk| log.push(chunk), &cancelled)?
            .ok_or_else(|| step_err("this machine's worker did not take the step"))
    }

    /// A worker is trusted with running the step, not with naming what it
    /// made: its layer must be in the store, and the diff ID it claims is
    /// checked before kilnd records, unpacks or builds on the layer.
    fn checked(&self, layer: &Layer) -> Result<()> {
        if !self.store.content.has(&layer.blob) {
            return Err(SolveError::remote(
                "the worker's layer did not reach kilnd's store",
            ));
        }
        kiln_image::compress::verify_layer(self.store, &layer.blob, &layer.diff_id)
            .map_err(|e| SolveError::remote(format!("the worker's layer: {e}")))
    }

    /// The build context as bind mounts see it, as one layer in this store
    /// for workers to fetch (zstd: fast both ways, small on a network).
    /// Made once per build; the same files make the same layer, which a
    /// worker then holds already.
    fn context_layer(&self, name: &str) -> Result<Layer> {
        let layer = self.local(name)?.layer.get_or_init(|| {
            let view = self.context_view(name).map_err(|e| e.to_string())?;
            kiln_image::compress::store_layer(
                self.store,
                &view,
                LayerCompression::of(Kind::Zstd),
                None,
            )
            .map_err(|e| e.to_string())
        });
        layer
            .clone()
            .map_err(|e| step_err(format!("the build context for a worker: {e}")))
    }

    /// The step's mounts, their sources as the solver has them.
    fn step_mounts<'c>(
        &self,
        exec: &ExecOp,
        inputs: &[(Fs, String)],
        contexts: &'c std::collections::BTreeMap<&str, ContextForms<'c>>,
    ) -> Result<Vec<StepMount<'c>>> {
        let source = |input: i32| match usize::try_from(input).ok().and_then(|i| inputs.get(i)) {
            Some((Fs::Layers(chain), _)) => Ok(Source::Layers(chain.clone())),
            Some((Fs::Context(name), _)) => contexts
                .get(name.as_str())
                .map(Source::Context)
                .ok_or_else(|| step_err(format!("no files from the client are named {name:?}"))),
            Some((Fs::Fetched(fetched), _)) => Ok(Source::Dir(fetched.dir.clone())),
            None => Ok(Source::Layers(Vec::new())),
        };
        let mut mounts = Vec::with_capacity(exec.mounts.len());
        for m in &exec.mounts {
            mounts.push(if m.r#type == MountType::Bind as i32 {
                StepMount::Bind {
                    target: m.target.clone(),
                    source: source(m.input)?,
                    path: m.source.clone(),
                    readonly: m.readonly,
                }
            } else if m.r#type == MountType::Cache as i32 && m.input >= 0 {
                StepMount::SeededCache {
                    mount: self.plain_mount(m)?,
                    source: source(m.input)?,
                    path: m.source.clone(),
                }
            } else {
                let mount = self.plain_mount(m)?;
                let secret = match &mount {
                    ExecMount::Secret { id, .. } if self.options.farm.is_some() => {
                        self.worker.secret(id).map(<[u8]>::to_vec)
                    }
                    _ => None,
                };
                StepMount::Made { mount, secret }
            });
        }
        Ok(mounts)
    }
}
