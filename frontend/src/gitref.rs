//! Git sources of `ADD` (`REMOTE[#REF[:SUBDIR]]`): which remotes a
//! Dockerfile may name, and their canonical form.
//!
//! A Dockerfile comes from whoever wrote it, and its Git source ends up on
//! `git`'s command line on the build host. So, as BuildKit's `gitutil`:
//! `github.com/OWNER/REPO` means `https://github.com/OWNER/REPO` (never a
//! local directory of that name), only network transports are accepted
//! (`https`, `http`, `ssh`, `git`, and scp-like `user@host:path`) — never a
//! local path, `file://` or a `transport::address` helper such as `ext::`,
//! which runs a command — and no remote, ref or subdirectory may start with
//! `-` (`git` would take it for an option) or hold a control character or
//! white space. The solver checks again before it runs `git` (the graph
//! may come from elsewhere) and tells `git` itself to allow only these
//! transports.

use thiserror::Error;

/// What is wrong with a Git source.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GitRefError {
    #[error(
        "Git remote {0:?}: only https://, http://, ssh://, git:// and user@host:path remotes are allowed (no local paths, file:// or transport helpers)"
    )]
    Transport(String),
    #[error("Git {what} {value:?} must not start with '-'")]
    Dash { what: &'static str, value: String },
    #[error("Git {what} {value:?} holds a control character or white space")]
    Control { what: &'static str, value: String },
}

/// A parsed Git source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRef {
    /// The remote as `git` is given it (`github.com/…` made `https://`).
    pub remote: String,
    /// Branch, tag or commit; empty for the remote's HEAD.
    pub reference: String,
    /// A directory of the checkout; empty for all of it.
    pub subdir: String,
}

/// The transports a Dockerfile's Git source may use (`git`'s protocol
/// names, as `GIT_ALLOW_PROTOCOL` takes them).
pub const ALLOWED_PROTOCOLS: &[&str] = &["https", "http", "ssh", "git"];

/// BuildKit's test for a Git source in ADD.
pub fn is_git_url(s: &str) -> bool {
    let without_fragment = s.split('#').next().unwrap_or(s);
    s.starts_with("git://")
        || s.starts_with("git@")
        || s.starts_with("ssh://")
        || s.starts_with("github.com/")
        || ((s.starts_with("http://") || s.starts_with("https://"))
            && without_fragment.ends_with(".git"))
}

/// Splits and checks `url` (`REMOTE[#REF[:SUBDIR]]`).
pub fn parse(url: &str) -> Result<GitRef, GitRefError> {
    let (remote, fragment) = url.split_once('#').unwrap_or((url, ""));
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let remote = match remote.strip_prefix("github.com/") {
        Some(path) => format!("https://github.com/{path}"),
        None => remote.to_owned(),
    };
    let parsed = GitRef {
        remote,
        reference: reference.to_owned(),
        subdir: subdir.to_owned(),
    };
    check(&parsed.remote, &parsed.reference, &parsed.subdir)?;
    Ok(parsed)
}

/// Checks a Git source's parts: see the module's documentation.
pub fn check(remote: &str, reference: &str, subdir: &str) -> Result<(), GitRefError> {
    plain("remote", remote)?;
    plain("ref", reference)?;
    plain("subdirectory", subdir)?;
    check_remote(remote)
}

/// Not starting with `-`, no control characters or white space.
fn plain(what: &'static str, value: &str) -> Result<(), GitRefError> {
    if value.starts_with('-') {
        return Err(GitRefError::Dash {
            what,
            value: value.to_owned(),
        });
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(GitRefError::Control {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// A URL of an allowed scheme with a host, or scp-like `user@host:path`.
fn check_remote(remote: &str) -> Result<(), GitRefError> {
    let refused = || GitRefError::Transport(remote.to_owned());
    let host_ok = |host: &str| !host.is_empty() && !host.starts_with('-');
    if let Some((scheme, rest)) = remote.split_once("://") {
        if !ALLOWED_PROTOCOLS.contains(&scheme.to_ascii_lowercase().as_str()) {
            return Err(refused());
        }
        let authority = rest.split('/').next().unwrap_or("");
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        return if host_ok(host) {
            Ok(())
        } else {
            Err(refused())
        };
    }
    // scp-like: `user@host:path`, the host before the first `:`, no `/`
    // before it (else git takes it for a local path).
    let (user_host, path) = remote.split_once(':').ok_or_else(refused)?;
    let (user, host) = user_host.split_once('@').ok_or_else(refused)?;
    if user.is_empty() || !host_ok(host) || host.contains('/') || path.starts_with(':') {
        return Err(refused());
    }
    if path.starts_with('-') {
        return Err(GitRefError::Dash {
            what: "path",
            value: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_short_form_is_https() {
        let r = parse("github.com/moby/buildkit#v0.10.1:docs").unwrap();
        assert_eq!(r.remote, "https://github.com/moby/buildkit");
        assert_eq!(
            (r.reference.as_str(), r.subdir.as_str()),
            ("v0.10.1", "docs")
        );
    }

    #[test]
    fn allowed_remotes() {
        for ok in [
            "https://example.com/a/b.git",
            "http://127.0.0.1:8080/repo.git",
            "git://example.com/repo.git",
            "ssh://git@example.com/repo.git",
            "git@github.com:moby/buildkit.git",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refused_remotes() {
        for bad in [
            "/srv/repo.git",
            "./repo",
            "repo",
            "file:///srv/repo.git",
            "ext::sh -c touch% /tmp/p",
            "ext::sh",
            "fd::3",
            "ssh://-oProxyCommand=x/repo",
            "git@-oProxyCommand=x:repo",
            "git@host:-repo",
            "ftp://example.com/repo.git",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_and_control_characters_in_refs() {
        let e = parse("github.com/x#--upload-pack=touch /tmp/p;false").unwrap_err();
        assert!(matches!(e, GitRefError::Dash { what: "ref", .. }), "{e}");
        let e = parse("github.com/x/y#main:-x").unwrap_err();
        assert!(
            matches!(
                e,
                GitRefError::Dash {
                    what: "subdirectory",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse("github.com/x/y#ma\u{1b}in").unwrap_err();
        assert!(matches!(e, GitRefError::Control { what: "ref", .. }), "{e}");
        let e = parse("github.com/x/y#main:d\nx").unwrap_err();
        assert!(matches!(e, GitRefError::Control { .. }), "{e}");
    }
}
