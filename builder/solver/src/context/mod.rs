//! The client side of a build context: where the Dockerfile and its
//! `.dockerignore` come from, a context on standard input, and one named
//! by URL ([`remote`]).

pub mod remote;

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use kiln_proto::dockerignore::{self, DockerignoreError};
use kiln_worker::layer::compression::{Compression, decompressed};
use kiln_worker::layer::{LayerError, Whiteouts, unpack_with};
use thiserror::Error;

/// The largest Dockerfile read, in bytes (real ones are a few KiB).
pub const MAX_DOCKERFILE: u64 = 16 << 20;

/// The default Dockerfile's name, and the one read when no file has it
/// (moby/moby#10858; BuildKit's dockerui looks for it beside any path
/// named `Dockerfile`).
pub(crate) const DEFAULT_DOCKERFILE: &str = "Dockerfile";
pub(crate) const LOWERCASE_DOCKERFILE: &str = "dockerfile";

/// What docker looks at to tell a context archive from a Dockerfile on
/// standard input: one tar block (`IsArchive` in docker/cli).
const ARCHIVE_HEADER: u64 = 512;

#[derive(Debug, Error)]
pub enum ContextError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid UTF-8 text")]
    NotText { path: PathBuf },
    #[error("{path}: a Dockerfile larger than {MAX_DOCKERFILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("the context {path}: {source}")]
    Unpack {
        path: PathBuf,
        #[source]
        source: LayerError,
    },
    #[error("the context {url}: {why}")]
    Remote { url: String, why: String },
    #[error("{path}: outside the build context (a symlink of the fetched context)")]
    Outside { path: PathBuf },
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
            None => Self::Path(context.join(DEFAULT_DOCKERFILE)),
        }
    }

    /// The Dockerfile's text.
    pub fn read(&self) -> Result<String, ContextError> {
        match self {
            Self::Stdin => read_text(std::io::stdin().lock(), Vec::new(), Path::new("<stdin>")),
            Self::Path(path) => {
                let (file, path) = open_dockerfile(path)?;
                read_text(file, Vec::new(), &path)
            }
        }
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
            if let Some(patterns) = read_dockerignore(&path)? {
                return Ok(patterns);
            }
        }
        Ok(Vec::new())
    }
}

/// The patterns of the `.dockerignore` file at `path`; `None` when there
/// is none.
fn read_dockerignore(path: &Path) -> Result<Option<Vec<String>>, ContextError> {
    let path = path.to_owned();
    match std::fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes)
                .map_err(|_| ContextError::NotText { path: path.clone() })?;
            dockerignore::read_patterns(&text)
                .map(Some)
                .map_err(|source| ContextError::Dockerignore { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ContextError::Read { path, source }),
    }
}

/// The `.dockerignore` patterns of a named context's directory: its own
/// `<dir>/.dockerignore` only, as BuildKit reads it for a local named
/// context (no `<Dockerfile>.dockerignore`); none without one.
pub fn dir_dockerignore(dir: &Path) -> Result<Vec<String>, ContextError> {
    Ok(read_dockerignore(&dir.join(".dockerignore"))?.unwrap_or_default())
}

/// Opens the Dockerfile at `path`, or `dockerfile` beside it when `path`
/// is a `Dockerfile` that does not exist; the file and the path opened.
fn open_dockerfile(path: &Path) -> Result<(std::fs::File, PathBuf), ContextError> {
    let error = |path: &Path| {
        let path = path.to_owned();
        move |source| ContextError::Read { path, source }
    };
    match std::fs::File::open(path) {
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && path.file_name() == Some(DEFAULT_DOCKERFILE.as_ref()) =>
        {
            let lower = path.with_file_name(LOWERCASE_DOCKERFILE);
            match std::fs::File::open(&lower) {
                Ok(file) => Ok((file, lower)),
                // The error names the file asked for.
                Err(_) => Err(error(path)(e)),
            }
        }
        opened => opened
            .map(|file| (file, path.to_owned()))
            .map_err(error(path)),
    }
}

/// What `-` as the build context found on standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinContext {
    /// A context archive, now unpacked.
    Archive,
    /// A lone Dockerfile, as `docker build - < Dockerfile` sends: the
    /// context is empty.
    Dockerfile(String),
}

/// Reads standard input (`input`) given as the build context, telling a
/// tar (plain or compressed), unpacked into `dir`, from a Dockerfile as
/// docker does: by compression magic or a valid tar header in the first
/// block.
pub fn read_stdin_context(input: impl Read, dir: &Path) -> Result<StdinContext, ContextError> {
    read_context_stream(input, dir, Path::new("<stdin>"))
}

/// [`read_stdin_context`] of a stream `name` names in errors (standard
/// input, a downloaded context).
pub(crate) fn read_context_stream(
    mut input: impl Read,
    dir: &Path,
    stdin: &Path,
) -> Result<StdinContext, ContextError> {
    let mut head = Vec::new();
    (&mut input)
        .take(ARCHIVE_HEADER)
        .read_to_end(&mut head)
        .map_err(|source| ContextError::Read {
            path: stdin.to_owned(),
            source,
        })?;
    if !is_archive(&head) {
        return read_text(input, head, stdin).map(StdinContext::Dockerfile);
    }
    let reader =
        decompressed(Cursor::new(head).chain(input)).map_err(|source| ContextError::Read {
            path: stdin.to_owned(),
            source,
        })?;
    unpack_with(reader, dir, Whiteouts::Plain).map_err(|source| ContextError::Unpack {
        path: stdin.to_owned(),
        source,
    })?;
    Ok(StdinContext::Archive)
}

