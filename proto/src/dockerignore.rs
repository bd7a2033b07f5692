//! `.dockerignore` with Docker's rules (moby/patternmatcher), which are not
//! gitignore's: patterns are anchored at the context root (`*.log` matches
//! only at the top), `*` and `?` stay within one path segment, `**` spans
//! any number of segments, a path is excluded when it or one of its parent
//! directories matches, and the last matching line wins (`!` re-includes).

use regex::Regex;
use thiserror::Error;

use crate::depth::MAX_TREE_DEPTH;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DockerignoreError {
    #[error(".dockerignore line {0}: illegal exclusion pattern: \"!\"")]
    LoneExclamation(usize),
    #[error(".dockerignore pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
}

/// Reads a `.dockerignore` file: comments (`#` in the first column) and
/// blank lines dropped, each pattern trimmed and cleaned, one leading `/`
/// removed. Exceptions keep their `!`.
pub fn read_patterns(text: &str) -> Result<Vec<String>, DockerignoreError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut patterns = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let exception = pattern.starts_with('!');
        if exception {
            pattern = pattern[1..].trim();
            if pattern.is_empty() {
                return Err(DockerignoreError::LoneExclamation(i + 1));
            }
        }
        let mut cleaned = crate::path::clean(pattern);
        if cleaned.len() > 1 && cleaned.starts_with('/') {
            cleaned.remove(0);
        }
        patterns.push(if exception {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    Ok(patterns)
}

#[derive(Debug, Clone)]
struct Pattern {
    regex: Regex,
    exception: bool,
    /// An exception's components, each a regex of its own (`None` for
    /// `**`), to tell whether it can match below a directory.
    parts: Vec<Option<Regex>>,
}

/// Compiled patterns; answers "is this context path excluded?".
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Compiles patterns as [`read_patterns`] returns them.
    pub fn new(patterns: &[String]) -> Result<Self, DockerignoreError> {
        let patterns = patterns
            .iter()
            .map(|p| {
                let (exception, body) = match p.strip_prefix('!') {
                    Some(body) => (true, body.trim()),
                    None => (false, p.trim()),
                };
                let bad = |reason: String| DockerignoreError::BadPattern {
                    pattern: p.clone(),
                    reason,
                };
                let body = crate::path::clean(body);
                check_syntax(&body).map_err(|r| bad(r.to_owned()))?;
                let regex = Regex::new(&to_regex(&body)).map_err(|e| bad(e.to_string()))?;
                let parts = if exception {
                    body.split('/')
                        .map(|part| match part {
                            "**" => Ok(None),
                            _ => Regex::new(&to_regex(part))
                                .map(Some)
                                .map_err(|e| bad(e.to_string())),
                        })
                        .collect::<Result<_, _>>()?
                } else {
                    Vec::new()
                };
                Ok(Pattern {
                    regex,
                    exception,
                    parts,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// No pattern at all: nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether some (non-exception) pattern matches `path` itself — a
    /// `filepath.Match` test, as COPY's wildcards are; parents do not count.
    pub fn matches(&self, path: &str) -> bool {
        let path = path.trim_start_matches('/');
        self.patterns
            .iter()
            .any(|p| !p.exception && p.regex.is_match(path))
    }

    /// Whether `path` (relative to the context root, `/`-separated) is
    /// excluded: the last pattern that matches it or a parent directory
    /// decides.
    pub fn excludes(&self, path: &str) -> bool {
        let path = path.trim_start_matches('/');
        let parents: Vec<usize> = path.match_indices('/').map(|(i, _)| i).collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that could flip the answer needs to run.
            if pattern.exception != excluded {
                continue;
            }
            let hit = pattern.regex.is_match(path)
                || parents
                    .iter()
                    .any(|&end| pattern.regex.is_match(&path[..end]));
            if hit {
                excluded = !pattern.exception;
            }
        }
        excluded
    }
}

impl Matcher {
    /// Whether some exception (`!pattern`) could match a path below the
    /// directory `dir`: its leading components match `dir`'s and it has
    /// more, or a `**` comes first.
    pub fn exception_below(&self, dir: &str) -> bool {
        let dir: Vec<&str> = dir.trim_matches('/').split('/').collect();
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            for (i, part) in p.parts.iter().enumerate() {
                let Some(regex) = part else { return true };
                match dir.get(i) {
                    None => return true,
                    Some(name) if !regex.is_match(name) => return false,
                    Some(_) => {}
                }
            }
            false
        })
    }

    /// Whether the context keeps `rel`: it is not excluded, or it is a
    /// directory (`is_dir`) that holds something kept — an exception below
    /// an excluded directory brings the directory back (as docker and
    /// BuildKit walk excluded directories when exceptions could match in
    /// them). `list` gives a directory's entries as (name, is_dir); it is
    /// called only for excluded directories an exception could reach, and
    /// never below [`MAX_TREE_DEPTH`] levels (the walk that reads such a
    /// tree refuses it).
    pub fn keeps(
        &self,
        rel: &str,
        is_dir: bool,
        list: &mut dyn FnMut(&str) -> Vec<(String, bool)>,
    ) -> bool {
        if !self.excludes(rel) {
            return true;
        }
        let level = rel.split('/').filter(|p| !p.is_empty()).count();
        if !is_dir || !self.exception_below(rel) || level > MAX_TREE_DEPTH {
            return false;
        }
        list(rel).into_iter().any(|(name, dir)| {
            let child = format!("{}/{name}", rel.trim_end_matches('/'));
            self.keeps(&child, dir, list)
        })
    }
}

/// The syntax `filepath.Match` accepts: a `[…]` class is non-empty and
/// closed, `-` and `]` inside it are escaped unless they form a range, and
/// `\\` is followed by a character.
fn check_syntax(pattern: &str) -> Result<(), &'static str> {
    let mut chars = pattern.chars().peekable();
    // One class character, escaped or not.
    let class_char = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| match chars.next() {
        None | Some('-' | ']') => Err("malformed character class"),
        Some('\\') => chars
            .next()
            .map(|_| ())
            .ok_or("trailing backslash in character class"),
        Some(_) => Ok(()),
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next().ok_or("trailing backslash")?;
            }
            '[' => {
                chars.next_if_eq(&'^');
                let mut ranges = 0;
                loop {
                    if ranges > 0 && chars.next_if_eq(&']').is_some() {
                        break;
                    }
                    class_char(&mut chars)?;
                    if chars.next_if_eq(&'-').is_some() {
                        class_char(&mut chars)?;
                    }
                    ranges += 1;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// patternmatcher's translation of a `filepath.Match` pattern with `**`.
fn to_regex(pattern: &str) -> String {
    let mut re = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    re.push_str(".*");
                } else {
                    re.push_str("(.*/)?");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '\\' if i < chars.len() => {
                re.push_str(&regex::escape(&chars[i].to_string()));
                i += 1;
            }
            '[' => {
                // A class passes through; `!` negation is spelled `^` in
                // regex syntax.
                re.push('[');
                if chars.get(i) == Some(&'!') || chars.get(i) == Some(&'^') {
                    re.push('^');
                    i += 1;
                }
                while i < chars.len() && chars[i] != ']' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        re.push_str(&regex::escape(&chars[i + 1].to_string()));
                        i += 2;
                    } else {
                        if chars[i] == '[' {
                            re.push('\\');
                        }
                        re.push(chars[i]);
                        i += 1;
                    }
                }
                if i < chars.len() {
                    i += 1;
                }
                re.push(']');
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    re
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(lines: &str) -> Matcher {
        Matcher::new(&read_patterns(lines).unwrap()).unwrap()
    }

    #[test]
    fn reading() {
        assert_eq!(
            read_patterns("# comment\n\n  /foo/./bar/..  \n!  keep\n*.log\n").unwrap(),
            ["foo", "!keep", "*.log"]
        );
        assert_eq!(
            read_patterns("!\n"),
            Err(DockerignoreError::LoneExclamation(1))
        );
    }

    #[test]
    fn anchored_at_root_not_like_gitignore() {
        let m = matcher("*.log\n");
        assert!(m.excludes("a.log"));
        assert!(!m.excludes("dir/a.log"));
        let m = matcher("**/*.log\n");
        assert!(m.excludes("a.log"));
        assert!(m.excludes("dir/sub/a.log"));
    }

    #[test]
    fn parents_and_exceptions() {
        let m = matcher("docs\n!docs/keep.md\n");
        assert!(m.excludes("docs"));
        assert!(m.excludes("docs/a.md"));
        assert!(!m.excludes("docs/keep.md"));
        let m = matcher("*\n!src\n");
        assert!(m.excludes("README"));
        assert!(!m.excludes("src"));
        assert!(!m.excludes("src/main.rs"));
        let m = matcher("!src\n*\n");
        assert!(m.excludes("src/main.rs"), "later lines win");
    }

    #[test]
    fn exceptions_reach_into_excluded_directories() {
        let docs = matcher("docs\n!docs/README\n");
        assert!(docs.exception_below("docs"));
        assert!(!docs.exception_below("docs/README"));
        assert!(!docs.exception_below("other"));
        let m = matcher("docs\n!docs/README\ncache\n!**/keep\n");
        assert!(m.exception_below("other"), "** reaches everywhere");
        assert!(matcher("a\n!a/*/c\n").exception_below("a/b"));
        assert!(!matcher("a\n!a/x/c\n").exception_below("a/b"));
        assert!(!matcher("docs\n").exception_below("docs"));
        let tree = |rel: &str| -> Vec<(String, bool)> {
            match rel {
                "docs" => vec![("README".into(), false), ("guide".into(), true)],
                "docs/guide" => vec![("a.md".into(), false)],
                "cache" => vec![("x".into(), true)],
                "cache/x" => vec![("keep".into(), false), ("drop".into(), false)],
                _ => Vec::new(),
            }
        };
        let mut list = tree;
        assert!(m.keeps("docs", true, &mut list));
        assert!(m.keeps("docs/README", false, &mut list));
        assert!(!m.keeps("docs/guide", true, &mut list));
        assert!(m.keeps("cache", true, &mut list));
        assert!(m.keeps("cache/x/keep", false, &mut list));
        assert!(!m.keeps("cache/x/drop", false, &mut list));
        let m = matcher("docs\n");
        assert!(!m.keeps("docs", true, &mut |_| panic!("no exception: not walked")));
    }

    #[test]
    fn excluded_directories_are_walked_no_deeper_than_the_bound() {
        // `d/d/…` all the way down, from a level just above the bound.
        let m = matcher("d\n!**/keep\n");
        let start = vec!["d"; MAX_TREE_DEPTH - 1].join("/");
        let walk = |keep_at: usize| {
            let mut listed = Vec::new();
            let kept = m.keeps(&start, true, &mut |rel: &str| {
                let level = rel.split('/').count();
                listed.push(level);
                let mut entries = vec![("d".to_owned(), true)];
                if level == keep_at {
                    entries.push(("keep".to_owned(), false));
                }
                entries
            });
            (kept, listed)
        };
        let bound = MAX_TREE_DEPTH;
        assert_eq!(
            walk(bound),
            (true, vec![bound - 1, bound]),
            "a file at the bound"
        );
        assert_eq!(
            walk(bound + 1),
            (false, vec![bound - 1, bound]),
            "nothing deeper"
        );
    }

    /// moby/patternmatcher's `TestMatches` table (Unix cases), through
    /// `MatchesOrParentMatches`: `true` where upstream expects any match.
    #[test]
    fn patternmatcher_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("**", "file", true),
            ("**", "file/", true),
            ("**/", "file", true),
            ("**/", "file/", true),
            ("**", "/", true),
            ("**/", "/", true),
            ("**", "dir/file", true),
            ("**/", "dir/file", true),
            ("**", "dir/file/", true),
            ("**/", "dir/file/", true),
            ("**/**", "dir/file", true),
            ("**/**", "dir/file/", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/file/", true),
            ("dir/**", "dir/dir2/file", true),
            ("dir/**", "dir/dir2/file/", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/*", "dir/dir2/file/", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file/", true),
            ("**file", "file", true),
            ("**file", "dir/file", true),
            ("**/file", "dir/file", true),
            ("**file", "dir/dir/file", true),
            ("**/file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/file*txt", "dir/dir/file.txt", true),
            ("**/file*.txt", "dir/dir/file.txt", true),
            ("**/file*.txt*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("**/**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcdef", false),
            ("abc.def", "abc.def", true),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abcdef", false),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def", true),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a(b)c/def", "a(b)c/xyz", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            ("a\\\\", "a\\", true),
            ("a\\*b", "a*b", true),
        ];
        for &(pattern, path, expected) in cases {
            let m = Matcher::new(&[pattern.to_owned()]).unwrap();
            assert_eq!(
                m.excludes(path),
                expected,
                "pattern {pattern:?} path {path:?}"
            );
        }
        let multi: &[(&[&str], &str, bool)] = &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
        ];
        for &(patterns, path, expected) in multi {
            let m =
                Matcher::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap();
            assert_eq!(
                m.excludes(path),
                expected,
                "patterns {patterns:?} path {path:?}"
            );
        }
    }

    /// Go's `filepath.Match` syntax errors, as patternmatcher reports them.
    #[test]
    fn bad_patterns() {
        for bad in [
            "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[",
        ] {
            assert!(Matcher::new(&[bad.to_owned()]).is_err(), "{bad:?} accepted");
        }
        for good in ["[\\]a]", "[\\-]", "[x\\-]", "[\\-x]", "[a-ζ]*"] {
            assert!(
                Matcher::new(&[good.to_owned()]).is_ok(),
                "{good:?} rejected"
            );
        }
        let m = Matcher::new(&["[x\\-]".to_owned()]).unwrap();
        assert!(m.excludes("-") && m.excludes("x") && !m.excludes("z"));
    }

    #[test]
    fn glob_forms() {
        let m = matcher("a?c\n[xy]z\nn[!0-9]\n**file\nlit\\*\n");
        assert!(m.excludes("abc"));
        assert!(!m.excludes("a/c"));
        assert!(m.excludes("xz"));
        assert!(m.excludes("na"));
        assert!(!m.excludes("n1"));
        assert!(m.excludes("dir/dir/file"));
        assert!(m.excludes("lit*"));
        assert!(!m.excludes("litx"));
        let m = matcher("a/**/b\n");
        assert!(m.excludes("a/b"));
        assert!(m.excludes("a/x/y/b"));
        assert!(!m.excludes("a/x/c"));
    }
}
