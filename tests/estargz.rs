//! `-o …,compression=estargz`: the build's layers leave as eStargz
//! (containerd/stargz-snapshotter's `docs/estargz.md`) — each checked here
//! against the spec, byte by byte: the footer, the TOC it names and whose
//! digest the descriptor carries, each file's and chunk's gzip member at
//! its offset and its digest. The blobs stay plain gzip tars (`tar -tzf`,
//! skopeo, umoci), embedded and through kilnd.

use std::fs;
use std::io::Read;
use std::process::Command;

use kiln_testing::{Need, require};

use crate::busybox::{Setup, assert_stderr_has};
use crate::registry::{REGISTRY_TEST, Registry, stderr};

/// A file of two chunks and a bit, and a small one, then a RUN.
const DOCKERFILE: &str =
    "FROM base:busybox\nCOPY big.bin small.txt /data/\nRUN echo made > /made\n";

/// Pushes `base:busybox` (imported, so uncompressed) to `registry` with
/// `kiln push`: its layer is gzip now, as a pulled base's is.
fn gzip_base(s: &Setup, registry: &Registry) -> String {
    let base = format!("{}/esgz/base:1", registry.addr);
    s.ok(&["tag", "base:busybox", &base]);
    s.ok(&["push", &base]);
    DOCKERFILE.replace("base:busybox", &base)
}

const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
const UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn context(s: &Setup) -> Vec<u8> {
    let big = noise((9 << 20) + 12_345);
    fs::write(s.context.join("big.bin"), &big).unwrap();
    fs::write(s.context.join("small.txt"), "small\n").unwrap();
    big
}

fn sha(data: &[u8]) -> String {
    let mut h = kiln_cache::Hasher::default();
    h.update(data);
    h.finish().to_string()
}

/// One gzip member's content at `offset`.
fn member(blob: &[u8], offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&blob[usize::try_from(offset).unwrap()..])
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Checks `blob` against the spec and its descriptor's `annotations` and
/// the config's `diff_id`; the TOC's entries.
fn check_estargz(
    blob: &[u8],
    annotations: &serde_json::Value,
    diff_id: &str,
) -> Vec<serde_json::Value> {
    let footer = &blob[blob.len() - 51..];
    assert_eq!(
        &footer[..4],
        &[0x1f, 0x8b, 8, 4],
        "the footer's gzip header"
    );
    assert_eq!(
        &footer[10..16],
        &[26, 0, b'S', b'G', 22, 0],
        "its extra field"
    );
    assert_eq!(&footer[32..38], b"STARGZ");
    assert!(member(footer, 0).is_empty());
    let toc_offset =
        u64::from_str_radix(std::str::from_utf8(&footer[16..32]).unwrap(), 16).unwrap();
    let toc_tar = member(blob, toc_offset);
    let mut archive = tar::Archive::new(&toc_tar[..]);
    let mut entries = archive.entries().unwrap();
    let mut toc = entries.next().unwrap().unwrap();
    assert_eq!(toc.path().unwrap().to_str(), Some("stargz.index.json"));
    let mut json = Vec::new();
    toc.read_to_end(&mut json).unwrap();
    drop(toc);
    assert!(entries.next().is_none());
    assert_eq!(
        annotations[TOC_DIGEST],
        sha(&json),
        "the TOC digest annotation"
    );
    let mut all = Vec::new();
    flate2::read::MultiGzDecoder::new(blob)
        .read_to_end(&mut all)
        .unwrap();
    assert_eq!(annotations[UNCOMPRESSED_SIZE], all.len().to_string());
    assert_eq!(
        sha(&all),
        diff_id,
        "the config's diff ID is the gunzipped blob's"
    );
    let toc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(toc["version"], 1);
    toc["entries"].as_array().unwrap().clone()
}

/// Each regular file's and chunk's member holds its data, whose digest the
/// TOC gives.
fn check_chunks(blob: &[u8], entries: &[serde_json::Value], name: &str, data: &[u8]) {
    let chunks: Vec<&serde_json::Value> = entries.iter().filter(|e| e["name"] == name).collect();
    assert_eq!(chunks[0]["type"], "reg");
    assert_eq!(chunks[0]["digest"], sha(data));
    assert_eq!(chunks[0]["size"], data.len());
    let expected = data.len().div_ceil(4 << 20);
    assert_eq!(chunks.len(), expected, "{name}: 4 MiB chunks");
    for c in chunks {
        let at = usize::try_from(c["chunkOffset"].as_u64().unwrap_or(0)).unwrap();
        let size = c["chunkSize"]
            .as_u64()
            .map_or(data.len() - at, |s| usize::try_from(s).unwrap());
        let piece = &data[at..at + size];
        assert_eq!(c["chunkDigest"], sha(piece), "{name} at {at}");
        assert!(member(blob, c["offset"].as_u64().unwrap()).starts_with(piece));
    }
}

