//! `layer::diff` makes, for every kind of tree, the very bytes the old
//! sequential walk by paths made (kept in `support/diff_reference.rs`):
//! layers in existing stores were hashed by it, and their blobs are made
//! again from snapshots and checked against those digests.

#[path = "support/diff_reference.rs"]
mod reference;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use kiln_testing::{Need, require_for};
use kiln_worker::layer::{LayerError, diff, diff_clamped};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

/// The old walk's output and the new one's, for `clamp`.
fn both(upper: &Path, clamp: Option<u64>) -> (Vec<u8>, Vec<u8>) {
    let old = reference::diff_clamped(upper, Vec::new(), clamp).unwrap();
    let new = diff_clamped(upper, Vec::new(), clamp).unwrap();
    (old, new)
}

/// Asserts the two tars are the same bytes; when not, says where first.
fn assert_same(old: &[u8], new: &[u8]) {
    if old == new {
        return;
    }
    let at = old
        .iter()
        .zip(new)
        .position(|(a, b)| a != b)
        .unwrap_or(old.len().min(new.len()));
    let block = at / 512 * 512;
    let show = |tar: &[u8]| {
        String::from_utf8_lossy(&tar[block..(block + 512).min(tar.len())]).into_owned()
    };
    panic!(
        "the tars differ at byte {at} (of {} and {}), block at {block}:\nold {:?}\nnew {:?}",
        old.len(),
        new.len(),
        show(old),
        show(new)
    );
}

/// An entry of a tar, as a reader sees it.
struct Listed {
    kind: char,
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    size: u64,
    /// The keys of its PAX records.
    pax: Vec<String>,
}

