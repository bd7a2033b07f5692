use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use kiln_testing::{Need, require, require_for};

use super::*;

/// A tar built entry by entry, for layers a normal tool would not write.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn dir(mut self, path: &str) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    fn file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o777);
        h.set_size(0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    /// An entry whose name the tar crate would refuse to write.
    fn raw_name(mut self, name: &str, data: &[u8]) -> Self {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn entries(tar: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Whether this process may mount overlays (root with overlayfs).
fn can_mount_overlay() -> bool {
    require(&[Need::Root, Need::Overlayfs])
}

fn mount_overlay(lower: &str, upper: Option<(&Path, &Path)>, merged: &Path) {
    let mut options = format!("lowerdir={lower}");
    if let Some((upper, work)) = upper {
        options.push_str(&format!(
            ",upperdir={},workdir={}",
            upper.display(),
            work.display()
        ));
    }
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(merged)
        .status()
        .unwrap();
    assert!(status.success(), "mount -o {options}");
}

fn umount(path: &Path) {
    assert!(Command::new("umount").arg(path).status().unwrap().success());
}

#[test]
fn whiteouts_survive_unpack_overlay_repack() {
    if !can_mount_overlay() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = |name: &str| {
        let p = tmp.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    };
    let (base, upper, work, merged) = (d("base"), d("upper"), d("work"), d("merged"));

    // The base layer, unpacked as a lowerdir.
    let layer = Layer::new()
        .file("a.txt", b"a")
        .dir("dir")
        .file("dir/x", b"x")
        .file("dir/y", b"y")
        .dir("keep")
        .file("keep/k", b"k")
        .link(tarEntry::Link, "keep/hard", "keep/k")
        .link(tarEntry::Symlink, "keep/soft", "k");
    unpack(layer.bytes().as_slice(), &base).unwrap();
    assert_eq!(
        fs::metadata(base.join("keep/hard")).unwrap().ino(),
        fs::metadata(base.join("keep/k")).unwrap().ino()
    );

    // A step: delete a file, replace a directory, add a file.
    mount_overlay(&base.display().to_string(), Some((&upper, &work)), &merged);
    fs::remove_file(merged.join("a.txt")).unwrap();
    fs::remove_dir_all(merged.join("dir")).unwrap();
    fs::create_dir(merged.join("dir")).unwrap();
    fs::write(merged.join("dir/z"), b"z").unwrap();
    fs::write(merged.join("keep/new"), b"new").unwrap();
    umount(&merged);

    // The upperdir as a layer: whiteout, opaque marker, new files.
    let tar = diff(&upper, Vec::new()).unwrap();
    let names = entries(&tar);
    assert_eq!(
        names,
        [
            ".wh.a.txt",
            "dir/",
            "dir/.wh..wh..opq",
            "dir/z",
            "keep/",
            "keep/new"
        ],
        "{names:?}"
    );
    assert_eq!(
        diff(&upper, Vec::new()).unwrap(),
        tar,
        "the same upperdir makes the same bytes"
    );

    // Unpacked again: overlay's own markers.
    let second = d("second");
    let stats = unpack(tar.as_slice(), &second).unwrap();
    assert_eq!((stats.whiteouts, stats.opaque_dirs), (1, 1));
    let wh = fs::symlink_metadata(second.join("a.txt")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        xattr::get(second.join("dir"), OVERLAY_OPAQUE_XATTR)
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );

    // Stacked, the two layers show exactly the step's result.
    let view = d("view");
    mount_overlay(
        &format!("{}:{}", second.display(), base.display()),
        None,
        &view,
    );
    let listing = |p: &Path| {
        let mut names: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let top = listing(&view);
    let dir = listing(&view.join("dir"));
    let keep = listing(&view.join("keep"));
    umount(&view);
    assert_eq!(top, ["dir", "keep"]);
    assert_eq!(dir, ["z"]);
    assert_eq!(keep, ["hard", "k", "new", "soft"]);
}

use tar::EntryType as tarEntry;

#[test]
fn metadata_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_mtime(1_234_567);
    h.set_size(2);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "bin/tool", &b"#!"[..]).unwrap();
    unpack(b.into_inner().unwrap().as_slice(), tmp.path()).unwrap();
    let m = fs::metadata(tmp.path().join("bin/tool")).unwrap();
    if require_for("the owner check", &[Need::Root]) {
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        assert_eq!(
            m.permissions().mode() & 0o7777,
            0o4755,
            "set-uid survives the chown"
        );
    }
    assert_eq!(m.mtime(), 1_234_567);
}

#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"host file").unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot", Layer::new().raw_name("../escape", b"x").bytes()),
        (
            "dot-dot inside",
            Layer::new().raw_name("a/../../escape", b"x").bytes(),
        ),
        (
            "absolute",
            Layer::new().raw_name("/etc/kiln-escape", b"x").bytes(),
        ),
        (
            "write through a symlink",
            Layer::new()
                .link(tarEntry::Symlink, "etc", outside.to_str().unwrap())
                .file("etc/passwd", b"owned")
                .bytes(),
        ),
        (
            "write through a relative symlink",
            Layer::new()
                .link(tarEntry::Symlink, "up", "../outside")
                .file("up/secret", b"owned")
                .bytes(),
        ),
        (
            "whiteout through a symlink",
            Layer::new()
                .link(tarEntry::Symlink, "up", "../outside")
                .file("up/.wh.secret", b"")
                .bytes(),
        ),
        (
            "hard link out with ..",
            Layer::new()
                .link(tarEntry::Link, "h", "../outside/secret")
                .bytes(),
        ),
        (
            "hard link to an absolute path",
            Layer::new()
                .link(tarEntry::Link, "h", "/etc/passwd")
                .bytes(),
        ),
        (
            "hard link through a symlink",
            Layer::new()
                .link(tarEntry::Symlink, "up", "../outside")
                .link(tarEntry::Link, "h", "up/secret")
                .bytes(),
        ),
        // Whiteouts that name no entry of their directory: `.wh..` would
        // delete the directory's parent, `.wh.` and `.wh..` the directory.
        (
            "whiteout of ..",
            Layer::new().raw_name(".wh...", b"").bytes(),
        ),
        ("whiteout of .", Layer::new().raw_name(".wh..", b"").bytes()),
        (
            "whiteout of nothing",
            Layer::new().raw_name(".wh.", b"").bytes(),
        ),
        (
            "nested whiteout of ..",
            Layer::new().dir("a").raw_name("a/.wh...", b"").bytes(),
        ),
    ];
    for (what, bytes) in cases {
        let dest = tmp.path().join(format!("dest-{}", what.replace(' ', "-")));
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("kept"), b"").unwrap();
        for whiteouts in [Whiteouts::Overlay, Whiteouts::Apply] {
            let e = unpack_with(bytes.as_slice(), &dest, whiteouts).expect_err(what);
            assert!(matches!(e, LayerError::Hostile { .. }), "{what}: {e}");
        }
        assert!(
            dest.join("kept").exists(),
            "{what}: the tree itself is kept"
        );
        assert_eq!(
            fs::read(outside.join("secret")).unwrap(),
            b"host file",
            "{what}"
        );
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "{what}: nothing new outside"
        );
    }
    assert!(!Path::new("/etc/kiln-escape").exists());
    assert!(!tmp.path().join("escape").exists());
}

