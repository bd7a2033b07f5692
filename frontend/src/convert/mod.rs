//! Stages → a content-addressed graph of ops plus each stage's image config
//! (BuildKit's `dockerfile2llb`).
//!
//! Conversion starts at the target stage and converts a stage only when
//! something needs it (its FROM, a `COPY --from`, a `RUN --mount from=`), so
//! stages the target does not need are not in the graph. One `dispatch_*`
//! function per instruction lives in the file named after its feature.

mod dispatch_config;
mod dispatch_file;
mod dispatch_run;
mod epoch;
mod error;
mod graph;
mod image;
mod mounts;
mod named;
mod state;

use std::collections::{BTreeMap, BTreeSet};

use kiln_proto::ops::v1::{ImageSource, LocalSource, Op, Platform, SourceOp, op, source_op};
use serde::Serialize;

pub use self::error::{ConvertError, ConvertErrorKind};
use self::graph::GraphBuilder;
pub use self::graph::{Vertex, VertexMeta, op_cache_digest, op_digest, sha256_digest};
pub use self::image::{Empty, HealthConfig, History, ImageConfig};
pub use self::named::{NamedContext, context_key, local_name};
pub(crate) use self::state::DEFAULT_PATH;
pub use self::state::StageImage;
use self::state::StageState;
use crate::instructions::{self, CommandKind, Instructions};
use crate::parser::{self, Location, Warning};
use crate::platform;
use crate::reference::Reference;
use crate::shell::{Cancel, Lexer, Vars};
use kiln_proto::sandbox::{self, SandboxOptions};

/// How long a chain of stages that need one another (`FROM a AS b`,
/// `COPY --from`, `RUN --mount from=`) may be. Conversion recurses along
/// such a chain, so without a bound a long one overflows the stack and
/// aborts the process; real Dockerfiles chain a handful of stages.
pub const MAX_STAGE_DEPTH: usize = 128;

/// The stack a thread converting a Dockerfile should have: a chain of
/// [`MAX_STAGE_DEPTH`] stages needs about 3 MiB in a debug build, more than
/// the 2 MiB of tokio's blocking threads.
pub const CONVERT_STACK: usize = 16 << 20;

/// The bytes of ENV, ARG and LABEL keys and values one stage may hold
/// (its base image's included). Four times Linux's usual limit on a
/// process's whole argument list and environment (`ARG_MAX`, 2 MiB), which
/// RUN has to fit in anyway.
pub const MAX_STAGE_VARS: usize = 4 << 20;

/// The bytes of ENV, ARG and LABEL values all converted stages may hold
/// together (each stage its own copy of what it inherits).
pub const MAX_TOTAL_VARS: usize = 64 << 20;

/// What a base image brings: its config and, when known, its digest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedImage {
    /// Manifest digest (`sha256:…`); pins the source op when given.
    pub digest: Option<String>,
    pub config: ImageConfig,
}

/// Looks up base images while converting. Implementations read kiln's
/// image store or a registry; the frontend itself does no I/O.
pub trait ImageResolver {
    /// The image `reference` for `platform`; `Ok(None)` when the image is not
    /// known yet (the graph is still made, with an empty base config, and the
    /// solver fetches the image or fails clearly).
    fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String>;
}

/// A resolver that knows no image: configs come only from the Dockerfile.
pub struct NoImages;

impl ImageResolver for NoImages {
    fn resolve(&self, _: &Reference, _: &Platform) -> Result<Option<ResolvedImage>, String> {
        Ok(None)
    }
}

/// The inputs of a conversion besides the Dockerfile.
pub struct ConvertOptions<'a> {
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `--target`: the stage to build; the last one when `None`.
    pub target: Option<String>,
    /// The platform the build runs on (`BUILDPLATFORM`).
    pub build_platform: Platform,
    /// The platform to build for (`TARGETPLATFORM`, default of `FROM`).
    pub target_platform: Platform,
    /// `.dockerignore` patterns, applied to the build context.
    pub dockerignore: Vec<String>,
    /// When the build context last changed (seconds since the epoch), what
    /// `SOURCE_DATE_EPOCH=context` stands for; `None` for a local directory.
    pub context_time: Option<u64>,
    /// Every RUN step's sandbox settings (`--add-host`, `--ulimit`,
    /// `--shm-size`); a `BUILDKIT_SANDBOX_HOSTNAME` build arg, checked,
    /// takes the place of `hostname`.
    pub sandbox: SandboxOptions,
    /// Whether progress names each stage's platform (a build for several
    /// platforms: `[linux/arm64 build 2/3] RUN make`).
    pub name_platforms: bool,
    pub resolver: &'a dyn ImageResolver,
    /// Asked between instructions and during expansion: conversion stops
    /// with [`ConvertErrorKind::Cancelled`] soon after it says so.
    pub cancel: Option<Cancel<'a>>,
    /// `--build-context`s by key ([`context_key`]): read before a stage or
    /// an image of the name (see [`NamedContext`]).
    pub named_contexts: BTreeMap<String, NamedContext>,
}

