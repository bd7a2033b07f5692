//! COPY, ADD and WORKDIR → file ops.

use kiln_proto::ops::v1::{
    FileAction, FileCopy, FileMkdir, FileMkfile, FileOp, GitSource, HttpSource, MergeOp, Op, Owner,
    file_action, op, owner, source_op,
};

use super::mounts::input_index;
use super::state::StageState;
use super::{ConvertErrorKind as Kind, Converter, FromUser, Step, VertexMeta, expand, new_source};
use crate::instructions::{Command, CopyCommand};
use crate::paths::{base_name, clean, in_context, resolve_dest, with_pivot};
use crate::shell::Lexer;
use kiln_proto::chmod::Chmod;

/// Where one group of sources is read from.
enum Origin {
    /// The build context.
    Context,
    /// A stage or image (`--from`); `None` is the empty filesystem.
    From(Option<String>),
    /// A vertex made for this instruction (a download, a heredoc file).
    Vertex(String),
}

/// Sources read from one origin: one copy action.
struct SourceGroup {
    origin: Origin,
    /// The paths in the origin.
    paths: Vec<String>,
    /// Unpack archives among them (ADD).
    unpack: bool,
}

impl SourceGroup {
    /// A group of one path.
    fn one(origin: Origin, path: String, unpack: bool) -> Self {
        Self {
            origin,
            paths: vec![path],
            unpack,
        }
    }

    /// Whether `other` can be copied by this group's action: both read the
    /// build context, unpacking alike.
    fn joins(&self, other: &SourceGroup) -> bool {
        matches!(
            (&self.origin, &other.origin),
            (Origin::Context, Origin::Context)
        ) && self.unpack == other.unpack
    }
}

/// A COPY or ADD with its words expanded and checked.
struct CopyWords {
    /// The sources (not heredocs), as expanded: the history entry shows
    /// them so.
    sources: Vec<String>,
    /// `--from`.
    from: Option<String>,
    /// ADD's `--checksum`; `None` when absent or empty.
    checksum: Option<String>,
    target: CopyTarget,
}

/// What every copy action of one instruction shares: the destination and
/// what the copied files become.
struct CopyTarget {
    /// The destination, resolved against the WORKDIR.
    dest: String,
    /// `--chown`; `None` when absent or empty.
    owner: Option<Owner>,
    /// An octal `--chmod`.
    mode: Option<u32>,
    /// A symbolic `--chmod` (applied file by file); empty when none.
    chmod: String,
    /// `--exclude` patterns.
    excludes: Vec<String>,
    /// `--parents`.
    parents: bool,
}

impl CopyTarget {
    /// The action copying `paths` from the op's input `input` (-1: the
    /// empty filesystem).
    fn action(&self, input: i32, paths: Vec<String>, unpack: bool) -> FileAction {
        FileAction {
            action: Some(file_action::Action::Copy(FileCopy {
                input,
                sources: paths,
                dest: self.dest.clone(),
                owner: self.owner.clone(),
                mode: self.mode,
                chmod: self.chmod.clone(),
                allow_wildcard: true,
                unpack_archives: unpack,
                parents: self.parents,
                exclude_patterns: self.excludes.clone(),
            })),
        }
    }
}

