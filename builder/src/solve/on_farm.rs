//! RUN steps on kilnd's farm: which may go (those whose sources are all
//! layers, which a worker fetches by digest; the build context becomes one),
//! and running them there.

use kiln_proto::farm::v1 as pb;
use kiln_proto::ops::v1::{ExecOp, MountType};
use kiln_worker::exec::ExecRequest;
use kiln_worker::sandbox::spec::Network;
use kiln_worker::snapshot::Snapshots;

use super::ops::{StepLog, step_err};
use super::{Fs, Layer, Result, Solver};
use crate::compress::{Kind, LayerCompression};
use crate::farm::{FarmError, StepLayers, wire};

/// A layer's snapshot name and size, for placing a step by what workers hold.
fn weight(layer: &Layer) -> (String, u64) {
    (
        Snapshots::name(&layer.diff_id.to_string()).to_owned(),
        layer.size,
    )
}

impl Solver<'_> {
    /// Runs the step on an attached worker when there is one and the step
    /// may go: its layer (in this store) or its exit code; `None` when it
    /// is to run here.
    pub(super) fn on_farm(
        &self,
        request: &ExecRequest,
        exec: &ExecOp,
        inputs: &[(Fs, String)],
        base: &[Layer],
        log: &mut StepLog<'_, '_>,
    ) -> Result<Option<std::result::Result<Layer, i32>>> {
        let Some(farm) = self.farm else {
            return Ok(None);
        };
        let Some((step, layers)) = self.farm_step(request, exec, inputs, base)? else {
            return Ok(None);
        };
        let (os, arch) = crate::image::host_platform();
        let outcome = farm
            .run(
                step,
                &format!("{os}/{arch}"),
                &layers,
                &mut |chunk| log.push(chunk),
                &|| self.cancellation.is_cancelled(),
            )
            .map_err(|e| match e {
                FarmError::Cancelled => step_err("cancelled"),
                e => step_err(e),
            })?;
        let Some(outcome) = outcome else {
            return Ok(None);
        };
        if outcome.exit_code != 0 {
            return Ok(Some(Err(outcome.exit_code)));
        }
        let layer = outcome
            .layer
            .as_ref()
            .and_then(wire::layer_of)
            .filter(|l| self.store.content.has(&l.blob))
            .ok_or_else(|| step_err("the worker's layer did not reach kilnd's store"))?;
        // A worker is trusted with running the step, not with naming what
        // it made: the diff ID it claims is checked before kilnd records,
        // unpacks or builds on the layer.
        crate::compress::verify_layer(self.store, &layer.blob, &layer.diff_id)
            .map_err(|e| step_err(format!("the worker's layer: {e}")))?;
        Ok(Some(Ok(layer)))
    }

    /// The build context as bind mounts see it, as one layer in this store
    /// for workers to fetch (zstd: fast both ways, small on a network).
    /// Made once per build; the same files make the same layer, which a
    /// worker then holds already.
    fn context_layer(&self) -> Result<Layer> {
        let layer = self.context_layer.get_or_init(|| {
            let view = self.context_view().map_err(|e| e.to_string())?;
            crate::compress::store_layer(self.store, &view, LayerCompression::of(Kind::Zstd), None)
                .map_err(|e| e.to_string())
        });
        layer
            .clone()
            .map_err(|e| step_err(format!("the build context for a worker: {e}")))
    }

    /// The step as the farm takes it, and its layers (for placement);
    /// `None` when it needs this machine: a bind mount of a download, a
    /// cache seeded from a stage, or an SSH agent.
    fn farm_step(
        &self,
        request: &ExecRequest,
        exec: &ExecOp,
        inputs: &[(Fs, String)],
        base: &[Layer],
    ) -> Result<Option<(pb::RunStep, StepLayers)>> {
        let mut layers: StepLayers = base.iter().map(weight).collect();
        let mut mounts = Vec::new();
        for m in &exec.mounts {
            // A cache seeded from a stage is kept with its layers, here.
            if m.r#type == MountType::Cache as i32 && m.input >= 0 {
                return Ok(None);
            }
            if m.r#type == MountType::Bind as i32 {
                let context;
                let chain = match usize::try_from(m.input).ok().and_then(|i| inputs.get(i)) {
                    Some((Fs::Layers(chain), _)) => chain.as_slice(),
                    Some((Fs::Context(_), _)) => {
                        context = [self.context_layer()?];
                        &context
                    }
                    None => &[],
                    Some((Fs::Fetched(_), _)) => return Ok(None),
                };
                layers.extend(chain.iter().map(weight));
                mounts.push(pb::Mount {
                    target: m.target.clone(),
                    kind: Some(pb::mount::Kind::Bind(pb::BindMount {
                        layers: chain.iter().map(wire::layer_message).collect(),
                        path: m.source.clone(),
                        readonly: m.readonly,
                    })),
                });
                continue;
            }
            let mount = self.plain_mount(m)?;
            let Some(message) = wire::mount_message(&mount, |id| self.worker.secret(id)) else {
                return Ok(None);
            };
            mounts.push(message);
        }
        let mut step = pb::RunStep {
            step: 0,
            rootfs: base.iter().map(wire::layer_message).collect(),
            args: request.args.clone(),
            env: request.env.clone(),
            cwd: request.cwd.clone(),
            user: request.user.clone(),
            network_none: request.network == Network::None,
            network_host: request.network == Network::Host,
            privileged: request.privileged,
            // The worker checks both against its own operator's allowance.
            entitlements: self.entitlements.names(),
            mounts,
            compression: self.compression.name().to_owned(),
            compression_level: self.compression.level,
            source_date_epoch: self.source_date_epoch,
            ..pb::RunStep::default()
        };
        wire::set_sandbox(&mut step, &request.sandbox);
        Ok(Some((step, layers)))
    }
}
