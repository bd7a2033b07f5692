//! Multi-platform builds: `kiln build --platform linux/amd64,linux/arm64`
//! makes one index whose arm64 image's RUN steps ran under emulation and
//! whose amd64 image's ran natively; a `FROM --platform=$BUILDPLATFORM`
//! stage runs once for both; the index leaves as one (a directory per
//! platform, a push). The arm64 base is Debian's busybox-static for arm64
//! (no registry), combined with this machine's busybox into one
//! multi-platform base by a build.

use std::fs;
use std::process::Command;

use kiln_testing::{Need, require};

use crate::busybox::{BUILD, Setup};
use crate::emulation::arm64_setup;
use crate::farm::{FarmWorker, listing, wait_for, workers};
use crate::kilnd::Kilnd;
use crate::registry::{REGISTRY_TEST, Registry, stderr};

/// The base, for both platforms: each platform's stage is its own image.
const MULTI_BASE: &str = "FROM base:busybox AS base-amd64\n\
                          FROM base:arm64 AS base-arm64\n\
                          FROM base-$TARGETARCH\n";

/// A build-platform stage (runs once, natively) and a step per target.
pub(crate) const APP: &str = "FROM --platform=$BUILDPLATFORM base:multi AS build\n\
                   RUN echo built once on $(uname -m) > /built\n\
                   FROM base:multi\n\
                   COPY --from=build /built /built\n\
                   RUN uname -m > /arch\n";

pub(crate) const BOTH: &str = "linux/amd64,linux/arm64";

/// What these tests need: an emulated arm64 build on an amd64 host.
pub(crate) fn ready(more: &[Need]) -> bool {
    let needs = [&BUILD[..], &[Need::Arm64Busybox], more].concat();
    if !require(&needs) {
        return false;
    }
    // The base for amd64 is this machine's busybox.
    std::env::consts::ARCH == "x86_64"
}

