//! The error of a RUN step whose program this host cannot execute: a
//! program for another platform, with no binfmt_misc handler that runs it
//! from inside a sandbox. Without this the step fails with the kernel's
//! bare `ENOEXEC` ("Exec format error"), or — through a handler registered
//! without the fix-binary flag — `ENOENT` for a program that is there.

use std::fmt;
use std::path::Path;

use nix::errno::Errno;

use super::binfmt::{Binfmt, State};
use super::elf::{self, Elf};
use crate::sandbox::spec::ExecFailure;

/// How to register QEMU's handlers, with the fix-binary flag.
const INSTALL_QEMU: &str = "install qemu-user-static and binfmt-support \
     (`apt-get install qemu-user-static binfmt-support` on Debian) or run \
     `docker run --privileged --rm tonistiigi/binfmt --install all`";

/// Why nothing runs the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// No handler with the fix-binary flag takes it.
    NoHandler,
    /// binfmt_misc is not mounted.
    NotMounted,
    /// binfmt_misc is disabled as a whole.
    Disabled,
    /// The handler that takes it is disabled.
    HandlerDisabled(String),
    /// The handler that takes it lacks the fix-binary flag: the kernel
    /// looks for its interpreter inside the step's root filesystem.
    NotFixBinary {
        handler: String,
        interpreter: String,
    },
}

/// A step's program that this host cannot execute, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRunnable {
    pub failure: ExecFailure,
    /// The platform the step is for (`os/arch[/variant]`).
    pub platform: String,
    /// This host's platform.
    pub host: String,
    /// What the examined file is for, when it is an ELF file.
    pub elf: Option<Elf>,
    pub cause: Cause,
    /// Where binfmt_misc is (for the fixes).
    pub binfmt_misc: String,
}

/// Why the kernel refused `failure`'s program for a step for `platform`
/// (empty: this host's), with binfmt_misc at `binfmt_misc`; `None` when
/// it is not because this host does not run the program's platform (a
/// corrupt program for this host, a missing file): the kernel's error then
/// says enough.
pub fn explain(failure: &ExecFailure, platform: &str, binfmt_misc: &Path) -> Option<NotRunnable> {
    let host = elf::host()?;
    let platform = match platform {
        "" => host.describe(),
        given => given.to_owned(),
    };
    let platform = platform.as_str();
    let elf = Elf::parse(&failure.header);
    // What the kernel was asked to run: the file's machine, else (not an
    // ELF file, unreadable) the step's platform's.
    let needs = elf.or_else(|| Elf::of_platform(platform))?;
    if needs == host {
        return None;
    }
    let binfmt = Binfmt::read(binfmt_misc);
    let cause = match Errno::from_raw(failure.errno) {
        Errno::ENOEXEC if !binfmt.emulates(needs) => cause(&binfmt, needs),
        Errno::ENOENT if elf.is_some() => match cause(&binfmt, needs) {
            not_fix @ Cause::NotFixBinary { .. } => not_fix,
            _ => return None,
        },
        _ => return None,
    };
    Some(NotRunnable {
        failure: failure.clone(),
        platform: platform.to_owned(),
        host: host.describe(),
        elf,
        cause,
        binfmt_misc: binfmt_misc.display().to_string(),
    })
}

/// Why no handler runs `elf`'s programs in a sandbox.
fn cause(binfmt: &Binfmt, elf: Elf) -> Cause {
    match binfmt.state {
        State::NotMounted => return Cause::NotMounted,
        State::Disabled => return Cause::Disabled,
        State::Enabled => {}
    }
    let handlers: Vec<_> = binfmt.for_elf(elf).collect();
    let not_fix = handlers.iter().find(|h| h.enabled && !h.fix_binary());
    let disabled = handlers.iter().find(|h| !h.enabled);
    match (not_fix, disabled) {
        (Some(h), _) => Cause::NotFixBinary {
            handler: h.name.clone(),
            interpreter: h.interpreter.clone(),
        },
        (None, Some(h)) => Cause::HandlerDisabled(h.name.clone()),
        (None, None) => Cause::NoHandler,
    }
}

impl NotRunnable {
    /// What the program needs: the file's platform, else the step's.
    fn needs(&self) -> String {
        self.elf
            .map_or_else(|| self.platform.clone(), Elf::describe)
    }

    /// `, but /bin/sh is an ELF for …` when that is not the step's
    /// platform; `, and …` when kiln cannot tell (neither machine known).
    fn file_is_for(&self) -> String {
        let Some(elf) = self.elf else {
            return String::new();
        };
        let conjunction = match (elf.known(), Elf::of_platform(&self.platform)) {
            (Some(m), _) if m.platforms.contains(&self.platform.as_str()) => return String::new(),
            (None, None) => "and",
            _ => "but",
        };
        let f = &self.failure;
        let file = if f.examined == f.program {
            f.program.clone()
        } else {
            format!("{}'s interpreter {}", f.program, f.examined)
        };
        format!(", {conjunction} {file} is an ELF for {}", elf.describe())
    }

    /// Why no handler runs it, and what to do.
    fn cause_and_fix(&self) -> String {
        let dir = &self.binfmt_misc;
        match &self.cause {
            Cause::NoHandler => format!(
                "no binfmt_misc handler with the fix-binary flag is registered for it; \
                 to run it under QEMU user emulation, {INSTALL_QEMU}"
            ),
            Cause::NotMounted => format!(
                "binfmt_misc is not mounted at {dir}, so no handler runs it; mount it \
                 (`mount -t binfmt_misc binfmt_misc {dir}`) and, to run it under QEMU \
                 user emulation, {INSTALL_QEMU}"
            ),
            Cause::Disabled => format!(
                "binfmt_misc is disabled ({dir}/status), so no handler runs it; \
                 enable it (`echo 1 > {dir}/status`)"
            ),
            Cause::HandlerDisabled(handler) => format!(
                "its binfmt_misc handler {handler} is disabled; enable it \
                 (`update-binfmts --enable {handler}`, or `echo 1 > {dir}/{handler}`)"
            ),
            Cause::NotFixBinary {
                handler,
                interpreter,
            } => format!(
                "its binfmt_misc handler {handler} lacks the fix-binary flag (F), so the \
                 kernel looks for {interpreter} inside the step's root filesystem, where it \
                 is not; register it with F, as Debian's qemu-user-static and binfmt-support \
                 do, or run `docker run --privileged --rm tonistiigi/binfmt --install all`"
            ),
        }
    }
}

impl fmt::Display for NotRunnable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the step is for {}{}; this host ({}) does not run {} natively, and {}; \
             `kiln debug platforms` lists what this host runs",
            self.failure,
            self.platform,
            self.file_is_for(),
            self.host,
            self.needs(),
            self.cause_and_fix()
        )
    }
}

impl std::error::Error for NotRunnable {}
