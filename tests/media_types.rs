//! `-o type=image,push=true,oci-mediatypes=false`: what leaves is in
//! Docker's schema 2 media types (a manifest, or a manifest list of
//! several platforms' manifests), named blobs and all; the store keeps its
//! OCI form. zstd, which Docker has no layer type for, is refused.

use std::process::Command;

use kiln_testing::{DOCKER, Need, require};

use crate::busybox::{Setup, assert_stderr_has};
use crate::platforms::{APP, BOTH, multi_setup, ready};
use crate::registry::{REGISTRY_TEST, Registry, stderr};

const MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const GZIP_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

const DOCKER_TYPES: &str = "type=image,push=true,oci-mediatypes=false";

/// `skopeo inspect --raw` of `name` in the loopback registry.
fn raw(name: &str, more: &[&str]) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .args(more)
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A Docker manifest whose config and every layer are in Docker's types.
fn assert_docker_manifest(manifest: &serde_json::Value) {
    assert_eq!(manifest["mediaType"], MANIFEST, "{manifest}");
    assert_eq!(manifest["config"]["mediaType"], CONFIG, "{manifest}");
    let layers = manifest["layers"].as_array().unwrap();
    assert!(!layers.is_empty(), "{manifest}");
    for layer in layers {
        assert_eq!(layer["mediaType"], GZIP_LAYER, "{manifest}");
    }
}

#[test]
fn a_push_without_oci_media_types_is_a_docker_manifest_that_docker_pulls() {
    if !require(&REGISTRY_TEST) {
        return;
    }
    let registry = Registry::with_auth("");
    let s = Setup::own_base("docker-types");
    let name = format!("{}/docker-types/app:1", registry.addr);
    let dockerfile = "FROM base:busybox\nRUN echo docker types > /made\n";
    let out = s.build(dockerfile, &["-t", &name, "-o", DOCKER_TYPES]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_docker_manifest(&raw(&name, &[]));

    // The same layers in OCI's types (a build of the same, all cached):
    // the blobs are the ones compressed for the first push, only the
    // descriptors differ. (Its config has a new creation time.)
    let oci_name = format!("{}/docker-types/oci:1", registry.addr);
    let out = s.build(dockerfile, &["-t", &oci_name, "-o", "type=image,push=true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (docker, oci) = (raw(&name, &[]), raw(&oci_name, &[]));
    assert_eq!(
        oci["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let digests = |m: &serde_json::Value| -> Vec<serde_json::Value> {
        let layers = m["layers"].as_array().unwrap().iter();
        layers.map(|l| l["digest"].clone()).collect()
    };
    assert_eq!(digests(&docker), digests(&oci));

    // zstd has no Docker type: refused before anything runs.
    let zstd = format!("{DOCKER_TYPES},compression=zstd");
    let refused = s.build(dockerfile, &["-t", &name, "-o", &zstd]);
    assert!(!refused.status.success());
    assert_stderr_has(&refused, "compression=zstd needs OCI media types");

    // dockerd (loopback registries are insecure-allowed) pulls and runs it.
    if !require(&[Need::Dockerd]) {
        return;
    }
    let _turn = crate::harness::dockerd_turn();
    let docker = |args: &[&str]| Command::new(DOCKER).args(args).output().unwrap();
    let pulled = docker(&["pull", &name]);
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    let ran = crate::harness::docker_run(&[&name, "cat", "/made"]);
    let _ = docker(&["rmi", "-f", &name]);
    assert!(ran.status.success(), "{}", stderr(&ran));
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "docker types\n");
}

#[test]
fn a_two_platform_push_without_oci_media_types_is_a_manifest_list_of_docker_manifests() {
    if !ready(&REGISTRY_TEST) {
        return;
    }
    let registry = Registry::with_auth("");
    let s = multi_setup();
    let name = format!("{}/docker-types/multi:1", registry.addr);
    let out = s.build(APP, &["--platform", BOTH, "-t", &name, "-o", DOCKER_TYPES]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = raw(&name, &[]);
    assert_eq!(list["mediaType"], LIST, "{list}");
    let entries = list["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{list}");
    for (entry, arch) in entries.iter().zip(["amd64", "arm64"]) {
        assert_eq!(entry["mediaType"], MANIFEST, "{list}");
        assert_eq!(entry["platform"]["architecture"], arch, "{list}");
        let digest = entry["digest"].as_str().unwrap();
        let repo = format!("{}/docker-types/multi", registry.addr);
        assert_docker_manifest(&raw(&format!("{repo}@{digest}"), &[]));
    }
}
