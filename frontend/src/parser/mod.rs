//! Dockerfile text → AST, with BuildKit's rules
//! (`frontend/dockerfile/parser/parser.go`).
//!
//! The AST keeps each instruction's keyword, flags and arguments mostly as
//! written: quotes and escapes stay in shell-form text, ENV/LABEL values and
//! paths; only JSON arrays are decoded. Expansion and validation happen later
//! (`instructions`, `convert`). [`Dockerfile::dump`] prints the AST in
//! BuildKit's test format.

mod args;
mod directives;
mod dump;
mod heredoc;
mod split;

use thiserror::Error;

pub use self::directives::Directives;
pub use self::heredoc::Heredoc;

/// Longest physical line accepted, in bytes (BuildKit's scanner limit).
pub const MAX_LINE_BYTES: usize = 65_535;

/// Lines `start..=end` (1-based) of the Dockerfile that an instruction spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Location {
    pub start: usize,
    pub end: usize,
}

/// One instruction of the AST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The instruction word as written (`RUN`, `run`, `Run`).
    pub keyword: String,
    /// The instruction word in lower case, as instructions are matched.
    pub command: String,
    /// Flags before the arguments (`--from=build`), quotes removed.
    pub flags: Vec<String>,
    /// Arguments; their shape depends on the keyword (see `args`).
    pub args: Vec<String>,
    /// The instruction inside `ONBUILD`.
    pub child: Option<Box<Node>>,
    /// The arguments were a JSON array (exec form).
    pub json: bool,
    /// Heredoc bodies that followed the instruction, in order.
    pub heredocs: Vec<Heredoc>,
    /// The instruction's text after joining continuation lines.
    pub original: String,
    pub location: Location,
    /// The comment lines right before the instruction (`#` and the spaces
    /// around the text removed), as BuildKit's `PrevComment`: blank lines do
    /// not end them, an empty `#` line drops those before it, and parser
    /// directives are not among them. A `# check=` here configures the
    /// build checks for this instruction alone ([`crate::checks`]).
    pub comments: Vec<String>,
}

/// Something accepted that deserves a word to the user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

/// How the parser's warning about an empty continuation line begins; its
/// line is the instruction's last continuation line, as BuildKit's (the
/// `NoEmptyContinuation` check reports it there).
pub const EMPTY_CONTINUATION: &str = "Empty continuation line found in: ";

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub directives: Directives,
    pub instructions: Vec<Node>,
    pub warnings: Vec<Warning>,
}

/// What went wrong, without the line (see [`ParseError`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    #[error("file with no instructions")]
    NoInstructions,
    #[error("dockerfile line greater than max allowed size of {MAX_LINE_BYTES}")]
    LineTooLong,
    #[error("only one {0} parser directive can be used")]
    RepeatedDirective(String),
    #[error("invalid escape token '{0}' does not match ` or \\")]
    InvalidEscape(String),
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    NotStringArray,
    #[error("{0} must have two arguments")]
    MissingValue(String),
    #[error("Syntax error - can't find = in {0:?}. Must be of the form: name=value")]
    MissingEquals(String),
    #[error("unterminated heredoc {0:?}")]
    UnterminatedHeredoc(String),
    #[error("ONBUILD nested more than {0} deep")]
    TooDeep(usize),
    #[error("invalid heredoc: {0}")]
    Heredoc(#[from] crate::shell::ExpandError),
}

/// A parse error and the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("dockerfile parse error on line {line}: {kind}")]
pub struct ParseError {
    pub line: usize,
    pub kind: ParseErrorKind,
}

type Result<T> = std::result::Result<T, ParseError>;

/// Parses Dockerfile text.
pub fn parse(text: &str) -> Result<Dockerfile> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = PhysicalLines::new(text);
    let mut directives = Directives::default();
    let mut instructions = Vec::new();
    let mut warnings = Vec::new();
    let mut comments = Vec::new();

    while let Some((number, raw)) = lines.next_line()? {
        let first = raw.trim_start();
        let directive = directives
            .check(first, number)
            .map_err(|kind| at(number, kind))?;
        let escape = directives.escape;
        if let Some(comment) = first.strip_prefix('#').filter(|_| !directive) {
            match comment.trim() {
                "" => comments.clear(),
                text => comments.push(text.to_owned()),
            }
        }
        let first = if first.starts_with('#') { "" } else { first };
        let (text, mut continues) = trim_continuation(first, escape);
        if !continues && text.is_empty() {
            continue;
        }
        let mut text = text.to_owned();
        let mut empty_continuation = false;
        while continues {
            // Directives ended with this instruction's first line.
            let Some((_, raw)) = lines.next_line()? else {
                break;
            };
            let trimmed = raw.trim_start();
            if trimmed.starts_with('#') {
                continue;
            }
            if trimmed.is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, more) = trim_continuation(raw, escape);
            text.push_str(part);
            continues = more;
        }
        if empty_continuation {
            warnings.push(Warning {
                line: lines.number,
                message: format!("{EMPTY_CONTINUATION}{text}"),
            });
        }

        let mut node = split::node_from_line(&text, escape).map_err(|kind| at(number, kind))?;
        if heredoc::allowed(&node) {
            for mut doc in heredoc::from_line(&text).map_err(|kind| at(number, kind))? {
                doc.read_body(&mut lines).map_err(|kind| at(number, kind))?;
                node.heredocs.push(doc);
            }
        }
        node.location = Location {
            start: number,
            end: lines.number,
        };
        node.comments = std::mem::take(&mut comments);
        instructions.push(node);
    }

    if instructions.is_empty() {
        return Err(at(lines.number, ParseErrorKind::NoInstructions));
    }
    Ok(Dockerfile {
        directives,
        instructions,
        warnings,
    })
}

fn at(line: usize, kind: ParseErrorKind) -> ParseError {
    ParseError { line, kind }
}

/// Removes a trailing escape character (and the spaces and tabs after it)
/// and says whether it was there, i.e. whether the instruction continues on
/// the next line. `foo\\` does not continue: the escape is escaped.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    match body.strip_suffix(escape) {
        Some(before) if before.is_empty() || !before.ends_with(escape) => (before, true),
        _ => (line, false),
    }
}

/// The file's lines, split at `\n` with trailing `\r`s removed, numbered
/// from 1.
pub(crate) struct PhysicalLines<'a> {
    rest: Option<&'a str>,
    /// The number of the line returned last (0 before the first).
    pub(crate) number: usize,
}

impl<'a> PhysicalLines<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            rest: (!text.is_empty()).then_some(text),
            number: 0,
        }
    }

    /// The next line without its line end.
    pub(crate) fn next_line(&mut self) -> Result<Option<(usize, &'a str)>> {
        Ok(self
            .next_raw()?
            .map(|(n, line)| (n, line.trim_end_matches(['\r', '\n']))))
    }

    /// The next line with its `\n` (absent on a last line without one).
    pub(crate) fn next_raw(&mut self) -> Result<Option<(usize, &'a str)>> {
        let Some(rest) = self.rest else {
            return Ok(None);
        };
        let (line, rest) = match rest.find('\n') {
            Some(i) => (&rest[..=i], (i + 1 < rest.len()).then(|| &rest[i + 1..])),
            None => (rest, None),
        };
        self.rest = rest;
        self.number += 1;
        if line.trim_end_matches('\n').len() > MAX_LINE_BYTES {
            return Err(at(self.number, ParseErrorKind::LineTooLong));
        }
        Ok(Some((self.number, line)))
    }
}

#[cfg(test)]
mod tests;
