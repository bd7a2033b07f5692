//! eStargz (`-o …,compression=estargz`): a gzip layer that runtimes can
//! pull lazily, per containerd/stargz-snapshotter's `docs/estargz.md`.
//! Every regular file's data starts a gzip member of its own (one per
//! `chunk_size` bytes of it), the tar stream is otherwise unchanged
//! (BuildKit's compressor is lossless: `AppendTarLossLess`), and after it
//! come the TOC (`stargz.index.json`, the last tar entry, in a member of
//! its own) and the 51-byte footer naming the TOC's offset.
//!
//! [`Writer`] takes the layer's tar as it streams (a push of a build's
//! layer compresses while it uploads): entries are parsed as their bytes
//! arrive, offsets are known as members are written, and the TOC is
//! written at the end from the entries kept.
//!
//! As BuildKit, no landmark file (`.prefetch.landmark`,
//! `.no.prefetch.landmark`) is added: the layer's files are the build's
//! (BuildKit does not do prefetch optimization), and a runtime finding
//! neither prefetches by its own default. The gunzipped blob is the layer's
//! tar followed by the TOC's tar, so its diff ID is not the uncompressed
//! layer's: an image leaving with eStargz layers gets a config of its own.

mod header;
pub mod toc;

use std::collections::HashMap;
use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use kiln_cache::{Digest, Hasher};
use thiserror::Error;

use self::header::{BLOCK, EntryType, Kind, Pending};
pub use self::toc::{TOC_DIGEST_ANNOTATION, Toc, TocEntry, UNCOMPRESSED_SIZE_ANNOTATION};

/// The largest piece of a regular file's data in one gzip member: the
/// `estargz` package's default (`ChunkSize` 4 MiB), which BuildKit uses.
pub const CHUNK_SIZE: u64 = 4 << 20;

/// The most TOC entries (tar entries and chunks) a layer may have: its
/// TOC is kept in memory until the layer ends, and a runtime reads it
/// whole before it mounts the layer.
pub const MAX_TOC_ENTRIES: usize = 1 << 20;

/// How much of a member deflate is given at once.
const PIECE: usize = 64 << 10;

#[derive(Debug, Error)]
pub enum EstargzError {
    #[error("the layer's tar stream has a bad header: {0}")]
    Header(&'static str),
    #[error("the layer's tar stream has a {0:?} entry, which eStargz cannot name")]
    EntryType(char),
    #[error(
        "the layer has a file {0:?}, the name eStargz reserves for its TOC (BuildKit refuses such a layer too)"
    )]
    TocName(String),
    #[error(
        "the layer has more than {MAX_TOC_ENTRIES} files and chunks, more than an eStargz TOC may name (the limit)"
    )]
    TooManyEntries,
    #[error("a PAX header or GNU long name of {0} bytes, more than {max} (the limit)", max = header::MAX_EXTENSION)]
    Extension(u64),
    #[error("the layer's tar stream ended inside an entry")]
    Truncated,
}

