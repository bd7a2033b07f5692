//! COPY and ADD with Docker's rules:
//!
//! - a directory source copies its *contents*;
//! - the destination is a directory when it ends in `/` or already is one;
//!   else it is the target file's path, also for a wildcard that matches
//!   one file (`COPY f*.go foo2.go`), and several sources need it to be a
//!   directory;
//! - a wildcard that matches nothing copies nothing, as BuildKit (which
//!   sets `AllowEmptyWildcard` on every Dockerfile source) — but the
//!   directory before its first wildcard must exist;
//! - missing parent directories are created;
//! - a symlink named as the source is followed (inside its root), symlinks
//!   inside a copied tree are copied as symlinks;
//! - `--chown` and `--chmod` apply to everything copied (a symbolic
//!   `--chmod` to each entry's own mode); otherwise owner, mode and mtime
//!   come from the source;
//! - directories made to hold what is copied are 0755 (a numeric `--chmod`'s
//!   mode when given), owned by `--chown`'s user or root; a destination
//!   directory that exists is left as it is;
//! - `--exclude` patterns (`.dockerignore` syntax) are matched against paths
//!   relative to the copied source;
//! - ADD unpacks local tar archives (plain, gzip, bzip2, xz, zstd) into the
//!   destination directory.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use kiln_proto::chmod::Chmod;
use kiln_proto::depth;
use kiln_proto::dockerignore::Matcher;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, fstat};

use super::root::{Root, components, proc_fd_path};
use super::tree::{self, Meta};
use super::{FileOpError, OwnerSpec, Result};
use crate::layer;
use crate::layer::compression::decompressed;

/// One copy action.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopyRequest {
    /// Paths in the source root; may hold `*`, `?`, `[…]` when
    /// `allow_wildcard` is set.
    pub sources: Vec<String>,
    /// Path in the destination root; a trailing `/` means a directory.
    pub dest: String,
    pub owner: Option<OwnerSpec>,
    /// `--chmod`: every copied file's mode, or a change of it.
    pub mode: Option<Chmod>,
    pub allow_wildcard: bool,
    pub unpack_archives: bool,
    /// `--parents`: keep each source's directories under `dest`.
    pub parents: bool,
    /// `--exclude`: patterns relative to each copied source.
    pub excludes: Vec<String>,
    /// The source root's `.dockerignore`: patterns relative to the source
    /// root. What they exclude is not there at all.
    #[serde(default)]
    pub root_excludes: Vec<String>,
    /// Unpacked archives keep the owners their entries name: `owner` is
    /// not a `--chown` (only the context's files made root's).
    #[serde(default)]
    pub archive_owners: bool,
}

/// Copies `req.sources` from the root `src` into the root `dest`.
pub fn copy(src: &Path, dest: &Path, req: &CopyRequest) -> Result<()> {
    copy_over(src, dest, Onto::default(), req)
}

/// What a copy into an overlay may write through instead of the overlay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Onto<'a> {
    /// The overlay's upper directory, where its changes land.
    pub upper: Option<&'a Path>,
    /// An earlier result of the same copy, as a layer root: an unchanged
    /// file there is linked rather than written (`unchanged.rs`).
    pub previous: Option<&'a Path>,
}

/// The stack of the thread a copy runs on. A copy takes frames per level
/// of the copied tree (`copy_dir` and `copy_entry`: 7.4 KB in a debug
/// build, measured), and may walk the whole source root for hard links
/// of ignored files from its deepest level (`hidden_links`: 2.7 KB a
/// level): about 10.6 MB at
/// [`MAX_TREE_DEPTH`](kiln_proto::depth::MAX_TREE_DEPTH) levels, more than
/// the helper's main thread may have (`ulimit -s`, often 8 MiB). Only
/// touched pages are used.
const COPY_STACK: usize = 32 << 20;

