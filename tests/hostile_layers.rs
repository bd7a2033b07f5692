//! Images from untrusted sources (issue 13, items 3 and 4): hostile layers
//! and lying image configs, made here byte by byte, loaded with `kiln load`
//! and used by `FROM` + `RUN`, `-o type=local` and `-o type=tar`. Each case
//! is a clear error or a harmless result, and nothing outside the rootfs,
//! the store and the destination changes: sentinels sit beside the output
//! directory and outside the store (where the layers' symlinks point), and
//! the snapshot of the real busybox is checked file by file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_cache::Digest;

use crate::busybox::{Setup, ready};

/// One tar entry, its names written as raw header bytes (the tar crate's
/// own setters refuse `..` and absolute names: a hostile layer has them).
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

fn header(name: &str, kind: tar::EntryType, size: u64, link: &str) -> tar::Header {
    let mut h = tar::Header::new_old();
    h.set_entry_type(kind);
    h.set_size(size);
    // Modes no sentinel has: a chmod that went astray shows.
    h.set_mode(if kind == tar::EntryType::Directory {
        0o751
    } else {
        0o640
    });
    h.set_mtime(1_600_000_000);
    let old = h.as_old_mut();
    assert!(name.len() < old.name.len() && link.len() < old.linkname.len());
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

/// A layer tar of `entries`.
fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (h, data) = match e {
            Entry::File(n, d) => (header(n, tar::EntryType::Regular, d.len() as u64, ""), *d),
            Entry::Dir(n) => (header(n, tar::EntryType::Directory, 0, ""), &b""[..]),
            Entry::Symlink(n, t) => (header(n, tar::EntryType::Symlink, 0, t), &b""[..]),
            Entry::HardLink(n, t) => (header(n, tar::EntryType::Link, 0, t), &b""[..]),
        };
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A docker-archive of one image `tag` with `layers`; its config claims
/// `diff_ids` (the layers' own digests when `None`).
pub(crate) fn docker_archive(
    path: &Path,
    tag: &str,
    layers: &[Vec<u8>],
    diff_ids: Option<Vec<String>>,
) {
    let diff_ids =
        diff_ids.unwrap_or_else(|| layers.iter().map(|l| Digest::of(l).to_string()).collect());
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let layer_names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": layer_names,
    }]))
    .unwrap();
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", &manifest);
    add(&config_name, &config);
    for (name, data) in layer_names.iter().zip(layers) {
        add(name, data);
    }
    b.finish().unwrap();
}

