//! Shell patterns for `${x#p}`, `${x%p}` and `${x/p/r}`: `*`, `?`, `[…]`
//! (with `!` or `^` to negate, and ranges) and `\` to quote the next
//! character. Unlike file globs, `*` and `?` match `/` too.

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub(super) struct Pattern {
    tokens: Vec<Token>,
}

impl Pattern {
    pub(super) fn new(pattern: &str) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            tokens.push(match c {
                '*' => Token::AnyRun,
                '?' => Token::AnyOne,
                '\\' if i < chars.len() => {
                    i += 1;
                    Token::Literal(chars[i - 1])
                }
                '[' => match parse_class(&chars[i..]) {
                    Some((token, used)) => {
                        i += used;
                        token
                    }
                    None => Token::Literal('['),
                },
                c => Token::Literal(c),
            });
        }
        Self { tokens }
    }

    /// Whether the whole of `text` matches.
    fn matches(&self, text: &[char]) -> bool {
        matches_from(&self.tokens, text)
    }

    /// `${x#p}` (shortest) and `${x##p}` (longest): remove a matching prefix.
    pub(super) fn trim_prefix(&self, value: &str, longest: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut ends: Box<dyn Iterator<Item = usize>> = if longest {
            Box::new((0..=chars.len()).rev())
        } else {
            Box::new(0..=chars.len())
        };
        match ends.find(|&end| self.matches(&chars[..end])) {
            Some(end) => chars[end..].iter().collect(),
            None => value.to_owned(),
        }
    }

    /// `${x%p}` (shortest) and `${x%%p}` (longest): remove a matching suffix.
    pub(super) fn trim_suffix(&self, value: &str, longest: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut starts: Box<dyn Iterator<Item = usize>> = if longest {
            Box::new(0..=chars.len())
        } else {
            Box::new((0..=chars.len()).rev())
        };
        match starts.find(|&start| self.matches(&chars[start..])) {
            Some(start) => chars[..start].iter().collect(),
            None => value.to_owned(),
        }
    }

    /// `${x/p/r}` and `${x//p/r}`: replace the leftmost-longest match, or
    /// every one. An empty pattern replaces nothing.
    pub(super) fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        if self.tokens.is_empty() {
            return value.to_owned();
        }
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut start = 0;
        let mut replaced = false;
        while start <= chars.len() {
            let found = (!replaced || all)
                .then(|| {
                    (start..=chars.len())
                        .rev()
                        .find(|&end| self.matches(&chars[start..end]))
                })
                .flatten();
            match found {
                Some(end) if end > start => {
                    out.push_str(replacement);
                    start = end;
                    replaced = true;
                }
                _ => {
                    if let Some(&c) = chars.get(start) {
                        out.push(c);
                    }
                    start += 1;
                }
            }
        }
        out
    }
}

/// Parses the inside of `[…]` (after the `[`); `None` when unterminated.
fn parse_class(chars: &[char]) -> Option<(Token, usize)> {
    let mut i = 0;
    let negated = matches!(chars.first(), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let mut first = true;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Token::Class { negated, items }, i + 1));
        }
        first = false;
        let lo = if c == '\\' {
            i += 1;
            *chars.get(i)?
        } else {
            c
        };
        i += 1;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&n| n != ']') {
            items.push((lo, chars[i + 1]));
            i += 2;
        } else {
            items.push((lo, lo));
        }
    }
}

/// Whole-text match in O(len(text) × len(tokens)): on a mismatch, only the
/// most recent `*` needs to take one more character (later stars subsume
/// earlier ones), so there is no exponential backtracking.
fn matches_from(tokens: &[Token], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match tokens.get(p) {
            Some(Token::AnyRun) => {
                star = Some((p + 1, t));
                p += 1;
            }
            Some(token) if token.matches_one(text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((after, taken)) => {
                    star = Some((after, taken + 1));
                    p = after;
                    t = taken + 1;
                }
                None => return false,
            },
        }
    }
    tokens[p..].iter().all(|token| *token == Token::AnyRun)
}

impl Token {
    /// Whether this single-character token matches `c`.
    fn matches_one(&self, c: char) -> bool {
        match self {
            Token::AnyRun | Token::AnyOne => true,
            Token::Literal(l) => *l == c,
            Token::Class { negated, items } => {
                items.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn no_exponential_backtracking() {
        let text = "a".repeat(2000);
        let pattern = Pattern::new(&"*a".repeat(30));
        assert_eq!(
            pattern.trim_suffix(&format!("{text}b"), false),
            format!("{text}b")
        );
        assert!(Pattern::new("*a*b").matches(&"xaxb".chars().collect::<Vec<_>>()));
        assert!(!Pattern::new("a*b?").matches(&"ab".chars().collect::<Vec<_>>()));
    }
}