impl<'a> ConvertOptions<'a> {
    /// Options for a build of the host's platform with no build args.
    pub fn new(resolver: &'a dyn ImageResolver) -> Self {
        Self {
            build_args: BTreeMap::new(),
            target: None,
            build_platform: platform::host(),
            target_platform: platform::host(),
            dockerignore: Vec::new(),
            context_time: None,
            sandbox: SandboxOptions::default(),
            name_platforms: false,
            resolver,
            cancel: None,
            named_contexts: BTreeMap::new(),
        }
    }
}

/// The result of one stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageResult {
    pub index: usize,
    pub name: Option<String>,
    /// Digest of the vertex with the stage's final filesystem; `None` for an
    /// empty one (`FROM scratch` and no filesystem change).
    pub root: Option<String>,
    pub image: StageImage,
}

/// The graph for a target, and every stage it needed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildGraph {
    /// Every op, each after its inputs, without duplicates.
    pub vertices: Vec<Vertex>,
    /// The converted stages, by index.
    pub stages: Vec<StageResult>,
    /// Index into `stages` of the target.
    pub target: usize,
    pub warnings: Vec<Warning>,
    /// `SOURCE_DATE_EPOCH`, resolved: the image's created time, the bound of
    /// its layers' mtimes.
    pub source_date_epoch: Option<u64>,
}

impl BuildGraph {
    /// The target stage's result.
    pub fn target_stage(&self) -> &StageResult {
        &self.stages[self.target]
    }
}

/// The graphs of one Dockerfile for several target platforms as one:
/// each vertex once, after its inputs (each graph lists a vertex after its
/// inputs, and a vertex already taken from an earlier graph has its inputs
/// taken too), so an op that is the same for several platforms (a `FROM
/// --platform=$BUILDPLATFORM` stage) is solved once. Stages and the rest
/// are the first graph's.
///
/// # Panics
/// When `graphs` is empty.
pub fn merged(graphs: &[BuildGraph]) -> BuildGraph {
    let (first, rest) = graphs.split_first().expect("a graph per platform");
    let mut graph = first.clone();
    let mut seen: std::collections::HashSet<String> =
        graph.vertices.iter().map(|v| v.digest.clone()).collect();
    for other in rest {
        for vertex in &other.vertices {
            if seen.insert(vertex.digest.clone()) {
                graph.vertices.push(vertex.clone());
            }
        }
    }
    graph
}

/// Parses, checks and converts Dockerfile text in one go.
pub fn convert_dockerfile(
    text: &str,
    options: &ConvertOptions<'_>,
) -> Result<BuildGraph, crate::Error> {
    let ast = parser::parse(text)?;
    let instructions = instructions::parse(&ast)?;
    let mut graph = convert(&instructions, options)?;
    graph.warnings.splice(0..0, ast.warnings);
    Ok(graph)
}

