//! Multi-platform images in the store: an index with some platforms here,
//! through every image command.

use std::path::Path;

use kiln_cache::{Digest, Store};
use kiln_worker::snapshot::Snapshots;

use super::{inspect, list, prune, remove};
use crate::archive::{self, Format};
use crate::image::{self, ImageError, Platform};

/// The host's platform and another one, so the tests hold on any machine.
fn platforms() -> (Platform, Platform) {
    let host = image::host_platform();
    let other = if host.architecture == "amd64" {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    (host, kiln_frontend::platform::parse(other).unwrap())
}

/// An image of one small layer holding `content`, tagged `name`.
fn imported(store: &Store, dir: &Path, name: &str, content: &[u8]) -> image::Image {
    let tarball = dir.join(format!("{}.tar", Digest::of(content).hex()));
    let mut tar = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
    let mut header = tar::Header::new_ustar();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "data", content).unwrap();
    tar.finish().unwrap();
    archive::import(store, &tarball, name, 1_700_000_000, None).unwrap();
    image::resolve(store, name).unwrap().1
}

/// `multi:1`: an index of the host's image, another platform's, and a
/// third platform (linux/s390x) not pulled; only the index is tagged.
struct Multi {
    store: Store,
    index: Digest,
    host: image::Image,
    other: image::Image,
    other_platform: Platform,
    _dir: tempfile::TempDir,
}

fn multi() -> Multi {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s")).unwrap();
    let host = imported(&store, dir.path(), "h:1", b"host\n");
    let other = imported(&store, dir.path(), "o:1", b"other\n");
    let (host_platform, other_platform) = platforms();
    let size = |d: &Digest| store.content.size(d).unwrap();
    let absent = Digest::of(b"the s390x manifest, never pulled");
    let entries = [
        (
            host.manifest_digest.clone(),
            size(&host.manifest_digest),
            host_platform,
        ),
        (
            other.manifest_digest.clone(),
            size(&other.manifest_digest),
            other_platform.clone(),
        ),
        (
            absent,
            500,
            kiln_frontend::platform::parse("linux/s390x").unwrap(),
        ),
    ];
    let (index, _) = image::write_index(&store, &entries).unwrap();
    image::tag(
        &store,
        "docker.io/library/multi:1",
        &index,
        image::OCI_INDEX,
    )
    .unwrap();
    for name in ["docker.io/library/h:1", "docker.io/library/o:1"] {
        store.meta.remove_image(name).unwrap();
    }
    Multi {
        store,
        index,
        host,
        other,
        other_platform,
        _dir: dir,
    }
}

#[test]
fn an_index_lists_once_and_inspects_by_platform() {
    let m = multi();
    let rows = list(&m.store).unwrap();
    assert_eq!(rows.len(), 1);
    let (host, other) = platforms();
    let text = kiln_frontend::platform::format;
    assert_eq!(rows[0].platforms, [text(&host), text(&other)]);
    assert_eq!(
        rows[0].id,
        m.index.to_string(),
        "an index's ID is its digest"
    );
    assert_eq!(rows[0].size, m.host.size() + m.other.size());

    let seen = inspect(&m.store, "multi:1", None).unwrap();
    assert_eq!(
        seen["Manifest"]["digest"],
        m.host.manifest_digest.to_string()
    );
    assert_eq!(seen["Index"]["digest"], m.index.to_string());
    assert_eq!(seen["Index"]["platforms"].as_array().unwrap().len(), 2);
    assert_eq!(seen["RepoTags"][0], "multi:1");
    let seen = inspect(&m.store, "multi:1", Some(&m.other_platform)).unwrap();
    assert_eq!(
        seen["Manifest"]["digest"],
        m.other.manifest_digest.to_string()
    );
    let s390x = kiln_frontend::platform::parse("linux/s390x").unwrap();
    let err = inspect(&m.store, "multi:1", Some(&s390x)).unwrap_err();
    assert!(matches!(err, ImageError::NotPulled { .. }), "{err}");
    let riscv = kiln_frontend::platform::parse("linux/riscv64").unwrap();
    let err = inspect(&m.store, "multi:1", Some(&riscv)).unwrap_err();
    assert!(matches!(err, ImageError::NoPlatform { .. }), "{err}");
    // By ID, as `docker images` shows it.
    let by_id = inspect(&m.store, &m.index.hex()[..12], None).unwrap();
    assert_eq!(by_id["Id"], m.index.to_string());
    // An unpulled platform is neither damage (the tag stays on reopen)
    // nor a reason for a build to fail: it is pulled.
    let root = m.store.root().to_owned();
    drop(m.store);
    let store = Store::open(&root).unwrap();
    assert!(store.recovery().dangling_tags.is_empty());
    let err = image::resolve_for(&store, "multi:1", &s390x).unwrap_err();
    assert!(matches!(err, ImageError::NotPulled { .. }), "{err}");
}

