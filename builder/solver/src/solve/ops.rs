//! One function per kind of op: sources, RUN, file ops.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_frontend::convert::Vertex;
use kiln_proto::chmod::Chmod;
use kiln_proto::ops::v1::{
    ExecOp, FileCopy, FileOp, MountType, NetworkMode, Owner, Platform, SecurityMode, SourceOp,
    file_action, owner, source_op,
};
use kiln_proto::sandbox::SandboxOptions;
use kiln_worker::exec::{ExecMount, ExecRequest, Sharing};
use kiln_worker::fileop::{CopyRequest, FileAction, FileJob, OwnerSpec};
use kiln_worker::sandbox::spec::{Network, Rootfs};

use super::local::{empty_dir, keep_layer, lowerdirs};
use super::{Event, Fs, Result, SolveError, Solver, StepOutcome};
use crate::fetch;
use kiln_image::image;
use kiln_image::image::Layer;

/// Lines of a failed step's output kept for its error.
const LOG_TAIL: usize = 20;

/// The longest line a step's output makes before it is cut into several:
/// output without newlines must not grow without bound.
const MAX_LOG_LINE: usize = 64 << 10;

/// Output bytes → lines. Bytes are decoded a whole line at a time, so a
/// character split between two chunks stays whole; a line longer than
/// [`MAX_LOG_LINE`] is cut.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// The lines `chunk` completes.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(chunk);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(end) = self.partial[start..].iter().position(|&b| b == b'\n') {
            lines.push(text(&self.partial[start..start + end]));
            start += end + 1;
        }
        while self.partial.len() - start > MAX_LOG_LINE {
            lines.push(text(&self.partial[start..start + MAX_LOG_LINE]));
            start += MAX_LOG_LINE;
        }
        self.partial.drain(..start);
        lines
    }

    /// The last line, when the output did not end with a newline.
    fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| text(&std::mem::take(&mut self.partial)))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A step's output as log events, line by line, with its last lines kept
/// for its error.
pub(super) struct StepLog<'s, 'a> {
    solver: &'s Solver<'a>,
    vertex: usize,
    lines: Lines,
    tail: VecDeque<String>,
}

impl<'s, 'a> StepLog<'s, 'a> {
    fn new(solver: &'s Solver<'a>, vertex: usize) -> Self {
        Self {
            solver,
            vertex,
            lines: Lines::default(),
            tail: VecDeque::new(),
        }
    }

    pub(super) fn push(&mut self, chunk: &[u8]) {
        for line in self.lines.push(chunk) {
            self.line(line);
        }
    }

    /// The step ended: its unterminated last line is a line too.
    pub(super) fn finish(&mut self) {
        if let Some(line) = self.lines.finish() {
            self.line(line);
        }
    }

    fn line(&mut self, line: String) {
        self.solver.emit(Event::Log {
            vertex: self.vertex,
            line: line.clone(),
        });
        if self.tail.len() == LOG_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

/// A step's failure; `Solver::vertex` fills in which step (and line).
pub(super) fn step_err(reason: impl std::fmt::Display) -> SolveError {
    SolveError::Step {
        description: String::new(),
        reason: reason.to_string(),
    }
}

/// A file op's failure; `Solver::vertex` fills in which step.
fn file_err(reason: impl std::fmt::Display) -> SolveError {
    SolveError::FileOp {
        description: String::new(),
        reason: reason.to_string(),
    }
}

impl Solver<'_> {
    pub(super) fn source(
        &self,
        index: usize,
        source: &SourceOp,
        platform: Option<&Platform>,
    ) -> Result<Fs> {
        match &source.source {
            Some(source_op::Source::Local(local)) => {
                self.local(&local.name)?;
                Ok(Fs::Context(local.name.clone()))
            }
            Some(source_op::Source::Image(img)) => {
                let (name, image) = self.source_image(&img.reference, platform)?;
                let layers = image
                    .layer_pairs()
                    .map_err(|e| step_err(format!("image {name}: {e}")))?
                    .into_iter()
                    .map(|l| Layer {
                        blob: l.blob,
                        diff_id: l.diff_id,
                        media_type: l.media_type,
                        size: l.size,
                        annotations: l.annotations,
                    })
                    .collect();
                Ok(Fs::Layers(layers))
            }
            Some(source_op::Source::Http(h)) => {
                let scratch = self.scratch()?;
                let mut bytes = |current, total| {
                    self.emit(Event::Bytes {
                        vertex: index,
                        current,
                        total,
                    });
                };
                let fetched = fetch::http(h, scratch, &mut bytes).map_err(step_err)?;
                Ok(Fs::Fetched(Arc::new(fetched)))
            }
            Some(source_op::Source::Git(g)) => {
                let scratch = self.scratch()?;
                Ok(Fs::Fetched(Arc::new(
                    fetch::git(g, scratch).map_err(step_err)?,
                )))
            }
            None => Err(step_err("a source op without a source")),
        }
    }

    /// The image a source op names for its platform (the host's when it
    /// names none): the manifest the frontend pinned while the store has
    /// it (a multi-platform index's entry for the platform).
    fn source_image<'r>(
        &self,
        reference: &'r str,
        platform: Option<&Platform>,
    ) -> Result<(&'r str, image::Image)> {
        let name = reference.split('@').next().unwrap_or(reference);
        let host = image::host_platform();
        let image = image::resolve_pinned(self.store, reference, platform.unwrap_or(&host))
            .map_err(|e| match e {
                image::ImageError::NotFound(_) => step_err(format!(
                    "image {name} is not in the local store (--pull=never; use kiln pull, load or import)"
                )),
                other => other.into(),
            })?;
        Ok((name, image))
    }

