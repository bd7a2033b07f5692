//! Content digests of build-context files, for cache keys: path, type,
//! mode (unless `--chmod` replaces it), size and content — never mtimes, so
//! touching a file without changing it keeps the cache.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kiln_cache::Hasher;
use kiln_frontend::dockerignore::Matcher;

/// The digest of what `sources` (context paths, possibly with wildcards)
/// cover in `context`, minus what `.dockerignore` excludes.
pub(super) fn digest(
    context: &Path,
    sources: &[String],
    ignore: &Matcher,
    with_mode: bool,
) -> String {
    let mut h = Hasher::default();
    for source in sources {
        // A wildcard covers its directory: hash from the last plain part.
        let parts: Vec<&str> = source
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let plain = parts
            .iter()
            .take_while(|p| !p.contains(['*', '?', '[']))
            .count();
        let base = parts[..plain].join("/");
        h.update(source.as_bytes());
        h.update(b"\0");
        walk(context, &base, ignore, with_mode, &mut h);
    }
    h.finish().to_string()
}

fn walk(context: &Path, rel: &str, ignore: &Matcher, with_mode: bool, h: &mut Hasher) {
    if !rel.is_empty() && ignore.excludes(rel) {
        return;
    }
    let path = context.join(rel);
    let Ok(meta) = fs::symlink_metadata(&path) else {
        h.update(b"missing\0");
        return;
    };
    h.update(rel.as_bytes());
    h.update(b"\0");
    let kind = if meta.is_dir() {
        b'd'
    } else if meta.file_type().is_symlink() {
        b'l'
    } else {
        b'f'
    };
    h.update(&[kind]);
    if with_mode {
        h.update(&meta.permissions().mode().to_le_bytes());
    }
    match kind {
        b'd' => {
            let mut names: Vec<String> = fs::read_dir(&path)
                .map(|d| {
                    d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            for name in names {
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                walk(context, &child, ignore, with_mode, h);
            }
        }
        b'l' => {
            if let Ok(target) = fs::read_link(&path) {
                h.update(target.as_os_str().as_encoded_bytes());
            }
        }
        _ => {
            h.update(&meta.size().to_le_bytes());
            if let Ok(mut file) = fs::File::open(&path) {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = file.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_not_mtime() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), "a").unwrap();
        fs::write(dir.path().join("b.txt"), "b").unwrap();
        fs::write(dir.path().join("ignored.log"), "x").unwrap();
        let ignore = Matcher::new(&["*.log".into()]).unwrap();
        let all = || digest(dir.path(), &["/".into()], &ignore, true);
        let only_a = || digest(dir.path(), &["/a.txt".into()], &ignore, true);
        let (d1, a1) = (all(), only_a());
        let f = fs::File::options()
            .write(true)
            .open(dir.path().join("a.txt"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            (all(), only_a()),
            (d1.clone(), a1.clone()),
            "mtime does not count"
        );
        fs::write(dir.path().join("ignored.log"), "changed").unwrap();
        assert_eq!(all(), d1, ".dockerignore'd files do not count");
        fs::write(dir.path().join("b.txt"), "B").unwrap();
        assert_ne!(all(), d1);
        assert_eq!(only_a(), a1, "a copy of a.txt does not depend on b.txt");
        fs::set_permissions(dir.path().join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(only_a(), a1);
        assert_eq!(
            digest(dir.path(), &["/a.txt".into()], &ignore, false),
            digest(dir.path(), &["/a.txt".into()], &ignore, false)
        );
    }
}
