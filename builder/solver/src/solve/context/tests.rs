use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn content_not_mtime() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.txt"), "a").unwrap();
    fs::write(dir.path().join("b.txt"), "b").unwrap();
    fs::write(dir.path().join("ignored.log"), "x").unwrap();
    let ignore = Matcher::new(&["*.log".into()]).unwrap();
    let memo = kiln_cache::MemoryMeta::default();
    let all = || digest(dir.path(), &["/".into()], &ignore, true, &memo);
    let only_a = || digest(dir.path(), &["/a.txt".into()], &ignore, true, &memo);
    let (d1, a1) = (all(), only_a());
    let f = fs::File::options()
        .write(true)
        .open(dir.path().join("a.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    assert_eq!(
        (all(), only_a()),
        (d1.clone(), a1.clone()),
        "mtime does not count"
    );
    fs::write(dir.path().join("ignored.log"), "changed").unwrap();
    assert_eq!(all(), d1, ".dockerignore'd files do not count");
    fs::write(dir.path().join("b.txt"), "B").unwrap();
    assert_ne!(all(), d1);
    assert_eq!(only_a(), a1, "a copy of a.txt does not depend on b.txt");
    fs::set_permissions(dir.path().join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_ne!(only_a(), a1);
    assert_eq!(
        digest(dir.path(), &["/a.txt".into()], &ignore, false, &memo),
        digest(dir.path(), &["/a.txt".into()], &ignore, false, &memo)
    );
}

/// A tree with every kind of entry the walk treats differently, with
/// fixed modes so the digests below do not depend on the umask.
fn varied_tree() -> tempfile::TempDir {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let file = |rel: &str, content: &str, mode: u32| {
        fs::write(root.join(rel), content).unwrap();
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    };
    let mkdir = |rel: &str, mode: u32| {
        fs::create_dir(root.join(rel)).unwrap();
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    };
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    file(
        ".dockerignore",
        "*.log\nignored\n!ignored/important.txt\n!dir/sub/keep.log\n",
        0o644,
    );
    file("a.txt", "alpha", 0o644);
    file("b.log", "log", 0o600);
    file("run.sh", "#!/bin/sh\n", 0o755);
    file("with space.txt", "space", 0o644);
    file("\u{fc}ber.txt", "umlaut", 0o644);
    mkdir("dir", 0o755);
    file("dir/x.txt", "x", 0o644);
    file("dir/y.md", "y", 0o640);
    mkdir("dir/sub", 0o700);
    file("dir/sub/deep.txt", "deep", 0o644);
    file("dir/sub/keep.log", "kept", 0o644);
    file("dir/sub/drop.log", "dropped", 0o644);
    mkdir("empty", 0o755);
    mkdir("ignored", 0o755);
    file("ignored/y.txt", "y", 0o644);
    file("ignored/important.txt", "important", 0o644);
    symlink("a.txt", root.join("link")).unwrap();
    symlink("dir", root.join("dirlink")).unwrap();
    symlink("nowhere", root.join("dangling")).unwrap();
    // Not UTF-8: today's walk looks it up by its lossy name, which
    // does not exist, so it counts as missing.
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"bad\xff")), "b").unwrap();
    dir
}

