//! Digests are kiln's promise of reproducibility: the same build, with
//! `SOURCE_DATE_EPOCH` and the same compression, names the same image
//! whatever machine, store or version of kiln made it and however its
//! layers were kept on the way. Pinned here (issue 16 moved compression
//! from build time to the moment a layer leaves the machine; the bytes
//! that leave must not change).

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::busybox::{Setup, ready};
use crate::registry::{Registry, registry_ready};

/// An image with no base (nothing of this machine's busybox in it): two
/// COPY layers of files whose mtimes `SOURCE_DATE_EPOCH` clamps.
const DOCKERFILE: &str = "FROM scratch\nCOPY a.txt b.txt /app/\nCOPY dir /app/dir\nENV GREETING=hello\nCMD [\"/app/a.txt\"]\n";

/// What that build's image has always been with gzip layers (the default:
/// as pushed and as `type=oci` writes it)…
const MANIFEST: &str = "sha256:edd650a521bfdd9ced15e8129f8986d11a976d7d72b6386389f7c5e8d38e22e6";

/// … and with zstd layers (`compression=zstd`).
const MANIFEST_ZSTD: &str =
    "sha256:2a0bddf97d25e5b17b0ce5d0de994c6f176ccc5b8dcc9863934e6bbacf95b2ec";

fn context(s: &Setup) {
    let file = |name: &str, text: &str| {
        let path = s.context.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    };
    fs::create_dir_all(s.context.join("dir/sub")).unwrap();
    fs::set_permissions(s.context.join("dir"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(s.context.join("dir/sub"), fs::Permissions::from_mode(0o755)).unwrap();
    file("a.txt", "alpha\n");
    file("b.txt", &"bravo ".repeat(10_000));
    file("dir/sub/c.txt", "charlie\n");
}

/// The manifest digest in an OCI layout tarball's index.
fn oci_manifest(tarball: &std::path::Path) -> String {
    let mut archive = tar::Archive::new(fs::File::open(tarball).unwrap());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("index.json") {
            let index: serde_json::Value = serde_json::from_reader(entry).unwrap();
            return index["manifests"][0]["digest"].as_str().unwrap().to_owned();
        }
    }
    panic!("no index.json in {}", tarball.display());
}

#[test]
fn the_same_build_names_the_same_image_as_it_always_has() {
    if !ready() || !registry_ready() {
        return;
    }
    let s = Setup::new();
    context(&s);
    let oci = |file: &str, extra: &str, tags: &[&str]| {
        let path = s.dir.path().join(file);
        let output = format!("type=oci,dest={}{extra}", path.display());
        let mut flags = vec!["--build-arg", "SOURCE_DATE_EPOCH=1700000000", "-o", &output];
        flags.extend(tags);
        let out = s.build(DOCKERFILE, &flags);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        oci_manifest(&path)
    };
    assert_eq!(oci("o.tar", "", &["-t", "pinned:1"]), MANIFEST, "type=oci");
    assert_eq!(
        oci("z.tar", ",compression=zstd", &[]),
        MANIFEST_ZSTD,
        "compression=zstd"
    );
    let registry = Registry::with_auth("");
    let name = format!("{}/pinned:1", registry.addr);
    s.ok(&["tag", "pinned:1", &name]);
    let (pushed, stderr) = s.ok(&["push", &name]);
    assert!(
        format!("{pushed}{stderr}").contains(MANIFEST),
        "kiln push: {pushed}{stderr}"
    );
}

/// The diff ID of layer `n` of the image `name`, by `kiln inspect`.
fn diff_id(s: &Setup, name: &str, n: usize) -> String {
    let inspect: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", name]).0).unwrap();
    inspect[0]["RootFS"]["Layers"][n]
        .as_str()
        .unwrap_or_else(|| panic!("no layer {n} in {inspect}"))
        .to_owned()
}

/// Every entry of layer `n` of the image `name`, as `kiln save` writes it
/// (so a pending layer is made from its snapshot, its digest checked):
/// path, type, mode, owner, size, mtime and content. The mtime of `dir/`,
/// which the copy made at build time, is left out.
fn layer_listing(s: &Setup, name: &str, n: usize) -> Vec<String> {
    use std::io::Read;
    let archive = s.dir.path().join(format!("{}.tar", name.replace(':', "-")));
    s.ok(&["save", "-o", archive.to_str().unwrap(), name]);
    let read = |wanted: &str| -> Vec<u8> {
        let mut tar = tar::Archive::new(fs::File::open(&archive).unwrap());
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some(wanted) {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                return bytes;
            }
        }
        panic!("no {wanted} in {}", archive.display());
    };
    let manifest: serde_json::Value = serde_json::from_slice(&read("manifest.json")).unwrap();
    let layer = read(manifest[0]["Layers"][n].as_str().unwrap());
    let mut tar = tar::Archive::new(layer.as_slice());
    let mut listed = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header().clone();
        let path = entry.path().unwrap().display().to_string();
        let mtime = if path == "dir/" {
            0
        } else {
            h.mtime().unwrap()
        };
        let mut data = String::new();
        entry.read_to_string(&mut data).unwrap();
        listed.push(format!(
            "{path} {:?} {:o} {}:{} {} {mtime} {data:?}",
            h.entry_type(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.size().unwrap(),
        ));
    }
    listed
}

