use std::io::Write;
use std::path::Path;

use kiln_cache::Store;

use super::*;
use crate::image;
use crate::images;

/// A small root filesystem tarball.
fn rootfs_tar(path: &Path, content: &[u8]) {
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut header = tar::Header::new_ustar();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "etc/hello.txt", content)
        .unwrap();
    let mut link = tar::Header::new_ustar();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    tar.append_link(&mut link, "etc/link", "hello.txt").unwrap();
    tar.finish().unwrap();
}

fn store(dir: &Path) -> Store {
    Store::open(dir).unwrap()
}

#[test]
fn import_save_load_round_trips_diff_ids_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("rootfs.tar");
    rootfs_tar(&tarball, b"hello\n");
    let a = store(&dir.path().join("a"));
    import(&a, &tarball, "base:test", 1_700_000_000, None).unwrap();
    let (_, original) = image::resolve(&a, "base:test").unwrap();
    assert_eq!(
        original.config.created.as_deref(),
        Some("2023-11-14T22:13:20Z")
    );

    for format in [Format::Docker, Format::Oci] {
        let archive = dir.path().join(format!("{format:?}.tar"));
        save_to_file(&a, &["base:test".to_owned()], format, None, &archive).unwrap();
        let b = store(&dir.path().join(format!("b-{format:?}")));
        let loaded = load(&b, &archive).unwrap();
        assert_eq!(loaded.tags, ["docker.io/library/base:test"]);
        let (_, copy) = image::resolve(&b, "base:test").unwrap();
        assert_eq!(
            copy.config_digest, original.config_digest,
            "{format:?}: the config is byte-identical"
        );
        assert_eq!(copy.config.rootfs.diff_ids, original.config.rootfs.diff_ids);
        if format == Format::Oci {
            assert_eq!(
                copy.manifest_digest, original.manifest_digest,
                "OCI keeps the manifest as is"
            );
        }
    }
}

#[test]
fn compressed_layers_are_saved_uncompressed_for_docker() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"));
    // An image whose layer blob is gzip, as a registry would hold it.
    let tarball = dir.path().join("rootfs.tar");
    rootfs_tar(&tarball, b"zipped\n");
    let raw = std::fs::read(&tarball).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let gz = gz.finish().unwrap();
    let layer = a.content.write_bytes(&gz).unwrap();
    let diff_id = kiln_cache::Digest::of(&raw);
    let config = image::config::ImageConfiguration {
        architecture: image::host_platform().architecture,
        os: "linux".into(),
        rootfs: image::config::RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id.to_string()],
        },
        ..Default::default()
    };
    let config_bytes = image::canonical_json(&config);
    let config_digest = a.content.write_bytes(&config_bytes).unwrap();
    let layers = [(
        layer,
        "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
        gz.len() as u64,
    )];
    let (manifest, _) =
        image::write_manifest(&a, (&config_digest, config_bytes.len() as u64), &layers).unwrap();
    image::tag(
        &a,
        "docker.io/library/zipped:1",
        &manifest,
        image::OCI_MANIFEST,
    )
    .unwrap();

    let archive = dir.path().join("docker.tar");
    save_to_file(&a, &["zipped:1".to_owned()], Format::Docker, None, &archive).unwrap();
    let b = store(&dir.path().join("b"));
    load(&b, &archive).unwrap();
    let (_, copy) = image::resolve(&b, "zipped:1").unwrap();
    assert_eq!(
        copy.layers()[0].0,
        diff_id,
        "the layer travels as its uncompressed tar"
    );
}