impl From<EstargzError> for io::Error {
    fn from(e: EstargzError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// What an eStargz layer is besides its blob: the digest of its TOC (the
/// `containerd.io/snapshot/stargz/toc.digest` annotation), and the digest
/// and size of its gunzipped blob (its diff ID; the
/// `io.containers.estargz.uncompressed-size` annotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub toc_digest: Digest,
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

impl Made {
    /// The layer descriptor's annotations, as BuildKit sets them.
    pub fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        [
            (TOC_DIGEST_ANNOTATION, self.toc_digest.to_string()),
            (
                UNCOMPRESSED_SIZE_ANNOTATION,
                self.uncompressed_size.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// Where the tar stream is.
#[derive(Debug)]
enum State {
    /// Collecting a header block.
    Header,
    /// Collecting a PAX header's or GNU long name's payload (`left` bytes
    /// more of `size`).
    Extension { kind: Kind, size: u64, left: u64 },
    /// A regular file's data: `left` bytes in all, `chunk_left` in the
    /// chunk (member) being written.
    Data {
        left: u64,
        chunk_left: u64,
        size: u64,
    },
    /// Bytes passed on as they are (another entry's payload, padding).
    Skip { left: u64 },
    /// After the end-of-archive block: the rest as it is.
    End,
}

/// One regular file being written: its entries' digests.
struct File {
    /// Index of its `reg` entry.
    entry: usize,
    whole: Hasher,
    chunk: Hasher,
}

/// An eStargz encoder over `W`: write the layer's tar into it, then
/// [`Writer::finish`].
pub struct Writer<W: Write> {
    out: W,
    /// Bytes written to `out` so far: the next member's offset.
    offset: u64,
    deflate: Compress,
    /// The open member's CRC; `None` between members.
    member: Option<Crc>,
    scratch: Vec<u8>,
    /// The open member's bytes not yet deflated: deflate is given whole
    /// [`PIECE`]s, so the bytes do not depend on how the tar arrived.
    input: Vec<u8>,
    level: u32,
    diff: Hasher,
    uncompressed: u64,
    state: State,
    block: Vec<u8>,
    extension: Vec<u8>,
    pending: Pending,
    entries: Vec<TocEntry>,
    file: Option<File>,
    users: HashMap<u64, String>,
    groups: HashMap<u64, String>,
    chunk_size: u64,
}

impl<W: Write> Writer<W> {
    /// gzip `level` (1–9) for every member.
    pub fn new(out: W, level: u32) -> Self {
        Self::with_chunk_size(out, level, CHUNK_SIZE)
    }

    fn with_chunk_size(out: W, level: u32, chunk_size: u64) -> Self {
        Self {
            out,
            offset: 0,
            deflate: Compress::new(Compression::new(level), false),
            member: None,
            scratch: vec![0; PIECE],
            input: Vec::with_capacity(PIECE),
            level,
            diff: Hasher::default(),
            uncompressed: 0,
            state: State::Header,
            block: Vec::with_capacity(BLOCK),
            extension: Vec::new(),
            pending: Pending::default(),
            entries: Vec::new(),
            file: None,
            users: HashMap::new(),
            groups: HashMap::new(),
            chunk_size,
        }
    }

    /// Ends the layer: its last member, the TOC, the footer.
    pub fn finish(mut self) -> io::Result<(W, Made)> {
        match self.state {
            State::End => {}
            State::Header if self.block.is_empty() => {}
            _ => return Err(EstargzError::Truncated.into()),
        }
        self.close_member()?;
        let toc_offset = self.offset;
        let json = toc::to_json(&Toc {
            version: 1,
            entries: std::mem::take(&mut self.entries),
        });
        self.open_member()?;
        self.raw(&toc_header(json.len() as u64))?;
        self.raw(&json)?;
        let padding = padding(json.len() as u64) + 2 * BLOCK as u64;
        self.raw(&vec![0; usize::try_from(padding).unwrap_or(0)])?;
        self.close_member()?;
        self.out.write_all(&toc::footer(toc_offset))?;
        self.out.flush()?;
        let made = Made {
            toc_digest: Digest::of(&json),
            diff_id: self.diff.finish(),
            uncompressed_size: self.uncompressed,
        };
        Ok((self.out, made))
    }

    /// Takes as much of `buf` as the current state wants.
    fn step(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.state {
            State::End => {
                self.raw(buf)?;
                Ok(buf.len())
            }
            State::Skip { left } => {
                let n = take(buf.len(), left);
                self.raw(&buf[..n])?;
                self.state = after(
                    left - n as u64,
                    State::Skip {
                        left: left - n as u64,
                    },
                );
                Ok(n)
            }
            State::Header => {
                let n = (BLOCK - self.block.len()).min(buf.len());
                self.raw(&buf[..n])?;
                self.block.extend_from_slice(&buf[..n]);
                if self.block.len() == BLOCK {
                    self.header()?;
                }
                Ok(n)
            }
            State::Extension { kind, size, left } => {
                let n = take(buf.len(), left);
                self.raw(&buf[..n])?;
                self.extension.extend_from_slice(&buf[..n]);
                let left = left - n as u64;
                if left == 0 {
                    let payload = std::mem::take(&mut self.extension);
                    self.pending.add(kind, &payload)?;
                    self.state = after(
                        padding(size),
                        State::Skip {
                            left: padding(size),
                        },
                    );
                } else {
                    self.state = State::Extension { kind, size, left };
                }
                Ok(n)
            }
            State::Data {
                left,
                chunk_left,
                size,
            } => self.data(buf, left, chunk_left, size),
        }
    }

    /// A whole header block is in `self.block`.
    fn header(&mut self) -> io::Result<()> {
        let block: [u8; BLOCK] = std::mem::take(&mut self.block)
            .try_into()
            .map_err(|_| io::Error::other("a header block of 512 bytes"))?;
        self.block = Vec::with_capacity(BLOCK);
        if header::is_zero(&block) {
            self.state = State::End;
            return Ok(());
        }
        let h = header::parse(&block)?;
        let Kind::Entry(kind) = h.kind else {
            if h.size > header::MAX_EXTENSION {
                return Err(EstargzError::Extension(h.size).into());
            }
            self.state = if h.size == 0 {
                State::Header
            } else {
                State::Extension {
                    kind: h.kind,
                    size: h.size,
                    left: h.size,
                }
            };
            return Ok(());
        };
        let h = self.pending.apply(h)?;
        if clean(&h.name) == toc::TOC_NAME {
            return Err(EstargzError::TocName(h.name).into());
        }
        if self.entries.len() >= MAX_TOC_ENTRIES {
            return Err(EstargzError::TooManyEntries.into());
        }
        let entry = self.entry(kind, &h);
        self.entries.push(entry);
        if kind == EntryType::Reg && h.size > 0 {
            self.file = Some(File {
                entry: self.entries.len() - 1,
                whole: Hasher::default(),
                chunk: Hasher::default(),
            });
            self.start_chunk(0, h.size)?;
            self.state = State::Data {
                left: h.size,
                chunk_left: h.size.min(self.chunk_size),
                size: h.size,
            };
        } else if kind == EntryType::Reg {
            let left = h.size + padding(h.size);
            self.state = after(left, State::Skip { left });
        } else {
            // Go's reader reads no payload after a header-only entry
            // (links, directories, devices, FIFOs), whatever its size says.
            self.state = State::Header;
        }
        Ok(())
    }

    /// The TOC entry of a header, as the `estargz` package makes it.
    fn entry(&mut self, kind: EntryType, h: &header::Header) -> TocEntry {
        let user = changed(&mut self.users, h.uid, &h.uname);
        let group = changed(&mut self.groups, h.gid, &h.gname);
        let mut entry = TocEntry {
            name: h.name.clone(),
            kind: kind.name().to_owned(),
            mode: h.mode,
            uid: h.uid,
            gid: h.gid,
            user_name: user,
            group_name: group,
            mod_time: toc::mod_time(h.mtime),
            xattrs: h
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), toc::base64(v)))
                .collect(),
            ..TocEntry::default()
        };
        match kind {
            EntryType::Hardlink | EntryType::Symlink => entry.link_name.clone_from(&h.link),
            EntryType::Reg => entry.size = h.size,
            EntryType::Char | EntryType::Block => {
                entry.dev_major = h.dev_major;
                entry.dev_minor = h.dev_minor;
            }
            EntryType::Dir | EntryType::Fifo => {}
        }
        entry
    }

    /// Starts the chunk of a file at `written` of `size`: a new member,
    /// named by the file's last entry (the `reg` one for the first chunk,
    /// a new `chunk` one after).
    fn start_chunk(&mut self, written: u64, size: u64) -> io::Result<()> {
        self.close_member()?;
        let offset = self.offset;
        self.open_member()?;
        let chunk_size = self.chunk_size;
        if written > 0 {
            if self.entries.len() >= MAX_TOC_ENTRIES {
                return Err(EstargzError::TooManyEntries.into());
            }
            let name = self.entries[self.file_entry()].name.clone();
            self.entries.push(TocEntry {
                name,
                kind: "chunk".to_owned(),
                ..TocEntry::default()
            });
        }
        let entry = self.entries.last_mut().expect("a file's entry");
        entry.offset = offset;
        entry.chunk_offset = written;
        // The estargz package sets the size of every chunk but a shorter
        // last one.
        if size - written >= chunk_size {
            entry.chunk_size = chunk_size;
        }
        Ok(())
    }

    fn file_entry(&self) -> usize {
        self.file.as_ref().map_or(0, |f| f.entry)
    }

    fn data(&mut self, buf: &[u8], left: u64, chunk_left: u64, size: u64) -> io::Result<usize> {
        let n = take(buf.len(), chunk_left);
        let piece = &buf[..n];
        self.raw(piece)?;
        if let Some(file) = self.file.as_mut() {
            file.whole.update(piece);
            file.chunk.update(piece);
        }
        let (left, chunk_left) = (left - n as u64, chunk_left - n as u64);
        if chunk_left > 0 {
            self.state = State::Data {
                left,
                chunk_left,
                size,
            };
            return Ok(n);
        }
        let mut file = self.file.take().expect("a file being written");
        let chunk = std::mem::take(&mut file.chunk).finish();
        self.entries
            .last_mut()
            .expect("a chunk's entry")
            .chunk_digest = chunk.to_string();
        if left == 0 {
            self.entries[file.entry].digest = file.whole.finish().to_string();
            self.state = after(
                padding(size),
                State::Skip {
                    left: padding(size),
                },
            );
        } else {
            self.file = Some(file);
            self.start_chunk(size - left, size)?;
            self.state = State::Data {
                left,
                chunk_left: left.min(self.chunk_size),
                size,
            };
        }
        Ok(n)
    }

    /// Bytes of the layer's tar (or the TOC's) into the open member (one
    /// is opened if none is), hashed for the diff ID.
    fn raw(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.member.is_none() {
            self.open_member()?;
        }
        self.diff.update(data);
        self.uncompressed += data.len() as u64;
        if let Some(crc) = self.member.as_mut() {
            crc.update(data);
        }
        let mut data = data;
        while !data.is_empty() {
            let n = (PIECE - self.input.len()).min(data.len());
            self.input.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.input.len() == PIECE {
                let piece = std::mem::replace(&mut self.input, Vec::with_capacity(PIECE));
                self.deflate_into(&piece, FlushCompress::None)?;
                self.input = piece;
                self.input.clear();
            }
        }
        Ok(())
    }

    /// A gzip header as Go's `compress/gzip` writes it: no name, mtime 0,
    /// XFL by level, OS unknown.
    fn open_member(&mut self) -> io::Result<()> {
        let xfl = match self.level {
            9 => 2,
            1 => 4,
            _ => 0,
        };
        self.write_out(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
        self.deflate.reset();
        self.member = Some(Crc::new());
        Ok(())
    }

    fn close_member(&mut self) -> io::Result<()> {
        let Some(crc) = self.member.take() else {
            return Ok(());
        };
        let rest = std::mem::take(&mut self.input);
        self.deflate_into(&rest, FlushCompress::Finish)?;
        self.input = rest;
        self.input.clear();
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&crc.sum().to_le_bytes());
        trailer[4..].copy_from_slice(&crc.amount().to_le_bytes());
        self.write_out(&trailer)
    }

    fn deflate_into(&mut self, mut input: &[u8], flush: FlushCompress) -> io::Result<()> {
        loop {
            let (before_in, before_out) = (self.deflate.total_in(), self.deflate.total_out());
            let status = self
                .deflate
                .compress(input, &mut self.scratch, flush)
                .map_err(io::Error::other)?;
            let consumed = usize::try_from(self.deflate.total_in() - before_in).unwrap_or(0);
            let produced = usize::try_from(self.deflate.total_out() - before_out).unwrap_or(0);
            self.out.write_all(&self.scratch[..produced])?;
            self.offset += produced as u64;
            input = &input[consumed..];
            let done = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                _ => input.is_empty() && produced < self.scratch.len(),
            };
            if done {
                return Ok(());
            }
        }
    }

    fn write_out(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.offset += data.len() as u64;
        Ok(())
    }
}

impl<W: Write> Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut at = 0;
        while at < buf.len() {
            at += self.step(&buf[at..])?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `state`, or the next header when nothing is left of it.
fn after(left: u64, state: State) -> State {
    if left == 0 { State::Header } else { state }
}

fn take(available: usize, left: u64) -> usize {
    usize::try_from(left).map_or(available, |l| l.min(available))
}

/// Zeros after `size` bytes of payload, to the next block.
fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Go's `path.Clean("/" + name)` without the leading slash, for the names
/// that matter here (`./stargz.index.json`, `a/../stargz.index.json`).
fn clean(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// The name if it is not what the last entry of that id said (the
/// `estargz` package names an owner once per run of the same id).
fn changed(last: &mut HashMap<u64, String>, id: u64, name: &str) -> String {
    if name.is_empty() || last.get(&id).is_some_and(|n| n == name) {
        return String::new();
    }
    last.insert(id, name.to_owned());
    name.to_owned()
}

/// The TOC's tar header: a ustar regular file of `size` bytes, mode,
/// owners and mtime zero, as Go's `archive/tar` writes the estargz
/// package's `tar.Header{Typeflag: TypeReg, Name, Size}`.
fn toc_header(size: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let octal = |b: &mut [u8; BLOCK], at: usize, len: usize, value: u64| {
        let text = format!("{value:0width$o}", width = len - 1);
        b[at..at + len - 1].copy_from_slice(text.as_bytes());
    };
    b[..toc::TOC_NAME.len()].copy_from_slice(toc::TOC_NAME.as_bytes());
    octal(&mut b, 100, 8, 0);
    octal(&mut b, 108, 8, 0);
    octal(&mut b, 116, 8, 0);
    octal(&mut b, 124, 12, size);
    octal(&mut b, 136, 12, 0);
    b[156] = b'0';
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b, 329, 8, 0);
    octal(&mut b, 337, 8, 0);
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|x| u64::from(*x)).sum();
    octal(&mut b, 148, 7, sum);
    b[155] = b' ';
    b
}

#[cfg(test)]
mod tests;