impl Converter<'_> {
    /// COPY and ADD: one file op copying every source — context paths,
    /// `--from` paths, downloads, heredoc files — to the destination, on
    /// the stage's root (with `--link`, on nothing, merged onto the root).
    pub(super) fn dispatch_copy(
        &mut self,
        state: &mut StageState,
        command: &Command,
        copy: &CopyCommand,
    ) -> Result<Step, Kind> {
        let words = self.expand_copy(state, copy)?;
        let mut groups = match &words.from {
            Some(from) => vec![self.stage_sources(state, copy, from, &words.sources)?],
            None => self.context_sources(state, command, copy, &words)?,
        };
        groups.extend(self.heredoc_sources(state, command, copy)?);

        let base = if copy.link { None } else { state.root.clone() };
        let op = self.copy_op(base, &words.target, groups);
        let meta = Self::meta(state, command);
        let copied = self.graph.add(op, meta.clone());
        state.root = Some(match (copy.link, &state.root) {
            (true, Some(root)) => {
                let merge = Op {
                    inputs: vec![root.clone(), copied],
                    kind: Some(op::Kind::Merge(MergeOp {})),
                    platform: None,
                };
                self.graph.add(merge, meta)
            }
            _ => copied,
        });
        let mut created_by = vec![instruction_name(copy).to_owned()];
        created_by.extend(words.sources);
        created_by.extend(copy.heredocs.iter().map(|h| format!("<<{}", h.name)));
        created_by.push(words.target.dest);
        Ok(Step::Layer(created_by.join(" ")))
    }

    /// Expands the words of a COPY or ADD with the stage's variables and
    /// checks them, in an order that decides which error a Dockerfile with
    /// several gets: sources, destination, `--chown`, `--chmod`,
    /// `--exclude`, `--from`, `--checksum`.
    fn expand_copy(&self, state: &StageState, copy: &CopyCommand) -> Result<CopyWords, Kind> {
        let word = |w: &String| expand(&self.lexer, w, state);
        let sources = copy
            .sources
            .iter()
            .map(word)
            .collect::<Result<Vec<_>, _>>()?;
        let dest_text = word(&copy.dest)?;
        if sources.len() + copy.heredocs.len() > 1 && !dest_text.ends_with('/') {
            return Err(Kind::DestNotDirectory(instruction_name(copy)));
        }
        let dest = resolve_dest(state.workdir(), &dest_text);
        let owner = copy
            .chown
            .as_ref()
            .map(word)
            .transpose()?
            .filter(|c| !c.is_empty());
        let owner = owner.map(|c| parse_owner(&c)).transpose()?;
        let chmod = copy
            .chmod
            .as_ref()
            .map(word)
            .transpose()?
            .map(|m| Chmod::parse(&m))
            .transpose()?;
        let (mode, chmod) = split_chmod(chmod);
        let excludes = copy
            .excludes
            .iter()
            .map(word)
            .collect::<Result<Vec<_>, _>>()?;
        // kiln expands --from with the stage's variables: stages convert on
        // demand, so the named stage need not be known in advance.
        let from = copy
            .from
            .as_ref()
            .map(|f| self.expand_from(state, f))
            .transpose()?;
        // Expanded as BuildKit does (`ARG SUM` … `--checksum=$SUM`); empty is
        // none.
        let checksum = copy
            .add
            .as_ref()
            .and_then(|add| add.checksum.as_ref())
            .map(word)
            .transpose()?
            .filter(|c| !c.is_empty());
        let target = CopyTarget {
            dest,
            owner,
            mode,
            chmod,
            excludes,
            parents: copy.parents,
        };
        Ok(CopyWords {
            sources,
            from,
            checksum,
            target,
        })
    }

    /// `--from`: the sources are paths in that stage or image, all copied
    /// by one action.
    fn stage_sources(
        &mut self,
        state: &StageState,
        copy: &CopyCommand,
        from: &str,
        sources: &[String],
    ) -> Result<SourceGroup, Kind> {
        let root = self.resolve_from(state, from, FromUser::Copy)?;
        let in_stage = |s: &str| Some(clean(&format!("/{s}")));
        let paths = if copy.parents {
            sources
                .iter()
                .map(|s| with_pivot(s, in_stage).ok_or_else(|| Kind::OutsideContext(s.clone())))
                .collect::<Result<_, _>>()?
        } else {
            sources.iter().filter_map(|s| in_stage(s)).collect()
        };
        Ok(SourceGroup {
            origin: Origin::From(root),
            paths,
            unpack: unpack_local(copy),
        })
    }

    /// Without `--from`: each source a context path or, for ADD, a URL or
    /// Git remote fetched by a vertex of its own. Consecutive context
    /// paths share one action.
    fn context_sources(
        &mut self,
        state: &StageState,
        command: &Command,
        copy: &CopyCommand,
        words: &CopyWords,
    ) -> Result<Vec<SourceGroup>, Kind> {
        let mut groups: Vec<SourceGroup> = Vec::new();
        for source in &words.sources {
            let group = self.source(state, command, copy, source, words.checksum.as_deref())?;
            match groups.last_mut() {
                Some(last) if last.joins(&group) => last.paths.extend(group.paths),
                _ => groups.push(group),
            }
        }
        Ok(groups)
    }

    /// Where one source without `--from` is read from: a download of ADD
    /// (its checksum checked), or a context path. COPY refuses URLs, ADD
    /// the schemes it does not fetch; a checksum is only for downloads.
    fn source(
        &mut self,
        state: &StageState,
        command: &Command,
        copy: &CopyCommand,
        source: &str,
        checksum: Option<&str>,
    ) -> Result<SourceGroup, Kind> {
        match &copy.add {
            Some(add) if is_git_url(source) => {
                let digest = self.git_source(
                    state,
                    command,
                    source,
                    add.keep_git_dir,
                    checksum.map(str::to_owned),
                )?;
                Ok(SourceGroup::one(
                    Origin::Vertex(digest),
                    "/".to_owned(),
                    false,
                ))
            }
            Some(add) if is_http_url(source) => {
                if let Some(checksum) = checksum {
                    check_digest(checksum)?;
                }
                let (digest, file) =
                    self.http_source(state, command, source, checksum.map(str::to_owned));
                let unpack = add.unpack == Some(true);
                Ok(SourceGroup::one(
                    Origin::Vertex(digest),
                    format!("/{file}"),
                    unpack,
                ))
            }
            _ if is_http_url(source) || is_git_url(source) => {
                Err(Kind::Source(instruction_name(copy), source.to_owned()))
            }
            Some(_) if foreign_url(source) => Err(Kind::Scheme(source.to_owned())),
            _ => {
                if checksum.is_some() {
                    return Err(Kind::ChecksumLocal(source.to_owned()));
                }
                let path = if copy.parents {
                    with_pivot(source, in_context)
                } else {
                    in_context(source)
                }
                .ok_or_else(|| Kind::OutsideContext(source.to_owned()))?;
                Ok(SourceGroup::one(Origin::Context, path, unpack_local(copy)))
            }
        }
    }

    /// Heredoc sources (`COPY <<EOF /dest`): each a file made by a vertex of
    /// its own, its body expanded unless the terminator was quoted.
    fn heredoc_sources(
        &mut self,
        state: &StageState,
        command: &Command,
        copy: &CopyCommand,
    ) -> Result<Vec<SourceGroup>, Kind> {
        let mut groups = Vec::new();
        for heredoc in &copy.heredocs {
            let data = if heredoc.expand {
                // Heredoc bodies are text, not shell words: quotes stay.
                let raw = Lexer::new('\\').with_literal_quotes(true);
                expand(&raw, &heredoc.data, state)?
            } else {
                heredoc.data.clone()
            };
            let digest = self.heredoc_file(state, command, &heredoc.name, data);
            let path = format!("/{}", heredoc.name);
            groups.push(SourceGroup::one(Origin::Vertex(digest), path, false));
        }
        Ok(groups)
    }

    /// The file op copying every group onto `base` (`None`: the empty
    /// filesystem); its inputs are `base`, then each origin once, in order.
    fn copy_op(
        &mut self,
        base: Option<String>,
        target: &CopyTarget,
        groups: Vec<SourceGroup>,
    ) -> Op {
        let mut inputs = Vec::new();
        let base = base.map_or(-1, |root| input_index(&mut inputs, root));
        let mut actions = Vec::new();
        for SourceGroup {
            origin,
            paths,
            unpack,
        } in groups
        {
            let digest = match origin {
                Origin::Context => Some(self.context()),
                Origin::From(root) => root,
                Origin::Vertex(digest) => Some(digest),
            };
            let input = digest.map_or(-1, |d| input_index(&mut inputs, d));
            actions.push(target.action(input, paths, unpack));
        }
        Op {
            inputs,
            kind: Some(op::Kind::File(FileOp { base, actions })),
            platform: None,
        }
    }

    /// WORKDIR: relative to the previous one; the directory is created
    /// (owned by the stage's USER) so it exists in the image.
    pub(super) fn dispatch_workdir(
        &mut self,
        state: &mut StageState,
        command: &Command,
        path: &str,
    ) -> Result<Step, Kind> {
        let path = expand(&self.lexer, path, state)?;
        // As BuildKit's NormalizeWorkdir: an absolute path is kept as
        // written (`/app/` stays `/app/`), a relative one is joined to the
        // current directory and cleaned.
        let (written, dir) = if path.starts_with('/') {
            (path.clone(), clean(&path))
        } else {
            let joined = clean(&format!("{}/{path}", state.workdir()));
            (joined.clone(), joined)
        };
        state.image.config.working_dir = Some(written);
        if dir == "/" {
            return Ok(Step::Config);
        }
        let owner = state
            .image
            .config
            .user
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(parse_owner)
            .transpose()?;
        let mut inputs = Vec::new();
        let base = match &state.root {
            Some(root) => input_index(&mut inputs, root.clone()),
            None => -1,
        };
        let mkdir = FileAction {
            action: Some(file_action::Action::Mkdir(FileMkdir {
                path: dir.clone(),
                mode: 0o755,
                make_parents: true,
                owner,
            })),
        };
        let op = Op {
            inputs,
            kind: Some(op::Kind::File(FileOp {
                base,
                actions: vec![mkdir],
            })),
            platform: None,
        };
        state.root = Some(self.graph.add(op, Self::meta(state, command)));
        Ok(Step::Layer(format!("WORKDIR {dir}")))
    }

    fn heredoc_file(
        &mut self,
        state: &StageState,
        command: &Command,
        name: &str,
        data: String,
    ) -> String {
        let op = inline_file(name, 0o644, data.into_bytes());
        self.graph.add(
            op,
            sub_meta(Self::meta(state, command), &format!("<<{name}")),
        )
    }

    fn http_source(
        &mut self,
        state: &StageState,
        command: &Command,
        url: &str,
        checksum: Option<String>,
    ) -> (String, String) {
        let path = url.split(['?', '#']).next().unwrap_or(url);
        let file = match base_name(path.splitn(4, '/').nth(3).unwrap_or("")) {
            "" => "index.html".to_owned(),
            name => name.to_owned(),
        };
        let source = HttpSource {
            url: url.to_owned(),
            checksum: checksum.unwrap_or_default(),
            filename: file.clone(),
        };
        let op = new_source(source_op::Source::Http(source), None);
        (
            self.graph
                .add(op, sub_meta(Self::meta(state, command), url)),
            file,
        )
    }

    fn git_source(
        &mut self,
        state: &StageState,
        command: &Command,
        url: &str,
        keep_git_dir: bool,
        checksum: Option<String>,
    ) -> Result<String, Kind> {
        let parsed = crate::gitref::parse(url)?;
        // `--checksum` and the query's `checksum=` name one commit.
        let checksum = match (checksum, parsed.checksum) {
            (Some(flag), Some(query)) if flag != query => {
                return Err(Kind::Git(crate::gitref::GitRefError::Query {
                    url: url.to_owned(),
                    why: format!("--checksum={flag} conflicts with checksum={query}"),
                }));
            }
            (flag, query) => flag.or(query),
        };
        let source = GitSource {
            remote: parsed.remote,
            r#ref: parsed.reference,
            subdir: parsed.subdir,
            keep_git_dir: parsed.keep_git_dir.unwrap_or(keep_git_dir),
            checksum: checksum.unwrap_or_default(),
        };
        let op = new_source(source_op::Source::Git(source), None);
        Ok(self
            .graph
            .add(op, sub_meta(Self::meta(state, command), url)))
    }
}

