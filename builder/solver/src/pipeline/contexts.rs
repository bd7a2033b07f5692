//! `--build-context NAME=VALUE`, as `docker buildx build` takes it: the
//! name checked and normalized as buildx does (`ParseContextNames`), the
//! value one of a directory, `docker-image://REF`, `oci-layout://DIR[:TAG]`
//! or `oci-layout://DIR@sha256:…`, a Git repository or an HTTP(S) URL.
//!
//! `target:STAGE` names a stage of this Dockerfile under the context's
//! name. In buildx it names another target of a bake file (`docker buildx
//! bake`: another build's result); one Dockerfile's results are its
//! stages, so kiln reads it as one of them (`docker buildx build` passes it
//! on to BuildKit's Dockerfile frontend, which refuses it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::request::{RequestError, check_count};

type Result<T> = std::result::Result<T, RequestError>;

const FLAG: &str = "--build-context";

/// A named context as a build takes it: what the client made of the
/// flag's value (a URL fetched, a directory's `.dockerignore` read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A directory of files, and its `.dockerignore` patterns (none for a
    /// fetched Git or HTTP context, as BuildKit applies none to those).
    Dir {
        path: PathBuf,
        dockerignore: Vec<String>,
    },
    /// `docker-image://REF`: the reference, normalized.
    Image(String),
    /// `oci-layout://`: the layout's directory and which image of it.
    OciLayout {
        path: PathBuf,
        /// The tag `index.json` names (`latest` when neither is given).
        tag: Option<String>,
        /// `sha256:…`: wins over the tag.
        digest: Option<String>,
    },
    /// `target:STAGE`: the stage, lower case as stage names are.
    Stage(String),
}

/// What the flag's value says, before anything is read or fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextValue {
    /// A local directory.
    Dir(PathBuf),
    /// `docker-image://REF`, normalized.
    Image(String),
    /// `oci-layout://…`.
    OciLayout {
        path: PathBuf,
        tag: Option<String>,
        digest: Option<String>,
    },
    /// A Git repository (`https://….git#ref:dir`, `git@…`): cloned by the
    /// client, then read as a directory.
    Git(String),
    /// Another HTTP(S) URL: downloaded by the client into a directory as
    /// the one file `context` (BuildKit's `llb.HTTP(url,
    /// Filename("context"))`).
    Url(String),
    /// `target:STAGE`.
    Stage(String),
}

fn invalid(spec: &str, reason: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        flag: FLAG,
        value: spec.to_owned(),
        reason: reason.into(),
    }
}

/// A context name as buildx normalizes it (a familiar image reference
/// without `:latest`); `context` and `scratch` are refused, since
/// BuildKit never reads a named context of either name.
pub fn check_name(name: &str, spec: &str) -> Result<String> {
    if name.eq_ignore_ascii_case("context") || name.eq_ignore_ascii_case("scratch") {
        return Err(invalid(
            spec,
            format!("{name:?} names the build context or the empty image, never a named context"),
        ));
    }
    kiln_frontend::convert::context_key(name).ok_or_else(|| {
        invalid(
            spec,
            format!(
                "invalid context name {name:?}: a name is an image reference (lower-case letters, digits and separators; a registry host, a tag or a digest)"
            ),
        )
    })
}

/// Parses one `NAME=VALUE`: the normalized name and what the value says.
pub fn parse(spec: &str) -> Result<(String, ContextValue)> {
    let (name, value) = spec
        .split_once('=')
        .ok_or_else(|| invalid(spec, "expected NAME=VALUE"))?;
    let name = check_name(name, spec)?;
    if value.is_empty() {
        return Err(invalid(spec, "no value"));
    }
    Ok((name, parse_value(value, spec)?))
}

