//! `kiln-sandbox`: the single-threaded helper that sets up one sandbox and
//! runs one command in it. The worker starts it with a `RunSpec` as JSON on
//! standard input; it exits with the command's status (128 + signal when
//! killed), or with 125 after writing the reason to `<state_dir>/error`
//! when the sandbox could not be set up.
//!
//! It exists so that namespaces are never entered, nor `fork` called, from
//! the multi-threaded daemon.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use kiln_worker::sandbox::SETUP_FAILED;
use kiln_worker::sandbox::setup::{enter, file_job};
use kiln_worker::sandbox::spec::Job;
use kiln_worker::sandbox::syscall::Linux;
use nix::sys::wait::{WaitStatus, waitpid};

fn main() -> ExitCode {
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
    let child = match enter(&Linux, &spec) {
        Ok(Some(child)) => child,
        Ok(None) => "execve returned".to_owned().pipe_err(&mut error_file),
        Err(message) => message.pipe_err(&mut error_file),
    };
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                return ExitCode::from(u8::try_from(code).unwrap_or(1));
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => return ExitCode::from(128 + signal as u8),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => format!("waiting for the step: {e}").pipe_err(&mut error_file),
        }
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
