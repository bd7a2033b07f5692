//! kiln's Dockerfile frontend: text → AST → typed instructions → build graph.
//!
//! Owns: everything that can be known from the Dockerfile, the build
//! arguments and the base images' configs alone — parsing
//! ([`parser`]), BuildKit's variable expansion ([`shell`]), typed and
//! validated instructions ([`instructions`]), the content-addressed graph of
//! ops and each stage's image config ([`convert`]), BuildKit's build
//! checks — the Dockerfile linter, its rules, `# check=` and
//! `BUILDKIT_DOCKERFILE_CHECK` ([`checks`]). Callers run the
//! checks and show their violations; they do not judge a Dockerfile
//! themselves. The syntax it shares with the worker (`.dockerignore`
//! patterns, `--chmod` modes, the sandbox's `--add-host`/`--ulimit`) is
//! `kiln-proto`'s (`kiln_proto::{dockerignore, chmod, sandbox}`).
//!
//! Does not own: any I/O. It reads no files, starts no processes and needs no
//! runtime; the caller passes text in and resolves base images through the
//! [`convert::ImageResolver`] it provides. Running the graph is the solver's
//! job (`kiln-builder`), running ops the worker's (`kiln-worker`).

pub mod checks;
pub mod convert;
pub mod gitref;
pub mod instructions;
pub mod parser;
mod paths;
pub mod platform;
pub mod reference;
pub mod shell;

/// Any error of the frontend, from text to graph.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Parse(#[from] parser::ParseError),
    #[error(transparent)]
    Instruction(#[from] instructions::InstructionError),
    #[error(transparent)]
    Convert(#[from] convert::ConvertError),
}
