//! RUN steps for other platforms on a worker: a program nothing on this
//! host runs fails with what to do about it, and a program QEMU runs
//! (through a binfmt_misc handler with the fix-binary flag) runs in a
//! sandbox as strict as a native one's: the same seccomp filter,
//! `no_new_privs` and capabilities, on the interpreter the kernel starts.
//! Needs root; the arm64 parts need the arm64 busybox fixture and its
//! handler (`kiln_testing::Need::Arm64Busybox`).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use kiln_testing::{ARM64_ROOTFS, Need, require};
use kiln_worker::exec::{ExecError, ExecRequest, Worker};
use kiln_worker::platforms::Cause;
use kiln_worker::sandbox::spec::Network;
use kiln_worker::sandbox::{Cancel, Sandbox, Stream};

mod common;
use common::{busybox_rootfs, ready};

fn worker(dir: &Path) -> Worker {
    Worker::new(
        dir.join("worker"),
        Sandbox::new(env!("CARGO_BIN_EXE_kiln-sandbox")),
    )
}

fn request(rootfs: &Path, script: &str, platform: &str) -> ExecRequest {
    ExecRequest {
        rootfs: vec![rootfs.to_owned()],
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        network: Network::None,
        privileged: false,
        mounts: Vec::new(),
        sandbox: Default::default(),
        platform: platform.into(),
    }
}

/// Runs `req`: its exit code and output (stdout and stderr), or the error.
fn run(w: &Worker, req: &ExecRequest) -> Result<(i32, String), ExecError> {
    let mut out = Vec::new();
    let outcome = w.exec(
        req,
        &mut |_: Stream, c: &[u8]| out.extend_from_slice(c),
        &Cancel::default(),
    )?;
    let code = outcome.exit_code;
    w.discard(outcome).unwrap();
    Ok((code, String::from_utf8_lossy(&out).into_owned()))
}

/// The busybox root with its busybox the arm64 one, and the applets the
/// tests run.
fn arm64_rootfs(dir: &Path) -> PathBuf {
    let root = busybox_rootfs(&dir.join("arm64"));
    fs::remove_file(root.join("bin/busybox")).unwrap();
    fs::copy(
        Path::new(ARM64_ROOTFS).join("bin/busybox"),
        root.join("bin/busybox"),
    )
    .unwrap();
    for applet in ["uname", "unshare"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root
}

#[test]
fn a_program_for_a_machine_no_handler_runs_is_refused_with_how_to_run_it() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ia64");
    fs::create_dir_all(root.join("bin")).unwrap();
    // An ELF64 header for IA-64 (machine 50): no kernel or QEMU runs it.
    let mut header = b"\x7fELF\x02\x01\x01\x00".to_vec();
    header.extend([0; 8]);
    header.extend([2, 0, 50, 0, 1, 0, 0, 0]);
    header.resize(64, 0);
    fs::write(root.join("bin/sh"), &header).unwrap();
    fs::set_permissions(
        root.join("bin/sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let w = worker(dir.path());
    let Err(ExecError::NotRunnable(refused)) = run(&w, &request(&root, "true", "linux/ia64"))
    else {
        panic!("a foreign program's step must be refused with the platform's reason");
    };
    assert_eq!(refused.cause, Cause::NoHandler);
    assert_eq!(refused.failure.examined, "/bin/sh");
    assert_eq!(refused.failure.header, header);
    let message = refused.to_string();
    assert!(
        message.starts_with(
            "exec /bin/sh: ENOEXEC: Exec format error: the step is for linux/ia64, and \
             /bin/sh is an ELF for machine 50; this host ("
        ) && message.contains("`apt-get install qemu-user-static binfmt-support`")
            && message.ends_with("`kiln debug platforms` lists what this host runs"),
        "{message}"
    );
    // Nothing of the step is left.
    assert_eq!(
        fs::read_dir(dir.path().join("worker/steps"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn an_emulated_step_is_confined_as_a_native_one() {
    if !ready() || !require(&[Need::Arm64Busybox]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let native = busybox_rootfs(dir.path());
    let arm64 = arm64_rootfs(dir.path());
    let w = worker(dir.path());
    let (code, arch) = run(&w, &request(&arm64, "uname -m", "linux/arm64")).unwrap();
    assert_eq!((code, arch.as_str()), (0, "aarch64\n"));

    // The process the kernel runs is QEMU's, and /proc/self is its: it
    // carries the step's filter, no_new_privs and capability sets.
    let confinement = "grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):' \
                       /proc/self/status";
    let (code, emulated) = run(&w, &request(&arm64, confinement, "linux/arm64")).unwrap();
    assert_eq!(code, 0, "{emulated}");
    let (_, native_status) = run(&w, &request(&native, confinement, "")).unwrap();
    assert_eq!(emulated, native_status);
    assert!(
        emulated.contains("Seccomp:\t2\n") && emulated.contains("NoNewPrivs:\t1\n"),
        "{emulated}"
    );

    // A call the sandbox refuses is refused to the emulated program too
    // (QEMU makes it for it), and allowed when the step is privileged.
    let (code, out) = run(&w, &request(&arm64, "unshare -m true", "linux/arm64")).unwrap();
    assert_ne!(code, 0);
    assert!(out.contains("Operation not permitted"), "{out}");
    let privileged = ExecRequest {
        privileged: true,
        ..request(&arm64, "unshare -m true", "linux/arm64")
    };
    assert_eq!(run(&w, &privileged).unwrap().0, 0);
}
