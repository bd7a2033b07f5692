//! A store with a busybox base image (Debian's busybox-static) for the
//! build tests, and their context directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_testing::{Need, require};

use crate::harness::{kiln, run};

/// What a build needs: root (the sandbox) and busybox (the base image).
pub(crate) const BUILD: [Need; 2] = [Need::Root, Need::Busybox];

/// Whether the build tests can run ([`BUILD`]); when not, the test is
/// skipped (or fails under `KILN_REQUIRE_ALL=1`).
pub(crate) fn ready() -> bool {
    require(&BUILD)
}

/// A store with `base:busybox` imported, and a context directory.
pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) context: PathBuf,
}

/// A busybox root filesystem tarball in `dir`.
pub(crate) fn base_tarball(dir: &Path) -> PathBuf {
    base_tarball_with(dir, |_| {})
}

/// Like [`base_tarball`], with `tweak` applied to the root filesystem
/// before it is packed (a hostile image: symlinks out, device nodes).
pub(crate) fn base_tarball_with(dir: &Path, tweak: impl FnOnce(&Path)) -> PathBuf {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::create_dir_all(rootfs.join("tmp")).unwrap();
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "ls", "rm", "id", "sleep", "test", "true", "touch", "wc", "mkdir",
        "stat", "pwd",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    tweak(&rootfs);
    let tarball = dir.join("base.tar");
    // Fixed mtimes: the same tarball bytes wherever it is made.
    let status = Command::new("tar")
        .arg("--mtime=@1600000000")
        .arg("--sort=name")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    tarball
}

impl Setup {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tarball = base_tarball(dir.path());
        Self::with_base(dir, &tarball)
    }

    /// Like [`Setup::new`], with a base whose layer is `test`'s own (it
    /// holds `/etc/kiln-test` naming it): for the tests that hand images
    /// to dockerd, so that none shares a layer with another's (see
    /// [`crate::harness::dockerd_turn`]).
    pub(crate) fn own_base(test: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tarball = base_tarball_with(dir.path(), |root| {
            fs::write(root.join("etc/kiln-test"), test).unwrap();
        });
        Self::with_base(dir, &tarball)
    }

    /// A store with `tarball` imported as `base:busybox` (created at a fixed time).
    pub(crate) fn with_base(dir: tempfile::TempDir, tarball: &Path) -> Self {
        let root = dir.path().join("root");
        let context = dir.path().join("context");
        fs::create_dir_all(&context).unwrap();
        let s = Self { dir, root, context };
        let import = kiln()
            .env("KILN_ROOT", &s.root)
            .env("SOURCE_DATE_EPOCH", "1600000000")
            .args(["import", tarball.to_str().unwrap(), "base:busybox"])
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "{}",
            String::from_utf8_lossy(&import.stderr)
        );
        s
    }

    /// Every layer of image `name`, concatenated (from a docker-archive,
    /// whose layers are plain tars), as text to search.
    pub(crate) fn layers_text(&self, name: &str) -> String {
        self.layers_text_of(&[], name)
    }

    /// Like [`Setup::layers_text`], with the image read through kilnd.
    pub(crate) fn layers_text_through(&self, addr: &str, name: &str) -> String {
        self.layers_text_of(&["--addr", addr], name)
    }

    fn layers_text_of(&self, global: &[&str], name: &str) -> String {
        let archive = self
            .dir
            .path()
            .join(format!("{}.tar", name.replace([':', '/'], "-")));
        self.ok(&[global, &["save", "-o", archive.to_str().unwrap(), name]].concat());
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("--wildcards")
            .arg("*/layer.tar")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// 20,000 small files in the context, as the many-files workload:
    /// `src/d000/f000.txt` … `src/d199/f099.txt`.
    pub(crate) fn many_files(&self) {
        for d in 0..200 {
            let dir = self.context.join(format!("src/d{d:03}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..100 {
                fs::write(
                    dir.join(format!("f{f:03}.txt")),
                    format!("file {d} {f}\n").repeat(8),
                )
                .unwrap();
            }
        }
    }

    pub(crate) fn kiln(&self, args: &[&str]) -> std::process::Output {
        run(kiln().env("KILN_ROOT", &self.root).args(args))
    }

    pub(crate) fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.kiln(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "kiln {args:?} failed:\n{stderr}");
        (stdout, stderr)
    }

    /// Builds `dockerfile` (with `extra` flags) into a fresh directory
    /// (`-o type=local`) and returns it; a failed build fails the test
    /// with kiln's standard error.
    pub(crate) fn build_to_dir(&self, dockerfile: &str, extra: &[&str]) -> PathBuf {
        let dest = self.dir.path().join("out");
        let _ = fs::remove_dir_all(&dest);
        let output = format!("type=local,dest={}", dest.display());
        let mut args = vec!["--progress=plain", "-o", output.as_str()];
        args.extend_from_slice(extra);
        let out = self.build(dockerfile, &args);
        assert!(
            out.status.success(),
            "{dockerfile}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dest
    }

    pub(crate) fn build(&self, dockerfile: &str, extra: &[&str]) -> std::process::Output {
        fs::write(self.context.join("Dockerfile"), dockerfile).unwrap();
        let mut args = vec!["build"];
        args.extend_from_slice(extra);
        args.push(self.context.to_str().unwrap());
        self.kiln(&args)
    }
}

/// Asserts that `out`'s standard error says `needle` (and shows it if not).
pub(crate) fn assert_stderr_has(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
}
