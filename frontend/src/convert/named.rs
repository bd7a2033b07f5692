//! Named contexts (`--build-context NAME=VALUE`, BuildKit's `context:NAME`
//! frontend inputs): a `FROM NAME`, `COPY --from=NAME` or `RUN
//! --mount=from=NAME` reads the named context before a stage or an image of
//! that name, and a stage named NAME is the context instead of its
//! instructions (BuildKit's `dockerfile2llb`: `namedContext` before
//! `findStateByName` and image resolution).
//!
//! Names match as BuildKit matches them: both the name given and the word
//! in the Dockerfile are image references made familiar (`docker.io/
//! library/alpine:latest` and `alpine:latest` are `alpine`; `alpine:3.19`
//! stays itself), and `scratch` and `context` are never named contexts.

use kiln_proto::ops::v1::{
    FileAction, FileCopy, FileOp, LocalSource, Op, Platform, file_action, op, source_op,
};

use super::image::History;
use super::state::StageState;
use super::{ConvertErrorKind, Converter, VertexMeta, new_source, scratch_config};
use crate::instructions::Stage;
use crate::reference::{DOCKER_HUB, Reference};

/// What a named context is, as the conversion sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// Files from the client, read as the build context is: a directory,
    /// or a Git or HTTP context fetched by the client. `exclude_patterns`
    /// are its own `.dockerignore`'s.
    Local { exclude_patterns: Vec<String> },
    /// An image (`docker-image://REF`, or an OCI layout's image pinned by
    /// digest): resolved and read as a `FROM` image is.
    Image(String),
    /// `target:STAGE`: the stage STAGE of this Dockerfile, under another
    /// name (bake's `target:` names another build's result; one
    /// Dockerfile's is one of its stages). Every use of the name reads the
    /// stage ([`Converter::find_stage`]).
    Stage(String),
}

/// The `LocalSource` name of the named context `name` (the build
/// context's is `context`), as BuildKit's `context:NAME` input.
pub fn local_name(name: &str) -> String {
    format!("context:{name}")
}

/// The key a name is matched by: the reference made familiar, without a
/// `:latest` tag (BuildKit's `NamedContext` and buildx's
/// `ParseContextNames`); `None` when `word` is no image reference (then no
/// named context has it).
pub fn context_key(word: &str) -> Option<String> {
    let reference = Reference::parse(word).ok()?;
    if !valid_domain(&reference.domain) || reference.repository().len() > MAX_NAME {
        return None;
    }
    let path = match reference.domain.as_str() {
        DOCKER_HUB => reference
            .path
            .strip_prefix("library/")
            .filter(|p| !p.contains('/'))
            .unwrap_or(&reference.path)
            .to_owned(),
        domain => format!("{domain}/{}", reference.path),
    };
    let mut key = path;
    match (&reference.tag, &reference.digest) {
        (Some(tag), None) if tag == "latest" => {}
        (tag, digest) => {
            if let Some(tag) = tag {
                key.push(':');
                key.push_str(tag);
            }
            if let Some(digest) = digest {
                key.push('@');
                key.push_str(digest);
            }
        }
    }
    Some(key)
}

/// The longest repository name (`domain/path`) a reference has
/// (distribution's `NameTotalLengthMax`).
const MAX_NAME: usize = 255;

/// A registry host as distribution's `DomainRegexp` takes it: labels of
/// letters, digits and inner hyphens joined by dots, or a bracketed IPv6
/// address, and an optional port.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (host, Some(port)),
        _ => (domain, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.split('.').all(label)
}

