//! `--chmod` values (COPY, ADD): an octal mode up to `07777`, or chmod(1)'s
//! symbolic form (`u=rwx,g=rx,o=`, `+x`, `go-w`, `a+X`), which Dockerfile
//! 1.14 accepts.
//!
//! A symbolic mode changes each copied file's own mode, with the semantics
//! of BSD's setmode(3) and a umask of 0: BuildKit parses it with
//! `tonistiigi/dchapes-mode` (a Go port of setmode) and fsutil applies it to
//! every file and directory it copies. So `X` adds execute bits only to
//! directories and to files some class may already execute, `=` clears
//! the set-id bits of the classes named, and `u`, `g`, `o` after the
//! operator copy another class's bits (`go=u-w`).
//! <https://man.freebsd.org/cgi/man.cgi?query=setmode&sektion=3>

use std::fmt;

use thiserror::Error;

/// The longest `--chmod` value taken: real ones are a few characters, and
/// every clause is applied to every copied file.
pub const MAX_CHMOD: usize = 128;

const SET_UID: u32 = 0o4000;
const SET_GID: u32 = 0o2000;
const STICKY: u32 = 0o1000;
const USER: u32 = 0o700;
const GROUP: u32 = 0o070;
const OTHER: u32 = 0o007;
const READ: u32 = 0o444;
const WRITE: u32 = 0o222;
const EXECUTE: u32 = 0o111;
/// Everything `=` without a class clears (not the sticky bit).
const STANDARD: u32 = SET_UID | SET_GID | 0o777;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChmodError {
    /// BuildKit's words for a value that looks numeric.
    #[error("invalid chmod parameter: '{0}'. it should be octal string and between 0 and 07777")]
    NotOctal(String),
    #[error(
        "invalid chmod parameter: '{0}': neither an octal mode nor a symbolic one (chmod(1): u=rwx,g=rx,o=  +x  go-w  a+X)"
    )]
    Syntax(String),
    #[error("invalid chmod parameter: longer than {MAX_CHMOD} characters")]
    TooLong,
}

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// Every copied file gets these bits.
    Octal(u32),
    /// Each copied file's mode is changed by these steps, in order.
    Symbolic { text: String, steps: Vec<Step> },
}

/// One change of a symbolic mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Clear these bits.
    Clear(u32),
    /// Set these bits.
    Set(u32),
    /// `+X`: set these bits when the file is a directory or its mode, as it
    /// was before any step, has an execute bit.
    SetIfExecutable(u32),
    /// `u`, `g` or `o` after the operator: the three bits of class `from`
    /// (as they are at this step) cleared from and/or set in the classes
    /// of `to` (a mask of `USER`, `GROUP`, `OTHER`).
    Copy {
        from: Class,
        to: u32,
        clear: bool,
        set: bool,
    },
}

/// A class of permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    User,
    Group,
    Other,
}

impl Class {
    fn shift(self) -> u32 {
        match self {
            Self::User => 6,
            Self::Group => 3,
            Self::Other => 0,
        }
    }
}

impl Chmod {
    /// Parses a `--chmod` value as BuildKit does: octal first, then
    /// symbolic; a value that starts with a digit is only ever octal.
    pub fn parse(text: &str) -> Result<Self, ChmodError> {
        if text.len() > MAX_CHMOD {
            return Err(ChmodError::TooLong);
        }
        if text.starts_with(|c: char| c.is_ascii_digit()) {
            return u32::from_str_radix(text, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(Self::Octal)
                .ok_or_else(|| ChmodError::NotOctal(text.to_owned()));
        }
        let steps =
            parse_symbolic(text.as_bytes()).ok_or_else(|| ChmodError::Syntax(text.to_owned()))?;
        Ok(Self::Symbolic {
            text: text.to_owned(),
            steps,
        })
    }

    /// The mode (permission, set-id and sticky bits) a file whose mode is
    /// `mode` gets.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let steps = match self {
            Self::Octal(bits) => return *bits,
            Self::Symbolic { steps, .. } => steps,
        };
        let old = mode & 0o7777;
        let mut new = old;
        for step in steps {
            match *step {
                Step::Clear(bits) => new &= !bits,
                Step::Set(bits) => new |= bits,
                Step::SetIfExecutable(bits) => {
                    if is_dir || old & EXECUTE != 0 {
                        new |= bits;
                    }
                }
                Step::Copy {
                    from,
                    to,
                    clear,
                    set,
                } => {
                    let value = (new >> from.shift()) & 0o7;
                    let cleared = if set { 0o7 } else { value };
                    for class in [Class::User, Class::Group, Class::Other] {
                        let mask = 0o7 << class.shift();
                        if to & mask == 0 {
                            continue;
                        }
                        if clear {
                            new &= !(cleared << class.shift());
                        }
                        if set {
                            new |= value << class.shift();
                        }
                    }
                }
            }
        }
        new
    }
}

