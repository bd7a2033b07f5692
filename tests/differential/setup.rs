//! A case's `SETUP` file: what git cannot hold (modes, owners, symlinks,
//! hard links, empty directories, archives with owners) and how the case
//! is built (build args, target, secrets). Declarative: the runner makes
//! each thing itself, in a copy of the case directory; nothing is run.
//!
//! One directive a line (`#` starts a comment line; TEXT is the rest of
//! the line with `\n`, `\t` and `\\` unescaped):
//!
//! ```text
//! build-arg NAME=VALUE            passed to both builders
//! target STAGE
//! secret ID TEXT                  a file outside the context, --secret id=ID,src=…
//! mount-stub PATH                 a RUN mount's target (or a parent made for it) that
//!                                 dockerd 20.10 leaves in the image: ignored when empty
//! file PATH TEXT                  a file (mode 0644)
//! mkdir PATH                      an empty directory (mode 0755)
//! symlink PATH TARGET
//! hardlink PATH EXISTING
//! chown UID:GID PATH              not following a symlink
//! chmod MODE PATH                 octal, after any chown (chown clears set-id bits)
//! tar NAME                        an archive (`.tar`, `.tar.gz`, `.tgz`), entries until `end`:
//!   dir PATH MODE UID:GID
//!   file PATH MODE UID:GID TEXT
//!   symlink PATH TARGET
//!   hardlink PATH EXISTING
//! end
//! ```
//!
//! Every path of the context then gets the mtime [`CONTEXT_TIME`] (2001-01-01),
//! so times carried into an image compare exactly.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The mtime of every context path and archive entry.
pub(crate) const CONTEXT_TIME: u64 = 978_307_200;

/// Files of a case directory that are the runner's, not the context's.
pub(crate) const RUNNER_FILES: [&str; 2] = ["SETUP", "expected.json"];

/// How a case is built, from its `SETUP`.
#[derive(Default, Debug)]
pub(crate) struct Setup {
    pub(crate) build_args: Vec<String>,
    pub(crate) target: Option<String>,
    pub(crate) secrets: Vec<(String, String)>,
    /// Absolute paths of mount stubs, ignored on both sides when empty.
    pub(crate) mount_stubs: Vec<String>,
    steps: Vec<Step>,
}

#[derive(Debug)]
enum Step {
    File(String, String),
    Mkdir(String),
    Symlink(String, String),
    Hardlink(String, String),
    Chown(u32, u32, String),
    Chmod(u32, String),
    Tar(String, Vec<TarEntry>),
}

#[derive(Debug)]
enum TarEntry {
    Dir(String, u32, u64, u64),
    File(String, u32, u64, u64, String),
    Symlink(String, String),
    Hardlink(String, String),
}

impl Setup {
    /// Parses `text` (the contents of a `SETUP` file).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut setup = Self::default();
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        while let Some((n, line)) = lines.next() {
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            let rest = rest.trim();
            let step = match word {
                "build-arg" => {
                    setup.build_args.push(rest.to_owned());
                    continue;
                }
                "mount-stub" => {
                    setup.mount_stubs.push(rest.to_owned());
                    continue;
                }
                "target" => {
                    setup.target = Some(rest.to_owned());
                    continue;
                }
                "secret" => {
                    let (id, text) = two(rest, n)?;
                    setup.secrets.push((id.to_owned(), unescape(text)));
                    continue;
                }
                "file" => {
                    let (path, text) = two(rest, n)?;
                    Step::File(path.to_owned(), unescape(text))
                }
                "mkdir" => Step::Mkdir(rest.to_owned()),
                "symlink" => {
                    let (path, target) = two(rest, n)?;
                    Step::Symlink(path.to_owned(), target.to_owned())
                }
                "hardlink" => {
                    let (path, existing) = two(rest, n)?;
                    Step::Hardlink(path.to_owned(), existing.to_owned())
                }
                "chown" => {
                    let (owner, path) = two(rest, n)?;
                    let (uid, gid) = owner_of(owner, n)?;
                    Step::Chown(
                        u32::try_from(uid).map_err(|_| format!("line {n}: uid"))?,
                        u32::try_from(gid).map_err(|_| format!("line {n}: gid"))?,
                        path.to_owned(),
                    )
                }
                "chmod" => {
                    let (mode, path) = two(rest, n)?;
                    Step::Chmod(mode_of(mode, n)?, path.to_owned())
                }
                "tar" => {
                    let mut entries = Vec::new();
                    loop {
                        let Some((n, line)) = lines.next() else {
                            return Err(format!("line {n}: tar {rest} without `end`"));
                        };
                        if line == "end" {
                            break;
                        }
                        entries.push(tar_entry(line, n)?);
                    }
                    Step::Tar(rest.to_owned(), entries)
                }
                other => return Err(format!("line {n}: unknown directive {other:?}")),
            };
            setup.steps.push(step);
        }
        Ok(setup)
    }

    /// Makes the context in `context` (already a copy of the case's files).
    pub(crate) fn apply(&self, context: &Path) -> Result<(), String> {
        for step in &self.steps {
            apply_step(step, context)?;
        }
        set_times(context)
    }
}