/// A COPY that runs again because one context file changed links the files
/// its earlier result holds unchanged (the snapshot of the earlier image's
/// layer) instead of writing them again. The layer is what a copy from
/// scratch makes (the same entries, metadata and bytes), and outlives the
/// image it shares files with.
#[test]
fn a_copy_run_again_shares_what_did_not_change_and_makes_the_same_layer() {
    if !ready() {
        return;
    }
    let build = |s: &Setup, dockerfile: &str, flags: &[&str]| {
        let out = s.build(dockerfile, flags);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{dockerfile}{stderr}");
    };
    let dockerfile = "FROM base:busybox\nCOPY dir /dir\nRUN cat /dir/sub/c.txt > /seen\n";
    let s = Setup::new();
    context(&s);
    fs::write(s.context.join("dir/kept.txt"), "kept\n").unwrap();
    build(&s, dockerfile, &["-t", "app:1"]);
    fs::write(s.context.join("dir/sub/d.txt"), "delta\n").unwrap();
    fs::write(s.context.join("dir/sub/c.txt"), "charlie, again\n").unwrap();
    build(&s, dockerfile, &["-t", "app:2"]);

    let snapshot = |name: &str| {
        let id = diff_id(&s, name, 1);
        s.root
            .join("snapshots")
            .join(id.strip_prefix("sha256:").unwrap())
    };
    let (old, new) = (snapshot("app:1"), snapshot("app:2"));
    assert_ne!(old, new);
    let ino = |dir: &std::path::Path, rel: &str| {
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir.join(rel)).unwrap())
    };
    assert_eq!(
        ino(&old, "dir/kept.txt"),
        ino(&new, "dir/kept.txt"),
        "linked, not written"
    );
    assert_ne!(ino(&old, "dir/sub/c.txt"), ino(&new, "dir/sub/c.txt"));
    assert_eq!(
        fs::read_to_string(new.join("dir/sub/c.txt")).unwrap(),
        "charlie, again\n"
    );
    assert_eq!(
        fs::read_to_string(old.join("dir/sub/c.txt")).unwrap(),
        "charlie\n"
    );

    // The same layer as a store that never saw the first context makes.
    let fresh = Setup::new();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(s.context.join("dir"))
        .arg(&fresh.context)
        .status()
        .unwrap();
    assert!(copied.success());
    build(&fresh, dockerfile, &["-t", "app:2"]);
    let listed = layer_listing(&s, "app:2", 1);
    assert!(
        listed.iter().any(|e| e.starts_with("dir/kept.txt ")),
        "{listed:?}"
    );
    assert_eq!(listed, layer_listing(&fresh, "app:2", 1));

    // Without the first image, the second is whole: its layer is made
    // from its snapshot (digest checked) into an archive.
    s.ok(&["rmi", "app:1"]);
    s.ok(&["prune", "-a"]);
    assert!(!old.exists(), "the first image's snapshot is gone");
    let archive = s.dir.path().join("app.tar");
    s.ok(&["save", "-o", archive.to_str().unwrap(), "app:2"]);
    let out = s.build_to_dir("FROM app:2\n", &[]);
    assert_eq!(
        fs::read_to_string(out.join("dir/kept.txt")).unwrap(),
        "kept\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("seen")).unwrap(),
        "charlie, again\n"
    );
}
