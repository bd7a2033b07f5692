//! The pieces of the walk that must agree with what they replace; the
//! whole walk is compared with the old one in `tests/layer_diff.rs`.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::Path;

use kiln_testing::{Need, require_for};
use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, SFlag, fstatat, makedev, mknod};

use super::read::{Exact, Stat, read_whole};
use super::*;

/// `header` from our stat, and the tar crate's header from the lstat
/// std makes, for the entry at `path`.
fn both_headers(path: &Path, mtime: u64) -> (tar::Header, tar::Header) {
    let st = fstatat(nix::fcntl::AT_FDCWD, path, AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
    let ours = header(&Stat::of(&st), mtime);
    let mut theirs = tar::Header::new_gnu();
    theirs.set_metadata_in_mode(
        &fs::symlink_metadata(path).unwrap(),
        tar::HeaderMode::Complete,
    );
    theirs.set_mtime(mtime);
    (ours, theirs)
}

#[test]
fn headers_are_the_tar_crates_for_every_kind_of_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name);
    fs::write(p("file"), b"twelve bytes").unwrap();
    fs::set_permissions(p("file"), fs::Permissions::from_mode(0o4751)).unwrap();
    fs::create_dir(p("dir")).unwrap();
    fs::set_permissions(p("dir"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("a/target/somewhere", p("symlink")).unwrap();
    nix::unistd::mkfifo(&p("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    let _socket = UnixListener::bind(p("socket")).unwrap();
    let mut names = vec!["file", "dir", "symlink", "fifo", "socket"];
    if require_for("devices", &[Need::Root]) {
        let mode = Mode::from_bits_truncate(0o600);
        mknod(&p("chr"), SFlag::S_IFCHR, mode, makedev(1, 3)).unwrap();
        mknod(&p("blk"), SFlag::S_IFBLK, mode, makedev(7, 0)).unwrap();
        mknod(&p("whiteout"), SFlag::S_IFCHR, mode, makedev(0, 0)).unwrap();
        nix::unistd::chown(
            &p("file"),
            Some(nix::unistd::Uid::from_raw(3_000_000)),
            Some(nix::unistd::Gid::from_raw(5678)),
        )
        .unwrap();
        names.extend(["chr", "blk", "whiteout"]);
    }
    for name in names {
        for mtime in [0, 1_700_000_000, 9_000_000_000] {
            let (ours, theirs) = both_headers(&p(name), mtime);
            assert_eq!(ours.as_bytes(), theirs.as_bytes(), "{name} at {mtime}");
        }
    }
}

#[test]
fn a_small_file_must_be_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    fs::write(&path, b"0123456789").unwrap();
    let read = |size| read_whole(&mut File::open(&path).unwrap(), size, &path);
    assert_eq!(read(10).unwrap(), b"0123456789");
    for wrong in [0, 9, 11, 100] {
        let err = read(wrong).unwrap_err().to_string();
        assert!(err.contains("than its size"), "{wrong}: {err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    fs::write(&path, b"").unwrap();
    assert_eq!(read(0).unwrap(), b"");
    assert!(read(1).is_err());
}

#[test]
fn a_streamed_file_must_be_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&path, &data).unwrap();
    let read = |size| {
        let mut out = Vec::new();
        Exact::new(File::open(&path).unwrap(), size, &path)
            .read_to_end(&mut out)
            .map(|_| out)
    };
    assert_eq!(read(200_000).unwrap(), data);
    for (wrong, what) in [(199_999, "longer"), (200_001, "shorter"), (0, "longer")] {
        let err = read(wrong).unwrap_err().to_string();
        assert!(
            err.contains(&format!("is {what} than its size")),
            "{wrong}: {err}"
        );
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}

#[test]
fn entries_a_listing_does_not_type_are_looked_at_without_following() {
    use super::walk::{Dir, Seen, look};
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name);
    fs::write(p("file"), b"f").unwrap();
    fs::create_dir(p("dir")).unwrap();
    symlink("dir", p("link-to-dir")).unwrap();
    symlink("file", p("link-to-file")).unwrap();
    nix::unistd::mkfifo(&p("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    let top = Dir::open_root(tmp.path()).unwrap();
    let seen = |name: &std::ffi::CStr| look(&top, name).unwrap();
    assert_eq!(seen(c"file"), Seen::File);
    assert_eq!(seen(c"dir"), Seen::Dir);
    assert_eq!(seen(c"link-to-dir"), Seen::Other);
    assert_eq!(seen(c"link-to-file"), Seen::Other);
    assert_eq!(seen(c"fifo"), Seen::Other);
    let missing = look(&top, c"missing").err().unwrap().to_string();
    assert!(
        missing.contains(&p("missing").display().to_string()),
        "{missing}"
    );
}

#[test]
fn the_proc_route_to_an_entry_is_checked_to_reach_it() {
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    symlink("target", tmp.path().join("link")).unwrap();
    fs::write(tmp.path().join("other"), b"o").unwrap();
    let dir = File::open(tmp.path()).unwrap();
    let stat = |name: &str| {
        let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        Stat::of(&st)
    };
    let route = |name: &str| Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    assert!(super::read::reaches(&route("link"), &stat("link")));
    assert!(!super::read::reaches(&route("link"), &stat("other")));
    assert!(!super::read::reaches(&route("missing"), &stat("link")));
}

/// A step's upperdir exactly [`MAX_TREE_DEPTH`] directories deep makes its
/// layer (the walk thread's stack holds it, and the walk keeps reopening
/// directories below `KEPT_OPEN`); one level deeper is refused, naming the
/// path shortened — never a stack overflow that aborts the process.
#[test]
fn a_tree_at_the_depth_bound_is_a_layer_and_one_level_deeper_is_refused() {
    use kiln_proto::depth::MAX_TREE_DEPTH;
    let tmp = tempfile::tempdir().unwrap();
    kiln_testing::deep_tree(tmp.path(), MAX_TREE_DEPTH);
    let tar = diff(tmp.path(), Vec::new()).unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let paths: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(paths.len(), MAX_TREE_DEPTH + 1, "every level and the file");
    let bottom = format!("{}f", "a/".repeat(MAX_TREE_DEPTH));
    assert_eq!(paths.last(), Some(&bottom));

    let tmp = tempfile::tempdir().unwrap();
    kiln_testing::deep_tree(tmp.path(), MAX_TREE_DEPTH + 1);
    let err = diff(tmp.path(), io::sink()).unwrap_err();
    assert!(matches!(err, LayerError::TooDeep(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("refusing /a/a/a/"), "{message}");
    assert!(
        message.ends_with("…: deeper than 1024 directories"),
        "{message}"
    );
    assert!(message.len() < 300, "the path is shortened: {message}");
}
