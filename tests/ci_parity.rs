//! CI parity with `docker buildx build` (issue 18): what pipelines set
//! (`--push`, `--load`, `-o type=registry|docker|cacheonly`) and read back
//! (`--metadata-file`, `--iidfile`), embedded and through kilnd alike.

use std::fs;
use std::process::{Command, Output};

use kiln_cache::Digest;

use crate::busybox::Setup;
use crate::kilnd::Kilnd;
use crate::registry::{Registry, registry_ready, stderr};

const APP: &str = "FROM base:busybox\nRUN echo ci > /ci\n";

/// `kiln build` with `flags` on `s`'s store, through kilnd when `addr`.
fn build(s: &Setup, addr: Option<&str>, flags: &[&str]) -> Output {
    let mut args: Vec<&str> = addr.map_or(Vec::new(), |a| vec!["--addr", a]);
    args.push("--progress=plain");
    args.extend_from_slice(flags);
    let out = s.build(APP, &args);
    assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
    out
}

/// The raw manifest `name` names in the loopback registry.
fn raw_manifest(name: &str) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

/// The names `kiln images` lists on `s`'s store (short, as docker shows
/// them), with what each names.
fn tagged(s: &Setup, addr: Option<&str>) -> Vec<(String, String)> {
    let mut args: Vec<&str> = addr.map_or(Vec::new(), |a| vec!["--addr", a]);
    args.extend_from_slice(&["images", "--format", "json"]);
    let (out, _) = s.ok(&args);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let name = format!(
                "{}:{}",
                i["repository"].as_str().unwrap(),
                i["tag"].as_str().unwrap()
            );
            (name, i["digest"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// A store used by `kiln` itself and another behind a kilnd, each with
/// `base:busybox`: the same test runs both ways.
struct BothWays {
    embedded: Setup,
    through: Setup,
    /// Runs while this lives (stopped when dropped).
    _kilnd: Kilnd,
    addr: String,
}

impl BothWays {
    fn new() -> Self {
        let through = Setup::new();
        let kilnd = Kilnd::start(&through);
        let addr = kilnd.addr();
        Self {
            embedded: Setup::new(),
            through,
            _kilnd: kilnd,
            addr,
        }
    }

    /// Each store, the kilnd address to build through (none: embedded)
    /// and its name.
    fn each(&self) -> [(&Setup, Option<&str>, &'static str); 2] {
        [
            (&self.embedded, None, "embedded"),
            (&self.through, Some(self.addr.as_str()), "kilnd"),
        ]
    }
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// `--push` and `-o type=registry` push; `--metadata-file` names what the
/// registry holds (its digest is that of the manifest bytes the registry
/// serves, its size theirs, its config the manifest's), `--iidfile` the
/// config — embedded and through kilnd.
#[test]
fn a_push_is_read_back_from_the_metadata_file() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::with_auth("");
    let both = BothWays::new();
    for (s, addr, node) in both.each() {
        for push in [&["--push"][..], &["-o", "type=registry"]] {
            let name = format!("{}/ci/app:{node}-{}", registry.addr, push.len());
            let meta = s.dir.path().join(format!("meta-{}.json", push.len()));
            let iid = s.dir.path().join(format!("iid-{}", push.len()));
            let mut flags = vec!["-t", &name, "--metadata-file"];
            let (meta_arg, iid_arg) = (meta.display().to_string(), iid.display().to_string());
            flags.extend([meta_arg.as_str(), "--iidfile", iid_arg.as_str()]);
            flags.extend_from_slice(push);
            build(s, addr, &flags);

            let manifest = raw_manifest(&name);
            let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
            let m = read_json(&meta);
            let digest = Digest::of(&manifest).to_string();
            assert_eq!(m["containerimage.digest"], digest.as_str(), "{node}: {m}");
            let descriptor = &m["containerimage.descriptor"];
            assert_eq!(descriptor["digest"], digest.as_str());
            assert_eq!(descriptor["size"], manifest.len());
            assert_eq!(descriptor["mediaType"], parsed["mediaType"]);
            let config = parsed["config"]["digest"].as_str().unwrap();
            assert_eq!(m["containerimage.config.digest"], config);
            assert_eq!(descriptor["annotations"]["config.digest"], config);
            assert!(
                descriptor["annotations"]["org.opencontainers.image.created"].is_string(),
                "{m}"
            );
            assert_eq!(m["image.name"], name.as_str());
            let build_ref = m["buildx.build.ref"].as_str().unwrap();
            assert!(
                build_ref.starts_with(&format!("kiln/{node}/")),
                "{build_ref}"
            );
            assert_eq!(fs::read_to_string(&iid).unwrap(), config);
        }
    }
}

/// `--load` and `-o type=docker` without `dest` keep the image in the
/// store, tagged (where buildx loads into docker's); the metadata names
/// the store's manifest.
#[test]
fn load_and_a_docker_output_without_dest_tag_the_store() {
    if !crate::busybox::ready() {
        return;
    }
    let both = BothWays::new();
    for (s, addr, _) in both.each() {
        for (name, load) in [
            ("ci-load:1", &["--load"][..]),
            ("ci-docker:1", &["-o", "type=docker"]),
        ] {
            let meta = s.dir.path().join("meta.json");
            let meta_arg = meta.display().to_string();
            let mut flags = vec!["-t", name, "--metadata-file", meta_arg.as_str()];
            flags.extend_from_slice(load);
            build(s, addr, &flags);
            let full = format!("docker.io/library/{name}");
            let images = tagged(s, addr);
            let (_, digest) = images
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} not in {images:?}"));
            let m = read_json(&meta);
            assert_eq!(m["containerimage.digest"], digest.as_str(), "{m}");
            assert_eq!(m["image.name"], full.as_str());
        }
    }
}

/// `-o type=cacheonly`: the build runs and tags nothing (its `-t` name
/// is not applied), as BuildKit's cacheonly exporter makes no image; with
/// `--load` beside it, the image is tagged.
#[test]
fn a_cache_only_build_tags_nothing() {
    if !crate::busybox::ready() {
        return;
    }
    let both = BothWays::new();
    for (s, addr, _) in both.each() {
        let meta = s.dir.path().join("cacheonly.json");
        let meta_arg = meta.display().to_string();
        build(
            s,
            addr,
            &[
                "-t",
                "ci-cache:1",
                "-o",
                "type=cacheonly",
                "--metadata-file",
                &meta_arg,
            ],
        );
        let m = read_json(&meta);
        assert!(m["buildx.build.ref"].is_string(), "{m}");
        assert!(m.get("containerimage.digest").is_none(), "no image: {m}");
        let images = tagged(s, addr);
        assert!(
            !images.iter().any(|(n, _)| n.contains("ci-cache")),
            "{images:?}"
        );
        let out = build(
            s,
            addr,
            &["-t", "ci-cache:2", "-o", "type=cacheonly", "--load"],
        );
        assert!(stderr(&out).contains("CACHED"), "{}", stderr(&out));
        let images = tagged(s, addr);
        assert!(images.iter().any(|(n, _)| n == "ci-cache:2"), "{images:?}");
    }
}

/// `type=registry` always pushes: `push=false` with it is refused, naming
/// the output, before anything runs.
#[test]
fn a_registry_output_that_does_not_push_is_refused() {
    if !crate::busybox::ready() {
        return;
    }
    let s = Setup::new();
    let out = s.build(APP, &["-t", "r.lan/a:1", "-o", "type=registry,push=false"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("type=registry always pushes"),
        "{}",
        stderr(&out)
    );
}

/// `compression=zstd` compresses the build's own layers; a base image's,
/// as the registry gave them (gzip), stay so unless
/// `force-compression=true` — BuildKit's rule, embedded and through kilnd.
#[test]
fn force_compression_recompresses_the_base_layers_too() {
    if !registry_ready() {
        return;
    }
    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    let registry = Registry::with_auth("");
    let base = format!("{}/ci/base:1", registry.addr);
    let both = BothWays::new();
    both.embedded.ok(&["tag", "base:busybox", &base]);
    both.embedded.ok(&["push", &base]);
    let dockerfile = format!("FROM {base}\nRUN echo zstd > /z\n");
    for (s, addr, node) in both.each() {
        for (force, want) in [("false", [GZIP, ZSTD]), ("true", [ZSTD, ZSTD])] {
            let name = format!("{}/ci/zstd:{node}-{force}", registry.addr);
            let output =
                format!("type=registry,name={name},compression=zstd,force-compression={force}");
            let mut args: Vec<&str> = addr.map_or(Vec::new(), |a| vec!["--addr", a]);
            args.extend(["--pull=always", "-o", &output]);
            let out = s.build(&dockerfile, &args);
            assert!(out.status.success(), "{}", stderr(&out));
            let manifest: serde_json::Value = serde_json::from_slice(&raw_manifest(&name)).unwrap();
            let types: Vec<&str> = manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["mediaType"].as_str().unwrap())
                .collect();
            assert_eq!(types, want, "{node} force-compression={force}");
        }
    }
}

/// `-o type=oci,dest=DIR,tar=false`: the OCI layout itself in DIR, the
/// same image embedded and through kilnd (its layers compressed as a
/// push's), which skopeo reads.
#[test]
fn an_oci_output_without_tar_is_a_layout_directory() {
    if !registry_ready() {
        return;
    }
    let both = BothWays::new();
    let mut manifests = Vec::new();
    for (s, addr, _) in both.each() {
        let dir = s.dir.path().join("layout");
        let output = format!("type=oci,dest={},tar=false", dir.display());
        build(
            s,
            addr,
            &["--build-arg", "SOURCE_DATE_EPOCH=1700000000", "-o", &output],
        );
        let layout = read_json(&dir.join("oci-layout"));
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let index = read_json(&dir.join("index.json"));
        let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
        let blob = dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(&blob).unwrap()).unwrap();
        for layer in manifest["layers"].as_array().unwrap() {
            assert_eq!(
                layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
                "{addr:?}: {manifest}"
            );
        }
        let inspected = Command::new("skopeo")
            .args(["inspect", &format!("oci:{}", dir.display())])
            .output()
            .unwrap();
        assert!(inspected.status.success(), "{}", stderr(&inspected));
        manifests.push(digest);
    }
    assert_eq!(manifests[0], manifests[1], "embedded and through kilnd");
}

/// buildx's flags kiln lacks fail naming the flag and why, before
/// anything runs; `--provenance=false` and the old builder's flags that
/// buildx ignores pass (with a warning for each); `--help` shows the
/// global options apart.
#[test]
fn buildx_flags_kiln_lacks_are_named() {
    if !crate::busybox::ready() {
        return;
    }
    let s = Setup::new();
    for (flags, named) in [
        (
            &["--attest", "type=provenance"][..],
            "--attest is not supported by kiln yet",
        ),
        (&["--sbom=true"], "--sbom is not supported by kiln yet"),
        (
            &["--builder", "mybuilder"],
            "--builder is not supported by kiln yet",
        ),
        (
            &["--cgroup-parent", "ci.slice"],
            "--cgroup-parent is not supported by kiln yet",
        ),
    ] {
        let out = s.build(APP, flags);
        assert!(!out.status.success(), "{flags:?}");
        let err = stderr(&out);
        assert!(err.contains(named), "{flags:?}: {err}");
        assert!(!err.contains("unexpected argument"), "{err}");
        assert!(!err.contains("#1 "), "nothing ran: {err}");
    }
    let out = build(
        &s,
        None,
        &["--provenance=false", "--rm", "--force-rm", "-t", "old:1"],
    );
    let err = stderr(&out);
    assert!(err.contains("warning: --rm is ignored"), "{err}");
    assert!(!err.contains("provenance"), "{err}");

    let help = crate::harness::run(crate::harness::kiln().args(["build", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout);
    let (own, global) = help
        .split_once("Global options:")
        .expect("a global heading");
    assert!(
        own.contains("--metadata-file") && !own.contains("--tls-ca"),
        "{help}"
    );
    assert!(
        global.contains("--tls-ca") && global.contains("--root"),
        "{help}"
    );
    assert!(!help.contains("--cgroup-parent"), "hidden: {help}");
}

/// `--progress rawjson`: BuildKit's SolveStatus lines, each a JSON object
/// of vertexes / statuses / logs / warnings, a step's log in base64 under
/// its vertex's digest — embedded and through kilnd; `--progress quiet`
/// prints nothing but the result.
#[test]
fn rawjson_progress_is_buildkits_solve_status() {
    use base64::Engine as _;
    if !crate::busybox::ready() {
        return;
    }
    let both = BothWays::new();
    let dockerfile = "FROM base:busybox\nRUN echo raw-$((6*7))\n";
    for (s, addr, _) in both.each() {
        let mut args: Vec<&str> = addr.map_or(Vec::new(), |a| vec!["--addr", a]);
        args.extend(["--progress", "rawjson", "--no-cache"]);
        let out = s.build(dockerfile, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let mut run_digest = None;
        let mut logged = String::new();
        for line in stderr(&out).lines() {
            let status: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            for v in status["vertexes"].as_array().into_iter().flatten() {
                if v["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("RUN echo raw"))
                {
                    run_digest = Some(v["digest"].as_str().unwrap().to_owned());
                }
            }
            for log in status["logs"].as_array().into_iter().flatten() {
                assert_eq!(log["vertex"].as_str(), run_digest.as_deref(), "{line}");
                let data = base64::engine::general_purpose::STANDARD
                    .decode(log["data"].as_str().unwrap())
                    .unwrap();
                logged.push_str(&String::from_utf8_lossy(&data));
            }
        }
        assert!(run_digest.is_some(), "{}", stderr(&out));
        assert!(logged.contains("raw-42\n"), "{logged}");

        let mut args: Vec<&str> = addr.map_or(Vec::new(), |a| vec!["--addr", a]);
        args.extend(["--progress", "quiet", "--no-cache"]);
        let out = s.build(dockerfile, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stderr(&out), "", "quiet");
    }
}

/// The JSON the registry serves for `name` (`repo@digest` too).
fn raw_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&raw_manifest(name)).unwrap()
}

/// `--annotation` and `-o annotation.K=V` on a one-platform push: on its
/// manifest, embedded and through kilnd; an index's annotation without an
/// index, and annotations in Docker's media types, are refused.
#[test]
fn annotations_reach_the_pushed_manifest() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::with_auth("");
    let both = BothWays::new();
    for (s, addr, node) in both.each() {
        let name = format!("{}/ci/annotated:{node}", registry.addr);
        let output = format!("type=registry,name={name},annotation.org.example.by=kiln");
        build(
            s,
            addr,
            &[
                "--annotation",
                "org.opencontainers.image.title=ci app",
                "-o",
                &output,
            ],
        );
        let manifest = raw_json(&name);
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.title"], "ci app",
            "{node}: {manifest}"
        );
        assert_eq!(manifest["annotations"]["org.example.by"], "kiln");

        let mut args: Vec<&str> = addr.map_or(Vec::new(), |a| vec!["--addr", a]);
        args.extend(["--annotation", "index:k=v"]);
        let out = s.build(APP, &args);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("need an index"), "{}", stderr(&out));
        let mut args: Vec<&str> = addr.map_or(Vec::new(), |a| vec!["--addr", a]);
        args.extend([
            "--annotation",
            "k=v",
            "-o",
            "type=image,oci-mediatypes=false",
        ]);
        let out = s.build(APP, &args);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("needs OCI media types"),
            "{}",
            stderr(&out)
        );
    }
}

