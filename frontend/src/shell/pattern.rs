//! Shell patterns for `${x#p}`, `${x%p}` and `${x/p/r}`: `*`, `?`, `[…]`
//! (with `!` or `^` to negate, and ranges) and `\` to quote the next
//! character. Unlike file globs, `*` and `?` match `/` too.
//!
//! Matching is a bit-parallel NFA simulation (one bit per pattern position,
//! shift-and), so every operation is O(len(text) × len(pattern) / 64): a
//! long value can no longer make `${x//*z/y}` cubic. Long loops ask the
//! [`Guard`] whether the build was cancelled.

use super::{ExpandError, Guard};

type Result<T> = std::result::Result<T, ExpandError>;

/// How many characters between two cancellation checks of a scan.
const CHECK_EVERY: usize = 1 << 14;

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
    /// Runs of `*` are one `*` (the same language, and it keeps the NFA's
    /// epsilon closure one step).
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
            let token = match c {
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
            };
            if !(token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun)) {
                tokens.push(token);
            }
        }
        Self { tokens }
    }

    /// The pattern read backwards (for suffixes and for finding where
    /// matches start): single-character tokens read the same both ways.
    fn reversed(&self) -> Self {
        Self {
            tokens: self.tokens.iter().rev().cloned().collect(),
        }
    }

    /// `*` alone (after collapsing): matches every text, the empty one too.
    fn is_any(&self) -> bool {
        self.tokens == [Token::AnyRun]
    }

    /// `${x#p}` (shortest) and `${x##p}` (longest): remove a matching prefix.
    pub(super) fn trim_prefix(
        &self,
        value: &str,
        longest: bool,
        guard: &Guard<'_>,
    ) -> Result<String> {
        let chars: Vec<char> = value.chars().collect();
        Ok(match Nfa::new(self).prefix_end(&chars, longest, guard)? {
            Some(end) => chars[end..].iter().collect(),
            None => value.to_owned(),
        })
    }

    /// `${x%p}` (shortest) and `${x%%p}` (longest): remove a matching suffix.
    pub(super) fn trim_suffix(
        &self,
        value: &str,
        longest: bool,
        guard: &Guard<'_>,
    ) -> Result<String> {
        let mut chars: Vec<char> = value.chars().collect();
        chars.reverse();
        Ok(
            match Nfa::new(&self.reversed()).prefix_end(&chars, longest, guard)? {
                Some(len) => chars[len..].iter().rev().collect(),
                None => value.to_owned(),
            },
        )
    }

    /// `${x/p/r}` and `${x//p/r}`: replace the leftmost-longest non-empty
    /// match, or every one left to right. An empty pattern replaces nothing.
    pub(super) fn replace(
        &self,
        value: &str,
        replacement: &str,
        all: bool,
        guard: &Guard<'_>,
    ) -> Result<String> {
        if self.tokens.is_empty() {
            return Ok(value.to_owned());
        }
        if self.is_any() {
            // Everything is one match; an empty value has only the empty one.
            return Ok(if value.is_empty() {
                String::new()
            } else {
                replacement.to_owned()
            });
        }
        let chars: Vec<char> = value.chars().collect();
        // No other pattern matches the empty text, so every start found
        // has a non-empty match.
        let starts = Nfa::new(&self.reversed()).match_starts(&chars, guard)?;
        let forward = Nfa::new(self);
        let mut out = String::new();
        let mut cursor = 0;
        while let Some(start) = (cursor..chars.len()).find(|&p| starts[p]) {
            let end = forward
                .prefix_end(&chars[start..], true, guard)?
                .map_or(start, |len| start + len);
            if end == start {
                break; // unreachable: a start has a non-empty match
            }
            out.extend(&chars[cursor..start]);
            out.push_str(replacement);
            guard.check_len(out.len())?;
            cursor = end;
            if !all {
                break;
            }
        }
        out.extend(&chars[cursor..]);
        guard.check_len(out.len())?;
        Ok(out)
    }
}

/// The pattern as a bit-parallel NFA: bit `j` of a state set means "the
/// first `j` tokens have matched"; bit `len` accepts.
struct Nfa<'p> {
    tokens: &'p [Token],
    words: usize,
    /// Positions that are a `*` (they stay set when a character is read,
    /// and let the next position be set without reading one).
    stars: Vec<u64>,
    /// For each ASCII character, the positions whose token reads it.
    ascii: Vec<Vec<u64>>,
}