/// Converts checked instructions into the graph for the target stage.
pub fn convert(
    instructions: &Instructions,
    options: &ConvertOptions<'_>,
) -> Result<BuildGraph, ConvertError> {
    let target = match &options.target {
        None => instructions
            .stages
            .len()
            .checked_sub(1)
            .ok_or(ConvertErrorKind::NoStages)?,
        Some(name) => {
            let lower = name.to_ascii_lowercase();
            instructions
                .stages
                .iter()
                .position(|s| s.name.as_deref() == Some(&lower))
                .ok_or_else(|| ConvertErrorKind::TargetNotFound(name.clone()))?
        }
    };
    let mut converter = Converter::new(instructions, options)?;
    converter.check_stage_aliases()?;
    converter.stage(target)?;

    let mut warnings = Vec::new();
    let unused: Vec<&str> = options
        .build_args
        .keys()
        .filter(|k| !converter.declared.contains(k.as_str()) && !state::is_predefined(k))
        .map(String::as_str)
        .collect();
    if !unused.is_empty() {
        warnings.push(Warning {
            line: 0,
            message: format!(
                "one or more build-args [{}] were not consumed",
                unused.join(" ")
            ),
        });
    }
    let stages = converter
        .slots
        .into_iter()
        .enumerate()
        .filter_map(|(index, slot)| match slot {
            Slot::Done(state) => Some(StageResult {
                index,
                name: instructions.stages[index].name.clone(),
                root: state.root,
                image: state.image,
            }),
            _ => None,
        })
        .collect::<Vec<_>>();
    let target = stages
        .iter()
        .position(|s| s.index == target)
        .unwrap_or_default();
    Ok(BuildGraph {
        vertices: converter.graph.vertices,
        stages,
        target,
        warnings,
        source_date_epoch: converter.source_date_epoch,
    })
}

/// Which instruction reads a `--from` filesystem, for its errors.
#[derive(Clone, Copy)]
pub(crate) enum FromUser<'a> {
    Copy,
    /// A `RUN --mount` at this target.
    Mount(&'a str),
}

impl FromUser<'_> {
    /// BuildKit's words for a stage that comes after the current one.
    fn later_stage(self, from: &str, current: &str) -> ConvertErrorKind {
        match self {
            Self::Copy => ConvertErrorKind::CopyFromLater {
                from: from.to_owned(),
                current: current.to_owned(),
            },
            Self::Mount(target) => ConvertErrorKind::MountFromLater {
                from: from.to_owned(),
                target: target.to_owned(),
            },
        }
    }
}

/// What an instruction did to the stage.
pub(crate) enum Step {
    /// Changed only the image config, with no history entry (ONBUILD).
    Unrecorded,
    /// Changed only the image config.
    Config,
    /// Made a new filesystem; the history entry's text.
    Layer(String),
}

/// An image's source vertex.
struct ImageVertex {
    digest: String,
    /// The reference as pinned in the op.
    reference: String,
    config: ImageConfig,
}

enum Slot {
    NotStarted,
    InProgress,
    Done(Box<StageState>),
}

/// One conversion in progress.
pub(crate) struct Converter<'a> {
    instructions: &'a Instructions,
    options: &'a ConvertOptions<'a>,
    lexer: Lexer<'a>,
    graph: GraphBuilder,
    slots: Vec<Slot>,
    /// `--build-arg` values, `SOURCE_DATE_EPOCH` resolved.
    build_args: BTreeMap<String, String>,
    /// Values of global ARGs (and the predefined platform args); `None` for
    /// a global ARG declared without a value.
    globals: BTreeMap<String, Option<String>>,
    source_date_epoch: Option<u64>,
    /// What every RUN step's `Meta` gets, the hostname build arg resolved.
    sandbox: SandboxOptions,
    /// Every ARG name declared anywhere converted (for the unused warning).
    declared: BTreeSet<String>,
    context: Option<String>,
    /// How many stages are being converted, each waiting for the next.
    depth: usize,
    /// ENV, ARG and LABEL bytes held by every stage so far.
    total_vars: usize,
}

/// `SOURCE_DATE_EPOCH` of the build args, else of the global ARGs,
/// resolved (see [`epoch`]); where it was set, it is set to the seconds
/// (empty when `context` has no time), as the RUN steps then see it.
fn resolve_epoch(
    build_args: &mut BTreeMap<String, String>,
    globals: &mut BTreeMap<String, Option<String>>,
    context_time: Option<u64>,
) -> Result<Option<u64>, ConvertErrorKind> {
    let value = match build_args.get(epoch::NAME) {
        Some(v) => v.clone(),
        None => match globals.get(epoch::NAME) {
            Some(Some(v)) => v.clone(),
            _ => return Ok(None),
        },
    };
    let resolved = epoch::resolve(&value, context_time)?;
    let text = resolved.map(|s| s.to_string()).unwrap_or_default();
    if let Some(v) = build_args.get_mut(epoch::NAME) {
        v.clone_from(&text);
    }
    if let Some(Some(v)) = globals.get_mut(epoch::NAME) {
        *v = text;
    }
    Ok(resolved)
}

