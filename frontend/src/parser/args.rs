//! Per-keyword argument rules (BuildKit's `line_parsers.go`): how the text
//! after the keyword and flags becomes the node's arguments.

use super::split::{is_separator, node_at_depth};
use super::{Node, ParseErrorKind};

/// The arguments of one node.
pub(super) struct Parsed {
    pub(super) args: Vec<String>,
    pub(super) child: Option<Box<Node>>,
    pub(super) json: bool,
}

impl Parsed {
    fn args(args: Vec<String>) -> Self {
        Self {
            args,
            child: None,
            json: false,
        }
    }
}

/// Parses `rest` (trimmed) for the instruction `command` (lower case).
pub(super) fn parse(
    command: &str,
    rest: &str,
    escape: char,
    depth: usize,
) -> Result<Parsed, ParseErrorKind> {
    match command {
        "run" | "cmd" | "entrypoint" | "shell" => maybe_json(rest),
        "add" | "copy" | "volume" => match json_array(rest)? {
            Some(args) => Ok(Parsed {
                args,
                child: None,
                json: true,
            }),
            None => Ok(Parsed::args(split_separators(rest))),
        },
        "from" | "expose" => Ok(Parsed::args(split_separators(rest))),
        "env" => name_values(rest, "ENV", escape),
        "label" => name_values(rest, "LABEL", escape),
        "arg" => Ok(Parsed::args(words(rest, escape))),
        "user" | "workdir" | "maintainer" | "stopsignal" => Ok(Parsed::args(if rest.is_empty() {
            vec![]
        } else {
            vec![rest.to_owned()]
        })),
        "healthcheck" => health(rest),
        "onbuild" if rest.is_empty() => Ok(Parsed::args(vec![])),
        "onbuild" => Ok(Parsed {
            args: vec![],
            child: Some(Box::new(node_at_depth(rest, escape, depth + 1)?)),
            json: false,
        }),
        // Unknown instructions parse (and dump) with one empty argument; the
        // instruction layer rejects them with the line and the word.
        _ => Ok(Parsed::args(vec![String::new()])),
    }
}

/// JSON form when `text` is a JSON array of strings, else one argument.
fn maybe_json(text: &str) -> Result<Parsed, ParseErrorKind> {
    if text.is_empty() {
        return Ok(Parsed::args(vec![]));
    }
    Ok(match json_array(text)? {
        Some(args) => Parsed {
            args,
            child: None,
            json: true,
        },
        None => Parsed::args(vec![text.to_owned()]),
    })
}

/// Decodes `text` as a JSON array of strings. `Ok(None)`: not JSON — also
/// when text follows the array (`RUN ["echo"]x`), since BuildKit's
/// `json.Unmarshal` refuses trailing data — so the shell form. A valid
/// array with a non-string element is an error.
fn json_array(text: &str) -> Result<Option<Vec<String>>, ParseErrorKind> {
    let text = text.trim_start();
    if !text.starts_with('[') {
        return Ok(None);
    }
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str(text) else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(ParseErrorKind::NotStringArray),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

fn split_separators(text: &str) -> Vec<String> {
    text.split(is_separator)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// ENV and LABEL: `key value` (old form, one pair) or `k=v k2=v2 …`.
/// Each pair becomes three arguments: key, value, and `=` or `""`.
fn name_values(rest: &str, keyword: &str, escape: char) -> Result<Parsed, ParseErrorKind> {
    let words = words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Parsed::args(vec![]));
    };
    if !first.contains('=') {
        let Some(i) = rest.find(is_separator) else {
            return Err(ParseErrorKind::MissingValue(keyword.to_owned()));
        };
        let value = rest[i..].trim_start_matches(is_separator);
        return Ok(Parsed::args(vec![
            rest[..i].to_owned(),
            value.to_owned(),
            String::new(),
        ]));
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(ParseErrorKind::MissingEquals(word));
        };
        args.extend([key.to_owned(), value.to_owned(), "=".to_owned()]);
    }
    Ok(Parsed::args(args))
}

/// Shell-like words: separated by unquoted white space; quotes group and
/// are kept; the escape character (outside `'…'`) makes the next character
/// part of the word and is kept too, except as the very last character.
pub(super) fn words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut blank_ok = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if in_word && (blank_ok || !word.is_empty()) {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
                blank_ok = false;
            }
            None => {
                in_word = true;
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    blank_ok = true;
                }
                if c == escape {
                    let Some(next) = chars.next() else { continue };
                    word.push(c);
                    word.push(next);
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                }
                if c == escape && q != '\'' {
                    let Some(next) = chars.next() else {
                        quote = None;
                        continue;
                    };
                    word.push(c);
                    word.push(next);
                    continue;
                }
                word.push(c);
            }
        }
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// HEALTHCHECK: the type word, then the rest by the RUN rule.
fn health(rest: &str) -> Result<Parsed, ParseErrorKind> {
    let Some(kind) = rest
        .split(char::is_whitespace)
        .next()
        .filter(|k| !k.is_empty())
    else {
        return Ok(Parsed::args(vec![]));
    };
    let command = maybe_json(rest[kind.len()..].trim_start())?;
    let mut args = vec![kind.to_owned()];
    args.extend(command.args);
    Ok(Parsed {
        args,
        child: None,
        json: command.json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(
            words("a=\"x y\" b=x\\ y c", '\\'),
            ["a=\"x y\"", "b=x\\ y", "c"]
        );
        assert_eq!(words("'a\\'b'", '\\'), ["'a\\'b'"]);
        assert_eq!(words("a\\", '\\'), ["a"]);
        assert_eq!(words("\"\"", '\\'), ["\"\""]);
    }

    #[test]
    fn json_forms() {
        assert_eq!(
            json_array("[\"a\", \"b\"] \t").unwrap(),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(json_array("[\"a\", \"b\"] trailing").unwrap(), None);
        assert_eq!(json_array("[\"a\"]x").unwrap(), None);
        assert_eq!(json_array("[\"a\", 1] x").unwrap(), None, "not JSON at all");
        assert_eq!(json_array("['a']").unwrap(), None);
        assert_eq!(json_array("[\"a\"").unwrap(), None);
        assert_eq!(
            json_array("[\"a\", 1]"),
            Err(ParseErrorKind::NotStringArray)
        );
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            name_values("a b c", "ENV", '\\').unwrap().args,
            ["a", "b c", ""]
        );
        assert_eq!(
            name_values("a=1 b=2", "ENV", '\\').unwrap().args,
            ["a", "1", "=", "b", "2", "="]
        );
        assert_eq!(
            name_values("a", "ENV", '\\').err(),
            Some(ParseErrorKind::MissingValue("ENV".into()))
        );
        assert_eq!(
            name_values("a=1 b", "LABEL", '\\').err(),
            Some(ParseErrorKind::MissingEquals("b".into()))
        );
    }
}
