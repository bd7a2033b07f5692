//! Build checks: BuildKit's Dockerfile linter (`frontend/dockerfile/linter`,
//! the rules in `ruleset.go`), with its rule names, messages and URLs.
//!
//! [`run`] reads the parsed Dockerfile ([`parser::Dockerfile`]) with the
//! build's arguments and `.dockerignore` and returns every violation with
//! the lines it is on. Which rules run and whether a violation fails the
//! build is [`CheckConfig`]: the `# check=` directive, replaced by the
//! `BUILDKIT_DOCKERFILE_CHECK` build argument, and `# check=` comments
//! right before one instruction. As in BuildKit, the rules about the file
//! as a whole (casing, stage names, FROM lines, MAINTAINER) look at every
//! stage, and the rules about what an instruction does only at the stages
//! the build needs ([`CheckOptions::stages`]; all of them for
//! `kiln build --check`).
//!
//! The checks work on the AST node by node, so that a Dockerfile another
//! instruction of which is invalid still gets its warnings (BuildKit prints
//! those before the error).

mod config;
mod dispatch;
pub mod rules;
mod stages;
mod vars;

use std::collections::{BTreeMap, BTreeSet};

use kiln_proto::ops::v1::Platform;
use serde::Serialize;
use thiserror::Error;

pub use self::config::{CHECK_BUILD_ARG, CheckConfig};
pub use self::rules::Rule;
use crate::convert::ImageResolver;
use crate::parser::{self, Location, Node};

/// One violation of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The rule's name (`FromAsCasing`).
    pub rule: String,
    /// What the rule asks for, in general.
    pub description: String,
    /// The rule's documentation.
    pub url: String,
    /// What is wrong here (BuildKit's `Detail`).
    pub message: String,
    /// The lines of the instruction (0 when none).
    pub location: Location,
}

impl Violation {
    fn new(rule: &Rule, message: String, location: Location) -> Self {
        Self {
            rule: rule.name.to_owned(),
            description: rule.description.to_owned(),
            url: rule.url.to_owned(),
            message,
            location,
        }
    }

    /// BuildKit's one-line form: `Rule: message (line N)`.
    pub fn short(&self) -> String {
        match self.location.start {
            0 => format!("{}: {}", self.rule, self.message),
            line => format!("{}: {} (line {line})", self.rule, self.message),
        }
    }
}

/// What the checks need besides the Dockerfile.
pub struct CheckOptions<'a> {
    /// `--build-arg` values.
    pub build_args: &'a BTreeMap<String, String>,
    /// `.dockerignore` patterns (for `CopyIgnoredFile`).
    pub dockerignore: &'a [String],
    /// The stages (by index) whose instructions are checked; `None`: all.
    pub stages: Option<&'a BTreeSet<usize>>,
    /// Base images' configs (their ENV and SHELL); without one, a stage on
    /// an image is not checked for undefined variables.
    pub resolver: Option<&'a dyn ImageResolver>,
    pub build_platform: Platform,
    pub target_platform: Platform,
}

impl<'a> CheckOptions<'a> {
    /// Options for all stages of a build for the host's platform.
    pub fn new(build_args: &'a BTreeMap<String, String>) -> Self {
        Self {
            build_args,
            dockerignore: &[],
            stages: None,
            resolver: None,
            build_platform: crate::platform::host(),
            target_platform: crate::platform::host(),
        }
    }
}

/// The violations found, by line, and whether they fail the build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// `error=true` was asked for.
    pub error: bool,
}

impl Report {
    /// The build's error when `error=true` and a rule was violated:
    /// BuildKit's "lint violation found for rules: …", each rule once, in
    /// the order of their first violation.
    pub fn failure(&self) -> Option<CheckError> {
        if !self.error || self.violations.is_empty() {
            return None;
        }
        let mut rules: Vec<&str> = Vec::new();
        for v in &self.violations {
            if !rules.contains(&v.rule.as_str()) {
                rules.push(&v.rule);
            }
        }
        Some(CheckError::Violations(rules.join(", ")))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckError {
    #[error("failed to parse check options {value:?}: {reason}")]
    Options { value: String, reason: String },
    #[error("lint violation found for rules: {0}")]
    Violations(String),
}

/// Runs the checks on a parsed Dockerfile.
pub fn run(df: &parser::Dockerfile, options: &CheckOptions<'_>) -> Result<Report, CheckError> {
    let config = CheckConfig::for_build(df.directives.check.as_deref(), options.build_args)?;
    let file = File::new(df);
    let mut linter = Linter::default();
    for warning in &df.warnings {
        if warning.message.starts_with(parser::EMPTY_CONTINUATION) {
            let at = Location {
                start: warning.line,
                end: warning.line,
            };
            let message = "Empty continuation line".to_owned();
            linter.report(&config, &rules::NO_EMPTY_CONTINUATION, at, message);
        }
    }
    stages::check(&mut linter, &config, &file, options);
    dispatch::check(&mut linter, &config, &file, options);
    let mut violations = linter.violations;
    violations.sort_by_key(|v| v.location.start);
    Ok(Report {
        violations,
        error: config.error,
    })
}

/// Collects violations of the rules a configuration enables.
#[derive(Default)]
struct Linter {
    violations: Vec<Violation>,
}

impl Linter {
    fn report(&mut self, config: &CheckConfig, rule: &Rule, at: Location, message: String) {
        if config.enabled(rule) {
            self.violations.push(Violation::new(rule, message, at));
        }
    }
}

/// The Dockerfile as the checks walk it: the global ARGs and the stages.
struct File<'a> {
    escape: char,
    meta_args: Vec<&'a Node>,
    stages: Vec<StageNodes<'a>>,
}

/// One stage: its FROM and the instructions after it.
struct StageNodes<'a> {
    from: &'a Node,
    /// `AS name`, lower-cased (BuildKit's stage name).
    name: Option<String>,
    commands: Vec<&'a Node>,
}

impl<'a> File<'a> {
    fn new(df: &'a parser::Dockerfile) -> Self {
        let mut file = File {
            escape: df.directives.escape,
            meta_args: Vec::new(),
            stages: Vec::new(),
        };
        for node in &df.instructions {
            match (node.command.as_str(), file.stages.last_mut()) {
                ("from", _) => file.stages.push(StageNodes {
                    from: node,
                    name: match node.args.as_slice() {
                        [_, _, name] => Some(name.to_ascii_lowercase()),
                        _ => None,
                    },
                    commands: Vec::new(),
                }),
                (_, Some(stage)) => stage.commands.push(node),
                ("arg", None) => file.meta_args.push(node),
                _ => {}
            }
        }
        file
    }
}

#[cfg(test)]
mod tests;
