//! Conversion errors: what went wrong, on which line, in which instruction.

use thiserror::Error;

use crate::instructions::InstructionErrorKind;
use crate::parser::Location;
use crate::platform::PlatformError;
use crate::reference::ReferenceError;
use crate::shell::ExpandError;

/// What is wrong, without the place.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvertErrorKind {
    #[error("the Dockerfile has no FROM instruction")]
    NoStages,
    #[error("target stage {0:?} could not be found")]
    TargetNotFound(String),
    #[error("circular dependency detected on stage: {0}")]
    Cycle(String),
    /// `FROM NAME` where `--build-context NAME=target:STAGE` and STAGE is
    /// not defined before.
    #[error(
        "{name} is the stage {stage:?} (--build-context {name}=target:{stage}), which needs to be defined before the stage that starts from it"
    )]
    NamedStageLater { name: String, stage: String },
    #[error(
        "cannot copy from stage {from:?}, it needs to be defined before current stage {current:?}"
    )]
    CopyFromLater { from: String, current: String },
    #[error(
        "cannot mount from stage {from:?} to {target:?}, stage needs to be defined before current command"
    )]
    MountFromLater { from: String, target: String },
    #[error(
        "{word}: {name} is an ENV variable; --from and from= expand only build arguments (ARG)"
    )]
    FromEnv { word: String, name: String },
    #[error("failed to expand {word:?}: {source}")]
    Expand { word: String, source: ExpandError },
    #[error("base name ({0}) should not be blank")]
    EmptyBase(String),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("resolving {reference}: {message}")]
    Resolve { reference: String, message: String },
    #[error("forbidden path outside the build context: {0}")]
    OutsideContext(String),
    #[error(
        "when using {0} with more than one source file, the destination must be a directory and end with a /"
    )]
    DestNotDirectory(&'static str),
    #[error(transparent)]
    Chmod(#[from] kiln_proto::chmod::ChmodError),
    #[error("invalid user or group {0:?} for --chown")]
    Chown(String),
    #[error("{0} sources must be a URL or a path: {1:?}")]
    Source(&'static str, String),
    #[error(
        "ADD source {0:?}: only http:// and https:// URLs and Git remotes are fetched (no file://, ftp:// or transport helpers)"
    )]
    Scheme(String),
    #[error(transparent)]
    Git(#[from] crate::gitref::GitRefError),
    #[error("invalid --checksum {0:?}: {1}")]
    Checksum(String, &'static str),
    #[error("ADD --checksum is only for URL and Git sources, not {0:?}")]
    ChecksumLocal(String),
    #[error("invalid port {0:?}: expected PORT[-END][/tcp|udp|sctp]")]
    Port(String),
    #[error("invalid signal {0:?}: expected a name such as SIGTERM or a number")]
    Signal(String),
    #[error("invalid mount {spec:?}: {reason}")]
    Mount { spec: String, reason: String },
    #[error("ONBUILD trigger {trigger:?} of the base image: {reason}")]
    Trigger { trigger: String, reason: String },
    #[error(transparent)]
    Instruction(#[from] InstructionErrorKind),
    #[error("stages depend on one another more than {0} deep (the limit)")]
    StagesTooDeep(usize),
    #[error("ENV, ARG and LABEL values {scope} exceed {limit} bytes (the limit)")]
    TooManyVars { limit: usize, scope: &'static str },
    #[error("invalid SOURCE_DATE_EPOCH: {0} (seconds since 1970, or \"context\")")]
    InvalidEpoch(String),
    #[error(transparent)]
    Sandbox(#[from] kiln_proto::sandbox::SandboxOptionError),
    #[error("cancelled")]
    Cancelled,
    /// An error in another stage, converted on demand: it keeps its own
    /// line and instruction.
    #[error(transparent)]
    Located(Box<ConvertError>),
}

/// A conversion error and the instruction it is about.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct ConvertError {
    /// Where the instruction is; `None` for errors about the whole file.
    pub location: Option<Location>,
    /// The instruction as written, shortened.
    pub instruction: Option<String>,
    pub kind: ConvertErrorKind,
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.location, &self.instruction) {
            (Some(l), Some(i)) => write!(f, "line {}: {i}: {}", l.start, self.kind),
            (Some(l), None) => write!(f, "line {}: {}", l.start, self.kind),
            _ => write!(f, "{}", self.kind),
        }
    }
}

impl ConvertError {
    pub(super) fn at(location: Location, instruction: &str, kind: ConvertErrorKind) -> Self {
        const MAX: usize = 80;
        let mut text: String = instruction.chars().take(MAX).collect();
        if instruction.chars().nth(MAX).is_some() {
            text.push('…');
        }
        Self {
            location: Some(location),
            instruction: Some(text),
            kind,
        }
    }
}

impl From<ConvertErrorKind> for ConvertError {
    fn from(kind: ConvertErrorKind) -> Self {
        Self {
            location: None,
            instruction: None,
            kind,
        }
    }
}
