//! The farm's gRPC face in kilnd (`kiln.farm.v1.Farm`): workers attach,
//! fetch the layers their steps need and send back the layers they make.

use std::io::Write as _;
use std::sync::Arc;

use kiln_cache::{ContentError, Digest, Store};
use kiln_image::image::ImageError;
use kiln_proto::farm::v1::{self as pb, farm_server};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{AttachRefused, Farm, HEARTBEAT};
use crate::chunks::ChunkWriter;

/// The service over kilnd's store and farm.
pub struct FarmService {
    store: Arc<Store>,
    farm: Arc<Farm>,
}

impl FarmService {
    pub fn new(store: Arc<Store>, farm: Arc<Farm>) -> Self {
        Self { store, farm }
    }
}

/// Why a worker's call was refused or failed, as its status says.
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Refused(#[from] AttachRefused),
    #[error("no such image: {0}")]
    NoBlob(Digest),
    #[error("storing a worker's layer: {0}")]
    Storing(String),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let text = e.to_string();
        match e {
            ServiceError::Refused(AttachRefused::Token) => Status::unauthenticated(text),
            ServiceError::Invalid(_) | ServiceError::Refused(_) => Status::invalid_argument(text),
            ServiceError::NoBlob(_) => Status::not_found(text),
            ServiceError::Storing(_) => Status::internal(text),
        }
    }
}

fn digest_of(text: &str) -> Result<Digest, ServiceError> {
    text.parse()
        .map_err(|_| ServiceError::Invalid(format!("digest {text:?}")))
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl farm_server::Farm for FarmService {
    type AttachStream = Stream<pb::FarmMessage>;

    async fn attach(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = request.into_inner();
        let hello = match input.message().await? {
            Some(pb::WorkerMessage {
                message: Some(pb::worker_message::Message::Hello(hello)),
            }) => hello,
            _ => {
                return Err(
                    ServiceError::Invalid("a worker's first message is its hello".into()).into(),
                );
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let session = self.farm.attach(&hello, tx).map_err(ServiceError::from)?;
        let farm = Arc::clone(&self.farm);
        tokio::spawn(async move {
            loop {
                match tokio::time::timeout(HEARTBEAT * 3, input.message()).await {
                    Ok(Ok(Some(message))) => farm.deliver(&hello.id, session, message),
                    Ok(Ok(None) | Err(_)) => break,
                    Err(_) => {
                        tracing::warn!(worker = hello.id, "no heartbeat from a worker");
                        break;
                    }
                }
            }
            farm.detach(&hello.id, session);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ReadBlobStream = Stream<pb::BlobChunk>;

    async fn read_blob(
        &self,
        request: Request<pb::ReadBlobRequest>,
    ) -> Result<Response<Self::ReadBlobStream>, Status> {
        let digest = digest_of(&request.into_inner().digest)?;
        // A layer a build left unwritten is made now, off the runtime.
        let (store, wanted) = (Arc::clone(&self.store), digest.clone());
        let mut file =
            tokio::task::spawn_blocking(move || kiln_image::blobs::open(&store, &wanted))
                .await
                .map_err(|e| Status::internal(format!("reading {digest}: {e}")))?
                .map_err(|e| match e {
                    ImageError::Content(ContentError::NotFound(_)) => {
                        Status::from(ServiceError::NoBlob(digest.clone()))
                    }
                    other => Status::internal(format!("reading {digest}: {other}")),
                })?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkWriter::new(tx.clone(), |data, _| {
                Ok(pb::BlobChunk {
                    digest: String::new(),
                    data,
                })
            });
            let sent = std::io::copy(&mut file, &mut out).and_then(|_| out.finish());
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(Status::internal(format!("reading {digest}: {e}"))));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn write_blob(
        &self,
        request: Request<Streaming<pb::BlobChunk>>,
    ) -> Result<Response<pb::WriteBlobResponse>, Status> {
        let mut input = request.into_inner();
        let mut writer = self
            .store
            .content
            .writer()
            .map_err(|e| ServiceError::Storing(e.to_string()))?;
        let mut expected = None;
        while let Some(chunk) = input.message().await? {
            if expected.is_none() {
                expected = Some(digest_of(&chunk.digest)?);
            }
            // Local disk writes, on a runtime thread that may block.
            tokio::task::block_in_place(|| writer.write_all(&chunk.data))
                .map_err(|e| ServiceError::Storing(e.to_string()))?;
        }
        let expected =
            expected.ok_or_else(|| ServiceError::Invalid("a blob without a digest".into()))?;
        tokio::task::block_in_place(|| writer.commit(Some(&expected)))
            .map_err(|e| ServiceError::Storing(e.to_string()))?;
        Ok(Response::new(pb::WriteBlobResponse {}))
    }
}