impl fmt::Display for Chmod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Octal(bits) => write!(f, "{bits:04o}"),
            Self::Symbolic { text, .. } => f.write_str(text),
        }
    }
}

impl serde::Serialize for Chmod {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Chmod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The bits an operator touches for the classes in `who` (`0`: no class
/// named, which with a umask of 0 means every bit).
fn for_who(who: u32, bits: u32) -> u32 {
    if who == 0 { bits } else { who & bits }
}

/// setmode(3)'s clause loop: `[ugoa]*` then one or more `[+-=][rwxXstugo]*`,
/// clauses separated by `,`. `None`: not a symbolic mode.
fn parse_symbolic(mut s: &[u8]) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    loop {
        let mut who = 0;
        while let Some(&c) = s.first() {
            who |= match c {
                b'a' => STANDARD,
                b'u' => SET_UID | USER,
                b'g' => SET_GID | GROUP,
                b'o' => OTHER,
                _ => break,
            };
            s = &s[1..];
        }
        loop {
            let (&op, rest) = s.split_first()?;
            s = rest;
            if !matches!(op, b'+' | b'-' | b'=') {
                return None;
            }
            who &= !STICKY;
            s = parse_perms(s, op, &mut who, &mut steps);
            match s.split_first() {
                None => return Some(steps),
                Some((b',', rest)) => {
                    s = rest;
                    break;
                }
                // Another operator for the same classes (`u+r-w`).
                Some(_) => {}
            }
        }
    }
}

/// The permission letters after operator `op`, up to the first other
/// character (returned with what follows it).
fn parse_perms<'s>(mut s: &'s [u8], op: u8, who: &mut u32, steps: &mut Vec<Step>) -> &'s [u8] {
    let (mut perm, mut perm_x) = (0, 0);
    // `=` clears once per operator, even when it also copies a class.
    let mut equal_done = false;
    loop {
        match s.first() {
            Some(b'r') => perm |= READ,
            Some(b'w') => perm |= WRITE,
            Some(b'x') => perm |= EXECUTE,
            Some(b'X') if op == b'+' => perm_x = EXECUTE,
            Some(b'X') => {}
            // Set-id and sticky mean nothing for "other" alone.
            Some(b's') if *who == 0 || *who & !OTHER != 0 => perm |= SET_UID | SET_GID,
            Some(b't') if *who == 0 || *who & !OTHER != 0 => {
                *who |= STICKY;
                perm |= STICKY;
            }
            Some(b's' | b't') => {}
            Some(&c @ (b'u' | b'g' | b'o')) => {
                if perm != 0 {
                    push(steps, op, *who, perm);
                    perm = 0;
                }
                if op == b'=' {
                    equal_done = true;
                }
                if perm_x != 0 {
                    steps.push(Step::SetIfExecutable(for_who(*who, perm_x)));
                    perm_x = 0;
                }
                let from = match c {
                    b'u' => Class::User,
                    b'g' => Class::Group,
                    _ => Class::Other,
                };
                steps.push(Step::Copy {
                    from,
                    to: if *who == 0 {
                        USER | GROUP | OTHER
                    } else {
                        *who & (USER | GROUP | OTHER)
                    },
                    clear: op != b'+',
                    set: op != b'-',
                });
            }
            _ => {
                if perm != 0 || (op == b'=' && !equal_done) {
                    push(steps, op, *who, perm);
                }
                if perm_x != 0 {
                    steps.push(Step::SetIfExecutable(for_who(*who, perm_x)));
                }
                return s;
            }
        }
        s = &s[1..];
    }
}