fn listing(tar: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let pax = match entry.pax_extensions().unwrap() {
            Some(records) => records
                .map(|r| r.unwrap().key().unwrap().to_owned())
                .collect(),
            None => Vec::new(),
        };
        out.push(Listed {
            kind: entry.header().entry_type().as_byte() as char,
            path: entry.path_bytes().into_owned(),
            link: entry.link_name_bytes().map(|l| l.into_owned()),
            size: entry.header().size().unwrap(),
            pax,
        });
    }
    out
}

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    File::create(path).unwrap().write_all(data).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets the mtime (and atime) of `path` itself, symlinks too.
fn touch(path: &Path, secs: i64, nanos: i64) {
    let t = TimeSpec::new(secs, nanos);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn name(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// A tree with every kind of entry any user may make.
fn plain_tree(top: &Path) {
    let p = |rel: &str| top.join(rel);
    // Nested and empty directories.
    write(&p("a/b/c/d/deep.txt"), b"deep");
    write(&p("a/b/sibling"), b"after c in a/b");
    fs::create_dir_all(p("empty")).unwrap();
    fs::create_dir_all(p("a/b/empty too")).unwrap();
    // Sizes around the read-ahead bound and tar's blocks.
    let sizes = [0, 1, 511, 512, 513, 65_535, 65_536, 65_537, 1_048_579];
    for size in sizes {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
        write(&p(&format!("sizes/{size}")), &data);
    }
    // Symlinks: absolute, relative, dangling, to a directory (never
    // followed), with a target longer than a header holds.
    fs::create_dir_all(p("links")).unwrap();
    symlink("/etc/passwd", p("links/absolute")).unwrap();
    symlink("../a/b/sibling", p("links/relative")).unwrap();
    symlink("nowhere/at/all", p("links/dangling")).unwrap();
    symlink("../a", p("links/to-a-directory")).unwrap();
    symlink("x".repeat(180), p("links/long-target")).unwrap();
    touch(&p("links/relative"), 1_600_000_000, 123_456_789);
    // Hard links: two names in one directory, three across directories
    // (the first in walk order gets the data, wherever it is).
    write(&p("hard/one"), b"two names");
    fs::hard_link(p("hard/one"), p("hard/two")).unwrap();
    write(&p("hard3/m/middle"), b"three names");
    fs::create_dir_all(p("hard3/z")).unwrap();
    fs::hard_link(p("hard3/m/middle"), p("hard3/a-first")).unwrap();
    fs::hard_link(p("hard3/m/middle"), p("hard3/z/last")).unwrap();
    write(&p("hard/big"), &vec![9; 100_000]);
    fs::hard_link(p("hard/big"), p("hard/big-again")).unwrap();
    // Extended attributes, on a file, a directory, a hard-linked file.
    write(&p("xattrs/file"), b"with xattrs");
    xattr::set(p("xattrs/file"), "user.one", b"1").unwrap();
    xattr::set(p("xattrs/file"), "user.binary", &[0, 255, 9, 0]).unwrap();
    xattr::set(p("xattrs"), "user.on-a-dir", b"yes").unwrap();
    xattr::set(p("hard/one"), "user.linked", b"both names").unwrap();
    // A fifo and a socket: headers only (and never opened).
    fs::create_dir_all(p("special")).unwrap();
    nix::unistd::mkfifo(&p("special/fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    drop(UnixListener::bind(p("special/socket")).unwrap());
    // Odd modes.
    write(&p("modes/setuid"), b"s");
    chmod(&p("modes/setuid"), 0o4755);
    write(&p("modes/setgid"), b"g");
    chmod(&p("modes/setgid"), 0o2711);
    fs::create_dir_all(p("modes/sticky")).unwrap();
    chmod(&p("modes/sticky"), 0o1777);
    // Mtimes with nanoseconds, before 1970, past tar's octal field.
    write(&p("times/nanos"), b"n");
    touch(&p("times/nanos"), 1_700_000_000, 999_999_999);
    write(&p("times/negative"), b"-");
    touch(&p("times/negative"), -100, 5);
    write(&p("times/far"), b"far");
    touch(&p("times/far"), 9_000_000_000, 1);
    // Names: not UTF-8 (two that read the same once made UTF-8), long
    // ones (GNU long names), a long directory with a long file inside.
    fs::create_dir_all(p("names")).unwrap();
    write(&p("names").join(name(b"caf\xe9")), b"latin-1");
    write(&p("names").join(name(b"x\xff")), b"ff");
    write(&p("names").join(name(b"x\xfe")), b"fe");
    fs::create_dir_all(p("names").join(name(b"dir\xff\xfe"))).unwrap();
    write(&p("names").join(name(b"dir\xff\xfe/inside")), b"i");
    write(&p("names").join("n".repeat(150)), b"150");
    write(
        &p("names").join("d".repeat(120)).join("f".repeat(200)),
        b"320",
    );
    write(&p("names/spaces and\nnewline"), b"nl");
    // Whiteout-like names in a plain tree stay files.
    write(&p("names/.wh.not-a-whiteout"), b"");
    // Many entries in one directory.
    for i in 0..3000 {
        write(
            &p(&format!("many/{:05}", (i * 7919) % 10007)),
            format!("{i}").as_bytes(),
        );
    }
    // A tree deeper than the walk keeps open, with entries after each
    // subdirectory (its parent is reopened to reach them).
    let mut deep = p("deep");
    for level in 0..150 {
        deep.push("d");
        fs::create_dir_all(&deep).unwrap();
        write(
            &deep.parent().unwrap().join("z-after"),
            format!("{level}").as_bytes(),
        );
    }
    write(&deep.join("bottom"), b"bottom");
    touch(&p("a"), 1_234_567_890, 42);
}

/// What only root may make: owners, devices, whiteouts, trusted xattrs
/// (overlay's own among them: left out, but for the opaque marker).
fn root_tree(top: &Path) {
    let p = |rel: &str| top.join(rel);
    fs::create_dir_all(p("root")).unwrap();
    let dev = |rel: &str, kind: SFlag, major: u64, minor: u64| {
        mknod(
            &p(rel),
            kind,
            Mode::from_bits_truncate(0o600),
            makedev(major, minor),
        )
        .unwrap();
    };
    dev("root/gone", SFlag::S_IFCHR, 0, 0);
    dev("root/null", SFlag::S_IFCHR, 1, 3);
    dev("root/loop", SFlag::S_IFBLK, 7, 0);
    let chown = |rel: &str, uid: u32, gid: u32| {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &p(rel),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
    };
    write(&p("root/owned"), b"owned");
    chown("root/owned", 1234, 5678);
    write(&p("root/huge-ids"), b"ids past tar's octal fields");
    chown("root/huge-ids", 3_000_000, 4_000_000);
    symlink("owned", p("root/owned-link")).unwrap();
    chown("root/owned-link", 42, 43);
    fs::create_dir_all(p("root/opaque/kept")).unwrap();
    xattr::set(p("root/opaque"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(p("root/opaque"), "trusted.overlay.origin", b"left out").unwrap();
    xattr::set(p("root/opaque"), "trusted.kiln-test", b"kept").unwrap();
    dev("root/opaque/gone-too", SFlag::S_IFCHR, 0, 0);
    fs::create_dir_all(p("root/not-opaque")).unwrap();
    xattr::set(p("root/not-opaque"), "trusted.overlay.opaque", b"n").unwrap();
    // xattrs on what is never opened: a symlink, a fifo, a device.
    xattr::set(p("root/owned-link"), "trusted.on-a-symlink", b"l").unwrap();
    nix::unistd::mkfifo(&p("root/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    xattr::set(p("root/fifo"), "trusted.on-a-fifo", b"f").unwrap();
    xattr::set(p("root/null"), "trusted.on-a-device", b"d").unwrap();
    // A whiteout's xattrs are not part of it.
    xattr::set(p("root/gone"), "trusted.on-a-whiteout", b"w").unwrap();
    // A file and a directory nobody may read (or search) but root.
    write(&p("root/none"), b"0000");
    chmod(&p("root/none"), 0o000);
    fs::create_dir_all(p("root/closed/inside")).unwrap();
    write(&p("root/closed/inside/file"), b"c");
    chmod(&p("root/closed"), 0o000);
}

fn tree(root_parts: bool) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    plain_tree(tmp.path());
    if root_parts {
        root_tree(tmp.path());
    }
    tmp
}

fn has_entry(list: &[Listed], kind: char, path: &str) -> bool {
    list.iter()
        .any(|e| e.kind == kind && e.path == path.as_bytes())
}

#[test]
fn every_kind_of_entry_makes_the_old_bytes() {
    let as_root = require_for("devices, owners, whiteouts, trusted xattrs", &[Need::Root]);
    let tmp = tree(as_root);
    let (old, new) = both(tmp.path(), None);
    assert_same(&old, &new);

    // The tree has what it is meant to have: the comparison covered it.
    let list = listing(&new);
    assert!(list.len() > 3000 + 150 * 2, "{} entries", list.len());
    let link = |path: &str| {
        list.iter()
            .find(|e| e.kind == '1' && e.path == path.as_bytes())
            .and_then(|e| e.link.clone())
    };
    assert_eq!(link("hard/two").as_deref(), Some(&b"hard/one"[..]));
    assert_eq!(
        link("hard3/m/middle").as_deref(),
        Some(&b"hard3/a-first"[..])
    );
    assert_eq!(link("hard3/z/last").as_deref(), Some(&b"hard3/a-first"[..]));
    assert_eq!(link("hard/big-again").as_deref(), Some(&b"hard/big"[..]));
    let size = |path: &str| {
        list.iter()
            .find(|e| e.path == path.as_bytes())
            .map(|e| e.size)
    };
    assert_eq!(size("sizes/1048579"), Some(1_048_579));
    assert_eq!(size("hard/big"), Some(100_000));
    assert_eq!(size("hard/big-again"), Some(0));
    assert!(has_entry(&list, '2', "links/long-target"));
    assert!(has_entry(&list, '6', "special/fifo"));
    assert!(has_entry(&list, ' ', "special/socket"));
    assert!(has_entry(&list, '0', &format!("names/{}", "n".repeat(150))));
    assert!(has_entry(&list, '0', "names/x\u{FFFD}"));
    let xattrs = |path: &str| {
        list.iter()
            .filter(|e| e.path == path.as_bytes())
            .map(|e| e.pax.clone())
            .next()
            .unwrap()
    };
    let mut on_file = xattrs("xattrs/file");
    on_file.sort();
    assert_eq!(
        on_file,
        ["SCHILY.xattr.user.binary", "SCHILY.xattr.user.one"]
    );
    assert_eq!(xattrs("xattrs/"), ["SCHILY.xattr.user.on-a-dir"]);
    assert_eq!(xattrs("hard/two"), ["SCHILY.xattr.user.linked"]);
    let deep = format!("deep/{}bottom", "d/".repeat(150));
    assert!(has_entry(&list, '0', &deep));
    if as_root {
        assert!(has_entry(&list, '0', "root/.wh.gone"));
        assert!(has_entry(&list, '0', "root/opaque/.wh..wh..opq"));
        assert!(has_entry(&list, '0', "root/opaque/.wh.gone-too"));
        assert!(!has_entry(&list, '0', "root/not-opaque/.wh..wh..opq"));
        assert!(has_entry(&list, '3', "root/null"));
        assert!(has_entry(&list, '4', "root/loop"));
        assert!(has_entry(&list, '0', "root/closed/inside/file"));
        assert_eq!(xattrs("root/opaque/"), ["SCHILY.xattr.trusted.kiln-test"]);
        assert_eq!(
            xattrs("root/owned-link"),
            ["SCHILY.xattr.trusted.on-a-symlink"]
        );
        assert_eq!(xattrs("root/fifo"), ["SCHILY.xattr.trusted.on-a-fifo"]);
        assert_eq!(xattrs("root/null"), ["SCHILY.xattr.trusted.on-a-device"]);
        assert_eq!(xattrs("root/.wh.gone"), Vec::<String>::new());
    }
}

#[test]
fn clamped_mtimes_make_the_old_bytes() {
    let as_root = require_for("devices, owners, whiteouts, trusted xattrs", &[Need::Root]);
    let tmp = tree(as_root);
    for clamp in [0, 1, 1_500_000_000, 1_650_000_000, u64::MAX] {
        let (old, new) = both(tmp.path(), Some(clamp));
        assert_same(&old, &new);
    }
    // A clamp changes something (else the cases above compare nothing new).
    let (unclamped, clamped) = (both(tmp.path(), None).1, both(tmp.path(), Some(1)).1);
    assert_ne!(unclamped, clamped);
}

#[test]
fn small_and_empty_trees_make_the_old_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = both(tmp.path(), None);
    assert_same(&old, &new);
    assert_eq!(new.len(), 1024, "an empty tree is the two end blocks");
    write(&tmp.path().join("one"), b"1");
    let (old, new) = both(tmp.path(), Some(5));
    assert_same(&old, &new);
}

#[test]
fn the_top_may_be_reached_through_a_symlink_but_nothing_below() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    write(&real.join("file"), b"f");
    symlink("../outside", real.join("escape")).unwrap();
    write(&tmp.path().join("outside/secret"), b"s");
    let top = tmp.path().join("top");
    symlink("real", &top).unwrap();
    let (old, new) = both(&top, None);
    assert_same(&old, &new);
    let paths: Vec<Vec<u8>> = listing(&new).into_iter().map(|e| e.path).collect();
    assert_eq!(paths, [b"escape".to_vec(), b"file".to_vec()]);
}

#[test]
fn a_missing_tree_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing: PathBuf = tmp.path().join("missing");
    match diff(&missing, Vec::new()) {
        Err(LayerError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("{:?}", other.map(|v| v.len())),
    }
}

#[test]
fn a_failing_writer_stops_the_walk() {
    struct Full(usize);
    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 < buf.len() {
                return Err(std::io::Error::other("disk full"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..2000 {
        write(&tmp.path().join(format!("{i:04}")), &[1; 100]);
    }
    let err = diff(tmp.path(), Full(100_000)).err().expect("an error");
    assert!(err.to_string().contains("disk full"), "{err}");
}
