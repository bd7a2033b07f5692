//! What kiln's tests share, in every crate: their prerequisites, their
//! waits, and the deep trees a hostile step makes ([`deep_tree`]). A
//! dev-dependency only (std only), so that the unit tests of each crate
//! and the end-to-end tests in `tests/` use one implementation.
//!
//! # Prerequisites
//!
//! A test that needs something the machine may lack (root, a tool, a
//! running dockerd) starts with [`require`]:
//!
//! ```
//! use kiln_testing::{Need, require};
//!
//! fn a_build_fetches_a_git_context() {
//!     if !require(&[Need::Root, Need::Busybox, Need::Tool("git")]) {
//!         return;
//!     }
//!     // …
//! }
//! ```
//!
//! When something is missing, [`require`] writes one line to stderr —
//! `SKIP <test>: needs git (not on PATH)` — past libtest's output capture,
//! so that every run shows what it did not run, and the test returns.
//! With `KILN_REQUIRE_ALL=1` (CI) it panics instead: the test fails, and a
//! green run is one that ran every test it defines.
//!
//! # Waits
//!
//! A test never sleeps for something to happen: it waits for the effect
//! with [`wait_until`] (or [`wait_for`], which returns what it waited
//! for), which fails the test with what it awaited when the time is up.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The variable that turns every skip into a failure (`1`).
pub const REQUIRE_ALL: &str = "KILN_REQUIRE_ALL";

/// The variable that keeps BuildKit's conformance data a skip under
/// [`REQUIRE_ALL`] (`1`): the data is read in place from `../shared`,
/// outside the repository, and a clone without it skips those tests with
/// a notice (`.ci/run` sets it, and says so, only when the data is absent).
pub const CONFORMANCE_OPTIONAL: &str = "KILN_CONFORMANCE_OPTIONAL";

/// Debian's `docker` client (docker.io), the one the tests drive.
pub const DOCKER: &str = "/usr/bin/docker";

/// Debian's docker-registry binary.
pub const REGISTRY: &str = "/usr/bin/docker-registry";

/// Debian's busybox-static for arm64, unpacked (`bin/busybox`): the root
/// filesystem of the emulation tests' arm64 base, from Debian's archive
/// rather than a registry. `.ci/run` makes it (`dpkg --add-architecture
/// arm64`, `apt-get download busybox-static:arm64`, `dpkg-deb -x`).
pub const ARM64_ROOTFS: &str = "/var/lib/kiln-test/arm64";

/// Where the kernel lists its binfmt_misc handlers.
const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// Something a test needs from the machine it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Running as root: the sandbox, mounts, owners other than our own.
    Root,
    /// `/bin/busybox`, a static busybox (Debian's busybox-static): the
    /// root filesystem of test images and sandboxes.
    Busybox,
    /// The overlay filesystem (listed in `/proc/filesystems`).
    Overlayfs,
    /// A program on `PATH` (umoci, skopeo, git, ssh-agent, slirp4netns, …).
    Tool(&'static str),
    /// Debian's docker-registry at [`REGISTRY`].
    Registry,
    /// A dockerd that answers `docker info` ([`DOCKER`]).
    Dockerd,
    /// `python3` that imports grpc and grpc_tools (grpcio, grpcio-tools).
    PythonGrpc,
    /// `python3` that imports moto's server (`moto[server]`): a real
    /// S3-compatible server on loopback for the `type=s3` cache tests.
    PythonMoto,
    /// `python3` that imports yaml (Debian's python3-yaml): YAML read as a
    /// full parser reads it (deploy/'s Kubernetes manifests).
    PythonYaml,
    /// BuildKit's conformance data, [`conformance_dir`].
    Conformance,
    /// An arm64 busybox at [`ARM64_ROOTFS`] that this machine runs in a
    /// sandbox: natively, or through an enabled binfmt_misc handler with
    /// the fix-binary flag (its interpreter opened when registered, so
    /// found from inside any root filesystem), as Debian's
    /// qemu-user-static registers it.
    Arm64Busybox,
}

