//! Heredocs (`RUN <<EOF`, `COPY <<EOF /dest`): which words open one, and
//! reading their bodies from the lines after the instruction.

use super::{Node, ParseErrorKind, PhysicalLines};
use crate::shell::{ExpandError, Lexer, NoVars};

/// One heredoc: `[fd]<<[-]NAME`, and its body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Heredoc {
    /// The terminator, quotes removed.
    pub name: String,
    /// `3<<EOF` gives 3; 0 when absent.
    pub file_descriptor: u32,
    /// No part of the name was quoted: variables in the body expand.
    pub expand: bool,
    /// `<<-`: leading tabs are removed from body lines and terminator.
    pub chomp: bool,
    /// The body, each line with its line end, as written.
    pub content: String,
}

impl Heredoc {
    /// Parses one word of an instruction; `Ok(None)` when it opens no heredoc.
    pub fn parse_word(word: &str) -> Result<Option<Self>, ExpandError> {
        let digits = word.bytes().take_while(u8::is_ascii_digit).count();
        let Some(rest) = word[digits..].strip_prefix("<<") else {
            return Ok(None);
        };
        let (chomp, rest) = match rest.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        if rest.is_empty() || rest.contains('<') {
            return Ok(None);
        }
        let lexer = Lexer::new('\\').with_keep_unset(true);
        let words = lexer.expand_words(rest, &NoVars)?;
        let [name] = words.as_slice() else {
            return Ok(None);
        };
        let raw = lexer.with_raw_quotes(true).expand_words(rest, &NoVars)?;
        let quotes = |s: &str| s.matches(['\'', '"']).count();
        let expand = raw.first().is_some_and(|r| quotes(r) == quotes(name));
        Ok(Some(Self {
            name: name.clone(),
            file_descriptor: word[..digits].parse().unwrap_or(0),
            expand,
            chomp,
            content: String::new(),
        }))
    }

    /// The body with `<<-`'s leading tabs removed from every line.
    pub fn body(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|line| line.trim_start_matches('\t'))
            .collect()
    }

    /// Reads body lines up to the terminator line.
    pub(super) fn read_body(
        &mut self,
        lines: &mut PhysicalLines<'_>,
    ) -> Result<(), ParseErrorKind> {
        loop {
            let Some((_, line)) = lines.next_raw().map_err(|e| e.kind)? else {
                return Err(ParseErrorKind::UnterminatedHeredoc(self.name.clone()));
            };
            let mut candidate = line.trim_end_matches(['\r', '\n']);
            if self.chomp {
                candidate = candidate.trim_start_matches('\t');
            }
            if candidate == self.name {
                return Ok(());
            }
            self.content.push_str(line);
        }
    }
}

/// RUN, COPY and ADD in shell form (also under ONBUILD) can have heredocs.
pub(super) fn allowed(node: &Node) -> bool {
    let node = match &node.child {
        Some(child) if node.command == "onbuild" => child,
        _ => node,
    };
    matches!(node.command.as_str(), "run" | "copy" | "add") && !node.json
}

/// The heredocs an instruction line opens, in order.
pub(super) fn from_line(line: &str) -> Result<Vec<Heredoc>, ParseErrorKind> {
    if !line.contains("<<") {
        return Ok(Vec::new());
    }
    let lexer = Lexer::new('\\')
        .with_raw_quotes(true)
        .with_raw_escapes(true)
        .with_keep_unset(true);
    // A line the lexer cannot split (an open quote) has no heredocs.
    let words = lexer.expand_words(line, &NoVars).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = Heredoc::parse_word(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(word: &str) -> Option<Heredoc> {
        Heredoc::parse_word(word).unwrap()
    }

    #[test]
    fn words() {
        let d = doc("<<EOF").unwrap();
        assert_eq!(
            (d.name.as_str(), d.expand, d.chomp, d.file_descriptor),
            ("EOF", true, false, 0)
        );
        let d = doc("3<<-\"END\"").unwrap();
        assert_eq!(
            (d.name.as_str(), d.expand, d.chomp, d.file_descriptor),
            ("END", false, true, 3)
        );
        let d = doc("<<'E'OF").unwrap();
        assert_eq!((d.name.as_str(), d.expand), ("EOF", false));
        assert!(doc("<<").is_none());
        assert!(doc("<<<EOF").is_none());
        assert!(doc("a<<EOF").is_none());
    }

    #[test]
    fn chomp() {
        let mut d = doc("<<-EOF").unwrap();
        d.content = "\t\ta\n\tb\n".into();
        assert_eq!(d.body(), "a\nb\n");
    }
}