/// Several platforms: index, manifest-descriptor and per-platform manifest
/// annotations land where buildx puts them; the metadata names the index
/// (no config digest) and `--iidfile` holds the index's digest — embedded
/// and through kilnd.
#[test]
fn a_multi_platform_push_is_annotated_and_read_back() {
    if !crate::platforms::ready(&crate::registry::REGISTRY_TEST) {
        return;
    }
    let registry = Registry::with_auth("");
    let s = crate::platforms::multi_setup();
    let meta = s.dir.path().join("meta.json");
    let iid = s.dir.path().join("iid");
    let flags = |name: &str| -> Vec<String> {
        [
            "--platform",
            crate::platforms::BOTH,
            "-t",
            name,
            "--push",
            "--annotation",
            "index:org.example.index=i",
            "--annotation",
            "manifest-descriptor[linux/arm64]:org.example.entry=e",
            "--annotation",
            "manifest[linux/arm64]:org.example.arm=a",
            "--metadata-file",
            meta.to_str().unwrap(),
            "--iidfile",
            iid.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let check = |name: &str| {
        let index_bytes = raw_manifest(name);
        let index: serde_json::Value = serde_json::from_slice(&index_bytes).unwrap();
        assert_eq!(index["annotations"]["org.example.index"], "i", "{index}");
        let repo = name.rsplit_once(':').unwrap().0;
        for entry in index["manifests"].as_array().unwrap() {
            let arm = entry["platform"]["architecture"] == "arm64";
            let described = entry["annotations"]["org.example.entry"].as_str();
            assert_eq!(described, arm.then_some("e"), "{entry}");
            let digest = entry["digest"].as_str().unwrap();
            let manifest = raw_json(&format!("{repo}@{digest}"));
            let own = manifest["annotations"]["org.example.arm"].as_str();
            assert_eq!(own, arm.then_some("a"), "{manifest}");
        }
        let m = read_json(&meta);
        let digest = Digest::of(&index_bytes).to_string();
        assert_eq!(m["containerimage.digest"], digest.as_str(), "{m}");
        assert!(m.get("containerimage.config.digest").is_none(), "{m}");
        assert_eq!(
            m["containerimage.descriptor"]["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(fs::read_to_string(&iid).unwrap(), digest);
    };
    let embedded = format!("{}/ci/multi:embedded", registry.addr);
    let out = s.build(
        crate::platforms::APP,
        &flags(&embedded)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    check(&embedded);

    let kilnd = Kilnd::start(&s);
    let through = format!("{}/ci/multi:kilnd", registry.addr);
    let mut args = vec!["--addr".to_owned(), kilnd.addr()];
    args.extend(flags(&through));
    let out = s.build(
        crate::platforms::APP,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    check(&through);
}

/// `SOURCE_DATE_EPOCH` with `rewrite-timestamp=true`: a build on another
/// day, of a context touched since, gives the same image — embedded and
/// through kilnd, from fresh stores; `rewrite-timestamp=false` says it is
/// not honoured.
#[test]
fn rewrite_timestamp_makes_the_same_image_another_day() {
    if !crate::busybox::ready() {
        return;
    }
    let dockerfile = "FROM base:busybox\nCOPY a.txt /\nRUN touch /made && mkdir /d\n";
    let digest_of = |s: &Setup, addr: Option<&str>, mtime: &str| {
        fs::write(s.context.join("a.txt"), "same\n").unwrap();
        let touched = Command::new("touch")
            .args(["-d", mtime])
            .arg(s.context.join("a.txt"))
            .status()
            .unwrap();
        assert!(touched.success());
        let dir = s.dir.path().join("layout");
        let output = format!(
            "type=oci,dest={},tar=false,rewrite-timestamp=true",
            dir.display()
        );
        let mut args: Vec<&str> = addr.map_or(Vec::new(), |a| vec!["--addr", a]);
        args.extend(["--build-arg", "SOURCE_DATE_EPOCH=1700000000", "-o", &output]);
        let out = s.build(dockerfile, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let index = read_json(&dir.join("index.json"));
        index["manifests"][0]["digest"].as_str().unwrap().to_owned()
    };
    let first = Setup::new();
    let a = digest_of(&first, None, "2024-01-02 03:04:05");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = Setup::new();
    let kilnd = Kilnd::start(&second);
    let b = digest_of(&second, Some(&kilnd.addr()), "2025-06-07 08:09:10");
    assert_eq!(
        a, b,
        "the same image, built again later from a touched context"
    );

    let out = first.build(dockerfile, &["-o", "type=image,rewrite-timestamp=false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rewrite-timestamp=false is not honoured"),
        "{}",
        stderr(&out)
    );
}

/// Issue 18's CI job (`tests/ci_script/buildx-job.sh`), written for
/// `docker buildx build`, run with kiln by its name alone: the first run
/// (embedded) labels, annotates, pushes and exports its cache to a
/// directory and to S3 (moto on loopback); a fresh store behind a kilnd
/// runs it again from those caches — every step CACHED, the same pushed
/// digest, as `--metadata-file` says.
#[test]
fn a_ci_job_written_for_buildx_runs_with_kiln() {
    use kiln_testing::{Need, require};
    if !registry_ready() || !require(&[Need::PythonMoto]) {
        return;
    }
    let registry = Registry::with_auth("");
    let moto = crate::cache_backends::Moto::start(false);
    moto.python("boto3.client('s3', **kw).create_bucket(Bucket='ci-cache')\n");
    let both = BothWays::new();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ci_script/buildx-job.sh");
    let cache_dir = both.embedded.dir.path().join("ci-cache");
    let out = both.embedded.dir.path().join("ci-out");
    fs::create_dir_all(&out).unwrap();
    let run = |s: &Setup, buildx: String, phase: &str| {
        fs::write(
            s.context.join("Dockerfile"),
            "FROM base:busybox\nCOPY app.txt /app/\nRUN sort /app/app.txt > /app/sorted\n",
        )
        .unwrap();
        fs::write(s.context.join("app.txt"), "b\na\n").unwrap();
        let ran = crate::harness::run(
            Command::new("bash")
                .arg(&script)
                .arg(phase)
                .current_dir(&s.context)
                .env("BUILDX", buildx)
                .env("KILN_ROOT", &s.root)
                .env("REGISTRY", &registry.addr)
                .env("CACHE_DIR", &cache_dir)
                .env("S3_ENDPOINT", moto.endpoint())
                .env("AWS_ACCESS_KEY_ID", &moto.key_id)
                .env("AWS_SECRET_ACCESS_KEY", &moto.secret)
                .env("OUT", &out),
        );
        let log = fs::read_to_string(out.join(format!("{phase}.log"))).unwrap_or_default();
        assert!(ran.status.success(), "{phase}: {}\n{log}", stderr(&ran));
        (
            log,
            fs::read_to_string(out.join(format!("{phase}.digest"))).unwrap(),
        )
    };
    let kiln = crate::harness::binary("kiln").display().to_string();
    let (first_log, first) = run(&both.embedded, kiln.clone(), "first");
    assert!(first_log.contains("exporting cache to"), "{first_log}");
    let (_, addr, _) = both.each()[1];
    let through = format!("{kiln} --addr {}", addr.unwrap());
    let (again_log, again) = run(&both.through, through, "again");
    assert_eq!(
        again_log.matches(" DONE").count(),
        0,
        "every step CACHED: {again_log}"
    );
    assert_eq!(again_log.matches(" CACHED").count(), 2, "{again_log}");
    assert_eq!(first, again, "the same image, pushed from a fresh store");
    let manifest = raw_json(&format!("{}/ci/app:again", registry.addr));
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"],
        "ci-app"
    );
    let config = crate::harness::run(Command::new("skopeo").args([
        "inspect",
        "--config",
        "--tls-verify=false",
        &format!("docker://{}/ci/app:again", registry.addr),
    ]));
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.revision"],
        "0123abcd"
    );
    assert_eq!(
        format!("sha256:{}", first.trim().trim_start_matches("sha256:")),
        Digest::of(&raw_manifest(&format!("{}/ci/app:again", registry.addr))).to_string()
    );
}
