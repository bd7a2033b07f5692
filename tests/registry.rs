//! Pull, push and login against a real registry: Debian's
//! `docker-registry`, started on a free loopback port, with and without
//! htpasswd basic auth; skopeo reads what kiln pushed and writes what kiln
//! pulls.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use kiln_testing::{Need, REGISTRY, require, wait_until};

use crate::busybox::Setup;
use crate::harness::PATIENCE;

/// A running registry, stopped when dropped.
pub(crate) struct Registry {
    child: Child,
    pub(crate) addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts one; with `htpasswd`, it asks for basic auth.
    pub(crate) fn start(htpasswd: Option<&Path>) -> Self {
        let auth = htpasswd.map_or(String::new(), |p| {
            format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                p.display()
            )
        });
        Self::with_auth(&auth)
    }

    /// Starts one with `auth` (the config's `auth:` section, or nothing).
    pub(crate) fn with_auth(auth: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let registry = Self {
            child,
            addr,
            _dir: dir,
        };
        wait_until(PATIENCE, "the registry to listen", || {
            std::net::TcpStream::connect(&registry.addr).is_ok()
        });
        registry
    }
}

/// What the registry tests need: a build's, the registry and skopeo.
pub(crate) const REGISTRY_TEST: [Need; 4] = [
    Need::Root,
    Need::Busybox,
    Need::Registry,
    Need::Tool("skopeo"),
];

/// Whether the registry tests can run ([`REGISTRY_TEST`]); when not, the
/// test is skipped (or fails under `KILN_REQUIRE_ALL=1`).
pub(crate) fn registry_ready() -> bool {
    require(&REGISTRY_TEST)
}

