//! RUN steps on workers elsewhere (kilnd's farm): which steps may leave
//! this machine — those whose sources are all layers, which a worker
//! fetches by digest; the build context becomes one — and handing them over
//! in the solver's own terms. How a step travels and where it is placed is
//! the implementation's ([`RemoteWorkers`]; kilnd's `Farm`), not the
//! solver's.

use kiln_proto::ops::v1::{ExecOp, MountType};
use kiln_worker::exec::{ExecMount, ExecRequest};
use thiserror::Error;

use super::ops::{StepLog, step_err};
use super::{Fs, Result, SolveError, Solver};
use crate::entitlements::Entitlements;
use kiln_image::compress::{Kind, LayerCompression};
use kiln_image::image::Layer;

/// Workers elsewhere that may run a RUN step.
pub trait RemoteWorkers: Send + Sync + std::fmt::Debug {
    /// Runs `step` on a worker: what it made, or `None` when no worker
    /// takes it (none attached, none of the platform) and it is to run
    /// here. `output` gets the step's output as it comes; `cancelled` is
    /// polled while it waits.
    fn run(
        &self,
        step: &RemoteStep<'_>,
        output: &mut dyn FnMut(&[u8]),
        cancelled: &dyn Fn() -> bool,
    ) -> std::result::Result<Option<StepOutcome>, RemoteError>;
}

/// A RUN step as it leaves this machine.
pub struct RemoteStep<'a> {
    /// What runs, and how (its `rootfs` and `mounts` are empty: see below).
    pub request: &'a ExecRequest,
    /// The root filesystem, bottom layer first.
    pub rootfs: &'a [Layer],
    pub mounts: Vec<RemoteMount>,
    /// The build's grants; the worker checks them against its own.
    pub entitlements: &'a Entitlements,
    /// How the step's new layer is written.
    pub compression: LayerCompression,
    pub source_date_epoch: Option<u64>,
    /// `os/arch` of the worker it needs.
    pub platform: String,
}

/// A mount of a step that leaves this machine.
pub enum RemoteMount {
    /// `path` of layers (a stage, an image, the build context) at `target`.
    Layers {
        target: String,
        layers: Vec<Layer>,
        path: String,
        readonly: bool,
    },
    /// A mount the worker makes itself (a cache, a tmpfs, a secret: its
    /// value travels with the step).
    Made {
        mount: ExecMount,
        secret: Option<Vec<u8>>,
    },
}

/// How a RUN step's process ended.
#[derive(Debug)]
pub enum StepOutcome {
    /// It exited 0 and made this layer, in this machine's store (a remote
    /// worker's is checked before the solver trusts it).
    Made(Layer),
    /// It exited with this code (not 0).
    Exit(i32),
}

/// Why a remote step did not end.
#[derive(Debug, Error)]
pub enum RemoteError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
}

impl Solver<'_> {
    /// Runs the step on a remote worker when there is one and the step
    /// may go; `None` when it is to run here.
    pub(super) fn on_remote(
        &self,
        request: &ExecRequest,
        exec: &ExecOp,
        inputs: &[(Fs, String)],
        base: &[Layer],
        log: &mut StepLog<'_, '_>,
    ) -> Result<Option<StepOutcome>> {
        let Some(remote) = self.options.farm else {
            return Ok(None);
        };
        let Some(mounts) = self.remote_mounts(exec, inputs)? else {
            return Ok(None);
        };
        let (os, arch) = kiln_image::image::host_platform();
        let step = RemoteStep {
            request,
            rootfs: base,
            mounts,
            entitlements: &self.options.entitlements,
            compression: self.options.compression,
            source_date_epoch: self.options.source_date_epoch,
            platform: format!("{os}/{arch}"),
        };
        let outcome = remote
            .run(&step, &mut |chunk| log.push(chunk), &|| {
                self.options.cancellation.is_cancelled()
            })
            .map_err(|e| match e {
                RemoteError::Cancelled => SolveError::Cancelled,
                RemoteError::Failed(reason) => SolveError::Remote {
                    description: String::new(),
                    reason,
                },
            })?;
        if let Some(StepOutcome::Made(layer)) = &outcome {
            self.checked(layer)?;
        }
        Ok(outcome)
    }

    /// A worker is trusted with running the step, not with naming what it
    /// made: its layer must be in the store, and the diff ID it claims is
    /// checked before kilnd records, unpacks or builds on the layer.
    fn checked(&self, layer: &Layer) -> Result<()> {
        if !self.store.content.has(&layer.blob) {
            return Err(step_err("the worker's layer did not reach kilnd's store"));
        }
        kiln_image::compress::verify_layer(self.store, &layer.blob, &layer.diff_id)
            .map_err(|e| step_err(format!("the worker's layer: {e}")))
    }

    /// The build context as bind mounts see it, as one layer in this store
    /// for workers to fetch (zstd: fast both ways, small on a network).
    /// Made once per build; the same files make the same layer, which a
    /// worker then holds already.
    fn context_layer(&self) -> Result<Layer> {
        let layer = self.context_layer.get_or_init(|| {
            let view = self.context_view().map_err(|e| e.to_string())?;
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

    /// The step's mounts as they leave this machine; `None` when one needs
    /// it: a bind mount of a download, a cache seeded from a stage (kept
    /// with its layers, here), or an SSH agent.
    fn remote_mounts(
        &self,
        exec: &ExecOp,
        inputs: &[(Fs, String)],
    ) -> Result<Option<Vec<RemoteMount>>> {
        let mut mounts = Vec::new();
        for m in &exec.mounts {
            if m.r#type == MountType::Cache as i32 && m.input >= 0 {
                return Ok(None);
            }
            if m.r#type == MountType::Bind as i32 {
                let layers = match usize::try_from(m.input).ok().and_then(|i| inputs.get(i)) {
                    Some((Fs::Layers(chain), _)) => chain.clone(),
                    Some((Fs::Context(_), _)) => vec![self.context_layer()?],
                    None => Vec::new(),
                    Some((Fs::Fetched(_), _)) => return Ok(None),
                };
                mounts.push(RemoteMount::Layers {
                    target: m.target.clone(),
                    layers,
                    path: m.source.clone(),
                    readonly: m.readonly,
                });
                continue;
            }
            let mount = self.plain_mount(m)?;
            let secret = match &mount {
                ExecMount::Ssh { .. } | ExecMount::Bind { .. } => return Ok(None),
                ExecMount::Secret { id, .. } => self.worker.secret(id).map(<[u8]>::to_vec),
                _ => None,
            };
            mounts.push(RemoteMount::Made { mount, secret });
        }
        Ok(Some(mounts))
    }
}
