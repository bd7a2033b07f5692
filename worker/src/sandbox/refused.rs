//! A step's program the kernel refused to execute, as the helper reports
//! it ([`ExecFailure`]): its first bytes, read inside the step's root, so
//! that the worker can say which platform it is for
//! (`crate::platforms::explain`).

use std::fs;

use super::spec::ExecFailure;

/// The kernel refused to execute `program` (`name` as the step named it):
/// what the worker needs to say why — the first bytes of the program, or
/// of the interpreter its `#!` line names when that is what the kernel
/// could not run. Read here, inside the step's root, as the step's user;
/// never a FIFO or device's (opened without blocking, a regular file only).
pub(super) fn exec_failure(name: &str, program: &str, errno: nix::errno::Errno) -> ExecFailure {
    let mut failure = ExecFailure {
        program: name.to_owned(),
        errno: errno as i32,
        examined: program.to_owned(),
        header: Vec::new(),
    };
    if !matches!(
        errno,
        nix::errno::Errno::ENOEXEC | nix::errno::Errno::ENOENT
    ) {
        return failure;
    }
    let start = head(program);
    match interpreter(&start) {
        Some(interpreter) => {
            failure.header = head(&interpreter);
            failure.examined = interpreter;
        }
        None => failure.header = start,
    }
    failure.header.truncate(EXAMINED);
    failure
}

/// How much of a refused program the worker is told.
const EXAMINED: usize = 64;

/// The first bytes of the regular file `path` (as many as the kernel reads
/// for a `#!` line); none when it is not one or cannot be read.
fn head(path: &str) -> Vec<u8> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(file) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
    else {
        return Vec::new();
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Vec::new();
    }
    let mut bytes = Vec::with_capacity(256);
    let _ = file.take(256).read_to_end(&mut bytes);
    bytes
}

/// The interpreter a `#!` line names (the path before any argument).
pub(super) fn interpreter(start: &[u8]) -> Option<String> {
    let line = start.strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let path = line
        .split(|b| *b == b' ' || *b == b'\t')
        .find(|word| !word.is_empty())?;
    String::from_utf8(path.to_vec()).ok()
}
