//! An overlay upperdir → an OCI layer tar.
//!
//! The upperdir holds exactly what a step changed: new and modified files,
//! whiteouts (character devices 0/0) for deletions, and opaque directories
//! (xattr `trusted.overlay.opaque=y`) for directories replaced whole. The
//! tar lists entries in sorted order, so the same upperdir always makes the
//! same bytes (and digest).
//!
//! Those bytes must never change: a step's diff ID is the digest of this
//! tar, hashed when the step ends, and the blob is made again from the
//! snapshot later and checked against it — a store written by an older
//! kiln must still read. `tests/layer_diff.rs` compares every kind of
//! entry with the plain sequential walk this one replaced.
//!
//! The walk is bound by system calls (thousands of small files), so it is
//! split in three: [`walk`] lists directories by descriptor and numbers
//! every entry in tar order, a few readers ([`read`]) stat each entry and
//! read its xattrs and small contents ahead, and this thread takes their
//! results back in order ([`ahead`]) and only formats and writes.

mod ahead;
mod read;
mod walk;

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use self::read::{Body, Data, Entry, Stat};
use super::{LayerError, OPAQUE_MARKER, Result, WHITEOUT_PREFIX, io_err};

/// Readers stat'ing and reading entries ahead of the tar. Their work is
/// system calls; two keep a two-core machine busy beside the thread that
/// hashes or compresses the tar.
const READERS: usize = 2;

/// The reads a large file is streamed with.
const STREAM_BUFFER: usize = 256 * 1024;

/// Writes the layer for `upper` to `out` and returns `out`.
pub fn diff<W: Write>(upper: &Path, out: W) -> Result<W> {
    diff_clamped(upper, out, None)
}

/// [`diff`] with every mtime at most `clamp` (seconds since the epoch):
/// `SOURCE_DATE_EPOCH`, so that the same build makes the same bytes.
pub fn diff_clamped<W: Write>(upper: &Path, out: W, clamp: Option<u64>) -> Result<W> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut writer = Writer {
        tar,
        links: HashMap::new(),
        clamp,
    };
    // (A failure leaves `out` as it always did: the builder, dropped,
    // ends the archive.)
    let root = walk::Dir::open_root(upper)?;
    ahead::run(root, READERS, |entry| writer.entry(entry))?;
    writer.tar.into_inner().map_err(LayerError::Tar)
}

/// The tar being written, one entry after the other, in walk order.
struct Writer<W: Write> {
    tar: tar::Builder<W>,
    /// First path of each multiply-linked inode, for hard links.
    links: HashMap<(u64, u64), String>,
    clamp: Option<u64>,
}

impl<W: Write> Writer<W> {
    fn mtime(&self, stat: &Stat) -> u64 {
        let mtime = u64::try_from(stat.mtime).unwrap_or(0);
        self.clamp.map_or(mtime, |c| mtime.min(c))
    }

    /// Writes `entry`: its xattrs, then its header and data (or marker).
    fn entry(&mut self, entry: Entry) -> Result<()> {
        let Entry {
            path,
            rel,
            name_at,
            stat,
            xattrs,
            body,
        } = entry;
        let mtime = self.mtime(&stat);
        let mut header = header(&stat, mtime);
        // (None for a whiteout: it is not read.)
        append_xattrs(&mut self.tar, &xattrs, &path)?;
        match body {
            Body::Whiteout => {
                // overlayfs's whiteout.
                let (prefix, name) = rel.split_at(name_at);
                empty_file(
                    &mut self.tar,
                    &format!("{prefix}{WHITEOUT_PREFIX}{name}"),
                    mtime,
                )
            }
            Body::Dir { opaque } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                append(&mut self.tar, &mut header, &format!("{rel}/"), io::empty())?;
                if opaque {
                    empty_file(&mut self.tar, &format!("{rel}/{OPAQUE_MARKER}"), mtime)?;
                }
                Ok(())
            }
            Body::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                self.tar
                    .append_link(&mut header, &rel, &target)
                    .map_err(io_err("writing", &path))
            }
            Body::File(data) => self.file(header, &stat, rel, &path, data),
            Body::Other => {
                // Devices, fifos, sockets: the header carries everything.
                header.set_size(0);
                append(&mut self.tar, &mut header, &rel, io::empty())
            }
        }
    }

    /// A regular file: its data, or a link to its first name.
    fn file(
        &mut self,
        mut header: tar::Header,
        stat: &Stat,
        rel: String,
        path: &Path,
        data: Data,
    ) -> Result<()> {
        if stat.nlink > 1 {
            let key = (stat.dev, stat.ino);
            if let Some(first) = self.links.get(&key) {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                return self
                    .tar
                    .append_link(&mut header, &rel, first)
                    .map_err(io_err("writing", path));
            }
            self.links.insert(key, rel.clone());
        }
        match data {
            Data::Read(bytes) => append(&mut self.tar, &mut header, &rel, bytes.as_slice()),
            Data::Open(file) => {
                // The tar copies in 8 KiB pieces: read in larger ones.
                let data = read::Exact::new(file, stat.size, path);
                let buffer = usize::try_from(stat.size).map_or(STREAM_BUFFER, |size| {
                    STREAM_BUFFER.min(size.saturating_add(1))
                });
                let data = io::BufReader::with_capacity(buffer, data);
                append(&mut self.tar, &mut header, &rel, data)
            }
        }
    }
}

/// The header `tar::Header::set_metadata_in_mode(meta, Complete)` makes
/// from an lstat of the entry, from our own stat (the tar crate takes
/// only `std::fs::Metadata`, which a descriptor-relative `fstatat` cannot
/// give), with the mtime set to `mtime`: type, mode with its type bits,
/// owner, size (none for directories and symlinks), device numbers 0.
fn header(stat: &Stat, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mtime(mtime);
    header.set_uid(u64::from(stat.uid));
    header.set_gid(u64::from(stat.gid));
    header.set_mode(stat.mode);
    header.set_entry_type(entry_type(stat.mode));
    header.set_size(if stat.is_dir() || stat.is_symlink() {
        0
    } else {
        stat.size
    });
    if let Some(gnu) = header.as_gnu_mut() {
        gnu.set_device_major(0);
        gnu.set_device_minor(0);
    }
    header
}

/// The tar type of a file of mode `mode`, as the tar crate maps it
/// (sockets have none: `' '`).
fn entry_type(mode: u32) -> tar::EntryType {
    match mode & nix::libc::S_IFMT {
        nix::libc::S_IFREG => tar::EntryType::file(),
        nix::libc::S_IFLNK => tar::EntryType::symlink(),
        nix::libc::S_IFCHR => tar::EntryType::character_special(),
        nix::libc::S_IFBLK => tar::EntryType::block_special(),
        nix::libc::S_IFDIR => tar::EntryType::dir(),
        nix::libc::S_IFIFO => tar::EntryType::fifo(),
        _ => tar::EntryType::new(b' '),
    }
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    header: &mut tar::Header,
    path: &str,
    data: impl io::Read,
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
    append(tar, &mut header, path, io::empty())
}

/// The entry's extended attributes (capabilities, ACLs) as one PAX
/// header before it; none when it has none.
fn append_xattrs<W: Write>(
    tar: &mut tar::Builder<W>,
    records: &[(String, Vec<u8>)],
    path: &Path,
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(io_err("writing xattrs of", path))
}

/// A failed call on `path` as a [`LayerError`].
fn sys(action: &'static str, path: &Path) -> impl FnOnce(nix::errno::Errno) -> LayerError + use<> {
    let err = io_err(action, path);
    move |e| err(e.into())
}

#[cfg(test)]
mod tests;
