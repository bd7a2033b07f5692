//! `kiln-worker`: a machine of the build farm. Attaches to kilnd (the same
//! address the CLI uses: a Unix socket, or TCP with mutual TLS), runs the
//! RUN steps kilnd sends in its own sandbox over its own store, and sends
//! back the layers they make. When kilnd goes away it attaches again,
//! waiting longer each time (up to 30 s).
//!
//! SIGTERM or Ctrl-C drains it: kilnd places no new step here, the running
//! steps finish (their layers reach kilnd), and it exits 0 — so scaling a
//! farm down loses no work. The drain is bounded by `--drain-timeout`; a
//! second signal stops at once. Either way the steps still running are
//! cancelled and kilnd runs them elsewhere.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use kiln_daemon::farm::attach::{AttachError, Phase, WorkerConfig, serve};
use tokio::sync::watch;

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
    /// How long a drain may last. SIGTERM (or Ctrl-C) drains the worker:
    /// kilnd sends it no new steps, the running ones finish and it exits 0.
    /// After this long (e.g. 90s, 10m, 1h) the steps still running are
    /// cancelled, kilnd runs them elsewhere as for a lost worker, and it
    /// exits 1. A second SIGTERM or Ctrl-C stops at once the same way (exit
    /// 0). Give a pod a terminationGracePeriodSeconds above this.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = drain_timeout)]
    drain_timeout: Duration,
}

/// `--drain-timeout`: a Go duration (as Kubernetes and Docker write them),
/// above zero.
fn drain_timeout(text: &str) -> Result<Duration, String> {
    let nanos = kiln_frontend::instructions::parse_go_duration(text)
        .map_err(|e| format!("{e} (e.g. 90s, 10m, 1h)"))?;
    let nanos = u64::try_from(nanos)
        .ok()
        .filter(|n| *n > 0)
        .ok_or("a drain needs a timeout above zero")?;
    Ok(Duration::from_nanos(nanos))
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

    let (phase_tx, phase) = watch::channel(Phase::Run);
    let timed_out = std::cell::Cell::new(false);
    let attach = async {
        let mut wait = Duration::from_secs(1);
        loop {
            let mut asked = phase.clone();
            let session = async {
                let channel = tokio::select! {
                    channel = kiln_daemon::control::channel(&args.kilnd, tls.clone()) => channel?,
                    // Not attached: there is nothing to drain.
                    _ = asked.wait_for(|p| *p != Phase::Run) => return Ok(()),
                };
                serve(Arc::clone(&store), channel, &config, phase.clone()).await?;
                anyhow::Ok(())
            };
            let started = std::time::Instant::now();
            let ended = session.await;
            if *phase.borrow() != Phase::Run {
                return stopped(ended, timed_out.get(), args.drain_timeout);
            }
            if let Err(e) = ended {
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
            let mut asked = phase.clone();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = asked.wait_for(|p| *p != Phase::Run) => return Ok(()),
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    };
    let signals = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!(
            "draining (at most {}); a second SIGTERM or Ctrl-C stops at once",
            humane(args.drain_timeout)
        );
        let _ = phase_tx.send(Phase::Drain);
        tokio::select! {
            _ = term.recv() => tracing::info!("stopping at once"),
            _ = tokio::signal::ctrl_c() => tracing::info!("stopping at once"),
            () = tokio::time::sleep(args.drain_timeout) => timed_out.set(true),
        }
        let _ = phase_tx.send(Phase::Stop);
        // The session ends and `attach` returns.
        std::future::pending::<Result<()>>().await
    };
    tokio::select! {
        ended = attach => ended,
        failed = signals => failed,
    }
}

/// How a session asked to drain ended: `Ok` once drained (or stopped at
/// once by a second signal, as that asks), an error when the drain timed
/// out or kilnd went away in the middle of it.
fn stopped(ended: Result<()>, timed_out: bool, timeout: Duration) -> Result<()> {
    match ended {
        Ok(()) => {
            tracing::info!("drained; stopping");
            Ok(())
        }
        Err(e) if timed_out => Err(e.context(format!(
            "the drain outlasted --drain-timeout {}",
            humane(timeout)
        ))),
        Err(e) if matches!(e.downcast_ref(), Some(AttachError::Stopped(_))) => {
            tracing::warn!("{e}");
            Ok(())
        }
        Err(e) => Err(e.context("the session with kilnd ended mid-drain")),
    }
}

/// A duration as a person reads it (`10m`, `90s`, `1.5s`).
fn humane(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if d.subsec_nanos() == 0 && d.as_secs().is_multiple_of(60) && d.as_secs() > 0 {
        format!("{}m", d.as_secs() / 60)
    } else {
        format!("{secs}s")
    }
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