#[test]
fn a_directory_replaced_by_a_symlink_keeps_its_mode_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).unwrap();
    // Directory modes are set at the end; by then `d` is a symlink.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tarEntry::Directory);
    h.set_mode(0o700);
    h.set_size(0);
    b.append_data(&mut h, "d/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tarEntry::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "d", &outside).unwrap();
    unpack(b.into_inner().unwrap().as_slice(), &dest).unwrap();
    assert_eq!(
        fs::metadata(&outside).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(
        fs::symlink_metadata(dest.join("d"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn plain_trees_keep_whiteout_names_as_files_and_diff_ids_are_computed() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = Layer::new()
        .file(".wh.kept", b"a file")
        .file("d/.wh..wh..opq", b"also")
        .bytes();
    let stats = unpack_with(bytes.as_slice(), tmp.path(), Whiteouts::Plain).unwrap();
    assert_eq!(fs::read(tmp.path().join(".wh.kept")).unwrap(), b"a file");
    assert_eq!(
        fs::read(tmp.path().join("d/.wh..wh..opq")).unwrap(),
        b"also"
    );
    assert_eq!(stats.diff_id, kiln_cache::Digest::of(&bytes).to_string());
}

#[test]
fn symlinks_in_a_layer_may_point_anywhere() {
    // A symlink to /etc is fine as long as nothing is written through it.
    let tmp = tempfile::tempdir().unwrap();
    let layer = Layer::new()
        .link(tarEntry::Symlink, "etc", "/etc")
        .file("etc2/x", b"x");
    unpack(layer.bytes().as_slice(), tmp.path()).unwrap();
    assert_eq!(
        fs::read_link(tmp.path().join("etc")).unwrap(),
        Path::new("/etc")
    );
    let tar = diff(tmp.path(), Vec::new()).unwrap();
    assert_eq!(entries(&tar), ["etc", "etc2/", "etc2/x"]);
}
