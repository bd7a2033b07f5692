//! Multi-platform images in the store, end to end: an index in a real
//! registry pulled platform by platform, listed, inspected, pruned around,
//! saved (read back by skopeo, loaded by dockerd) and removed.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_testing::{DOCKER, Need, require};

use crate::busybox::Setup;
use crate::registry::{REGISTRY_TEST, Registry, registry_ready, stderr};

/// This machine's architecture as images name it, and another one.
fn arches() -> (&'static str, &'static str) {
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    (host, if host == "amd64" { "arm64" } else { "amd64" })
}

/// `kiln ARGS` on the store at `root`, which must succeed: its stdout.
fn ok_at(root: &Path, args: &[&str]) -> String {
    let out = crate::harness::kiln()
        .env("KILN_ROOT", root)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "kiln {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `kiln inspect [--platform P] NAME`'s object.
fn inspect_at(root: &Path, name: &str, platform: Option<&str>) -> serde_json::Value {
    let mut args = vec!["inspect", name];
    if let Some(p) = platform {
        args.extend(["--platform", p]);
    }
    let v: serde_json::Value = serde_json::from_str(&ok_at(root, &args)).unwrap();
    v[0].clone()
}

/// A registry holding `multi/app:both`, an index of this machine's image
/// (busybox) and another platform's (busybox with a file more), each also
/// tagged on its own. The two manifests' digests, host's first.
fn registry_with_an_index(s: &Setup, registry: &Registry) -> (String, String) {
    let (host, other) = arches();
    let one = format!("{}/multi/app:{host}", registry.addr);
    s.ok(&["tag", "base:busybox", &one]);
    s.ok(&["push", &one]);
    let two = format!("{}/multi/app:{other}", registry.addr);
    let out = s.build("FROM base:busybox\nRUN echo other > /o\n", &["-t", &two]);
    assert!(out.status.success(), "{}", stderr(&out));
    s.ok(&["push", &two]);
    let entry = |name: &str, arch: &str| {
        let digest = inspect_at(&s.root, name, None)["Manifest"]["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let hex = digest.trim_start_matches("sha256:");
        let size = fs::metadata(s.root.join("content/blobs/sha256").join(hex))
            .unwrap()
            .len();
        let json = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size, "platform": {"os": "linux", "architecture": arch}});
        (digest, json)
    };
    let (host_digest, host_entry) = entry(&one, host);
    let (other_digest, other_entry) = entry(&two, other);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [other_entry, host_entry],
    });
    let put = reqwest::blocking::Client::new()
        .put(format!(
            "http://{}/v2/multi/app/manifests/both",
            registry.addr
        ))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .body(index.to_string())
        .send()
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    (host_digest, other_digest)
}

