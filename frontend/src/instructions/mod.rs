//! AST → typed, validated instructions grouped into stages (BuildKit's
//! `parser/instructions`).
//!
//! Everything that can be checked without knowing variable values is checked
//! here: the instruction word, its flags, the number and shape of its
//! arguments. Values stay unexpanded: `convert` expands them with the
//! environment of the stage at that point.

mod commands;
mod copy;
mod flags;
mod healthcheck;
mod run;

use thiserror::Error;

pub use self::commands::{ArgDecl, Command, CommandKind, KeyValue, ShellCommand};
pub use self::copy::{AddOptions, CopyCommand, HeredocSource};
pub use self::healthcheck::{Healthcheck, parse_go_duration};
pub use self::run::{MountSpec, RunCommand};
use crate::parser::{Dockerfile, Location, Node};

/// A build stage: `FROM base [AS name]` and the commands after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Position among the stages, from 0 (`COPY --from=0`).
    pub index: usize,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// The base as written (`alpine:$V`, `scratch`, an earlier stage).
    pub base: String,
    /// `--platform=…` as written.
    pub platform: Option<String>,
    pub commands: Vec<Command>,
    pub location: Location,
    /// The FROM line as written, for progress and history.
    pub source: String,
}

impl Stage {
    /// The name, or the index when unnamed: how progress refers to it.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", self.index))
    }
}

/// A Dockerfile as stages, plus the ARGs before the first FROM.
#[derive(Debug, Clone, PartialEq)]
pub struct Instructions {
    /// Global ARGs: usable in FROM lines, redeclared to be used in a stage.
    pub meta_args: Vec<(ArgDecl, Location)>,
    pub stages: Vec<Stage>,
    /// The escape character, which expansion needs.
    pub escape: char,
}

/// What is wrong with an instruction, without the line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InstructionErrorKind {
    #[error("unknown instruction: {word}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownInstruction {
        word: String,
        suggestion: Option<String>,
    },
    #[error("no build stage in current context: {0} before the first FROM")]
    BeforeFrom(String),
    #[error("arg should start with -- : {0}")]
    FlagSyntax(String),
    #[error("unknown flag: {0}")]
    UnknownFlag(String),
    #[error("missing a value on flag: {0}")]
    FlagMissingValue(String),
    #[error("expecting boolean value for flag {0}, not: {1}")]
    FlagNotBool(String, String),
    #[error("duplicate flag specified: {0}")]
    DuplicateFlag(String),
    #[error("{0} requires at least one argument")]
    AtLeastOneArgument(&'static str),
    #[error("{0} requires exactly one argument")]
    ExactlyOneArgument(&'static str),
    #[error(
        "{0} requires at least two arguments, but only one was provided. Destination could not be determined"
    )]
    NoDestination(&'static str),
    #[error("{0} names can not be blank")]
    BlankName(&'static str),
    #[error("FROM requires either one or three arguments")]
    FromArguments,
    #[error(
        "invalid name for build stage: {0:?}, name can't start with a number or contain symbols"
    )]
    InvalidStageName(String),
    #[error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChain,
    #[error("{0} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger(String),
    #[error("HEALTHCHECK NONE takes no arguments or flags")]
    HealthcheckNoneArgs,
    #[error("Missing command after HEALTHCHECK CMD")]
    HealthcheckMissingCommand,
    #[error("Unknown type {0:?} in HEALTHCHECK (try CMD)")]
    HealthcheckType(String),
    #[error("invalid duration {value:?} for --{flag}: {reason}")]
    Duration {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--retries must be a whole number of at least 0 (not {0})")]
    Retries(String),
    #[error("SHELL requires the arguments to be in JSON form")]
    ShellNotJson,
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("{0} does not support heredocs as a destination")]
    HeredocDestination(&'static str),
    #[error("invalid mount {spec:?}: {reason}")]
    Mount { spec: String, reason: String },
    #[error("network mode {0:?} not supported (use default, none or host)")]
    Network(String),
    #[error("security mode {0:?} not supported (use sandbox or insecure)")]
    Security(String),
    #[error("{0}")]
    Heredoc(#[from] crate::shell::ExpandError),
    #[error(
        "unsupported frontend {0:?}: kiln builds with its own Dockerfile frontend and runs no frontend image (# syntax= may name docker/dockerfile or docker/dockerfile-upstream)"
    )]
    Frontend(String),
}

