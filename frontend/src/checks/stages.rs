//! The rules about the file as a whole, run on every stage: instruction
//! casing, stage names, MAINTAINER, and what FROM lines expand to.

use std::collections::BTreeSet;

use super::vars::{Env, expand, suggest};
use super::{CheckConfig, CheckOptions, File, Linter, StageNodes, rules};
use crate::instructions::{self, CommandKind};
use crate::parser::Node;
use crate::reference::Reference;
use crate::shell::Lexer;

/// Stage names that mean something else to a build.
const RESERVED_STAGE_NAMES: &[&str] = &["context", "scratch"];

pub(super) fn check(
    linter: &mut Linter,
    config: &CheckConfig,
    file: &File<'_>,
    options: &CheckOptions<'_>,
) {
    for node in file.meta_args.iter().copied().chain(
        file.stages
            .iter()
            .flat_map(|s| std::iter::once(s.from).chain(s.commands.iter().copied())),
    ) {
        node_rules(linter, &config.with_comments(&node.comments), node);
    }
    stage_names(linter, config, &file.stages);
    command_casing(linter, config, &file.stages);
    let lexer = Lexer::new(file.escape);
    let defaults = Globals::new(file, options, false, &lexer);
    for stage in &file.stages {
        invalid_default_base(linter, config, stage, &defaults, &lexer);
    }
    let globals = Globals::new(file, options, true, &lexer);
    for stage in &file.stages {
        let config = config.with_comments(&stage.from.comments);
        from_args(linter, &config, stage, &globals, &lexer);
    }
}

/// The rules BuildKit runs as it parses each instruction.
fn node_rules(linter: &mut Linter, config: &CheckConfig, node: &Node) {
    let at = node.location;
    match node.command.as_str() {
        "maintainer" => {
            let message = "Maintainer instruction is deprecated in favor of using label";
            linter.report(
                config,
                &rules::MAINTAINER_DEPRECATED,
                at,
                message.to_owned(),
            );
        }
        "from" => {
            if let [_, as_word, name] = node.args.as_slice() {
                if *name != name.to_lowercase() {
                    let message = format!("Stage name '{name}' should be lowercase");
                    linter.report(config, &rules::STAGE_NAME_CASING, at, message);
                }
                if !as_matches_from(&node.keyword, as_word) {
                    let message = format!(
                        "'{as_word}' and '{}' keywords' casing do not match",
                        node.keyword
                    );
                    linter.report(config, &rules::FROM_AS_CASING, at, message);
                }
                definition_description(linter, config, node, "FROM", &[name.to_lowercase()]);
            }
        }
        "arg" => {
            if let Ok(CommandKind::Arg(decls)) = instructions::parse_command(node).map(|c| c.kind) {
                let keys: Vec<String> = decls.into_iter().map(|d| d.name).collect();
                definition_description(linter, config, node, "ARG", &keys);
            }
        }
        _ => {}
    }
}

/// `as` is cased as `FROM` is (when `FROM` is consistently cased at all:
/// otherwise `ConsistentInstructionCasing` says so).
fn as_matches_from(from: &str, as_word: &str) -> bool {
    if from == from.to_lowercase() {
        as_word == as_word.to_lowercase()
    } else if from == from.to_uppercase() {
        as_word == as_word.to_uppercase()
    } else {
        true
    }
}

/// `InvalidDefinitionDescription` (experimental): the comment right before
/// a stage or ARG starts with its name.
fn definition_description(
    linter: &mut Linter,
    config: &CheckConfig,
    node: &Node,
    instruction: &str,
    keys: &[String],
) {
    let (Some(last), Some(first_key)) = (node.comments.last(), keys.first()) else {
        return;
    };
    let word = last.split(' ').next().unwrap_or_default();
    if keys.iter().any(|k| k == word) {
        return;
    }
    let example = if keys.len() > 1 {
        "<arg_key>"
    } else {
        first_key
    };
    let message =
        format!("Comment for {instruction} should follow the format: `# {example} <description>`");
    let rule = &rules::INVALID_DEFINITION_DESCRIPTION;
    linter.report(config, rule, node.location, message);
}

