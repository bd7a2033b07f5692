//! The layer walk as it was before the descriptor-relative, read-ahead one
//! (`kiln_worker::layer::diff` at 609345f), kept as the oracle its output
//! must equal byte for byte: layers already in stores were hashed by it.
//! Only the error type changed (`io::Error`, so that the tests and the
//! bench can both include this file); every byte written is as it was.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// `diff_clamped` as it was.
pub(crate) fn diff_clamped<W: Write>(upper: &Path, out: W, clamp: Option<u64>) -> io::Result<W> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut walk = Walk {
        links: HashMap::new(),
        clamp,
    };
    walk.dir(&mut tar, upper, "")?;
    tar.into_inner()
}

struct Walk {
    links: HashMap<(u64, u64), String>,
    clamp: Option<u64>,
}

impl Walk {
    fn mtime(&self, meta: &fs::Metadata) -> u64 {
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        self.clamp.map_or(mtime, |c| mtime.min(c))
    }

    fn dir<W: Write>(
        &mut self,
        tar: &mut tar::Builder<W>,
        dir: &Path,
        prefix: &str,
    ) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let name = name.to_string_lossy();
            let rel = format!("{prefix}{name}");
            let meta = fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
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
                tar.append_data(&mut header, format!("{rel}/"), io::empty())?;
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
                let target = fs::read_link(&path)?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &rel, &target)?;
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                        header.set_entry_type(tar::EntryType::Link);
                        header.set_size(0);
                        tar.append_link(&mut header, &rel, first)?;
                        continue;
                    }
                    self.links.insert((meta.dev(), meta.ino()), rel.clone());
                }
                let file = File::open(&path)?;
                tar.append_data(&mut header, &rel, file)?;
            } else {
                header.set_size(0);
                tar.append_data(&mut header, &rel, io::empty())?;
            }
        }
        Ok(())
    }
}

fn empty_file<W: Write>(tar: &mut tar::Builder<W>, path: &str, mtime: u64) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(0);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    tar.append_data(&mut header, path, io::empty())
}

fn append_xattrs<W: Write>(tar: &mut tar::Builder<W>, path: &Path) -> io::Result<()> {
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
}