/// `WORD REST` → (WORD, REST).
fn two(text: &str, n: usize) -> Result<(&str, &str), String> {
    text.split_once(' ')
        .map(|(a, b)| (a, b.trim_start()))
        .ok_or_else(|| format!("line {n}: expected two arguments in {text:?}"))
}

fn owner_of(text: &str, n: usize) -> Result<(u64, u64), String> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or_else(|| format!("line {n}: owner {text:?} is not UID:GID"))?;
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("line {n}: {s:?} is not a number"))
    };
    Ok((number(uid)?, number(gid)?))
}

fn mode_of(text: &str, n: usize) -> Result<u32, String> {
    u32::from_str_radix(text, 8).map_err(|_| format!("line {n}: mode {text:?} is not octal"))
}

fn tar_entry(line: &str, n: usize) -> Result<TarEntry, String> {
    let words: Vec<&str> = line.splitn(5, ' ').collect();
    Ok(match words.as_slice() {
        ["dir", path, mode, owner] => {
            let (uid, gid) = owner_of(owner, n)?;
            TarEntry::Dir((*path).to_owned(), mode_of(mode, n)?, uid, gid)
        }
        ["file", path, mode, owner, text] => {
            let (uid, gid) = owner_of(owner, n)?;
            TarEntry::File(
                (*path).to_owned(),
                mode_of(mode, n)?,
                uid,
                gid,
                unescape(text),
            )
        }
        ["symlink", path, target] => TarEntry::Symlink((*path).to_owned(), (*target).to_owned()),
        ["hardlink", path, existing] => {
            TarEntry::Hardlink((*path).to_owned(), (*existing).to_owned())
        }
        _ => return Err(format!("line {n}: bad tar entry {line:?}")),
    })
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// `rel` inside `context`, refusing anything that would leave it.
fn inside(context: &Path, rel: &str) -> Result<PathBuf, String> {
    let rel = Path::new(rel);
    if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
        return Err(format!(
            "{} is not a path inside the context",
            rel.display()
        ));
    }
    Ok(context.join(rel))
}

fn apply_step(step: &Step, context: &Path) -> Result<(), String> {
    let io = |what: &str, path: &Path| {
        let path = path.display().to_string();
        let what = what.to_owned();
        move |e: std::io::Error| format!("{what} {path}: {e}")
    };
    match step {
        Step::File(rel, text) => {
            let path = inside(context, rel)?;
            make_parent(&path)?;
            fs::write(&path, text).map_err(io("writing", &path))
        }
        Step::Mkdir(rel) => {
            let path = inside(context, rel)?;
            fs::create_dir_all(&path).map_err(io("making", &path))
        }
        Step::Symlink(rel, target) => {
            let path = inside(context, rel)?;
            make_parent(&path)?;
            symlink(target, &path).map_err(io("linking", &path))
        }
        Step::Hardlink(rel, existing) => {
            let path = inside(context, rel)?;
            make_parent(&path)?;
            fs::hard_link(inside(context, existing)?, &path).map_err(io("linking", &path))
        }
        Step::Chown(uid, gid, rel) => {
            let path = inside(context, rel)?;
            std::os::unix::fs::lchown(&path, Some(*uid), Some(*gid)).map_err(io("chown", &path))
        }
        Step::Chmod(mode, rel) => {
            let path = inside(context, rel)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                .map_err(io("chmod", &path))
        }
        Step::Tar(rel, entries) => {
            let path = inside(context, rel)?;
            make_parent(&path)?;
            let bytes = archive(rel, entries)?;
            fs::write(&path, bytes).map_err(io("writing", &path))
        }
    }
}

fn make_parent(path: &Path) -> Result<(), String> {
    match path.parent() {
        Some(parent) => {
            fs::create_dir_all(parent).map_err(|e| format!("making {}: {e}", parent.display()))
        }
        None => Ok(()),
    }
}

