use std::fs;
use std::path::Path;

use kiln_testing::{ARM64_ROOTFS, Need, require_for};

use super::*;
use crate::sandbox::spec::ExecFailure;

const X86_64: Elf = Elf {
    class: 2,
    data: 1,
    machine: 62,
};
const AARCH64: Elf = Elf {
    class: 2,
    data: 1,
    machine: 183,
};
const I386: Elf = Elf {
    class: 1,
    data: 1,
    machine: 3,
};
/// IA-64's: an ELF machine kiln does not know and QEMU does not emulate.
const IA64: Elf = Elf {
    class: 2,
    data: 1,
    machine: 50,
};

/// Handlers as Debian's qemu-user-static registers them.
const QEMU_AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
    flags: PF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n\
    mask ffffffffffffff00fffffffffffffffffeffffff\n";
const QEMU_ARM: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\n\
    flags: PF\noffset 0\nmagic 7f454c4601010100000000000000000002002800\n\
    mask ffffffffffffff00fffffffffffffffffeffffff\n";
const QEMU_RISCV64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/riscv64-binfmt-P\n\
    flags: PF\noffset 0\nmagic 7f454c460201010000000000000000000200f300\n\
    mask ffffffffffffff00fffffffffffffffffeffffff\n";
/// MIPS n32 little-endian: told from o32 by `e_flags` (offset 36).
const QEMU_MIPSN32EL: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/mipsn32el-binfmt-P\n\
    flags: PF\noffset 0\n\
    magic 7f454c46010101000000000000000000020008000000000000000000000000000000000020\n\
    mask ffffffffffffff00fefffffffffffffffeffffff0000000000000000000000000000000020\n";
const QEMU_I386: &str = "enabled\ninterpreter /usr/bin/qemu-i386-static\nflags: F\noffset 0\n\
    magic 7f454c4601010100000000000000000002000300\n\
    mask fffffffffffefefcfffffffffffffffffeffffff\n";
const JAR: &str = "enabled\ninterpreter /usr/bin/jexec\nflags: \noffset 0\nmagic 504b0304\n";

