//! Archives and files through kilnd, streamed both ways: save, load,
//! import, and a built image's file outputs (export).

use std::sync::Arc;

use kiln_proto::control::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{ControlError, ControlService};
use crate::chunks::ChunkWriter;
use kiln_image::output::Dest;

pub(super) type SaveStream = ReceiverStream<Result<pb::DataChunk, Status>>;

/// An archive's chunk for the client.
fn data_chunk(data: Vec<u8>, _last: bool) -> Result<pb::DataChunk, Status> {
    Ok(pb::DataChunk { data })
}

/// Where a streamed answer is written: chunks to the client.
type Out = ChunkWriter<Result<pb::DataChunk, Status>>;

impl ControlService {
    /// Runs `write` on a blocking thread, the store held from collection,
    /// what it writes streamed to the client in chunks; its error ends the
    /// stream as the call's status.
    async fn stream_blocking(
        &self,
        write: impl FnOnce(&kiln_cache::Store, &mut Out) -> Result<(), ControlError> + Send + 'static,
    ) -> Result<Response<SaveStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let store = Arc::clone(&self.store);
        let using = self.collector.using().await;
        tokio::task::spawn_blocking(move || {
            let _using = using;
            let mut out = ChunkWriter::new(tx.clone(), data_chunk);
            let sent = write(&store, &mut out).and_then(|()| {
                out.finish()
                    .map_err(|e| ControlError::Context(e.to_string()))
            });
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(e.into()));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    pub(super) async fn export_call(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<SaveStream>, Status> {
        let r = request.into_inner();
        let manifest: kiln_cache::Digest = r
            .manifest
            .parse()
            .map_err(|_| ControlError::Invalid(format!("manifest {}", r.manifest)))?;
        if r.kind == "cache" {
            return self.export_cache(manifest).await;
        }
        self.stream_blocking(move |store, out| {
            let scratch = tempfile::Builder::new()
                .prefix("export-")
                .tempdir_in(store.root().join("tmp"))
                .map_err(|e| ControlError::Context(e.to_string()))?;
            let file = scratch.path().join("out");
            let output = match r.kind.as_str() {
                "docker" => kiln_image::output::Output::Docker(Dest::File(file.clone())),
                "oci" => kiln_image::output::Output::Oci(Dest::File(file.clone())),
                "tar" => kiln_image::output::Output::Tar(Dest::File(file.clone())),
                other => return Err(ControlError::Invalid(format!("output type {other}"))),
            };
            let name = (!r.name.is_empty()).then_some(r.name.as_str());
            kiln_image::output::export(store, &manifest, name, &output)?;
            let mut input =
                std::fs::File::open(&file).map_err(|e| ControlError::Context(e.to_string()))?;
            std::io::copy(&mut input, out).map_err(|e| ControlError::Context(e.to_string()))?;
            Ok(())
        })
        .await
    }

    /// A build cache the store holds as a layout tar (`--cache-to
    /// type=local` through kilnd): only a manifest of a kiln cache.
    async fn export_cache(
        &self,
        manifest: kiln_cache::Digest,
    ) -> Result<Response<SaveStream>, Status> {
        self.stream_blocking(move |store, out| {
            Ok(kiln_registry::cache::write_local_tar(
                store, &manifest, out,
            )?)
        })
        .await
    }

    /// `--cache-from type=local` through kilnd: the client's layout tar,
    /// unpacked into a scratch directory of kilnd's and imported from
    /// there (blobs verified, sizes bounded, as any layout).
    pub(super) async fn import_cache_call(
        &self,
        request: Request<Streaming<pb::DataChunk>>,
    ) -> Result<Response<pb::ImportCacheResponse>, Status> {
        let mut input = request.into_inner();
        let (scratch, path) = self
            .receive(&mut input, |chunk: &pb::DataChunk| &chunk.data, |_| {})
            .await?;
        let imported = self
            .blocking_using(move |s| {
                let mut file =
                    std::fs::File::open(&path).map_err(|e| ControlError::Context(e.to_string()))?;
                let layout = scratch.path().join("layout");
                let imported = kiln_registry::cache::import_local_tar(s, &mut file, &layout)?;
                drop(scratch);
                Ok(imported)
            })
            .await?;
        Ok(Response::new(pb::ImportCacheResponse {
            records: imported.records as u64,
            mounts: imported.mounts as u64,
        }))
    }

    pub(super) async fn save_call(
        &self,
        request: Request<pb::SaveRequest>,
    ) -> Result<Response<SaveStream>, Status> {
        let r = request.into_inner();
        let format = match r.format.as_str() {
            "" | "docker" => kiln_image::archive::Format::Docker,
            "oci" => kiln_image::archive::Format::Oci,
            other => return Err(ControlError::Invalid(format!("--format {other}")).into()),
        };
        let platform = match r.platform.as_str() {
            "" => None,
            p => Some(
                kiln_frontend::platform::parse(p)
                    .map_err(|e| ControlError::Invalid(format!("--platform {p}: {e}")))?,
            ),
        };
        self.stream_blocking(move |store, out| {
            kiln_image::archive::save(store, &r.names, format, platform.as_ref(), out)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn load_call(
        &self,
        request: Request<Streaming<pb::DataChunk>>,
    ) -> Result<Response<pb::LoadResponse>, Status> {
        let mut input = request.into_inner();
        let (scratch, path) = self
            .receive(&mut input, |chunk: &pb::DataChunk| &chunk.data, |_| {})
            .await?;
        let loaded = self
            .blocking_using(move |s| {
                let loaded = kiln_image::archive::load(s, &path)?;
                drop(scratch);
                Ok(loaded)
            })
            .await?;
        Ok(Response::new(pb::LoadResponse {
            tags: loaded.tags,
            untagged: loaded.untagged.iter().map(ToString::to_string).collect(),
        }))
    }

    pub(super) async fn import_call(
        &self,
        request: Request<Streaming<pb::ImportChunk>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let mut input = request.into_inner();
        let mut first: Option<pb::ImportChunk> = None;
        let (scratch, path) = self
            .receive(
                &mut input,
                |chunk: &pb::ImportChunk| &chunk.data,
                |chunk| {
                    first.get_or_insert_with(|| pb::ImportChunk {
                        name: chunk.name.clone(),
                        data: Vec::new(),
                        created: chunk.created,
                        platform: chunk.platform.clone(),
                    });
                },
            )
            .await?;
        let first = first.ok_or_else(|| ControlError::Invalid("no image name".into()))?;
        let platform = (!first.platform.is_empty())
            .then(|| kiln_frontend::platform::parse(&first.platform))
            .transpose()
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let digest = self
            .blocking_using(move |s| {
                let created = first.created.unwrap_or_else(kiln_image::image::now);
                let digest =
                    kiln_image::archive::import(s, &path, &first.name, created, platform.as_ref())?;
                drop(scratch);
                Ok(digest)
            })
            .await?;
        Ok(Response::new(pb::ImportResponse {
            digest: digest.to_string(),
        }))
    }
}