#[test]
fn bad_archives_leave_the_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("s"));
    let before = s.content.list().unwrap();

    let not_tar = dir.path().join("not.tar");
    std::fs::write(
        &not_tar,
        "just text, no tar header in sight, padded to be long enough to hold one block ".repeat(10),
    )
    .unwrap();
    let e = load(&s, &not_tar).unwrap_err().to_string();
    assert!(e.ends_with("not an image archive: not a tar file"), "{e}");

    // A real tar, with a layer blob, but no manifest.json / index.json.
    let no_manifest = dir.path().join("no-manifest.tar");
    rootfs_tar(&no_manifest, b"orphan\n");
    let e = load(&s, &no_manifest).unwrap_err().to_string();
    assert!(e.contains("neither manifest.json"), "{e}");

    // manifest.json naming a layer that is not there.
    let missing = dir.path().join("missing.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&missing).unwrap());
    let manifest = br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["nope/layer.tar"]}]"#;
    for (name, data) in [
        (
            "c.json",
            &br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#[..],
        ),
        ("manifest.json", &manifest[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, name, data).unwrap();
    }
    tar.finish().unwrap();
    let e = load(&s, &missing).unwrap_err().to_string();
    assert!(
        e.contains("layer nope/layer.tar named in manifest.json is not in the archive"),
        "{e}"
    );

    // An entry that climbs out of the archive.
    let hostile = dir.path().join("hostile.tar");
    let mut raw = tar::Header::new_old();
    raw.as_old_mut().name[..9].copy_from_slice(b"../escape");
    raw.set_size(1);
    raw.set_mode(0o644);
    raw.set_cksum();
    let mut bytes = raw.as_bytes().to_vec();
    bytes.extend_from_slice(&[b'x'; 512]);
    bytes.extend_from_slice(&[0; 1024]);
    std::fs::write(&hostile, bytes).unwrap();
    let e = load(&s, &hostile).unwrap_err().to_string();
    assert!(e.contains("unsafe path in archive: ../escape"), "{e}");

    assert_eq!(s.content.list().unwrap(), before, "no blob was left behind");
    assert_eq!(s.meta.images().unwrap(), []);
    assert_eq!(
        std::fs::read_dir(s.root().join("content/ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn rmi_keeps_shared_blobs_and_prune_respects_tags() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("s"));
    let tarball = dir.path().join("rootfs.tar");
    rootfs_tar(&tarball, b"shared\n");
    import(&s, &tarball, "one:1", 1, None).unwrap();
    images::tag(&s, "one:1", "two:2").unwrap();
    let removed = images::remove(&s, "one:1").unwrap();
    assert!(removed.deleted.is_empty(), "two:2 still uses every blob");
    let (_, two) = image::resolve(&s, "two:2").unwrap();
    let orphan = s.content.write_bytes(b"unreferenced").unwrap();
    let pruned = images::prune(&s, None, false).unwrap();
    assert_eq!(pruned.deleted, [orphan]);
    assert!(
        s.complete(&two.manifest_digest).unwrap(),
        "prune never touches tagged content"
    );
    let removed = images::remove(&s, "two:2").unwrap();
    assert_eq!(removed.deleted.len(), 3, "manifest, config and layer");
    assert_eq!(s.content.list().unwrap(), []);
    assert!(matches!(
        images::remove(&s, "two:2"),
        Err(image::ImageError::NotFound(_))
    ));
}

#[test]
fn prune_keep_storage_removes_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("s"));
    let old = s.content.write_bytes(&vec![1u8; 64 << 10]).unwrap();
    let new = s.content.write_bytes(&vec![2u8; 64 << 10]).unwrap();
    s.meta.touch(&old, 100).unwrap();
    s.meta.touch(&new, 200).unwrap();
    let total = images::usage(&s).unwrap().total();
    let pruned = images::prune(&s, Some(total - 1), false).unwrap();
    assert_eq!(
        pruned.deleted,
        [old],
        "the least recently used goes first, and only as much as needed"
    );
    assert!(s.content.has(&new));
    let usage = images::usage(&s).unwrap();
    assert!(usage.unused >= 64 << 10 && usage.metadata > 0, "{usage:?}");
}

#[test]
fn an_import_says_the_platform_it_was_given_or_this_machines() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("s"));
    let tarball = dir.path().join("rootfs.tar");
    rootfs_tar(&tarball, b"hello\n");
    let arm = kiln_frontend::platform::parse("linux/arm/v7").unwrap();
    import(&s, &tarball, "base:arm", 1, Some(&arm)).unwrap();
    import(&s, &tarball, "base:here", 1, None).unwrap();
    let config = |name| image::resolve(&s, name).unwrap().1.config;
    let arm = config("base:arm");
    assert_eq!(
        (
            arm.os.as_str(),
            arm.architecture.as_str(),
            arm.variant.as_deref()
        ),
        ("linux", "arm", Some("v7"))
    );
    let here = config("base:here");
    let host = image::host_platform();
    assert_eq!((here.os, here.architecture), (host.os, host.architecture));
    assert_eq!(here.variant, None);
}