fn stage_names(linter: &mut Linter, config: &CheckConfig, stages: &[StageNodes<'_>]) {
    let mut seen = BTreeSet::new();
    for stage in stages {
        let Some(name) = &stage.name else { continue };
        let at = stage.from.location;
        if RESERVED_STAGE_NAMES.contains(&name.as_str()) {
            let message =
                format!("Stage name should not use the same name as reserved stage {name:?}");
            linter.report(config, &rules::RESERVED_STAGE_NAME, at, message);
        }
        if !seen.insert(name) {
            let message = format!("Duplicate stage name {name:?}, stage names should be unique");
            linter.report(config, &rules::DUPLICATE_STAGE_NAME, at, message);
        }
    }
}

/// Every instruction word of the stages is all lower or all upper case,
/// as most of them are.
fn command_casing(linter: &mut Linter, config: &CheckConfig, stages: &[StageNodes<'_>]) {
    let words = || {
        stages
            .iter()
            .flat_map(|s| std::iter::once(s.from).chain(s.commands.iter().copied()))
    };
    let (mut lower, mut upper) = (0usize, 0usize);
    for node in words() {
        if node.keyword == node.keyword.to_lowercase() {
            lower += 1;
        } else if node.keyword == node.keyword.to_uppercase() {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    for node in words() {
        let word = &node.keyword;
        let casing = if majority_lower && *word != word.to_lowercase() {
            "lowercase"
        } else if !majority_lower && *word != word.to_uppercase() {
            "uppercase"
        } else {
            continue;
        };
        let message =
            format!("Command '{word}' should match the case of the command majority ({casing})");
        linter.report(
            config,
            &rules::CONSISTENT_INSTRUCTION_CASING,
            node.location,
            message,
        );
    }
}

/// The global ARGs (and the predefined platform ARGs) as FROM lines see
/// them, and every name declared before the first FROM.
pub(super) struct Globals {
    pub(super) values: Env,
    pub(super) declared: BTreeSet<String>,
}

impl Globals {
    /// With `build_args`, as the build sees them; without, as the
    /// Dockerfile's defaults make them.
    pub(super) fn new(
        file: &File<'_>,
        options: &CheckOptions<'_>,
        build_args: bool,
        lexer: &Lexer<'_>,
    ) -> Self {
        let mut values = Env::default();
        for (prefix, p) in [
            ("BUILD", &options.build_platform),
            ("TARGET", &options.target_platform),
        ] {
            values.set(&format!("{prefix}PLATFORM"), &crate::platform::format(p));
            values.set(&format!("{prefix}OS"), &p.os);
            values.set(&format!("{prefix}ARCH"), &p.architecture);
            values.set(&format!("{prefix}VARIANT"), &p.variant);
        }
        let mut declared = BTreeSet::new();
        let decls = file
            .meta_args
            .iter()
            .filter_map(|node| match instructions::parse_command(node) {
                Ok(instructions::Command {
                    kind: CommandKind::Arg(decls),
                    ..
                }) => Some(decls),
                _ => None,
            })
            .flatten();
        for decl in decls {
            declared.insert(decl.name.clone());
            let given = build_args
                .then(|| options.build_args.get(&decl.name))
                .flatten();
            let value = match (given, &decl.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => expand(lexer, default, &values).result,
                (None, None) => None,
            };
            if let Some(value) = value {
                values.set(&decl.name, &value);
            }
        }
        Self { values, declared }
    }
}

/// `InvalidDefaultArgInFrom`: with the ARGs' defaults alone, the base is
/// not an image name.
fn invalid_default_base(
    linter: &mut Linter,
    config: &CheckConfig,
    stage: &StageNodes<'_>,
    defaults: &Globals,
    lexer: &Lexer<'_>,
) {
    let Some(base) = stage.from.args.first() else {
        return;
    };
    let Some(result) = expand(lexer, base, &defaults.values).result else {
        return;
    };
    if result.is_empty() || Reference::parse(&result).is_err() {
        let message =
            format!("Default value for ARG {base} results in empty or invalid base image name");
        let rule = &rules::INVALID_DEFAULT_ARG_IN_FROM;
        linter.report(config, rule, stage.from.location, message);
    }
}

/// `UndefinedArgInFrom`, `RedundantTargetPlatform`,
/// `FromPlatformFlagConstDisallowed`: what the base and `--platform`
/// expand to.
fn from_args(
    linter: &mut Linter,
    config: &CheckConfig,
    stage: &StageNodes<'_>,
    globals: &Globals,
    lexer: &Lexer<'_>,
) {
    let at = stage.from.location;
    let known: BTreeSet<&str> = globals
        .values
        .keys()
        .chain(globals.declared.iter().map(String::as_str))
        .collect();
    let undeclared = |linter: &mut Linter, unmatched: &BTreeSet<String>| {
        for name in unmatched.iter().filter(|n| !known.contains(n.as_str())) {
            let hint = suggest(name, known.iter().copied(), false);
            let mut message = format!("FROM argument '{name}' is not declared");
            if let Some(hint) = hint {
                message.push_str(&format!(" (did you mean {hint}?)"));
            }
            linter.report(config, &rules::UNDEFINED_ARG_IN_FROM, at, message);
        }
    };
    if let Some(base) = stage.from.args.first() {
        undeclared(linter, &expand(lexer, base, &globals.values).unmatched);
    }
    let Some(platform) = stage
        .from
        .flags
        .iter()
        .find_map(|f| f.strip_prefix("--platform="))
    else {
        return;
    };
    let matches = expand(lexer, platform, &globals.values);
    undeclared(linter, &matches.unmatched);
    let Some(result) = matches.result else { return };
    if matches.unmatched.is_empty()
        && matches.matched.len() == 1
        && matches.matched.contains("TARGETPLATFORM")
        && globals.values.get("TARGETPLATFORM") == Some(result.as_str())
    {
        let message = format!(
            "Setting platform to predefined {platform} in FROM is redundant as this is the default behavior"
        );
        linter.report(config, &rules::REDUNDANT_TARGET_PLATFORM, at, message);
    }
    if matches.matched.is_empty() && matches.unmatched.is_empty() {
        const_platform(linter, config, stage, &result);
    }
}

/// `FROM --platform=linux/amd64`, unless the stage's name says it is for
/// that OS or architecture.
fn const_platform(linter: &mut Linter, config: &CheckConfig, stage: &StageNodes<'_>, text: &str) {
    let Ok(p) = crate::platform::parse(text) else {
        return;
    };
    let name = stage.name.as_deref().unwrap_or_default();
    if name.contains(&p.os) || name.contains(&p.architecture) {
        return;
    }
    let message = format!("FROM --platform flag should not use constant value {text:?}");
    let rule = &rules::FROM_PLATFORM_FLAG_CONST_DISALLOWED;
    linter.report(config, rule, stage.from.location, message);
}