/// An op that makes one file, `/name`, on an empty filesystem (heredoc
/// files, RUN heredoc scripts).
pub(super) fn inline_file(name: &str, mode: u32, data: Vec<u8>) -> Op {
    let mkfile = FileAction {
        action: Some(file_action::Action::Mkfile(FileMkfile {
            path: format!("/{name}"),
            mode,
            data,
            owner: None,
        })),
    };
    Op {
        inputs: vec![],
        kind: Some(op::Kind::File(FileOp {
            base: -1,
            actions: vec![mkfile],
        })),
        platform: None,
    }
}

fn sub_meta(meta: VertexMeta, what: &str) -> VertexMeta {
    VertexMeta {
        description: format!("{} ({what})", meta.description),
        ..meta
    }
}

/// `ADD` or `COPY`, as errors and the history name the instruction.
fn instruction_name(copy: &CopyCommand) -> &'static str {
    if copy.add.is_some() { "ADD" } else { "COPY" }
}

/// `--chmod` as a copy action takes it: an octal mode as its bits, a
/// symbolic one as text (applied file by file).
fn split_chmod(chmod: Option<Chmod>) -> (Option<u32>, String) {
    match chmod {
        None => (None, String::new()),
        Some(Chmod::Octal(bits)) => (Some(bits), String::new()),
        Some(symbolic) => (None, symbolic.to_string()),
    }
}

