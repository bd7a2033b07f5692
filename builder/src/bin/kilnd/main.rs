//! `kilnd`: kiln's build service. Serves the control API
//! (`kiln.control.v1`) over a Unix socket (default
//! `/run/kiln/kilnd.sock`, mode 0660) or TCP with mutual TLS (plain TCP
//! only with `--insecure`, on loopback); gRPC health (`grpc.health.v1`) and server reflection.
//! `kiln-worker`s attach on the same address (`kiln.farm.v1`) and run RUN
//! steps. SIGTERM or Ctrl-C stops taking calls, detaches the workers, and
//! lets running builds finish.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use kiln_daemon::control::{Collector, ControlService};
use kiln_daemon::farm::token::RequireToken;
use kiln_daemon::farm::{Farm, FarmService};
use kiln_proto::control::v1::control_server::ControlServer;
use kiln_proto::farm::v1::farm_server::FarmServer;
use kiln_registry::InsecureRegistries;
use kiln_solver::entitlements::Entitlements;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::interceptor::InterceptedService;

#[derive(Parser)]
#[command(name = "kilnd", version, about = "kiln's build service (gRPC)")]
struct Args {
    /// The store (images, build cache); default as the `kiln` CLI's.
    #[arg(long, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    /// Where to listen: `unix:///PATH` or `tcp://HOST:PORT` (TCP needs --insecure and a loopback host).
    #[arg(long = "addr", default_value = "unix:///run/kiln/kilnd.sock")]
    addr: String,
    /// Allow plain (unencrypted) TCP; only on loopback.
    #[arg(long)]
    insecure: bool,
    /// TCP with mutual TLS: kilnd's certificate (PEM)…
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// …its key (PEM)…
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// …and the CA that client certificates must be signed by.
    #[arg(long, value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// A file holding the token `kiln-worker`s must present to attach
    /// (besides the socket's permissions or mTLS).
    #[arg(long, value_name = "FILE")]
    worker_token_file: Option<PathBuf>,
    /// After builds, keep the store under SIZE (`20GB`, `512MiB`) by
    /// deleting unused build cache, least recently used first; `off`: only
    /// `kiln prune` deletes. Default: a tenth of the root's filesystem.
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
    /// Let builds that ask (`kiln build --allow`) have this entitlement:
    /// `network.host` (`RUN --network=host`), `security.insecure` (`RUN
    /// --security=insecure`: a privileged step, root on this machine).
    /// Repeated, or a comma-separated list; none by default.
    #[arg(long = "allow-insecure-entitlement", value_name = "ENTITLEMENT")]
    allow_insecure_entitlement: Vec<String>,
    /// Let clients that ask (`kiln --addr … build|pull|push
    /// --insecure-registry HOST`) have this registry (`host` — every port
    /// — or `host:port`) spoken to over plain HTTP, with kilnd's
    /// credentials in clear. A client's host outside this list is refused
    /// before anything is fetched. The list only allows: a registry is
    /// plain HTTP for the clients that ask for it, HTTPS for the others.
    /// Loopback registries are plain HTTP always. Repeated; none by default.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registry: Vec<String>,
}

/// `--keep-storage` in bytes; `None`: off.
fn keep_storage(args: &Args, store: &kiln_cache::Store) -> Result<Option<u64>> {
    match args.keep_storage.as_deref() {
        Some("off") => Ok(None),
        Some(text) => Ok(Some(
            kiln_image::images::parse_size(text).context("--keep-storage (a size, or off)")?,
        )),
        // BuildKit's default: 10% of the disk.
        None => Ok(Some(store.filesystem_size()? / 10)),
    }
}

enum Listen {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

fn listen_of(args: &Args) -> Result<Listen> {
    if let Some(path) = args.addr.strip_prefix("unix://") {
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    if let Some(hostport) = args.addr.strip_prefix("tcp://") {
        let addr: std::net::SocketAddr = hostport
            .parse()
            .with_context(|| format!("--addr {}: expected tcp://IP:PORT", args.addr))?;
        if args.tls_cert.is_none() && (!args.insecure || !addr.ip().is_loopback()) {
            bail!(
                "--addr {}: TCP needs mutual TLS (--tls-cert, --tls-key, --tls-ca); plain TCP only with --insecure on a loopback address",
                args.addr
            );
        }
        return Ok(Listen::Tcp(addr));
    }
    bail!(
        "--addr {}: expected unix:///PATH or tcp://HOST:PORT",
        args.addr
    )
}

/// Listens on the Unix socket `path` with mode 0660 from its first moment:
/// bound in a new 0700 directory beside it (nobody else can connect
/// there), made 0660, then renamed to `path` (replacing a dead kilnd's).
/// A bind at `path` and a chmod after it would leave a window in which
/// the socket has the umask's mode.
fn bind_private(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let private = tempfile::Builder::new()
        .prefix(".kilnd-bind-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a directory in {}", dir.display()))?;
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))?;
    let staged = private.path().join("kilnd.sock");
    let listener = tokio::net::UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))?;
    std::fs::rename(&staged, path)?;
    Ok(listener)
}

