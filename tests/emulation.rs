//! Foreign platforms: a base imported for another platform (`kiln import
//! --platform`), its RUN steps under QEMU user emulation registered in
//! binfmt_misc, the error when nothing on this host runs a step's program,
//! and `kiln debug platforms`. The arm64 base is Debian's busybox-static
//! for arm64 (`kiln_testing::ARM64_ROOTFS`, unpacked by `.ci/run`): no
//! registry. No test here changes the host's binfmt_misc registrations
//! (other tests run at the same time).

use std::fs;
use std::path::{Path, PathBuf};

use kiln_testing::{ARM64_ROOTFS, Need, require};

use crate::busybox::{BUILD, Setup, base_tarball_with};
use crate::harness::{kiln, run};
use crate::kilnd::{Kilnd, grpc};

/// What the emulated builds need: a build's, and the arm64 busybox with a
/// handler that runs it.
const EMULATED: [Need; 3] = [BUILD[0], BUILD[1], Need::Arm64Busybox];

/// A busybox root filesystem tarball whose busybox is the arm64 one.
fn arm64_tarball(dir: &Path) -> PathBuf {
    base_tarball_with(dir, |root| {
        let busybox = root.join("bin/busybox");
        fs::remove_file(&busybox).unwrap();
        fs::copy(Path::new(ARM64_ROOTFS).join("bin/busybox"), &busybox).unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/uname")).unwrap();
    })
}

/// A store with `base:busybox` (this machine's) and `base:arm64`, imported
/// with `--platform linux/arm64`.
pub(crate) fn arm64_setup() -> Setup {
    let s = Setup::new();
    let tarball = arm64_tarball(&s.dir.path().join("arm64"));
    s.ok(&[
        "import",
        "--platform",
        "linux/arm64",
        tarball.to_str().unwrap(),
        "base:arm64",
    ]);
    s
}

/// `kiln inspect`'s `(Os, Architecture, Variant)` of `name`.
fn platform_of(s: &Setup, global: &[&str], name: &str) -> (String, String, Option<String>) {
    let (inspect, _) = s.ok(&[global, &["inspect", name]].concat());
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let text = |key: &str| v[0][key].as_str().map(str::to_owned);
    (
        text("Os").unwrap_or_default(),
        text("Architecture").unwrap_or_default(),
        text("Variant"),
    )
}