/// [`copy`] into `dest`, an overlay whose changes land in `onto.upper`. A
/// directory source copied into a directory that the copy itself makes is
/// written into the upper directly: that directory is new, empty and the
/// upper's alone, so what lands there is what the overlay would have put
/// there, without its work on each of thousands of files (a lookup in
/// every layer, credentials switched for each creation and write, and its
/// inodes and dentries torn down when the job ends). There, files that
/// `onto.previous` holds as this copy would write them are linked.
///
/// The copy runs on a thread of its own with [`COPY_STACK`] bytes of stack;
/// a tree deeper than [`MAX_TREE_DEPTH`](kiln_proto::depth::MAX_TREE_DEPTH)
/// fails it with [`FileOpError::TooDeep`].
pub fn copy_over(src: &Path, dest: &Path, onto: Onto<'_>, req: &CopyRequest) -> Result<()> {
    std::thread::scope(|scope| {
        let copying = std::thread::Builder::new()
            .name("kiln-copy".to_owned())
            .stack_size(COPY_STACK)
            .spawn_scoped(scope, || copy_here(src, dest, onto, req))
            .map_err(|e| FileOpError::io("starting a thread to copy into", dest, e))?;
        copying
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// [`copy_over`] on this thread.
fn copy_here(src: &Path, dest: &Path, onto: Onto<'_>, req: &CopyRequest) -> Result<()> {
    let src_root = Root::open(src)?;
    let dst = Root::open(dest)?;
    let matcher = |patterns: &[String]| {
        Matcher::new(patterns).map_err(|e| FileOpError::Invalid(e.to_string()))
    };
    let (excludes, root_excludes) = (matcher(&req.excludes)?, matcher(&req.root_excludes)?);
    let hidden = |path: &str| !root_excludes.is_empty() && root_excludes.excludes(path);
    let hidden_files =
        tree::HiddenFiles::new(src_root.open_follow("", OFlag::O_DIRECTORY | OFlag::O_RDONLY)?);
    let links = tree::Links::default();
    let meta = Meta {
        owner: req.owner.as_ref().map(|o| o.resolve(&dst)).transpose()?,
        mode: req.mode.as_ref(),
        excludes: &excludes,
        root_excludes: &root_excludes,
        base: String::new(),
        hidden_files: &hidden_files,
        links: &links,
    };
    let (sources, parent_found) = resolve_sources(&src_root, req, &hidden)?;
    let dest_is_dir = req.dest.ends_with('/') || dst.stat(&req.dest)?.is_some_and(|st| is_dir(&st));
    if sources.len() > 1 && !dest_is_dir && !req.parents {
        return Err(FileOpError::DestNotDirectory {
            dest: req.dest.clone(),
            count: sources.len(),
        });
    }
    // One directory source at most: its hard links are then all made
    // where it is written.
    let upper = match onto.upper {
        Some(upper) if sources.len() == 1 && !req.parents => Some(Root::open(upper)?),
        _ => None,
    };
    // Only a shortcut: an earlier result that cannot be opened is not used.
    let previous = onto
        .previous
        .filter(|_| upper.is_some())
        .and_then(|dir| Root::open(dir).ok());
    let mut copier = Copier {
        src: &src_root,
        dst: &dst,
        upper,
        previous,
        req,
        meta,
        dest_base: components(&req.dest).join("/"),
        dest_is_dir,
        made_dir_mode: made_dir_mode(req.mode.as_ref()),
    };
    if parent_found {
        // BuildKit copies each parent's contents: the destination is made
        // even when its pattern matched nothing.
        dst.mkdir_all(&copier.dest_base, copier.made_dir_mode, copier.meta.owner)?;
    }
    for (source, pivot) in &sources {
        copier.source(source, *pivot)?;
    }
    Ok(())
}

/// The mode of the directories made to hold what is copied: as fsutil's
/// MkdirAll in BuildKit's copy, a numeric `--chmod`, else 0755.
fn made_dir_mode(chmod: Option<&Chmod>) -> u32 {
    match chmod {
        Some(Chmod::Octal(mode)) => *mode,
        _ => 0o755,
    }
}

/// A copy under way: the two roots, the request, and what each of its
/// sources is copied with (the entries' metadata, the destination).
struct Copier<'a> {
    src: &'a Root,
    dst: &'a Root,
    /// The destination overlay's upper directory, where a directory this
    /// copy makes can be written directly ([`copy_over`]).
    upper: Option<Root>,
    /// An earlier result of this copy ([`Onto::previous`]).
    previous: Option<Root>,
    req: &'a CopyRequest,
    /// What the copied entries get; its `base` is the directory source
    /// being copied.
    meta: Meta<'a>,
    /// `req.dest` as a path from the destination root.
    dest_base: String,
    /// Whether the destination is a directory (sources go inside it) or
    /// the path of the one file copied.
    dest_is_dir: bool,
    /// The mode of the directories made to hold what is copied.
    made_dir_mode: u32,
}

impl Copier<'_> {
    /// Copies `source` (a path in the source root), of which `--parents`
    /// keeps the components from `pivot` on: a directory's contents, an
    /// archive ADD unpacks, or one file.
    fn source(&mut self, source: &str, pivot: usize) -> Result<()> {
        let st = self
            .src
            .stat(source)?
            .ok_or_else(|| FileOpError::NotFound(source.to_owned()))?;
        let kept = components(source)[pivot..].join("/");
        let base = if self.req.parents {
            join(&self.dest_base, parent_of(&kept))
        } else {
            self.dest_base.clone()
        };
        if is_dir(&st) {
            let target = if self.req.parents {
                join(&self.dest_base, &kept)
            } else {
                base
            };
            return self.dir(source, &st, &target);
        }
        if self.req.unpack_archives && is_tar_archive(self.src, source)? {
            return self.unpack(source, &base);
        }
        self.file(source, &st, &base)
    }

    /// Copies the contents of the directory `source` (described by `st`)
    /// into `target`.
    fn dir(&mut self, source: &str, st: &FileStat, target: &str) -> Result<()> {
        let dir_flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        // A directory's contents are copied, not the directory (as
        // BuildKit does): a destination that exists keeps its owner and
        // mode, one made here is made as the parents are. With
        // `--parents` it is one of the copied directories, with the
        // source's owner and mode.
        let made = self
            .dst
            .mkdir_all(target, self.made_dir_mode, self.meta.owner)?;
        let from = self.src.open_follow(source, dir_flags)?;
        let mut to = self.dst.open_follow(target, dir_flags)?;
        let mut previous = None;
        if made.last().is_some_and(|m| m == target)
            && let Some(direct) = self.in_upper(&to)?
        {
            to = direct;
            previous = self.previous_dir(target);
        }
        source.clone_into(&mut self.meta.base);
        tree::copy_dir(&from, &to, previous.as_ref(), "", &self.meta)?;
        if self.req.parents {
            let (uid, gid) = self.meta.owner.unwrap_or((st.st_uid, st.st_gid));
            tree::finish(&to, uid, gid, self.meta.mode_of(st), st, target.as_bytes())?;
        }
        Ok(())
    }

    /// The upper directory's own copy of `made`, a directory that this
    /// copy has just made through the overlay: reached beneath the upper
    /// directory through no symlink, by the path the overlay resolved, and
    /// taken only when it is that directory (the same inode) and empty.
    /// `None` without an upper directory, or when it is not so.
    fn in_upper(&self, made: &OwnedFd) -> Result<Option<OwnedFd>> {
        let Some(upper) = &self.upper else {
            return Ok(None);
        };
        let rel = self.dst.relative_path(made)?;
        let mut parts = Vec::new();
        for part in rel.components() {
            match part {
                Component::Normal(name) => parts.push(name),
                _ => return Ok(None),
            }
        }
        let Ok(dir) = upper.dir_beneath(&parts, false) else {
            return Ok(None);
        };
        let ino = |fd: &OwnedFd| fstat(fd.as_fd()).map(|st| (st.st_ino, st.st_mode));
        if ino(made).ok() != ino(&dir).ok() {
            return Ok(None);
        }
        let listed = proc_fd_path(&dir);
        let mut entries =
            std::fs::read_dir(&listed).map_err(|e| FileOpError::io("reading", &listed, e))?;
        Ok(entries.next().is_none().then_some(dir))
    }

    /// The directory `target` in the earlier result, when there is one
    /// (reached beneath it through no symlink).
    fn previous_dir(&self, target: &str) -> Option<OwnedFd> {
        let parts: Vec<&std::ffi::OsStr> = components(target)
            .into_iter()
            .map(std::ffi::OsStr::new)
            .collect();
        self.previous.as_ref()?.dir_beneath(&parts, false).ok()
    }

    /// Unpacks the tar archive `source` (ADD) into the directory `base`.
    fn unpack(&self, source: &str, base: &str) -> Result<()> {
        let owner = self.meta.owner;
        self.dst.mkdir_all(base, 0o755, owner)?;
        let dir = self
            .dst
            .open_follow(base, OFlag::O_DIRECTORY | OFlag::O_RDONLY)?;
        let file = std::fs::File::from(self.src.open_follow(source, OFlag::O_RDONLY)?);
        let reader =
            decompressed(file).map_err(|e| FileOpError::io("reading", Path::new(source), e))?;
        // A tree, not a layer: `.wh.` files are files.
        // `--chown` owns every entry (as BuildKit's untar with its
        // ChownOpts); `--chmod` is not applied to them (BuildKit's
        // unpack takes no mode).
        layer::unpack_owned(
            reader,
            &proc_fd_path(&dir),
            layer::Whiteouts::Plain,
            owner.filter(|_| !self.req.archive_owners),
        )
        .map_err(|e| FileOpError::Unpack {
            path: source.to_owned(),
            source: e,
        })?;
        Ok(())
    }

    /// Copies the file `source` (described by `st`) into the directory
    /// `base`, or to the destination's path when it is no directory.
    fn file(&self, source: &str, st: &FileStat, base: &str) -> Result<()> {
        let target = if self.dest_is_dir || self.req.parents {
            join(base, components(source).last().copied().unwrap_or_default())
        } else {
            // A destination that is a symlink is written through (BuildKit
            // keeps the link and writes where it points, inside the root).
            self.dst.through_links(&self.dest_base)?
        };
        if let Some(parent) = parent_of_opt(&target) {
            self.dst
                .mkdir_all(parent, self.made_dir_mode, self.meta.owner)?;
        }
        let (to_dir, name) = self.dst.parent(&target)?;
        let from = std::fs::File::from(self.src.open_follow(source, OFlag::O_RDONLY)?);
        let made = tree::made_owner(&to_dir)?;
        tree::copy_file(from, st, (&to_dir, made), name.as_bytes(), &self.meta)
    }
}

/// The paths `req.sources` name, wildcards expanded, each with how many
/// leading components `--parents` drops (those before a `/./` pivot); and,
/// with `--parents`, whether a parent directory was found.
fn resolve_sources(
    src_root: &Root,
    req: &CopyRequest,
    hidden: &dyn Fn(&str) -> bool,
) -> Result<(Vec<(String, usize)>, bool)> {
    let mut sources = Vec::new();
    let mut parent_found = false;
    for source in &req.sources {
        if req.parents {
            parent_found |= parents_sources(src_root, source, hidden, &mut sources)?;
            continue;
        }
        let pivot = source
            .split_once("/./")
            .map_or(0, |(before, _)| components(before).len());
        if req.allow_wildcard && has_glob(source) {
            let mut found = expand(src_root, source)?;
            found.retain(|p| !hidden(p));
            if found.is_empty() {
                // fsutil walks this directory for the matches: its absence
                // is an error, an empty match is not.
                let parts = components(source);
                let dir = parts[..parts.iter().take_while(|p| !has_glob(p)).count()].join("/");
                if !dir.is_empty() && (src_root.stat(&dir)?.is_none() || hidden(&dir)) {
                    return Err(FileOpError::NotFound(format!("/{dir}")));
                }
            }
            sources.extend(found.into_iter().map(|p| (p, pivot)));
        } else {
            let path = components(source).join("/");
            if src_root.stat(source)?.is_none() || hidden(&path) {
                return Err(FileOpError::NotFound(source.clone()));
            }
            sources.push((path, pivot));
        }
    }
    Ok((sources, parent_found))
}

/// The paths a `COPY --parents` source `PARENT/./PATTERN` names, as
/// BuildKit copies it: the contents of each directory `PARENT` names
/// (wildcards allowed) that `PATTERN` includes — a match, or what lies
/// beneath a matched directory; `**` spans directories. Each path comes
/// with its pivot: the components of its `PARENT`, which are not kept.
/// Whether some `PARENT` was found (the destination is then made, even
/// when nothing matched).
///
/// A pattern without wildcards must exist (BuildKit's required path); one
/// with wildcards may match nothing.
fn parents_sources(
    root: &Root,
    source: &str,
    hidden: &dyn Fn(&str) -> bool,
    out: &mut Vec<(String, usize)>,
) -> Result<bool> {
    let (parent, pattern) = source.split_once("/./").unwrap_or(("", source));
    let pattern = components(pattern);
    let parents = if has_glob(parent) {
        let mut dirs = expand(root, parent)?;
        dirs.retain(|d| !hidden(d));
        dirs
    } else {
        vec![components(parent).join("/")]
    };
    let literal = pattern.iter().take_while(|p| !has_glob(p)).count();
    let mut found = false;
    for dir in parents {
        if !root.stat(&dir)?.is_some_and(|st| is_dir(&st)) {
            if has_glob(parent) {
                continue;
            }
            return Err(FileOpError::NotFound(format!("/{dir}")));
        }
        found = true;
        let pivot = components(&dir).len();
        let start = join(&dir, &pattern[..literal].join("/"));
        if literal == pattern.len() {
            if root.stat(&start)?.is_none() || hidden(&start) {
                return Err(FileOpError::NotFound(format!("/{start}")));
            }
            out.push((start, pivot));
            continue;
        }
        if !root.stat(&start)?.is_some_and(|st| is_dir(&st)) || hidden(&start) {
            continue;
        }
        let walk = IncludeWalk {
            root,
            matcher: Matcher::new(&[pattern.join("/")])
                .map_err(|e| FileOpError::Invalid(e.to_string()))?,
            // Without `**`, nothing deeper than the pattern can match.
            depth: if pattern.contains(&"**") {
                usize::MAX
            } else {
                pattern.len()
            },
            hidden,
            pivot,
        };
        let mut matched = Vec::new();
        walk.walk(&start, &pattern[..literal].join("/"), literal, &mut matched)?;
        matched.sort();
        out.extend(matched);
    }
    Ok(found)
}

/// A walk of a `--parents` directory for what its pattern includes.
struct IncludeWalk<'a> {
    root: &'a Root,
    matcher: Matcher,
    /// The deepest a match can be, in components below the parent.
    depth: usize,
    hidden: &'a dyn Fn(&str) -> bool,
    pivot: usize,
}