#[test]
fn an_index_is_pulled_platform_by_platform_and_kept_whole() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::with_auth("");
    let s = Setup::new();
    let (host_digest, other_digest) = registry_with_an_index(&s, &registry);
    let (host, other) = arches();
    let (host, other) = (format!("linux/{host}"), format!("linux/{other}"));
    let both = format!("{}/multi/app:both", registry.addr);
    let root = s.dir.path().join("puller");

    let first = ok_at(&root, &["pull", &both]);
    assert!(first.contains(&format!("Platforms: {host}\n")), "{first}");
    let digest_line = |out: &str| out.lines().last().unwrap().to_owned();
    let listed: serde_json::Value =
        serde_json::from_str(&ok_at(&root, &["images", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["platforms"], serde_json::json!([host]));
    let index = listed[0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        digest_line(&first),
        format!("Digest: {index}"),
        "the tag names the index"
    );
    assert_eq!(listed[0]["id"], index);
    let out = crate::harness::kiln()
        .env("KILN_ROOT", &root)
        .args(["inspect", "--platform", &other, &both])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("is not in the store (pull it with --platform"),
        "{}",
        stderr(&out)
    );

    // Another platform joins the same index.
    let second = ok_at(&root, &["pull", "--platform", &other, &both]);
    assert_eq!(digest_line(&second), format!("Digest: {index}"));
    let listed: serde_json::Value =
        serde_json::from_str(&ok_at(&root, &["images", "--format", "json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "one row for the index");
    assert_eq!(
        listed[0]["platforms"],
        serde_json::json!([other, host]),
        "the index's order"
    );
    let table = ok_at(&root, &["images"]);
    assert!(
        table.lines().next().unwrap().ends_with("PLATFORMS"),
        "{table}"
    );
    assert!(table.contains(&format!("{other},{host}")), "{table}");
    let quiet = ok_at(&root, &["images", "-q"]);
    assert_eq!(quiet.trim(), &index[7..19]);

    // Every platform of a tagged index is live; each is inspected by name.
    ok_at(&root, &["prune"]);
    let seen = inspect_at(&root, &both, Some(&other));
    assert_eq!(seen["Manifest"]["digest"], other_digest);
    assert_eq!(seen["Index"]["digest"], index);
    assert_eq!(
        inspect_at(&root, &both, None)["Manifest"]["digest"],
        host_digest
    );

    // An OCI layout keeps the index: skopeo reads it and copies it all.
    let oci = s.dir.path().join("multi.tar");
    ok_at(
        &root,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            oci.to_str().unwrap(),
            &both,
        ],
    );
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", oci.display()))
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", stderr(&raw));
    let raw: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
    let copied = Command::new("skopeo")
        .args(["copy", "--all"])
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!("oci:{}", s.dir.path().join("copy").display()))
        .output()
        .unwrap();
    assert!(copied.status.success(), "{}", stderr(&copied));

    // And loads back whole.
    let loaded_root = s.dir.path().join("loaded");
    ok_at(&loaded_root, &["load", "-i", oci.to_str().unwrap()]);
    let listed: serde_json::Value =
        serde_json::from_str(&ok_at(&loaded_root, &["images", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["digest"], index, "the same index");
    assert_eq!(listed[0]["platforms"].as_array().unwrap().len(), 2);

    // rmi takes the index, both platforms' manifests, configs and layers.
    let removed = ok_at(&root, &["rmi", &both]);
    for digest in [&index, &host_digest, &other_digest] {
        assert!(removed.contains(&format!("Deleted: {digest}")), "{removed}");
    }
    let left = fs::read_dir(root.join("content/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "nothing else used them: {removed}");

    // --all-platforms fetches every one at once.
    let all_root = s.dir.path().join("all");
    let all = ok_at(&all_root, &["pull", "--all-platforms", &both]);
    assert!(
        all.contains(&format!("Platforms: {other}, {host}\n")),
        "{all}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok_at(&all_root, &["images", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["platforms"].as_array().unwrap().len(), 2);
}

#[test]
fn a_docker_archive_of_a_multi_platform_image_loads_in_dockerd() {
    if !require(&[REGISTRY_TEST.as_slice(), &[Need::Dockerd]].concat()) {
        return;
    }
    let registry = Registry::with_auth("");
    let s = Setup::own_base("multi-platform-docker-archive");
    registry_with_an_index(&s, &registry);
    let (_, other) = arches();
    let other = format!("linux/{other}");
    let both = format!("{}/multi/app:both", registry.addr);
    ok_at(&s.root, &["pull", "--all-platforms", &both]);
    let archive = s.dir.path().join("docker.tar");
    let out = crate::harness::kiln()
        .env("KILN_ROOT", &s.root)
        .args([
            "save",
            "--platform",
            &other,
            "-o",
            archive.to_str().unwrap(),
            &both,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("the docker-archive holds its {other} image only")),
        "{}",
        stderr(&out)
    );
    let _turn = crate::harness::dockerd_turn();
    let loaded = Command::new(DOCKER)
        .args(["load", "-i", archive.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(loaded.status.success(), "{}", stderr(&loaded));
    // The other platform's image (its config claims this machine's
    // architecture: it was built here), told apart by the file it adds.
    let ran = crate::harness::docker_run(&[&both, "cat", "/o"]);
    let _ = Command::new(DOCKER).args(["rmi", "-f", &both]).output();
    assert!(ran.status.success(), "{}", stderr(&ran));
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "other\n");
}
