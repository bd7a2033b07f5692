//! The rules about what instructions do, run as BuildKit runs them while
//! it dispatches a stage: with the stage's variables (its base's ENV, its
//! ENVs and ARGs so far), its SHELL and WORKDIR, and which CMD,
//! ENTRYPOINT and HEALTHCHECK it set.

use std::collections::{BTreeMap, BTreeSet};

use super::stages::Globals;
use super::vars::{Env, expand, suggest};
use super::{CheckConfig, CheckOptions, File, Linter, StageNodes, rules};
use crate::instructions::{self, ArgDecl, CommandKind, CopyCommand, KeyValue, ShellCommand};
use crate::parser::{Location, Node};
use crate::reference::Reference;
use crate::shell::Lexer;
use kiln_proto::dockerignore::Matcher;

/// Build arguments BuildKit never puts in a step's environment.
const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// What a stage has at one point, for the rules.
#[derive(Debug, Clone, Default)]
struct StageState {
    env: Env,
    /// ARG names declared in the stage (with or without a value).
    args: BTreeSet<String>,
    /// The variables of the base are unknown (an image not resolved): no
    /// `UndefinedVar` for this stage.
    unknown_env: bool,
    shell_set: bool,
    workdir_set: bool,
    /// Where CMD, ENTRYPOINT and HEALTHCHECK were last set in this stage.
    once: BTreeMap<&'static str, Location>,
}

pub(super) fn check(
    linter: &mut Linter,
    config: &CheckConfig,
    file: &File<'_>,
    options: &CheckOptions<'_>,
) {
    let lexer = Lexer::new(file.escape);
    let globals = Globals::new(file, options, true, &lexer);
    let ignore = Ignore::new(options.dockerignore);
    let mut done: Vec<Option<StageState>> = Vec::new();
    for (index, stage) in file.stages.iter().enumerate() {
        let wanted = options.stages.is_none_or(|s| s.contains(&index));
        let state = wanted.then(|| {
            let mut stage_check = StageCheck {
                linter: &mut *linter,
                lexer: &lexer,
                globals: &globals,
                options,
                ignore: &ignore,
                state: base_state(file, stage, &done, &globals, &lexer, options),
            };
            for node in &stage.commands {
                stage_check.dispatch(&config.with_comments(&node.comments), node);
            }
            stage_check.state
        });
        done.push(state);
    }
}

/// The state a stage starts with: an earlier stage's end, scratch's, or an
/// image's (when the resolver knows it).
fn base_state(
    file: &File<'_>,
    stage: &StageNodes<'_>,
    done: &[Option<StageState>],
    globals: &Globals,
    lexer: &Lexer<'_>,
    options: &CheckOptions<'_>,
) -> StageState {
    let base = stage.from.args.first().map(String::as_str).unwrap_or("");
    let base = expand(lexer, base, &globals.values)
        .result
        .unwrap_or_default();
    let earlier = file.stages[..done.len()]
        .iter()
        .rposition(|s| s.name.as_deref() == Some(base.to_ascii_lowercase().as_str()));
    let mut state = match earlier.map(|i| done[i].as_ref()) {
        Some(Some(parent)) => StageState {
            once: BTreeMap::new(),
            ..parent.clone()
        },
        // A stage the build does not convert: what it holds is unknown.
        Some(None) => StageState {
            unknown_env: true,
            ..StageState::default()
        },
        None if base.eq_ignore_ascii_case("scratch") => StageState::default(),
        None => image_state(&base, options),
    };
    if state.env.get("PATH").is_none() {
        state.env.set("PATH", crate::convert::DEFAULT_PATH);
    }
    state
}

fn image_state(base: &str, options: &CheckOptions<'_>) -> StageState {
    let resolved = options.resolver.and_then(|r| {
        let reference = Reference::parse(base).ok()?;
        r.resolve(&reference, &options.target_platform).ok()?
    });
    match resolved {
        Some(image) => StageState {
            env: Env::from_list(image.config.env.as_deref().unwrap_or_default()),
            shell_set: image.config.shell.is_some_and(|s| !s.is_empty()),
            ..StageState::default()
        },
        None => StageState {
            unknown_env: true,
            ..StageState::default()
        },
    }
}

/// The checks of one stage's instructions, in order.
struct StageCheck<'l, 'o> {
    linter: &'l mut Linter,
    lexer: &'l Lexer<'l>,
    globals: &'l Globals,
    options: &'l CheckOptions<'o>,
    ignore: &'l Ignore,
    state: StageState,
}

