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
