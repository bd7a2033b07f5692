//! COPY and ADD: sources, destination and their flags.

use super::InstructionErrorKind as Kind;
use super::flags::{FlagType, Flags};
use crate::parser::{Heredoc, Node};

/// `COPY`/`ADD [flags] src… dest`, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCommand {
    /// Source paths (context, stage or image paths, ADD URLs), in order.
    pub sources: Vec<String>,
    /// Sources given inline as heredocs (`COPY <<EOF /dest`).
    pub heredocs: Vec<HeredocSource>,
    pub dest: String,
    /// `--from`: a stage name or index, or an image.
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub excludes: Vec<String>,
    /// ADD's own options; `None` for COPY.
    pub add: Option<AddOptions>,
}

/// Flags only ADD takes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddOptions {
    /// `--checksum` of a remote source.
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    /// `--unpack`: `Some(false)` copies a local archive as a file.
    pub unpack: Option<bool>,
}

/// A heredoc used as a COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeredocSource {
    /// The file name (the heredoc's terminator word).
    pub name: String,
    /// The body (`<<-` tabs already removed).
    pub data: String,
    /// Expand variables in the body (the terminator was not quoted).
    pub expand: bool,
}

pub(super) fn parse(node: &Node, is_add: bool) -> Result<CopyCommand, Kind> {
    let name = if is_add { "ADD" } else { "COPY" };
    let common: &[(&'static str, FlagType)] = &[
        ("chown", FlagType::String),
        ("chmod", FlagType::String),
        ("link", FlagType::Bool),
        ("exclude", FlagType::List),
    ];
    let own: &[(&'static str, FlagType)] = if is_add {
        &[
            ("checksum", FlagType::String),
            ("keep-git-dir", FlagType::Bool),
            ("unpack", FlagType::Bool),
        ]
    } else {
        &[("from", FlagType::String), ("parents", FlagType::Bool)]
    };
    let known: Vec<_> = common.iter().chain(own).copied().collect();
    let flags = Flags::parse(&node.flags, &known)?;
    let Some((dest, sources)) = node.args.split_last().filter(|(_, s)| !s.is_empty()) else {
        return Err(Kind::NoDestination(name));
    };
    let is_heredoc = |word: &str| !node.json && Heredoc::parse_word(word).ok().flatten().is_some();
    if is_heredoc(dest) {
        return Err(Kind::HeredocDestination(name));
    }
    let mut paths = Vec::new();
    let mut heredocs = Vec::new();
    for source in sources {
        match (!node.json)
            .then(|| Heredoc::parse_word(source))
            .transpose()?
            .flatten()
        {
            Some(word) => {
                let body = node.heredocs.iter().find(|d| d.name == word.name);
                let data = body.map(Heredoc::body).unwrap_or_default();
                heredocs.push(HeredocSource {
                    name: word.name,
                    data,
                    expand: word.expand,
                });
            }
            None => paths.push(source.clone()),
        }
    }
    let add = is_add.then(|| AddOptions {
        checksum: flags.string("checksum"),
        keep_git_dir: flags.bool("keep-git-dir"),
        unpack: flags.bool_opt("unpack"),
    });
    Ok(CopyCommand {
        sources: paths,
        heredocs,
        dest: dest.clone(),
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.bool("link"),
        parents: flags.bool("parents"),
        excludes: flags.list("exclude"),
        add,
    })
}
