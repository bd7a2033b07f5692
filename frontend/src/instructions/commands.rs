//! The typed commands, and the rules for the instructions that need no file
//! of their own.

use super::flags::{FlagType, Flags};
use super::{
    CopyCommand, Healthcheck, InstructionErrorKind as Kind, RunCommand, Stage, copy, healthcheck,
    run, suggest,
};
use crate::parser::{Heredoc, Location, Node};

/// One instruction inside a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub kind: CommandKind,
    pub location: Location,
    /// The instruction as written (continuations joined), for progress,
    /// history and errors.
    pub original: String,
}

/// What the instruction is, with its unexpanded arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandKind {
    Add(CopyCommand),
    Arg(Vec<ArgDecl>),
    Cmd(ShellCommand),
    Copy(CopyCommand),
    Entrypoint(ShellCommand),
    Env(Vec<KeyValue>),
    Expose(Vec<String>),
    Healthcheck(Healthcheck),
    Label(Vec<KeyValue>),
    Maintainer(String),
    /// The trigger instruction's text, stored in the image for later builds.
    Onbuild(String),
    Run(RunCommand),
    Shell(Vec<String>),
    StopSignal(String),
    User(String),
    Volume(Vec<String>),
    Workdir(String),
}

/// `KEY=value` of ENV and LABEL, both unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `ARG name[=default]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    /// The default, unexpanded.
    pub default: Option<String>,
}

/// A command line of RUN, CMD or ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    /// The JSON array (exec form), or one string (shell form).
    pub args: Vec<String>,
    /// Shell form: run through the stage's SHELL.
    pub prepend_shell: bool,
    /// Heredoc bodies (RUN only).
    pub files: Vec<Heredoc>,
}

impl ShellCommand {
    pub(super) fn from_node(node: &Node) -> Self {
        Self {
            args: node.args.clone(),
            prepend_shell: !node.json,
            files: node.heredocs.clone(),
        }
    }
}

const NO_FLAGS: &[(&str, FlagType)] = &[];

pub(super) fn parse_from(node: &Node, index: usize) -> Result<Stage, Kind> {
    let flags = Flags::parse(&node.flags, &[("platform", FlagType::String)])?;
    let name = match node.args.as_slice() {
        [_] => None,
        [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
            let lower = name.to_ascii_lowercase();
            let valid = lower.starts_with(|c: char| c.is_ascii_lowercase())
                && lower
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !valid {
                return Err(Kind::InvalidStageName(name.clone()));
            }
            Some(lower)
        }
        _ => return Err(Kind::FromArguments),
    };
    Ok(Stage {
        index,
        name,
        base: node.args[0].clone(),
        platform: flags.string("platform"),
        commands: Vec::new(),
        location: node.location,
        source: node.original.trim().to_owned(),
    })
}

/// The typed command of an instruction inside a stage, its flags and
/// arguments checked.
pub(super) fn parse_kind(node: &Node) -> Result<CommandKind, Kind> {
    Ok(match node.command.as_str() {
        "run" => CommandKind::Run(run::parse(node)?),
        "copy" => CommandKind::Copy(copy::parse(node, false)?),
        "add" => CommandKind::Add(copy::parse(node, true)?),
        "cmd" => CommandKind::Cmd(shell_command(node)?),
        "entrypoint" => CommandKind::Entrypoint(shell_command(node)?),
        "healthcheck" => CommandKind::Healthcheck(healthcheck::parse(node)?),
        "env" => CommandKind::Env(key_values(node, "ENV")?),
        "label" => CommandKind::Label(key_values(node, "LABEL")?),
        "arg" => CommandKind::Arg(arg_decls(node)?),
        "expose" => CommandKind::Expose(some_args(node, "EXPOSE")?),
        "volume" => CommandKind::Volume(volumes(node)?),
        "shell" => CommandKind::Shell(shell_args(node)?),
        "onbuild" => CommandKind::Onbuild(onbuild_trigger(node)?),
        "maintainer" => CommandKind::Maintainer(one_arg(node, "MAINTAINER")?),
        "user" => CommandKind::User(one_arg(node, "USER")?),
        "workdir" => CommandKind::Workdir(one_arg(node, "WORKDIR")?),
        "stopsignal" => CommandKind::StopSignal(one_arg(node, "STOPSIGNAL")?),
        _ => {
            return Err(Kind::UnknownInstruction {
                word: node.keyword.clone(),
                suggestion: suggest(&node.keyword),
            });
        }
    })
}