/// Digests of the varied tree, as the first implementation computed
/// them: they are part of every step cache key, so they must never
/// change.
#[test]
fn digests_are_pinned() {
    let tree = varied_tree();
    let ignore = Matcher::new(&[
        "*.log".into(),
        "ignored".into(),
        "!ignored/important.txt".into(),
        "!dir/sub/keep.log".into(),
    ])
    .unwrap();
    let none = Matcher::new(&[]).unwrap();
    let wild = Matcher::new(&["dir/s*".into(), "**/*.md".into()]).unwrap();
    let cases: &[(&[&str], &Matcher, bool, &str)] = &[
        (
            &["/"],
            &ignore,
            true,
            "sha256:368726a2660ae993f2023e4964964c967c712e0471cf98904fe80513024f2aca",
        ),
        (
            &["/"],
            &ignore,
            false,
            "sha256:9d2e25451eb8561d793f84ded5410be9400815ad2eea0ed5b1f37c29f53f35a8",
        ),
        (
            &["."],
            &none,
            true,
            "sha256:68367083aabf22bb6c28472481c0da124cce1a636e36816db63938e83115e47d",
        ),
        (
            &["/"],
            &wild,
            true,
            "sha256:8e077bf3498787da865da8bc9e24893c430e57459f983be35c3666d19328d4aa",
        ),
        (
            &["dir"],
            &ignore,
            true,
            "sha256:6d31121d9bdaca1c8a84fc98dee23d2076875327f77f4cc7b44a83d585729310",
        ),
        (
            &["./dir/"],
            &ignore,
            false,
            "sha256:234829f0cb1555adaffc114fe97fdb95fc9a8cf971d0d0d684dea98f21eb4ba4",
        ),
        (
            &["dir/sub"],
            &none,
            true,
            "sha256:e1a439edc5e2a159814a1663c4146ee6959edb79fc79f8801dcf421d9b4ea102",
        ),
        (
            &["/a.txt"],
            &ignore,
            true,
            "sha256:d2d248b477efb7036435791f3f115750ca8675bd81b76b500fc01e09c585f0d9",
        ),
        (
            &["a.txt", "dir", "empty"],
            &ignore,
            true,
            "sha256:ce80547efce1b6f11776d08d1796750b86cdf647b7ae8c23febc3b17ed329c31",
        ),
        (
            &["empty"],
            &ignore,
            true,
            "sha256:e3d45f36fc16eede27acc52567561025f468a3d006cc489f321a22e6945893fa",
        ),
        (
            &["link"],
            &ignore,
            true,
            "sha256:c947219e95742ff298c8d7f9ad7deab0cf96b88056f2a87e2f2f8b5a4901bd29",
        ),
        (
            &["dirlink"],
            &ignore,
            true,
            "sha256:1cbe3bf162be8a8362f5cb84882885684d71a1444d92b89f5f338b5b47cd3965",
        ),
        (
            &["dirlink/x.txt"],
            &ignore,
            true,
            "sha256:39b00267435ed15d0d6c907fb7f6638452cf39f36e531da66877fb742e50f5f2",
        ),
        (
            &["dirlink/sub"],
            &ignore,
            true,
            "sha256:01b2fce41a7cdb293408859219e013ecd07dfb0efc33360e5b5b4bcfdf95cd83",
        ),
        (
            &["dangling"],
            &ignore,
            false,
            "sha256:6a4cbf9fb764fdc7901544be4fe91da3097434ec37334c7a056e35b8e4c4eca9",
        ),
        (
            &["*.txt"],
            &ignore,
            true,
            "sha256:d00b7d4e9424013aa84863386a5d5e82a220d951983e5c7702c7675a83477576",
        ),
        (
            &["dir/*.txt"],
            &ignore,
            true,
            "sha256:b79ab4f1180838ffe7b597385a459ce8f74007a9f1b1f6a363e510b352e121b8",
        ),
        (
            &["d?r/x.txt"],
            &none,
            true,
            "sha256:049a6265b20c62f4670c77f2e61f88678934a54c55123eaf348c1c0ac6c09828",
        ),
        (
            &["missing.txt"],
            &ignore,
            true,
            "sha256:252670363cec5bd655ac7e7ef76918bc37eb220d31a81ab7a5518308151a9d3a",
        ),
        (
            &["missing/deeper"],
            &ignore,
            false,
            "sha256:9da3cdf74023666e33abcc626f3ff537b3bd098aa10b86ae6ed4042beaf7ebdd",
        ),
        (
            &["ignored"],
            &ignore,
            true,
            "sha256:d0f0da589fabcd57bb8988998049e8ad97ddc867c3cc00233e774d28bb5787bc",
        ),
        (
            &["ignored/y.txt"],
            &ignore,
            true,
            "sha256:c7819812243c035100915030f88a0c0706eab12c8cae51c949d3d6085531c034",
        ),
        (
            &["b.log"],
            &ignore,
            true,
            "sha256:b31cb050bf3b1e20a9f27a141729ee7f435d0cb9dd6ebfaeceac309f01f7abac",
        ),
        (
            &["b.log"],
            &none,
            true,
            "sha256:913bf2aed07e262c73f5db5139287d456b56a92083a8ee6bf9944218768a2128",
        ),
        (
            &["bad\u{fffd}"],
            &none,
            true,
            "sha256:14a152ab54b8c0f0c2102ea896f181602f5526f3e6b5ba172ed1fdd94e49f4a4",
        ),
    ];
    let mut wrong = Vec::new();
    for (sources, ignore, with_mode, want) in cases {
        let sources: Vec<String> = sources.iter().map(|s| (*s).to_owned()).collect();
        let memo = kiln_cache::MemoryMeta::default();
        let got = digest(tree.path(), &sources, ignore, *with_mode, &memo);
        if got != *want {
            wrong.push(format!("{sources:?} {with_mode}: {got}"));
        }
    }
    assert!(wrong.is_empty(), "digests changed:\n{}", wrong.join("\n"));
}

