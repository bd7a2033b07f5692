//! Variable expansion with BuildKit's rules (`frontend/dockerfile/shell/lex.go`).
//!
//! A Dockerfile word such as `"${HOME:-/root}"/bin` is expanded the way a
//! POSIX shell would for a single word — quotes removed, escapes processed,
//! `$NAME` and `${NAME…}` substituted — but with only the substitution forms
//! BuildKit supports. [`Lexer::expand_word`] gives one word (no splitting);
//! [`Lexer::expand_words`] also splits on unquoted white space, where an
//! instruction takes several words.

mod pattern;

use std::collections::{BTreeMap, HashMap};

use thiserror::Error;

/// Why a word could not be expanded. Messages follow BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExpandError {
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(char),
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(char),
    #[error("substitutions nested more than {MAX_NESTING} deep")]
    TooDeep,
    /// `${NAME?message}` / `${NAME:?message}` on an unset (or empty) variable.
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("the expanded word is longer than {limit} bytes (the limit of one word)")]
    TooLong { limit: usize },
    #[error("a pattern in a substitution is longer than {limit} characters (the limit)")]
    PatternTooLong { limit: usize },
    #[error("cancelled")]
    Cancelled,
}

type Result<T> = std::result::Result<T, ExpandError>;

/// How deep `${a:-${b:-…}}` may nest (bounds the recursion).
pub const MAX_NESTING: usize = 64;

/// The longest word an expansion may make, in bytes. BuildKit has no bound,
/// so `ENV a=$a$a` repeated doubles until memory runs out. 1 MiB is eight
/// times what Linux lets one environment string or argument be
/// (`MAX_ARG_STRLEN`, 128 KiB), so no word that a step can use is refused.
pub const MAX_WORD: usize = 1 << 20;

/// The longest pattern of `${x#p}`, `${x/p/r}`…, in characters: matching
/// costs length of value × length of pattern / 64.
pub const MAX_PATTERN: usize = 4096;

/// Where variable values come from.
pub trait Vars {
    /// The value of `name`, or `None` when it is not set (set-but-empty is
    /// `Some("")`: `${x-d}` and `${x:-d}` tell the two apart).
    fn var(&self, name: &str) -> Option<&str>;
}

impl Vars for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Vars for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// A `KEY=value` list as in an image config's `Env`; a later entry wins.
impl Vars for [String] {
    fn var(&self, name: &str) -> Option<&str> {
        self.iter().rev().find_map(|kv| env_value(kv, name))
    }
}

/// The value in `kv` (`KEY=value`) when its key is `name`.
pub(crate) fn env_value<'a>(kv: &'a str, name: &str) -> Option<&'a str> {
    let rest = kv.strip_prefix(name)?;
    match rest.strip_prefix('=') {
        Some(value) => Some(value),
        None if rest.is_empty() => Some(""),
        None => None,
    }
}

/// The key of `kv` (`KEY=value`).
pub(crate) fn env_key(kv: &str) -> &str {
    kv.split_once('=').map_or(kv, |(k, _)| k)
}

/// No variables at all.
pub struct NoVars;

impl Vars for NoVars {
    fn var(&self, _: &str) -> Option<&str> {
        None
    }
}

/// Asks whether the work an expansion belongs to was cancelled.
#[derive(Clone, Copy)]
pub struct Cancel<'c>(pub &'c (dyn Fn() -> bool + Sync));

impl std::fmt::Debug for Cancel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cancel")
    }
}

/// Expands words. The defaults are what instructions use; the `raw_*` and
/// `keep_unset` switches exist for heredoc detection, which must see a line's
/// words with their quotes and escapes intact.
#[derive(Debug, Clone, Copy)]
pub struct Lexer<'c> {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    keep_unset: bool,
    literal_quotes: bool,
    max_word: usize,
    cancel: Option<Cancel<'c>>,
}