/// `+`, `-` or `=` of `perm` for the classes in `who`.
fn push(steps: &mut Vec<Step>, op: u8, who: u32, perm: u32) {
    match op {
        b'+' => steps.push(Step::Set(for_who(who, perm))),
        b'-' => steps.push(Step::Clear(for_who(who, perm))),
        _ => {
            steps.push(Step::Clear(if who == 0 { STANDARD } else { who }));
            steps.push(Step::Set(for_who(who, perm)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(spec: &str, mode: u32, is_dir: bool) -> u32 {
        Chmod::parse(spec)
            .unwrap_or_else(|e| panic!("{spec}: {e}"))
            .apply(mode, is_dir)
    }

    #[test]
    fn octal() {
        assert_eq!(Chmod::parse("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(apply("0640", 0o777, false), 0o640);
        assert_eq!(apply("4755", 0o600, true), 0o4755);
        for bad in ["17777", "888", "0x1", "9", "1e3", "7a"] {
            assert_eq!(
                Chmod::parse(bad),
                Err(ChmodError::NotOctal(bad.to_owned())),
                "{bad}"
            );
        }
    }

    /// Values checked against GNU chmod with umask 0, except where BSD's
    /// setmode (BuildKit's) differs: `X` asks the mode before the first
    /// step (GNU: the mode so far), and `o+t` is ignored (GNU sets it).
    #[test]
    fn symbolic_against_chmod() {
        let cases: &[(&str, u32, bool, u32)] = &[
            ("u=rwx,g=rx,o=", 0o644, false, 0o750),
            ("+x", 0o644, false, 0o755),
            ("a+x", 0o600, false, 0o711),
            ("go-w", 0o777, false, 0o755),
            ("u+x,g-r", 0o644, false, 0o704),
            ("=rw,+X", 0o640, false, 0o666),
            ("=rw,+X", 0o740, false, 0o777),
            ("+X", 0o600, false, 0o600),
            ("+X", 0o600, true, 0o711),
            ("a+X", 0o610, false, 0o711),
            ("go=", 0o777, false, 0o700),
            ("go=u-w", 0o754, false, 0o755),
            ("u=rwx,go=u-w", 0o000, false, 0o755),
            ("g=u", 0o640, false, 0o660),
            ("o+r,u-w", 0o600, false, 0o404),
            ("u+r-w", 0o200, false, 0o400),
            ("u+s", 0o755, false, 0o4755),
            ("g+s", 0o755, true, 0o2755),
            ("+t", 0o755, true, 0o1755),
            ("o+t", 0o755, true, 0o755),
            ("u=rwx", 0o4755, false, 0o755),
            ("a=", 0o4777, false, 0o000),
            ("ug+w,o-rwx", 0o444, false, 0o660),
        ];
        for &(spec, mode, is_dir, want) in cases {
            assert_eq!(
                apply(spec, mode, is_dir),
                want,
                "{spec} on {mode:o} (dir: {is_dir}): got {:o}",
                apply(spec, mode, is_dir)
            );
        }
    }

    #[test]
    fn symbolic_x_looks_at_the_mode_before_any_step() {
        // `-x` first does not stop `+X` (it asks the original mode).
        assert_eq!(apply("a-x,u+X", 0o755, false), 0o744);
        assert_eq!(apply("a+x,u-x", 0o644, false), 0o655);
    }

    #[test]
    fn symbolic_syntax_errors() {
        for bad in ["", "u", "u+q", "x", "u+r,", ",u+r", "z=r", "u+r;", "+rwx u"] {
            assert!(
                matches!(Chmod::parse(bad), Err(ChmodError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!(Chmod::parse(&"u+x,".repeat(40)), Err(ChmodError::TooLong));
    }

    #[test]
    fn round_trips_through_its_text() {
        for text in ["0755", "u=rwx,g=rx,o=", "+X"] {
            let chmod = Chmod::parse(text).unwrap();
            let json = serde_json::to_string(&chmod).unwrap();
            assert_eq!(serde_json::from_str::<Chmod>(&json).unwrap(), chmod);
        }
        assert!(serde_json::from_str::<Chmod>("\"u+q\"").is_err());
    }
}