/// ADD unpacks the local archives it copies (from the context or
/// `--from`) unless `--unpack=false`; COPY never does.
fn unpack_local(copy: &CopyCommand) -> bool {
    copy.add
        .as_ref()
        .is_some_and(|add| add.unpack != Some(false))
}

fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

use crate::gitref::is_git_url;

/// A URL (`scheme://…`) or a Git transport (`transport::address`) ADD does
/// not take: only http(s) URLs and the Git remotes of [`crate::gitref`]
/// are fetched; such a source is refused rather than read as a context path.
fn foreign_url(s: &str) -> bool {
    let scheme_end = s.find("://").or_else(|| s.find("::"));
    scheme_end.is_some_and(|end| {
        let scheme = &s[..end];
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    })
}

/// A download's `--checksum`: a digest as BuildKit parses it
/// (`go-digest`), of the one algorithm the solver computes.
fn check_digest(text: &str) -> Result<(), Kind> {
    let bad = |reason| Kind::Checksum(text.to_owned(), reason);
    let (algorithm, hex) = text
        .split_once(':')
        .ok_or_else(|| bad("invalid checksum digest format"))?;
    match algorithm {
        "sha256" => {}
        "sha384" | "sha512" => return Err(bad("only sha256 digests are checked")),
        _ => return Err(bad("unsupported digest algorithm")),
    }
    if hex.len() != 64 {
        return Err(bad("invalid checksum digest length"));
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad("invalid checksum digest format"));
    }
    Ok(())
}