/// The build's sandbox options with the `BUILDKIT_SANDBOX_HOSTNAME` build
/// arg (when set and not empty, as BuildKit reads it: a `--build-arg`, not
/// a Dockerfile's ARG) as the hostname, checked.
fn resolve_sandbox(
    build_args: &BTreeMap<String, String>,
    options: &SandboxOptions,
) -> Result<SandboxOptions, ConvertErrorKind> {
    let mut resolved = options.clone();
    if let Some(name) = build_args.get(sandbox::HOSTNAME_ARG)
        && !name.is_empty()
    {
        resolved.hostname = Some(name.clone());
    }
    if let Some(name) = &resolved.hostname {
        sandbox::check_hostname(name)?;
    }
    Ok(resolved)
}

/// Variables from a map of possibly-unset values.
struct OptionalVars<'a>(&'a BTreeMap<String, Option<String>>);

impl Vars for OptionalVars<'_> {
    fn var(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Option::as_deref)
    }
}

impl<'a> Converter<'a> {
    fn new(
        instructions: &'a Instructions,
        options: &'a ConvertOptions<'a>,
    ) -> Result<Self, ConvertError> {
        let mut lexer = Lexer::new(instructions.escape);
        if let Some(cancel) = options.cancel {
            lexer = lexer.with_cancel(cancel);
        }
        let mut globals: BTreeMap<String, Option<String>> = state::predefined_args(options)
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        let mut declared = BTreeSet::new();
        let mut build_args = options.build_args.clone();
        let mut epoch_at = None;
        for (decl, location) in &instructions.meta_args {
            declared.insert(decl.name.clone());
            if decl.name == epoch::NAME && !build_args.contains_key(epoch::NAME) {
                epoch_at = Some((*location, format!("ARG {}", decl.name)));
            }
            let value = match (build_args.get(&decl.name), &decl.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => Some(
                    expand(&lexer, default, &OptionalVars(&globals)).map_err(|kind| {
                        ConvertError::at(*location, &format!("ARG {}", decl.name), kind)
                    })?,
                ),
                (None, None) => None,
            };
            globals.insert(decl.name.clone(), value);
        }
        let source_date_epoch = resolve_epoch(&mut build_args, &mut globals, options.context_time)
            .map_err(|kind| match &epoch_at {
                Some((location, source)) => ConvertError::at(*location, source, kind),
                None => kind.into(),
            })?;
        let sandbox = resolve_sandbox(&build_args, &options.sandbox)?;
        Ok(Self {
            instructions,
            options,
            lexer,
            graph: GraphBuilder::default(),
            slots: instructions
                .stages
                .iter()
                .map(|_| Slot::NotStarted)
                .collect(),
            build_args,
            globals,
            source_date_epoch,
            sandbox,
            declared,
            context: None,
            depth: 0,
            total_vars: 0,
        })
    }

    /// Converts stage `index` (once) and returns its final state.
    fn stage(&mut self, index: usize) -> Result<&StageState, ConvertError> {
        match self.slots[index] {
            Slot::Done(_) => {}
            Slot::InProgress => {
                let name = self.instructions.stages[index].display_name();
                return Err(ConvertErrorKind::Cycle(name).into());
            }
            Slot::NotStarted => {
                if self.depth >= MAX_STAGE_DEPTH {
                    return Err(ConvertErrorKind::StagesTooDeep(MAX_STAGE_DEPTH).into());
                }
                self.slots[index] = Slot::InProgress;
                self.depth += 1;
                let state = self.dispatch_stage(index);
                self.depth -= 1;
                self.slots[index] = Slot::Done(Box::new(state?));
            }
        }
        match &self.slots[index] {
            Slot::Done(state) => Ok(state),
            _ => unreachable!("stage {index} was just converted"),
        }
    }

    /// The stage a `--from` / `FROM` word names: by name, or (for `--from`)
    /// by index.
    fn find_stage(&self, word: &str, by_index: bool) -> Option<usize> {
        // A named context first, as every name: `target:STAGE` is STAGE.
        if let Some(stage) = self.stage_alias(word) {
            return self.stage_named(stage);
        }
        if let Some(i) = self.stage_named(word) {
            return Some(i);
        }
        if by_index {
            return word
                .parse::<usize>()
                .ok()
                .filter(|&i| i < self.instructions.stages.len());
        }
        None
    }

