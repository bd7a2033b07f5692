//! Parser directives: `# syntax=…`, `# escape=…`, `# check=…` at the top of
//! the file, before any instruction, blank line or other comment.

use super::ParseErrorKind;

/// The directives found, and the escape character in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `` ` `` or `\` (the default): escapes characters and continues lines.
    pub escape: char,
    /// `# syntax=` (a frontend image reference; kiln records but does not
    /// switch frontends).
    pub syntax: Option<String>,
    /// The line of `# syntax=` (1-based; 0 without one).
    pub syntax_line: usize,
    /// `# check=` (lint configuration).
    pub check: Option<String>,
    seen_escape: bool,
    done: bool,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            escape: '\\',
            syntax: None,
            syntax_line: 0,
            check: None,
            seen_escape: false,
            done: false,
        }
    }
}

impl Directives {
    /// Looks at the next line (`number`, left-trimmed, without its line
    /// end) while the directive block is open; the first line that is not a
    /// known directive closes it for good. Says whether the line was one.
    pub(super) fn check(&mut self, line: &str, number: usize) -> Result<bool, ParseErrorKind> {
        if self.done {
            return Ok(false);
        }
        let Some((name, value)) = parse_directive(line) else {
            self.done = true;
            return Ok(false);
        };
        let repeated = match name.as_str() {
            "escape" => std::mem::replace(&mut self.seen_escape, true),
            "syntax" => self.syntax.replace(value.to_owned()).is_some(),
            "check" => self.check.replace(value.to_owned()).is_some(),
            _ => {
                self.done = true;
                return Ok(false);
            }
        };
        if repeated {
            return Err(ParseErrorKind::RepeatedDirective(name));
        }
        if name == "syntax" {
            self.syntax_line = number;
        }
        if name == "escape" {
            self.escape = match value {
                "`" => '`',
                "\\" => '\\',
                other => return Err(ParseErrorKind::InvalidEscape(other.to_owned())),
            };
        }
        Ok(true)
    }
}

/// `#` + spaces + name + spaces + `=` + spaces + value (non-empty) + spaces,
/// where spaces are ASCII white space and the name is an ASCII letter
/// followed by letters and digits. Returns the lower-cased name and value.
fn parse_directive(line: &str) -> Option<(String, &str)> {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r');
    let rest = line.strip_prefix('#')?.trim_start_matches(is_space);
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let after = rest.trim_start_matches(is_space).strip_prefix('=')?;
    let value = after.trim_matches(is_space);
    // BuildKit's `=\s*(.+?)\s*$` takes one white-space character as the
    // value when there is nothing else (`# escape=  ` is an invalid escape).
    let value = if value.is_empty() {
        after.get(..1)?
    } else {
        value
    };
    Some((name.to_ascii_lowercase(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(parse_directive("# escape=`"), Some(("escape".into(), "`")));
        assert_eq!(
            parse_directive("#ESCAPE = \\ "),
            Some(("escape".into(), "\\"))
        );
        assert_eq!(
            parse_directive("# syntax=docker/dockerfile:1"),
            Some(("syntax".into(), "docker/dockerfile:1"))
        );
        assert_eq!(parse_directive("# escape="), None);
        assert_eq!(parse_directive("# escape= "), Some(("escape".into(), " ")));
        assert_eq!(parse_directive("# 1x=y"), None);
        assert_eq!(parse_directive("# just a comment"), None);
    }

    #[test]
    fn block_ends_at_first_other_line() {
        let mut d = Directives::default();
        d.check("# comment", 1).unwrap();
        d.check("# escape=`", 1).unwrap();
        assert_eq!(d.escape, '\\');
    }

    #[test]
    fn errors() {
        let mut d = Directives::default();
        d.check("# escape=`", 1).unwrap();
        assert_eq!(
            d.check("# escape=\\", 1),
            Err(ParseErrorKind::RepeatedDirective("escape".into()))
        );
        let mut d = Directives::default();
        assert_eq!(
            d.check("# escape=x", 1),
            Err(ParseErrorKind::InvalidEscape("x".into()))
        );
    }
}
