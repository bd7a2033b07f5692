//! The worker token: a shared secret read from a file only its owner can
//! read (as ssh treats a private key), sent as metadata with every farm
//! call (`Attach`, `ReadBlob`, `WriteBlob`) and checked on each in
//! constant time. Without `--worker-token-file`, kilnd's farm is guarded
//! by its listener alone (the 0660 socket, or mutual TLS).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq as _;
use thiserror::Error;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key that carries the token.
pub const METADATA_KEY: &str = "x-kiln-worker-token";

/// Why a token file is refused.
#[derive(Debug, Error)]
pub enum TokenError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} has mode {mode:04o}: a token file must not be readable by others (chmod 600 {path})"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path} belongs to uid {uid}: a token file must be this user's or root's")]
    Owner { path: PathBuf, uid: u32 },
    #[error("{path}: the token must be printable ASCII without spaces, and not empty")]
    Text { path: PathBuf },
}

/// The worker token in `file` (kilnd's `--worker-token-file`, a worker's
/// `--token-file`), without surrounding white space. The file must belong
/// to this user (or root) and give no access to its group or others.
pub fn read_token(file: &Path) -> Result<String, TokenError> {
    let read = |source| TokenError::Read {
        path: file.to_owned(),
        source,
    };
    let meta = std::fs::metadata(file).map_err(read)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: file.to_owned(),
            mode,
        });
    }
    // /proc/self belongs to the effective user.
    let me = std::fs::metadata("/proc/self").map_err(read)?.uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(TokenError::Owner {
            path: file.to_owned(),
            uid: meta.uid(),
        });
    }
    let token = std::fs::read_to_string(file)
        .map_err(read)?
        .trim()
        .to_owned();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Text {
            path: file.to_owned(),
        });
    }
    Ok(token)
}

/// Whether `given` is `expected`, in time that depends on neither: both
/// are hashed first, so not even the length shows.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (
        kiln_cache::Digest::of(expected.as_bytes()),
        kiln_cache::Digest::of(given.as_bytes()),
    );
    a.hex().as_bytes().ct_eq(b.hex().as_bytes()).into()
}

/// kilnd's check on every farm call: the token, when kilnd has one.
#[derive(Debug, Clone)]
pub struct RequireToken(Option<Arc<str>>);

impl RequireToken {
    pub fn new(token: Option<&str>) -> Self {
        Self(token.map(Arc::from))
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get(METADATA_KEY)
            .and_then(|v| v.to_str().ok());
        match given {
            Some(given) if matches(expected, given) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "the worker's token is not kilnd's --worker-token",
            )),
            None => Err(Status::unauthenticated(
                "kilnd has a --worker-token: every farm call must carry it",
            )),
        }
    }
}

/// A worker's side: the token on every call it makes.
#[derive(Debug, Clone)]
pub struct SendToken(Option<MetadataValue<Ascii>>);

impl SendToken {
    /// `None` when the token cannot travel as metadata (not printable
    /// ASCII; [`read_token`] refuses those).
    pub fn new(token: Option<&str>) -> Option<Self> {
        match token {
            None => Some(Self(None)),
            Some(t) => MetadataValue::try_from(t).ok().map(|v| Self(Some(v))),
        }
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(METADATA_KEY, value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token(&file).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_token(&file).is_err());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&file).unwrap(), "s3cret");
        std::fs::write(&file, "two words").unwrap();
        assert!(matches!(read_token(&file), Err(TokenError::Text { .. })));
    }

    #[test]
    fn tokens_match_only_themselves() {
        assert!(matches("abc", "abc"));
        assert!(!matches("abc", "abd"));
        assert!(!matches("abc", "abcd"));
        assert!(!matches("abc", ""));
    }

    #[test]
    fn every_call_needs_the_token() {
        let mut check = RequireToken::new(Some("s3cret"));
        assert_eq!(
            check.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut send = SendToken::new(Some("wrong")).unwrap();
        let wrong = send.call(Request::new(())).unwrap();
        assert!(check.call(wrong).is_err());
        let mut send = SendToken::new(Some("s3cret")).unwrap();
        let right = send.call(Request::new(())).unwrap();
        assert!(check.call(right).is_ok());
        assert!(RequireToken::new(None).call(Request::new(())).is_ok());
    }
}
