//! The TOC (`stargz.index.json`): its entries, serialized as the
//! `estargz` Go package does (`json.MarshalIndent(toc, "", "\t")`, fields
//! in its struct's order, empty ones left out), and the footer that says
//! where it is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The TOC's tar entry name.
pub const TOC_NAME: &str = "stargz.index.json";

/// The footer's size: an empty gzip member whose extra field holds the
/// TOC's offset.
pub const FOOTER_SIZE: usize = 51;

/// The layer descriptor annotation naming the TOC's digest.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";

/// The layer descriptor annotation naming the uncompressed size.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

/// The whole TOC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    pub version: u32,
    pub entries: Vec<TocEntry>,
}

fn zero(n: &i64) -> bool {
    *n == 0
}

fn zero_u(n: &u64) -> bool {
    *n == 0
}

/// One tar entry, or one chunk of a regular file's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "zero_u")]
    pub size: u64,
    #[serde(default, rename = "modtime", skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    #[serde(default, rename = "linkName", skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(default, skip_serializing_if = "zero")]
    pub mode: i64,
    #[serde(default, skip_serializing_if = "zero_u")]
    pub uid: u64,
    #[serde(default, skip_serializing_if = "zero_u")]
    pub gid: u64,
    #[serde(default, rename = "userName", skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    #[serde(
        default,
        rename = "groupName",
        skip_serializing_if = "String::is_empty"
    )]
    pub group_name: String,
    #[serde(default, skip_serializing_if = "zero_u")]
    pub offset: u64,
    #[serde(default, rename = "innerOffset", skip_serializing_if = "zero_u")]
    pub inner_offset: u64,
    #[serde(default, rename = "devMajor", skip_serializing_if = "zero")]
    pub dev_major: i64,
    #[serde(default, rename = "devMinor", skip_serializing_if = "zero")]
    pub dev_minor: i64,
    /// Values base64, as Go encodes `[]byte`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, rename = "chunkOffset", skip_serializing_if = "zero_u")]
    pub chunk_offset: u64,
    #[serde(default, rename = "chunkSize", skip_serializing_if = "zero_u")]
    pub chunk_size: u64,
    #[serde(
        default,
        rename = "chunkDigest",
        skip_serializing_if = "String::is_empty"
    )]
    pub chunk_digest: String,
}

/// The TOC as Go's `json.MarshalIndent(toc, "", "\t")` writes it (Go also
/// escapes `<`, `>` and `&` in strings; so does this).
pub fn to_json(toc: &Toc) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    toc.serialize(&mut ser).expect("a TOC serializes");
    let text = String::from_utf8(out).expect("JSON is UTF-8");
    text.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .into_bytes()
}

/// Go's `formatModtime`: empty for the epoch (and zero), else RFC 3339 in
/// UTC (`2019-08-20T10:30:43Z`).
pub fn mod_time(seconds: i64) -> String {
    if seconds == 0 {
        return String::new();
    }
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 as a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Standard base64 with padding, as Go's JSON encodes bytes.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The 51-byte footer naming the TOC's offset: a gzip header with an extra
/// field `SG`, 22, `%016xSTARGZ`, an empty stored final block, and a zero
/// CRC and size (`gzipFooterBytes` of the `estargz` package).
pub fn footer(toc_offset: u64) -> [u8; FOOTER_SIZE] {
    let mut out = [0u8; FOOTER_SIZE];
    out[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255]);
    out[10..12].copy_from_slice(&26u16.to_le_bytes());
    out[12..14].copy_from_slice(b"SG");
    out[14..16].copy_from_slice(&22u16.to_le_bytes());
    out[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    out[38..43].copy_from_slice(&[1, 0, 0, 0xff, 0xff]);
    out
}

/// The TOC's offset a footer names; `None` if it is not an eStargz footer.
pub fn parse_footer(footer: &[u8]) -> Option<u64> {
    if footer.len() != FOOTER_SIZE
        || footer[..4] != [0x1f, 0x8b, 8, 4]
        || footer[10..16] != [26, 0, b'S', b'G', 22, 0]
        || &footer[32..38] != b"STARGZ"
    {
        return None;
    }
    let hex = std::str::from_utf8(&footer[16..32]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(mod_time(0), "");
        assert_eq!(mod_time(1_566_297_043), "2019-08-20T10:30:43Z");
        assert_eq!(mod_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(mod_time(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn base64_is_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn the_footer_is_51_bytes_and_gunzips_to_nothing() {
        let f = footer(0x1234);
        assert_eq!(parse_footer(&f), Some(0x1234));
        assert_eq!(&f[16..38], b"0000000000001234STARGZ");
        let mut out = Vec::new();
        let mut gz = flate2::read::GzDecoder::new(&f[..]);
        std::io::Read::read_to_end(&mut gz, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(gz.header().unwrap().extra(), Some(&f[12..38]));
    }

    #[test]
    fn json_is_gos_layout() {
        let toc = Toc {
            version: 1,
            entries: vec![TocEntry {
                name: "a<b".into(),
                kind: "dir".into(),
                mode: 0o755,
                ..TocEntry::default()
            }],
        };
        let text = String::from_utf8(to_json(&toc)).unwrap();
        assert_eq!(
            text,
            "{\n\t\"version\": 1,\n\t\"entries\": [\n\t\t{\n\t\t\t\"name\": \"a\\u003cb\",\n\t\t\t\"type\": \"dir\",\n\t\t\t\"mode\": 493\n\t\t}\n\t]\n}"
        );
    }
}