impl Converter<'_> {
    /// The named context `word` names, with its key; never for `scratch`
    /// or `context`, nor a stage under another name (`target:STAGE`, which
    /// [`Converter::stage_alias`] gives).
    pub(super) fn named_context(&self, word: &str) -> Option<(String, &NamedContext)> {
        self.named_entry(word)
            .filter(|(_, c)| !matches!(c, NamedContext::Stage(_)))
    }

    /// The stage a `target:STAGE` context named `word` stands for.
    pub(super) fn stage_alias(&self, word: &str) -> Option<&str> {
        match self.named_entry(word)? {
            (_, NamedContext::Stage(stage)) => Some(stage),
            _ => None,
        }
    }

    /// Any named context `word` names (a `target:STAGE` too).
    pub(super) fn named_entry(&self, word: &str) -> Option<(String, &NamedContext)> {
        if self.options.named_contexts.is_empty()
            || word.eq_ignore_ascii_case("scratch")
            || word.eq_ignore_ascii_case("context")
        {
            return None;
        }
        let key = context_key(word)?;
        let context = self.options.named_contexts.get(&key)?;
        Some((key, context))
    }

    /// Every `target:STAGE` names a stage of the Dockerfile.
    pub(super) fn check_stage_aliases(&self) -> Result<(), ConvertErrorKind> {
        for context in self.options.named_contexts.values() {
            if let NamedContext::Stage(stage) = context
                && self.stage_named(stage).is_none()
            {
                return Err(ConvertErrorKind::TargetNotFound(stage.clone()));
            }
        }
        Ok(())
    }

    /// The source vertex of a local named context (added once).
    pub(super) fn named_local(&mut self, key: &str, exclude_patterns: &[String]) -> String {
        let local = LocalSource {
            name: local_name(key),
            exclude_patterns: exclude_patterns.to_vec(),
        };
        let op = new_source(source_op::Source::Local(local), None);
        let meta = VertexMeta {
            description: format!("[context {key}] load from client"),
            stage: None,
            location: None,
        };
        self.graph.add(op, meta)
    }

    /// What a `--from` value that names a named context reads: the local
    /// files themselves, or the image's filesystem.
    pub(super) fn named_from(
        &mut self,
        state: &StageState,
        key: &str,
        context: &NamedContext,
    ) -> Result<String, ConvertErrorKind> {
        match context {
            NamedContext::Local { exclude_patterns } => Ok(self.named_local(key, exclude_patterns)),
            NamedContext::Image(reference) => {
                let platform = state.image.platform.clone();
                let image =
                    self.image_source(reference, &platform, state.index, &state.name, None)?;
                Ok(image.digest)
            }
            // `named_context` never gives one: `find_stage` reads it.
            NamedContext::Stage(stage) => Err(ConvertErrorKind::TargetNotFound(stage.clone())),
        }
    }

    /// A stage that starts from a named context (`FROM NAME`, or a stage
    /// named NAME, which the context replaces): an image's filesystem and
    /// config, or a local context's files as the root filesystem of a
    /// scratch-like image (BuildKit's `emptyImage`), one layer.
    pub(super) fn named_stage(
        &mut self,
        index: usize,
        stage: &Stage,
        total: usize,
        platform: Platform,
        (key, context): (&str, &NamedContext),
    ) -> Result<StageState, ConvertErrorKind> {
        let label = format!("{} 1/{total}", self.display_name(stage, &platform));
        match context {
            NamedContext::Stage(target) => {
                let target_index = self
                    .stage_named(target)
                    .ok_or_else(|| ConvertErrorKind::TargetNotFound(target.clone()))?;
                if target_index == index {
                    return Err(ConvertErrorKind::Cycle(target.clone()));
                }
                let base = self.stage(target_index).map_err(|e| match e.location {
                    Some(_) => ConvertErrorKind::Located(Box::new(e)),
                    None => e.kind,
                })?;
                Ok(StageState::from_stage(base, index, stage, total))
            }
            NamedContext::Image(reference) => {
                let image =
                    self.image_source(reference, &platform, index, &label, Some(stage.location))?;
                let mut state = StageState::new(index, stage, total, platform, image.config);
                state.image.base = Some(image.reference);
                state.root = Some(image.digest);
                Ok(state)
            }
            NamedContext::Local { exclude_patterns } => {
                let local = self.named_local(key, exclude_patterns);
                let op = copy_all(local);
                let meta = VertexMeta {
                    description: format!("[{label}] FROM {key}"),
                    stage: Some(index),
                    location: Some(stage.location),
                };
                let root = self.graph.add(op, meta);
                let mut state = StageState::new(index, stage, total, platform, scratch_config());
                state.root = Some(root);
                // The layer's history entry: an image's history lists one
                // per layer.
                state.image.history.push(History {
                    created_by: format!("FROM {key}"),
                    comment: None,
                    empty_layer: false,
                });
                Ok(state)
            }
        }
    }
}

