//! `kiln-sandbox`: the single-threaded helper that sets up one sandbox and
//! runs one command in it. The worker starts it with a `RunSpec` as JSON on
//! standard input; it exits with the command's status (128 + signal when
//! killed), or with 125 after writing the reason to `<state_dir>/error`
//! when the sandbox could not be set up or the kernel refused to execute
//! the command (for a run, a `spec::Failure` as JSON; for a file job, the
//! message).
//!
//! It exists so that namespaces are never entered, nor `fork` called, from
//! the multi-threaded daemon. (A file op's copy runs on a second thread,
//! once the mounts are made: a deep tree needs more stack than the main
//! thread may have; see `fileop::copy_over`.)

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use kiln_worker::sandbox::setup::{enter, file_job};
use kiln_worker::sandbox::spec::{Failure, Job};
use kiln_worker::sandbox::syscall::Linux;
use kiln_worker::sandbox::{PARENT_ENV, SETUP_FAILED};
use nix::sys::wait::{WaitStatus, waitpid};

fn main() -> ExitCode {
    if let Err(message) = die_with_parent() {
        eprintln!("kiln-sandbox: {message}");
        return ExitCode::from(SETUP_FAILED);
    }
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("kiln-sandbox: reading the spec: {e}");
        return ExitCode::from(SETUP_FAILED);
    }
    let job: Job = match serde_json::from_str(&input) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("kiln-sandbox: invalid job: {e}");
            return ExitCode::from(SETUP_FAILED);
        }
    };
    let state_dir = match &job {
        Job::Run(spec) => spec.state_dir.clone(),
        Job::File(file) => file.state_dir.clone(),
    };
    // Opened before pivot_root, so the child can still report through it;
    // close-on-exec, so the step never sees it.
    let mut error_file = match OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(state_dir.join("error"))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "kiln-sandbox: opening {}: {e}",
                state_dir.join("error").display()
            );
            return ExitCode::from(SETUP_FAILED);
        }
    };
    let spec = match job {
        Job::File(file) => match file_job(&Linux, &file) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(message) => message.pipe_err(&mut error_file),
        },
        Job::Run(spec) => spec,
    };
    // The step reads nothing: its stdin is /dev/null.
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(null);
    }
    let started = match enter(&Linux, &spec) {
        Ok(Some(started)) => started,
        Ok(None) => Failure::from("execve returned".to_owned()).pipe_err(&mut error_file),
        Err(failure) => failure.pipe_err(&mut error_file),
    };
    let status = wait_step(started.step);
    if let Some(nat) = started.nat {
        nat.stop();
    }
    match status {
        Ok(code) => ExitCode::from(code),
        Err(message) => Failure::from(message).pipe_err(&mut error_file),
    }
}

/// The step's exit status (128 + signal when killed by one).
fn wait_step(step: nix::unistd::Pid) -> Result<u8, String> {
    loop {
        match waitpid(step, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(u8::try_from(code).unwrap_or(1)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as u8),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waiting for the step: {e}")),
        }
    }
}

/// Ties the helper to the worker thread that started it: when that goes
/// (kiln killed, kilnd's build thread gone), the kernel kills the helper,
/// and with it the step (its own parent-death signal) and the NAT. The
/// worker passes its pid in [`PARENT_ENV`], so a helper whose parent died
/// before the signal was set exits too.
fn die_with_parent() -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("setting the parent-death signal: {e}"))?;
    let expected = std::env::var(PARENT_ENV).ok();
    let parent = nix::unistd::getppid().as_raw().to_string();
    match expected {
        Some(pid) if pid != parent => Err(format!(
            "the worker that started the helper (pid {pid}) is gone"
        )),
        _ => Ok(()),
    }
}

trait Report {
    /// Writes the message to the error file and exits with 125.
    fn pipe_err(self, file: &mut std::fs::File) -> !;
}

impl Report for String {
    fn pipe_err(self, file: &mut std::fs::File) -> ! {
        let _ = file.write_all(self.as_bytes());
        std::process::exit(i32::from(SETUP_FAILED));
    }
}

impl Report for Failure {
    fn pipe_err(self, file: &mut std::fs::File) -> ! {
        // A message of the helper's own making always serializes; a
        // failure to is still a failure, reported as such.
        let json = serde_json::to_string(&self)
            .unwrap_or_else(|e| format!("{{\"Setup\":\"reporting a failure: {e}\"}}"));
        json.pipe_err(file)
    }
}