impl<'c> Lexer<'c> {
    /// A lexer with the given escape character (`\` or `` ` ``).
    pub fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            keep_unset: false,
            literal_quotes: false,
            max_word: MAX_WORD,
            cancel: None,
        }
    }

    /// Expansion stops with [`ExpandError::Cancelled`] soon after `cancel`
    /// says so (it is asked at every `$` and during long pattern matches).
    pub fn with_cancel(mut self, cancel: Cancel<'c>) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Another bound than [`MAX_WORD`] on one expanded word (bytes).
    pub fn with_max_word(mut self, max: usize) -> Self {
        self.max_word = max;
        self
    }

    fn guard(&self) -> Guard<'c> {
        Guard {
            max_word: self.max_word,
            cancel: self.cancel,
        }
    }

    /// Keep quote characters in the result.
    pub fn with_raw_quotes(mut self, raw: bool) -> Self {
        self.raw_quotes = raw;
        self
    }

    /// Keep escape characters in the result.
    pub fn with_raw_escapes(mut self, raw: bool) -> Self {
        self.raw_escapes = raw;
        self
    }

    /// Leave references to unset variables as written (`$X`, `${X:-d}`).
    pub fn with_keep_unset(mut self, keep: bool) -> Self {
        self.keep_unset = keep;
        self
    }

    /// Treat quotes as ordinary characters (heredoc bodies are text, not
    /// shell words).
    pub fn with_literal_quotes(mut self, literal: bool) -> Self {
        self.literal_quotes = literal;
        self
    }

    /// Expands `word` as one word: white space is kept.
    pub fn expand_word(&self, word: &str, vars: &dyn Vars) -> Result<String> {
        if self.is_plain(word) {
            return Ok(word.to_owned());
        }
        self.run(word, vars).map(|(word, _)| word)
    }

    /// Expands `word` and splits the result into words on unquoted,
    /// unescaped white space; the value of an unquoted `$x` is split too.
    /// Empty words are never produced.
    pub fn expand_words(&self, word: &str, vars: &dyn Vars) -> Result<Vec<String>> {
        if self.is_plain(word) {
            return Ok(word.split_whitespace().map(str::to_owned).collect());
        }
        self.run(word, vars).map(|(_, words)| words)
    }

    /// Nothing in `word` to expand, unquote or unescape (most paths).
    fn is_plain(&self, word: &str) -> bool {
        !word.contains(['$', '\'', '"', self.escape])
    }

    fn run(&self, word: &str, vars: &dyn Vars) -> Result<(String, Vec<String>)> {
        let mut scan = Expansion {
            lexer: self,
            guard: self.guard(),
            vars,
            chars: word.chars().collect(),
            pos: 0,
            depth: 0,
        };
        scan.process_until(&[], self.raw_escapes)
    }
}

/// The bounds of one expansion: its output's size, and cancellation.
pub(super) struct Guard<'c> {
    max_word: usize,
    cancel: Option<Cancel<'c>>,
}

impl Guard<'_> {
    pub(super) fn check_len(&self, len: usize) -> Result<()> {
        if len > self.max_word {
            return Err(ExpandError::TooLong {
                limit: self.max_word,
            });
        }
        Ok(())
    }

    pub(super) fn check_cancel(&self) -> Result<()> {
        match self.cancel {
            Some(Cancel(cancelled)) if cancelled() => Err(ExpandError::Cancelled),
            _ => Ok(()),
        }
    }
}

/// One expansion in progress: the input and a cursor over it.
struct Expansion<'a> {
    lexer: &'a Lexer<'a>,
    guard: Guard<'a>,
    vars: &'a dyn Vars,
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