/// A binfmt_misc directory with `status` and `handlers` (name, text).
fn binfmt_dir(status: Option<&str>, handlers: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(status) = status {
        fs::write(dir.path().join("status"), format!("{status}\n")).unwrap();
        fs::write(dir.path().join("register"), "").unwrap();
    }
    for (name, text) in handlers {
        fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn platforms_of(entries: &[impl AsRef<str>]) -> Vec<&str> {
    entries.iter().map(AsRef::as_ref).collect()
}

impl AsRef<str> for Emulated {
    fn as_ref(&self) -> &str {
        self.platform
    }
}

impl AsRef<str> for Unusable {
    fn as_ref(&self) -> &str {
        self.platform
    }
}

impl AsRef<str> for Native {
    fn as_ref(&self) -> &str {
        &self.platform
    }
}

#[test]
fn elf_headers_name_their_platform_and_anything_else_is_no_elf() {
    assert_eq!(Elf::parse(&X86_64.header(2)), Some(X86_64));
    assert_eq!(AARCH64.describe(), "linux/arm64");
    assert_eq!(IA64.describe(), "machine 50");
    assert_eq!(Elf::of_platform("linux/arm/v6").unwrap().machine, 40);
    assert_eq!(Elf::of_platform("linux/ia64"), None);
    let s390x = Elf::parse(&Elf::of_platform("linux/s390x").unwrap().header(2)).unwrap();
    assert_eq!((s390x.data, s390x.machine), (2, 22), "big-endian");
    for hostile in [
        &b""[..],
        b"\x7fELF",
        b"#!/bin/sh\n-c true\n\0\0\0",
        b"\x7fELF\x02\x07",
    ] {
        assert_eq!(Elf::parse(hostile), None, "{hostile:?}");
    }
    let mut bad_order = AARCH64.header(2);
    bad_order[5] = 9;
    assert_eq!(Elf::parse(&bad_order), None);
}

#[test]
fn real_programs_are_for_the_platforms_they_were_built_for() {
    let host = elf::host().expect("kiln's own program is an ELF file");
    let expected = match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        other => panic!("a test host kiln does not expect: {other}"),
    };
    assert_eq!(host.describe(), expected);
    if require_for("the arm64 busybox", &[Need::Arm64Busybox]) {
        let busybox = Path::new(ARM64_ROOTFS).join("bin/busybox");
        assert_eq!(Elf::of_file(&busybox), Some(AARCH64));
    }
}

#[test]
fn handler_files_parse_as_the_kernel_writes_them_and_match_under_their_mask() {
    let h = Handler::parse("qemu-aarch64", QEMU_AARCH64).unwrap();
    assert!(h.enabled && h.fix_binary());
    assert_eq!(h.interpreter, "/usr/libexec/qemu-binfmt/aarch64-binfmt-P");
    assert!(h.runs(AARCH64) && !h.runs(X86_64) && !h.runs(IA64));
    // The mask ignores the OS ABI byte and tells static from PIE apart
    // by one bit.
    let mut header = AARCH64.header(3);
    header[7] = 3;
    assert!(h.matches(&header));
    assert!(!h.matches(&header[..19]), "a short file is no match");

    let n32 = Handler::parse("qemu-mipsn32el", QEMU_MIPSN32EL).unwrap();
    let o32 = Elf::of_platform("linux/mipsle").unwrap();
    assert!(!n32.runs(o32), "n32 is told apart by e_flags");
    let mut n32_header = o32.header(2);
    n32_header[36] = 0x20;
    assert!(n32.matches(&n32_header));

    let jar = Handler::parse("jar", JAR).unwrap();
    assert!(!jar.fix_binary() && MACHINES.iter().all(|m| !jar.runs(m.elf)));
    let by_extension = "enabled\ninterpreter /usr/bin/wine\nflags: \nextension .exe\n";
    assert_eq!(
        Handler::parse("wine", by_extension).unwrap().rule,
        binfmt::Rule::Extension("exe".into())
    );
}

#[test]
fn hostile_handler_files_are_skipped_not_trusted() {
    for hostile in [
        "",
        "maybe\ninterpreter /x\nflags: F\noffset 0\nmagic 7f\n",
        "enabled\nflags: F\noffset 0\nmagic 7f454c46\n",
        "enabled\ninterpreter /x\noffset 0\nmagic 7f454c46\n",
        "enabled\ninterpreter /x\nflags: F\nmagic 7f454c46\n",
        "enabled\ninterpreter /x\nflags: F\noffset 0\nmagic 7f454c4\n",
        "enabled\ninterpreter /x\nflags: F\noffset 0\nmagic 7fé54c46\n",
        "enabled\ninterpreter /x\nflags: F\noffset 0\nmagic 7f454c46\nmask ff\n",
        "enabled\ninterpreter /x\nflags: F\noffset 0\nmagic \n",
        "enabled\ninterpreter /x\nflags: F\noffset -1\nmagic 7f454c46\n",
        "enabled\ninterpreter /x\nflags: F\noffset 0\nmagic 7f\nextension .x\n",
    ] {
        assert_eq!(Handler::parse("h", hostile), None, "{hostile:?}");
    }
    // An offset at the end of memory matches nothing (and does not overflow).
    let far = "enabled\ninterpreter /x\nflags: F\noffset 18446744073709551615\nmagic 7f45\n";
    assert!(!Handler::parse("far", far).unwrap().runs(AARCH64));

    let big = format!("{QEMU_AARCH64}{}", "x".repeat(9000));
    let dir = binfmt_dir(
        Some("enabled"),
        &[
            ("big", &big),
            ("qemu-arm", QEMU_ARM),
            ("junk", "\u{0}\u{1}\u{2}"),
        ],
    );
    fs::write(dir.path().join("not-utf8"), [0xff, 0xfe, 0x00]).unwrap();
    fs::create_dir(dir.path().join("a-directory")).unwrap();
    let binfmt = Binfmt::read(dir.path());
    let names: Vec<&str> = binfmt.handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["qemu-arm"]);
}

