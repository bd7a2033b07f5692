//! The CLI as kilnd's client: `--addr` / `KILN_ADDR`, or a kilnd listening
//! at the default socket. The calls are the client library's
//! ([`kiln_builder::client`]); output and exit codes are those of the
//! embedded commands.

use anyhow::Result;

/// Where kilnd listens unless told otherwise.
pub(crate) const DEFAULT_SOCKET: &str = "/run/kiln/kilnd.sock";

/// A connection to kilnd.
pub(crate) type Remote = kiln_builder::client::Client;

/// Mutual TLS for `tcp://` addresses: the CA kilnd's certificate is signed
/// by, and this client's certificate and key (PEM files; `KILN_TLS_CA`,
/// `KILN_TLS_CERT`, `KILN_TLS_KEY`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Tls {
    /// The CA that signed kilnd's certificate (a `tcp://` `--addr`).
    #[arg(
        long = "tls-ca",
        global = true,
        env = "KILN_TLS_CA",
        value_name = "PEM",
        help_heading = crate::GLOBAL
    )]
    ca: Option<std::path::PathBuf>,
    /// This client's certificate, for kilnd's mutual TLS.
    #[arg(
        long = "tls-cert",
        global = true,
        env = "KILN_TLS_CERT",
        value_name = "PEM",
        help_heading = crate::GLOBAL
    )]
    cert: Option<std::path::PathBuf>,
    /// This client's private key, for kilnd's mutual TLS.
    #[arg(
        long = "tls-key",
        global = true,
        env = "KILN_TLS_KEY",
        value_name = "PEM",
        help_heading = crate::GLOBAL
    )]
    key: Option<std::path::PathBuf>,
}

impl Tls {
    fn config(&self) -> Result<Option<tonic::transport::ClientTlsConfig>> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        Ok(Some(kiln_daemon::control::client_tls(ca, identity)?))
    }
}

/// The kilnd to talk to: `addr` when given; else the default socket when a
/// kilnd answers there; else none (the CLI runs embedded).
pub(crate) fn connect(addr: Option<&str>, tls: &Tls) -> Result<Option<Remote>> {
    // An empty `KILN_ADDR=` is unset, as an empty DOCKER_HOST is.
    let addr = match addr.filter(|a| !a.is_empty()) {
        Some(a) => a.to_owned(),
        None if std::os::unix::net::UnixStream::connect(DEFAULT_SOCKET).is_ok() => {
            format!("unix://{DEFAULT_SOCKET}")
        }
        None => return Ok(None),
    };
    Ok(Some(Remote::connect(&addr, tls.config()?)?))
}