/// Every path under `dir` with its size and inode (what a stray write,
/// delete or hard link would change); symlinks are not followed.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u64, u64, u32)> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<PathBuf, (u64, u64, u32)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let m = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(base).unwrap().to_owned();
            out.insert(rel, (m.size(), m.ino(), m.mode()));
            if m.is_dir() {
                walk(&path, base, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(m) = fs::symlink_metadata(dir) {
        out.insert(PathBuf::new(), (0, m.ino(), m.mode()));
    }
    walk(dir, dir, &mut out);
    out
}

/// The world around one store: sentinels outside it and in its `tmp/`,
/// the busybox snapshot as it was, and an output directory beside sentinels.
struct World {
    s: Setup,
    /// A directory outside everything kiln was given; symlinks point here.
    outside: PathBuf,
    /// The parent of the `-o type=local` destinations.
    out_parent: PathBuf,
    before_outside: BTreeMap<PathBuf, (u64, u64, u32)>,
    before_snapshots: BTreeMap<PathBuf, (u64, u64, u32)>,
}

impl World {
    fn new() -> Self {
        let s = Setup::new();
        // The real busybox unpacked: its snapshot is what a hostile
        // whiteout or a lying config would reach.
        let warm = s.build("FROM base:busybox\nRUN true\n", &[]);
        assert!(warm.status.success(), "{}", stderr(&warm));
        let outside = s.dir.path().join("outside");
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("sentinel"), "keep").unwrap();
        fs::write(outside.join("dir/sentinel"), "keep").unwrap();
        let out_parent = s.dir.path().join("out");
        fs::create_dir_all(&out_parent).unwrap();
        fs::write(out_parent.join("sentinel"), "keep").unwrap();
        let mut w = Self {
            before_outside: tree(&outside),
            before_snapshots: BTreeMap::new(),
            s,
            outside,
            out_parent,
        };
        w.before_snapshots = tree(&w.s.root.join("snapshots"));
        assert!(
            w.before_snapshots
                .keys()
                .any(|p| p.ends_with("bin/busybox")),
            "the busybox snapshot is there: {:?}",
            w.before_snapshots.keys().collect::<Vec<_>>()
        );
        w
    }

    /// Asserts that nothing kiln may not touch changed.
    fn intact(&self, case: &str) {
        assert_eq!(tree(&self.outside), self.before_outside, "{case}: outside");
        assert_eq!(
            fs::read_to_string(self.out_parent.join("sentinel"))
                .ok()
                .as_deref(),
            Some("keep"),
            "{case}: beside the output"
        );
        let now = tree(&self.s.root.join("snapshots"));
        for (path, meta) in &self.before_snapshots {
            // Short links may be remade; the snapshots themselves may not change.
            if path.starts_with("l") {
                continue;
            }
            assert_eq!(now.get(path), Some(meta), "{case}: snapshot entry {path:?}");
        }
    }

    fn load(
        &self,
        name: &str,
        layers: &[Vec<u8>],
        diff_ids: Option<Vec<String>>,
    ) -> std::process::Output {
        let archive = self.s.dir.path().join(format!("{name}.tar"));
        docker_archive(&archive, &format!("{name}:1"), layers, diff_ids);
        self.s.kiln(&["load", "-i", archive.to_str().unwrap()])
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each hostile layer on top of busybox: `kiln load`, then `FROM` + `RUN
/// true`, `-o type=local` and `-o type=tar`.
#[test]
fn hostile_layers_write_and_delete_nothing_outside() {
    if !ready() {
        return;
    }
    let w = World::new();
    let outside = w.outside.to_str().unwrap().to_owned();
    let sentinel = format!("{outside}/sentinel");
    let cases: Vec<(&str, Vec<Entry<'_>>, bool)> = vec![
        // (name, entries, whether it is harmless: may succeed)
        ("wh-dotdot-dot", vec![Entry::File(".wh...", b"")], false),
        ("wh-dotdot", vec![Entry::File(".wh..", b"")], false),
        ("wh-empty", vec![Entry::File(".wh.", b"")], false),
        (
            "wh-nested",
            vec![Entry::Dir("a/"), Entry::File("a/.wh...", b"")],
            false,
        ),
        (
            "wh-in-path",
            vec![Entry::File("a/.wh.../x", b"harmless")],
            true,
        ),
        ("dotdot", vec![Entry::File("../../../escaped", b"x")], false),
        (
            "dotdot-inner",
            vec![Entry::File("a/../../escaped", b"x")],
            false,
        ),
        (
            "absolute",
            vec![Entry::File(&sentinel, b"overwritten")],
            false,
        ),
        (
            "symlink-then-write",
            vec![
                Entry::Symlink("evil", &outside),
                Entry::File("evil/sentinel", b"overwritten"),
            ],
            false,
        ),
        (
            "symlink-then-dir",
            vec![
                Entry::Symlink("evil", &outside),
                Entry::Dir("evil/dir/"),
                Entry::File("evil/dir/new", b"x"),
            ],
            false,
        ),
        (
            "symlink-then-whiteout",
            vec![
                Entry::Symlink("evil", &outside),
                Entry::File("evil/.wh.sentinel", b""),
            ],
            false,
        ),
        (
            "symlink-then-opaque",
            vec![
                Entry::Symlink("evil", &outside),
                Entry::File("evil/dir/.wh..wh..opq", b""),
            ],
            false,
        ),
        // A directory entry first, then the same path as a symlink: its
        // mode, set at the end, must not go through the symlink.
        (
            "dir-then-symlink",
            vec![Entry::Dir("d/"), Entry::Symlink("d", &outside)],
            true,
        ),
        (
            "hardlink-passwd",
            vec![Entry::HardLink("passwd", "/etc/passwd")],
            false,
        ),
        (
            "hardlink-dotdot",
            vec![Entry::HardLink("x", "../../../etc/passwd")],
            false,
        ),
        (
            "hardlink-through-symlink",
            vec![
                Entry::Symlink("evil", &outside),
                Entry::HardLink("h", "evil/sentinel"),
            ],
            false,
        ),
    ];
    for (name, entries, harmless) in cases {
        let out = w.load(name, &[layer(&entries)], None);
        assert!(out.status.success(), "{name}: load: {}", stderr(&out));
        w.intact(&format!("{name}: load"));

        // FROM + RUN: the layer is unpacked as a snapshot.
        let from = format!("FROM {name}:1\n");
        let built = w.s.build(&format!("{from}RUN true\n"), &[]);
        if !harmless {
            assert!(!built.status.success(), "{name}: FROM + RUN succeeded");
            assert!(
                stderr(&built).contains("refusing layer entry")
                    || stderr(&built).contains("symlink"),
                "{name}: FROM + RUN: {}",
                stderr(&built)
            );
        }
        w.intact(&format!("{name}: FROM + RUN"));

        // -o type=local: layers applied into one directory.
        let dest = w.out_parent.join(format!("dest-{name}"));
        let local = w.s.build(
            &from,
            &["-o", &format!("type=local,dest={}", dest.display())],
        );
        if !harmless {
            assert!(!local.status.success(), "{name}: -o local succeeded");
            assert!(
                stderr(&local).contains("refusing layer entry"),
                "{name}: -o local: {}",
                stderr(&local)
            );
        }
        w.intact(&format!("{name}: -o type=local"));

        // -o type=tar: the same through the store's tmp.
        let tar_dest = w.out_parent.join(format!("{name}.tar"));
        let tarred = w.s.build(
            &from,
            &["-o", &format!("type=tar,dest={}", tar_dest.display())],
        );
        // (The store's tmp, where the tree is made, is emptied by every
        // kiln process that opens the store: no sentinel lives there. The
        // error says the entry was refused, not that tmp/ was gone.)
        if !harmless {
            assert!(!tarred.status.success(), "{name}: -o tar succeeded");
            assert!(
                stderr(&tarred).contains("refusing layer entry"),
                "{name}: -o tar: {}",
                stderr(&tarred)
            );
        }
        w.intact(&format!("{name}: -o type=tar"));
    }
}

/// An image whose config claims busybox's diff ID for another layer.
#[test]
fn hostile_layers_a_lying_diff_id_poisons_nothing() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tarball = crate::busybox::base_tarball(dir.path());
    // busybox imported, never unpacked: the liar's layer would come first.
    let s = Setup::with_base(dir, &tarball);
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ok(&["inspect", "base:busybox"]).0).unwrap();
    let busybox_diff = inspect[0]["RootFS"]["Layers"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let evil = layer(&[Entry::Dir("bin/"), Entry::File("pwned", b"attacker")]);
    let evil_diff = Digest::of(&evil).to_string();
    let archive = s.dir.path().join("liar.tar");
    docker_archive(
        &archive,
        "liar:1",
        std::slice::from_ref(&evil),
        Some(vec![busybox_diff.clone()]),
    );
    let out = s.kiln(&["load", "-i", archive.to_str().unwrap()]);
    assert!(!out.status.success(), "the lying image loaded");
    let text = stderr(&out);
    assert!(
        text.contains(&busybox_diff) && text.contains(&evil_diff) && text.contains("layer"),
        "the error names the layer and both digests: {text}"
    );
    assert!(!s.ok(&["images"]).0.contains("liar"), "nothing tagged");

    // What every later build of the real busybox sees.
    let out = s.build(
        "FROM base:busybox\nRUN test ! -e /pwned && test -x /bin/busybox\n",
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Layers and diff IDs that do not pair up.
    let ok_layer = layer(&[Entry::File("f", b"x")]);
    let archive = s.dir.path().join("count.tar");
    docker_archive(
        &archive,
        "count:1",
        std::slice::from_ref(&ok_layer),
        Some(vec![
            Digest::of(&ok_layer).to_string(),
            busybox_diff.clone(),
        ]),
    );
    let out = s.kiln(&["load", "-i", archive.to_str().unwrap()]);
    assert!(!out.status.success(), "a count mismatch loaded");
    assert!(
        stderr(&out).contains("1 layer") && stderr(&out).contains("2 diff IDs"),
        "{}",
        stderr(&out)
    );
}

/// An OCI layout blob whose bytes are not its name's digest.
#[test]
fn hostile_layers_a_blob_that_is_not_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let archive = dir.path().join("oci.tar");
    let real = layer(&[Entry::File("f", b"x")]);
    let claimed = Digest::of(b"something else");
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(&format!("blobs/sha256/{}", claimed.hex()), &real);
    add("index.json", br#"{"schemaVersion":2,"manifests":[]}"#);
    b.finish().unwrap();
    let out = crate::harness::run(crate::harness::kiln().env("KILN_ROOT", &root).args([
        "load",
        "-i",
        archive.to_str().unwrap(),
    ]));
    assert!(!out.status.success(), "a blob under another digest loaded");
    assert!(stderr(&out).contains("digest mismatch"), "{}", stderr(&out));
    assert!(
        !root
            .join("content/blobs/sha256")
            .join(claimed.hex())
            .exists()
            && !root
                .join("content/blobs/sha256")
                .join(Digest::of(&real).hex())
                .exists(),
        "nothing stored"
    );
}