#[test]
fn import_writes_the_platform_it_is_given_embedded_and_through_kilnd() {
    if !require(&BUILD) {
        return;
    }
    let s = Setup::new();
    let tarball = s.dir.path().join("base.tar");
    let tarball = tarball.to_str().unwrap();
    s.ok(&["import", "--platform", "linux/arm/v7", tarball, "here:arm"]);
    assert_eq!(
        platform_of(&s, &[], "here:arm"),
        ("linux".into(), "arm".into(), Some("v7".into()))
    );
    // This machine's by default (base:busybox, imported without it).
    let host = platform_of(&s, &[], "base:busybox");
    assert_eq!((host.0.as_str(), host.2.as_deref()), ("linux", None));
    assert_eq!(host.1, kiln_frontend::platform::host().architecture);

    let out = s.kiln(&["import", "--platform", "linux/", tarball, "bad:1"]);
    assert!(!out.status.success());
    crate::busybox::assert_stderr_has(
        &out,
        "invalid platform \"linux/\": expected os/arch[/variant], e.g. linux/amd64",
    );

    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    s.ok(&[
        "--addr",
        &addr,
        "import",
        "--platform",
        "arm64",
        tarball,
        "there:arm64",
    ]);
    assert_eq!(
        platform_of(&s, &["--addr", &addr], "there:arm64"),
        ("linux".into(), "arm64".into(), None)
    );
    // kilnd checks what a client other than kiln's sends.
    use kiln_proto::control::v1 as pb;
    let chunk = pb::ImportChunk {
        name: "raw:1".into(),
        data: fs::read(tarball).unwrap(),
        created: None,
        platform: "linux/$X".into(),
    };
    let status = grpc(&s.dir.path().join("kilnd.sock"), |channel| async move {
        pb::control_client::ControlClient::new(channel)
            .import(tokio_stream::iter([chunk]))
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("invalid platform \"linux/$X\""),
        "{status:?}"
    );
}

#[test]
fn an_arm64_base_runs_its_steps_under_emulation() {
    if !require(&EMULATED) {
        return;
    }
    let s = arm64_setup();
    assert_eq!(
        platform_of(&s, &[], "base:arm64"),
        ("linux".into(), "arm64".into(), None)
    );
    let out = s.build_to_dir("FROM base:arm64\nRUN uname -m > /arch\n", &[]);
    assert_eq!(fs::read_to_string(out.join("arch")).unwrap(), "aarch64\n");
}

#[test]
fn debug_platforms_lists_this_host_native_and_arm64_emulated() {
    if !require(&[Need::Arm64Busybox]) {
        return;
    }
    let out = run(kiln().args(["debug", "platforms"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = kiln_frontend::platform::format(&kiln_frontend::platform::host());
    assert!(text.starts_with(&format!("native:\n  {host}\n")), "{text}");
    if host == "linux/arm64" {
        return;
    }
    // In the emulated section, with its handler and interpreter.
    let (_, emulated) = text
        .split_once("\nemulated (binfmt_misc handlers with the fix-binary flag, in /proc/sys/fs/binfmt_misc):\n")
        .unwrap_or_else(|| panic!("{text}"));
    let emulated = emulated.split("\nunusable").next().unwrap_or_default();
    let arm64 = emulated
        .lines()
        .find(|l| l.starts_with("  linux/arm64 "))
        .unwrap_or_else(|| panic!("{text}"));
    let fields: Vec<&str> = arm64.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{arm64}");
    let handler =
        fs::read_to_string(Path::new("/proc/sys/fs/binfmt_misc").join(fields[1])).unwrap();
    assert!(
        handler.starts_with("enabled\n")
            && handler.contains(&format!("interpreter {}\n", fields[2]))
            && handler
                .lines()
                .any(|l| l.starts_with("flags: ") && l.contains('F')),
        "{handler}"
    );
}

/// A root filesystem whose `/bin/sh` is an ELF header for IA-64 (machine
/// 50), which neither the kernel nor QEMU runs, as a tarball.
fn ia64_tarball(dir: &Path) -> PathBuf {
    base_tarball_with(dir, |root| {
        let mut header = b"\x7fELF\x02\x01\x01\x00".to_vec();
        header.extend([0; 8]);
        header.extend([2, 0, 50, 0, 1, 0, 0, 0]);
        header.resize(64, 0);
        let sh = root.join("bin/sh");
        fs::remove_file(&sh).unwrap();
        fs::write(&sh, header).unwrap();
        fs::set_permissions(&sh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    })
}

#[test]
fn a_step_nothing_here_runs_fails_naming_its_line_its_platform_and_the_fix() {
    if !require(&BUILD) {
        return;
    }
    let s = Setup::new();
    let tarball = ia64_tarball(&s.dir.path().join("ia64"));
    s.ok(&[
        "import",
        "--platform",
        "linux/ia64",
        tarball.to_str().unwrap(),
        "base:ia64",
    ]);
    let host = kiln_frontend::platform::format(&kiln_frontend::platform::host());
    let reason = |step_platform: &str, conjunction: &str| {
        format!(
            "exec /bin/sh: ENOEXEC: Exec format error: the step is for {step_platform}, \
             {conjunction} /bin/sh is an ELF for machine 50; this host ({host}) does not run \
             machine 50 natively, and no binfmt_misc handler with the fix-binary flag is \
             registered for it; to run it under QEMU user emulation, install qemu-user-static \
             and binfmt-support (`apt-get install qemu-user-static binfmt-support` on Debian) \
             or run `docker run --privileged --rm tonistiigi/binfmt --install all`; `kiln debug \
             platforms` lists what this host runs\n"
        )
    };
    // FROM without --platform: the step is for the build's platform.
    let out = s.build("FROM base:ia64\nRUN true\n", &["--progress=plain"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "error: [stage-0 2/2] RUN true (Dockerfile line 2): {}",
        reason(&host, "but")
    );
    assert!(stderr.ends_with(&expected), "{stderr}");

    let dockerfile = "ARG P=linux/ia64\nFROM --platform=$P base:ia64\n\nRUN true\n";
    let expected = format!(
        "error: [stage-0 2/2] RUN true (Dockerfile line 4): {}",
        reason("linux/ia64", "and")
    );
    let out = s.build(dockerfile, &["--progress=plain"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.ends_with(&expected), "{stderr}");
    let kilnd = Kilnd::start(&s);
    let out = s.build(dockerfile, &["--progress=plain", "--addr", &kilnd.addr()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.ends_with(&expected), "through kilnd: {stderr}");
}