/// `skopeo copy` of `name` to an OCI layout: the layout.
fn copy_to_layout(s: &Setup, name: &str) -> std::path::PathBuf {
    let layout = s
        .dir
        .path()
        .join(format!("layout-{}", name.replace([':', '/'], "-")));
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{name}"))
        .arg(format!("oci:{}:app", layout.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    layout
}

fn json_blob(layout: &std::path::Path, digest: &str) -> serde_json::Value {
    serde_json::from_slice(&blob(layout, digest)).unwrap()
}

fn blob(layout: &std::path::Path, digest: &str) -> Vec<u8> {
    fs::read(
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

/// The layout's manifest and config.
fn image_of(layout: &std::path::Path) -> (serde_json::Value, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = json_blob(layout, index["manifests"][0]["digest"].as_str().unwrap());
    let config = json_blob(layout, manifest["config"]["digest"].as_str().unwrap());
    (manifest, config)
}

/// Checks every eStargz layer of the image in `layout` (at least `built`
/// of them, the last ones): the COPY's files and the RUN's.
fn check_image(layout: &std::path::Path, big: &[u8], built: usize) -> usize {
    let (manifest, config) = image_of(layout);
    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let mut estargz = 0;
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(layer["mediaType"], OCI_GZIP, "{manifest}");
        if layer["annotations"][TOC_DIGEST].is_null() {
            assert!(
                i < layers.len() - built,
                "a built layer without a TOC: {manifest}"
            );
            continue;
        }
        estargz += 1;
        let bytes = blob(layout, layer["digest"].as_str().unwrap());
        let entries = check_estargz(&bytes, &layer["annotations"], diff_ids[i].as_str().unwrap());
        let names: Vec<&str> = entries.iter().filter_map(|e| e["name"].as_str()).collect();
        if names.contains(&"data/big.bin") {
            check_chunks(&bytes, &entries, "data/big.bin", big);
            check_chunks(&bytes, &entries, "data/small.txt", b"small\n");
        }
        // Still a plain gzip tar: GNU tar lists it, without the TOC.
        let path = layout.join("blobs/sha256").join(
            layer["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:"),
        );
        let listed = Command::new("tar").arg("-tzf").arg(&path).output().unwrap();
        assert!(listed.status.success(), "{}", stderr(&listed));
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(!listed.contains("stargz.index.json"), "{listed}");
        assert!(!listed.trim().is_empty(), "{listed}");
    }
    assert!(estargz >= built, "{manifest}");
    estargz
}

/// umoci unpacks the layout: the files are the build's, no TOC among them.
fn umoci_unpacks(s: &Setup, layout: &std::path::Path, big: &[u8]) {
    let bundle = s.dir.path().join(format!(
        "bundle-{}",
        layout.file_name().unwrap().to_string_lossy()
    ));
    let out = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:app", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rootfs = bundle.join("rootfs");
    assert_eq!(fs::read(rootfs.join("data/big.bin")).unwrap(), big);
    assert_eq!(fs::read_to_string(rootfs.join("made")).unwrap(), "made\n");
    assert!(!rootfs.join("stargz.index.json").exists());
}

fn ready() -> bool {
    require(&REGISTRY_TEST) && require(&[Need::Tool("skopeo"), Need::Tool("umoci")])
}

#[test]
fn a_push_with_estargz_layers_is_estargz_by_the_spec_and_still_gzip() {
    if !ready() {
        return;
    }
    let registry = Registry::with_auth("");
    let s = Setup::new();
    let big = context(&s);
    let dockerfile = gzip_base(&s, &registry);
    let name = format!("{}/esgz/app:1", registry.addr);
    let out = s.build(
        &dockerfile,
        &[
            "-t",
            &name,
            "-o",
            "type=image,push=true,compression=estargz",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let layout = copy_to_layout(&s, &name);
    // The base's layer leaves as it came; the build's two are eStargz.
    assert_eq!(check_image(&layout, &big, 2), 2);
    umoci_unpacks(&s, &layout, &big);

    // With force-compression, the base's layer too.
    let forced = format!("{}/esgz/forced:1", registry.addr);
    let out = s.build(
        &dockerfile,
        &[
            "-t",
            &forced,
            "-o",
            "type=image,push=true,compression=estargz,force-compression=true",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let layout = copy_to_layout(&s, &forced);
    assert_eq!(check_image(&layout, &big, 3), 3);
    umoci_unpacks(&s, &layout, &big);

    // An OCI output, at another level.
    let tarball = s.dir.path().join("oci.tar");
    let spec = format!(
        "type=oci,dest={},compression=estargz,compression-level=9",
        tarball.display()
    );
    let out = s.build(&dockerfile, &["-o", &spec]);
    assert!(out.status.success(), "{}", stderr(&out));
    let oci = s.dir.path().join("oci");
    fs::create_dir(&oci).unwrap();
    let untar = Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-xf")
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(untar.status.success());
    assert_eq!(check_image(&oci, &big, 2), 2);

    // eStargz needs OCI media types, as BuildKit says.
    let refused = s.build(
        DOCKERFILE,
        &[
            "-t",
            &name,
            "-o",
            "type=image,push=true,compression=estargz,oci-mediatypes=false",
        ],
    );
    assert!(!refused.status.success());
    assert_stderr_has(
        &refused,
        "compression=estargz conflicts with oci-mediatypes=false",
    );
}

#[test]
fn estargz_through_kilnd() {
    if !ready() {
        return;
    }
    let registry = Registry::with_auth("");
    let s = Setup::new();
    let big = context(&s);
    let kilnd = crate::kilnd::Kilnd::start(&s);
    let addr = kilnd.addr();
    let name = format!("{}/esgz/kilnd:1", registry.addr);
    let out = s.build(
        DOCKERFILE,
        &[
            "--addr",
            &addr,
            "-t",
            &name,
            "-o",
            "type=image,push=true,compression=estargz",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let layout = copy_to_layout(&s, &name);
    // The imported base's layer is uncompressed in the store: it leaves
    // compressed as asked, so in eStargz too.
    assert_eq!(check_image(&layout, &big, 3), 3);
    umoci_unpacks(&s, &layout, &big);
    let refused = s.build(
        DOCKERFILE,
        &[
            "--addr",
            &addr,
            "-t",
            &name,
            "-o",
            "type=image,push=true,compression=estargz,oci-mediatypes=false",
        ],
    );
    assert!(!refused.status.success());
    assert_stderr_has(
        &refused,
        "compression=estargz conflicts with oci-mediatypes=false",
    );
}