/// The frontend images whose syntax kiln's frontend is: a `# syntax=`
/// naming one (any tag or digest) is served by kiln itself.
const DOCKERFILE_FRONTENDS: &[&str] = &[
    "docker.io/docker/dockerfile",
    "docker.io/docker/dockerfile-upstream",
];

/// Refuses a `# syntax=` frontend kiln is not: BuildKit would run that
/// image as the frontend, which kiln cannot. An error, not a warning: a
/// Dockerfile written for another frontend (another syntax, other
/// instructions or meanings) built by kiln's own could make a different
/// image without anyone noticing, and a warning scrolls by in CI. The
/// Dockerfile frontend's own images (any version, `-labs`, upstream) are
/// served silently, as BuildKit serves them: kiln's frontend is that
/// syntax.
fn check_syntax(value: &str) -> Result<(), InstructionErrorKind> {
    // What follows the image is its command line.
    let image = value.split_whitespace().next().unwrap_or_default();
    let known = crate::reference::Reference::parse(image)
        .is_ok_and(|r| DOCKERFILE_FRONTENDS.contains(&r.repository().as_str()));
    if known {
        Ok(())
    } else {
        Err(InstructionErrorKind::Frontend(image.to_owned()))
    }
}

/// An invalid instruction and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("dockerfile parse error on line {line}: {kind}")]
pub struct InstructionError {
    pub line: usize,
    pub kind: InstructionErrorKind,
}

/// Groups the AST into stages and checks every instruction.
pub fn parse(df: &Dockerfile) -> Result<Instructions, InstructionError> {
    if let Some(syntax) = &df.directives.syntax {
        check_syntax(syntax).map_err(|kind| InstructionError {
            line: df.directives.syntax_line,
            kind,
        })?;
    }
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &df.instructions {
        let at = |kind| InstructionError {
            line: node.location.start,
            kind,
        };
        if node.command == "from" {
            let stage = commands::parse_from(node, stages.len()).map_err(at)?;
            stages.push(stage);
            continue;
        }
        let command = parse_command(node).map_err(at)?;
        match (stages.last_mut(), command.kind) {
            (Some(stage), kind) => stage.commands.push(Command { kind, ..command }),
            (None, CommandKind::Arg(decls)) => {
                meta_args.extend(decls.into_iter().map(|d| (d, node.location)));
            }
            (None, _) => {
                return Err(at(InstructionErrorKind::BeforeFrom(
                    node.keyword.to_uppercase(),
                )));
            }
        }
    }
    Ok(Instructions {
        meta_args,
        stages,
        escape: df.directives.escape,
    })
}

/// Parses one instruction other than FROM (also an ONBUILD trigger).
pub fn parse_command(node: &Node) -> Result<Command, InstructionErrorKind> {
    let kind = commands::parse_kind(node)?;
    Ok(Command {
        kind,
        location: node.location,
        original: node.original.trim().to_owned(),
    })
}

/// Every instruction word, for suggestions.
pub(crate) const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// The closest instruction word to a misspelt one, if any is close.
fn suggest(word: &str) -> Option<String> {
    let word = word.to_uppercase();
    INSTRUCTIONS
        .iter()
        .map(|&known| (edit_distance(&word, known), known))
        .filter(|&(d, known)| d > 0 && d <= known.len() / 3 + 1)
        .min()
        .map(|(_, known)| known.to_owned())
}

/// Levenshtein distance (for "did you mean" suggestions).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
