//! The writer's output read back per the spec, independently of it: the
//! footer, the TOC at the offset it names, each file's and chunk's member
//! at its offset, their digests.

use std::io::Read;

use super::*;

fn tar_of(entries: &mut dyn FnMut(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    entries(&mut b);
    b.into_inner().unwrap()
}

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_username("me").unwrap();
    h.set_groupname("us").unwrap();
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).unwrap();
}

fn other(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(kind);
    if link.is_empty() {
        b.append_data(&mut h, name, &[][..]).unwrap();
    } else {
        b.append_link(&mut h, name, link).unwrap();
    }
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Encodes `tar` in pieces of `piece` bytes, with chunks of `chunk`.
fn encode(tar: &[u8], piece: usize, chunk: u64) -> (Vec<u8>, Made) {
    let mut w = Writer::with_chunk_size(Vec::new(), 6, chunk);
    for p in tar.chunks(piece) {
        w.write_all(p).unwrap();
    }
    w.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

/// One gzip member's content at `offset` (and not what follows it).
fn member(blob: &[u8], offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&blob[usize::try_from(offset).unwrap()..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The TOC, its JSON digest, by the footer.
fn read_toc(blob: &[u8]) -> (serde_json::Value, String, u64) {
    let footer = &blob[blob.len() - 51..];
    assert_eq!(
        &footer[..4],
        &[0x1f, 0x8b, 8, 4],
        "a gzip header with FEXTRA"
    );
    assert_eq!(u16::from_le_bytes([footer[10], footer[11]]), 26, "XLEN");
    assert_eq!(&footer[12..14], b"SG");
    assert_eq!(u16::from_le_bytes([footer[14], footer[15]]), 22);
    assert_eq!(&footer[32..38], b"STARGZ");
    let offset = u64::from_str_radix(std::str::from_utf8(&footer[16..32]).unwrap(), 16).unwrap();
    assert!(
        member(footer, 0).is_empty(),
        "the footer gunzips to nothing"
    );
    let toc_tar = member(blob, offset);
    let mut archive = tar::Archive::new(&toc_tar[..]);
    let mut entries = archive.entries().unwrap();
    let mut entry = entries.next().unwrap().unwrap();
    assert_eq!(entry.path().unwrap().to_str(), Some("stargz.index.json"));
    let mut json = Vec::new();
    entry.read_to_end(&mut json).unwrap();
    drop(entry);
    assert!(
        entries.next().is_none(),
        "the TOC is the only entry of its member"
    );
    (serde_json::from_slice(&json).unwrap(), sha(&json), offset)
}

#[test]
fn the_blob_is_estargz_per_the_spec() {
    let big = noise(2500, 1);
    let exact = noise(2000, 2);
    let small = b"hello\n".to_vec();
    let long = format!("deep/{}/name.txt", "n".repeat(120));
    let original = tar_of(&mut |b| {
        other(b, "deep/", tar::EntryType::Directory, "");
        file(b, "deep/small.txt", &small);
        file(b, "deep/empty", b"");
        b.append_pax_extensions([("SCHILY.xattr.user.tag", &b"\x01\x02"[..])])
            .unwrap();
        file(b, "deep/big.bin", &big);
        file(b, &long, &exact);
        other(b, "deep/link", tar::EntryType::Symlink, "small.txt");
        other(b, "deep/hard", tar::EntryType::Link, "deep/small.txt");
    });
    let (blob, made) = encode(&original, 7, 1000);
    let (toc, toc_digest, toc_offset) = read_toc(&blob);
    assert_eq!(made.toc_digest.to_string(), toc_digest);
    assert_eq!(toc["version"], 1);
    let entries = toc["entries"].as_array().unwrap();
    let names: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("deep/", "dir"),
            ("deep/small.txt", "reg"),
            ("deep/empty", "reg"),
            ("deep/big.bin", "reg"),
            ("deep/big.bin", "chunk"),
            ("deep/big.bin", "chunk"),
            (long.as_str(), "reg"),
            (long.as_str(), "chunk"),
            ("deep/link", "symlink"),
            ("deep/hard", "hardlink"),
        ]
    );
    // Each file's and chunk's data is a member of its own at its offset.
    let contents = [
        ("deep/small.txt", &small),
        ("deep/big.bin", &big),
        (long.as_str(), &exact),
    ];
    let mut offsets = vec![0];
    for e in entries.iter().filter(|e| e["offset"].is_u64()) {
        let name = e["name"].as_str().unwrap();
        let data = contents.iter().find(|(n, _)| *n == name).unwrap().1;
        let at = e["chunkOffset"].as_u64().unwrap_or(0);
        let size = match e["chunkSize"].as_u64() {
            Some(s) => s,
            None => data.len() as u64 - at,
        };
        let range = usize::try_from(at).unwrap()..usize::try_from(at + size).unwrap();
        let unpacked = member(&blob, e["offset"].as_u64().unwrap());
        assert!(unpacked.starts_with(&data[range.clone()]), "{name} at {at}");
        assert_eq!(e["chunkDigest"].as_str().unwrap(), sha(&data[range]));
        if e["type"] == "reg" {
            assert_eq!(e["digest"].as_str().unwrap(), sha(data), "{name}");
            assert_eq!(e["size"].as_u64().unwrap(), data.len() as u64);
        }
        offsets.push(e["offset"].as_u64().unwrap());
    }
    // chunkSize is set on every chunk but a shorter last one (an exact
    // multiple keeps it on the last too, as the estargz package does).
    let sizes: Vec<Option<u64>> = entries
        .iter()
        .filter(|e| e["name"] == "deep/big.bin" || e["name"] == long.as_str())
        .map(|e| e["chunkSize"].as_u64())
        .collect();
    assert_eq!(
        sizes,
        [Some(1000), Some(1000), None, Some(1000), Some(1000)]
    );
    let small_entry = &entries[1];
    assert_eq!(small_entry["mode"], 0o644);
    assert_eq!(
        (small_entry["uid"].as_u64(), small_entry["gid"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(small_entry["userName"], "me");
    assert_eq!(small_entry["modtime"], "2023-11-14T22:13:20Z");
    assert!(entries[2].get("userName").is_none(), "named once per id");
    assert_eq!(entries[3]["xattrs"]["user.tag"], "AQI=");
    assert_eq!(entries[8]["linkName"], "small.txt");
    assert!(
        entries[2].get("offset").is_none(),
        "an empty file has no member"
    );
    // Members start at 0, at each offset, at the TOC and at the footer:
    // the whole blob is those members, back to back.
    offsets.push(toc_offset);
    offsets.push(blob.len() as u64 - 51);
    for at in &offsets {
        assert_eq!(&blob[usize::try_from(*at).unwrap()..][..2], &[0x1f, 0x8b]);
    }
    // A plain gunzip gives the layer's tar, unchanged, then the TOC's; a
    // tar reader stops at the layer's end and sees the layer's files.
    let mut all = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut all)
        .unwrap();
    assert!(all.starts_with(&original));
    assert_eq!(made.diff_id, Digest::of(&all));
    assert_eq!(made.uncompressed_size, all.len() as u64);
    let listed: Vec<String> = tar::Archive::new(&all[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(listed.len(), 7);
    assert!(!listed.iter().any(|n| n.contains("stargz")));
}

#[test]
fn the_bytes_do_not_depend_on_how_the_tar_arrives() {
    let original = tar_of(&mut |b| {
        file(b, "a", &noise(70_000, 3));
        file(b, "b", b"b");
    });
    let (one, _) = encode(&original, 1, 4096);
    let (all, made) = encode(&original, original.len(), 4096);
    assert_eq!(one, all);
    assert_eq!(
        made.annotations()[TOC_DIGEST_ANNOTATION],
        made.toc_digest.to_string()
    );
}

#[test]
fn an_empty_layer_is_a_toc_and_a_footer() {
    let (blob, made) = encode(&tar_of(&mut |_| {}), 512, CHUNK_SIZE);
    let (toc, _, _) = read_toc(&blob);
    assert_eq!(toc["entries"], serde_json::json!([]));
    assert!(made.uncompressed_size > 1024);
}

#[test]
fn a_file_named_as_the_toc_is_refused() {
    let original = tar_of(&mut |b| file(b, "./stargz.index.json", b"{}"));
    let mut w = Writer::new(Vec::new(), 6);
    let e = w.write_all(&original).unwrap_err();
    assert!(e.to_string().contains("reserves for its TOC"), "{e}");
}

#[test]
fn a_tar_cut_inside_an_entry_is_an_error() {
    let original = tar_of(&mut |b| file(b, "a", &noise(5000, 4)));
    let mut w = Writer::new(Vec::new(), 6);
    w.write_all(&original[..1000]).unwrap();
    let e = w.finish().unwrap_err();
    assert!(e.to_string().contains("ended inside an entry"), "{e}");
}

#[test]
fn the_toc_header_is_a_valid_ustar_header() {
    let block = toc_header(1234);
    let h = header::parse(&block).unwrap();
    assert_eq!((h.name.as_str(), h.size), (toc::TOC_NAME, 1234));
}
