//! kiln's binaries — `kiln` (embedded, or kilnd's client), `kilnd` and
//! `kiln-worker` — and kilnd's client library ([`client`]), which a Rust
//! CI job can use as the CLI does.
//!
//! Does not own: what a build or an image command does; the crates by role
//! do (`kiln-solver`, `kiln-image`, `kiln-registry`, `kiln-daemon`).

pub mod client;

/// Logs (`tracing`) to standard error, filtered by `KILN_LOG` (e.g.
/// `debug`, `kiln_daemon::farm=debug`), else at `default`: one setup for
/// every kiln binary.
pub fn init_logs(default: &str) {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        // Colours on a terminal only: a daemon's log usually goes to a file
        // or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