#[test]
fn prune_keeps_every_platform_and_rmi_removes_them_all() {
    let m = multi();
    let snapshots = Snapshots::open(m.store.snapshots_dir()).unwrap();
    let diff_id = m.other.config.rootfs.diff_ids[0].clone();
    std::fs::create_dir_all(snapshots.path(&diff_id)).unwrap();
    let pruned = prune(&m.store, None, false).unwrap();
    assert!(pruned.deleted.is_empty(), "{:?}", pruned.deleted);
    assert_eq!(
        snapshots.names(),
        [Snapshots::name(&diff_id)],
        "the other platform's snapshot is live"
    );

    let removed = remove(&m.store, "multi:1").unwrap();
    for image in [&m.host, &m.other] {
        for digest in [&image.manifest_digest, &image.config_digest] {
            assert!(removed.deleted.contains(digest), "{digest}");
        }
        assert!(removed.deleted.contains(&image.layers()[0].0));
    }
    assert_eq!(removed.deleted[0], m.index, "the index goes first");
    assert!(
        snapshots.names().is_empty(),
        "the snapshots of its layers go too"
    );
    assert!(m.store.content.list().unwrap().is_empty());
}

#[test]
fn an_oci_layout_keeps_the_index_and_loads_back_whole() {
    let m = multi();
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci.tar");
    let names = ["multi:1".to_owned()];
    archive::save_to_file(&m.store, &names, Format::Oci, None, &oci).unwrap();
    let fresh = Store::open(&dir.path().join("fresh")).unwrap();
    let loaded = archive::load(&fresh, &oci).unwrap();
    assert_eq!(loaded.tags, ["docker.io/library/multi:1"]);
    let rows = list(&fresh).unwrap();
    assert_eq!(rows[0].platforms.len(), 2, "both platforms came");
    let record = fresh
        .meta
        .image("docker.io/library/multi:1")
        .unwrap()
        .unwrap();
    assert_eq!(record.media_type, image::OCI_INDEX);
    let index: serde_json::Value =
        serde_json::from_slice(&fresh.content.read(&record.target).unwrap()).unwrap();
    assert_eq!(
        index["manifests"].as_array().unwrap().len(),
        2,
        "the platform not pulled is left out of the saved index"
    );

    // A docker-archive takes one platform, and says which.
    let docker = dir.path().join("docker.tar");
    let report = archive::save_to_file(
        &m.store,
        &names,
        Format::Docker,
        Some(&m.other_platform),
        &docker,
    )
    .unwrap();
    let other = kiln_frontend::platform::format(&m.other_platform);
    assert_eq!(
        report.one_platform,
        [("docker.io/library/multi:1".to_owned(), other)]
    );
    let single = Store::open(&dir.path().join("single")).unwrap();
    archive::load(&single, &docker).unwrap();
    let (_, img) = image::resolve_for(&single, "multi:1", &m.other_platform).unwrap();
    assert_eq!(img.config_digest, m.other.config_digest);
}

/// An `index.json` that lists one name's platform manifests side by side
/// loads as one multi-platform image.
#[test]
fn platform_manifests_listed_side_by_side_load_as_one_index() {
    let m = multi();
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci.tar");
    // Each platform saved on its own, then both listed under one name.
    let layout = dir.path().join("layout");
    for image in [&m.host, &m.other] {
        image::tag(
            &m.store,
            "docker.io/library/one:1",
            &image.manifest_digest,
            image::OCI_MANIFEST,
        )
        .unwrap();
        archive::save_to_file(&m.store, &["one:1".to_owned()], Format::Oci, None, &oci).unwrap();
        let mut archive = tar::Archive::new(std::fs::File::open(&oci).unwrap());
        archive.unpack(&layout).unwrap();
    }
    let (host, other) = platforms();
    let entry = |image: &image::Image, p: &Platform| {
        let size = m.store.content.size(&image.manifest_digest).unwrap();
        serde_json::json!({"mediaType": image::OCI_MANIFEST, "digest": image.manifest_digest.to_string(),
            "size": size, "platform": {"os": p.os, "architecture": p.architecture},
            "annotations": {"io.containerd.image.name": "docker.io/library/pair:1"}})
    };
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry(&m.host, &host), entry(&m.other, &other)]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let mut tar = tar::Builder::new(std::fs::File::create(&oci).unwrap());
    tar.append_dir_all(".", &layout).unwrap();
    tar.finish().unwrap();
    drop(tar);
    let fresh = Store::open(&dir.path().join("fresh")).unwrap();
    let loaded = archive::load(&fresh, &oci).unwrap();
    assert_eq!(loaded.tags, ["docker.io/library/pair:1"]);
    let rows = list(&fresh).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].platforms.len(), 2);
}

/// An index of more entries than the bound is refused on load.
#[test]
fn an_index_of_too_many_entries_is_refused() {
    let m = multi();
    let size = m.store.content.size(&m.host.manifest_digest).unwrap();
    let host = image::host_platform();
    let entries: Vec<_> = (0..=image::index::MAX_INDEX_ENTRIES)
        .map(|_| (m.host.manifest_digest.clone(), size, host.clone()))
        .collect();
    let (index, _) = image::write_index(&m.store, &entries).unwrap();
    image::tag(
        &m.store,
        "docker.io/library/huge:1",
        &index,
        image::OCI_INDEX,
    )
    .unwrap();
    let err = inspect(&m.store, "huge:1", None).unwrap_err().to_string();
    assert!(err.contains("entries, more than 256 (the limit)"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci.tar");
    let err = archive::save_to_file(&m.store, &["huge:1".to_owned()], Format::Oci, None, &oci)
        .unwrap_err()
        .to_string();
    assert!(err.contains("(the limit)"), "{err}");
}