impl IncludeWalk<'_> {
    /// Walks `dir` (`rel` below the parent, `depth` components deep): a
    /// match is taken whole, a directory that is none is entered (symlinks
    /// are not), down to [`depth::MAX_TREE_DEPTH`] levels.
    fn walk(
        &self,
        dir: &str,
        rel: &str,
        depth: usize,
        out: &mut Vec<(String, usize)>,
    ) -> Result<()> {
        for name in self.root.list(dir)? {
            let (path, rel) = (join(dir, &name), join(rel, &name));
            if (self.hidden)(&path) {
                continue;
            }
            if self.matcher.matches(&rel) {
                out.push((path, self.pivot));
            } else if depth + 1 < self.depth
                && self.root.lstat(&path)?.is_some_and(|st| is_dir(&st))
            {
                depth::check(depth + 1, || format!("/{path}"))?;
                self.walk(&path, &rel, depth + 1, out)?;
            }
        }
        Ok(())
    }
}

fn has_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// The paths of the source root a wildcard source matches, component by
/// component (`*` never crosses `/`), sorted.
fn expand(root: &Root, pattern: &str) -> Result<Vec<String>> {
    let parts = components(pattern);
    let mut found = vec![String::new()];
    for (i, part) in parts.iter().enumerate() {
        let mut next = Vec::new();
        for dir in &found {
            if !has_glob(part) {
                let candidate = join(dir, part);
                if root.lstat(&candidate)?.is_some() {
                    next.push(candidate);
                }
                continue;
            }
            if !root.stat(dir)?.is_some_and(|st| is_dir(&st)) {
                continue;
            }
            let matcher = Matcher::new(&[parts[..=i].join("/")])
                .map_err(|e| FileOpError::Invalid(e.to_string()))?;
            for name in root.list(dir)? {
                let candidate = join(dir, &name);
                if matcher.matches(&candidate) {
                    next.push(candidate);
                }
            }
        }
        found = next;
    }
    found.retain(|p| !p.is_empty());
    Ok(found)
}

/// Whether the file is a tar archive, possibly compressed.
fn is_tar_archive(root: &Root, path: &str) -> Result<bool> {
    let file = std::fs::File::from(root.open_follow(path, OFlag::O_RDONLY)?);
    let Ok(mut reader) = decompressed(file) else {
        return Ok(false);
    };
    let mut head = [0u8; 512];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    Ok(filled == 512 && &head[257..262] == b"ustar")
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn parent_of_opt(path: &str) -> Option<&str> {
    Some(parent_of(path)).filter(|p| !p.is_empty())
}