impl Need {
    /// `Err(why)` when the machine lacks it; `why` completes "needs …".
    fn check(self) -> Result<(), String> {
        match self {
            Self::Root => {
                // /proc/self belongs to the effective user.
                let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
                match uid {
                    0 => Ok(()),
                    u32::MAX => Err("root (cannot read /proc/self)".into()),
                    uid => Err(format!("root (running as uid {uid})")),
                }
            }
            Self::Busybox => file("/bin/busybox", "Debian's busybox-static"),
            Self::Overlayfs => {
                let listed = std::fs::read_to_string("/proc/filesystems")
                    .is_ok_and(|f| f.lines().any(|l| l.ends_with("\toverlay")));
                ok_or(listed, || "overlayfs (not in /proc/filesystems)".into())
            }
            Self::Tool(tool) => {
                let found = std::env::var_os("PATH").is_some_and(|paths| {
                    std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file())
                });
                ok_or(found, || format!("{tool} (not on PATH)"))
            }
            Self::Registry => file(REGISTRY, "Debian's docker-registry"),
            Self::Dockerd => {
                static UP: OnceLock<Result<(), String>> = OnceLock::new();
                UP.get_or_init(|| {
                    let up = Command::new(DOCKER)
                        .arg("info")
                        .output()
                        .is_ok_and(|o| o.status.success());
                    ok_or(up, || {
                        format!("dockerd (`{DOCKER} info` fails: is dockerd running?)")
                    })
                })
                .clone()
            }
            Self::PythonGrpc => {
                static IMPORTS: OnceLock<Result<(), String>> = OnceLock::new();
                IMPORTS
                    .get_or_init(|| {
                        let imports = Command::new("python3")
                            .args(["-c", "import grpc, grpc_tools"])
                            .output()
                            .is_ok_and(|o| o.status.success());
                        ok_or(imports, || {
                            "python3 with grpcio and grpcio-tools \
                             (`import grpc, grpc_tools` fails)"
                                .into()
                        })
                    })
                    .clone()
            }
            Self::PythonMoto => {
                static IMPORTS: OnceLock<Result<(), String>> = OnceLock::new();
                IMPORTS
                    .get_or_init(|| {
                        let imports = Command::new("python3")
                            .args(["-c", "import moto.server, flask"])
                            .output()
                            .is_ok_and(|o| o.status.success());
                        ok_or(imports, || {
                            "python3 with moto[server] \
                             (`import moto.server, flask` fails)"
                                .into()
                        })
                    })
                    .clone()
            }
            Self::PythonYaml => {
                static IMPORTS: OnceLock<Result<(), String>> = OnceLock::new();
                IMPORTS
                    .get_or_init(|| {
                        let imports = Command::new("python3")
                            .args(["-c", "import yaml"])
                            .output()
                            .is_ok_and(|o| o.status.success());
                        ok_or(imports, || {
                            "python3 with yaml (`import yaml` fails: python3-yaml)".into()
                        })
                    })
                    .clone()
            }
            Self::Conformance => {
                let dir = conformance_dir();
                ok_or(dir.is_dir(), || {
                    format!("BuildKit's conformance data ({} not found)", dir.display())
                })
            }
            Self::Arm64Busybox => arm64_busybox(),
        }
    }
}

fn arm64_busybox() -> Result<(), String> {
    let busybox = Path::new(ARM64_ROOTFS).join("bin/busybox");
    let header = elf_header(&busybox).ok_or_else(|| {
        format!(
            "an arm64 busybox at {} (`apt-get download busybox-static:arm64` \
             and `dpkg-deb -x` it into {ARM64_ROOTFS}, as .ci/run does)",
            busybox.display()
        )
    })?;
    let runs = std::env::consts::ARCH == "aarch64" || fix_binary_handler(&header);
    ok_or(runs, || {
        format!(
            "a binfmt_misc handler with the fix-binary flag for arm64 \
             (`apt-get install qemu-user-static binfmt-support`, binfmt_misc \
             mounted at {BINFMT_MISC}, `update-binfmts --enable`)"
        )
    })
}

/// The first 128 bytes of `path` when it is an ELF file.
fn elf_header(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut header = Vec::with_capacity(128);
    std::fs::File::open(path)
        .ok()?
        .take(128)
        .read_to_end(&mut header)
        .ok()?;
    header.starts_with(b"\x7fELF").then_some(header)
}

