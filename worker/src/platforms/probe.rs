//! Whether this host runs its 32-bit sibling natively (i386 programs on
//! x86-64, 32-bit ARM ones on arm64): the CPU may, the kernel may not
//! (`CONFIG_IA32_EMULATION`, `CONFIG_COMPAT`, `ia32_emulation=false`,
//! arm64 CPUs without AArch32). Found as BuildKit's `archutil` finds
//! it: by running a tiny static program for it, which exits 0.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use super::elf::Elf;

/// `exit(0)` for i386: `xor ebx, ebx; xor eax, eax; inc eax; int 0x80`.
const I386_CODE: &[u8] = &[0x31, 0xdb, 0x31, 0xc0, 0x40, 0xcd, 0x80];

/// `exit(0)` for 32-bit ARM (EABI): `mov r0, #0; mov r7, #1; svc #0`.
const ARM_CODE: &[u8] = &[
    0x00, 0x00, 0xa0, 0xe3, 0x01, 0x70, 0xa0, 0xe3, 0x00, 0x00, 0x00, 0xef,
];

/// The 32-bit sibling of `host` and its probe program, if it has one.
pub(super) fn sibling(host: Elf) -> Option<(Elf, Vec<u8>)> {
    let little = |machine| Elf {
        class: 1,
        data: 1,
        machine,
    };
    match (host.class, host.data, host.machine) {
        (2, 1, 62) => Some((little(3), program(3, 0x0804_8000, 0, I386_CODE))),
        // EABI version 5: kernels without the old ABI refuse version 0.
        (2, 1, 183) => Some((little(40), program(40, 0x1_0000, 0x0500_0000, ARM_CODE))),
        _ => None,
    }
}

/// A static little-endian ELF32 executable: the header, one loadable
/// segment of the whole file at `base`, then `code`, its entry point.
fn program(machine: u16, base: u32, flags: u32, code: &[u8]) -> Vec<u8> {
    const HEADERS: u32 = 52 + 32;
    let size = HEADERS + u32::try_from(code.len()).unwrap_or(0);
    let mut out = Vec::with_capacity(size as usize);
    out.extend_from_slice(b"\x7fELF\x01\x01\x01\x00");
    out.extend_from_slice(&[0; 8]);
    let u16s = |out: &mut Vec<u8>, v: &[u16]| v.iter().for_each(|x| out.extend(x.to_le_bytes()));
    let u32s = |out: &mut Vec<u8>, v: &[u32]| v.iter().for_each(|x| out.extend(x.to_le_bytes()));
    // e_type ET_EXEC, e_machine; e_version, e_entry, e_phoff, e_shoff, e_flags.
    u16s(&mut out, &[2, machine]);
    u32s(&mut out, &[1, base + HEADERS, 52, 0, flags]);
    // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx.
    u16s(&mut out, &[52, 32, 1, 0, 0, 0]);
    // PT_LOAD: offset, vaddr, paddr, filesz, memsz, flags R+X, align.
    u32s(&mut out, &[1, 0, base, base, size, size, 5, 0x1000]);
    out.extend_from_slice(code);
    out
}

static PROBE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Whether `program` runs and exits 0 here. `None` when it could not be
/// tried (no temporary directory it may run from: `noexec`, full).
pub(super) fn runs(program: &[u8]) -> Option<bool> {
    let dir = std::env::temp_dir().join(format!(
        "kiln-probe-{}-{}",
        std::process::id(),
        PROBE_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    // Ours alone (a fresh directory, 0700): nothing swaps the program.
    fs::DirBuilder::new().mode(0o700).create(&dir).ok()?;
    let ran = write_and_run(&dir.join("probe"), program);
    let _ = fs::remove_dir_all(&dir);
    ran
}

fn write_and_run(path: &Path, program: &[u8]) -> Option<bool> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(path)
        .ok()?;
    file.write_all(program).ok()?;
    drop(file);
    // ETXTBSY: another thread of this process forked while the file was
    // open for writing, and its child holds that descriptor until it
    // execs. That is soon: try again a few times.
    for attempt in 0..10 {
        match Command::new(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) => return Some(status.success()),
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(5 << attempt.min(5)));
            }
            // ENOEXEC: the kernel does not run it.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOEXEC) => return Some(false),
            Err(_) => return None,
        }
    }
    None
}