/// Whether `head` (up to one tar block) starts a compressed stream or a tar.
fn is_archive(head: &[u8]) -> bool {
    let compressed = Compression::detect(&mut &head[..]).is_ok_and(|c| c != Compression::None);
    compressed || is_tar_header(head)
}

/// A whole tar header block whose checksum (unsigned, or signed as old tars
/// wrote it) matches; an all-zero block is the end of an archive, not one.
fn is_tar_header(block: &[u8]) -> bool {
    const CHECKSUM: std::ops::Range<usize> = 148..156;
    if block.len() != 512 || block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[CHECKSUM];
    let digits: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| char::from(b))
        .collect();
    let Ok(stored) = i64::from_str_radix(digits.trim(), 8) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if CHECKSUM.contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b.cast_signed());
    }
    stored == unsigned || stored == signed
}

/// The rest of `input` after `head`, as Dockerfile text (`path` names it
/// in errors), at most [`MAX_DOCKERFILE`] bytes.
fn read_text(input: impl Read, mut bytes: Vec<u8>, path: &Path) -> Result<String, ContextError> {
    input
        .take(MAX_DOCKERFILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ContextError::Read {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_DOCKERFILE {
        return Err(ContextError::TooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes).map_err(|_| ContextError::NotText {
        path: path.to_owned(),
    })
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
///
/// Not bounded by `kiln_proto::depth::MAX_TREE_DEPTH`: the walk keeps its
/// directories on the heap (no frame per level) and goes by full path, so
/// `PATH_MAX` ends it; a tree deeper than the bound is sent, and the COPY
/// that reads it refuses it, as an embedded build's does — a deep
/// directory that no step reads fails no build.
pub fn entries(
    dir: &Path,
    ignore: &kiln_proto::dockerignore::Matcher,
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
            let meta = std::fs::symlink_metadata(dir.join(&child))?;
            if !ignore.keeps(&child, meta.is_dir(), &mut |rel| {
                kiln_worker::fileop::dir_entries(&dir.join(rel))
            }) {
                continue;
            }
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
    ignore: &kiln_proto::dockerignore::Matcher,
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

    /// A tar of one file `name` with `data`.
    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data).unwrap();
        tar.into_inner().unwrap()
    }

    #[test]
    fn stdin_holds_a_dockerfile_or_a_context() {
        let dir = tempfile::tempdir().unwrap();
        let dockerfile = "FROM scratch\nCOPY a /\n";
        assert_eq!(
            read_stdin_context(dockerfile.as_bytes(), dir.path()).unwrap(),
            StdinContext::Dockerfile(dockerfile.to_owned())
        );
        // Longer than a tar block, and starting like one would not.
        let long = format!("# {}\nFROM scratch\n", "x".repeat(600));
        assert_eq!(
            read_stdin_context(long.as_bytes(), dir.path()).unwrap(),
            StdinContext::Dockerfile(long.clone())
        );

        let tar = tar_of("Dockerfile", b"FROM scratch\n");
        assert_eq!(
            read_stdin_context(tar.as_slice(), dir.path()).unwrap(),
            StdinContext::Archive
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("Dockerfile")).unwrap(),
            "FROM scratch\n"
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar_of("b.txt", b"b")).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            read_stdin_context(gz.as_slice(), dir.path()).unwrap(),
            StdinContext::Archive
        );
        assert!(dir.path().join("b.txt").is_file());
    }

    #[test]
    fn tar_headers_by_checksum() {
        let tar = tar_of("f", b"");
        assert!(is_tar_header(&tar[..512]));
        let mut broken = tar[..512].to_vec();
        broken[0] ^= 1;
        assert!(!is_tar_header(&broken), "a checksum that does not match");
        assert!(!is_tar_header(&[0; 512]), "the end of an archive");
        assert!(!is_tar_header(&tar[..511]));
        let e =
            read_stdin_context(&[0xff, 0xfe, b'\n'][..], Path::new("/nonexistent")).unwrap_err();
        assert_eq!(e.to_string(), "<stdin> is not valid UTF-8 text");
    }

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
    fn a_lowercase_dockerfile_when_dockerfile_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path();
        std::fs::write(ctx.join("dockerfile"), "FROM lower\n").unwrap();
        let default = DockerfileSource::new(None, ctx);
        assert_eq!(default.read().unwrap(), "FROM lower\n");
        std::fs::create_dir(ctx.join("sub")).unwrap();
        std::fs::write(ctx.join("sub/dockerfile"), "FROM sub\n").unwrap();
        let named = DockerfileSource::new(Some(&ctx.join("sub/Dockerfile")), ctx);
        assert_eq!(
            named.read().unwrap(),
            "FROM sub\n",
            "as BuildKit: any Dockerfile"
        );
        std::fs::write(ctx.join("Dockerfile"), "FROM upper\n").unwrap();
        assert_eq!(default.read().unwrap(), "FROM upper\n");
        // Only the name Dockerfile falls back.
        let other = DockerfileSource::new(Some(&ctx.join("Containerfile")), ctx);
        assert!(
            other
                .read()
                .unwrap_err()
                .to_string()
                .contains("Containerfile")
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