pub(crate) fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kiln ARGS` on `s`'s store with Docker's config in `docker_config` and
/// `stdin` as its input (a password for `login`).
pub(crate) fn kiln_with_config(
    s: &Setup,
    docker_config: &Path,
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    let mut child = crate::harness::kiln()
        .env("KILN_ROOT", &s.root)
        .env("DOCKER_CONFIG", docker_config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// An htpasswd file (bcrypt) in `dir` with one user.
fn htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    let path = dir.join("htpasswd");
    let made = Command::new("htpasswd")
        .arg("-Bbc")
        .arg(&path)
        .args([user, password])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    path
}

fn manifest_digest(s: &Setup, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", name]).0).unwrap();
    v[0]["Manifest"]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn push_rmi_pull_and_skopeo_agree() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::start(None);
    let s = Setup::new();
    fs::write(s.context.join("hello.txt"), "hello\n").unwrap();
    let app = format!("{}/team/app:1", registry.addr);
    let out = s.build(
        "FROM base:busybox\nCOPY hello.txt /\nRUN echo built > /built\n",
        &["-t", &app],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let built = manifest_digest(&s, &app);

    let (pushed, _) = s.ok(&["push", &app]);
    assert!(
        pushed.contains("4 uploaded, 0 mounted, 0 already there"),
        "{pushed}"
    );
    // The build's own layers were kept uncompressed and left gzip'd: the
    // tag now names the manifest the registry has.
    let digest = manifest_digest(&s, &app);
    assert_ne!(digest, built, "a new manifest, of gzip layers");
    assert!(pushed.contains(&digest), "{pushed}");
    let (again, _) = s.ok(&["push", &app]);
    assert!(
        again.contains("0 uploaded, 0 mounted, 4 already there"),
        "{again}"
    );

    // skopeo reads what kiln pushed.
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{app}"))
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&inspect.stdout)),
        digest,
        "the registry serves kiln's manifest byte for byte"
    );

    // A sibling repository: the layers are mounted, not uploaded.
    let sibling = format!("{}/team/copy:1", registry.addr);
    s.ok(&["tag", &app, &sibling]);
    let (mounted, _) = s.ok(&["push", &sibling]);
    assert!(mounted.contains("0 uploaded, 4 mounted"), "{mounted}");

    // rmi, pull: the same image.
    s.ok(&["rmi", &app, &sibling]);
    let (pulled, _) = s.ok(&["pull", &app]);
    assert!(pulled.contains(&digest), "{pulled}");
    assert_eq!(manifest_digest(&s, &app), digest);
    let (pulled, _) = s.ok(&["pull", &app]);
    assert!(
        pulled.contains("0 blobs fetched"),
        "nothing fetched twice: {pulled}"
    );

    // kiln pulls what skopeo pushed (a docker-archive made by kiln save).
    let archive = s.dir.path().join("app.tar");
    s.ok(&["save", "-o", archive.to_str().unwrap(), &app]);
    let copied = format!("{}/skopeo/app:2", registry.addr);
    let copy = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("docker://{copied}"))
        .output()
        .unwrap();
    assert!(copy.status.success(), "{}", stderr(&copy));
    s.ok(&["pull", &copied]);
    let v: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", &copied]).0).unwrap();
    assert_eq!(v[0]["RootFS"]["Layers"].as_array().unwrap().len(), 3);

    // FROM an image in the registry pulls it; a second build pulls
    // nothing (the registry is gone by then).
    let base = format!("{}/base/busybox:1", registry.addr);
    s.ok(&["tag", "base:busybox", &base]);
    s.ok(&["push", &base]);
    s.ok(&["rmi", &base]);
    let dockerfile = format!("FROM {base}\nRUN echo from-registry > /x\n");
    let out = s.build(&dockerfile, &["-t", "child:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Build and push in one command, buildctl's way.
    let built = format!("{}/team/built:1", registry.addr);
    let out = s.build(
        &dockerfile,
        &["-o", &format!("type=image,name={built},push=true")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("pushing {built} done")),
        "{}",
        stderr(&out)
    );
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{built}"))
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    drop(registry);
    let out = s.build(&dockerfile, &["-t", "child:2"]);
    assert!(
        out.status.success(),
        "no pull the second time: {}",
        stderr(&out)
    );
    let out = s.build("FROM 127.0.0.1:9/nothere:1\n", &["--pull=never"]);
    assert!(
        stderr(&out).contains("not in the local store"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn basic_auth_and_login() {
    if !require(&[REGISTRY_TEST.as_slice(), &[Need::Tool("htpasswd")]].concat()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd(dir.path(), "kiln", "s3cret-pass");
    let registry = Registry::start(Some(&htpasswd));
    let s = Setup::new();
    let docker_config: PathBuf = dir.path().join("docker");
    let transcript = std::cell::RefCell::new(String::new());
    let kiln = |args: &[&str], stdin: &str| {
        let out = kiln_with_config(&s, &docker_config, args, stdin);
        let mut t = transcript.borrow_mut();
        t.push_str(&String::from_utf8_lossy(&out.stdout));
        t.push_str(&String::from_utf8_lossy(&out.stderr));
        out
    };
    let app = format!("{}/private/app:1", registry.addr);
    s.ok(&["tag", "base:busybox", &app]);

    let out = kiln(&["push", &app], "");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{}/private/app", registry.addr))
            && stderr(&out).contains("kiln login"),
        "names the registry and the way out: {}",
        stderr(&out)
    );

    let out = kiln(
        &["login", &registry.addr, "-u", "kiln", "--password-stdin"],
        "wrong\n",
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HTTP 401"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("wrong"), "no password in errors");

    let out = kiln(
        &["login", &registry.addr, "-u", "kiln", "--password-stdin"],
        "s3cret-pass\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let config = fs::read_to_string(docker_config.join("config.json")).unwrap();
    assert!(config.contains(&registry.addr), "{config}");
    assert!(
        !config.contains("s3cret-pass"),
        "stored as Docker does (base64)"
    );

    let out = kiln(&["push", &app], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kiln(&["rmi", &app], "");
    assert!(out.status.success());
    let out = kiln(&["pull", &app], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !transcript.borrow().contains("s3cret-pass"),
        "credentials never printed"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = kiln_cache::Hasher::default();
    h.update(bytes);
    h.finish().hex().to_owned()
}

#[test]
fn build_cache_round_trip_through_a_registry() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::start(None);
    let cache = format!("{}/cache/app:buildcache", registry.addr);
    let dockerfile = "FROM base:busybox AS deps\nRUN echo deps > /deps\nFROM base:busybox\nCOPY --from=deps /deps /deps\nCOPY version.txt /\nRUN --mount=type=cache,target=/c,id=pkgs cat /c/seen > /before 2>/dev/null; cat /version.txt > /c/seen\nRUN echo final > /final\n";
    let a = Setup::new();
    fs::write(a.context.join("version.txt"), "1\n").unwrap();
    let out = a.build(
        dockerfile,
        &[
            "--cache-to",
            &format!("type=registry,ref={cache},cache-mounts=true,mode=max"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("exporting cache to {cache} done")),
        "{}",
        stderr(&out)
    );

    // A fresh store: every step comes from the registry's cache, no RUN runs.
    let b = Setup::new();
    fs::write(b.context.join("version.txt"), "1\n").unwrap();
    let from = format!("type=registry,ref={cache}");
    let out = b.build(dockerfile, &["--cache-from", &from, "-t", "b:1"]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("importing cache from") && log.contains("1 cache mounts"),
        "{log}"
    );
    assert_eq!(log.matches(" DONE").count(), 0, "nothing ran: {log}");
    assert_eq!(log.matches(" CACHED").count(), 5, "{log}");

    // A changed input re-runs its step, which finds the imported cache mount.
    fs::write(b.context.join("version.txt"), "2\n").unwrap();
    let rootfs = b.dir.path().join("rootfs");
    let out = b.build(
        dockerfile,
        &["-o", &format!("type=local,dest={}", rootfs.display())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(rootfs.join("before")).unwrap(),
        "1\n",
        "the step found what store A's run left in the cache mount"
    );
}

#[test]
fn indexes_pick_the_platform_and_helpers_give_credentials() {
    if !require(&[REGISTRY_TEST.as_slice(), &[Need::Tool("htpasswd")]].concat()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd(dir.path(), "helper-user", "helper-pass");
    let registry = Registry::start(Some(&htpasswd));

    // A credential helper, as `docker-credential-*` programs answer `get`.
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-kilntest");
    crate::harness::write_program(
        &helper,
        "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"{\\\"ServerURL\\\":\\\"$server\\\",\\\"Username\\\":\\\"helper-user\\\",\\\"Secret\\\":\\\"helper-pass\\\"}\"\n",
    );
    let config = dir.path().join("docker");
    fs::create_dir_all(&config).unwrap();
    fs::write(
        config.join("config.json"),
        format!(
            "{{\"credHelpers\": {{\"{}\": \"kilntest\"}}}}",
            registry.addr
        ),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let s = Setup::new();
    let kiln = |args: &[&str]| {
        crate::harness::kiln()
            .env("KILN_ROOT", &s.root)
            .env("DOCKER_CONFIG", &config)
            .env("PATH", &path)
            .args(args)
            .output()
            .unwrap()
    };
    let one = format!("{}/multi/app:amd64", registry.addr);
    s.ok(&["tag", "base:busybox", &one]);
    let out = kiln(&["push", &one]);
    assert!(
        out.status.success(),
        "the helper's credentials: {}",
        stderr(&out)
    );

    // Another image for another platform.
    let two = format!("{}/multi/app:other", registry.addr);
    let out = s.build("FROM base:busybox\nRUN echo other > /o\n", &["-t", &two]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(kiln(&["push", &two]).status.success());

    // An index with this machine's platform and another one.
    let entry = |name: &str, arch: &str| {
        let digest = manifest_digest(&s, name);
        let size = fs::metadata(
            s.root
                .join("content/blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
        .len();
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size, "platform": {"os": "linux", "architecture": arch}})
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&two, other), entry(&one, arch)],
    });
    let put = reqwest::blocking::Client::new()
        .put(format!(
            "http://{}/v2/multi/app/manifests/both",
            registry.addr
        ))
        .basic_auth("helper-user", Some("helper-pass"))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .body(index.to_string())
        .send()
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let both = format!("{}/multi/app:both", registry.addr);
    let out = kiln(&["pull", &both]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        manifest_digest(&s, &both),
        manifest_digest(&s, &one),
        "this machine's entry"
    );
    let out = kiln(&["pull", "--platform", &format!("linux/{other}"), &both]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(
        &s.ok(&["inspect", "--platform", &format!("linux/{other}"), &both])
            .0,
    )
    .unwrap();
    assert_eq!(
        v[0]["Manifest"]["digest"].as_str(),
        Some(manifest_digest(&s, &two).as_str())
    );
    let out = kiln(&["pull", "--platform", "linux/s390x", &both]);
    assert!(
        stderr(&out).contains("no linux/s390x image"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn push_and_pull_through_kilnd() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::start(None);
    let s = Setup::new();
    let kilnd = crate::kilnd::Kilnd::start(&s);
    let addr = kilnd.addr();
    let app = format!("{}/via/kilnd:1", registry.addr);
    s.ok(&["--addr", &addr, "tag", "base:busybox", &app]);
    let (pushed, _) = s.ok(&["--addr", &addr, "push", &app]);
    assert!(
        pushed.contains("2 uploaded, 0 mounted, 0 already there"),
        "{pushed}"
    );
    s.ok(&["--addr", &addr, "rmi", &app]);
    let (pulled, _) = s.ok(&["--addr", &addr, "pull", &app]);
    assert!(
        pulled.contains("blobs fetched") && pulled.contains("Digest: sha256:"),
        "{pulled}"
    );
    // The build cache goes to the registry from kilnd, and comes back embedded.
    let cache = format!("type=registry,ref={}/via/cache:1", registry.addr);
    let dockerfile = "FROM base:busybox\nRUN echo cached > /c\n";
    let out = s.build(dockerfile, &["--addr", &addr, "--cache-to", &cache]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = Setup::new();
    let out = b.build(dockerfile, &["--cache-from", &cache]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches(" DONE").count(), 0, "{}", stderr(&out));

    let out = s.kiln(&["--addr", &addr, "pull", "127.0.0.1:9/nothere:1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("127.0.0.1:9/nothere"),
        "{}",
        stderr(&out)
    );
}

/// Starts `kiln push NAME` and kills it (-9) once 4 MiB of a compressed
/// layer are in the store's ingest directory, which it returns.
fn kill_a_push_while_it_compresses(s: &Setup, name: &str) -> PathBuf {
    let ingest = s.root.join("content/ingest");
    let mut child = crate::harness::kiln()
        .env("KILN_ROOT", &s.root)
        .args(["push", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(PATIENCE, "4 MiB of the compressed layer in ingest", || {
        let partial = fs::read_dir(&ingest).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 4 << 20))
        });
        assert!(
            partial || child.try_wait().unwrap().is_none(),
            "the push finished before it could be killed"
        );
        partial
    });
    child.kill().unwrap();
    child.wait().unwrap();
    ingest
}

/// A push compresses the build's uncompressed layers as they leave; a kill
/// -9 in the middle of that leaves a store that opens clean (the partial
/// blob gone, the tag still on the image built), and the next push makes
/// the same image an OCI output of the same build makes.
#[test]
fn a_push_killed_while_compressing_leaves_a_store_that_pushes_again() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::start(None);
    let s = Setup::new();
    let app = format!("{}/team/big:1", registry.addr);
    let dockerfile = "FROM base:busybox\nRUN head -c 33554432 /dev/urandom > /big\n";
    // The second build is all cache hits; the epoch makes its config the same.
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let out = s.build(dockerfile, &[&epoch[..], &["-t", &app]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let built = manifest_digest(&s, &app);

    let ingest = kill_a_push_while_it_compresses(&s, &app);

    assert_eq!(manifest_digest(&s, &app), built, "the tag is untouched");
    assert_eq!(
        fs::read_dir(&ingest).unwrap().count(),
        0,
        "the partial blob is gone once the store opens again"
    );
    let (pushed, _) = s.ok(&["push", &app]);
    let digest = manifest_digest(&s, &app);
    assert!(pushed.contains(&digest), "{pushed}");
    assert_ne!(digest, built, "the pushed image has gzip layers");

    let oci = s.dir.path().join("o.tar");
    let dest = format!("type=oci,dest={}", oci.display());
    let out = s.build(dockerfile, &[&epoch[..], &["-o", &dest]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let index = Command::new("tar")
        .args(["-xOf"])
        .arg(&oci)
        .arg("index.json")
        .output()
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&index.stdout).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"], digest,
        "a push and an OCI output of the same build agree"
    );
}

/// A build writes a step's layer once, into its snapshot: no blob until
/// something reads it. A push makes the gzip blob straight from the
/// snapshot; a kill -9 in the middle of that leaves a store that opens
/// clean with the layer still pending, `prune -a` keeps the snapshot that
/// is the layer, and the next push sends a layer whose content is the
/// diff ID the image config names.
#[test]
fn a_layer_is_made_from_its_snapshot_when_it_leaves_even_after_a_kill() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::start(None);
    let s = Setup::new();
    let app = format!("{}/team/lazy:1", registry.addr);
    let dockerfile = "FROM base:busybox\nRUN head -c 33554432 /dev/urandom > /big\n";
    let out = s.build(dockerfile, &["-t", &app]);
    assert!(out.status.success(), "{}", stderr(&out));
    let built = manifest_digest(&s, &app);
    let inspect: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", &app]).0).unwrap();
    let diff_id = inspect[0]["RootFS"]["Layers"][1]
        .as_str()
        .unwrap()
        .to_owned();
    let hex = diff_id.strip_prefix("sha256:").unwrap();
    let blob = s.root.join("content/blobs/sha256").join(hex);
    let pending = s.root.join("content/pending").join(hex);
    assert!(!blob.exists(), "the build wrote no blob of its layer");
    let manifest_layers = &inspect[0]["Manifest"]["layers"];
    assert_eq!(
        (&manifest_layers[0]["stored"], &manifest_layers[1]["stored"]),
        (&serde_json::json!(true), &serde_json::json!(false)),
        "inspect says which blobs exist: {manifest_layers}"
    );
    assert!(pending.is_file(), "the layer is pending");
    assert!(s.root.join("snapshots").join(hex).is_dir());

    let ingest = kill_a_push_while_it_compresses(&s, &app);

    assert_eq!(manifest_digest(&s, &app), built, "the tag is untouched");
    assert_eq!(fs::read_dir(&ingest).unwrap().count(), 0);
    assert!(pending.is_file() && !blob.exists(), "still pending");
    s.ok(&["prune", "-a"]);
    assert!(
        s.root.join("snapshots").join(hex).is_dir(),
        "prune -a keeps the snapshot that is the layer"
    );

    let (pushed, _) = s.ok(&["push", &app]);
    let digest = manifest_digest(&s, &app);
    assert!(pushed.contains(&digest), "{pushed}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(s.root.join("content/blobs/sha256").join(&digest[7..])).unwrap(),
    )
    .unwrap();
    let gzip = manifest["layers"][1]["digest"].as_str().unwrap();
    let layout = s.dir.path().join("pulled");
    let copied = Command::new("skopeo")
        .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
        .arg(format!("docker://{app}"))
        .arg(format!("oci:{}:x", layout.display()))
        .output()
        .unwrap();
    assert!(copied.status.success(), "{}", stderr(&copied));
    let tar = Command::new("gzip")
        .arg("-dc")
        .arg(layout.join("blobs/sha256").join(&gzip[7..]))
        .output()
        .unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&tar.stdout)),
        diff_id,
        "the registry's layer is the layer the config names"
    );

    // Gone with its image: the mark and the snapshot.
    s.ok(&["rmi", &app]);
    s.ok(&["prune", "-a"]);
    assert!(!pending.exists() && !s.root.join("snapshots").join(hex).exists());
}
