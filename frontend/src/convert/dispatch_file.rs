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

impl Converter<'_> {
    pub(super) fn dispatch_copy(
        &mut self,
        state: &mut StageState,
        command: &Command,
        copy: &CopyCommand,
    ) -> Result<Step, Kind> {
        let is_add = copy.add.is_some();
        let name = if is_add { "ADD" } else { "COPY" };
        let lexer = self.lexer;
        let word = |w: &String| expand(&lexer, w, state);
        let sources = copy
            .sources
            .iter()
            .map(word)
            .collect::<Result<Vec<_>, _>>()?;
        let dest_text = word(&copy.dest)?;
        if sources.len() + copy.heredocs.len() > 1 && !dest_text.ends_with('/') {
            return Err(Kind::DestNotDirectory(name));
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
        let (mode, chmod) = match chmod {
            None => (None, String::new()),
            Some(Chmod::Octal(bits)) => (Some(bits), String::new()),
            Some(symbolic) => (None, symbolic.to_string()),
        };
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
        let add = copy.add.clone().unwrap_or_default();
        // Expanded as BuildKit does (`ARG SUM` … `--checksum=$SUM`); empty is
        // none.
        let checksum = add
            .checksum
            .as_ref()
            .map(word)
            .transpose()?
            .filter(|c| !c.is_empty());

        let mut groups: Vec<(Origin, Vec<String>, bool)> = Vec::new();
        let unpack_local = is_add && add.unpack != Some(false);
        if let Some(from) = &from {
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
            groups.push((Origin::From(root), paths, unpack_local));
        } else {
            // Consecutive context sources share one copy action.
            let push = |groups: &mut Vec<(Origin, Vec<String>, bool)>,
                        origin: Origin,
                        path: String,
                        unpack: bool| {
                match groups.last_mut() {
                    Some((Origin::Context, paths, u))
                        if matches!(origin, Origin::Context) && *u == unpack =>
                    {
                        paths.push(path);
                    }
                    _ => groups.push((origin, vec![path], unpack)),
                }
            };
            for source in &sources {
                if is_add && is_git_url(source) {
                    let digest = self.git_source(
                        state,
                        command,
                        source,
                        add.keep_git_dir,
                        checksum.clone(),
                    )?;
                    push(&mut groups, Origin::Vertex(digest), "/".to_owned(), false);
                } else if is_add && is_http_url(source) {
                    if let Some(checksum) = &checksum {
                        check_digest(checksum)?;
                    }
                    let (digest, file) = self.http_source(state, command, source, checksum.clone());
                    push(
                        &mut groups,
                        Origin::Vertex(digest),
                        format!("/{file}"),
                        add.unpack == Some(true),
                    );
                } else if is_http_url(source) || is_git_url(source) {
                    return Err(Kind::Source(name, source.clone()));
                } else if is_add && foreign_url(source) {
                    return Err(Kind::Scheme(source.clone()));
                } else {
                    if checksum.is_some() {
                        return Err(Kind::ChecksumLocal(source.clone()));
                    }
                    let path = if copy.parents {
                        with_pivot(source, in_context)
                    } else {
                        in_context(source)
                    }
                    .ok_or_else(|| Kind::OutsideContext(source.clone()))?;
                    push(&mut groups, Origin::Context, path, unpack_local);
                }
            }
        }
        for heredoc in &copy.heredocs {
            let data = if heredoc.expand {
                // Heredoc bodies are text, not shell words: quotes stay.
                let raw = Lexer::new('\\').with_literal_quotes(true);
                expand(&raw, &heredoc.data, state)?
            } else {
                heredoc.data.clone()
            };
            let digest = self.heredoc_file(state, command, &heredoc.name, data);
            groups.push((
                Origin::Vertex(digest),
                vec![format!("/{}", heredoc.name)],
                false,
            ));
        }

        let mut inputs = Vec::new();
        let base = match (&state.root, copy.link) {
            (Some(root), false) => input_index(&mut inputs, root.clone()),
            _ => -1,
        };
        let mut actions = Vec::new();
        for (origin, paths, unpack) in groups {
            let digest = match origin {
                Origin::Context => Some(self.context()),
                Origin::From(root) => root,
                Origin::Vertex(digest) => Some(digest),
            };
            actions.push(FileAction {
                action: Some(file_action::Action::Copy(FileCopy {
                    input: digest.map_or(-1, |d| input_index(&mut inputs, d)),
                    sources: paths,
                    dest: dest.clone(),
                    owner: owner.clone(),
                    mode,
                    chmod: chmod.clone(),
                    allow_wildcard: true,
                    unpack_archives: unpack,
                    parents: copy.parents,
                    exclude_patterns: excludes.clone(),
                })),
            });
        }
        let op = Op {
            inputs,
            kind: Some(op::Kind::File(FileOp { base, actions })),
            platform: None,
        };
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
        let mut created_by = vec![name.to_owned()];
        created_by.extend(sources);
        created_by.extend(copy.heredocs.iter().map(|h| format!("<<{}", h.name)));
        created_by.push(dest);
        Ok(Step::Layer(created_by.join(" ")))
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
