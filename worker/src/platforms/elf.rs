//! ELF headers as far as binfmt_misc and kiln look at them: a program's
//! class, byte order and machine, and the OCI platforms of the machines
//! kiln knows.

use std::io::Read;
use std::path::Path;

/// What an ELF header says a program runs on (`EI_CLASS`, `EI_DATA`,
/// `e_machine`): what the kernel checks before it runs one natively, and
/// what binfmt_misc handlers for ELF programs match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Elf {
    /// 1: 32-bit, 2: 64-bit.
    pub class: u8,
    /// 1: little-endian, 2: big-endian.
    pub data: u8,
    pub machine: u16,
}

/// The bytes of an ELF header up to `e_machine`.
const IDENT: usize = 20;

/// The header [`Elf::header`] makes: an ELF64 header's size, long enough
/// for every field handlers match (MIPS's n32 ones match `e_flags`).
pub const HEADER: usize = 64;

/// A machine kiln knows and the OCI platforms (`os/arch[/variant]`) of its
/// programs, the usual one first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    pub elf: Elf,
    pub platforms: &'static [&'static str],
}

const fn machine(class: u8, data: u8, machine: u16, platforms: &'static [&'static str]) -> Machine {
    Machine {
        elf: Elf {
            class,
            data,
            machine,
        },
        platforms,
    }
}

/// The Linux machines of OCI's platforms (Go's `GOARCH`s) that QEMU
/// emulates. 32-bit ARM programs are for `arm/v7` and `arm/v6` alike, as
/// BuildKit lists them for one handler.
pub const MACHINES: &[Machine] = &[
    machine(2, 1, 62, &["linux/amd64"]),
    machine(1, 1, 3, &["linux/386"]),
    machine(2, 1, 183, &["linux/arm64"]),
    machine(1, 1, 40, &["linux/arm/v7", "linux/arm/v6"]),
    machine(2, 1, 243, &["linux/riscv64"]),
    machine(2, 1, 21, &["linux/ppc64le"]),
    machine(2, 2, 21, &["linux/ppc64"]),
    machine(2, 2, 22, &["linux/s390x"]),
    machine(2, 1, 8, &["linux/mips64le"]),
    machine(2, 2, 8, &["linux/mips64"]),
    machine(1, 1, 8, &["linux/mipsle"]),
    machine(1, 2, 8, &["linux/mips"]),
    machine(2, 1, 258, &["linux/loong64"]),
];

impl Elf {
    /// What `header` says, when it starts as an ELF file does.
    pub fn parse(header: &[u8]) -> Option<Self> {
        let ident = header.get(..IDENT)?;
        if !ident.starts_with(b"\x7fELF") {
            return None;
        }
        let bytes = [ident[18], ident[19]];
        let machine = match ident[5] {
            1 => u16::from_le_bytes(bytes),
            2 => u16::from_be_bytes(bytes),
            _ => return None,
        };
        Some(Self {
            class: ident[4],
            data: ident[5],
            machine,
        })
    }

    /// The first bytes of `path`, when it is an ELF file (read at most
    /// [`HEADER`] bytes: the file may be anything).
    pub fn of_file(path: &Path) -> Option<Self> {
        let mut header = Vec::with_capacity(HEADER);
        let file = std::fs::File::open(path).ok()?;
        file.take(HEADER as u64).read_to_end(&mut header).ok()?;
        Self::parse(&header)
    }

    /// The machine kiln knows this as.
    pub fn known(self) -> Option<&'static Machine> {
        MACHINES.iter().find(|m| m.elf == self)
    }

    /// The machine whose programs are for `platform` (`os/arch[/variant]`).
    pub fn of_platform(platform: &str) -> Option<Self> {
        MACHINES
            .iter()
            .find(|m| m.platforms.contains(&platform))
            .map(|m| m.elf)
    }

    /// Its usual platform, or `machine N` for one kiln does not know.
    pub fn describe(self) -> String {
        match self.known() {
            Some(m) => m.platforms[0].to_owned(),
            None => format!("machine {}", self.machine),
        }
    }

    /// The start of a minimal header of a program for it (`e_type` 2: a
    /// static executable; 3: a position-independent one), `e_version` 1,
    /// every other field 0: what a handler is matched against.
    pub fn header(self, e_type: u16) -> [u8; HEADER] {
        let mut h = [0; HEADER];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = self.class;
        h[5] = self.data;
        h[6] = 1;
        let (e_type, machine, version) = if self.data == 2 {
            (
                e_type.to_be_bytes(),
                self.machine.to_be_bytes(),
                1u32.to_be_bytes(),
            )
        } else {
            (
                e_type.to_le_bytes(),
                self.machine.to_le_bytes(),
                1u32.to_le_bytes(),
            )
        };
        h[16..18].copy_from_slice(&e_type);
        h[18..20].copy_from_slice(&machine);
        h[20..24].copy_from_slice(&version);
        h
    }
}

/// The machine of this process's own program: the host's, as kiln was
/// built for it.
pub fn host() -> Option<Elf> {
    Elf::of_file(Path::new("/proc/self/exe"))
}