    /// The stage named `word` (names are lower case).
    fn stage_named(&self, word: &str) -> Option<usize> {
        let lower = word.to_ascii_lowercase();
        self.instructions
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(&lower))
    }

    fn dispatch_stage(&mut self, index: usize) -> Result<StageState, ConvertError> {
        let stage = &self.instructions.stages[index];
        let from_error = |kind| ConvertError::at(stage.location, &stage.source, kind);
        let globals = OptionalVars(&self.globals);
        let base = expand(&self.lexer, &stage.base, &globals).map_err(from_error)?;
        if base.is_empty() {
            return Err(from_error(ConvertErrorKind::EmptyBase(stage.base.clone())));
        }
        let platform = match &stage.platform {
            Some(p) => {
                let text = expand(&self.lexer, p, &globals).map_err(from_error)?;
                Some(platform::parse(&text).map_err(|e| from_error(e.into()))?)
            }
            None => None,
        };
        let total = stage.commands.len() + 1;
        if let Some(replaced) = self.replaced_stage(index, platform.clone())? {
            return Ok(replaced);
        }
        let earlier = self.find_stage(&base, false).filter(|&i| i < index);
        if earlier.is_none()
            && let Some(alias) = self.stage_alias(&base)
        {
            // As FROM of a later stage's name would be an image's: say so.
            return Err(from_error(ConvertErrorKind::NamedStageLater {
                name: base.clone(),
                stage: alias.to_owned(),
            }));
        }
        let named = match earlier {
            Some(_) => None,
            None => self
                .named_context(&base)
                .map(|(key, context)| (key, context.clone())),
        };
        let mut state = match earlier {
            Some(base_index) => {
                // Errors of the stage itself name their own line; a chain
                // too long or a cycle names this FROM.
                let base_state = self.stage(base_index).map_err(|e| match e.location {
                    Some(_) => e,
                    None => from_error(e.kind),
                })?;
                let mut state = StageState::from_stage(base_state, index, stage, total);
                if let Some(p) = platform {
                    state.image.platform = p;
                }
                state
            }
            None if named.is_some() => {
                let platform = platform.unwrap_or_else(|| self.options.target_platform.clone());
                let (key, context) = named.as_ref().expect("matched just now");
                self.named_stage(index, stage, total, platform, (key, context))
                    .map_err(from_error)?
            }
            None if base.eq_ignore_ascii_case("scratch") => {
                let platform = platform.unwrap_or_else(|| self.options.target_platform.clone());
                StageState::new(index, stage, total, platform, scratch_config())
            }
            None => {
                let platform = platform.unwrap_or_else(|| self.options.target_platform.clone());
                let label = format!("{} 1/{total}", self.display_name(stage, &platform));
                let image = self
                    .image_source(&base, &platform, index, &label, Some(stage.location))
                    .map_err(from_error)?;
                let mut state = StageState::new(index, stage, total, platform, image.config);
                state.image.base = Some(image.reference);
                state.root = Some(image.digest);
                state
            }
        };
        state.name = self.display_name(stage, &state.image.platform);
        state.ensure_default_path();
        self.charge_vars(state.vars_bytes(), 0)
            .map_err(from_error)?;

        // A base image's ONBUILD triggers run right after its FROM.
        for trigger in state.image.config.on_build.take().unwrap_or_default() {
            let command = parse_trigger(&trigger).map_err(from_error)?;
            let command = instructions::Command {
                location: stage.location,
                ..command
            };
            self.dispatch(&mut state, &command)?;
        }
        for command in &stage.commands {
            state.step += 1;
            self.dispatch(&mut state, command)?;
        }
        Ok(state)
    }

    /// Stage `index` when a named context of its name replaces it (its
    /// instructions are not run; BuildKit's `namedContext` of `st.Name`).
    fn replaced_stage(
        &mut self,
        index: usize,
        platform: Option<Platform>,
    ) -> Result<Option<StageState>, ConvertError> {
        let stage = &self.instructions.stages[index];
        let Some((key, context)) = stage
            .name
            .as_deref()
            .and_then(|name| self.named_entry(name))
            .map(|(key, context)| (key, context.clone()))
        else {
            return Ok(None);
        };
        let platform = platform.unwrap_or_else(|| self.options.target_platform.clone());
        let mut state = self
            .named_stage(index, stage, 1, platform, (&key, &context))
            .map_err(|kind| ConvertError::at(stage.location, &stage.source, kind))?;
        state.name = self.display_name(stage, &state.image.platform);
        state.ensure_default_path();
        Ok(Some(state))
    }

    /// Adds the source op of image `name` (resolving its config).
    fn image_source(
        &mut self,
        name: &str,
        platform: &Platform,
        stage: usize,
        label: &str,
        location: Option<Location>,
    ) -> Result<ImageVertex, ConvertErrorKind> {
        let reference = Reference::parse(name)?;
        let resolved = self
            .options
            .resolver
            .resolve(&reference, platform)
            .map_err(|message| ConvertErrorKind::Resolve {
                reference: reference.to_string(),
                message,
            })?
            .unwrap_or_default();
        let pinned = match &resolved.digest {
            Some(digest) => reference.with_digest(digest),
            None => reference,
        };
        let image = ImageSource {
            reference: pinned.to_string(),
        };
        let op = new_source(source_op::Source::Image(image), Some(platform.clone()));
        let description = format!("[{label}] FROM {pinned}");
        let digest = self.graph.add(
            op,
            VertexMeta {
                description,
                stage: Some(stage),
                location,
            },
        );
        Ok(ImageVertex {
            digest,
            reference: pinned.to_string(),
            config: resolved.config,
        })
    }

    /// The build context's source op (added once).
    fn context(&mut self) -> String {
        if let Some(digest) = &self.context {
            return digest.clone();
        }
        let local = LocalSource {
            name: "context".to_owned(),
            exclude_patterns: self.options.dockerignore.clone(),
        };
        let op = new_source(source_op::Source::Local(local), None);
        let meta = VertexMeta {
            description: "[internal] load build context".to_owned(),
            stage: None,
            location: None,
        };
        let digest = self.graph.add(op, meta);
        self.context = Some(digest.clone());
        digest
    }

    /// The filesystem a `--from` value names for `user`: an earlier stage
    /// (converted now if needed) or an image. `None` is the empty
    /// filesystem.
    fn resolve_from(
        &mut self,
        state: &StageState,
        from: &str,
        user: FromUser<'_>,
    ) -> Result<Option<String>, ConvertErrorKind> {
        let stage = self.find_stage(from, true);
        if stage.is_none()
            && let Some((key, context)) = self.named_context(from)
        {
            let context = context.clone();
            return self.named_from(state, &key, &context).map(Some);
        }
        if let Some(index) = stage {
            if index == state.index {
                return Err(ConvertErrorKind::Cycle(state.name.clone()));
            }
            let converted =
                self.stage(index)
                    .map(|s| s.root.clone())
                    .map_err(|e| match e.location {
                        Some(_) => ConvertErrorKind::Located(Box::new(e)),
                        None => e.kind,
                    });
            if index > state.index {
                // BuildKit dispatches stages in file order, so a later
                // stage is not there yet; a cycle through it is found first
                // (validateCircularDependency), so that error wins here too.
                return match converted {
                    Err(ConvertErrorKind::Cycle(name)) => Err(ConvertErrorKind::Cycle(name)),
                    _ => Err(user.later_stage(from, &state.name)),
                };
            }
            return converted;
        }
        let platform = state.image.platform.clone();
        let image = self.image_source(from, &platform, state.index, &state.name, None)?;
        Ok(Some(image.digest))
    }

    /// Expands a `--from` / `from=` value with the stage's build arguments
    /// only: a stage or image to read must not hang on the image's ENV.
    fn expand_from(&self, state: &StageState, word: &str) -> Result<String, ConvertErrorKind> {
        let vars = state::FromVars::new(state);
        let value = expand(&self.lexer, word, &vars)?;
        match vars.env_name() {
            Some(name) => Err(ConvertErrorKind::FromEnv {
                word: word.to_owned(),
                name,
            }),
            None => Ok(value),
        }
    }

    fn dispatch(
        &mut self,
        state: &mut StageState,
        command: &instructions::Command,
    ) -> Result<(), ConvertError> {
        let at = |kind| match kind {
            ConvertErrorKind::Located(e) => *e,
            kind => ConvertError::at(command.location, &command.original, kind),
        };
        if self
            .options
            .cancel
            .is_some_and(|Cancel(cancelled)| cancelled())
        {
            return Err(at(ConvertErrorKind::Cancelled));
        }
        let before = state.vars_bytes();
        let step = match &command.kind {
            CommandKind::Run(run) => self.dispatch_run(state, command, run),
            CommandKind::Copy(copy) | CommandKind::Add(copy) => {
                self.dispatch_copy(state, command, copy)
            }
            CommandKind::Workdir(path) => self.dispatch_workdir(state, command, path),
            CommandKind::Arg(decls) => self.dispatch_arg(state, decls),
            other => self.dispatch_config(state, other),
        }
        .map_err(at)?;
        self.charge_vars(state.vars_bytes(), before).map_err(at)?;
        state.image.history.extend(match step {
            Step::Unrecorded => None,
            Step::Config => Some(History {
                created_by: command.original.clone(),
                comment: None,
                empty_layer: true,
            }),
            Step::Layer(created_by) => Some(History {
                created_by,
                comment: None,
                empty_layer: false,
            }),
        });
        Ok(())
    }

    /// Checks a stage's ENV, ARG and LABEL bytes (`now`, `before` the
    /// instruction) against [`MAX_STAGE_VARS`], and what all stages hold
    /// against [`MAX_TOTAL_VARS`].
    fn charge_vars(&mut self, now: usize, before: usize) -> Result<(), ConvertErrorKind> {
        if now > MAX_STAGE_VARS {
            return Err(ConvertErrorKind::TooManyVars {
                limit: MAX_STAGE_VARS,
                scope: "of one stage",
            });
        }
        self.total_vars += now.saturating_sub(before);
        if self.total_vars > MAX_TOTAL_VARS {
            return Err(ConvertErrorKind::TooManyVars {
                limit: MAX_TOTAL_VARS,
                scope: "of all stages together",
            });
        }
        Ok(())
    }

    /// How progress names `stage`: its name, after its platform when the
    /// build is for several (`linux/arm64 build`, as buildx shows it).
    fn display_name(&self, stage: &instructions::Stage, platform: &Platform) -> String {
        if self.options.name_platforms {
            format!("{} {}", platform::format(platform), stage.display_name())
        } else {
            stage.display_name()
        }
    }

    /// `[stage k/n] INSTRUCTION` for the vertex a command makes.
    fn meta(state: &StageState, command: &instructions::Command) -> VertexMeta {
        VertexMeta {
            description: format!(
                "[{} {}/{}] {}",
                state.name, state.step, state.total, command.original
            ),
            stage: Some(state.index),
            location: Some(command.location),
        }
    }
}