#[tokio::main]
async fn main() -> Result<()> {
    kiln_builder::init_logs("info");
    kiln_builder::raise_file_limit();
    let args = Args::parse();
    let root = args.root.clone().unwrap_or_else(kiln_cache::default_root);
    let listen = listen_of(&args)?;
    let grants = Grants::of(&args)?;
    // One process owns a store root (its lock); kilnd holds it while it runs.
    let store = tokio::task::spawn_blocking(move || kiln_cache::Store::open(&root))
        .await?
        .context("opening the store")?;
    std::fs::create_dir_all(store.root().join("tmp"))?;
    let token = args
        .worker_token_file
        .as_deref()
        .map(|file| {
            kiln_daemon::farm::read_token(file)
                .with_context(|| format!("--worker-token-file {}", file.display()))
        })
        .transpose()?;
    let keep = keep_storage(&args, &store)?;
    tracing::info!(
        keep_storage = keep.map_or_else(|| "off".to_owned(), |k| k.to_string()),
        "the store is kept under --keep-storage after builds"
    );
    let store = Arc::new(store);
    let require_token = RequireToken::new(token.as_deref());
    let farm = Farm::new(token);
    let service = ControlService::new(Arc::clone(&store), Arc::clone(&farm), Collector::new(keep))
        .with_insecure_entitlements(grants.entitlements)
        .with_insecure_registries(grants.registries);
    let farm_service = FarmService::new(store, Arc::clone(&farm));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ControlServer<ControlService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kiln_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls_config(&args)? {
        server = server.tls_config(tls).context("the TLS configuration")?;
    }
    let router = server
        .add_service(health)
        .add_service(reflection)
        .add_service(ControlServer::new(service).max_decoding_message_size(64 << 20))
        .add_service(InterceptedService::new(
            FarmServer::new(farm_service).max_decoding_message_size(64 << 20),
            require_token,
        ));
    serve(router, listen, stopped(farm), args.tls_cert.is_some()).await
}

/// What kilnd's operator allows a client to ask for, each logged when it
/// is not nothing.
struct Grants {
    /// `--allow-insecure-entitlement`
    entitlements: Entitlements,
    /// `--insecure-registry`
    registries: InsecureRegistries,
}

impl Grants {
    fn of(args: &Args) -> Result<Self> {
        let entitlements = Entitlements::from_flag(
            "--allow-insecure-entitlement",
            &args.allow_insecure_entitlement,
        )?;
        let registries =
            InsecureRegistries::from_flag("--insecure-registry", &args.insecure_registry)?;
        if !entitlements.is_empty() {
            tracing::warn!(
                entitlements = entitlements.names().join(","),
                "builds that ask may have these insecure entitlements (--allow-insecure-entitlement)"
            );
        }
        if !registries.is_empty() {
            tracing::warn!(
                registries = registries.hosts().join(","),
                "clients that ask may have these registries spoken to over plain HTTP (--insecure-registry)"
            );
        }
        Ok(Self {
            entitlements,
            registries,
        })
    }
}

/// Mutual TLS from `--tls-cert`, `--tls-key` and `--tls-ca`: clients must
/// present a certificate the CA signed. `None` without them.
fn tls_config(args: &Args) -> Result<Option<tonic::transport::ServerTlsConfig>> {
    let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca) else {
        return Ok(None);
    };
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    Ok(Some(
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?)),
    ))
}

/// Resolves on SIGTERM or Ctrl-C, having closed the farm: no new calls are
/// taken, running builds finish.
async fn stopped(farm: Arc<Farm>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: no new calls; running builds finish");
    // Workers' sessions would keep the server up; their steps run here.
    farm.close();
}

/// Serves `router` on `listen` until `shutdown`; a Unix socket is removed
/// after.
async fn serve(
    router: tonic::transport::server::Router,
    listen: Listen,
    shutdown: impl std::future::Future<Output = ()>,
    tls: bool,
) -> Result<()> {
    match listen {
        Listen::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            // A socket left by a kilnd that died: nobody answers on it.
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                bail!(
                    "listening on {}: another kilnd answers there",
                    path.display()
                );
            }
            let listener =
                bind_private(&path).with_context(|| format!("listening on {}", path.display()))?;
            tracing::info!(socket = %path.display(), "kilnd ready");
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await?;
            let _ = std::fs::remove_file(&path);
        }
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            tracing::info!(%addr, tls, "kilnd ready");
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await?;
        }
    }
    Ok(())
}