/// Files whose path is longer than the kernel takes (`PATH_MAX`): the
/// first walk looked each entry up by its full path, so they count as
/// missing, and that must stay so.
#[test]
fn paths_longer_than_path_max_are_pinned() {
    use std::os::unix::fs::symlink;
    let tree = tempfile::tempdir().unwrap();
    let shortcuts = tempfile::tempdir().unwrap();
    let name = "n".repeat(250);
    let mut below = tree.path().join("deep");
    fs::create_dir(&below).unwrap();
    for level in 0..20 {
        // Every few levels, go on through a short symlink outside the
        // tree: a full path would be too long to create.
        let link = shortcuts.path().join(level.to_string());
        symlink(&below, &link).unwrap();
        fs::create_dir(link.join(&name)).unwrap();
        fs::write(link.join(format!("f{level}")), level.to_string()).unwrap();
        fs::set_permissions(link.join(&name), fs::Permissions::from_mode(0o755)).unwrap();
        below = link.join(&name);
    }
    fs::set_permissions(tree.path().join("deep"), fs::Permissions::from_mode(0o755)).unwrap();
    let memo = kiln_cache::MemoryMeta::default();
    let none = Matcher::new(&[]).unwrap();
    assert_eq!(
        digest(tree.path(), &["deep".into()], &none, true, &memo),
        "sha256:2e8345329e6e876259661625f4feabeff401cea589c5090051d4c5c63984f166"
    );
}

