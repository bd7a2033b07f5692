//! An overlay upperdir → an OCI layer tar.
//!
//! The upperdir holds exactly what a step changed: new and modified files,
//! whiteouts (character devices 0/0) for deletions, and opaque directories
//! (xattr `trusted.overlay.opaque=y`) for directories replaced whole. The
//! tar lists entries in sorted order, so the same upperdir always makes the
//! same bytes (and digest).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{LayerError, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, Result, WHITEOUT_PREFIX, io_err};

/// Writes the layer for `upper` to `out` and returns `out`.
pub fn diff<W: Write>(upper: &Path, out: W) -> Result<W> {
    diff_clamped(upper, out, None)
}

/// [`diff`] with every mtime at most `clamp` (seconds since the epoch):
/// `SOURCE_DATE_EPOCH`, so that the same build makes the same bytes.
pub fn diff_clamped<W: Write>(upper: &Path, out: W, clamp: Option<u64>) -> Result<W> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut walk = Walk {
        links: HashMap::new(),
        clamp,
    };
    walk.dir(&mut tar, upper, "")?;
    tar.into_inner().map_err(LayerError::Tar)
}

struct Walk {
    /// First path of each multiply-linked inode, for hard links.
    links: HashMap<(u64, u64), String>,
    clamp: Option<u64>,
}

impl Walk {
    fn mtime(&self, meta: &fs::Metadata) -> u64 {
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        self.clamp.map_or(mtime, |c| mtime.min(c))
    }

    fn dir<W: Write>(&mut self, tar: &mut tar::Builder<W>, dir: &Path, prefix: &str) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(io_err("reading", dir))?
            .map(|e| e.map(|e| e.file_name()).map_err(io_err("reading", dir)))
            .collect::<Result<_>>()?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let name = name.to_string_lossy();
            let rel = format!("{prefix}{name}");
            let meta = fs::symlink_metadata(&path).map_err(io_err("reading", &path))?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                // overlayfs's whiteout.
                empty_file(
                    tar,
                    &format!("{prefix}{WHITEOUT_PREFIX}{name}"),
                    self.mtime(&meta),
                )?;
                continue;
            }
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            header.set_mtime(self.mtime(&meta));
            append_xattrs(tar, &path)?;
            if ft.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                append(tar, &mut header, &format!("{rel}/"), std::io::empty())?;
                if xattr::get(&path, OVERLAY_OPAQUE_XATTR)
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some(b"y")
                {
                    empty_file(tar, &format!("{rel}/{OPAQUE_MARKER}"), self.mtime(&meta))?;
                }
                self.dir(tar, &path, &format!("{rel}/"))?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(io_err("reading", &path))?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &rel, &target)
                    .map_err(io_err("writing", &path))?;
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                        header.set_entry_type(tar::EntryType::Link);
                        header.set_size(0);
                        tar.append_link(&mut header, &rel, first)
                            .map_err(io_err("writing", &path))?;
                        continue;
                    }
                    self.links.insert((meta.dev(), meta.ino()), rel.clone());
                }
                let file = File::open(&path).map_err(io_err("opening", &path))?;
                append(tar, &mut header, &rel, file)?;
            } else {
                // Devices and fifos: the header carries everything.
                header.set_size(0);
                append(tar, &mut header, &rel, std::io::empty())?;
            }
        }
        Ok(())
    }
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    header: &mut tar::Header,
    path: &str,
    data: impl std::io::Read,
) -> Result<()> {
    tar.append_data(header, path, data)
        .map_err(|e| io_err("writing layer entry", Path::new(path))(e))
}

/// A marker file (`.wh.name`, `.wh..wh..opq`): empty, owned by root.
fn empty_file<W: Write>(tar: &mut tar::Builder<W>, path: &str, mtime: u64) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(0);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    append(tar, &mut header, path, std::io::empty())
}

/// The file's extended attributes (capabilities, ACLs) as PAX records;
/// overlay's own are not part of a layer.
fn append_xattrs<W: Write>(tar: &mut tar::Builder<W>, path: &Path) -> Result<()> {
    let Ok(names) = xattr::list(path) else {
        return Ok(());
    };
    let mut records = Vec::new();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        if let Ok(Some(value)) = xattr::get(path, &name) {
            records.push((format!("SCHILY.xattr.{name}"), value));
        }
    }
    if records.is_empty() {
        return Ok(());
    }
    tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(|e| LayerError::Io {
            action: "writing xattrs of",
            path: path.to_owned(),
            source: e,
        })
}
