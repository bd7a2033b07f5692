//! The tar headers an eStargz writer reads as the layer streams by: the
//! fields its TOC records (name, type, size, mode, owners, mtime, link,
//! device numbers, xattrs), from ustar, GNU and PAX headers, as Go's
//! `archive/tar` reads them (the reader BuildKit's eStargz compressor
//! uses), so the TOC says what it would say.

use std::collections::BTreeMap;

use super::EstargzError;

/// The size of a tar block.
pub(crate) const BLOCK: usize = 512;

/// The largest PAX extended header or GNU long name/link read into memory
/// (a real one is a few hundred bytes; Go's `archive/tar` allows 1 MiB).
pub(crate) const MAX_EXTENSION: u64 = 1 << 20;

/// What a header block says its entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A PAX extended header for the next entry (`x`).
    Pax,
    /// A GNU long name (`L`) or long link target (`K`) for the next entry.
    LongName,
    LongLink,
    Entry(EntryType),
}

/// The entry types eStargz's TOC names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryType {
    Reg,
    Hardlink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

impl EntryType {
    /// The TOC's name for it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Reg => "reg",
            Self::Hardlink => "hardlink",
            Self::Symlink => "symlink",
            Self::Char => "char",
            Self::Block => "block",
            Self::Dir => "dir",
            Self::Fifo => "fifo",
        }
    }
}

/// One header block, parsed; PAX and GNU extensions are applied by
/// [`Pending::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: Kind,
    pub name: String,
    pub link: String,
    /// The entry's data size (what follows the header, padded to a block).
    pub size: u64,
    pub mode: i64,
    pub uid: u64,
    pub gid: u64,
    pub uname: String,
    pub gname: String,
    /// Seconds since the epoch (fractions from PAX are rounded as Go's
    /// `time.Round(time.Second)` would).
    pub mtime: i64,
    pub dev_major: i64,
    pub dev_minor: i64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Whether a block is all zeros: the end of the archive.
pub(crate) fn is_zero(block: &[u8]) -> bool {
    block.iter().all(|b| *b == 0)
}

/// Parses one 512-byte header block.
pub(crate) fn parse(block: &[u8; BLOCK]) -> Result<Header, EstargzError> {
    check_sum(block)?;
    let ustar = &block[257..263] == b"ustar\0";
    let text = |range: std::ops::Range<usize>| cstr(&block[range]);
    let mut name = text(0..100);
    let prefix = text(345..500);
    if ustar && !prefix.is_empty() {
        name = format!("{prefix}/{name}");
    }
    let flag = block[156];
    let kind = match flag {
        b'x' => Kind::Pax,
        b'L' => Kind::LongName,
        b'K' => Kind::LongLink,
        b'0' => Kind::Entry(EntryType::Reg),
        // Go's reader: an old-style regular file, or a directory when its
        // name ends in a slash.
        0 if name.ends_with('/') => Kind::Entry(EntryType::Dir),
        0 => Kind::Entry(EntryType::Reg),
        b'1' => Kind::Entry(EntryType::Hardlink),
        b'2' => Kind::Entry(EntryType::Symlink),
        b'3' => Kind::Entry(EntryType::Char),
        b'4' => Kind::Entry(EntryType::Block),
        b'5' => Kind::Entry(EntryType::Dir),
        b'6' => Kind::Entry(EntryType::Fifo),
        other => return Err(EstargzError::EntryType(other as char)),
    };
    let size = numeric(&block[124..136], "size")?;
    Ok(Header {
        kind,
        name,
        link: text(157..257),
        size: u64::try_from(size).map_err(|_| EstargzError::Header("negative size"))?,
        mode: numeric(&block[100..108], "mode")?,
        uid: u64::try_from(numeric(&block[108..116], "uid")?).unwrap_or(0),
        gid: u64::try_from(numeric(&block[116..124], "gid")?).unwrap_or(0),
        uname: text(265..297),
        gname: text(297..329),
        mtime: numeric(&block[136..148], "mtime")?,
        dev_major: numeric(&block[329..337], "devmajor")?,
        dev_minor: numeric(&block[337..345], "devminor")?,
        xattrs: BTreeMap::new(),
    })
}

fn check_sum(block: &[u8; BLOCK]) -> Result<(), EstargzError> {
    let stored = numeric(&block[148..156], "checksum")?;
    let unsigned: i64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(*b)
            }
        })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(i8::from_ne_bytes([*b]))
            }
        })
        .sum();
    if stored == unsigned || stored == signed {
        Ok(())
    } else {
        Err(EstargzError::Header("bad checksum"))
    }
}

/// A NUL-terminated field as text (bytes that are not UTF-8 replaced, as
/// Go's JSON encoder replaces them in the TOC).
fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// An octal field, or GNU's base-256 (high bit set).
fn numeric(field: &[u8], what: &'static str) -> Result<i64, EstargzError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let negative = field[0] & 0x40 != 0;
        let mut value: i64 = 0;
        for (i, b) in field.iter().enumerate() {
            let mut b = if negative { !b } else { *b };
            if i == 0 {
                b &= 0x7f;
            }
            if value >> 56 != 0 {
                return Err(EstargzError::Header(what));
            }
            value = (value << 8) | i64::from(b);
        }
        return Ok(if negative { -value - 1 } else { value });
    }
    let text = cstr(field);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Ok(0);
    }
    i64::from_str_radix(text, 8).map_err(|_| EstargzError::Header(what))
}

/// What PAX headers and GNU long names say about the next entry.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    records: BTreeMap<String, Vec<u8>>,
    long_name: Option<String>,
    long_link: Option<String>,
}

