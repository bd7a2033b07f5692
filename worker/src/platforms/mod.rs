//! The platforms this host runs RUN steps for, and why a step's program
//! it cannot run was refused ([`explain`]).
//!
//! The kernel decides from a program's first bytes: an enabled
//! binfmt_misc handler whose magic matches takes it first (QEMU user
//! emulation, as Debian's qemu-user-static registers it), else the ELF
//! loader runs it natively when its header is for this machine or the
//! 32-bit sibling the CPU and kernel also run (i386 on x86-64). A handler
//! works inside a sandbox only with the fix-binary flag (`F`): the kernel
//! then opened its interpreter when it was registered, where without it
//! it would look for the interpreter's path inside the step's root
//! filesystem. The sandbox is the same either way: the interpreter is a
//! program of this machine, making this machine's system calls, under the
//! step's seccomp filter, capabilities and `no_new_privs`.

pub mod binfmt;
pub mod elf;
mod explain;
mod probe;

use std::fmt;
use std::path::{Path, PathBuf};

pub use self::binfmt::{BINFMT_MISC, Binfmt, Handler, State};
pub use self::elf::{Elf, MACHINES, Machine};
pub use self::explain::{Cause, NotRunnable, explain};

/// A platform this host runs natively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Native {
    /// `os/arch[/variant]`, or `machine N` for a host kiln does not know.
    pub platform: String,
    /// Whether a step without `--security=insecure` runs it: its seccomp
    /// filter takes this machine's own system call ABI only, so the 32-bit
    /// sibling's (i386's `int 0x80`) are refused.
    pub confined: bool,
}

/// A platform a binfmt_misc handler runs from inside a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emulated {
    pub platform: &'static str,
    pub handler: String,
    pub interpreter: String,
}

/// A handler for a platform that does not run a step's programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub platform: &'static str,
    pub handler: String,
    pub interpreter: String,
    pub why: Refusal,
}

/// Why a handler does not run a step's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Registered without the fix-binary flag.
    NotFixBinary,
    /// The handler is disabled.
    Disabled,
    /// binfmt_misc as a whole is disabled.
    BinfmtDisabled,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFixBinary => {
                "registered without the fix-binary flag (F): the kernel looks for the \
                 interpreter inside a step's root filesystem, where it is not"
            }
            Self::Disabled => "disabled",
            Self::BinfmtDisabled => "binfmt_misc is disabled",
        })
    }
}

/// What this host runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platforms {
    /// Where binfmt_misc was looked for, and its state.
    pub binfmt_misc: PathBuf,
    pub binfmt: State,
    /// This host's platform first.
    pub native: Vec<Native>,
    /// In [`MACHINES`]' order.
    pub emulated: Vec<Emulated>,
    pub unusable: Vec<Unusable>,
}

impl Platforms {
    /// The platforms this host runs under emulation, as `os/arch[/variant]`
    /// (what a farm worker advertises).
    pub fn emulated_platforms(&self) -> Vec<String> {
        self.emulated
            .iter()
            .map(|e| e.platform.to_owned())
            .collect()
    }

    /// This host's: its machine (kiln's own program's), its 32-bit sibling
    /// when a probe program runs, and binfmt_misc at [`BINFMT_MISC`].
    pub fn detect() -> Self {
        Self::detect_with(elf::host(), Path::new(BINFMT_MISC), probe::runs)
    }

    /// As [`Platforms::detect`], for the machine `host`, binfmt_misc at
    /// `dir`, and `probe` to run a program (whether it exits 0; `None`:
    /// it could not be tried).
    pub fn detect_with(
        host: Option<Elf>,
        dir: &Path,
        probe: impl Fn(&[u8]) -> Option<bool>,
    ) -> Self {
        let binfmt = Binfmt::read(dir);
        let mut native: Vec<Native> = host
            .map(|h| native(h, true))
            .into_iter()
            .flatten()
            .collect();
        if let Some((sibling, program)) = host.and_then(probe::sibling) {
            // An enabled handler for it takes its programs first.
            let handled =
                binfmt.state == State::Enabled && binfmt.for_elf(sibling).any(|h| h.enabled);
            if !handled && probe(&program) == Some(true) {
                native.extend(self::native(sibling, false));
            }
        }
        let (emulated, unusable) = handlers(&binfmt, host);
        Self {
            binfmt_misc: dir.to_owned(),
            binfmt: binfmt.state,
            native,
            emulated,
            unusable,
        }
    }
}

/// `elf`'s platforms, as native ones.
fn native(elf: Elf, confined: bool) -> Vec<Native> {
    let platforms = match elf.known() {
        Some(m) => m.platforms.iter().map(|p| (*p).to_owned()).collect(),
        None => vec![elf.describe()],
    };
    platforms
        .into_iter()
        .map(|platform| Native { platform, confined })
        .collect()
}

/// The platforms of [`MACHINES`] (but the host's) that handlers take,
/// split by whether they run a step's programs.
fn handlers(binfmt: &Binfmt, host: Option<Elf>) -> (Vec<Emulated>, Vec<Unusable>) {
    let (mut emulated, mut unusable) = (Vec::new(), Vec::new());
    if binfmt.state == State::NotMounted {
        return (emulated, unusable);
    }
    for machine in MACHINES.iter().filter(|m| Some(m.elf) != host) {
        for handler in binfmt.for_elf(machine.elf) {
            let why = if binfmt.state == State::Disabled {
                Some(Refusal::BinfmtDisabled)
            } else if !handler.enabled {
                Some(Refusal::Disabled)
            } else if !handler.fix_binary() {
                Some(Refusal::NotFixBinary)
            } else {
                None
            };
            for &platform in machine.platforms {
                let (handler, interpreter) = (handler.name.clone(), handler.interpreter.clone());
                match why {
                    None => emulated.push(Emulated {
                        platform,
                        handler,
                        interpreter,
                    }),
                    Some(why) => unusable.push(Unusable {
                        platform,
                        handler,
                        interpreter,
                        why,
                    }),
                }
            }
        }
    }
    (emulated, unusable)
}

#[cfg(test)]
mod tests;