#[test]
fn fix_binary_handlers_emulate_and_the_others_are_listed_with_why_not() {
    let disabled_riscv = QEMU_RISCV64.replacen("enabled", "disabled", 1);
    let dir = binfmt_dir(
        Some("enabled"),
        &[
            ("qemu-aarch64", QEMU_AARCH64),
            ("qemu-arm", &QEMU_ARM.replace("PF", "P")),
            ("qemu-riscv64", &disabled_riscv),
            ("jar", JAR),
        ],
    );
    let no_probe = |_: &[u8]| None;
    let p = Platforms::detect_with(Some(X86_64), dir.path(), no_probe);
    assert_eq!(p.binfmt, State::Enabled);
    assert_eq!(platforms_of(&p.native), ["linux/amd64"]);
    assert_eq!(
        p.emulated,
        [Emulated {
            platform: "linux/arm64",
            handler: "qemu-aarch64".into(),
            interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into(),
        }]
    );
    assert_eq!(
        platforms_of(&p.unusable),
        ["linux/arm/v7", "linux/arm/v6", "linux/riscv64"]
    );
    let why: Vec<Refusal> = p.unusable.iter().map(|u| u.why).collect();
    assert_eq!(
        why,
        [
            Refusal::NotFixBinary,
            Refusal::NotFixBinary,
            Refusal::Disabled
        ]
    );

    // On an arm64 host the same handler is not emulation of anything.
    let p = Platforms::detect_with(Some(AARCH64), dir.path(), no_probe);
    assert_eq!(platforms_of(&p.native), ["linux/arm64"]);
    assert!(p.emulated.is_empty());

    let off = binfmt_dir(Some("disabled"), &[("qemu-aarch64", QEMU_AARCH64)]);
    let p = Platforms::detect_with(Some(X86_64), off.path(), no_probe);
    assert_eq!(p.binfmt, State::Disabled);
    assert!(p.emulated.is_empty());
    assert_eq!(p.unusable[0].why, Refusal::BinfmtDisabled);

    let unmounted = binfmt_dir(None, &[]);
    let p = Platforms::detect_with(Some(X86_64), unmounted.path(), no_probe);
    assert_eq!(p.binfmt, State::NotMounted);
    assert!(p.emulated.is_empty() && p.unusable.is_empty());
}

#[test]
fn the_32_bit_sibling_is_native_when_its_probe_runs_and_no_handler_takes_it() {
    let dir = binfmt_dir(Some("enabled"), &[("qemu-aarch64", QEMU_AARCH64)]);
    let runs = |program: &[u8]| {
        assert_eq!(Elf::parse(program), Some(I386));
        Some(true)
    };
    let p = Platforms::detect_with(Some(X86_64), dir.path(), runs);
    assert_eq!(
        p.native,
        [
            Native {
                platform: "linux/amd64".into(),
                confined: true
            },
            Native {
                platform: "linux/386".into(),
                confined: false
            }
        ]
    );
    let p = Platforms::detect_with(Some(X86_64), dir.path(), |_| Some(false));
    assert_eq!(platforms_of(&p.native), ["linux/amd64"]);
    // A handler for i386 takes its programs before the kernel's own loader.
    let dir = binfmt_dir(Some("enabled"), &[("qemu-i386", QEMU_I386)]);
    let p = Platforms::detect_with(Some(X86_64), dir.path(), runs);
    assert_eq!(platforms_of(&p.native), ["linux/amd64"]);
    assert_eq!(platforms_of(&p.emulated), ["linux/386"]);
}

