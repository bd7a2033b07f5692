//! One logical line → keyword, flags and argument text → a [`Node`].

use super::{Node, ParseErrorKind, args};

/// White space that separates words in the AST: space, tab, VT, FF, CR.
pub(super) fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r')
}

/// How deep `ONBUILD ONBUILD …` may nest in the AST (the instruction layer
/// allows one level; this only bounds the recursion).
const MAX_NESTING: usize = 16;

/// Builds the node for one instruction.
pub(super) fn node_from_line(line: &str, escape: char) -> Result<Node, ParseErrorKind> {
    node_at_depth(line, escape, 0)
}

/// Builds the node for an instruction `depth` ONBUILDs deep.
pub(super) fn node_at_depth(
    line: &str,
    escape: char,
    depth: usize,
) -> Result<Node, ParseErrorKind> {
    if depth > MAX_NESTING {
        return Err(ParseErrorKind::TooDeep(MAX_NESTING));
    }
    let trimmed = line.trim();
    let (keyword, rest) = match trimmed.find(is_separator) {
        Some(i) => {
            let rest = trimmed[i..].trim_start_matches(is_separator);
            (&trimmed[..i], rest)
        }
        None => (trimmed, ""),
    };
    let (flags, rest) = extract_flags(rest);
    let rest = rest.trim();
    let command = keyword.to_ascii_lowercase();
    let parsed = args::parse(&command, rest, escape, depth)?;
    Ok(Node {
        keyword: keyword.to_owned(),
        command,
        flags,
        args: parsed.args,
        child: parsed.child,
        json: parsed.json,
        heredocs: Vec::new(),
        original: line.to_owned(),
        location: super::Location::default(),
        comments: Vec::new(),
    })
}

/// Reads `--flag` words from the start of `text`: quotes group and are
/// dropped, `\` makes the next character literal, a bare `--` ends the flags.
/// Returns the flags and the text after them.
fn extract_flags(text: &str) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return (flags, "");
        };
        if !text[start..].starts_with("--") {
            return (flags, &text[start..]);
        }
        let mut word = String::new();
        let mut quoted = false;
        let mut quote: Option<char> = None;
        let mut end = text.len();
        while let Some((i, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => {
                    end = i;
                    break;
                }
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    quoted = true;
                }
                Some(q) if c == q => quote = None,
                _ if c == '\\' => match chars.next() {
                    Some((_, n)) => word.push(n),
                    None => quote = None,
                },
                _ => word.push(c),
            }
        }
        if word == "--" {
            return (flags, &text[end..]);
        }
        if quoted || !word.is_empty() {
            flags.push(word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert_eq!(
            extract_flags("--a=1 --b x y"),
            (vec!["--a=1".into(), "--b".into()], "x y")
        );
        assert_eq!(extract_flags("--a -- --x"), (vec!["--a".into()], " --x"));
        assert_eq!(
            extract_flags("--m=\"a b\" c"),
            (vec!["--m=a b".into()], "c")
        );
        assert_eq!(extract_flags("--e=a\\ b"), (vec!["--e=a b".into()], ""));
        assert_eq!(extract_flags("-x"), (vec![], "-x"));
    }
}