    /// An input as directories for a bind mount or a copy source.
    fn input_dirs(&self, inputs: &[(Fs, String)], index: i32) -> Result<Vec<PathBuf>> {
        match usize::try_from(index).ok().and_then(|i| inputs.get(i)) {
            // Every read of the context goes through its view: what
            // `.dockerignore` excludes is not there, however it is named.
            Some((Fs::Context(name), _)) => Ok(vec![self.context_view(name)?]),
            Some((Fs::Fetched(fetched), _)) => Ok(vec![fetched.dir.clone()]),
            Some((Fs::Layers(chain), _)) if !chain.is_empty() => {
                lowerdirs(self.store, &self.snapshots, chain)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// A `RUN --mount` other than a bind mount, as the worker takes it.
    pub(super) fn plain_mount(&self, m: &kiln_proto::ops::v1::Mount) -> Result<ExecMount> {
        let target = m.target.clone();
        Ok(match MountType::try_from(m.r#type) {
            Ok(MountType::Cache) => {
                let c = m.cache.clone().unwrap_or_default();
                let sharing = match kiln_proto::ops::v1::CacheSharing::try_from(c.sharing) {
                    Ok(kiln_proto::ops::v1::CacheSharing::Private) => Sharing::Private,
                    Ok(kiln_proto::ops::v1::CacheSharing::Locked) => Sharing::Locked,
                    _ => Sharing::Shared,
                };
                ExecMount::Cache {
                    target,
                    id: c.id,
                    sharing,
                    uid: c.uid,
                    gid: c.gid,
                    mode: c.mode,
                    readonly: m.readonly,
                    seed: None,
                }
            }
            Ok(MountType::Tmpfs) => ExecMount::Tmpfs {
                target,
                size: m.tmpfs.map_or(0, |t| t.size),
            },
            Ok(MountType::Secret) => {
                let s = m.secret.clone().unwrap_or_default();
                let env = (!s.env.is_empty()).then_some(s.env);
                let target = (!target.is_empty()).then_some(target);
                ExecMount::Secret {
                    id: s.id,
                    target,
                    env,
                    uid: s.uid,
                    gid: s.gid,
                    mode: s.mode,
                    required: s.required,
                }
            }
            Ok(MountType::Ssh) => {
                let s = m.ssh.clone().unwrap_or_default();
                ExecMount::Ssh {
                    id: s.id,
                    target,
                    uid: s.uid,
                    gid: s.gid,
                    mode: s.mode,
                    required: s.required,
                }
            }
            Ok(MountType::Bind) | Err(_) => {
                return Err(step_err(format!("unknown mount type {}", m.r#type)));
            }
        })
    }

    pub(super) fn exec(
        &self,
        index: usize,
        vertex: &Vertex,
        exec: &ExecOp,
        inputs: &[(Fs, String)],
        base: &[Layer],
    ) -> Result<Layer> {
        let meta = exec.meta.clone().unwrap_or_default();
        let sandbox = SandboxOptions::from_meta(&meta).map_err(step_err)?;
        let mut env = meta.env;
        // The step's own ARG or ENV of the same name comes first (and a
        // process reads the first), so it is the one kept.
        let named = |kv: &String| kv.split_once('=').map_or(kv.clone(), |(k, _)| k.to_owned());
        let own: std::collections::BTreeSet<String> = env.iter().map(named).collect();
        env.extend(
            exec.proxy_env
                .iter()
                .filter(|kv| !own.contains(&named(kv)))
                .cloned(),
        );
        // Root filesystem and mounts are filled in where the step runs.
        let request = ExecRequest {
            rootfs: Vec::new(),
            args: meta.args,
            env,
            cwd: if meta.cwd.is_empty() {
                "/".into()
            } else {
                meta.cwd
            },
            user: meta.user,
            network: match NetworkMode::try_from(exec.network) {
                Ok(NetworkMode::None) => Network::None,
                Ok(NetworkMode::Host) => Network::Host,
                Ok(NetworkMode::Default) | Err(_) => self.options.network,
            },
            privileged: exec.security == SecurityMode::Insecure as i32,
            mounts: Vec::new(),
            sandbox,
            platform: vertex
                .op
                .platform
                .as_ref()
                .map(kiln_frontend::platform::format)
                .unwrap_or_default(),
        };
        let mut log = StepLog::new(self, index);
        let outcome = self.run_step(&request, exec, inputs, base, &mut log);
        log.finish();
        match outcome? {
            StepOutcome::Made(layer) => Ok(layer),
            StepOutcome::Exit(code) => Err(SolveError::ExitCode {
                description: vertex.meta.description.clone(),
                code,
                log_tail: log.tail.into(),
            }),
        }
    }

    pub(super) fn file(
        &self,
        _vertex: &Vertex,
        file: &FileOp,
        inputs: &[(Fs, String)],
        base: &[Layer],
        previous: Option<PathBuf>,
    ) -> Result<Layer> {
        let mut sources: Vec<Vec<PathBuf>> = Vec::new();
        let mut actions = Vec::new();
        for action in &file.actions {
            actions.push(match &action.action {
                Some(file_action::Action::Copy(c)) => {
                    let input = usize::try_from(c.input).ok().and_then(|i| inputs.get(i));
                    let local = match input {
                        Some((Fs::Context(name), _)) => Some(self.local(name)?),
                        _ => None,
                    };
                    let from_outside =
                        local.is_some() || matches!(input, Some((Fs::Fetched(_), _)));
                    sources.push(self.input_dirs(inputs, c.input)?);
                    // Docker: files from the context or a URL belong to
                    // root unless --chown.
                    let owner = owner_spec(c.owner.as_ref())
                        .or_else(|| from_outside.then(|| OwnerSpec("0:0".into())));
                    FileAction::Copy {
                        source: sources.len() - 1,
                        request: CopyRequest {
                            archive_owners: c.owner.is_none(),
                            sources: c.sources.clone(),
                            dest: c.dest.clone(),
                            owner,
                            mode: chmod(c)?,
                            allow_wildcard: c.allow_wildcard,
                            unpack_archives: c.unpack_archives,
                            parents: c.parents,
                            excludes: c.exclude_patterns.clone(),
                            root_excludes: local
                                .map(|l| l.dockerignore.clone())
                                .unwrap_or_default(),
                        },
                    }
                }
                Some(file_action::Action::Mkdir(m)) => FileAction::Mkdir {
                    path: m.path.clone(),
                    mode: m.mode,
                    parents: m.make_parents,
                    owner: owner_spec(m.owner.as_ref()),
                },
                Some(file_action::Action::Mkfile(m)) => FileAction::Mkfile {
                    path: m.path.clone(),
                    mode: m.mode,
                    data: m.data.clone(),
                    owner: owner_spec(m.owner.as_ref()),
                },
                None => continue,
            });
        }
        let lowerdirs = if base.is_empty() {
            vec![empty_dir(self.store)?]
        } else {
            lowerdirs(self.store, &self.snapshots, base)?
        };
        let step = self.file_job(lowerdirs, sources, actions, previous)?;
        let upper = step.path().join("upper");
        keep_layer(
            self.store,
            &self.snapshots,
            &upper,
            self.options.compression,
            self.options.source_date_epoch,
        )
    }

    /// Runs file actions in the sandbox over `lowerdirs`; the changes are in
    /// the returned directory's `upper`, which goes when it is dropped.
    fn file_job(
        &self,
        lowerdirs: Vec<PathBuf>,
        sources: Vec<Vec<PathBuf>>,
        actions: Vec<FileAction>,
        previous: Option<PathBuf>,
    ) -> Result<tempfile::TempDir> {
        let step = self.scratch()?;
        let d = |name: &str| -> Result<PathBuf> {
            let p = step.path().join(name);
            std::fs::create_dir_all(&p)
                .map_err(|e| file_err(format!("creating {}: {e}", p.display())))?;
            Ok(p)
        };
        let job = FileJob {
            dest: Rootfs {
                lowerdirs,
                upperdir: d("upper")?,
                workdir: d("work")?,
                target: d("merged")?,
            },
            sources,
            actions,
            state_dir: d("state")?,
            previous,
        };
        self.worker.sandbox().file(&job).map_err(file_err)?;
        Ok(step)
    }

    /// The files from the client named `name` (the build context or a
    /// named one) as every step sees them (COPY, ADD, RUN bind mounts):
    /// without what `.dockerignore` excludes, as BuildKit, which never
    /// sends those files. A symlink to an ignored file is copied as the
    /// link (following it finds nothing), a hard link of one is left out.
    /// Made once per build, and only when there are patterns.
    pub(super) fn context_view(&self, name: &str) -> Result<PathBuf> {
        let local = self.local(name)?;
        if local.matcher.is_empty() {
            return Ok(local.dir.clone());
        }
        let view = local.view.get_or_init(|| {
            let copy = FileAction::Copy {
                source: 0,
                request: CopyRequest {
                    sources: vec!["/".into()],
                    dest: "/".into(),
                    owner: None,
                    mode: None,
                    allow_wildcard: false,
                    unpack_archives: false,
                    parents: false,
                    excludes: Vec::new(),
                    root_excludes: local.dockerignore.clone(),
                    archive_owners: false,
                },
            };
            let empty = empty_dir(self.store).map_err(|e| e.to_string())?;
            self.file_job(vec![empty], vec![vec![local.dir.clone()]], vec![copy], None)
                .map_err(|e| e.to_string())
        });
        match view {
            Ok(dir) => Ok(dir.path().join("upper")),
            Err(e) => Err(step_err(format!("the build context for a bind mount: {e}"))),
        }
    }

    /// A directory for one step's or one fetch's files under the store's
    /// `steps/` (emptied when a store opens), removed when dropped.
    fn scratch(&self) -> Result<tempfile::TempDir> {
        let steps = self.store.root().join("steps");
        std::fs::create_dir_all(&steps)
            .map_err(|e| step_err(format!("creating {}: {e}", steps.display())))?;
        tempfile::Builder::new()
            .prefix("step-")
            .tempdir_in(&steps)
            .map_err(|e| step_err(format!("creating a directory in {}: {e}", steps.display())))
    }
}

/// A copy's `--chmod`: octal bits, or a symbolic mode (checked again here:
/// the graph need not come from kiln's frontend).
fn chmod(copy: &FileCopy) -> Result<Option<Chmod>> {
    if copy.chmod.is_empty() {
        return Ok(copy.mode.map(Chmod::Octal));
    }
    if copy.mode.is_some() {
        return Err(step_err("a copy with both an octal and a symbolic mode"));
    }
    Chmod::parse(&copy.chmod).map(Some).map_err(step_err)
}

/// The op's owner in `USER` syntax.
fn owner_spec(owner: Option<&Owner>) -> Option<OwnerSpec> {
    let owner = owner?;
    let user = match owner.user.as_ref()? {
        owner::User::Uid(uid) => uid.to_string(),
        owner::User::UserName(name) => name.clone(),
    };
    Some(OwnerSpec(match &owner.group {
        Some(owner::Group::Gid(gid)) => format!("{user}:{gid}"),
        Some(owner::Group::GroupName(name)) => format!("{user}:{name}"),
        None => user,
    }))
}

#[cfg(test)]
mod tests {
    use super::{Lines, MAX_LOG_LINE};

    #[test]
    fn lines_from_chunks() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"one\ntw"), ["one"]);
        assert_eq!(lines.push(b"o\n\nthree"), ["two", ""]);
        assert_eq!(lines.finish().as_deref(), Some("three"));
        assert_eq!(lines.finish(), None);
        // A character split between chunks stays whole.
        let snow = "\u{2603}".as_bytes();
        assert!(lines.push(&snow[..1]).is_empty());
        assert_eq!(lines.push(&[&snow[1..], b"\n"].concat()), ["\u{2603}"]);
        // No newline at all: cut, never held whole.
        let long = vec![b'x'; MAX_LOG_LINE * 2 + 5];
        let cut = lines.push(&long);
        assert_eq!(cut.len(), 2);
        assert!(cut.iter().all(|l| l.len() == MAX_LOG_LINE));
        assert_eq!(lines.finish().map(|l| l.len()), Some(5));
    }
}