impl Expansion<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Processes up to (and consuming) the first unquoted character in
    /// `stops`, or to the end when `stops` is empty. Returns the expanded
    /// text and its split into words.
    fn process_until(
        &mut self,
        stops: &[char],
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if stops.contains(&ch) {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            match ch {
                '\'' | '"' if self.lexer.literal_quotes => {
                    self.pos += 1;
                    words.push(ch);
                    result.push(ch);
                }
                '\'' => {
                    let text = self.single_quoted()?;
                    words.push_raw_str(&text);
                    result.push_str(&text);
                }
                '"' => {
                    let text = self.double_quoted()?;
                    words.push_raw_str(&text);
                    result.push_str(&text);
                    self.guard.check_len(result.len())?;
                }
                '$' => {
                    let text = self.dollar()?;
                    words.push_str(&text);
                    result.push_str(&text);
                    self.guard.check_len(result.len())?;
                }
                _ => {
                    self.pos += 1;
                    if ch == self.lexer.escape {
                        if raw_escapes {
                            words.push_raw(ch);
                            result.push(ch);
                        }
                        // The escape character makes the next one literal;
                        // at the very end it is simply dropped.
                        let Some(escaped) = self.next() else { break };
                        words.push_raw(escaped);
                        result.push(escaped);
                    } else {
                        words.push(ch);
                        result.push(ch);
                    }
                }
            }
        }
        match stops.first() {
            Some(&stop) => Err(ExpandError::Unterminated(stop)),
            None => Ok((result, words.finish())),
        }
    }

    /// `'…'`: everything literal up to the next `'`.
    fn single_quoted(&mut self) -> Result<String> {
        let mut out = String::new();
        self.pos += 1;
        if self.lexer.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.next() {
                None => return Err(ExpandError::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// `"…"`: `$` expands; the escape character escapes only `"`, `$` and
    /// itself, and is kept before anything else.
    fn double_quoted(&mut self) -> Result<String> {
        let mut out = String::new();
        self.pos += 1;
        if self.lexer.raw_quotes {
            out.push('"');
        }
        loop {
            match self.peek() {
                None => return Err(ExpandError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.pos += 1;
                    if self.lexer.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    out.push_str(&self.dollar()?);
                    self.guard.check_len(out.len())?;
                }
                Some(c) => {
                    self.pos += 1;
                    if c == self.lexer.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lexer.escape => {
                                if self.lexer.raw_escapes {
                                    out.push(c);
                                }
                                self.pos += 1;
                                out.push(n);
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    /// A name after `$`: letters, digits and `_` not starting with a digit;
    /// or all the digits of a positional parameter; or one special
    /// parameter character. Empty when none of these follows.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!') {
                self.pos += 1;
                return c.to_string();
            }
            if !(c.is_alphanumeric() || c == '_') {
                break;
            }
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.vars.var(name).map(str::to_owned)
    }

    /// `$NAME` or `${…}`, with the `$` under the cursor.
    fn dollar(&mut self) -> Result<String> {
        if self.depth >= MAX_NESTING {
            return Err(ExpandError::TooDeep);
        }
        self.guard.check_cancel()?;
        self.depth += 1;
        let result = self.dollar_inner();
        self.depth -= 1;
        let text = result?;
        self.guard.check_len(text.len())?;
        Ok(text)
    }

    /// The expansion after a `$` (under the cursor): `$NAME`, a lone `$`,
    /// or `${…}`.
    fn dollar_inner(&mut self) -> Result<String> {
        self.pos += 1;
        if self.peek() == Some('{') {
            self.pos += 1;
            self.braced()
        } else {
            Ok(self.unbraced())
        }
    }

    /// `$NAME`: its value, or empty when unset (kept as written under
    /// `keep_unset`). A `$` followed by no name stays a `$`.
    fn unbraced(&mut self) -> String {
        let name = self.name();
        if name.is_empty() {
            return "$".to_owned();
        }
        match self.lookup(&name) {
            Some(v) => v,
            None if self.lexer.keep_unset => format!("${name}"),
            None => String::new(),
        }
    }

    /// `${…}`, with the cursor after the `{`: the name, then the closing
    /// brace or the operator that says what to do with the value.
    fn braced(&mut self) -> Result<String> {
        match self.peek() {
            None => return Err(ExpandError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ExpandError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.name();
        let Some(op) = self.next() else {
            return Err(ExpandError::MissingBrace);
        };
        let value = self.lookup(&name);
        let keep = value.is_none() && self.lexer.keep_unset;
        let param = Param { name, value, keep };
        match op {
            '}' if param.keep => Ok(param.written("")),
            '}' => Ok(param.value.unwrap_or_default()),
            ':' => self.if_empty(param),
            '-' | '+' | '?' => self.if_unset(param, op),
            '#' | '%' => self.remove_affix(param, op),
            '/' => self.replace(param),
            other => Err(ExpandError::UnsupportedModifier(other)),
        }
    }

    /// `${name:-word}`, `${name:+word}`, `${name:?message}`: the word in
    /// place of (or, for `+`, instead of) a value that is unset or empty.
    fn if_empty(&mut self, param: Param) -> Result<String> {
        let modifier = self.next().ok_or(ExpandError::MissingBrace)?;
        let word = self.brace_word()?;
        if param.keep {
            return Ok(param.written(&format!(":{modifier}{word}")));
        }
        let value = param.value.unwrap_or_default();
        match modifier {
            '-' => Ok(if value.is_empty() { word } else { value }),
            '+' => Ok(if value.is_empty() { value } else { word }),
            '?' if value.is_empty() => Err(ExpandError::Required {
                name: param.name,
                message: non_empty_or(word, "is not allowed to be empty"),
            }),
            '?' => Ok(value),
            other => Err(ExpandError::UnsupportedModifier(other)),
        }
    }

    /// `${name-word}`, `${name+word}`, `${name?message}`: as
    /// [`Self::if_empty`], but only an unset value counts, not an empty one.
    fn if_unset(&mut self, param: Param, op: char) -> Result<String> {
        let word = self.brace_word()?;
        if param.keep {
            return Ok(param.written(&format!("{op}{word}")));
        }
        match param.value {
            Some(v) => Ok(if op == '+' { word } else { v }),
            None => match op {
                '-' => Ok(word),
                '+' => Ok(String::new()),
                _ => Err(ExpandError::Required {
                    name: param.name,
                    message: non_empty_or(word, "is not allowed to be unset"),
                }),
            },
        }
    }

    /// `${name#pattern}` and `${name%pattern}`: the value without the
    /// shortest prefix (`#`) or suffix (`%`) matching the pattern; doubled
    /// (`##`, `%%`), without the longest.
    fn remove_affix(&mut self, param: Param, op: char) -> Result<String> {
        let longest = self.peek() == Some(op);
        if longest {
            self.pos += 1;
        }
        let pattern = self.brace_word()?;
        if param.keep {
            let op = if longest {
                format!("{op}{op}")
            } else {
                op.to_string()
            };
            return Ok(param.written(&format!("{op}{pattern}")));
        }
        let value = param.value.unwrap_or_default();
        let pattern = compile(&pattern)?;
        if op == '#' {
            pattern.trim_prefix(&value, longest, &self.guard)
        } else {
            pattern.trim_suffix(&value, longest, &self.guard)
        }
    }

    /// `${name/pattern/replacement}`: the value with the first match of the
    /// pattern replaced; `${name//pattern/replacement}`, every match.
    fn replace(&mut self, param: Param) -> Result<String> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        // `${x/pattern}` without a replacement deletes the match.
        let (pattern, ended) = self.process_until_either('/', '}')?;
        let replacement = if ended {
            String::new()
        } else {
            self.brace_word()?
        };
        if param.keep {
            let op = if all { "//" } else { "/" };
            return Ok(param.written(&format!("{op}{pattern}/{replacement}")));
        }
        let value = param.value.unwrap_or_default();
        compile(&pattern)?.replace(&value, &replacement, all, &self.guard)
    }

    /// The word of `${name<op>word}`, expanded, up to the closing brace.
    fn brace_word(&mut self) -> Result<String> {
        match self.process_until(&['}'], self.lexer.raw_escapes) {
            Ok((word, _)) => Ok(word),
            Err(_) if self.peek().is_none() => Err(ExpandError::MissingBrace),
            Err(e) => Err(e),
        }
    }

    /// Like [`Self::brace_word`] but also stops at `first`; says whether the
    /// closing brace was the one reached.
    fn process_until_either(&mut self, first: char, close: char) -> Result<(String, bool)> {
        let (word, _) = match self.process_until(&[first, close], self.lexer.raw_escapes) {
            Ok(r) => r,
            Err(_) => return Err(ExpandError::MissingBrace),
        };
        Ok((word, self.chars.get(self.pos - 1) == Some(&close)))
    }
}

/// The variable of a `${name…}` expression.
struct Param {
    name: String,
    /// Its value; `None` when unset.
    value: Option<String>,
    /// Unset, and the lexer keeps such expressions as written
    /// ([`Lexer::with_keep_unset`]): the expression is rebuilt, not expanded.
    keep: bool,
}

impl Param {
    /// `${name<rest>}`: the expression as written, for [`Self::keep`].
    fn written(&self, rest: &str) -> String {
        format!("${{{}{rest}}}", self.name)
    }
}

/// A substitution's pattern, within [`MAX_PATTERN`].
fn compile(pattern: &str) -> Result<pattern::Pattern> {
    if pattern.chars().nth(MAX_PATTERN).is_some() {
        return Err(ExpandError::PatternTooLong { limit: MAX_PATTERN });
    }
    Ok(pattern::Pattern::new(pattern))
}

fn non_empty_or(word: String, default: &str) -> String {
    if word.is_empty() {
        default.to_owned()
    } else {
        word
    }
}

/// Word splitting: text from quotes, escapes and literal characters is glued
/// to the current word; expanded `$` values are split on white space.
#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn push(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.push_raw(c);
        }
    }

    fn push_raw(&mut self, c: char) {
        self.word.push(c);
        self.in_word = true;
    }

    fn push_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.push(c));
    }

    fn push_raw_str(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [
            ("x", "hello world"),
            ("e", ""),
            ("p", "/usr/local/bin/tool.tar.gz"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn word(s: &str) -> Result<String> {
        Lexer::new('\\').expand_word(s, &env())
    }

    #[test]
    fn pattern_removal() {
        assert_eq!(word("${p#*/}").unwrap(), "usr/local/bin/tool.tar.gz");
        assert_eq!(word("${p##*/}").unwrap(), "tool.tar.gz");
        assert_eq!(word("${p%.*}").unwrap(), "/usr/local/bin/tool.tar");
        assert_eq!(word("${p%%.*}").unwrap(), "/usr/local/bin/tool");
        assert_eq!(word("${p#nomatch}").unwrap(), "/usr/local/bin/tool.tar.gz");
        assert_eq!(word("${unset#x}").unwrap(), "");
    }

    #[test]
    fn replacement() {
        assert_eq!(word("${x/o/0}").unwrap(), "hell0 world");
        assert_eq!(word("${x//o/0}").unwrap(), "hell0 w0rld");
        assert_eq!(word("${x/l*o/_}").unwrap(), "he_rld");
        assert_eq!(word("${x/ world}").unwrap(), "hello");
        assert_eq!(word("${x/[hw]/H}").unwrap(), "Hello world");
    }

    #[test]
    fn set_and_empty_are_different() {
        assert_eq!(word("${e-d}").unwrap(), "");
        assert_eq!(word("${e:-d}").unwrap(), "d");
        assert_eq!(word("${e+a}").unwrap(), "a");
        assert_eq!(word("${e:+a}").unwrap(), "");
        assert_eq!(word("${e?}").unwrap(), "");
        assert_eq!(
            word("${e:?must be set}").unwrap_err().to_string(),
            "e: must be set"
        );
        assert_eq!(
            word("${nope?}").unwrap_err().to_string(),
            "nope: is not allowed to be unset"
        );
    }

    #[test]
    fn words_split_unquoted_values_only() {
        let l = Lexer::new('\\');
        assert_eq!(
            l.expand_words("a $x", &env()).unwrap(),
            ["a", "hello", "world"]
        );
        assert_eq!(
            l.expand_words("a \"$x\"", &env()).unwrap(),
            ["a", "hello world"]
        );
        assert_eq!(
            l.expand_words("'' \"\"", &env()).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn keep_unset_and_raw_modes() {
        let l = Lexer::new('\\')
            .with_raw_quotes(true)
            .with_raw_escapes(true)
            .with_keep_unset(true);
        assert_eq!(
            l.expand_words("cat <<\"EOF\" > $out ${y:-z}", &NoVars)
                .unwrap(),
            ["cat", "<<\"EOF\"", ">", "$out", "${y:-z}"]
        );
        assert_eq!(l.expand_word("a\\ b", &NoVars).unwrap(), "a\\ b");
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}x{}", "${a:-".repeat(200), "}".repeat(200));
        assert_eq!(word(&deep), Err(ExpandError::TooDeep));
        let ok = format!("{}x{}", "${a:-".repeat(10), "}".repeat(10));
        assert_eq!(word(&ok).unwrap(), "x");
    }

    #[test]
    fn backtick_escape() {
        let l = Lexer::new('`');
        assert_eq!(l.expand_word("a`$b\\c", &NoVars).unwrap(), "a$b\\c");
    }
}
