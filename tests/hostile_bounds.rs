//! Bounds: one hostile request — a Dockerfile, an archive, a full disk —
//! gets a clear error naming the limit it hit (or a harmless success), and
//! kilnd, started here, keeps serving the next client. Around each target
//! a sentinel file checks that nothing outside the store changed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use kiln_cache::Digest;

use crate::busybox::{Setup, assert_stderr_has, ready};
use crate::kilnd::Kilnd;

/// A file beside the store that no request may touch.
struct Sentinel(PathBuf);

impl Sentinel {
    fn new(s: &Setup) -> Self {
        let path = s.dir.path().join("sentinel");
        fs::write(&path, "untouched").unwrap();
        Self(path)
    }

    fn assert_intact(&self) {
        assert_eq!(fs::read_to_string(&self.0).unwrap(), "untouched");
    }
}

/// A build through `addr` after the hostile request succeeds: kilnd lives
/// and its store still has the base image.
pub(crate) fn serves_another_build(s: &Setup, addr: &str) {
    let out = s.build(
        "FROM base:busybox\nRUN echo after > /after\n",
        &["--addr", addr, "-t", "after:1"],
    );
    assert!(
        out.status.success(),
        "kilnd did not serve the next build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (images, _) = s.ok(&["--addr", addr, "images"]);
    assert!(
        images.contains("after") && images.contains("base"),
        "{images}"
    );
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "the hostile request succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_thousand_chained_stages_are_refused_by_depth() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let sentinel = Sentinel::new(&s);
    let chain = |n: usize| {
        let mut text = "FROM base:busybox AS s0\n".to_owned();
        for i in 1..=n {
            text.push_str(&format!("FROM s{} AS s{i}\n", i - 1));
        }
        text
    };
    // Embedded first (kilnd holds the store's lock while it runs).
    let embedded = s.build(&chain(1000), &[]);
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    // Within the bound a chain converts and builds.
    let out = s.build(&chain(100), &["--addr", &addr, "-t", "chain:100"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote = s.build(&chain(1000), &["--addr", &addr]);
    for out in [embedded, remote] {
        let stderr = failed(&out);
        assert!(
            stderr.contains("stages depend on one another more than 128 deep (the limit)")
                && stderr.contains("line "),
            "{stderr}"
        );
    }
    sentinel.assert_intact();
    serves_another_build(&s, &addr);
}

#[test]
fn a_pattern_over_a_long_value_is_linear() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let sentinel = Sentinel::new(&s);
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    // 8 × 2^12 = 32 KiB: cubic matching took hours; linear takes no time.
    let mut dockerfile = "FROM base:busybox\nENV a=abcdefgh\n".to_owned();
    dockerfile.push_str(&"ENV a=$a$a\n".repeat(12));
    dockerfile.push_str("ENV b=${a//*z/y} c=${a%%*h} d=${a##*a}\n");
    dockerfile.push_str("RUN [ ${#b} -eq 32768 ] && [ -z \"$c\" ] && [ \"$d\" = bcdefgh ]\n");
    let out = s.build(&dockerfile, &["--addr", &addr, "-t", "pattern:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sentinel.assert_intact();
    serves_another_build(&s, &addr);
}

#[test]
fn doubling_env_is_refused_at_the_word_limit() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let sentinel = Sentinel::new(&s);
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let mut dockerfile = "FROM base:busybox\nENV a=0123456789abcdef\n".to_owned();
    dockerfile.push_str(&"ENV a=$a$a\n".repeat(40));
    dockerfile.push_str("RUN echo never\n");
    let out = s.build(&dockerfile, &["--addr", &addr]);
    let stderr = failed(&out);
    // 16 × 2^16 = 1 MiB is the last value within the bound: line 2 + 17.
    assert!(
        stderr.contains("line 19: ENV a=$a$a: ")
            && stderr.contains("longer than 1048576 bytes (the limit of one word)"),
        "{stderr}"
    );
    // Many values each within the word bound hit the stage's bound.
    let mut dockerfile = "FROM base:busybox\nENV a=0123456789abcdef\n".to_owned();
    dockerfile.push_str(&"ENV a=$a$a\n".repeat(15));
    for i in 0..20 {
        dockerfile.push_str(&format!("ENV b{i}=$a\n"));
    }
    let out = s.build(&dockerfile, &["--addr", &addr]);
    let stderr = failed(&out);
    assert!(
        stderr.contains("ENV b")
            && stderr.contains("values of one stage exceed 4194304 bytes (the limit)"),
        "{stderr}"
    );
    sentinel.assert_intact();
    serves_another_build(&s, &addr);
}

/// An image config is read back only up to `MAX_METADATA` (4 MiB): five
/// 900 KB CMD lines (continued lines, each within the 64 KiB line limit)
/// make a 5.4 MB config through its history. The build says so and tags
/// nothing, rather than tag an image no command could read.
#[test]
fn an_image_config_over_the_metadata_limit_is_refused_before_tagging() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let chunk = "x".repeat(60_000);
    let cmd = format!("CMD echo {}\n", vec![chunk; 15].join(" \\\n"));
    let dockerfile = format!("FROM scratch\n{}", cmd.repeat(5));
    let refused = |flags: &[&str]| {
        let stderr = failed(&s.build(&dockerfile, flags));
        assert!(
            stderr.contains(
                "the image config (its ENV, LABEL and history) is larger than 4194304 bytes"
            ),
            "{stderr}"
        );
    };
    // Embedded first: a running kilnd holds the store's lock.
    refused(&["-t", "huge:1"]);
    let (images, _) = s.ok(&["images"]);
    assert!(!images.contains("huge"), "nothing tagged: {images}");
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    refused(&["--addr", &addr, "-t", "huge:1"]);
    let (images, _) = s.ok(&["--addr", &addr, "images"]);
    assert!(!images.contains("huge"), "nothing tagged: {images}");
    serves_another_build(&s, &addr);
}

/// A tar file being written: regular entries from bytes.
struct TarFile(tar::Builder<Box<dyn Write>>);

impl TarFile {
    fn new(out: Box<dyn Write>) -> Self {
        Self(tar::Builder::new(out))
    }

    fn add(&mut self, name: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        self.0.append_data(&mut header, name, data).unwrap();
    }

    /// Adds a blob of an OCI layout; its digest.
    fn blob(&mut self, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        self.add(&format!("blobs/sha256/{}", digest.hex()), data);
        digest
    }

    fn finish(self) {
        self.0.into_inner().unwrap().flush().unwrap();
    }
}

fn descriptor(media_type: &str, digest: &Digest, size: usize) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": size})
}

/// An OCI layout whose `index.json` names an index that names an index…
/// `depth` times, then a one-file image.
fn nested_index_layout(path: &Path, depth: usize) {
    let mut tar = TarFile::new(Box::new(fs::File::create(path).unwrap()));
    tar.add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    layer.append_data(&mut header, "hi", &b"hi\n"[..]).unwrap();
    let layer = layer.into_inner().unwrap();
    let layer_digest = tar.blob(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
        "config": {}
    }))
    .unwrap();
    let config_digest = tar.blob(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len()),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer_digest, layer.len())],
    }))
    .unwrap();
    let mut top = (
        "application/vnd.oci.image.manifest.v1+json",
        tar.blob(&manifest),
        manifest.len(),
    );
    for _ in 0..depth {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor(top.0, &top.1, top.2)],
        }))
        .unwrap();
        top = (
            "application/vnd.oci.image.index.v1+json",
            tar.blob(&index),
            index.len(),
        );
    }
    let mut entry = descriptor(top.0, &top.1, top.2);
    entry["annotations"] =
        serde_json::json!({"io.containerd.image.name": "docker.io/library/deep:1"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
    tar.add("index.json", &serde_json::to_vec(&index).unwrap());
    tar.finish();
}

#[test]
fn deeply_nested_indexes_are_refused_on_load() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let sentinel = Sentinel::new(&s);
    let blobs = |s: &Setup| {
        fs::read_dir(s.root.join("content/blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = blobs(&s);
    let deep = s.dir.path().join("deep.tar");
    nested_index_layout(&deep, 3000);
    let load = ["load", "-i", deep.to_str().unwrap()];
    // Embedded first (kilnd holds the store's lock while it runs).
    let embedded = s.kiln(&load);
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let remote = s.kiln(&[&["--addr", addr.as_str()][..], &load].concat());
    for out in [embedded, remote] {
        let stderr = failed(&out);
        assert!(
            stderr.contains("indexes nested more than 16 deep (the limit)"),
            "{stderr}"
        );
        assert_eq!(blobs(&s), before, "a refused load leaves no blob behind");
        let (images, _) = s.ok(&["--addr", &addr, "images"]);
        assert!(!images.contains("deep"), "{images}");
    }
    // An index of an index loads.
    let shallow = s.dir.path().join("shallow.tar");
    nested_index_layout(&shallow, 2);
    s.ok(&["--addr", &addr, "load", "-i", shallow.to_str().unwrap()]);
    s.ok(&["--addr", &addr, "rmi", "deep:1"]);
    s.ok(&["--addr", &addr, "prune", "-a"]);
    sentinel.assert_intact();
    serves_another_build(&s, &addr);
}

#[test]
fn a_json_bomb_archive_is_refused_at_the_metadata_limit() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let sentinel = Sentinel::new(&s);
    // Top-level JSON files of 8 MiB of blanks that gzip to almost nothing;
    // each was read into memory before (up to 16 MiB each, any number).
    let bomb = s.dir.path().join("bomb.tar.gz");
    let gz = flate2::write::GzEncoder::new(
        fs::File::create(&bomb).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = TarFile::new(Box::new(gz));
    let blanks = vec![b' '; 8 << 20];
    for i in 0..8 {
        tar.add(&format!("c{i}.json"), &blanks);
    }
    tar.add("manifest.json", b"[]");
    tar.finish();
    let load = ["load", "-i", bomb.to_str().unwrap()];
    // Embedded first (kilnd holds the store's lock while it runs).
    let embedded = s.kiln(&load);
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let remote = s.kiln(&[&["--addr", addr.as_str()][..], &load].concat());
    for out in [embedded, remote] {
        let stderr = failed(&out);
        assert!(
            stderr.contains("c0.json is larger than 4194304 bytes (the limit of a metadata file)"),
            "{stderr}"
        );
    }
    sentinel.assert_intact();
    serves_another_build(&s, &addr);
}

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Fails the test when root cannot mount one (the sandbox could not
    /// mount either).
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs on {}", dir.display());
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_during_a_layer_write_is_an_error() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(&dir.path().join("root"), "48m");
    let tarball = base_with_dd(&dir.path().join("base"));
    let s = Setup::with_base(dir, &tarball);
    let sentinel = Sentinel::new(&s);
    let kilnd = Kilnd::start_with(&s, &["--keep-storage", "off"]);
    let addr = kilnd.addr();
    // The step's 26 MiB of random bytes fit in its snapshot; the gzip
    // layer (as large) the OCI output makes does not.
    let dest = format!("type=oci,dest={}", s.dir.path().join("out.tar").display());
    let out = s.build(
        "FROM base:busybox\nRUN dd if=/dev/urandom of=/random bs=1M count=26\n",
        &["--addr", &addr, "-t", "full:1", "-o", &dest],
    );
    let stderr = failed(&out);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_stderr_has(&out, &s.root.display().to_string());
    sentinel.assert_intact();
    serves_another_build(&s, &addr);
}

/// The busybox base tarball with `dd` too.
fn base_with_dd(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    crate::busybox::base_tarball_with(dir, |rootfs| {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/dd")).unwrap();
    })
}