/// Whether an enabled binfmt_misc handler with the `F` flag matches
/// `header` (its magic, under its mask, at its offset).
fn fix_binary_handler(header: &[u8]) -> bool {
    let read = |path: &Path| {
        use std::io::Read as _;
        let mut text = String::new();
        let file = std::fs::File::open(path).ok()?;
        file.take(4096).read_to_string(&mut text).ok()?;
        Some(text)
    };
    let Ok(entries) = std::fs::read_dir(BINFMT_MISC) else {
        return false;
    };
    let enabled = read(&Path::new(BINFMT_MISC).join("status"));
    enabled.is_some_and(|s| s.trim() == "enabled")
        && entries
            .filter_map(|e| read(&e.ok()?.path()))
            .any(|handler| handler_matches(&handler, header))
}

/// Whether one handler's file (`enabled`, `flags: PF`, `offset 0`,
/// `magic 7f454c46…`, `mask ff…`) says it is enabled, fix-binary, and
/// matches `header`.
fn handler_matches(handler: &str, header: &[u8]) -> bool {
    let field = |name: &str| {
        handler
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let hex = |text: &str| -> Option<Vec<u8>> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect()
    };
    let (Some(flags), Some(offset), Some(magic)) = (
        field("flags:"),
        field("offset ").and_then(|o| o.parse::<usize>().ok()),
        field("magic ").and_then(hex),
    ) else {
        return false;
    };
    let mask = field("mask ")
        .and_then(hex)
        .unwrap_or_else(|| vec![0xff; magic.len()]);
    handler.lines().next() == Some("enabled")
        && flags.contains('F')
        && header.len() >= offset + magic.len()
        && magic
            .iter()
            .zip(&mask)
            .zip(&header[offset..])
            .all(|((m, k), h)| m & k == h & k)
}

fn ok_or(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(why()) }
}

fn file(path: &str, package: &str) -> Result<(), String> {
    ok_or(Path::new(path).is_file(), || format!("{path} ({package})"))
}

/// BuildKit's test data, read in place: `$KILN_CONFORMANCE_DIR`, or
/// `../shared/conformance/buildkit` beside the repository.
pub fn conformance_dir() -> PathBuf {
    std::env::var_os("KILN_CONFORMANCE_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/buildkit"),
        PathBuf::from,
    )
}

/// Whether the machine has everything in `needs`. When it does not: with
/// `KILN_REQUIRE_ALL=1` it panics (the test fails), otherwise it writes
/// `SKIP <test>: needs …` to stderr and returns false, and the test
/// returns. A failure points at the caller.
#[track_caller]
pub fn require(needs: &[Need]) -> bool {
    decide(None, needs, strict(), &mut std::io::stderr())
}

/// [`require`] for a part of a test (`part` says which), the rest of
/// which runs anyway: `SKIP <test> (<part>): needs …`.
#[track_caller]
pub fn require_for(part: &str, needs: &[Need]) -> bool {
    decide(Some(part), needs, strict(), &mut std::io::stderr())
}

/// Whether `KILN_REQUIRE_ALL` is set (to anything but empty or `0`).
fn strict() -> bool {
    std::env::var_os(REQUIRE_ALL).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The skip line goes to `skips`: stderr, past libtest's capture (which
/// takes only print!/eprint!), so that it shows in every run; in one
/// write, so that libtest's own lines do not land inside it.
#[track_caller]
fn decide(part: Option<&str>, needs: &[Need], strict: bool, skips: &mut dyn Write) -> bool {
    let lacking: Vec<(Need, String)> = needs
        .iter()
        .filter_map(|n| n.check().err().map(|why| (*n, why)))
        .collect();
    if lacking.is_empty() {
        return true;
    }
    let optional = lacking.iter().all(|(n, _)| *n == Need::Conformance)
        && std::env::var_os(CONFORMANCE_OPTIONAL).is_some_and(|v| v == "1");
    let strict = strict && !optional;
    let missing: Vec<String> = lacking.into_iter().map(|(_, why)| why).collect();
    let thread = std::thread::current();
    let mut test = thread.name().unwrap_or("a test").to_owned();
    if let Some(part) = part {
        test = format!("{test} ({part})");
    }
    let needs = missing.join(", ");
    if strict {
        panic!("{REQUIRE_ALL} is set and {test} needs {needs}");
    }
    let _ = skips.write_all(format!("SKIP {test}: needs {needs}\n").as_bytes());
    false
}

/// Waits until `done` holds, asking again at growing intervals (1 ms to
/// 25 ms); panics with `what` when `timeout` passes first, at the caller.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    wait_for(timeout, what, || done().then_some(()));
}

