//! A build context named by URL, as `docker build URL` takes one: a Git
//! repository (`https://host/repo.git#ref:subdir`, `git@host:repo`, the
//! query form `?ref=…&subdir=…`), or an HTTP(S) URL whose content is a
//! context archive (plain or compressed tar) or, as plain text, a lone
//! Dockerfile with an empty context.
//!
//! Fetched with the same code as `ADD` (`crate::fetch`: Git's transports
//! restricted, the host's configuration kept out) into a scratch directory
//! that the build then reads as it reads a local context. What a remote
//! context holds is not the user's: its Dockerfile and `.dockerignore` are
//! read only when they resolve inside it (see [`RemoteContext::inside`]).

use std::path::{Path, PathBuf};

use kiln_frontend::gitref;
use kiln_proto::ops::v1::{GitSource, HttpSource};

use super::{
    ContextError, DEFAULT_DOCKERFILE, DockerfileSource, LOWERCASE_DOCKERFILE, StdinContext,
    read_context_stream,
};
use crate::fetch;

/// What the context argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextArg {
    /// `-`: standard input.
    Stdin,
    /// A Git repository (BuildKit's test: a Git transport, or an HTTP(S)
    /// URL whose path ends in `.git`).
    Git(String),
    /// Another HTTP(S) URL.
    Url(String),
    /// A directory.
    Local(PathBuf),
}

impl ContextArg {
    /// Classifies the positional argument of `kiln build` (a URL wins over
    /// a directory of that name, as in docker).
    pub fn parse(arg: &Path) -> Self {
        let Some(text) = arg.to_str() else {
            return Self::Local(arg.to_owned());
        };
        if text == "-" {
            Self::Stdin
        } else if gitref::is_git_url(text) {
            Self::Git(text.to_owned())
        } else if text.starts_with("http://") || text.starts_with("https://") {
            Self::Url(text.to_owned())
        } else {
            Self::Local(arg.to_owned())
        }
    }
}

/// A fetched context: its directory, kept until this is dropped.
#[derive(Debug)]
pub struct RemoteContext {
    /// The context's root (a Git source's subdirectory, when it names one).
    pub dir: PathBuf,
    /// The Dockerfile, when the URL was one (the context is then empty).
    pub dockerfile: Option<String>,
    /// When the source last changed (seconds since the epoch): the commit's
    /// committer time; the HTTP `Last-Modified`, else the newest regular
    /// file of the archive. `SOURCE_DATE_EPOCH=context` takes it.
    pub time: Option<u64>,
    _fetched: Option<fetch::Fetched>,
    _scratch: Option<tempfile::TempDir>,
}

impl RemoteContext {
    /// `rel` (a path given with `-f`, or a default name) inside the
    /// context: `None` when it resolves outside it (a symlink of the
    /// fetched tree pointing at the host), so nothing of the host is read
    /// as a Dockerfile. Missing files resolve to where they would be.
    pub fn inside(&self, rel: &Path) -> Result<PathBuf, ContextError> {
        let root = self
            .dir
            .canonicalize()
            .map_err(|source| ContextError::Read {
                path: self.dir.clone(),
                source,
            })?;
        let wanted = root.join(rel.strip_prefix("/").unwrap_or(rel));
        let resolved = match wanted.canonicalize() {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Missing: its parent decides (the read then says ENOENT).
                let parent = wanted.parent().unwrap_or(&root);
                match parent.canonicalize() {
                    Ok(p) => p.join(wanted.file_name().unwrap_or_default()),
                    Err(_) => wanted.clone(),
                }
            }
            Err(source) => {
                return Err(ContextError::Read {
                    path: wanted,
                    source,
                });
            }
        };
        if resolved.starts_with(&root) {
            Ok(resolved)
        } else {
            Err(ContextError::Outside {
                path: rel.to_owned(),
            })
        }
    }
}

impl RemoteContext {
    /// Where the Dockerfile is read from: `-f` (`-` or a path inside the
    /// context, as docker takes it for a URL), else `Dockerfile`. Every
    /// file the build reads beside it — the lowercase `dockerfile`, the
    /// `.dockerignore` files — must resolve inside the context too.
    pub fn dockerfile_source(&self, flag: Option<&Path>) -> Result<DockerfileSource, ContextError> {
        if flag == Some(Path::new("-")) {
            self.inside(Path::new(".dockerignore"))?;
            return Ok(DockerfileSource::Stdin);
        }
        let rel = flag.unwrap_or(Path::new(DEFAULT_DOCKERFILE));
        let path = self.inside(rel)?;
        let mut beside = path.file_name().unwrap_or_default().to_owned();
        beside.push(".dockerignore");
        for other in [
            path.with_file_name(LOWERCASE_DOCKERFILE),
            path.with_file_name(beside),
            self.dir.join(".dockerignore"),
        ] {
            let rel = other.strip_prefix(&self.dir).unwrap_or(&other).to_owned();
            self.inside(&rel)?;
        }
        Ok(DockerfileSource::Path(path))
    }
}

/// Fetches the context `arg` names (a [`ContextArg::Git`] or
/// [`ContextArg::Url`]) into a scratch directory made in `tmp`.
pub fn fetch_context(arg: &ContextArg, tmp: &Path) -> Result<RemoteContext, ContextError> {
    let scratch = || {
        tempfile::TempDir::with_prefix_in("context-", tmp).map_err(|source| ContextError::Read {
            path: tmp.to_owned(),
            source,
        })
    };
    match arg {
        ContextArg::Git(url) => git_context(url, scratch()?),
        ContextArg::Url(url) => url_context(url, scratch()?, scratch()?),
        ContextArg::Stdin | ContextArg::Local(_) => Err(ContextError::Remote {
            url: String::new(),
            why: "not a URL".to_owned(),
        }),
    }
}

