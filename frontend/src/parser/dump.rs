//! The AST in BuildKit's dump format: one `(keyword ["flags"] "args"…)` line
//! per instruction, strings quoted as Go's `strconv.Quote` does. This is the
//! format of BuildKit's parser test data, so kiln is checked against it.

use std::fmt::Write;

use unicode_general_category::{GeneralCategory as G, get_general_category};

use super::{Dockerfile, Node};

impl Dockerfile {
    /// The whole AST, one line per instruction, each ending in `\n`.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for node in &self.instructions {
            out.push('(');
            node.dump_into(&mut out);
            out.push_str(")\n");
        }
        out
    }
}

impl Node {
    fn dump_into(&self, out: &mut String) {
        out.push_str(&self.keyword.to_lowercase());
        if !self.flags.is_empty() {
            out.push_str(" [");
            for (i, flag) in self.flags.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                go_quote_into(flag, out);
            }
            out.push(']');
        }
        for arg in &self.args {
            out.push(' ');
            go_quote_into(arg, out);
        }
        if let Some(child) = &self.child {
            out.push_str(" (");
            child.dump_into(out);
            out.push(')');
        }
    }
}

/// Go's `strconv.Quote`, appended to `out`.
fn go_quote_into(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_go_printable(c) => out.push(c),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if c < ' ' || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and
/// the ASCII space.
fn is_go_printable(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    !matches!(
        get_general_category(c),
        G::SpaceSeparator
            | G::LineSeparator
            | G::ParagraphSeparator
            | G::Control
            | G::Format
            | G::Surrogate
            | G::PrivateUse
            | G::Unassigned
    )
}

#[cfg(test)]
mod tests {
    fn go_quote(s: &str) -> String {
        let mut out = String::new();
        super::go_quote_into(s, &mut out);
        out
    }

    #[test]
    fn quoting() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote("\u{0}\u{7}\t\n\u{1b}\u{7f}"),
            r#""\x00\a\t\n\x1b\x7f""#
        );
        assert_eq!(
            go_quote("♥ 한\u{a0}\u{200b}\u{e000}\u{10ffff}"),
            r#""♥ 한\u00a0\u200b\ue000\U0010ffff""#
        );
    }
}
