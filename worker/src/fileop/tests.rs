use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use kiln_testing::{Need, require_for};

use super::*;

struct Roots {
    _dir: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    outside: PathBuf,
}

fn roots() -> Roots {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst, outside) = (
        dir.path().join("src"),
        dir.path().join("dst"),
        dir.path().join("outside"),
    );
    for d in [&src, &dst, &outside] {
        fs::create_dir_all(d).unwrap();
    }
    Roots {
        _dir: dir,
        src,
        dst,
        outside,
    }
}

fn write(root: &Path, rel: &str, data: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn req(sources: &[&str], dest: &str) -> CopyRequest {
    CopyRequest {
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.into(),
        allow_wildcard: true,
        ..Default::default()
    }
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every path under `root`, sorted, directories with a trailing `/`.
fn tree(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn directories_copy_their_contents_and_destinations_follow_docker() {
    let r = roots();
    write(&r.src, "dir/a", "a");
    write(&r.src, "dir/sub/b", "b");
    write(&r.src, "f.txt", "f");
    copy(&r.src, &r.dst, &req(&["/dir"], "/app/")).unwrap();
    assert_eq!(tree(&r.dst), ["app/", "app/a", "app/sub/", "app/sub/b"]);

    copy(&r.src, &r.dst, &req(&["/f.txt"], "/app/")).unwrap();
    assert_eq!(
        read(&r.dst, "app/f.txt"),
        "f",
        "a trailing slash means: into the directory"
    );
    copy(&r.src, &r.dst, &req(&["/f.txt"], "/renamed")).unwrap();
    assert_eq!(
        read(&r.dst, "renamed"),
        "f",
        "no slash, no directory: the file's new name"
    );
    copy(&r.src, &r.dst, &req(&["/f.txt"], "/app")).unwrap();
    assert_eq!(
        read(&r.dst, "app/f.txt"),
        "f",
        "an existing directory is a directory"
    );
    copy(&r.src, &r.dst, &req(&["/f.txt", "/dir/a"], "/multi/deep/")).unwrap();
    assert_eq!(
        read(&r.dst, "multi/deep/a"),
        "a",
        "missing parents are made"
    );
    let e = copy(&r.src, &r.dst, &req(&["/nope.txt"], "/x")).unwrap_err();
    assert_eq!(e.to_string(), "no such file or directory: /nope.txt");
}

#[test]
fn wildcards_stay_in_one_directory() {
    let r = roots();
    for f in ["a.txt", "b.txt", "c.md", "sub/d.txt"] {
        write(&r.src, f, f);
    }
    copy(&r.src, &r.dst, &req(&["/*.txt"], "/out/")).unwrap();
    assert_eq!(tree(&r.dst), ["out/", "out/a.txt", "out/b.txt"]);
    copy(&r.src, &r.dst, &req(&["/s?b/*.txt"], "/o2/")).unwrap();
    assert_eq!(read(&r.dst, "o2/d.txt"), "sub/d.txt");
}

#[test]
fn a_wildcard_to_a_name_without_slash() {
    let r = roots();
    for f in ["a.txt", "b.txt", "c.md"] {
        write(&r.src, f, f);
    }
    copy(&r.src, &r.dst, &req(&["/c*"], "/one.md")).unwrap();
    assert_eq!(read(&r.dst, "one.md"), "c.md", "one match: that file");
    let e = copy(&r.src, &r.dst, &req(&["/*.txt"], "/two")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "copying 2 files to /two: the destination must be a directory and end with a /"
    );
    fs::create_dir(r.dst.join("dir")).unwrap();
    copy(&r.src, &r.dst, &req(&["/*.txt"], "/dir")).unwrap();
    assert_eq!(tree(&r.dst.join("dir")), ["a.txt", "b.txt"]);
}

#[test]
fn a_wildcard_matching_nothing_copies_nothing() {
    let r = roots();
    write(&r.src, "a.txt", "a");
    fs::create_dir(r.src.join("empty")).unwrap();
    copy(&r.src, &r.dst, &req(&["/a.txt", "/*.lock"], "/app/")).unwrap();
    copy(&r.src, &r.dst, &req(&["/empty/*.rs"], "/none/")).unwrap();
    assert_eq!(tree(&r.dst), ["app/", "app/a.txt"]);
    let e = copy(&r.src, &r.dst, &req(&["/missing/sub/*.rs"], "/x/")).unwrap_err();
    assert_eq!(e.to_string(), "no such file or directory: /missing/sub");
    let e = copy(&r.src, &r.dst, &req(&["/a.txt", "/nope.txt"], "/x/")).unwrap_err();
    assert_eq!(e.to_string(), "no such file or directory: /nope.txt");
}

#[test]
fn symlinks_named_are_followed_inside_the_root_and_kept_inside_trees() {
    let r = roots();
    write(&r.src, "real/file", "real");
    symlink("/real/file", r.src.join("abs-link")).unwrap();
    fs::create_dir_all(r.src.join("tree")).unwrap();
    symlink("../real/file", r.src.join("tree/rel-link")).unwrap();
    // A source symlink to a host file resolves inside the source root.
    write(&r.outside, "host-secret", "host");
    symlink(r.outside.join("host-secret"), r.src.join("escape")).unwrap();

    copy(&r.src, &r.dst, &req(&["/abs-link"], "/copied")).unwrap();
    assert_eq!(read(&r.dst, "copied"), "real");
    copy(&r.src, &r.dst, &req(&["/tree"], "/t/")).unwrap();
    assert_eq!(
        fs::read_link(r.dst.join("t/rel-link")).unwrap(),
        Path::new("../real/file")
    );
    let e = copy(&r.src, &r.dst, &req(&["/escape"], "/stolen")).unwrap_err();
    assert!(matches!(e, FileOpError::NotFound(_)), "{e}");
    assert!(!r.dst.join("stolen").exists());
}

#[test]
fn a_symlink_in_the_image_cannot_lead_a_copy_outside() {
    let r = roots();
    write(&r.src, "payload", "owned");
    symlink("/", r.dst.join("etc")).unwrap();
    symlink("../../../..", r.dst.join("up")).unwrap();
    symlink(&r.outside, r.dst.join("host")).unwrap();
    for dest in [
        "/etc/payload",
        "/up/payload",
        "/host/payload",
        "/up/up/etc/payload",
    ] {
        copy(&r.src, &r.dst, &req(&["/payload"], dest)).unwrap();
    }
    assert_eq!(
        read(&r.dst, "payload"),
        "owned",
        "every path resolved inside the root"
    );
    assert_eq!(
        fs::read_dir(&r.outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    assert!(
        r.dst
            .join("etc")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink(),
        "the image's symlinks stay"
    );
}

#[test]
fn owner_mode_mtime_and_excludes() {
    let r = roots();
    write(&r.src, "app/main.rs", "fn main() {}");
    write(&r.src, "app/README.md", "docs");
    write(&r.src, "app/docs/guide.md", "docs");
    fs::set_permissions(r.src.join("app/main.rs"), fs::Permissions::from_mode(0o751)).unwrap();
    let mtime = fs::metadata(r.src.join("app/main.rs")).unwrap().mtime();
    write(
        &r.dst,
        "etc/passwd",
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    );
    write(&r.dst, "etc/group", "root:x:0:\nstaff:x:50:\n");

    copy(&r.src, &r.dst, &req(&["/app"], "/plain/")).unwrap();
    let m = fs::metadata(r.dst.join("plain/main.rs")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.mtime()),
        (0o751, mtime),
        "mode and mtime come from the source"
    );

    let mut chowned = req(&["/app"], "/owned/");
    chowned.owner = Some(OwnerSpec("app:staff".into()));
    chowned.mode = Some(kiln_proto::chmod::Chmod::Octal(0o640));
    chowned.excludes = vec!["*.md".into(), "docs".into()];
    copy(&r.src, &r.dst, &chowned).unwrap();
    assert_eq!(
        tree(&r.dst.join("owned")),
        ["main.rs"],
        "excluded: *.md and docs/"
    );
    let m = fs::metadata(r.dst.join("owned/main.rs")).unwrap();
    if require_for("the owner check", &[Need::Root]) {
        assert_eq!(
            (m.uid(), m.gid()),
            (1000, 50),
            "names resolved in the destination's /etc"
        );
    }
    assert_eq!(m.mode() & 0o7777, 0o640);

    // A symbolic mode changes each entry's own mode; X only where
    // something may execute already, and on directories.
    fs::set_permissions(
        r.src.join("app/README.md"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(r.src.join("app/docs"), fs::Permissions::from_mode(0o700)).unwrap();
    let mut symbolic = req(&["/app"], "/sym/");
    symbolic.mode = Some(kiln_proto::chmod::Chmod::parse("go-rwx,g+rX").unwrap());
    copy(&r.src, &r.dst, &symbolic).unwrap();
    let mode = |rel: &str| fs::metadata(r.dst.join(rel)).unwrap().mode() & 0o7777;
    assert_eq!(
        [mode("sym/main.rs"), mode("sym/README.md"), mode("sym/docs")],
        [0o750, 0o640, 0o750]
    );

    let mut unknown = req(&["/app/main.rs"], "/x");
    unknown.owner = Some(OwnerSpec("ghost".into()));
    assert_eq!(
        copy(&r.src, &r.dst, &unknown).unwrap_err().to_string(),
        "user \"ghost\" not found in /etc/passwd"
    );
}

#[test]
fn parents_keep_the_source_directories() {
    let r = roots();
    write(&r.src, "x/y/file", "1");
    write(&r.src, "x/z/file", "2");
    let mut keep = req(&["/x/*/file"], "/out/");
    keep.parents = true;
    copy(&r.src, &r.dst, &keep).unwrap();
    assert_eq!(
        tree(&r.dst.join("out")),
        ["x/", "x/y/", "x/y/file", "x/z/", "x/z/file"]
    );
    let mut pivot = req(&["/x/./y/file"], "/p/");
    pivot.parents = true;
    copy(&r.src, &r.dst, &pivot).unwrap();
    assert_eq!(tree(&r.dst.join("p")), ["y/", "y/file"]);
}

/// BuildKit's testCopyRelativeParents and testCopyParentsMissingDirectory
/// (`frontend/dockerfile/dockerfile_parents_test.go`), as the frontend
/// hands their sources over (`PARENT/./PATTERN`).
#[test]
fn parents_with_pivots_and_double_stars_as_buildkit() {
    let r = roots();
    for f in [
        "test/a/b/c/d/foo",
        "test/a/b/c/d/e/bay",
        "test/a/b2/c/d/e/bar",
        "test/a/b/c2/d/e/baz",
        "test/a/b/c2/d/e2/baz",
    ] {
        write(&r.src, f, "");
    }
    let copied = |sources: &[&str], out: &str| {
        let mut q = req(sources, &format!("/{out}/"));
        q.parents = true;
        copy(&r.src, &r.dst, &q).map(|()| tree(&r.dst.join(out)))
    };
    let files = |t: Vec<String>| {
        t.into_iter()
            .filter(|p| !p.ends_with('/'))
            .collect::<Vec<_>>()
    };
    // middle: /test/a/b/./c/d
    assert_eq!(
        files(copied(&["/test/a/b/./c/d"], "middle").unwrap()),
        ["c/d/e/bay", "c/d/foo"]
    );
    // end and start: no pivot keeps the whole path.
    assert_eq!(
        files(copied(&["/./test/a/b/c/d"], "end").unwrap()),
        ["test/a/b/c/d/e/bay", "test/a/b/c/d/foo"]
    );
    // wildcard: /test/a/./*/c
    assert_eq!(
        files(copied(&["/test/a/./*/c"], "wildcard").unwrap()),
        ["b/c/d/e/bay", "b/c/d/foo", "b2/c/d/e/bar"]
    );
    // doublewildcard: /test/a/b*/./c/**/e
    assert_eq!(
        files(copied(&["/test/a/b*/./c/**/e"], "doublewildcard").unwrap()),
        ["c/d/e/bar", "c/d/e/bay"]
    );
    // doubleinputs
    assert_eq!(
        files(
            copied(
                &["/test/a/b/c*/./d/**/baz", "/test/a/b*/./c/**/bar"],
                "doubleinputs"
            )
            .unwrap()
        ),
        ["c/d/e/bar", "d/e/baz", "d/e2/baz"]
    );
    // A path without wildcards must exist; with them it may match nothing,
    // and the destination is made all the same.
    assert!(matches!(
        copied(&["/./test/nonexistent-file"], "missing"),
        Err(FileOpError::NotFound(_))
    ));
    assert_eq!(
        copied(&["/./test/a/b3*/c"], "none").unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        copied(&["/test/a/b/./c2x*"], "after").unwrap(),
        Vec::<String>::new()
    );
    assert!(r.dst.join("none").is_dir() && r.dst.join("after").is_dir());
}

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn add_unpacks_local_archives_in_every_compression() {
    let r = roots();
    let plain = tar_of(&[("pkg/hello", "hi")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    bz.write_all(&plain).unwrap();
    let mut xz = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::default()).unwrap();
    xz.write_all(&plain).unwrap();
    let archives = [
        ("a.tar", plain.clone()),
        ("a.tar.gz", gz.finish().unwrap()),
        ("a.tar.bz2", bz.finish().unwrap()),
        ("a.tar.xz", xz.finish().unwrap()),
        ("a.tar.zst", zstd::encode_all(plain.as_slice(), 1).unwrap()),
    ];
    for (name, bytes) in &archives {
        fs::write(r.src.join(name), bytes).unwrap();
        let mut add = req(&[&format!("/{name}")], &format!("/{name}.d/"));
        add.unpack_archives = true;
        copy(&r.src, &r.dst, &add).unwrap();
        assert_eq!(read(&r.dst, &format!("{name}.d/pkg/hello")), "hi", "{name}");
    }
    write(&r.src, "notes.txt", "not an archive");
    let mut add = req(&["/notes.txt"], "/n/");
    add.unpack_archives = true;
    copy(&r.src, &r.dst, &add).unwrap();
    assert_eq!(read(&r.dst, "n/notes.txt"), "not an archive");
    copy(&r.src, &r.dst, &req(&["/a.tar.gz"], "/kept/")).unwrap();
    assert!(
        r.dst.join("kept/a.tar.gz").is_file(),
        "without unpack the archive is a file"
    );
}

#[test]
fn mkdir_and_mkfile() {
    let r = roots();
    write(&r.dst, "etc/passwd", "app:x:1000:1001::/home/app:/bin/sh\n");
    symlink("/", r.dst.join("loop")).unwrap();
    mkdir(
        &r.dst,
        "/work/dir",
        0o755,
        true,
        Some(&OwnerSpec("app".into())),
    )
    .unwrap();
    assert!(r.dst.join("work/dir").is_dir());
    if require_for("the owner check", &[Need::Root]) {
        assert_eq!(fs::metadata(r.dst.join("work/dir")).unwrap().uid(), 1000);
    }
    assert!(matches!(
        mkdir(&r.dst, "/a/b", 0o755, false, None),
        Err(FileOpError::NotFound(_))
    ));
    mkfile(&r.dst, "/loop/loop/script.sh", 0o755, b"#!/bin/sh\n", None).unwrap();
    let m = fs::metadata(r.dst.join("script.sh")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    write(&r.dst, "file", "x");
    assert!(matches!(
        mkdir(&r.dst, "/file/sub", 0o755, true, None),
        Err(FileOpError::NotADirectory(_))
    ));
}

/// Two steps that share a cache mount make the same mount point in it at
/// once (nested cache mounts, parallel stages): whoever comes second finds
/// the directory there, which is not an error.
#[test]
fn mkdir_all_races_with_another_maker() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..200 {
        let rel = format!("r{round}/foo/bar/baz");
        std::thread::scope(|scope| {
            let makers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let root = Root::open(dir.path()).unwrap();
                        root.mkdir_all(&rel, 0o755, None)
                    })
                })
                .collect();
            for maker in makers {
                maker
                    .join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{rel}: {e}"));
            }
        });
        assert!(dir.path().join(&rel).is_dir());
    }
}

/// openat2 refuses a `..` with `EAGAIN` whenever a rename anywhere on the
/// host races with the lookup; a build beside other builds (renames into
/// the store all the time) must not fail on it.
#[test]
fn dot_dot_resolves_while_the_host_renames() {
    let r = roots();
    write(&r.src, "data/file", "x");
    symlink("../../../..", r.src.join("escape")).unwrap();
    let root = root::Root::open(&r.src).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renamer = {
        let (stop, dir) = (stop.clone(), r.outside.clone());
        std::thread::spawn(move || {
            fs::write(dir.join("a"), "").unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fs::rename(dir.join("a"), dir.join("b")).unwrap();
                fs::rename(dir.join("b"), dir.join("a")).unwrap();
            }
        })
    };
    let failed = (0..20_000)
        .filter(|_| root.stat("escape/data/../data/file").is_err())
        .count();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    renamer.join().unwrap();
    assert_eq!(failed, 0, "lookups through `..` failed while renaming");
}

/// A file copied onto a destination that is a symlink is written where the
/// link points, inside the root, even when it dangles; the link stays (as
/// BuildKit's copy does). A link out of the root lands inside it.
#[test]
fn a_file_is_written_through_a_destination_symlink() {
    let r = roots();
    write(&r.src, "a.txt", "new");
    write(&r.dst, "bin/busybox", "old");
    symlink("busybox", r.dst.join("bin/wc")).unwrap();
    symlink("/nowhere", r.dst.join("dangling")).unwrap();
    symlink("/../../../../outside-file", r.dst.join("out")).unwrap();
    copy(&r.src, &r.dst, &req(&["/a.txt"], "/bin/wc")).unwrap();
    assert_eq!(read(&r.dst, "bin/busybox"), "new");
    assert!(r.dst.join("bin/wc").is_symlink());
    copy(&r.src, &r.dst, &req(&["/a.txt"], "/dangling")).unwrap();
    assert_eq!(read(&r.dst, "nowhere"), "new");
    assert!(r.dst.join("dangling").is_symlink());
    copy(&r.src, &r.dst, &req(&["/a.txt"], "/out")).unwrap();
    assert_eq!(read(&r.dst, "outside-file"), "new");
    assert!(!r.dst.parent().unwrap().join("outside-file").exists());
}

/// Hard links among the copied files stay hard links of the copies.
#[test]
fn hard_links_among_copied_files_are_kept() {
    let r = roots();
    write(&r.src, "dir/one", "1");
    fs::create_dir_all(r.src.join("dir/sub")).unwrap();
    fs::hard_link(r.src.join("dir/one"), r.src.join("dir/two")).unwrap();
    fs::hard_link(r.src.join("dir/one"), r.src.join("dir/sub/three")).unwrap();
    copy(&r.src, &r.dst, &req(&["/dir"], "/dir")).unwrap();
    let ino = |p: &str| fs::metadata(r.dst.join(p)).unwrap().ino();
    assert_eq!(ino("dir/one"), ino("dir/two"));
    assert_eq!(ino("dir/one"), ino("dir/sub/three"));
    assert_ne!(
        ino("dir/one"),
        fs::metadata(r.src.join("dir/one")).unwrap().ino()
    );
}

/// Every entry below `root`: path, kind and mode, owner, mtime (not of
/// the directories made now), and what a file or link holds.
fn described(root: &Path, made: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for path in tree(root) {
        let full = root.join(&path);
        let m = fs::symlink_metadata(&full).unwrap();
        let data = if m.is_file() {
            let data = fs::read(&full).unwrap();
            format!(
                "{} bytes {}",
                data.len(),
                String::from_utf8_lossy(&data[..data.len().min(8)])
            )
        } else if m.is_symlink() {
            fs::read_link(&full).unwrap().display().to_string()
        } else {
            String::new()
        };
        let mtime = if made.contains(&path.as_str()) {
            0
        } else {
            m.mtime()
        };
        out.push(format!(
            "{path} {:o} {}:{} {mtime} {data}",
            m.mode(),
            m.uid(),
            m.gid()
        ));
    }
    out
}

#[test]
fn a_copy_into_a_directory_it_makes_is_the_same_written_into_the_upper() {
    let r = roots();
    write(&r.src, "app/a.txt", "a");
    write(&r.src, "app/sub/b.txt", &"b".repeat(100_000));
    fs::write(r.src.join("app/empty"), "").unwrap();
    symlink("a.txt", r.src.join("app/link")).unwrap();
    fs::hard_link(r.src.join("app/a.txt"), r.src.join("app/sub/a-again")).unwrap();
    fs::set_permissions(r.src.join("app/a.txt"), fs::Permissions::from_mode(0o4751)).unwrap();
    let expected = roots();
    copy(&r.src, &expected.dst, &req(&["/app"], "/made/deep/")).unwrap();
    let to = req(&["/app"], "/made/deep/");
    let copy_into_upper = || copy_over(&r.src, &r.dst, into_upper(&r.dst), &to).unwrap();

    // An overlay with no layer below: its upper directory is the
    // destination itself, so the directory the copy makes is the upper's.
    copy_into_upper();
    let made = ["made/", "made/deep/"];
    assert_eq!(described(&r.dst, &made), described(&expected.dst, &made));
    let ino = |p: &str| fs::metadata(r.dst.join(p)).unwrap().ino();
    assert_eq!(ino("made/deep/a.txt"), ino("made/deep/sub/a-again"));

    // Into a directory that is there already: through the destination,
    // replacing what is in the way (a file, a directory, a link).
    fs::remove_file(r.dst.join("made/deep/sub/b.txt")).unwrap();
    write(&r.dst, "made/deep/sub/b.txt/inside", "dir in the way");
    fs::remove_file(r.dst.join("made/deep/empty")).unwrap();
    symlink("/nowhere", r.dst.join("made/deep/empty")).unwrap();
    copy_into_upper();
    assert_eq!(described(&r.dst, &made), described(&expected.dst, &made));
}

/// An overlay with no layer below: its upper directory is the destination
/// itself, so a directory the copy makes is the upper's.
fn into_upper(dst: &Path) -> Onto<'_> {
    Onto {
        upper: Some(dst),
        previous: None,
    }
}

/// `/app` of `src` copied to `/made/` of a fresh destination, straight
/// into its upper: an earlier result of the copy.
fn copied_into_upper(src: &Path) -> Roots {
    let earlier = roots();
    let to = req(&["/app"], "/made/");
    copy_over(src, &earlier.dst, into_upper(&earlier.dst), &to).unwrap();
    earlier
}

/// The same copy into `r.dst`, linking from `earlier`.
fn copy_again(r: &Roots, earlier: &Path) {
    let onto = Onto {
        upper: Some(&r.dst),
        previous: Some(earlier),
    };
    copy_over(&r.src, &r.dst, onto, &req(&["/app"], "/made/")).unwrap();
}

#[test]
fn a_copy_again_links_the_files_an_earlier_result_holds_unchanged() {
    let r = roots();
    write(&r.src, "app/same.txt", "same");
    write(&r.src, "app/sub/big", &"b".repeat(200_000));
    write(&r.src, "app/edited", "old!");
    write(&r.src, "app/grown", "1");
    write(&r.src, "app/mode", "m");
    let earlier = copied_into_upper(&r.src);
    let before = described(&earlier.dst, &["made/"]);

    // Same size and mtime, other bytes; a size changed; a mode changed.
    let mtime = fs::metadata(r.src.join("app/edited"))
        .unwrap()
        .modified()
        .unwrap();
    write(&r.src, "app/edited", "new!");
    fs::File::options()
        .write(true)
        .open(r.src.join("app/edited"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    write(&r.src, "app/grown", "12");
    fs::set_permissions(r.src.join("app/mode"), fs::Permissions::from_mode(0o600)).unwrap();
    let expected = roots();
    copy(&r.src, &expected.dst, &req(&["/app"], "/made/")).unwrap();

    copy_again(&r, &earlier.dst);
    assert_eq!(
        described(&r.dst, &["made/"]),
        described(&expected.dst, &["made/"])
    );
    let linked = |rel: &str| {
        let ino = |root: &Path| fs::metadata(root.join(rel)).unwrap().ino();
        ino(&r.dst) == ino(&earlier.dst)
    };
    assert!(linked("made/same.txt") && linked("made/sub/big"));
    assert!(!linked("made/edited") && !linked("made/grown") && !linked("made/mode"));
    // The earlier result is as it was.
    assert_eq!(described(&earlier.dst, &["made/"]), before);
    assert_eq!(read(&earlier.dst, "made/edited"), "old!");
}

#[test]
fn only_a_regular_file_with_the_same_bytes_is_linked() {
    let r = roots();
    let big: String = (0..100_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    write(&r.src, "app/big", &big);
    write(&r.src, "app/fifo", "not a fifo");
    write(&r.src, "app/link", "not a link");
    let earlier = copied_into_upper(&r.src);
    // The last byte of a large file differs; where files were, a fifo
    // and a symlink with their metadata.
    let mut last = big.clone().into_bytes();
    *last.last_mut().unwrap() = b'!';
    // Each keeps the file's mode and mtime: only type or bytes differ.
    let keep_times = |rel: &str, f: &dyn Fn(&Path)| {
        let path = earlier.dst.join(rel);
        let m = fs::metadata(&path).unwrap();
        f(&path);
        let t = nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec());
        let follow = nix::sys::stat::UtimensatFlags::NoFollowSymlink;
        nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &path, &t, &t, follow).unwrap();
    };
    keep_times("made/big", &|p| fs::write(p, &last).unwrap());
    keep_times("made/fifo", &|p| {
        fs::remove_file(p).unwrap();
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::empty()).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
    });
    keep_times("made/link", &|p| {
        fs::remove_file(p).unwrap();
        symlink("/etc/passwd", p).unwrap();
    });

    copy_again(&r, &earlier.dst);
    assert_eq!(read(&r.dst, "made/big"), big);
    assert_eq!(read(&r.dst, "made/fifo"), "not a fifo");
    assert_eq!(read(&r.dst, "made/link"), "not a link");
    for rel in ["made/big", "made/fifo", "made/link"] {
        assert_eq!(
            fs::symlink_metadata(r.dst.join(rel)).unwrap().nlink(),
            1,
            "{rel}"
        );
    }
}

/// A copied tree exactly [`MAX_TREE_DEPTH`] directories deep is copied
/// whole, and the walk for hard links of ignored files can start from its
/// deepest level (the deepest the copy's thread ever goes); one level
/// deeper is refused, naming the path shortened — never a stack overflow.
#[test]
fn a_tree_at_the_depth_bound_is_copied_and_one_level_deeper_is_refused() {
    use kiln_proto::depth::MAX_TREE_DEPTH;
    let bottom = "a/".repeat(MAX_TREE_DEPTH);
    let r = roots();
    kiln_testing::deep_tree(&r.src, MAX_TREE_DEPTH);
    fs::hard_link(r.src.join(&bottom).join("f"), r.src.join(&bottom).join("g")).unwrap();
    let mut to = req(&["/"], "/");
    to.root_excludes = vec!["ignored".into()];
    copy(&r.src, &r.dst, &to).unwrap();
    assert_eq!(read(&r.dst, &format!("{bottom}g")), "at the bottom\n");
    let copied = fs::metadata(r.dst.join(&bottom).join("f")).unwrap();
    assert_eq!(copied.nlink(), 2, "the hard link is kept");

    let r = roots();
    kiln_testing::deep_tree(&r.src, MAX_TREE_DEPTH + 1);
    let err = copy(&r.src, &r.dst, &to).unwrap_err();
    assert!(matches!(err, FileOpError::TooDeep(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("refusing /a/a/a/"), "{message}");
    assert!(
        message.ends_with("…: deeper than 1024 directories"),
        "{message}"
    );
}
