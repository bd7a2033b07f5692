//! kilnd's client: what the `kiln` CLI does through kilnd, as a library a
//! Rust program (a CI job) can call. Blocking: each call runs on the
//! client's own runtime.
//!
//! ```no_run
//! use kiln_builder::client::Client;
//! use kiln_solver::pipeline::{Report, Request};
//!
//! let mut client = Client::connect("unix:///run/kiln/kilnd.sock", None)?;
//! let request = Request {
//!     dockerfile: std::fs::read_to_string("ctx/Dockerfile")?,
//!     tags: vec!["docker.io/library/app:ci".to_owned()],
//!     ..Request::default()
//! };
//! let built = client.build(&request, "ctx".as_ref(), &mut |report| {
//!     if let Report::Notice(n) = report {
//!         eprintln!("{}", n.text);
//!     }
//! })?;
//! println!("{}", built.config);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod build;
mod cache;
mod files;

use std::path::PathBuf;

use kiln_proto::control::v1::{self as pb, control_client::ControlClient};
use thiserror::Error;
use tonic::transport::{Channel, ClientTlsConfig};

use kiln_daemon::control::ConnectError;

/// Why a call through kilnd failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connecting to kilnd at {addr}: {source}")]
    Connect { addr: String, source: ConnectError },
    #[error("starting the client's runtime: {0}")]
    Runtime(std::io::Error),
    /// kilnd's answer, in the words the embedded command would use.
    #[error("{}", .0.message())]
    Status(tonic::Status),
    /// A failed RUN step, with its last lines (the embedded CLI prints
    /// them before the error).
    #[error("{message}")]
    Step {
        message: String,
        log_tail: Vec<String>,
    },
    #[error(".dockerignore: {0}")]
    Dockerignore(#[from] kiln_proto::dockerignore::DockerignoreError),
    #[error("reading the build context {path}: {source}")]
    Context {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sending the build context: {0}")]
    Send(std::io::Error),
    /// kilnd's answer does not fit the request.
    #[error("kilnd's answer: {0}")]
    Protocol(String),
    #[error("kilnd closed the build")]
    Closed,
    #[error("kilnd ended the build without a result")]
    NoResult,
    /// A local file: `what` it was being done to, e.g. "writing".
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A `type=local` build cache on this machine.
    #[error(transparent)]
    Cache(#[from] kiln_registry::RegistryError),
    /// A directory output (`type=local`, `type=oci,tar=false`) that could
    /// not be written (the error names the directory).
    #[error("writing the output: {0}")]
    Unpack(#[source] kiln_image::image::ImageError),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// A connection to kilnd, with the runtime its calls run on.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    client: ControlClient<Channel>,
    /// kilnd's address as given (what context sessions are kept under).
    addr: String,
}

impl Client {
    /// Connects to kilnd at `addr` (`unix:///PATH`, `tcp://HOST:PORT`;
    /// with `tls`, mutual TLS, see [`kiln_daemon::control::client_tls`]).
    pub fn connect(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        let channel = runtime
            .block_on(kiln_daemon::control::channel(addr, tls))
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        Ok(Self {
            runtime,
            client: ControlClient::new(channel).max_decoding_message_size(64 << 20),
            addr: addr.to_owned(),
        })
    }

    /// Runs one unary call.
    fn call<T, F>(&mut self, call: impl FnOnce(ControlClient<Channel>) -> F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        Ok(self.runtime.block_on(call(client))?.into_inner())
    }

    /// The tagged images (`kiln images`).
    pub fn list_images(&mut self) -> Result<Vec<pb::ImageSummary>> {
        let r = self.call(|mut c| async move { c.list_images(pb::ListImagesRequest {}).await })?;
        Ok(r.images)
    }

    /// Names `source`'s image `target` too.
    pub fn tag(&mut self, source: String, target: String) -> Result<()> {
        self.call(|mut c| async move { c.tag(pb::TagRequest { source, target }).await })?;
        Ok(())
    }

    /// Untags `name` and deletes what nothing else uses: the name untagged
    /// and the digests deleted.
    pub fn remove(&mut self, name: &str) -> Result<(String, Vec<String>)> {
        let names = vec![name.to_owned()];
        let r = self.call(|mut c| async move { c.remove(pb::RemoveRequest { names }).await })?;
        Ok((r.untagged.concat(), r.deleted))
    }

    /// The digests deleted and the bytes reclaimed.
    pub fn prune(&mut self, all: bool, keep_storage: u64) -> Result<(Vec<String>, u64)> {
        let request = pb::PruneRequest { all, keep_storage };
        let r = self.call(|mut c| async move { c.prune(request).await })?;
        Ok((r.deleted, r.reclaimed))
    }

    pub fn list_workers(&mut self) -> Result<Vec<pb::Worker>> {
        let r =
            self.call(|mut c| async move { c.list_workers(pb::ListWorkersRequest {}).await })?;
        Ok(r.workers)
    }

    pub fn disk_usage(&mut self) -> Result<kiln_image::images::Usage> {
        let r = self.call(|mut c| async move { c.disk_usage(pb::DiskUsageRequest {}).await })?;
        Ok(kiln_daemon::control::usage_of(r))
    }

    pub fn pull(&mut self, request: pb::PullRequest) -> Result<pb::PullResponse> {
        self.call(|mut c| async move { c.pull(request).await })
    }

    pub fn push(&mut self, request: pb::PushRequest) -> Result<pb::PushResponse> {
        self.call(|mut c| async move { c.push(request).await })
    }

    /// Images' config, layers and sizes as JSON (`kiln inspect`).
    pub fn inspect(&mut self, names: Vec<String>) -> Result<String> {
        self.inspect_platform(names, String::new())
    }

    /// [`Client::inspect`]; of a multi-platform image, `platform`'s entry
    /// (`os/arch`; empty: kilnd's, else the first it holds).
    pub fn inspect_platform(&mut self, names: Vec<String>, platform: String) -> Result<String> {
        let request = pb::InspectRequest { names, platform };
        let r = self.call(|mut c| async move { c.inspect(request).await })?;
        Ok(r.json)
    }

    /// Where the streamed calls of [`files`] run.
    fn parts(&mut self) -> (&tokio::runtime::Runtime, ControlClient<Channel>) {
        (&self.runtime, self.client.clone())
    }

    /// kilnd's address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}