/// The config `FROM scratch` starts with: BuildKit's empty image has
/// `WorkingDir` "/" (its PATH comes with every stage's). An image without a
/// `WorkingDir` keeps none, as in BuildKit.
fn scratch_config() -> ImageConfig {
    ImageConfig {
        working_dir: Some("/".to_owned()),
        ..ImageConfig::default()
    }
}

/// A source op (it has no inputs).
fn new_source(source: source_op::Source, platform: Option<Platform>) -> Op {
    Op {
        inputs: vec![],
        kind: Some(op::Kind::Source(SourceOp {
            source: Some(source),
        })),
        platform,
    }
}

/// Expands one word, naming the word in the error.
fn expand(lexer: &Lexer, word: &str, vars: &dyn Vars) -> Result<String, ConvertErrorKind> {
    lexer
        .expand_word(word, vars)
        .map_err(|source| ConvertErrorKind::Expand {
            word: word.to_owned(),
            source,
        })
}

/// Parses an ONBUILD trigger stored in a base image.
fn parse_trigger(trigger: &str) -> Result<instructions::Command, ConvertErrorKind> {
    let bad = |reason: String| ConvertErrorKind::Trigger {
        trigger: trigger.to_owned(),
        reason,
    };
    let ast = parser::parse(trigger).map_err(|e| bad(e.kind.to_string()))?;
    let [node] = ast.instructions.as_slice() else {
        return Err(bad("expected one instruction".to_owned()));
    };
    instructions::parse_command(node).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests;