impl<'p> Nfa<'p> {
    fn new(pattern: &'p Pattern) -> Self {
        let tokens = pattern.tokens.as_slice();
        let words = (tokens.len() + 1).div_ceil(64);
        let mut stars = vec![0; words];
        for (j, t) in tokens.iter().enumerate() {
            if *t == Token::AnyRun {
                set(&mut stars, j);
            }
        }
        let mut nfa = Self {
            tokens,
            words,
            stars,
            ascii: Vec::new(),
        };
        nfa.ascii = (0..128u8).map(|b| nfa.reads_slow(char::from(b))).collect();
        nfa
    }

    /// Positions whose single-character token matches `c`.
    fn reads_slow(&self, c: char) -> Vec<u64> {
        let mut mask = vec![0; self.words];
        for (j, t) in self.tokens.iter().enumerate() {
            if *t != Token::AnyRun && t.matches_one(c) {
                set(&mut mask, j);
            }
        }
        mask
    }

    fn start(&self) -> Vec<u64> {
        let mut s = vec![0; self.words];
        set(&mut s, 0);
        self.close(&mut s);
        s
    }

    /// Adds the positions after a set `*` (a star may match nothing).
    fn close(&self, s: &mut [u64]) {
        let mut carry = 0;
        for (w, star) in s.iter_mut().zip(&self.stars) {
            let skip = *w & star;
            *w |= (skip << 1) | carry;
            carry = skip >> 63;
        }
    }

    /// Reads `c`: `s` becomes the set after it.
    fn step(&self, s: &mut [u64], c: char, scratch: &mut Vec<u64>) {
        let reads: &[u64] = match self.ascii.get(c as usize) {
            Some(mask) => mask,
            None => {
                *scratch = self.reads_slow(c);
                scratch
            }
        };
        let mut carry = 0;
        for ((w, r), star) in s.iter_mut().zip(reads).zip(&self.stars) {
            let advance = *w & r;
            *w = (advance << 1) | carry | (*w & star);
            carry = advance >> 63;
        }
        self.close(s);
    }

    fn accepts(&self, s: &[u64]) -> bool {
        get(s, self.tokens.len())
    }