#[test]
fn this_hosts_binfmt_misc_and_sibling_as_they_are() {
    let binfmt = Binfmt::read(Path::new(BINFMT_MISC));
    if binfmt.state != State::NotMounted {
        // Every handler the kernel lists parses: the parser reads what
        // the kernel writes (here: Debian's qemu-user-static, jar, …).
        let files = fs::read_dir(BINFMT_MISC)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name != "status" && name != "register"
            })
            .count();
        assert_eq!(binfmt.handlers.len(), files, "{:?}", binfmt.handlers);
    }
    let p = Platforms::detect();
    assert_eq!(p.native[0].platform, elf::host().unwrap().describe());
    for e in &p.emulated {
        let handler = binfmt
            .handlers
            .iter()
            .find(|h| h.name == e.handler)
            .unwrap();
        assert!(handler.enabled && handler.fix_binary(), "{e:?}");
    }
    if std::env::consts::ARCH == "x86_64" && require_for("arm64 under QEMU", &[Need::Arm64Busybox])
    {
        assert!(
            p.emulated.iter().any(|e| e.platform == "linux/arm64"),
            "{p:?}"
        );
    }
    // The probes are real programs: i386's runs on an x86-64 kernel with
    // IA-32 emulation (the sysctl it adds), ARM's wherever a handler
    // runs 32-bit ARM programs.
    let host = elf::host().unwrap();
    if let Some((sibling, program)) = probe::sibling(host) {
        let ia32 = Path::new("/proc/sys/abi/vsyscall32").exists();
        if binfmt.emulates(sibling) || (sibling == I386 && ia32) {
            assert_eq!(probe::runs(&program), Some(true));
        }
    }
    let arm = Elf::of_platform("linux/arm/v7").unwrap();
    if binfmt.emulates(arm) {
        let (_, program) = probe::sibling(AARCH64).unwrap();
        assert_eq!(
            probe::runs(&program),
            Some(true),
            "the ARM probe under QEMU"
        );
    }
}

fn failure(errno: nix::errno::Errno, header: &[u8]) -> ExecFailure {
    ExecFailure {
        program: "/bin/sh".into(),
        errno: errno as i32,
        examined: "/bin/sh".into(),
        header: header.to_vec(),
    }
}

#[test]
fn a_program_for_a_platform_nothing_here_runs_is_explained() {
    use nix::errno::Errno;
    let host = elf::host().unwrap().describe();
    let dir = binfmt_dir(Some("enabled"), &[("qemu-aarch64", QEMU_AARCH64)]);

    let ia64 = failure(Errno::ENOEXEC, &IA64.header(2));
    let e = explain(&ia64, "linux/amd64", dir.path()).unwrap();
    assert_eq!(e.cause, Cause::NoHandler);
    assert_eq!(
        e.to_string(),
        format!(
            "exec /bin/sh: ENOEXEC: Exec format error: the step is for linux/amd64, but \
             /bin/sh is an ELF for machine 50; this host ({host}) does not run machine 50 \
             natively, and no binfmt_misc handler with the fix-binary flag is registered \
             for it; to run it under QEMU user emulation, install qemu-user-static and \
             binfmt-support (`apt-get install qemu-user-static binfmt-support` on Debian) or \
             run `docker run --privileged --rm tonistiigi/binfmt --install all`; `kiln debug \
             platforms` lists what this host runs"
        )
    );

    // Not an ELF file (unreadable: empty): the step's platform is what it needs.
    let s390x = failure(Errno::ENOEXEC, b"");
    let e = explain(&s390x, "linux/s390x", dir.path()).unwrap();
    assert!(
        e.to_string().starts_with(&format!(
            "exec /bin/sh: ENOEXEC: Exec format error: the step is for linux/s390x; this \
             host ({host}) does not run linux/s390x natively, and no binfmt_misc handler"
        )),
        "{e}"
    );

    // A `#!` script whose interpreter is the foreign program.
    let script = ExecFailure {
        program: "/run.sh".into(),
        examined: "/bin/sh".into(),
        ..ia64.clone()
    };
    let e = explain(&script, "linux/amd64", dir.path()).unwrap();
    assert!(
        e.to_string()
            .contains("but /run.sh's interpreter /bin/sh is an ELF for machine 50;"),
        "{e}"
    );

    // A platform kiln does not know may well be the file's.
    let e = explain(&ia64, "linux/ia64", dir.path()).unwrap();
    assert!(
        e.to_string()
            .contains("the step is for linux/ia64, and /bin/sh is an ELF for machine 50;"),
        "{e}"
    );
    let big_endian = Elf::of_platform("linux/s390x").unwrap().header(2);
    let e = explain(
        &failure(Errno::ENOEXEC, &big_endian),
        "linux/ia64",
        dir.path(),
    )
    .unwrap();
    assert!(
        e.to_string()
            .contains("the step is for linux/ia64, but /bin/sh is an ELF for linux/s390x;"),
        "{e}"
    );

    let unmounted = binfmt_dir(None, &[]);
    let e = explain(&ia64, "linux/ia64", unmounted.path()).unwrap();
    assert_eq!(e.cause, Cause::NotMounted);
    assert!(
        e.to_string().contains("`mount -t binfmt_misc binfmt_misc "),
        "{e}"
    );
    let off = binfmt_dir(Some("disabled"), &[]);
    let e = explain(&ia64, "linux/ia64", off.path()).unwrap();
    assert!(
        e.to_string()
            .contains(&format!("`echo 1 > {}/status`", off.path().display()))
    );
}