impl Pending {
    /// Records an extension's payload (`kind` is [`Kind::Pax`],
    /// [`Kind::LongName`] or [`Kind::LongLink`]).
    pub(crate) fn add(&mut self, kind: Kind, payload: &[u8]) -> Result<(), EstargzError> {
        match kind {
            Kind::Pax => parse_pax(payload, &mut self.records),
            Kind::LongName => {
                self.long_name = Some(cstr(payload));
                Ok(())
            }
            Kind::LongLink => {
                self.long_link = Some(cstr(payload));
                Ok(())
            }
            Kind::Entry(_) => Ok(()),
        }
    }

    /// The entry `header` with what came before it applied, as Go's
    /// reader merges them; the extensions are used up.
    pub(crate) fn apply(&mut self, mut header: Header) -> Result<Header, EstargzError> {
        let taken = std::mem::take(self);
        if let Some(name) = taken.long_name {
            header.name = name;
        }
        if let Some(link) = taken.long_link {
            header.link = link;
        }
        for (key, value) in taken.records {
            let text = || String::from_utf8_lossy(&value).into_owned();
            let number = |what| {
                text()
                    .parse::<u64>()
                    .map_err(|_| EstargzError::Header(what))
            };
            match key.as_str() {
                "path" => header.name = text(),
                "linkpath" => header.link = text(),
                "size" => header.size = number("PAX size")?,
                "uid" => header.uid = number("PAX uid")?,
                "gid" => header.gid = number("PAX gid")?,
                "uname" => header.uname = text(),
                "gname" => header.gname = text(),
                "mtime" => header.mtime = pax_time(&text())?,
                _ => {
                    if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                        header.xattrs.insert(attr.to_owned(), value);
                    }
                }
            }
        }
        Ok(header)
    }
}

/// `<length> <key>=<value>\n` records.
fn parse_pax(mut data: &[u8], into: &mut BTreeMap<String, Vec<u8>>) -> Result<(), EstargzError> {
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or(EstargzError::Header("PAX record"))?;
        let length: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|n| *n > space + 1 && *n <= data.len())
            .ok_or(EstargzError::Header("PAX record length"))?;
        let record = &data[space + 1..length];
        let record = record
            .strip_suffix(b"\n")
            .ok_or(EstargzError::Header("PAX record end"))?;
        let equals = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or(EstargzError::Header("PAX record key"))?;
        let key = String::from_utf8_lossy(&record[..equals]).into_owned();
        into.insert(key, record[equals + 1..].to_vec());
        data = &data[length..];
    }
    Ok(())
}

/// A PAX time (`1700000000.5`) in whole seconds, rounded half away from
/// zero as Go's `time.Round(time.Second)`.
fn pax_time(text: &str) -> Result<i64, EstargzError> {
    let bad = || EstargzError::Header("PAX mtime");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = whole.parse().map_err(|_| bad())?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let half_or_more = fraction.as_bytes().first().is_some_and(|d| *d >= b'5');
    Ok(match (half_or_more, whole.starts_with('-')) {
        (false, _) => seconds,
        (true, false) => seconds + 1,
        (true, true) => seconds - 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ustar_and_pax_headers_say_what_go_reads() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(50);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        let long = format!("{}/file", "d".repeat(150));
        builder
            .append_pax_extensions([("SCHILY.xattr.user.k", &b"v\x00w"[..]), ("mtime", b"5.5")])
            .unwrap();
        builder.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        let mut pending = Pending::default();
        let first: &[u8; BLOCK] = bytes[..BLOCK].try_into().unwrap();
        let pax = parse(first).unwrap();
        assert_eq!(pax.kind, Kind::Pax);
        let payload = &bytes[BLOCK..BLOCK + usize::try_from(pax.size).unwrap()];
        pending.add(Kind::Pax, payload).unwrap();
        // The long name goes as a GNU long name entry or a PAX path; the
        // tar crate writes a GNU one.
        let mut at = BLOCK + usize::try_from(pax.size).unwrap().div_ceil(BLOCK) * BLOCK;
        loop {
            let block: &[u8; BLOCK] = bytes[at..at + BLOCK].try_into().unwrap();
            let h = parse(block).unwrap();
            at += BLOCK;
            let size = usize::try_from(h.size).unwrap();
            if let Kind::Entry(kind) = h.kind {
                let h = pending.apply(h).unwrap();
                assert_eq!(kind, EntryType::Reg);
                assert_eq!(h.name, long);
                assert_eq!((h.mode, h.uid, h.gid, h.size), (0o4755, 1000, 50, 3));
                assert_eq!(h.mtime, 6, "PAX's 5.5 rounds up");
                assert_eq!(h.xattrs["user.k"], b"v\x00w");
                break;
            }
            pending.add(h.kind, &bytes[at..at + size]).unwrap();
            at += size.div_ceil(BLOCK) * BLOCK;
        }
    }

    #[test]
    fn base_256_and_bad_checksums() {
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[11] = 1;
        field[10] = 2;
        assert_eq!(numeric(&field, "size").unwrap(), 513);
        let mut block = [0u8; BLOCK];
        block[0] = b'a';
        block[156] = b'0';
        assert!(matches!(
            parse(&block),
            Err(EstargzError::Header("bad checksum"))
        ));
    }

    #[test]
    fn pax_times_round_as_go() {
        assert_eq!(pax_time("10").unwrap(), 10);
        assert_eq!(pax_time("10.49").unwrap(), 10);
        assert_eq!(pax_time("10.5").unwrap(), 11);
        assert_eq!(pax_time("-10.5").unwrap(), -11);
        assert!(pax_time("x").is_err());
    }
}
