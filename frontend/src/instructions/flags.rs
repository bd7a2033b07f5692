//! Instruction flags (`--from=build`, `--link`, `--mount=…` repeated), with
//! BuildKit's rules: `--name=value` or a bare `--name`; a bare boolean flag is
//! true; a string flag needs a value; only list flags may repeat.

use std::collections::BTreeMap;

use super::InstructionErrorKind as Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlagType {
    Bool,
    String,
    /// May be given several times; values are kept in order.
    List,
}

/// The flags an instruction was given, checked against the ones it takes.
#[derive(Debug, Default)]
pub(super) struct Flags {
    values: BTreeMap<&'static str, Vec<String>>,
}

impl Flags {
    /// Checks `raw` (as in the AST: `--name=value`) against `known`.
    pub(super) fn parse(raw: &[String], known: &[(&'static str, FlagType)]) -> Result<Self, Kind> {
        let mut values: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for arg in raw {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(Kind::FlagSyntax(arg.clone()));
            };
            let (name, value) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            let Some(&(name, kind)) = known.iter().find(|(n, _)| *n == name) else {
                return Err(Kind::UnknownFlag(name.to_owned()));
            };
            let value = match (kind, value) {
                (FlagType::Bool, None) => "true".to_owned(),
                (FlagType::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" | "false" => v.to_ascii_lowercase(),
                    _ => return Err(Kind::FlagNotBool(name.to_owned(), v.to_owned())),
                },
                (_, None) => return Err(Kind::FlagMissingValue(name.to_owned())),
                (_, Some(v)) => v.to_owned(),
            };
            let slot = values.entry(name).or_default();
            if kind != FlagType::List && !slot.is_empty() {
                return Err(Kind::DuplicateFlag(name.to_owned()));
            }
            slot.push(value);
        }
        Ok(Self { values })
    }

    /// The value of a string flag, if given.
    pub(super) fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.first()).cloned()
    }

    /// A boolean flag: false unless given (bare or `=true`).
    pub(super) fn bool(&self, name: &str) -> bool {
        self.bool_opt(name).unwrap_or(false)
    }

    /// A boolean flag, or `None` when not given at all.
    pub(super) fn bool_opt(&self, name: &str) -> Option<bool> {
        self.values
            .get(name)
            .and_then(|v| v.first())
            .map(|v| v == "true")
    }

    /// Every value of a list flag, in order.
    pub(super) fn list(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[(&str, FlagType)] = &[
        ("from", FlagType::String),
        ("link", FlagType::Bool),
        ("exclude", FlagType::List),
    ];

    fn parse(raw: &[&str]) -> Result<Flags, Kind> {
        Flags::parse(
            &raw.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            KNOWN,
        )
    }

    #[test]
    fn values() {
        let f = parse(&["--from=a", "--link", "--exclude=x", "--exclude=y"]).unwrap();
        assert_eq!(f.string("from").as_deref(), Some("a"));
        assert!(f.bool("link"));
        assert_eq!(f.list("exclude"), ["x", "y"]);
        assert!(!parse(&["--link=false"]).unwrap().bool("link"));
        assert_eq!(
            parse(&["--from="]).unwrap().string("from").as_deref(),
            Some("")
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(&["--nope"]).err(),
            Some(Kind::UnknownFlag("nope".into()))
        );
        assert_eq!(
            parse(&["--from"]).err(),
            Some(Kind::FlagMissingValue("from".into()))
        );
        assert_eq!(
            parse(&["--from=a", "--from=b"]).err(),
            Some(Kind::DuplicateFlag("from".into()))
        );
        assert_eq!(
            parse(&["--link=yes"]).err(),
            Some(Kind::FlagNotBool("link".into(), "yes".into()))
        );
    }
}