fn parse_value(value: &str, spec: &str) -> Result<ContextValue> {
    if let Some(reference) = value.strip_prefix("docker-image://") {
        let normalized = kiln_frontend::reference::Reference::parse(reference)
            .map_err(|e| invalid(spec, e.to_string()))?;
        return Ok(ContextValue::Image(normalized.to_string()));
    }
    if let Some(layout) = value.strip_prefix("oci-layout://") {
        return parse_oci_layout(layout, spec);
    }
    if let Some(stage) = value.strip_prefix("target:") {
        return check_stage(stage, spec).map(ContextValue::Stage);
    }
    if kiln_frontend::gitref::is_git_url(value) {
        return Ok(ContextValue::Git(value.to_owned()));
    }
    if value.starts_with("http://") || value.starts_with("https://") {
        return Ok(ContextValue::Url(value.to_owned()));
    }
    Ok(ContextValue::Dir(PathBuf::from(value)))
}

/// A stage name as a Dockerfile's `AS` takes it (BuildKit's
/// `^[a-z][a-z0-9-_.]*$`, case-insensitive), lower-cased.
pub fn check_stage(stage: &str, spec: &str) -> Result<String> {
    let lower = stage.to_ascii_lowercase();
    let ok = lower.starts_with(|c: char| c.is_ascii_lowercase())
        && lower.len() <= 128
        && lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !ok {
        return Err(invalid(spec, format!("{stage:?} is not a stage name")));
    }
    Ok(lower)
}

/// `DIR`, `DIR:TAG`, `DIR@sha256:…` or `DIR:TAG@sha256:…` (buildx's
/// `ocilayout.Parse`: a tag or digest only when it has that form, so a
/// path may hold `:` and `@`); neither: the tag `latest`.
fn parse_oci_layout(text: &str, spec: &str) -> Result<ContextValue> {
    let mut path = text;
    let mut digest = None;
    if let Some((before, after)) = path.rsplit_once('@')
        && let Some(hex) = after.strip_prefix("sha256:")
    {
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid(
                spec,
                "an OCI layout's digest is sha256: and 64 lower-case hex digits",
            ));
        }
        digest = Some(after.to_owned());
        path = before;
    }
    let mut tag = None;
    if let Some((before, after)) = path.rsplit_once(':')
        && is_tag(after)
    {
        tag = Some(after.to_owned());
        path = before;
    }
    if path.is_empty() {
        return Err(invalid(spec, "no OCI layout directory"));
    }
    if tag.is_none() && digest.is_none() {
        tag = Some("latest".to_owned());
    }
    Ok(ContextValue::OciLayout {
        path: PathBuf::from(path),
        tag,
        digest,
    })
}