/// A store with `base:multi`: this machine's busybox for amd64, Debian's
/// arm64 one for arm64.
pub(crate) fn multi_setup() -> Setup {
    let s = arm64_setup();
    let out = s.build(MULTI_BASE, &["--platform", BOTH, "-t", "base:multi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    s
}

#[test]
fn two_platforms_make_one_index_each_running_its_own_steps_and_the_build_stage_once() {
    if !ready(&[]) {
        return;
    }
    let s = multi_setup();
    let out_dir = s.dir.path().join("out");
    let out = s.build(
        APP,
        &[
            "--progress",
            "plain",
            "--platform",
            BOTH,
            "-t",
            "app:multi",
            "-o",
            &format!("type=local,dest={}", out_dir.display()),
        ],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    let read = |p: &str| fs::read_to_string(out_dir.join(p)).unwrap();
    assert_eq!(read("linux_amd64/arch"), "x86_64\n");
    assert_eq!(read("linux_arm64/arch"), "aarch64\n");
    // One native run of the build stage serves both targets.
    assert_eq!(read("linux_arm64/built"), "built once on x86_64\n");
    assert_eq!(read("linux_amd64/built"), read("linux_arm64/built"));
    let runs = |what: &str| log.lines().filter(|l| l.ends_with(what)).count();
    assert_eq!(
        runs("[linux/amd64 build 2/2] RUN echo built once on $(uname -m) > /built"),
        1,
        "{log}"
    );
    assert_eq!(
        runs("[linux/arm64 stage-1 3/3] RUN uname -m > /arch"),
        1,
        "{log}"
    );
    assert_eq!(
        runs("[linux/amd64 stage-1 3/3] RUN uname -m > /arch"),
        1,
        "{log}"
    );

    // The tag names an index of the two platforms' images.
    let (inspect, _) = s.ok(&["inspect", "app:multi"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["Architecture"], "amd64", "the host's entry: {inspect}");

    // A second build of the same is every step cached, for both platforms.
    let again = s.build(APP, &["--progress", "plain", "--platform", BOTH]);
    let log = stderr(&again);
    assert!(again.status.success(), "{log}");
    assert_eq!(log.matches(" DONE").count(), 0, "nothing ran: {log}");

    // A docker archive holds one image: refused before anything runs.
    let docker = s.build(APP, &["--platform", BOTH, "-o", "type=docker,dest=x.tar"]);
    assert!(!docker.status.success());
    crate::busybox::assert_stderr_has(&docker, "-o type=docker takes one platform");
}

#[test]
fn a_two_platform_push_is_an_index_of_both_images_and_their_cache_serves_an_empty_store() {
    if !ready(&REGISTRY_TEST) {
        return;
    }
    let registry = Registry::with_auth("");
    let s = multi_setup();
    let name = format!("{}/multi/app:1", registry.addr);
    let base = format!("{}/multi/base:1", registry.addr);
    let cache = format!("type=registry,ref={}/multi/cache:1,mode=max", registry.addr);
    let oci = s.dir.path().join("app-oci.tar");
    let oci_output = format!("type=oci,dest={}", oci.display());
    let push = [
        ["--platform", BOTH, "-t", &name, "--cache-to", &cache].as_slice(),
        &["-o", "type=image,push=true", "-o", &oci_output],
    ]
    .concat();
    let out = s.build(APP, &push);
    assert!(out.status.success(), "{}", stderr(&out));

    // The OCI output is the index too: skopeo copies every platform.
    let archive = format!("oci-archive:{}", oci.display());
    let layout = format!("oci:{}", s.dir.path().join("layout").display());
    let copied = Command::new("skopeo")
        .args(["copy", "--all", &archive, &layout])
        .output()
        .unwrap();
    assert!(copied.status.success(), "{}", stderr(&copied));
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", &archive])
        .output()
        .unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(raw["manifests"].as_array().map(Vec::len), Some(2), "{raw}");

    let skopeo = |args: &[&str]| {
        let out = Command::new("skopeo")
            .args(args)
            .arg("--tls-verify=false")
            .arg(format!("docker://{name}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let index = skopeo(&["inspect", "--raw"]);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}/{}", m["platform"]["os"], m["platform"]["architecture"]))
        .collect();
    assert_eq!(platforms, ["\"linux\"/\"amd64\"", "\"linux\"/\"arm64\""]);
    // Each entry is a whole image (skopeo reads its config and layers).
    for arch in ["amd64", "arm64"] {
        let image = skopeo(&["inspect", "--override-arch", arch]);
        assert_eq!(image["Architecture"], arch, "{image}");
        assert_eq!(image["Layers"].as_array().unwrap().len(), 3, "{image}");
    }

    // An empty store pulls the base index whole and rebuilds both
    // platforms from the registry's cache: no step runs.
    s.ok(&["tag", "base:multi", &base]);
    s.ok(&["push", &base]);
    let fresh = Setup::new();
    // The app's index itself comes whole into an empty store.
    fresh.ok(&["pull", "--all-platforms", &name]);
    let (inspect, _) = fresh.ok(&["inspect", "--platform", "linux/arm64", &name]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["Architecture"], "arm64", "{inspect}");
    let (pulled, _) = fresh.ok(&["pull", "--all-platforms", &base]);
    assert!(pulled.contains("linux/arm64"), "{pulled}");
    fresh.ok(&["tag", &base, "base:multi"]);
    let from = [
        "--progress",
        "plain",
        "--platform",
        BOTH,
        "--cache-from",
        &cache,
    ];
    let again = fresh.build(APP, &from);
    let log = stderr(&again);
    assert!(again.status.success(), "{log}");
    assert_eq!(log.matches(" DONE").count(), 0, "nothing ran: {log}");
    assert!(
        log.matches(" CACHED").count() >= 5,
        "both platforms' steps: {log}"
    );
}

#[test]
fn through_kilnd_an_arm64_step_goes_to_a_farm_worker_that_runs_arm64() {
    if !ready(&[]) {
        return;
    }
    let s = arm64_setup();
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let _worker = FarmWorker::start(&s, &kilnd, "w1", &[]);
    wait_for(&s, &addr, "w1 to attach", |w| w.len() == 1);
    // This machine runs arm64 under emulation: the worker says so.
    let [id, platform, emulated, ..] = listing(&s, &addr).remove(0);
    assert_eq!((id.as_str(), platform.as_str()), ("w1", "linux/amd64"));
    assert!(
        emulated.split(',').any(|p| p == "linux/arm64"),
        "{emulated}"
    );

    // No native arm64 worker: the one that emulates it runs the step.
    let out_dir = s.dir.path().join("out");
    let out = s.build(
        "FROM base:arm64\nRUN uname -m > /arch\n",
        &[
            "--addr",
            &addr,
            "--platform",
            "linux/arm64",
            "-o",
            &format!("type=local,dest={}", out_dir.display()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(out_dir.join("arch")).unwrap(),
        "aarch64\n"
    );
    assert_eq!(workers(&s, &addr), [("w1".to_owned(), 0, 1)]);
}
