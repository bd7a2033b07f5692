//! Which variables an expansion used: BuildKit's `ProcessWordWithMatches`,
//! and its suggestions for a misspelt name (`util/suggest`).

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::shell::{Lexer, Vars};

/// Variables in order of definition; a later one of the same name
/// replaces the value in place.
#[derive(Debug, Clone, Default)]
pub(super) struct Env(Vec<(String, String)>);

impl Env {
    pub(super) fn set(&mut self, name: &str, value: &str) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.0.push((name.to_owned(), value.to_owned())),
        }
    }

    /// From an image config's `KEY=value` list.
    pub(super) fn from_list(list: &[String]) -> Self {
        let mut env = Self::default();
        for kv in list {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            env.set(k, v);
        }
        env
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Vars for Env {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// What one expansion looked up: the names found and those not set.
#[derive(Debug, Default)]
pub(super) struct Matches {
    pub(super) result: Option<String>,
    pub(super) matched: BTreeSet<String>,
    pub(super) unmatched: BTreeSet<String>,
}

struct Recorder<'a> {
    inner: &'a dyn Vars,
    matched: RefCell<BTreeSet<String>>,
    unmatched: RefCell<BTreeSet<String>>,
}

impl Vars for Recorder<'_> {
    fn var(&self, name: &str) -> Option<&str> {
        let value = self.inner.var(name);
        let set = if value.is_some() {
            &self.matched
        } else {
            &self.unmatched
        };
        set.borrow_mut().insert(name.to_owned());
        value
    }
}

/// Expands `word` with `vars`, recording the names it used. A word that
/// does not expand has no result (conversion reports it).
pub(super) fn expand(lexer: &Lexer<'_>, word: &str, vars: &dyn Vars) -> Matches {
    let recorder = Recorder {
        inner: vars,
        matched: RefCell::default(),
        unmatched: RefCell::default(),
    };
    let result = lexer.expand_word(word, &recorder).ok();
    Matches {
        result,
        matched: recorder.matched.into_inner(),
        unmatched: recorder.unmatched.into_inner(),
    }
}

/// The option closest to `name` (edit distance below 3), as BuildKit's
/// `suggest.Search`; none when one is `name` itself.
pub(super) fn suggest<'o>(
    name: &str,
    options: impl IntoIterator<Item = &'o str>,
    case_sensitive: bool,
) -> Option<String> {
    let fold = |s: &str| {
        if case_sensitive {
            s.to_owned()
        } else {
            s.to_lowercase()
        }
    };
    let wanted = fold(name);
    let mut best = None;
    let mut min = 3;
    for option in options {
        let folded = fold(option);
        if folded == wanted {
            return None;
        }
        let distance = crate::instructions::edit_distance(&wanted, &folded);
        if distance < min {
            min = distance;
            best = Some(if case_sensitive {
                option.to_owned()
            } else {
                match_case(&folded, name)
            });
        }
    }
    best
}

/// `suggest.matchCase`: the option in the name's case when that is all
/// lower or all upper.
fn match_case(option: &str, original: &str) -> String {
    if original.to_lowercase() == original {
        option.to_lowercase()
    } else if original.to_uppercase() == original {
        option.to_uppercase()
    } else {
        option.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let options = ["DIR_BINARIES", "DIR_ASSETS", "PATH"];
        assert_eq!(
            suggest("DIR_ASSET", options, true).as_deref(),
            Some("DIR_ASSETS")
        );
        assert_eq!(suggest("PATH", options, true), None);
        assert_eq!(suggest("nothing_like", options, true), None);
        assert_eq!(
            suggest("BULIDPLATFORM", ["BUILDPLATFORM"], false).as_deref(),
            Some("BUILDPLATFORM")
        );
    }

    #[test]
    fn records_lookups() {
        let mut env = Env::default();
        env.set("A", "1");
        let m = expand(&Lexer::new('\\'), "$A${B:-x}", &env);
        assert_eq!(m.result.as_deref(), Some("1x"));
        assert!(m.matched.contains("A") && m.unmatched.contains("B"));
    }
}