/// Fetches a named context's URL (`--build-context NAME=URL`) into a
/// scratch directory made in `tmp`: a Git repository checked out, as the
/// build context is; any other HTTP(S) URL downloaded as the one file
/// `context` of the directory, as BuildKit's named contexts keep it
/// (never unpacked, never a Dockerfile).
pub fn fetch_named_context(arg: &ContextArg, tmp: &Path) -> Result<RemoteContext, ContextError> {
    let scratch = tempfile::TempDir::with_prefix_in("context-", tmp).map_err(|source| {
        ContextError::Read {
            path: tmp.to_owned(),
            source,
        }
    })?;
    match arg {
        ContextArg::Git(url) => git_context(url, scratch),
        ContextArg::Url(url) => {
            let source = HttpSource {
                url: url.clone(),
                filename: "context".to_owned(),
                ..Default::default()
            };
            let fetched = fetch::http(&source, scratch, &mut |_, _| {}).map_err(|why| {
                ContextError::Remote {
                    url: url.clone(),
                    why,
                }
            })?;
            Ok(RemoteContext {
                dir: fetched.dir.clone(),
                dockerfile: None,
                time: fetched.time,
                _fetched: Some(fetched),
                _scratch: None,
            })
        }
        ContextArg::Stdin | ContextArg::Local(_) => Err(ContextError::Remote {
            url: String::new(),
            why: "not a URL".to_owned(),
        }),
    }
}

fn git_context(url: &str, scratch: tempfile::TempDir) -> Result<RemoteContext, ContextError> {
    let remote_err = |why: String| ContextError::Remote {
        url: url.to_owned(),
        why,
    };
    let parsed = gitref::parse(url).map_err(|e| remote_err(e.to_string()))?;
    let source = GitSource {
        remote: parsed.remote,
        r#ref: parsed.reference,
        subdir: parsed.subdir,
        keep_git_dir: parsed.keep_git_dir.unwrap_or(false),
        checksum: parsed.checksum.unwrap_or_default(),
    };
    let fetched = fetch::git(&source, scratch).map_err(remote_err)?;
    Ok(RemoteContext {
        dir: fetched.dir.clone(),
        dockerfile: None,
        time: fetched.time,
        _fetched: Some(fetched),
        _scratch: None,
    })
}

/// Downloads `url` into `download`; an archive is unpacked into `dir`, a
/// text file is the Dockerfile (the context in `dir` stays empty).
fn url_context(
    url: &str,
    download: tempfile::TempDir,
    dir: tempfile::TempDir,
) -> Result<RemoteContext, ContextError> {
    let source = HttpSource {
        url: url.to_owned(),
        filename: "context".to_owned(),
        ..Default::default()
    };
    let fetched =
        fetch::http(&source, download, &mut |_, _| {}).map_err(|why| ContextError::Remote {
            url: url.to_owned(),
            why,
        })?;
    let file = fetched.dir.join("context");
    let opened = std::fs::File::open(&file).map_err(|source| ContextError::Read {
        path: file.clone(),
        source,
    })?;
    let (dockerfile, time) = match read_context_stream(opened, dir.path(), Path::new(url))? {
        StdinContext::Archive => (None, fetched.time.or(newest_file(dir.path()))),
        StdinContext::Dockerfile(text) => (Some(text), fetched.time),
    };
    Ok(RemoteContext {
        dir: dir.path().to_owned(),
        dockerfile,
        time,
        _fetched: None,
        _scratch: Some(dir),
    })
}

/// The newest mtime (seconds) of the regular files beneath `dir`, as
/// BuildKit takes an archive's time; symlinks are not followed.
fn newest_file(dir: &Path) -> Option<u64> {
    let mut newest = None;
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                let secs = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                newest = newest.max(secs);
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_arguments_are_classified_as_docker_does() {
        let parse = |s: &str| ContextArg::parse(Path::new(s));
        assert_eq!(parse("-"), ContextArg::Stdin);
        assert_eq!(parse("."), ContextArg::Local(".".into()));
        assert_eq!(parse("dir/sub"), ContextArg::Local("dir/sub".into()));
        for git in [
            "https://example.com/repo.git#main:dir",
            "https://example.com/repo.git?ref=main&subdir=dir",
            "git@example.com:owner/repo.git",
            "git://example.com/repo",
            "github.com/owner/repo",
        ] {
            assert_eq!(parse(git), ContextArg::Git(git.to_owned()), "{git}");
        }
        assert_eq!(
            parse("http://127.0.0.1:8080/context.tar.gz"),
            ContextArg::Url("http://127.0.0.1:8080/context.tar.gz".to_owned())
        );
    }

    #[test]
    fn a_path_of_the_context_never_resolves_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("Dockerfile"))
            .unwrap();
        std::os::unix::fs::symlink("../../../../..", dir.path().join("up")).unwrap();
        std::fs::write(dir.path().join("real"), "FROM scratch").unwrap();
        let ctx = RemoteContext {
            dir: dir.path().to_owned(),
            dockerfile: None,
            time: None,
            _fetched: None,
            _scratch: None,
        };
        assert!(matches!(
            ctx.inside(Path::new("Dockerfile")),
            Err(ContextError::Outside { .. })
        ));
        assert!(matches!(
            ctx.inside(Path::new("up/etc/passwd")),
            Err(ContextError::Outside { .. })
        ));
        let real = ctx.inside(Path::new("/real")).unwrap();
        assert_eq!(std::fs::read_to_string(real).unwrap(), "FROM scratch");
        assert!(ctx.inside(Path::new("missing/Dockerfile")).is_ok());
    }
}