/// Every file of `input` onto the empty filesystem: a local context as a
/// stage's root. Owners are root's, as for every file from the client.
fn copy_all(input: String) -> Op {
    Op {
        inputs: vec![input],
        kind: Some(op::Kind::File(FileOp {
            base: -1,
            actions: vec![FileAction {
                action: Some(file_action::Action::Copy(FileCopy {
                    input: 0,
                    sources: vec!["/".to_owned()],
                    dest: "/".to_owned(),
                    owner: None,
                    mode: None,
                    chmod: String::new(),
                    allow_wildcard: false,
                    unpack_archives: false,
                    parents: false,
                    exclude_patterns: Vec::new(),
                })),
            }],
        })),
        platform: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kiln_proto::ops::v1::{Op, op, source_op};

    use super::super::{BuildGraph, ConvertOptions, NoImages, convert_dockerfile};
    use super::{NamedContext, context_key};

    fn build(text: &str, named: &[(&str, NamedContext)]) -> BuildGraph {
        let mut options = ConvertOptions::new(&NoImages);
        options.named_contexts = named
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>();
        convert_dockerfile(text, &options).unwrap_or_else(|e| panic!("{e}"))
    }

    fn local() -> NamedContext {
        NamedContext::Local {
            exclude_patterns: vec!["*.tmp".to_owned()],
        }
    }

    fn op_of<'g>(g: &'g BuildGraph, digest: &str) -> &'g Op {
        &g.vertices.iter().find(|v| v.digest == digest).unwrap().op
    }

    /// The sources of the graph: local names and image references.
    fn sources(g: &BuildGraph) -> Vec<String> {
        g.vertices
            .iter()
            .filter_map(|v| match &v.op.kind {
                Some(op::Kind::Source(s)) => match &s.source {
                    Some(source_op::Source::Local(l)) => {
                        Some(format!("{} {:?}", l.name, l.exclude_patterns))
                    }
                    Some(source_op::Source::Image(i)) => Some(i.reference.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn from_a_local_context_is_its_files_on_scratch() {
        let g = build("FROM src\nRUN true\n", &[("src", local())]);
        assert_eq!(sources(&g), ["context:src [\"*.tmp\"]"]);
        let stage = g.target_stage();
        assert_eq!(stage.image.base, None);
        assert_eq!(stage.image.config.working_dir.as_deref(), Some("/"));
        assert_eq!(stage.image.history[0].created_by, "FROM src");
        // RUN's rootfs is the copy of every file of the context.
        let run = op_of(&g, stage.root.as_deref().unwrap());
        let copy = op_of(&g, &run.inputs[0]);
        assert!(matches!(&copy.kind, Some(op::Kind::File(f)) if f.base == -1));
    }

    #[test]
    fn a_context_comes_before_an_image_and_a_stage() {
        let image = NamedContext::Image("busybox:1.36".to_owned());
        let text = "FROM alpine:3.19 AS builder\nRUN false\nFROM alpine\nCOPY --from=builder /a /a\nRUN --mount=from=tools,target=/t true\n";
        let g = build(
            text,
            &[
                ("alpine", NamedContext::Image("debian".to_owned())),
                ("builder", image),
                ("tools", local()),
            ],
        );
        let mut found = sources(&g);
        found.sort();
        // `alpine:3.19` is not `alpine`; the stage `builder` is the image,
        // its `RUN false` never converted.
        assert_eq!(
            found,
            [
                "context:tools [\"*.tmp\"]",
                "docker.io/library/busybox:1.36",
                "docker.io/library/debian:latest",
            ]
        );
        assert!(
            g.vertices
                .iter()
                .all(|v| !v.meta.description.contains("RUN false"))
        );
    }

    #[test]
    fn scratch_and_context_are_never_named() {
        let g = build(
            "FROM scratch\nCOPY --from=context / /\n",
            &[("scratch", local()), ("context", local())],
        );
        assert!(sources(&g).iter().all(|s| !s.starts_with("context:")));
    }

    #[test]
    fn a_named_stage_target_is_the_context() {
        let g = build(
            "FROM busybox AS base\nRUN false\n",
            &[("base", NamedContext::Image("debian:12".to_owned()))],
        );
        assert_eq!(
            g.target_stage().image.base.as_deref(),
            Some("docker.io/library/debian:12")
        );
        assert_eq!(sources(&g), ["docker.io/library/debian:12"]);
    }

    /// `target:STAGE`: every use of the name reads the stage, before an
    /// image or a stage of that name, and a stage of that name is it.
    #[test]
    fn a_stage_under_another_name() {
        let text = "FROM scratch AS build\nCOPY a /a\n\
                    FROM busybox AS tools\nRUN false\n\
                    FROM tools\nCOPY --from=tools /a /b\nRUN --mount=from=tools,target=/t true\n";
        let g = build(text, &[("tools", NamedContext::Stage("build".into()))]);
        assert!(
            sources(&g).iter().all(|s| !s.contains("busybox")),
            "{:?}",
            sources(&g)
        );
        assert!(
            g.vertices
                .iter()
                .all(|v| !v.meta.description.contains("RUN false"))
        );
        // A stage that is its own alias, or one never defined, is refused.
        let mut options = ConvertOptions::new(&NoImages);
        options.named_contexts = [("tools".to_owned(), NamedContext::Stage("nope".into()))].into();
        let e = convert_dockerfile(text, &options).unwrap_err().to_string();
        assert!(e.contains("\"nope\" could not be found"), "{e}");
        options.named_contexts = [("tools".to_owned(), NamedContext::Stage("tools".into()))].into();
        let e = convert_dockerfile(text, &options).unwrap_err().to_string();
        assert!(e.contains("circular"), "{e}");
        // FROM a later stage's alias says so.
        let later = "FROM early AS a\nFROM scratch AS late\nFROM a\n";
        options.named_contexts = [("early".to_owned(), NamedContext::Stage("late".into()))].into();
        let e = convert_dockerfile(later, &options).unwrap_err().to_string();
        assert!(e.contains("defined before"), "{e}");
    }

    #[test]
    fn keys_are_familiar_names() {
        let d = format!("sha256:{}", "a".repeat(64));
        for (word, key) in [
            ("alpine", "alpine"),
            ("alpine:latest", "alpine"),
            ("docker.io/library/alpine:latest", "alpine"),
            ("index.docker.io/library/alpine", "alpine"),
            ("alpine:3.19", "alpine:3.19"),
            ("team/app", "team/app"),
            ("docker.io/team/app:1", "team/app:1"),
            ("localhost:5000/app", "localhost:5000/app"),
            ("builder", "builder"),
            ("[::1]:5000/a", "[::1]:5000/a"),
            ("Reg.Lan/a:v", "Reg.Lan/a:v"),
        ] {
            assert_eq!(context_key(word).as_deref(), Some(key), "{word}");
        }
        assert_eq!(
            context_key(&format!("alpine@{d}")),
            Some(format!("alpine@{d}"))
        );
        assert_eq!(
            context_key(&format!("alpine:latest@{d}")),
            Some(format!("alpine:latest@{d}"))
        );
        for bad in [
            "", "UPPER", "a b", "../x", "a:", "-a.b/x", "a..b/x", "h:x/y",
        ] {
            assert_eq!(context_key(bad), None, "{bad}");
        }
    }
}
