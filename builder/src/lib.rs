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

/// Raises this process's soft limit of open files to its hard limit, as Go
/// programs (dockerd, BuildKit) do at start: a layer's tar is read by
/// several threads at once, each holding a few hundred descriptors at
/// most, and kilnd serves many builds. RUN steps inherit the raised limit,
/// as BuildKit's inherit dockerd's, unless `--ulimit` sets theirs.
pub fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let raised = getrlimit(Resource::RLIMIT_NOFILE).and_then(|(soft, hard)| {
        if soft < hard {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        } else {
            Ok(())
        }
    });
    if let Err(e) = raised {
        tracing::debug!("raising the open-file limit: {e}");
    }
}
