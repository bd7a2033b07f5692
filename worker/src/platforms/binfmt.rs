//! binfmt_misc's handlers as the kernel lists them, one file each in
//! `/proc/sys/fs/binfmt_misc` (`enabled`, `interpreter …`, `flags: PF`,
//! `offset 0`, `magic 7f454c46…`, `mask ff…`; see the kernel's
//! Documentation/admin-guide/binfmt-misc.rst). Read as hostile input:
//! at most [`MAX_HANDLERS`] files of at most [`MAX_FILE`] bytes, every
//! field checked; a file that is not a handler as the kernel writes one is
//! skipped, never a panic.

use std::io::Read;
use std::path::Path;

use super::elf::Elf;

/// Where the kernel's binfmt_misc is mounted.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// The most handler files read. The kernel has no limit; hosts have tens.
const MAX_HANDLERS: usize = 1024;

/// The most bytes of one file read; a longer one is skipped. The kernel's
/// are under 1 KiB (a magic and mask of at most 128 bytes, in hex).
const MAX_FILE: u64 = 8192;

/// binfmt_misc as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not mounted (or not in the kernel): no handler runs anything.
    NotMounted,
    /// Its `status` says `disabled`: no handler runs anything.
    Disabled,
    Enabled,
}

/// How a handler recognizes its programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The bytes at `offset`, compared under `mask` (all ones without one).
    Magic {
        offset: usize,
        magic: Vec<u8>,
        mask: Vec<u8>,
    },
    /// The file name's extension.
    Extension(String),
}

/// One registered handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// Its file's name (`qemu-aarch64`).
    pub name: String,
    pub enabled: bool,
    /// The interpreter the kernel runs the program with.
    pub interpreter: String,
    /// The registration's flags (`P`, `O`, `C`, `F`).
    pub flags: String,
    pub rule: Rule,
}

impl Handler {
    /// A handler from its file's `text`; `None` when it is not one.
    pub fn parse(name: &str, text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let enabled = match lines.next()? {
            "enabled" => true,
            "disabled" => false,
            _ => return None,
        };
        let mut interpreter = None;
        let mut flags = None;
        let (mut offset, mut magic, mut mask, mut extension) = (None, None, None, None);
        for line in lines {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "interpreter" => interpreter = Some(value.to_owned()),
                "flags:" => flags = Some(value.to_owned()),
                "offset" => offset = Some(value.parse::<usize>().ok()?),
                "magic" => magic = Some(hex(value)?),
                "mask" => mask = Some(hex(value)?),
                "extension" => {
                    extension = Some(value.strip_prefix('.').unwrap_or(value).to_owned())
                }
                _ => {}
            }
        }
        let rule = match (magic, extension) {
            (Some(magic), None) => {
                let mask = mask.unwrap_or_else(|| vec![0xff; magic.len()]);
                if magic.is_empty() || mask.len() != magic.len() {
                    return None;
                }
                Rule::Magic {
                    offset: offset?,
                    magic,
                    mask,
                }
            }
            (None, Some(extension)) => Rule::Extension(extension),
            _ => return None,
        };
        Some(Self {
            name: name.to_owned(),
            enabled,
            interpreter: interpreter?,
            flags: flags?,
            rule,
        })
    }

    /// Registered with the fix-binary flag: the kernel opened the
    /// interpreter when it was registered, so it runs programs in any
    /// mount namespace and root, a step's included. Without it the kernel
    /// opens the interpreter's path when a program runs: inside the step's
    /// root filesystem, where it is not.
    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }

    /// Whether the kernel gives it a program that starts with `header`
    /// (a rule by extension never matches: RUN steps' programs are found
    /// by their contents).
    pub fn matches(&self, header: &[u8]) -> bool {
        let Rule::Magic {
            offset,
            magic,
            mask,
        } = &self.rule
        else {
            return false;
        };
        let Some(bytes) = offset
            .checked_add(magic.len())
            .and_then(|end| header.get(*offset..end))
        else {
            return false;
        };
        magic
            .iter()
            .zip(mask)
            .zip(bytes)
            .all(|((m, k), b)| m & k == b & k)
    }

    /// Whether it takes the programs of `elf`, static or
    /// position-independent.
    pub fn runs(&self, elf: Elf) -> bool {
        [2, 3]
            .iter()
            .any(|&e_type| self.matches(&elf.header(e_type)))
    }
}

/// `00ff…` as bytes; `None` unless it is an even number of hex digits.
fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What binfmt_misc holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binfmt {
    pub state: State,
    /// By name.
    pub handlers: Vec<Handler>,
}

impl Binfmt {
    /// binfmt_misc as mounted at `dir` (its `status` and handlers).
    pub fn read(dir: &Path) -> Self {
        let state = match read_bounded(&dir.join("status")).as_deref().map(str::trim) {
            Some("enabled") => State::Enabled,
            Some("disabled") => State::Disabled,
            _ => State::NotMounted,
        };
        let mut handlers: Vec<Handler> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .take(MAX_HANDLERS)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name == "status" || name == "register" {
                    return None;
                }
                Handler::parse(&name, &read_bounded(&e.path())?)
            })
            .collect();
        handlers.sort_by(|a, b| a.name.cmp(&b.name));
        Self { state, handlers }
    }

    /// The handlers that take `elf`'s programs.
    pub fn for_elf(&self, elf: Elf) -> impl Iterator<Item = &Handler> {
        self.handlers.iter().filter(move |h| h.runs(elf))
    }

    /// Whether the kernel runs `elf`'s programs through a handler from
    /// inside a step's root filesystem.
    pub fn emulates(&self, elf: Elf) -> bool {
        self.state == State::Enabled && self.for_elf(elf).any(|h| h.enabled && h.fix_binary())
    }
}

/// The text of `path` when it has at most [`MAX_FILE`] bytes.
fn read_bounded(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > MAX_FILE {
        return None;
    }
    String::from_utf8(bytes).ok()
}