#[test]
fn an_oci_blob_that_does_not_match_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"));
    let tarball = dir.path().join("rootfs.tar");
    rootfs_tar(&tarball, b"genuine\n");
    import(&a, &tarball, "base:test", 1, None).unwrap();
    let good = dir.path().join("good.tar");
    save_to_file(&a, &["base:test".to_owned()], Format::Oci, None, &good).unwrap();

    // Same archive, one layer byte changed (the name still claims the old digest).
    let (_, image) = image::resolve(&a, "base:test").unwrap();
    let layer = image.layers()[0].0.clone();
    let mut archive = tar::Archive::new(std::fs::File::open(&good).unwrap());
    let mut out = tar::Builder::new(Vec::new());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if entry.path().unwrap().ends_with(layer.hex()) {
            let i = data.windows(8).position(|w| w == b"genuine\n").unwrap();
            data[i] = b'G';
        }
        let mut header = entry.header().clone();
        out.append_data(&mut header, entry.path().unwrap(), data.as_slice())
            .unwrap();
    }
    let tampered = dir.path().join("tampered.tar");
    std::fs::write(&tampered, out.into_inner().unwrap()).unwrap();

    let b = store(&dir.path().join("b"));
    let e = load(&b, &tampered).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("digest mismatch: expected {layer}, got sha256:")),
        "{e}"
    );
    assert_eq!(
        b.content.list().unwrap(),
        [],
        "nothing of the tampered archive stays"
    );
    assert_eq!(b.meta.images().unwrap(), []);
}

#[test]
fn docker_schema2_manifests_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir.path().join("s"));
    let tarball = dir.path().join("rootfs.tar");
    rootfs_tar(&tarball, b"docker\n");
    let raw = std::fs::read(&tarball).unwrap();
    let layer = s.content.write_bytes(&raw).unwrap();
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["{layer}"]}}}}"#,
        image::host_platform().architecture
    );
    let config_digest = s.content.write_bytes(config.as_bytes()).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config_digest}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","size":{},"digest":"{layer}"}}]}}"#,
        image::DOCKER_MANIFEST,
        config.len(),
        raw.len()
    );
    let manifest_digest = s.content.write_bytes(manifest.as_bytes()).unwrap();
    // A Docker manifest list around it, as a registry serves it.
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","size":{},"digest":"{manifest_digest}","platform":{{"architecture":"{}","os":"linux"}}}}]}}"#,
        image::DOCKER_LIST,
        image::DOCKER_MANIFEST,
        manifest.len(),
        image::host_platform().architecture
    );
    let list_digest = s.content.write_bytes(list.as_bytes()).unwrap();
    image::tag(
        &s,
        "docker.io/library/fromdocker:1",
        &list_digest,
        image::DOCKER_LIST,
    )
    .unwrap();

    let (_, img) = image::resolve(&s, "fromdocker:1").unwrap();
    assert_eq!(img.manifest_digest, manifest_digest);
    assert_eq!(
        img.config.config.cmd.as_deref(),
        Some(&["sh".to_owned()][..])
    );
    let out = dir.path().join("out.tar");
    save_to_file(&s, &["fromdocker:1".to_owned()], Format::Docker, None, &out).unwrap();
    let t = store(&dir.path().join("t"));
    load(&t, &out).unwrap();
    let (_, copy) = image::resolve(&t, "fromdocker:1").unwrap();
    assert_eq!(copy.config.rootfs.diff_ids, [layer.to_string()]);
}