impl StageCheck<'_, '_> {
    /// Runs the rules about one instruction and updates the stage's state
    /// as dispatching it would.
    fn dispatch(&mut self, config: &CheckConfig, node: &Node) {
        // An invalid instruction fails the conversion, which says why.
        let Ok(command) = instructions::parse_command(node) else {
            return;
        };
        let at = node.location;
        match &command.kind {
            CommandKind::Env(pairs) => self.key_values(config, node, pairs, true),
            CommandKind::Label(pairs) => self.key_values(config, node, pairs, false),
            CommandKind::Arg(decls) => self.arg(config, decls, at),
            CommandKind::Cmd(cmd) => self.command_line(config, node, "CMD", cmd),
            CommandKind::Entrypoint(cmd) => self.command_line(config, node, "ENTRYPOINT", cmd),
            CommandKind::Healthcheck(_) => self.used_once(config, "HEALTHCHECK", node),
            CommandKind::Shell(_) => self.state.shell_set = true,
            CommandKind::Workdir(path) => self.workdir(config, path, at),
            CommandKind::Copy(copy) | CommandKind::Add(copy) => self.copy(config, node, copy),
            CommandKind::User(word) | CommandKind::StopSignal(word) => {
                self.expand(config, word, at);
            }
            CommandKind::Volume(words) => {
                for word in words {
                    self.expand(config, word, at);
                }
            }
            CommandKind::Run(run) => {
                let values = run.mounts.iter().flat_map(|m| &m.fields);
                for value in values.filter_map(|(_, v)| v.as_deref()) {
                    self.expand(config, value, at);
                }
            }
            CommandKind::Expose(ports) => self.expose(config, ports, at),
            CommandKind::Maintainer(_) | CommandKind::Onbuild(_) => {}
        }
    }

    /// ENV (`is_env`) and LABEL: `LegacyKeyValueFormat`; ENV's keys
    /// checked for secrets; the words expanded, and ENV's values set (each
    /// pair expanded with the environment from before the instruction).
    fn key_values(&mut self, config: &CheckConfig, node: &Node, pairs: &[KeyValue], is_env: bool) {
        let at = node.location;
        let keyword = node.keyword.to_uppercase();
        if node.args.get(2).is_some_and(String::is_empty) {
            let message = format!(
                "\"{keyword} key=value\" should be used instead of legacy \"{keyword} key value\" format"
            );
            self.linter
                .report(config, &rules::LEGACY_KEY_VALUE_FORMAT, at, message);
        }
        let mut expanded = Vec::new();
        for pair in pairs {
            if is_env {
                self.secret(config, "ENV", &pair.key, at);
            }
            let key = self.expand(config, &pair.key, at);
            let value = self.expand(config, &pair.value, at);
            expanded.push((key, value));
        }
        if is_env {
            for (key, value) in expanded {
                self.state.env.set(&key, &value);
            }
        }
    }