/// Refuses any flag: the instruction takes none.
fn no_flags(node: &Node) -> Result<(), Kind> {
    Flags::parse(&node.flags, NO_FLAGS)?;
    Ok(())
}

/// The one argument of MAINTAINER, USER, WORKDIR and STOPSIGNAL.
fn one_arg(node: &Node, name: &'static str) -> Result<String, Kind> {
    no_flags(node)?;
    match node.args.as_slice() {
        [arg] => Ok(arg.clone()),
        _ => Err(Kind::ExactlyOneArgument(name)),
    }
}

/// The arguments of an instruction that takes no flag and at least one
/// argument.
fn some_args(node: &Node, name: &'static str) -> Result<Vec<String>, Kind> {
    no_flags(node)?;
    if node.args.is_empty() {
        return Err(Kind::AtLeastOneArgument(name));
    }
    Ok(node.args.clone())
}

/// CMD and ENTRYPOINT: no flags; exec or shell form.
fn shell_command(node: &Node) -> Result<ShellCommand, Kind> {
    no_flags(node)?;
    Ok(ShellCommand::from_node(node))
}

/// ARG: `name` or `name=default`, one or more, none with a blank name.
fn arg_decls(node: &Node) -> Result<Vec<ArgDecl>, Kind> {
    no_flags(node)?;
    if node.args.is_empty() {
        return Err(Kind::AtLeastOneArgument("ARG"));
    }
    let decls = node.args.iter().map(|word| match word.split_once('=') {
        Some((name, default)) => ArgDecl {
            name: name.to_owned(),
            default: Some(default.to_owned()),
        },
        None => ArgDecl {
            name: word.clone(),
            default: None,
        },
    });
    let decls: Vec<_> = decls.collect();
    if decls.iter().any(|d| d.name.is_empty()) {
        return Err(Kind::BlankName("ARG"));
    }
    Ok(decls)
}

/// VOLUME: one or more paths, none blank.
fn volumes(node: &Node) -> Result<Vec<String>, Kind> {
    let volumes = some_args(node, "VOLUME")?;
    if volumes.iter().any(|v| v.trim().is_empty()) {
        return Err(Kind::EmptyVolume);
    }
    Ok(volumes)
}

/// SHELL: a JSON array of at least one word.
fn shell_args(node: &Node) -> Result<Vec<String>, Kind> {
    no_flags(node)?;
    if !node.json {
        return Err(Kind::ShellNotJson);
    }
    if node.args.is_empty() {
        return Err(Kind::AtLeastOneArgument("SHELL"));
    }
    Ok(node.args.clone())
}

/// ONBUILD: the trigger instruction's text (with its heredocs), stored for
/// later builds. A trigger cannot be ONBUILD, FROM or MAINTAINER.
fn onbuild_trigger(node: &Node) -> Result<String, Kind> {
    no_flags(node)?;
    let Some(child) = &node.child else {
        return Err(Kind::AtLeastOneArgument("ONBUILD"));
    };
    match child.command.as_str() {
        "onbuild" => return Err(Kind::OnbuildChain),
        "from" | "maintainer" => {
            return Err(Kind::OnbuildTrigger(child.keyword.to_uppercase()));
        }
        _ => {}
    }
    let mut expression = child.original.trim().to_owned();
    for doc in &node.heredocs {
        expression.push('\n');
        expression.push_str(&doc.content);
        expression.push_str(&doc.name);
    }
    Ok(expression)
}

/// ENV and LABEL: the parser's key/value/separator triples.
fn key_values(node: &Node, name: &'static str) -> Result<Vec<KeyValue>, Kind> {
    no_flags(node)?;
    if node.args.is_empty() {
        return Err(Kind::AtLeastOneArgument(name));
    }
    node.args
        .chunks(3)
        .map(|triple| match triple {
            [key, ..] if key.is_empty() => Err(Kind::BlankName(name)),
            [key, value, _] => Ok(KeyValue {
                key: key.clone(),
                value: value.clone(),
            }),
            _ => Err(Kind::AtLeastOneArgument(name)),
        })
        .collect()
}
