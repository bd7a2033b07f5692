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
    /// The query form (`?ref=…&subdir=…`, Dockerfile 1.18), as BuildKit's
    /// `dfgitutil` reads it.
    #[error("Git source {url:?}: {why}")]
    Query { url: String, why: String },
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
    /// `?keep-git-dir=`: keep `.git` in the result.
    pub keep_git_dir: Option<bool>,
    /// `?checksum=` (or `?commit=`): the commit the ref must be.
    pub checksum: Option<String>,
}

/// The transports a Dockerfile's Git source may use (`git`'s protocol
/// names, as `GIT_ALLOW_PROTOCOL` takes them).
pub const ALLOWED_PROTOCOLS: &[&str] = &["https", "http", "ssh", "git"];

/// BuildKit's test for a Git source in ADD: a Git transport, or an HTTP(S)
/// URL whose path (before any query or fragment) ends in `.git`.
pub fn is_git_url(s: &str) -> bool {
    let path = s.split(['#', '?']).next().unwrap_or(s);
    s.starts_with("git://")
        || s.starts_with("git@")
        || s.starts_with("ssh://")
        || s.starts_with("github.com/")
        || ((s.starts_with("http://") || s.starts_with("https://")) && path.ends_with(".git"))
}

/// Splits and checks `url`: `REMOTE[#REF[:SUBDIR]]`, or the query form
/// `REMOTE?ref=REF&subdir=DIR` (also `tag=`, `branch=`, `checksum=` or
/// `commit=`, `keep-git-dir=`).
pub fn parse(url: &str) -> Result<GitRef, GitRefError> {
    let (rest, fragment) = url.split_once('#').unwrap_or((url, ""));
    let (remote, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let remote = match remote.strip_prefix("github.com/") {
        Some(path) => format!("https://github.com/{path}"),
        None => remote.to_owned(),
    };
    let mut parsed = GitRef {
        remote,
        reference: reference.to_owned(),
        subdir: subdir.to_owned(),
        keep_git_dir: None,
        checksum: None,
    };
    if !query.is_empty() {
        load_query(&mut parsed, query).map_err(|why| GitRefError::Query {
            url: url.to_owned(),
            why,
        })?;
    }
    check(&parsed.remote, &parsed.reference, &parsed.subdir)?;
    if let Some(sum) = &parsed.checksum {
        plain("checksum", sum)?;
    }
    Ok(parsed)
}

/// The query's settings into `r`, with BuildKit's rules: each key once
/// and with a value (the switches may go without), a ref given twice must
/// agree, `tag` and `branch` are refs under `refs/tags/` and `refs/heads/`
/// and not both.
fn load_query(r: &mut GitRef, query: &str) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    let (mut tag, mut branch) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key)?;
        let value = decode(value)?;
        if !seen.insert(key.clone()) {
            return Err(format!("query {key:?} has multiple values"));
        }
        let switch = matches!(
            key.as_str(),
            "keep-git-dir" | "submodules" | "fetch-by-commit"
        );
        if value.is_empty() && !switch {
            return Err(format!("query {key:?} has no value"));
        }
        match key.as_str() {
            "ref" => {
                agree(&r.reference, &value, "ref")?;
                r.reference = value;
            }
            "tag" => tag = Some(value),
            "branch" => branch = Some(value),
            "subdir" => {
                agree(&r.subdir, &value, "subdir")?;
                r.subdir = value;
            }
            "checksum" | "commit" => r.checksum = Some(value),
            "keep-git-dir" => r.keep_git_dir = Some(boolean(&key, &value)?),
            "submodules" | "mtime" | "fetch-by-commit" => {
                return Err(format!("query {key:?} is not supported by kiln yet"));
            }
            _ => return Err(format!("unexpected query {key:?}")),
        }
    }
    if let (Some(_), Some(_)) = (&tag, &branch) {
        return Err("branch conflicts with tag".to_owned());
    }
    for (name, prefix) in [(tag, "refs/tags/"), (branch, "refs/heads/")] {
        if let Some(name) = name {
            let full = if name.starts_with(prefix) {
                name
            } else {
                format!("{prefix}{name}")
            };
            agree(&r.reference, &full, "ref")?;
            r.reference = full;
        }
    }
    Ok(())
}

/// A setting given twice (fragment and query, `ref` and `tag`) must agree.
fn agree(old: &str, new: &str, what: &str) -> Result<(), String> {
    if old.is_empty() || old == new {
        Ok(())
    } else {
        Err(format!("{what} conflicts: {old:?} vs {new:?}"))
    }
}

/// A switch's value: empty is true, else Go's `strconv.ParseBool` words.
fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("invalid {key} value: {value:?}")),
    }
}

/// A query component, `%XX` and `+` decoded (as Go's `url.ParseQuery`).
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.replace('+', " ");
    percent_encoding::percent_decode_str(&bytes)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
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
    fn query_form() {
        let r = parse("https://example.com/a/b.git?ref=v1.2&subdir=docs/x").unwrap();
        assert_eq!(r.remote, "https://example.com/a/b.git");
        assert_eq!(
            (r.reference.as_str(), r.subdir.as_str()),
            ("v1.2", "docs/x")
        );
        let r = parse("https://example.com/b.git?tag=v1&keep-git-dir&checksum=abc").unwrap();
        assert_eq!(r.reference, "refs/tags/v1");
        assert_eq!(r.keep_git_dir, Some(true));
        assert_eq!(r.checksum.as_deref(), Some("abc"));
        let r = parse("git@github.com:o/r.git?branch=main").unwrap();
        assert_eq!(
            (r.remote.as_str(), r.reference.as_str()),
            ("git@github.com:o/r.git", "refs/heads/main")
        );
        assert!(is_git_url("https://example.com/b.git?ref=main"));
        assert!(!is_git_url("https://example.com/b.tar?x=.git"));
        for bad in [
            "https://e.com/b.git?ref=a&ref=b",
            "https://e.com/b.git?ref=",
            "https://e.com/b.git?tag=a&branch=b",
            "https://e.com/b.git?nope=1",
            "https://e.com/b.git?keep-git-dir=maybe",
            "https://e.com/b.git?ref=--upload-pack%3Dx",
            "https://e.com/b.git?submodules",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(
            parse("https://e.com/b.git#main?x").is_ok(),
            "a `?` in the fragment is the ref's"
        );
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