/// `user[:group]`, each a name or a numeric id.
pub(super) fn parse_owner(spec: &str) -> Result<Owner, Kind> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(Kind::Chown(spec.to_owned()));
    }
    let user = match user.parse::<u32>() {
        Ok(uid) => owner::User::Uid(uid),
        Err(_) => owner::User::UserName(user.to_owned()),
    };
    let group = group.map(|g| match g.parse::<u32>() {
        Ok(gid) => owner::Group::Gid(gid),
        Err(_) => owner::Group::GroupName(g.to_owned()),
    });
    Ok(Owner {
        user: Some(user),
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        let o = parse_owner("1000:app").unwrap();
        assert_eq!(o.user, Some(owner::User::Uid(1000)));
        assert_eq!(o.group, Some(owner::Group::GroupName("app".into())));
        assert_eq!(parse_owner("app").unwrap().group, None);
        assert!(parse_owner(":x").is_err());
        assert!(parse_owner("x:").is_err());
    }

    #[test]
    fn modes_and_urls() {
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        for bad in [
            "sha256:abc",
            "abc",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("md5:{}", "a".repeat(32)),
            &format!("sha512:{}", "a".repeat(128)),
        ] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
        assert!(is_git_url(
            "https://github.com/moby/buildkit.git#v0.10.1:docs"
        ));
        assert!(is_git_url("git@github.com:moby/buildkit.git"));
        assert!(!is_git_url("https://example.com/file.tar.gz"));
        for foreign in [
            "file:///etc/passwd",
            "ftp://h/f",
            "ext::sh -c x",
            "s3://b/k",
        ] {
            assert!(foreign_url(foreign), "{foreign}");
        }
        for path in ["a.txt", "dir/a::b", "./x://y"] {
            assert!(!foreign_url(path), "{path}");
        }
    }
}
