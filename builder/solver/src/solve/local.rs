//! This machine's worker as an [`Executor`]: a step's layers become
//! snapshot directories (unpacked on demand), its process runs in the
//! sandbox over them, and its upperdir becomes a layer in the store (and
//! that layer's snapshot). It takes every step.

use std::path::PathBuf;

use kiln_cache::Store;
use kiln_image::compress::{Kind, LayerCompression};
use kiln_image::image::Layer;
use kiln_worker::exec::{CacheSeed, ExecMount, ExecRequest, Worker};
use kiln_worker::sandbox::Stream;
use kiln_worker::snapshot::Snapshots;

use super::cancel::Cancellation;
use super::executor::{Executor, Source, Step, StepMount, StepOutcome};
use super::ops::step_err;
use super::{Result, SolveError};

/// This machine's worker over this store's snapshots.
pub struct Local<'a> {
    store: &'a Store,
    worker: &'a Worker,
    snapshots: &'a Snapshots,
    /// Kills a running step's process when the build is cancelled.
    cancellation: &'a Cancellation,
}

impl std::fmt::Debug for Local<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("store", &self.store.root())
            .finish_non_exhaustive()
    }
}

impl<'a> Local<'a> {
    pub fn new(
        store: &'a Store,
        worker: &'a Worker,
        snapshots: &'a Snapshots,
        cancellation: &'a Cancellation,
    ) -> Self {
        Self {
            store,
            worker,
            snapshots,
            cancellation,
        }
    }

    /// The request with its root filesystem and mounts as this machine's
    /// directories.
    fn request(&self, step: &Step<'_>) -> Result<ExecRequest> {
        let mut request = step.request.clone();
        request.rootfs = lowerdirs(self.store, self.snapshots, step.rootfs)?;
        request.mounts = step
            .mounts
            .iter()
            .map(|m| self.mount(m))
            .collect::<Result<_>>()?;
        Ok(request)
    }

    fn mount(&self, mount: &StepMount<'_>) -> Result<ExecMount> {
        Ok(match mount {
            StepMount::Bind {
                target,
                source,
                path,
                readonly,
            } => ExecMount::Bind {
                target: target.clone(),
                layers: self.dirs(source)?,
                path: path.clone(),
                readonly: *readonly,
            },
            StepMount::Made { mount, .. } => mount.clone(),
            StepMount::SeededCache {
                mount,
                source,
                path,
            } => {
                let mut mount = mount.clone();
                if let ExecMount::Cache { seed, .. } = &mut mount {
                    *seed = Some(CacheSeed {
                        layers: self.dirs(source)?,
                        path: path.clone(),
                    });
                }
                mount
            }
        })
    }

    /// A source as directories, top first (an empty one for no layers).
    fn dirs(&self, source: &Source<'_>) -> Result<Vec<PathBuf>> {
        match source {
            Source::Layers(chain) if chain.is_empty() => Ok(vec![empty_dir(self.store)?]),
            Source::Layers(chain) => lowerdirs(self.store, self.snapshots, chain),
            Source::Context(context) => Ok(vec![(context.dir)()?]),
            Source::Dir(dir) => Ok(vec![dir.clone()]),
        }
    }

    /// Runs the request in the sandbox: its outcome, the upperdir still
    /// to be kept or discarded.
    fn exec(
        &self,
        request: &ExecRequest,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<kiln_worker::exec::ExecOutcome> {
        let cancel = self.cancellation.step().ok_or(SolveError::Cancelled)?;
        let outcome = self
            .worker
            .exec(
                request,
                &mut |_: Stream, chunk: &[u8]| output(chunk),
                &cancel,
            )
            .map_err(|e| {
                if self.cancellation.is_cancelled() {
                    SolveError::Cancelled
                } else {
                    step_err(e)
                }
            });
        self.cancellation.finished(&cancel);
        outcome
    }
}

impl Executor for Local<'_> {
    fn run(
        &self,
        step: &Step<'_>,
        output: &mut dyn FnMut(&[u8]),
        _cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<StepOutcome>> {
        let request = self.request(step)?;
        let outcome = self.exec(&request, output)?;
        if outcome.exit_code != 0 {
            let code = outcome.exit_code;
            let _ = self.worker.discard(outcome);
            return Ok(Some(StepOutcome::Exit(code)));
        }
        let layer = keep_layer(
            self.store,
            self.snapshots,
            &outcome.layer,
            step.compression,
            step.source_date_epoch,
        );
        let layer = match layer {
            Ok(layer) => layer,
            Err(e) => {
                // (A tree too deep to be a layer, say): the step's files
                // go with it, as a failed process's do.
                let _ = self.worker.discard(outcome);
                return Err(e);
            }
        };
        self.worker.discard(outcome).map_err(step_err)?;
        Ok(Some(StepOutcome::Made(layer)))
    }
}

/// Keeps a step's upperdir as its layer. Uncompressed (a build's layers):
/// the upperdir becomes the layer's snapshot and its blob is written only
/// when something reads it (`kiln_image::blobs`). Otherwise the blob is
/// stored now, compressed as asked, and the upperdir kept as its snapshot
/// — except with `SOURCE_DATE_EPOCH`: the layer's mtimes are clamped, the
/// upperdir's are not, and the steps after must see what a cache hit
/// would show (so that layer's blob is stored, never made from a snapshot).
pub(super) fn keep_layer(
    store: &Store,
    snapshots: &Snapshots,
    upper: &std::path::Path,
    compression: LayerCompression,
    source_date_epoch: Option<u64>,
) -> Result<Layer> {
    if source_date_epoch.is_none() && compression.kind == Kind::Uncompressed {
        return kiln_image::blobs::record(store, snapshots, upper).map_err(step_err);
    }
    let layer = kiln_image::compress::store_layer(store, upper, compression, source_date_epoch)
        .map_err(step_err)?;
    if source_date_epoch.is_none()
        && let Err(e) = snapshots.adopt(&layer.diff_id.to_string(), upper)
    {
        // Only a lost shortcut: the layer is unpacked when needed.
        tracing::debug!("keeping a step's upperdir as a snapshot: {e}");
    }
    Ok(layer)
}

/// The layer directories of `chain`, top first (unpacked on demand).
pub(super) fn lowerdirs(
    store: &Store,
    snapshots: &Snapshots,
    chain: &[Layer],
) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::with_capacity(chain.len());
    for layer in chain.iter().rev() {
        let diff_id = layer.diff_id.to_string();
        // Unpacked already: the blob is not read (it may be another of the
        // same diff ID, or not kept at all).
        let failed = |e| step_err(format!("layer {}: {e}", layer.blob));
        let dir = match snapshots.unpacked(&diff_id).map_err(failed)? {
            Some(dir) => dir,
            None => snapshots
                .ensure(
                    &diff_id,
                    kiln_image::blobs::open(store, &layer.blob).map_err(step_err)?,
                )
                .map_err(failed)?,
        };
        dirs.push(dir);
    }
    Ok(dirs)
}

/// An empty directory, a lowerdir for scratch.
pub(super) fn empty_dir(store: &Store) -> Result<PathBuf> {
    let dir = store.root().join("steps/empty");
    std::fs::create_dir_all(&dir)
        .map_err(|e| step_err(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}