/// The archive `name`'s bytes: entries as listed, compressed as its name says.
fn archive(name: &str, entries: &[TarEntry]) -> Result<Vec<u8>, String> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        let (kind, path, mode, uid, gid) = match entry {
            TarEntry::Dir(p, m, u, g) => (tar::EntryType::Directory, p, *m, *u, *g),
            TarEntry::File(p, m, u, g, _) => (tar::EntryType::Regular, p, *m, *u, *g),
            TarEntry::Symlink(p, _) => (tar::EntryType::Symlink, p, 0o777, 0, 0),
            TarEntry::Hardlink(p, _) => (tar::EntryType::Link, p, 0o644, 0, 0),
        };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(CONTEXT_TIME);
        header.set_size(0);
        let appended = match entry {
            TarEntry::File(.., text) => {
                header.set_size(text.len() as u64);
                tar.append_data(&mut header, path, text.as_bytes())
            }
            TarEntry::Symlink(_, target) | TarEntry::Hardlink(_, target) => {
                tar.append_link(&mut header, path, target)
            }
            TarEntry::Dir(..) => tar.append_data(&mut header, path, std::io::empty()),
        };
        appended.map_err(|e| format!("{name}: entry {path}: {e}"))?;
    }
    let bytes = tar
        .into_inner()
        .map_err(|e| format!("{name}: finishing: {e}"))?;
    if name.ends_with(".gz") || name.ends_with(".tgz") {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes)
            .and_then(|()| gz.finish())
            .map_err(|e| format!("{name}: gzip: {e}"))
    } else {
        Ok(bytes)
    }
}

/// Every path in `context` (symlinks themselves) gets [`CONTEXT_TIME`].
fn set_times(context: &Path) -> Result<(), String> {
    let mut paths = Vec::new();
    collect(context, &mut paths)?;
    // touch -h: the link itself; std has no lutimes.
    let status = Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{CONTEXT_TIME}"))
        .args(&paths)
        .status()
        .map_err(|e| format!("running touch: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("touch -h on the context failed: {status}"))
    }
}

/// `dir` and every path below it, children before their directory (a
/// directory's time is set after what is made in it).
fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            collect(&path, out)?;
        } else {
            out.push(path);
        }
    }
    out.push(dir.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_directive() {
        let setup = Setup::parse(
            "# a comment\nbuild-arg A=1\ntarget t\nsecret tok a\\nb\nmount-stub /ctx\n\
             file d/f x y\\tz\nmkdir e\nsymlink l f\nhardlink h d/f\nchown 1:2 d/f\nchmod 4755 d/f\n\
             tar a.tgz\n  dir d 0755 1:1\n  file d/x 0600 0:0 hi\\n\n  symlink d/s x\nend\n",
        )
        .unwrap();
        assert_eq!(setup.build_args, ["A=1"]);
        assert_eq!(setup.target.as_deref(), Some("t"));
        assert_eq!(setup.secrets, [("tok".to_owned(), "a\nb".to_owned())]);
        assert_eq!(setup.mount_stubs, ["/ctx"]);
        assert_eq!(setup.steps.len(), 7);
        assert!(matches!(&setup.steps[0], Step::File(p, t) if p == "d/f" && t == "x y\tz"));
        assert!(matches!(&setup.steps[6], Step::Tar(n, e) if n == "a.tgz" && e.len() == 3));
    }

    #[test]
    fn refuses_unknown_directives_and_paths_outside() {
        assert!(Setup::parse("copy a b\n").is_err());
        assert!(Setup::parse("tar a.tar\n  file x 0644 0:0 y\n").is_err());
        assert!(Setup::parse("chmod 9 x\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup::parse("file ../escape x\n").unwrap();
        assert!(setup.apply(dir.path()).is_err());
    }

    #[test]
    fn makes_the_context_with_fixed_times() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup::parse(
            "file a hi\nsymlink l a\nhardlink h a\nchmod 0600 a\ntar t.tar\n  file x 0640 7:8 x\nend\n",
        )
        .unwrap();
        setup.apply(dir.path()).unwrap();
        let a = fs::metadata(dir.path().join("a")).unwrap();
        assert_eq!(a.mode() & 0o7777, 0o600);
        assert_eq!(a.nlink(), 2);
        assert_eq!(a.mtime(), i64::try_from(CONTEXT_TIME).unwrap());
        let l = fs::symlink_metadata(dir.path().join("l")).unwrap();
        assert_eq!(l.mtime(), i64::try_from(CONTEXT_TIME).unwrap());
        let mut tar = tar::Archive::new(fs::File::open(dir.path().join("t.tar")).unwrap());
        let entry = tar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.header().uid().unwrap(), 7);
        assert_eq!(entry.header().mode().unwrap(), 0o640);
    }
}
