//! kiln's image model and what reads and writes it: OCI images and layers
//! in the store ([`image`]), layer blobs a build leaves unwritten until
//! something reads them ([`blobs`]), layer compression and verification
//! ([`compress`]), `docker save`/`load`/`import` archives ([`archive`]), a
//! built image's `-o` outputs ([`output`]) and the image commands' logic
//! (`images`, `inspect`, `tag`, `rmi`, `prune`, `du`: [`images`]).
//!
//! Does not own: building (`kiln-solver`), registries (`kiln-registry`),
//! the network or async code: everything here is blocking file work on one
//! store, which callers run on threads of their own.

pub mod archive;
pub mod blobs;
pub mod compress;
pub mod estargz;
pub mod image;
pub mod images;
pub mod output;

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

/// What a caught panic said (`panic!` with a literal or a formatted
/// message), for an "internal error" that ends one step or one request
/// instead of the process.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::{error_chain, panic_message};

    #[test]
    fn a_panic_says_its_message() {
        let literal = std::panic::catch_unwind(|| panic!("a literal")).unwrap_err();
        assert_eq!(panic_message(&*literal), "a literal");
        let n = 3;
        let formatted = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_message(&*formatted), "formatted 3");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(panic_message(&*other), "a panic");
    }

    #[test]
    fn a_cause_the_message_quotes_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading /ctx/Dockerfile: {0}")]
        struct Quoted(#[source] std::io::Error);
        let quoted = Quoted(std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
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
