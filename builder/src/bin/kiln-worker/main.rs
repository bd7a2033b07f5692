//! `kiln-worker`: a machine of the build farm. Attaches to kilnd (the same
//! address the CLI uses: a Unix socket, or TCP with mutual TLS), runs the
//! RUN steps kilnd sends in its own sandbox over its own store, and sends
//! back the layers they make. When kilnd goes away it attaches again,
//! waiting longer each time (up to 30 s); SIGTERM or Ctrl-C stops it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use kiln_daemon::farm::attach::{WorkerConfig, serve};

#[derive(Parser)]
#[command(name = "kiln-worker", version, about = "a worker of kiln's build farm")]
struct Args {
    /// This worker's store (layers, snapshots, cache mounts); not kilnd's.
    #[arg(long, env = "KILN_WORKER_ROOT", default_value = "/var/lib/kiln-worker")]
    root: PathBuf,
    /// kilnd's address: `unix:///PATH` or `tcp://HOST:PORT`.
    #[arg(long, env = "KILN_ADDR", default_value = "unix:///run/kiln/kilnd.sock")]
    kilnd: String,
    /// This worker's name among kilnd's workers (default: the host name).
    #[arg(long)]
    id: Option<String>,
    /// Steps at once (default: twice the CPUs, at least 4).
    #[arg(long)]
    parallelism: Option<u32>,
    /// Keep this worker's store under this size (e.g. 20GB): blobs and the
    /// least recently used unpacked layers go (kilnd holds them all).
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
    /// A file holding kilnd's `--worker-token`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// TCP with mutual TLS: the CA kilnd's certificate is signed by…
    #[arg(long, env = "KILN_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// …this worker's certificate…
    #[arg(long, env = "KILN_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// …and its key.
    #[arg(long, env = "KILN_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Run steps that need this entitlement when their build was granted
    /// it: `network.host`, `security.insecure` (a privileged step, root on
    /// this machine). Repeated, or a comma-separated list; none by default,
    /// whatever kilnd allows.
    #[arg(long = "allow-insecure-entitlement", value_name = "ENTITLEMENT")]
    allow_insecure_entitlement: Vec<String>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

#[tokio::main]
async fn main() -> Result<()> {
    kiln_builder::init_logs("info");
    kiln_builder::raise_file_limit();
    let args = Args::parse();
    let token = args
        .token_file
        .as_deref()
        .map(|file| {
            kiln_daemon::farm::read_token(file)
                .with_context(|| format!("--token-file {}", file.display()))
        })
        .transpose()?;
    let config = WorkerConfig {
        id: args.id.clone().unwrap_or_else(host_name),
        parallelism: args.parallelism.unwrap_or_else(|| {
            u32::try_from(kiln_solver::solve::parallelism()).unwrap_or(u32::MAX)
        }),
        token,
        keep_storage: args
            .keep_storage
            .as_deref()
            .map(kiln_image::images::parse_size)
            .transpose()
            .context("--keep-storage")?,
        insecure_entitlements: kiln_solver::entitlements::Entitlements::from_flag(
            "--allow-insecure-entitlement",
            &args.allow_insecure_entitlement,
        )?,
    };
    anyhow::ensure!(config.parallelism > 0, "--parallelism must be above 0");
    let tls = match &args.tls_ca {
        Some(ca) => {
            let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
            Some(kiln_daemon::control::client_tls(ca, identity)?)
        }
        None => None,
    };
    let root = args.root.clone();
    let store = tokio::task::spawn_blocking(move || kiln_cache::Store::open(&root))
        .await?
        .with_context(|| format!("opening the worker's store {}", args.root.display()))?;
    std::fs::create_dir_all(store.root().join("tmp"))?;
    let store = Arc::new(store);

    let attach = async {
        let mut wait = Duration::from_secs(1);
        loop {
            let session = async {
                let channel = kiln_daemon::control::channel(&args.kilnd, tls.clone()).await?;
                serve(Arc::clone(&store), channel, &config).await?;
                anyhow::Ok(())
            };
            let started = std::time::Instant::now();
            if let Err(e) = session.await {
                // kilnd refused this worker (its token, its certificate):
                // the same settings will be refused again.
                if refused(&e) {
                    return Err(e.context(format!("kilnd at {} refused this worker", args.kilnd)));
                }
                tracing::warn!(kilnd = args.kilnd, "{e:#}; attaching again in {wait:?}");
            }
            // A session that lasted starts the waiting over.
            if started.elapsed() > Duration::from_secs(30) {
                wait = Duration::from_secs(1);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        refused = attach => return refused,
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    Ok(())
}

/// Whether `e` is kilnd refusing this worker rather than kilnd being
/// away: its token (`Unauthenticated`), or a TLS certificate either side
/// would not take (rustls' alerts and verifier errors name certificates).
fn refused(e: &anyhow::Error) -> bool {
    if e.downcast_ref::<kiln_daemon::farm::attach::AttachError>()
        .is_some_and(kiln_daemon::farm::attach::AttachError::is_refusal)
    {
        return true;
    }
    e.chain().any(|cause| {
        let text = cause.to_string().to_ascii_lowercase();
        text.contains("certificate") || text.contains("unknownca") || text.contains("unknown ca")
    })
}