/// distribution's `TagRegexp`: `[\w][\w.-]{0,127}`.
fn is_tag(text: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// Every `--build-context` of a command line: each name once, at most
/// [`MAX_LIST_ENTRIES`](super::request::MAX_LIST_ENTRIES).
pub fn parse_all(specs: &[String]) -> Result<BTreeMap<String, ContextValue>> {
    check_count(FLAG, specs.len())?;
    let mut contexts = BTreeMap::new();
    for spec in specs {
        let (name, value) = parse(spec)?;
        if contexts.insert(name.clone(), value).is_some() {
            return Err(invalid(spec, format!("the name {name:?} is given twice")));
        }
    }
    Ok(contexts)
}

/// Named contexts as a build takes them (from a command line or a kilnd
/// client alike): within the bound, each name normalized already.
pub fn check(contexts: &BTreeMap<String, NamedContext>) -> Result<()> {
    check_count(FLAG, contexts.len())?;
    for (name, context) in contexts {
        let spec = format!("{name}=…");
        if check_name(name, &spec)? != *name {
            return Err(invalid(&spec, "the name is not in its normalized form"));
        }
        match context {
            NamedContext::Image(reference) => {
                kiln_frontend::reference::Reference::parse(reference)
                    .map_err(|e| invalid(&spec, e.to_string()))?;
            }
            NamedContext::OciLayout { tag, digest, .. } => {
                if tag.as_deref().is_some_and(|t| !is_tag(t)) {
                    return Err(invalid(&spec, "an OCI layout's tag is not one"));
                }
                if let Some(d) = digest {
                    parse_oci_layout(&format!("x@{d}"), &spec)?;
                }
            }
            NamedContext::Stage(stage) => {
                check_stage(stage, &spec)?;
            }
            NamedContext::Dir { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(spec: &str) -> ContextValue {
        parse(spec).unwrap().1
    }

    fn error(spec: &str) -> String {
        parse(spec).unwrap_err().to_string()
    }

    #[test]
    fn names_are_normalized_as_buildx_does() {
        assert!(parse("Alpine=.").is_err());
        assert_eq!(parse("alpine:latest=.").unwrap().0, "alpine");
        assert_eq!(parse("docker.io/library/alpine=.").unwrap().0, "alpine");
        assert_eq!(parse("alpine:3.19=.").unwrap().0, "alpine:3.19");
        assert_eq!(
            error("../x=dir"),
            "--build-context ../x=dir: invalid context name \"../x\": a name is an image reference (lower-case letters, digits and separators; a registry host, a tag or a digest)"
        );
        assert!(error("context=dir").contains("never a named context"));
        assert_eq!(error("foo"), "--build-context foo: expected NAME=VALUE");
        assert_eq!(error("foo="), "--build-context foo=: no value");
    }

    #[test]
    fn values_by_kind() {
        assert_eq!(value("a=dir/sub"), ContextValue::Dir("dir/sub".into()));
        assert_eq!(
            value("a=docker-image://busybox"),
            ContextValue::Image("docker.io/library/busybox:latest".into())
        );
        assert!(error("a=docker-image://Bad").contains("invalid reference format"));
        assert_eq!(
            value("a=https://host/repo.git#main:dir"),
            ContextValue::Git("https://host/repo.git#main:dir".into())
        );
        assert_eq!(
            value("a=git@host:repo.git"),
            ContextValue::Git("git@host:repo.git".into())
        );
        assert_eq!(
            value("a=http://127.0.0.1:1/f.tar"),
            ContextValue::Url("http://127.0.0.1:1/f.tar".into())
        );
        assert_eq!(value("a=target:Build"), ContextValue::Stage("build".into()));
        assert!(error("a=target:../x").contains("not a stage name"));
        assert!(error("a=target:").contains("not a stage name"));
    }

    #[test]
    fn oci_layouts_as_buildx_parses_them() {
        let d = format!("sha256:{}", "a".repeat(64));
        let layout =
            |path: &str, tag: Option<&str>, digest: Option<&str>| ContextValue::OciLayout {
                path: path.into(),
                tag: tag.map(str::to_owned),
                digest: digest.map(str::to_owned),
            };
        assert_eq!(
            value("a=oci-layout:///l"),
            layout("/l", Some("latest"), None)
        );
        assert_eq!(
            value("a=oci-layout:///l:1.3"),
            layout("/l", Some("1.3"), None)
        );
        assert_eq!(
            value(&format!("a=oci-layout:///p/@/l@{d}")),
            layout("/p/@/l", None, Some(&d))
        );
        assert_eq!(
            value(&format!("a=oci-layout://l:v1@{d}")),
            layout("l", Some("v1"), Some(&d))
        );
        assert!(error("a=oci-layout://l@sha256:12").contains("64 lower-case hex"));
        assert!(error("a=oci-layout://:v1").contains("no OCI layout directory"));
    }

    #[test]
    fn contexts_are_bounded_and_named_once() {
        let many: Vec<String> = (0..=super::super::request::MAX_LIST_ENTRIES)
            .map(|i| format!("c{i}=dir"))
            .collect();
        assert_eq!(
            parse_all(&many).unwrap_err().to_string(),
            format!(
                "--build-context: {} given, over kiln's bound of {}",
                many.len(),
                super::super::request::MAX_LIST_ENTRIES
            )
        );
        let twice = ["alpine=a".to_owned(), "alpine:latest=b".to_owned()];
        assert!(
            parse_all(&twice)
                .unwrap_err()
                .to_string()
                .contains("given twice")
        );
    }
}