#[test]
fn a_handler_without_the_fix_binary_flag_or_disabled_is_named() {
    use nix::errno::Errno;
    let riscv = Elf::of_platform("linux/riscv64").unwrap();
    let dir = binfmt_dir(
        Some("enabled"),
        &[
            ("qemu-aarch64", &QEMU_AARCH64.replace("PF", "P")),
            (
                "qemu-riscv64",
                &QEMU_RISCV64.replacen("enabled", "disabled", 1),
            ),
        ],
    );
    // The kernel opens the interpreter's path inside the root: ENOENT for
    // a program that is there.
    let arm = failure(Errno::ENOENT, &AARCH64.header(2));
    let e = explain(&arm, "linux/arm64", dir.path()).unwrap();
    assert_eq!(
        e.cause,
        Cause::NotFixBinary {
            handler: "qemu-aarch64".into(),
            interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into()
        }
    );
    assert!(
        e.to_string().contains(
            "the step is for linux/arm64; this host (linux/amd64) does not run linux/arm64 \
             natively, and its binfmt_misc handler qemu-aarch64 lacks the fix-binary flag (F)"
        ) || std::env::consts::ARCH != "x86_64",
        "{e}"
    );
    let riscv_failure = failure(Errno::ENOEXEC, &riscv.header(2));
    let e = explain(&riscv_failure, "linux/riscv64", dir.path()).unwrap();
    assert_eq!(e.cause, Cause::HandlerDisabled("qemu-riscv64".into()));
    assert!(
        e.to_string()
            .contains("`update-binfmts --enable qemu-riscv64`")
    );
}

#[test]
fn what_is_not_about_the_platform_keeps_the_kernels_error() {
    use nix::errno::Errno;
    let host = elf::host().unwrap();
    let dir = binfmt_dir(Some("enabled"), &[("qemu-aarch64", QEMU_AARCH64)]);
    let host_platform = host.describe();
    // A corrupt program for this host, or a garbage file on its platform.
    assert_eq!(
        explain(
            &failure(Errno::ENOEXEC, &host.header(2)),
            "linux/arm64",
            dir.path()
        ),
        None
    );
    assert_eq!(
        explain(
            &failure(Errno::ENOEXEC, b"junk"),
            &host_platform,
            dir.path()
        ),
        None
    );
    // A missing program, or one a handler does run (its failure is its own).
    assert_eq!(
        explain(&failure(Errno::ENOENT, b""), "linux/arm64", dir.path()),
        None
    );
    assert_eq!(
        explain(
            &failure(Errno::ENOENT, &IA64.header(2)),
            "linux/amd64",
            dir.path()
        ),
        None
    );
    if host != AARCH64 {
        let arm = failure(Errno::ENOEXEC, &AARCH64.header(2));
        assert_eq!(explain(&arm, "linux/arm64", dir.path()), None);
    }
    assert_eq!(
        explain(
            &failure(Errno::EACCES, &IA64.header(2)),
            "linux/amd64",
            dir.path()
        ),
        None
    );
}
