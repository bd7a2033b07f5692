//! The image commands through the real binary, checked by real consumers
//! (skopeo, umoci) where the machine has them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_testing::{Need, require, wait_until};

use crate::harness::{kiln, run};
use crate::noise::noise;

/// A kiln command on the store `root`.
fn kiln_at(root: &Path) -> Command {
    let mut cmd = kiln();
    cmd.env("KILN_ROOT", root);
    cmd
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A root filesystem tarball with a busybox binary when the machine has one
/// (busybox-static), else a few files.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hostname"), "kiln\n").unwrap();
    if Path::new("/bin/busybox").is_file() {
        fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    }
    let tarball = dir.join("rootfs.tar.gz");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-czf")
        .arg(&tarball)
        .arg("."));
    tarball
}

#[test]
fn import_images_tag_inspect_rmi() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let tarball = rootfs(dir.path());
    let digest = ok(kiln_at(&root).arg("import").arg(&tarball).arg("base:test"));
    assert!(digest.starts_with("sha256:"));
    ok(kiln_at(&root).args(["tag", "base:test", "registry.local:5000/team/app:v1"]));
    let table = ok(kiln_at(&root).arg("images"));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY")
            && lines[0].contains("IMAGE ID")
            && lines[0].contains(" SIZE ")
            && lines[0].ends_with("PLATFORMS")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("base ") && l.contains(" test ")),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("registry.local:5000/team/app ")),
        "{table}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(kiln_at(&root).args(["inspect", "base:test"]))).unwrap();
    assert_eq!(inspect[0]["RepoTags"].as_array().unwrap().len(), 2);
    assert_eq!(inspect[0]["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    let out = ok(kiln_at(&root).args(["rmi", "base:test", "registry.local:5000/team/app:v1"]));
    assert!(
        out.contains("Untagged: base:test") && out.contains("Deleted: sha256:"),
        "{out}"
    );
    let out = run(kiln_at(&root).args(["inspect", "base:test"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: no such image: base:test\n"
    );
    assert!(!out.status.success());
}

#[test]
fn saved_archives_are_read_by_skopeo_and_umoci() {
    if !require(&[Need::Tool("skopeo"), Need::Tool("umoci")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let tarball = rootfs(dir.path());
    ok(kiln_at(&root).arg("import").arg(&tarball).arg("base:test"));
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(kiln_at(&root).args(["inspect", "base:test"]))).unwrap();
    let diff_ids = inspect[0]["RootFS"]["Layers"].clone();

    let docker = dir.path().join("docker.tar");
    ok(kiln_at(&root)
        .args(["save", "-o"])
        .arg(&docker)
        .arg("base:test"));
    let skopeo: serde_json::Value = serde_json::from_str(&ok(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", docker.display()))))
    .unwrap();
    assert_eq!(
        skopeo["Layers"], diff_ids,
        "docker-archive layers are the uncompressed diff IDs"
    );
    assert_eq!(skopeo["Os"], "linux");

    let oci = dir.path().join("oci.tar");
    ok(kiln_at(&root)
        .args(["save", "--format", "oci", "-o"])
        .arg(&oci)
        .arg("base:test"));
    let skopeo: serde_json::Value = serde_json::from_str(&ok(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", oci.display()))))
    .unwrap();
    assert_eq!(skopeo["Layers"].as_array().unwrap().len(), 1);
    let layout = dir.path().join("layout");
    fs::create_dir(&layout).unwrap();
    ok(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-xf")
        .arg(&oci));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let annotations = &index["manifests"][0]["annotations"];
    assert_eq!(annotations["org.opencontainers.image.ref.name"], "test");
    assert_eq!(
        annotations["io.containerd.image.name"],
        "docker.io/library/base:test"
    );
    let bundle = dir.path().join("bundle");
    ok(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle));
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/etc/hostname")).unwrap(),
        "kiln\n"
    );

    // And back: skopeo's own copy of the image loads into a fresh store.
    let copied = dir.path().join("copied.tar");
    ok(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!("docker-archive:{}:copied:1", copied.display())));
    let fresh = dir.path().join("fresh");
    let out = ok(kiln_at(&fresh).args(["load", "-i"]).arg(&copied));
    assert_eq!(out, "Loaded image: copied:1\n");
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(kiln_at(&fresh).args(["inspect", "copied:1"]))).unwrap();
    assert_eq!(inspect[0]["RootFS"]["Layers"], diff_ids);
}

/// A store in `dir/source` holding `big:1`, one layer of `size` bytes of
/// noise, and that image saved as `dir/archive.tar`.
fn big_image_archive(dir: &Path, size: usize) -> (PathBuf, PathBuf) {
    let files = dir.join("files");
    fs::create_dir_all(&files).unwrap();
    noise(&files.join("big.bin"), size);
    let tarball = dir.join("big.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&files)
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    fs::remove_dir_all(&files).unwrap();
    let source = dir.join("source");
    ok(kiln_at(&source).arg("import").arg(&tarball).arg("big:1"));
    fs::remove_file(&tarball).unwrap();
    let archive = dir.join("archive.tar");
    ok(kiln_at(&source)
        .args(["save", "-o"])
        .arg(&archive)
        .arg("big:1"));
    (source, archive)
}

#[test]
fn a_load_killed_midway_leaves_a_store_that_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (source, archive) = big_image_archive(dir.path(), 192 << 20);

    let root = dir.path().join("root");
    let ingest = root.join("content/ingest");
    let mut child = kiln_at(&root)
        .args(["load", "-i"])
        .arg(&archive)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it is well into the layer.
    wait_until(
        Duration::from_secs(60),
        "16 MiB of the layer in ingest",
        || {
            let partial = fs::read_dir(&ingest).is_ok_and(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.metadata().is_ok_and(|m| m.len() > 16 << 20))
            });
            assert!(
                partial || child.try_wait().unwrap().is_none(),
                "the load finished before it could be killed"
            );
            partial
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        fs::read_dir(&ingest).unwrap().count() > 0,
        "the kill left a partial blob"
    );

    // The next start cleans up and works; loading again succeeds.
    let table = ok(kiln_at(&root).arg("images"));
    assert_eq!(table.lines().count(), 1, "no image was tagged: {table}");
    assert_eq!(
        fs::read_dir(&ingest).unwrap().count(),
        0,
        "the partial blob is gone"
    );
    assert_eq!(
        ok(kiln_at(&root).args(["load", "-i"]).arg(&archive)),
        "Loaded image: big:1\n"
    );
    let a: serde_json::Value =
        serde_json::from_str(&ok(kiln_at(&source).args(["inspect", "big:1"]))).unwrap();
    let b: serde_json::Value =
        serde_json::from_str(&ok(kiln_at(&root).args(["inspect", "big:1"]))).unwrap();
    assert_eq!(a[0]["Id"], b[0]["Id"]);
    assert_eq!(a[0]["RootFS"], b[0]["RootFS"]);
}

#[test]
fn a_full_disk_is_one_clear_error_and_changes_nothing() {
    if !require(&[Need::Root]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, archive) = big_image_archive(dir.path(), 8 << 20);

    // A 4 MiB filesystem for the store: the 8 MiB layer cannot fit.
    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    ok(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small));
    let root = small.join("root");
    ok(kiln_at(&root).arg("images"));
    let before = fs::read_dir(root.join("content/blobs/sha256"))
        .unwrap()
        .count();
    let out = run(kiln_at(&root).args(["load", "-i"]).arg(&archive));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let after = fs::read_dir(root.join("content/blobs/sha256"))
        .unwrap()
        .count();
    let ingest = fs::read_dir(root.join("content/ingest")).unwrap().count();
    let images = ok(kiln_at(&root).arg("images"));
    ok(Command::new("umount").arg(&small));
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(
        (before, after, ingest),
        (0, 0, 0),
        "no blob and no partial file is left"
    );
    assert_eq!(images.lines().count(), 1, "nothing tagged");
}
