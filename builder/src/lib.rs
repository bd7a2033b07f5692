//! kiln's builder: everything between a build request and an image.
//!
//! Owns: the build context on the client side ([`context`]: the Dockerfile
//! and `.dockerignore` lookup), the solver ([`solve`]), building an image
//! ([`build`], [`compress`]), the image model ([`image`]), archives
//! ([`archive`]), outputs ([`output`]), the image commands ([`images`]) and
//! the registry client ([`registry`]), kilnd's control service
//! ([`control`]) and its client library ([`client`]), one build from a
//! typed request to an image ([`pipeline`]), the build farm ([`farm`]: kilnd's side and the
//! worker's) and who may run privileged or host-network steps
//! ([`entitlements`]), with the `kiln`, `kilnd` and `kiln-worker` binaries on top.
//!
//! Does not own: Dockerfile semantics (`kiln-frontend`), running ops
//! (`kiln-worker`), or storage (`kiln-cache`).

pub mod archive;
pub mod build;
pub mod client;
pub mod compress;
pub mod context;
pub mod control;
pub mod entitlements;
pub mod farm;
pub mod fetch;
pub mod image;
pub mod images;
pub mod output;
pub mod pipeline;
pub mod registry;
pub mod solve;

/// Logs (`tracing`) to standard error, filtered by `KILN_LOG` (e.g.
/// `debug`, `kiln_builder::farm=debug`), else at `default`: one setup for
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

/// An error and its causes on one line (an HTTP client's own message alone
/// says only "error sending request"); a cause a message already quotes is
/// not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn a_cause_the_message_quotes_is_not_repeated() {
        let quoted = crate::context::ContextError::Read {
            path: "/ctx/Dockerfile".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(error_chain(&quoted), "reading /ctx/Dockerfile: gone");
        #[derive(Debug, thiserror::Error)]
        #[error("sending the request")]
        struct Outer(#[source] std::io::Error);
        let unquoted = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            error_chain(&unquoted),
            "sending the request: connection refused"
        );
    }
}
