//! RUN and its flags: `--mount` (every type), `--network`, `--security`.

use super::flags::{FlagType, Flags};
use super::{InstructionErrorKind as Kind, ShellCommand};
use crate::parser::Node;

/// `RUN [--mount=…]… [--network=…] [--security=…] command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommand {
    pub command: ShellCommand,
    pub mounts: Vec<MountSpec>,
    /// `default`, `none` or `host`; `None` when not given.
    pub network: Option<String>,
    /// `sandbox` or `insecure`; `None` when not given.
    pub security: Option<String>,
}

/// One `--mount=` value split into its `key[=value]` fields, keys checked,
/// values still unexpanded (mount options may use variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The flag value as written.
    pub raw: String,
    /// Fields in order; the key is canonical (`src` → `source`, `dst` →
    /// `target`, `ro` → `readonly`, `rw` → `readwrite`).
    pub fields: Vec<(String, Option<String>)>,
}

/// Keys a mount may have, with their aliases.
const MOUNT_KEYS: &[(&str, &str)] = &[
    ("type", "type"),
    ("from", "from"),
    ("source", "source"),
    ("src", "source"),
    ("target", "target"),
    ("dst", "target"),
    ("destination", "target"),
    ("readonly", "readonly"),
    ("ro", "readonly"),
    ("readwrite", "readwrite"),
    ("rw", "readwrite"),
    ("id", "id"),
    ("sharing", "sharing"),
    ("mode", "mode"),
    ("uid", "uid"),
    ("gid", "gid"),
    ("required", "required"),
    ("env", "env"),
    ("size", "size"),
];

impl MountSpec {
    /// Splits `raw` as one CSV record (fields may be double-quoted).
    pub fn parse(raw: &str) -> Result<Self, Kind> {
        let bad = |reason: String| Kind::Mount {
            spec: raw.to_owned(),
            reason,
        };
        let mut fields = Vec::new();
        for field in csv_fields(raw).map_err(|r| bad(r.to_owned()))? {
            let (key, value) = match field.split_once('=') {
                Some((k, v)) => (k, Some(v.to_owned())),
                None => (field.as_str(), None),
            };
            let lower = key.trim().to_ascii_lowercase();
            let Some(&(_, canonical)) = MOUNT_KEYS.iter().find(|(k, _)| *k == lower) else {
                return Err(bad(format!("unexpected key '{key}' in '{field}'")));
            };
            fields.push((canonical.to_owned(), value));
        }
        if fields.is_empty() {
            return Err(bad("empty mount".to_owned()));
        }
        Ok(Self {
            raw: raw.to_owned(),
            fields,
        })
    }

    /// The value of the last `key` field (`Some(None)`: given without `=`).
    pub fn get(&self, key: &str) -> Option<Option<&str>> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref())
    }
}

/// Splits a CSV record on commas; a field starting with `"` runs to the
/// closing quote (`""` inside is one quote).
fn csv_fields(record: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = record.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quote"),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None | Some(',') => {}
                Some(_) => return Err("text after a closing quote"),
            }
            fields.push(field);
            if chars.peek().is_none() && !record.ends_with(',') {
                return Ok(fields);
            }
            continue;
        }
        for c in chars.by_ref() {
            if c == ',' {
                break;
            }
            field.push(c);
        }
        let last = chars.peek().is_none();
        if !field.is_empty() {
            fields.push(field);
        }
        if last {
            return Ok(fields);
        }
    }
}

pub(super) fn parse(node: &Node) -> Result<RunCommand, Kind> {
    let flags = Flags::parse(
        &node.flags,
        &[
            ("mount", FlagType::List),
            ("network", FlagType::String),
            ("security", FlagType::String),
        ],
    )?;
    if node.args.is_empty() {
        return Err(Kind::AtLeastOneArgument("RUN"));
    }
    let mounts = flags
        .list("mount")
        .iter()
        .map(|m| MountSpec::parse(m))
        .collect::<Result<_, _>>()?;
    let network = flags.string("network");
    if let Some(n) = network
        .as_ref()
        .filter(|n| !matches!(n.as_str(), "default" | "none" | "host"))
    {
        return Err(Kind::Network(n.clone()));
    }
    let security = flags.string("security");
    if let Some(s) = security
        .as_ref()
        .filter(|s| !matches!(s.as_str(), "sandbox" | "insecure"))
    {
        return Err(Kind::Security(s.clone()));
    }
    Ok(RunCommand {
        command: ShellCommand::from_node(node),
        mounts,
        network,
        security,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv() {
        assert_eq!(csv_fields("a=1,b,c=2").unwrap(), ["a=1", "b", "c=2"]);
        assert_eq!(
            csv_fields("\"target=/a,b\",ro").unwrap(),
            ["target=/a,b", "ro"]
        );
        assert!(csv_fields("\"x").is_err());
    }

    #[test]
    fn mount_keys() {
        let m = MountSpec::parse("type=cache,dst=/root/.cache,ro,sharing=locked").unwrap();
        assert_eq!(m.get("target"), Some(Some("/root/.cache")));
        assert_eq!(m.get("readonly"), Some(None));
        assert_eq!(m.get("from"), None);
        let e = MountSpec::parse("type=bind,tagret=/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid mount \"type=bind,tagret=/x\": unexpected key 'tagret' in 'tagret=/x'"
        );
    }
}
