//! The client side of a build context: where the Dockerfile and its
//! `.dockerignore` come from.

use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_frontend::dockerignore::{self, DockerignoreError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ContextError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid UTF-8 text")]
    NotText { path: PathBuf },
    #[error("{path}: {source}")]
    Dockerignore {
        path: PathBuf,
        source: DockerignoreError,
    },
}

/// Where the Dockerfile is read from (`-f`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileSource {
    /// `-f -`.
    Stdin,
    /// A file.
    Path(PathBuf),
}

impl DockerfileSource {
    /// `-f` as given, or `<context>/Dockerfile` without one.
    pub fn new(flag: Option<&Path>, context: &Path) -> Self {
        match flag {
            Some(p) if p == Path::new("-") => Self::Stdin,
            Some(p) => Self::Path(p.to_owned()),
            None => Self::Path(context.join("Dockerfile")),
        }
    }

    /// The Dockerfile's text.
    pub fn read(&self) -> Result<String, ContextError> {
        let (path, bytes) = match self {
            Self::Stdin => {
                let mut bytes = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .map_err(|source| ContextError::Read {
                        path: "<stdin>".into(),
                        source,
                    })?;
                (PathBuf::from("<stdin>"), bytes)
            }
            Self::Path(path) => {
                let bytes = std::fs::read(path).map_err(|source| ContextError::Read {
                    path: path.clone(),
                    source,
                })?;
                (path.clone(), bytes)
            }
        };
        String::from_utf8(bytes).map_err(|_| ContextError::NotText { path })
    }

    /// The `.dockerignore` patterns for a build of `context` with this
    /// Dockerfile: `<Dockerfile>.dockerignore` beside a named Dockerfile
    /// wins over `<context>/.dockerignore`. No file: no patterns.
    pub fn dockerignore(&self, context: &Path) -> Result<Vec<String>, ContextError> {
        let beside = match self {
            Self::Path(path) => {
                let mut name = path.file_name().unwrap_or_default().to_owned();
                name.push(".dockerignore");
                Some(path.with_file_name(name))
            }
            Self::Stdin => None,
        };
        let candidates = beside.into_iter().chain([context.join(".dockerignore")]);
        for path in candidates {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8(bytes)
                        .map_err(|_| ContextError::NotText { path: path.clone() })?;
                    return dockerignore::read_patterns(&text)
                        .map_err(|source| ContextError::Dockerignore { path, source });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ContextError::Read { path, source }),
            }
        }
        Ok(Vec::new())
    }
}

/// One entry of a context tree, as a session compares it (see
/// `kiln.control.v1.FileStat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    /// Seconds: a tar keeps no finer time, so both sides compare these.
    pub mtime: i64,
    /// st_mode: type and permission bits.
    pub mode: u32,
}

/// Every entry under `dir` (parents before children), leaving out what
/// `ignore` excludes, and the other names (hard links) of files it
/// excludes. Symlinks are entries, never followed.
pub fn entries(
    dir: &Path,
    ignore: &kiln_frontend::dockerignore::Matcher,
) -> std::io::Result<Vec<Entry>> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = Vec::new();
    // (dev, ino) of each kept regular file with several names, by index.
    let mut linked: Vec<(usize, (u64, u64))> = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            dir.to_owned()
        } else {
            dir.join(&rel)
        };
        let mut names: Vec<String> = std::fs::read_dir(&path)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        for name in names.into_iter().rev() {
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if ignore.excludes(&child) {
                continue;
            }
            let meta = std::fs::symlink_metadata(dir.join(&child))?;
            if meta.is_dir() {
                stack.push(child.clone());
            }
            if meta.is_file() && meta.nlink() > 1 {
                linked.push((out.len(), (meta.dev(), meta.ino())));
            }
            out.push(Entry {
                path: child,
                size: if meta.is_dir() { 0 } else { meta.size() },
                mtime: meta.mtime(),
                mode: meta.mode(),
            });
        }
    }
    if !linked.is_empty() && !ignore.is_empty() {
        let hidden = hidden_links(dir, ignore)?;
        let drop: std::collections::HashSet<usize> = linked
            .iter()
            .filter(|(_, key)| hidden.contains(key))
            .map(|(i, _)| *i)
            .collect();
        if !drop.is_empty() {
            let mut index = 0..;
            out.retain(|_| !drop.contains(&index.next().unwrap_or(usize::MAX)));
        }
    }
    Ok(out)
}

/// The (dev, ino) of every regular file with several names under `dir`
/// that `ignore` excludes (ignored directories are walked too): another
/// name of one is the same ignored content.
fn hidden_links(
    dir: &Path,
    ignore: &kiln_frontend::dockerignore::Matcher,
) -> std::io::Result<std::collections::HashSet<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt as _;
    let mut found = std::collections::HashSet::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(entry.path())?;
            if meta.is_dir() {
                stack.push(child);
            } else if meta.is_file() && meta.nlink() > 1 && ignore.excludes(&child) {
                found.insert((meta.dev(), meta.ino()));
            }
        }
    }
    Ok(found)
}

/// Writes `entries` of the context directory as one tar stream (kiln
/// sends a context to kilnd this way, as BuildKit's client does).
/// Symlinks are sent as links, never followed.
pub fn write_tar<'a, W: std::io::Write>(
    dir: &Path,
    entries: impl IntoIterator<Item = &'a Entry>,
    out: W,
) -> std::io::Result<W> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    for entry in entries {
        tar.append_path_with_name(dir.join(&entry.path), &entry.path)?;
    }
    tar.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_beside_a_named_dockerfile_wins() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path();
        std::fs::write(ctx.join(".dockerignore"), "from-context\n").unwrap();
        std::fs::write(ctx.join("app.Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(
            ctx.join("app.Dockerfile.dockerignore"),
            "# mine\nfrom-beside\n",
        )
        .unwrap();
        let named = DockerfileSource::new(Some(&ctx.join("app.Dockerfile")), ctx);
        assert_eq!(named.dockerignore(ctx).unwrap(), ["from-beside"]);
        let default = DockerfileSource::new(None, ctx);
        assert_eq!(default.dockerignore(ctx).unwrap(), ["from-context"]);
        assert_eq!(
            DockerfileSource::Stdin
                .dockerignore(&ctx.join("none"))
                .unwrap(),
            Vec::<String>::new()
        );
        std::fs::write(ctx.join(".dockerignore"), "!\n").unwrap();
        let e = default.dockerignore(ctx).unwrap_err().to_string();
        assert!(
            e.ends_with(".dockerignore: .dockerignore line 1: illegal exclusion pattern: \"!\""),
            "{e}"
        );
    }

    #[test]
    fn read_errors_name_the_file() {
        let e = DockerfileSource::Path("/no/such/Dockerfile".into())
            .read()
            .unwrap_err();
        assert!(e.to_string().starts_with("reading /no/such/Dockerfile: "));
    }
}