/// Waits until `ready` returns a value, and returns it; as [`wait_until`].
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(value) = ready() {
            return value;
        }
        let now = Instant::now();
        assert!(
            now < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// Makes `dir/a/a/…/a`, `levels` directories below `dir` (which must hold
/// no `a` nor `b`), with a file `f` in the deepest one, as a RUN step can:
/// `mkdir b && mv a b/a && mv b a`, again and again. No path longer than
/// `dir/b/a` is ever resolved, so the tree can be far deeper than
/// `PATH_MAX` lets a path name.
#[track_caller]
pub fn deep_tree(dir: &Path, levels: usize) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir(&a).expect("making the deepest directory");
    std::fs::write(a.join("f"), "at the bottom\n").expect("writing its file");
    for _ in 1..levels {
        std::fs::create_dir(&b).expect("making the next level");
        std::fs::rename(&a, b.join("a")).expect("moving the tree down a level");
        std::fs::rename(&b, &a).expect("naming the new top");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_tree_is_as_deep_as_asked() {
        let dir = std::env::temp_dir().join(format!("kiln-testing-deep-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        deep_tree(&dir, 3);
        assert_eq!(
            std::fs::read_to_string(dir.join("a/a/a/f")).unwrap(),
            "at the bottom\n"
        );
        assert!(!dir.join("b").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_is_there_is_required_without_a_word() {
        let mut skips = Vec::new();
        assert!(decide(None, &[Need::Tool("sh")], true, &mut skips));
        assert!(decide(None, &[], true, &mut skips));
        assert!(skips.is_empty());
    }

    #[test]
    fn what_is_missing_skips_or_in_strict_mode_fails() {
        let missing = [Need::Tool("sh"), Need::Tool("kiln-no-such-tool")];
        let mut skips = Vec::new();
        assert!(!decide(None, &missing, false, &mut skips));
        assert!(!decide(Some("a part"), &missing, false, &mut skips));
        assert_eq!(
            String::from_utf8(skips).unwrap(),
            "SKIP tests::what_is_missing_skips_or_in_strict_mode_fails: \
             needs kiln-no-such-tool (not on PATH)\n\
             SKIP tests::what_is_missing_skips_or_in_strict_mode_fails (a part): \
             needs kiln-no-such-tool (not on PATH)\n"
        );
        let failed =
            std::panic::catch_unwind(|| decide(None, &missing, true, &mut std::io::sink()))
                .unwrap_err();
        let message = failed.downcast_ref::<String>().unwrap();
        assert!(
            message.ends_with(
                "what_is_missing_skips_or_in_strict_mode_fails \
                 needs kiln-no-such-tool (not on PATH)"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_fix_binary_handler_matches_the_elf_it_names_under_its_mask() {
        // Debian's qemu-aarch64 as /proc/sys/fs/binfmt_misc lists it.
        let aarch64 = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
                       flags: PF\noffset 0\n\
                       magic 7f454c460201010000000000000000000200b700\n\
                       mask ffffffffffffff00fffffffffffffffffeffffff\n";
        // An ELF64 header of a static aarch64 executable (ET_EXEC,
        // EM_AARCH64), with an OS ABI byte the mask ignores.
        let mut header = b"\x7fELF\x02\x01\x01\x03".to_vec();
        header.extend([0; 8]);
        header.extend([2, 0, 183, 0]);
        assert!(handler_matches(aarch64, &header));
        let mut x86_64 = header.clone();
        x86_64[18] = 62;
        assert!(!handler_matches(aarch64, &x86_64));
        assert!(!handler_matches(&aarch64.replace("PF", "P"), &header));
        assert!(!handler_matches(
            &aarch64.replace("enabled", "disabled"),
            &header
        ));
        assert!(!handler_matches(aarch64, &header[..10]));
        assert!(!handler_matches(
            "enabled\nflags: F\noffset 0\nmagic 7g\n",
            &header
        ));
    }

    #[test]
    fn a_wait_returns_what_it_waited_for_or_fails_with_what() {
        let mut n = 0;
        assert_eq!(
            wait_for(Duration::from_secs(5), "three", || {
                n += 1;
                (n == 3).then_some(n)
            }),
            3
        );
        let timeout = std::panic::catch_unwind(|| {
            wait_until(Duration::from_millis(20), "never", || false);
        });
        let message = timeout.unwrap_err();
        let message = message.downcast_ref::<String>().unwrap();
        assert_eq!(message, "timed out after 20ms waiting for never");
    }
}