    /// The end of the shortest (or longest) match at the start of `text`.
    fn prefix_end(&self, text: &[char], longest: bool, guard: &Guard<'_>) -> Result<Option<usize>> {
        let mut s = self.start();
        let mut scratch = Vec::new();
        let mut found = self.accepts(&s).then_some(0);
        if found.is_some() && !longest {
            return Ok(found);
        }
        for (i, &c) in text.iter().enumerate() {
            if i % CHECK_EVERY == CHECK_EVERY - 1 {
                guard.check_cancel()?;
            }
            self.step(&mut s, c, &mut scratch);
            if s.iter().all(|&w| w == 0) {
                break;
            }
            if self.accepts(&s) {
                found = Some(i + 1);
                if !longest {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// For a reversed pattern: `starts[p]` says whether some match of the
    /// forward pattern starts at `p` of `text` (one right-to-left scan that
    /// starts a run at every position).
    fn match_starts(&self, text: &[char], guard: &Guard<'_>) -> Result<Vec<bool>> {
        let start = self.start();
        let mut starts = vec![false; text.len() + 1];
        let mut s = start.clone();
        let mut scratch = Vec::new();
        starts[text.len()] = self.accepts(&s);
        for p in (0..text.len()).rev() {
            if p % CHECK_EVERY == 0 {
                guard.check_cancel()?;
            }
            self.step(&mut s, text[p], &mut scratch);
            for (w, init) in s.iter_mut().zip(&start) {
                *w |= init;
            }
            starts[p] = self.accepts(&s);
        }
        Ok(starts)
    }
}

fn set(bits: &mut [u64], j: usize) {
    bits[j / 64] |= 1 << (j % 64);
}

fn get(bits: &[u64], j: usize) -> bool {
    bits[j / 64] & (1 << (j % 64)) != 0
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
    use super::{Guard, Pattern, Token};
    use crate::shell::{Cancel, ExpandError, MAX_WORD};

    fn guard() -> Guard<'static> {
        Guard {
            max_word: MAX_WORD,
            cancel: None,
        }
    }

    /// The obvious backtracking definition, to check the NFA against.
    fn naive_matches(tokens: &[Token], text: &[char]) -> bool {
        match tokens.split_first() {
            None => text.is_empty(),
            Some((Token::AnyRun, rest)) => {
                (0..=text.len()).any(|i| naive_matches(rest, &text[i..]))
            }
            Some((t, rest)) => {
                text.first().is_some_and(|&c| t.matches_one(c)) && naive_matches(rest, &text[1..])
            }
        }
    }

    fn naive_prefix(p: &Pattern, text: &[char], longest: bool) -> Option<usize> {
        let mut ends: Vec<usize> = (0..=text.len()).collect();
        if longest {
            ends.reverse();
        }
        ends.into_iter()
            .find(|&e| naive_matches(&p.tokens, &text[..e]))
    }

    fn naive_replace(p: &Pattern, value: &str, repl: &str, all: bool) -> String {
        if p.tokens.is_empty() {
            return value.to_owned();
        }
        let chars: Vec<char> = value.chars().collect();
        let (mut out, mut start, mut replaced) = (String::new(), 0, false);
        while start <= chars.len() {
            let found = (!replaced || all)
                .then(|| naive_prefix(p, &chars[start..], true))
                .flatten();
            match found {
                Some(len) if len > 0 => {
                    out.push_str(repl);
                    start += len;
                    replaced = true;
                }
                _ => {
                    out.extend(chars.get(start));
                    start += 1;
                }
            }
        }
        out
    }

    #[test]
    fn agrees_with_backtracking() {
        let patterns = [
            "",
            "*",
            "**",
            "a",
            "?",
            "a*",
            "*a",
            "*a*",
            "a*b",
            "*a?b*",
            "[ab]*c",
            "[!a]?",
            "\\*x",
            "x\\",
            "[a-c]*[!b]",
            "*/",
            "a**b?",
            "?*?",
            "[]a]*",
            "[^x-z]",
            "ab*ba*",
        ];
        let values = [
            "", "a", "b", "ab", "ba", "aab", "abab", "xabcx", "a/b/c", "*x", "bbbb", "cab",
            "abcabcab", "zzyx", "a]b", "abba", "été*à",
        ];
        for text in patterns {
            let p = Pattern::new(text);
            for v in values {
                let chars: Vec<char> = v.chars().collect();
                for longest in [false, true] {
                    let want = naive_prefix(&p, &chars, longest)
                        .map_or(v.to_owned(), |e| chars[e..].iter().collect());
                    assert_eq!(
                        p.trim_prefix(v, longest, &guard()).unwrap(),
                        want,
                        "{text} # {v}"
                    );
                    let mut rev = chars.clone();
                    rev.reverse();
                    let want = naive_prefix(&p.reversed(), &rev, longest)
                        .map_or(v.to_owned(), |e| chars[..chars.len() - e].iter().collect());
                    assert_eq!(
                        p.trim_suffix(v, longest, &guard()).unwrap(),
                        want,
                        "{text} % {v}"
                    );
                }
                for all in [false, true] {
                    assert_eq!(
                        p.replace(v, "<R>", all, &guard()).unwrap(),
                        naive_replace(&p, v, "<R>", all),
                        "{text} / {v} (all: {all})"
                    );
                }
            }
        }
    }

    #[test]
    fn long_values_are_linear() {
        // Cubic before: ${a//*z/y} over a long value without a z.
        let long = "a".repeat(MAX_WORD);
        let p = Pattern::new("*z");
        assert_eq!(p.replace(&long, "y", true, &guard()).unwrap(), long);
        assert_eq!(p.trim_suffix(&long, true, &guard()).unwrap(), long);
        let p = Pattern::new(&"*a".repeat(300));
        assert_eq!(
            p.trim_suffix(&format!("{long}b"), false, &guard())
                .unwrap()
                .len(),
            long.len() + 1
        );
        assert_eq!(
            Pattern::new("a")
                .replace(&long, "", true, &guard())
                .unwrap(),
            ""
        );
    }

    #[test]
    fn output_and_cancel_are_bounded() {
        let g = Guard {
            max_word: 100,
            cancel: None,
        };
        let err = Pattern::new("?").replace(&"a".repeat(20), "0123456789", true, &g);
        assert_eq!(err, Err(ExpandError::TooLong { limit: 100 }));
        let cancelled = || true;
        let g = Guard {
            max_word: MAX_WORD,
            cancel: Some(Cancel(&cancelled)),
        };
        let long = "a".repeat(1 << 16);
        assert_eq!(
            Pattern::new("*z").replace(&long, "y", true, &g),
            Err(ExpandError::Cancelled)
        );
    }
}
