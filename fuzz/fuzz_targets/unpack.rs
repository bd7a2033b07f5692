//! Hostile tars through the layer unpacker, in each whiteout mode: names
//! with `..`, absolute names, `.wh.` names, symlinks then writes through
//! them, hard links out, devices, long names — built entry by entry with
//! raw headers (so the checksums are right and the fuzzer reaches the
//! unpacker), or raw bytes as they come.
//!
//! Invariant, beyond "no panic": the tree is unpacked into `base/root`,
//! beside a sentinel file and a sentinel directory (where the layers'
//! symlinks point); afterwards `base` holds exactly what it held, with the
//! same contents, modes, times and link counts.
#![no_main]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_worker::layer::{Whiteouts, unpack_with};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Part {
    DotDot,
    Dot,
    Empty,
    /// A few names, so entries meet each other.
    Name(u8),
    /// `.wh.` + one of the names, `.`, `..` or nothing.
    Whiteout(u8),
    Opaque,
    /// The sentinel directory's absolute path.
    Outside,
    /// A name of 100–355 bytes (past the header's 100).
    Long(u8),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Name {
    absolute: bool,
    parts: Vec<Part>,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Name),
    HardLink(Name),
    Char(u8, u8),
    Block(u8, u8),
    Fifo,
}

#[derive(Arbitrary, Debug)]
struct Entry {
    name: Name,
    kind: Kind,
    mode: u16,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Entries { whiteouts: u8, entries: Vec<Entry> },
    Raw { whiteouts: u8, bytes: Vec<u8> },
}

const NAMES: [&str; 6] = ["a", "b", "etc", "passwd", "x y", "é"];

fn render(name: &Name, outside: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    if name.absolute {
        out.push(b'/');
    }
    for (i, part) in name.parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        match part {
            Part::DotDot => out.extend_from_slice(b".."),
            Part::Dot => out.push(b'.'),
            Part::Empty => {}
            Part::Name(n) => out.extend_from_slice(NAMES[usize::from(*n) % NAMES.len()].as_bytes()),
            Part::Whiteout(n) => {
                out.extend_from_slice(b".wh.");
                match n % 9 {
                    6 => out.push(b'.'),
                    7 => out.extend_from_slice(b".."),
                    8 => {}
                    k => out.extend_from_slice(NAMES[usize::from(k)].as_bytes()),
                }
            }
            Part::Opaque => out.extend_from_slice(b".wh..wh..opq"),
            Part::Outside => out.extend_from_slice(outside.as_os_str().as_encoded_bytes()),
            Part::Long(n) => out.extend(std::iter::repeat_n(b'l', 100 + usize::from(*n))),
            Part::Bytes(b) => out.extend(b.iter().filter(|c| **c != 0).take(64)),
        }
    }
    out
}

/// One 512-byte header; names longer than the field go first as GNU
/// long-name (`L`) and long-link (`K`) entries.
fn header(out: &mut Vec<u8>, name: &[u8], link: &[u8], kind: u8, size: u64, mode: u32, dev: (u8, u8)) {
    if name.len() >= 100 {
        header(out, b"././@LongLink", b"", b'L', name.len() as u64 + 1, 0o644, (0, 0));
        data(out, &[name, b"\0"].concat());
    }
    if link.len() >= 100 {
        header(out, b"././@LongLink", b"", b'K', link.len() as u64 + 1, 0o644, (0, 0));
        data(out, &[link, b"\0"].concat());
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_600_000_000);
    let _ = h.set_device_major(u32::from(dev.0));
    let _ = h.set_device_minor(u32::from(dev.1));
    let gnu = h.as_gnu_mut().expect("a GNU header");
    let n = name.len().min(99);
    gnu.name[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(99);
    gnu.linkname[..l].copy_from_slice(&link[..l]);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
}

fn data(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn tar_of(entries: &[Entry], outside: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries.iter().take(64) {
        let name = render(&e.name, outside);
        let mode = u32::from(e.mode) & 0o7777;
        match &e.kind {
            Kind::File(bytes) => {
                header(&mut out, &name, b"", b'0', bytes.len() as u64, mode, (0, 0));
                data(&mut out, bytes);
            }
            Kind::Dir => header(&mut out, &name, b"", b'5', 0, mode, (0, 0)),
            Kind::Symlink(t) => header(&mut out, &name, &render(t, outside), b'2', 0, mode, (0, 0)),
            Kind::HardLink(t) => header(&mut out, &name, &render(t, outside), b'1', 0, mode, (0, 0)),
            Kind::Char(ma, mi) => header(&mut out, &name, b"", b'3', 0, mode, (*ma, *mi)),
            Kind::Block(ma, mi) => header(&mut out, &name, b"", b'4', 0, mode, (*ma, *mi)),
            Kind::Fifo => header(&mut out, &name, b"", b'6', 0, mode, (0, 0)),
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Everything under `dir` (symlinks not followed) with what a stray write,
/// delete, chmod, utime or hard link would change.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, u64, i64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let m = fs::symlink_metadata(&d).expect("stat");
        let content = if m.is_file() { fs::read(&d).expect("read") } else { Vec::new() };
        out.push((d.clone(), m.mode(), m.nlink(), m.mtime(), m.ino(), content));
        if m.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&d).expect("list").flatten().map(|e| e.path()).collect();
            names.sort();
            stack.extend(names);
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("base");
    let root = base.join("root");
    let outside = base.join("outside");
    fs::create_dir_all(&root).expect("root");
    fs::create_dir_all(outside.join("dir")).expect("outside");
    fs::write(base.join("sentinel"), b"keep").expect("sentinel");
    fs::write(outside.join("passwd"), b"keep").expect("sentinel");
    fs::write(outside.join("dir/file"), b"keep").expect("sentinel");
    // Something for whiteouts to delete inside.
    fs::create_dir_all(root.join("a/b")).expect("inside");
    fs::write(root.join("a/passwd"), b"inside").expect("inside");
    let (whiteouts, bytes) = match &input {
        Input::Entries { whiteouts, entries } => (*whiteouts, tar_of(entries, &outside)),
        Input::Raw { whiteouts, bytes } => (*whiteouts, bytes.clone()),
    };
    let whiteouts = match whiteouts % 3 {
        0 => Whiteouts::Overlay,
        1 => Whiteouts::Apply,
        _ => Whiteouts::Plain,
    };
    let outside_before = snapshot(&outside);
    let sentinel_before = snapshot(&base.join("sentinel"));
    let _ = unpack_with(bytes.as_slice(), &root, whiteouts);
    let mut names: Vec<_> = fs::read_dir(&base)
        .expect("base")
        .flatten()
        .map(|e| e.file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["outside", "root", "sentinel"], "something appeared or vanished beside the root");
    assert!(fs::symlink_metadata(&root).expect("root").is_dir(), "the root is still a directory");
    assert_eq!(snapshot(&outside), outside_before, "the outside directory changed");
    assert_eq!(snapshot(&base.join("sentinel")), sentinel_before, "the sentinel changed");
});