    /// ARG: names checked for secrets; each value (a build arg, the
    /// default, or the global ARG's) put in the environment.
    fn arg(&mut self, config: &CheckConfig, decls: &[ArgDecl], at: Location) {
        for decl in decls {
            self.secret(config, "ARG", &decl.name, at);
            let default = decl.default.as_ref().map(|d| self.expand(config, d, at));
            let value = match (self.options.build_args.get(&decl.name), default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(d)) => Some(d),
                (None, None) => self.globals.values.get(&decl.name).map(str::to_owned),
            };
            self.state.args.insert(decl.name.clone());
            if let Some(value) = value.filter(|_| !NON_ENV_ARGS.contains(&&*decl.name)) {
                self.state.env.set(&decl.name, &value);
            }
        }
    }

    /// CMD and ENTRYPOINT (`name`): `MultipleInstructionsDisallowed`, and
    /// `JsonArgsRecommended` for the shell form unless the stage set a
    /// SHELL.
    fn command_line(
        &mut self,
        config: &CheckConfig,
        node: &Node,
        name: &'static str,
        cmd: &ShellCommand,
    ) {
        self.used_once(config, name, node);
        if cmd.prepend_shell && !self.state.shell_set {
            let message = format!(
                "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                node.keyword
            );
            self.linter.report(
                config,
                &rules::JSON_ARGS_RECOMMENDED,
                node.location,
                message,
            );
        }
    }

    /// WORKDIR: `WorkdirRelativePath` for a relative path before any
    /// WORKDIR of the stage.
    fn workdir(&mut self, config: &CheckConfig, path: &str, at: Location) {
        let path = self.expand(config, path, at);
        if !self.state.workdir_set && !path.starts_with('/') {
            let message = format!(
                "Relative workdir {path:?} can have unexpected results if the base image changes"
            );
            self.linter
                .report(config, &rules::WORKDIR_RELATIVE_PATH, at, message);
        }
        self.state.workdir_set = true;
    }

    /// Expands a word as the conversion will, reporting `UndefinedVar` for
    /// each name neither set nor declared.
    fn expand(&mut self, config: &CheckConfig, word: &str, at: Location) -> String {
        let matches = expand(self.lexer, word, &self.state.env);
        if !self.state.unknown_env {
            let undefined = matches.unmatched.iter().filter(|n| {
                !self.state.args.contains(n.as_str()) && !NON_ENV_ARGS.contains(&n.as_str())
            });
            for name in undefined {
                let mut message = format!("Usage of undefined variable '${name}'");
                if let Some(hint) = suggest(name, self.state.env.keys(), true) {
                    message.push_str(&format!(" (did you mean ${hint}?)"));
                }
                self.linter
                    .report(config, &rules::UNDEFINED_VAR, at, message);
            }
        }
        matches.result.unwrap_or_default()
    }

    /// `SecretsUsedInArgOrEnv`: a name with a word such as `password` or
    /// `token` in it (words are separated by `_`), and none such as
    /// `public` or `file`.
    fn secret(&mut self, config: &CheckConfig, instruction: &str, key: &str, at: Location) {
        const DENY: &[&str] = &[
            "apikey",
            "auth",
            "credential",
            "credentials",
            "key",
            "password",
            "pword",
            "passwd",
            "secret",
            "token",
        ];
        const ALLOW: &[&str] = &["public", "file", "version"];
        let has = |words: &[&str]| {
            key.split('_')
                .any(|part| words.iter().any(|w| part.eq_ignore_ascii_case(w)))
        };
        if has(DENY) && !has(ALLOW) {
            let message = format!(
                "Do not use ARG or ENV instructions for sensitive data ({instruction} {key:?})"
            );
            self.linter
                .report(config, &rules::SECRETS_USED_IN_ARG_OR_ENV, at, message);
        }
    }

    /// `MultipleInstructionsDisallowed`: reported at the earlier one, the
    /// one that has no effect.
    fn used_once(&mut self, config: &CheckConfig, name: &'static str, node: &Node) {
        if let Some(earlier) = self.state.once.insert(name, node.location) {
            let message = format!(
                "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                node.keyword
            );
            let rule = &rules::MULTIPLE_INSTRUCTIONS_DISALLOWED;
            self.linter.report(config, rule, earlier, message);
        }
    }

    fn copy(&mut self, config: &CheckConfig, node: &Node, copy: &CopyCommand) {
        let at = node.location;
        let flags = [copy.chown.as_deref(), copy.chmod.as_deref()];
        let checksum = copy.add.as_ref().and_then(|a| a.checksum.as_deref());
        for word in flags.into_iter().chain([checksum]).flatten() {
            self.expand(config, word, at);
        }
        let sources: Vec<String> = copy
            .sources
            .iter()
            .map(|s| self.expand(config, s, at))
            .collect();
        self.expand(config, &copy.dest, at);
        if copy.from.is_some() {
            return;
        }
        let verb = if copy.add.is_some() { "Add" } else { "Copy" };
        for source in sources.iter().filter(|s| !is_remote(s)) {
            if let Some(path) = self.ignore.ignored(source) {
                let message =
                    format!("Attempting to {verb} file {path:?} that is excluded by .dockerignore");
                self.linter
                    .report(config, &rules::COPY_IGNORED_FILE, at, message);
            }
        }
    }

    /// `ExposeProtoCasing`, `ExposeInvalidFormat`.
    fn expose(&mut self, config: &CheckConfig, ports: &[String], at: Location) {
        let words = ports
            .iter()
            .filter_map(|p| self.lexer.expand_words(p, &self.state.env).ok())
            .flatten();
        for port in words {
            let parts: Vec<&str> = port.split(':').collect();
            let container = parts.last().copied().unwrap_or_default();
            let proto = container.split('/').nth(1).unwrap_or("tcp");
            if proto != proto.to_lowercase() {
                let message =
                    format!("Defined protocol '{port}' in EXPOSE instruction should be lowercase");
                self.linter
                    .report(config, &rules::EXPOSE_PROTO_CASING, at, message);
            }
            if parts.len() > 1 {
                let message = format!(
                    "EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'"
                );
                self.linter
                    .report(config, &rules::EXPOSE_INVALID_FORMAT, at, message);
            }
        }
    }
}

/// ADD's URLs and Git remotes are not context files.
fn is_remote(source: &str) -> bool {
    source.contains("://") || source.starts_with("git@")
}

/// `.dockerignore` as `CopyIgnoredFile` reads it.
struct Ignore {
    matcher: Option<Matcher>,
    /// A pattern excludes every entry of the context root.
    root_ignored: bool,
}

impl Ignore {
    /// No rule without patterns, or with an exception (`!pattern`): an
    /// excluded directory may have files let back in, which cannot be told
    /// without the context (BuildKit's reason too).
    fn new(patterns: &[String]) -> Self {
        let usable = !patterns.is_empty() && !patterns.iter().any(|p| p.starts_with('!'));
        Self {
            matcher: usable.then(|| Matcher::new(patterns).ok()).flatten(),
            root_ignored: patterns
                .iter()
                .any(|p| matches!(p.as_str(), "*" | "**" | "**/*")),
        }
    }

    /// The cleaned path when `.dockerignore` excludes `source` or a parent.
    fn ignored(&self, source: &str) -> Option<String> {
        let matcher = self.matcher.as_ref()?;
        let path = crate::paths::clean(source);
        let root = path == "." || path == "/";
        if root && !self.root_ignored {
            return None;
        }
        let relative = path.trim_start_matches('/');
        let hit = if root {
            self.root_ignored
        } else {
            matcher.excludes(relative)
        };
        hit.then_some(path)
    }
}
