//! Connecting to kilnd, for its clients in kiln: the CLI and `kiln-worker`.

use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// A channel to kilnd at `addr`: `unix:///PATH`, or `tcp://HOST:PORT`
/// (with `tls`, mutual TLS; without, plain HTTP/2).
pub async fn channel(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, ConnectError> {
    if let Some(path) = addr.strip_prefix("unix://") {
        let path = path.to_owned();
        // The URI is not used: the connector dials the socket.
        return Ok(Endpoint::try_from("http://kilnd")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?);
    }
    if let Some(hostport) = addr.strip_prefix("tcp://") {
        let endpoint = match tls {
            Some(tls) => Endpoint::from_shared(format!("https://{hostport}"))?.tls_config(tls)?,
            None => Endpoint::from_shared(format!("http://{hostport}"))?,
        };
        return Ok(endpoint.connect().await?);
    }
    Err(ConnectError::Address(addr.to_owned()))
}

/// Mutual TLS to kilnd: the CA its certificate is signed by, and this
/// client's certificate and key (PEM files).
pub fn client_tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, ConnectError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ConnectError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(config)
}

/// Why kilnd could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}: expected unix:///PATH or tcp://HOST:PORT")]
    Address(String),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Uri(#[from] tonic::codegen::http::uri::InvalidUri),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}