/// The remembered digest of a file is found under
/// "dev:ino:size:mtime.ns:ctime.ns" of its own metadata: a store
/// filled by an earlier kiln keeps serving.
#[test]
fn memo_key_format_is_pinned() {
    let tree = varied_tree();
    let memo = kiln_cache::MemoryMeta::default();
    let fake = Digest::of(b"remembered");
    let mut files = 0;
    for rel in [
        ".dockerignore",
        "a.txt",
        "run.sh",
        "with space.txt",
        "\u{fc}ber.txt",
        "dir/x.txt",
        "dir/y.md",
        "dir/sub/deep.txt",
        "dir/sub/keep.log",
        "ignored/important.txt",
    ] {
        let m = fs::symlink_metadata(tree.path().join(rel)).unwrap();
        let key = format!(
            "{}:{}:{}:{}.{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        );
        memo.put_file_digest(&key, &fake).unwrap();
        files += 1;
    }
    assert_eq!(files, 10);
    let ignore = Matcher::new(&[
        "*.log".into(),
        "ignored".into(),
        "!ignored/important.txt".into(),
        "!dir/sub/keep.log".into(),
    ])
    .unwrap();
    assert_eq!(
        digest(tree.path(), &["/".into()], &ignore, true, &memo),
        "sha256:73cd437c49798c2d20eaf0e11c0eff72c38cc64c5a2153a9c76e55b9ed747241",
        "every file's remembered digest is used"
    );
}

/// A file changed within the last second is read but not remembered;
/// an older one is remembered.
#[test]
fn racy_files_are_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a"), "a").unwrap();
    let key = || {
        let m = fs::symlink_metadata(dir.path().join("a")).unwrap();
        format!(
            "{}:{}:{}:{}.{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        )
    };
    let memo = kiln_cache::MemoryMeta::default();
    let none = Matcher::new(&[]).unwrap();
    let first = digest(dir.path(), &["a".into()], &none, true, &memo);
    assert_eq!(memo.file_digest(&key()).unwrap(), None);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    assert_eq!(digest(dir.path(), &["a".into()], &none, true, &memo), first);
    assert_eq!(memo.file_digest(&key()).unwrap(), Some(Digest::of(b"a")));
}

/// Times a warm digest (every file remembered, in a sled store as
/// kiln's) of the many-files workload: 200 directories of 100 files,
/// or the tree in `KILN_BENCH_CONTEXT` (its `src`). Prints the median
/// of 5; no assertion on time.
///
/// `cargo test --release -p kiln-solver --lib warm_many_files -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: run by hand"]
fn warm_many_files() {
    let generated = tempfile::tempdir().unwrap();
    let context = match std::env::var_os("KILN_BENCH_CONTEXT") {
        Some(dir) => PathBuf::from(dir),
        None => {
            generate_many_files(generated.path());
            // Older than the racy second, so the first walk remembers.
            std::thread::sleep(std::time::Duration::from_millis(2200));
            generated.path().to_owned()
        }
    };
    let store = tempfile::tempdir().unwrap();
    let memo = kiln_cache::SledMeta::open(&store.path().join("meta.sled")).unwrap();
    let none = Matcher::new(&[]).unwrap();
    let sources = ["src".to_owned()];
    // Wall time, and the process's CPU time (less disturbed by other
    // work on the machine; it counts every thread).
    let cpu = || {
        let usage =
            nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
        let us = |t: nix::sys::time::TimeVal| {
            std::time::Duration::new(
                u64::try_from(t.tv_sec()).unwrap(),
                u32::try_from(t.tv_usec()).unwrap() * 1000,
            )
        };
        us(usage.user_time()) + us(usage.system_time())
    };
    let run = || {
        let (start, start_cpu) = (std::time::Instant::now(), cpu());
        let d = digest(&context, &sources, &none, true, &memo);
        (start.elapsed(), cpu() - start_cpu, d)
    };
    let (cold, cold_cpu, want) = run();
    let (mut wall, mut cpus): (Vec<_>, Vec<_>) = (0..5)
        .map(|_| {
            let (t, c, d) = run();
            assert_eq!(d, want);
            (t, c)
        })
        .unzip();
    wall.sort();
    cpus.sort();
    println!(
        "cold {cold:.1?} (cpu {cold_cpu:.1?}); warm {wall:.1?}; median {:.1?}; cpu median {:.1?}; {want}",
        wall[2], cpus[2]
    );
}

fn generate_many_files(root: &Path) {
    // A fixed LCG: the sizes do not matter, only that they vary.
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        seed >> 33
    };
    for d in 0..200 {
        let dir = root.join(format!("src/d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let len = 200 + usize::try_from(next() % 1600).unwrap();
            let bytes: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            fs::write(dir.join(format!("f{f:03}.txt")), bytes).unwrap();
        }
    }
}

/// A tree deeper than the levels that keep a descriptor: the walk goes
/// on by path below them, with the same digest.
#[test]
fn deeper_than_fd_depth_is_pinned() {
    const LEVELS: usize = 70;
    const { assert!(FD_DEPTH < LEVELS) };
    let tree = tempfile::tempdir().unwrap();
    let mut rel = PathBuf::from("deep");
    for level in 0..LEVELS {
        let dir = tree.path().join(&rel);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("f"), level.to_string()).unwrap();
        fs::set_permissions(dir.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
        if level % 10 == 0 {
            std::os::unix::fs::symlink("f", dir.join("l")).unwrap();
        }
        rel.push("d");
    }
    let memo = kiln_cache::MemoryMeta::default();
    let none = Matcher::new(&[]).unwrap();
    let skip = Matcher::new(&["**/l".into()]).unwrap();
    assert_eq!(
        [
            digest(tree.path(), &["/".into()], &none, true, &memo),
            digest(tree.path(), &["deep/d/d".into()], &skip, false, &memo),
        ],
        [
            "sha256:52ab78c72d7496276314ba6d919cc3beb011666f61741c6b20a9e2085409feed",
            "sha256:a69ec60fe7a693b10c43de711c3150c9066498d82f873bb292976c3ac2d15da4"
        ]
    );
}

/// The walk by descriptor finds an entry exactly when a lookup by its
/// full path would: up to the kernel's `PATH_MAX`.
#[test]
fn path_limit_is_the_kernels() {
    use std::os::unix::fs::symlink;
    let tree = tempfile::tempdir().unwrap();
    let shortcut = tempfile::tempdir().unwrap();
    let mut full = tree.path().to_owned();
    let mut end = tree.path().to_owned();
    let mut rel = String::new();
    let name = "n".repeat(200);
    // Directories down to about 3,900 bytes, reached through a short
    // symlink since a full path over PATH_MAX cannot be created.
    while full.as_os_str().len() < 3900 {
        fs::create_dir(end.join(&name)).unwrap();
        full.push(&name);
        rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let link = shortcut.path().join(rel.len().to_string());
        symlink(&full, &link).unwrap();
        end = link;
    }
    let memo = kiln_cache::MemoryMeta::default();
    let none = Matcher::new(&[]).unwrap();
    let mut walk = Walk::new(tree.path(), &none, true, &memo);
    let dir = Dir::open(
        &end,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let mut seen = Vec::new();
    for total in 4090..4100 {
        // The file's full path from the context is `total` bytes.
        let len = total - full.as_os_str().len() - 1;
        let file = "f".repeat(len);
        fs::write(end.join(&file), "x").unwrap();
        walk.rel = format!("{rel}/{file}");
        let by_path = fs::symlink_metadata(tree.path().join(&walk.rel)).is_ok();
        let by_fd = walk.stat(At::In(dir.as_fd(), &file)).is_some();
        assert_eq!(by_fd, by_path, "a path of {total} bytes");
        seen.push(by_fd);
    }
    assert_eq!(
        seen,
        [
            true, true, true, true, true, true, false, false, false, false
        ]
    );
}

/// Directories large enough to be looked at on two threads: the
/// entries are still hashed in name order.
#[test]
fn large_directories_are_pinned() {
    use std::os::unix::ffi::OsStrExt;
    let tree = tempfile::tempdir().unwrap();
    let big = tree.path().join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..120 {
        let path = big.join(format!("f{i:03}{}", if i % 7 == 0 { ".log" } else { "" }));
        fs::write(&path, "x".repeat(i * 37)).unwrap();
        fs::set_permissions(
            &path,
            fs::Permissions::from_mode(0o600 + (i as u32 % 3) * 0o44),
        )
        .unwrap();
    }
    for i in 0..10 {
        std::os::unix::fs::symlink(format!("f{i:03}"), big.join(format!("l{i}"))).unwrap();
    }
    for d in 0..4 {
        let sub = big.join(format!("d{d}"));
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        for i in 0..(d * 20) {
            let path = sub.join(format!("g{i}"));
            fs::write(&path, format!("{d}/{i}")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    fs::write(big.join(std::ffi::OsStr::from_bytes(b"z\xfe")), "z").unwrap();
    fs::set_permissions(&big, fs::Permissions::from_mode(0o755)).unwrap();
    let ignore =
        Matcher::new(&["**/*.log".into(), "!big/f014.log".into(), "big/d2".into()]).unwrap();
    let memo = kiln_cache::MemoryMeta::default();
    assert_eq!(
        [
            digest(tree.path(), &["big".into()], &ignore, true, &memo),
            digest(tree.path(), &["/".into()], &ignore, false, &memo),
            digest(tree.path(), &["big/d3".into()], &ignore, true, &memo),
        ],
        [
            "sha256:3f7ca75b6fb7e88065327130211cfbe936f234cefaa83f67c6c714a4112c494b",
            "sha256:76d76b150585207df4ab33b527b25f1cf334e7980c3821af072295315217c803",
            "sha256:343980a49657011f92969941e95d31ac25796f603e26d271f1c5184d7e45b939"
        ]
    );
}

/// A context tree is hashed down to [`MAX_TREE_DEPTH`] levels below a
/// source's top; a directory deeper is hashed as a marker, not walked (the
/// copy that reads it refuses it), so what lies below it does not count.
#[test]
fn directories_deeper_than_the_bound_are_a_marker() {
    let ignore = Matcher::new(&[]).unwrap();
    let memo = kiln_cache::MemoryMeta::default();
    let bottom = |levels: usize| "a/".repeat(levels);
    let at_bound = tempfile::tempdir().unwrap();
    kiln_testing::deep_tree(at_bound.path(), MAX_TREE_DEPTH);
    let digest_of = |dir: &Path| digest(dir, &["/".into()], &ignore, true, &memo);
    let before = digest_of(at_bound.path());
    fs::write(at_bound.path().join(bottom(MAX_TREE_DEPTH)).join("f"), "x").unwrap();
    assert_ne!(
        digest_of(at_bound.path()),
        before,
        "the deepest level counts"
    );

    let deeper = tempfile::tempdir().unwrap();
    kiln_testing::deep_tree(deeper.path(), MAX_TREE_DEPTH + 1);
    let before = digest_of(deeper.path());
    fs::write(
        deeper.path().join(bottom(MAX_TREE_DEPTH + 1)).join("f"),
        "x",
    )
    .unwrap();
    assert_eq!(
        digest_of(deeper.path()),
        before,
        "below the bound: a marker"
    );
    fs::write(deeper.path().join(bottom(MAX_TREE_DEPTH)).join("g"), "x").unwrap();
    assert_ne!(digest_of(deeper.path()), before, "above it, walked");
}
