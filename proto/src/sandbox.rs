//! What a build sets in every RUN step's sandbox besides the Dockerfile:
//! docker build's `--add-host`, `--ulimit` and `--shm-size`, and the
//! `BUILDKIT_SANDBOX_HOSTNAME` build arg. Parsed and checked here, once,
//! for the CLI, kilnd and the conversion alike (each value comes from a
//! command line, a CI system or a Dockerfile's build, none trusted); the
//! conversion puts them in every exec op's `Meta`, so they are part of
//! the step's digest and travel with it. Pure: no I/O.
//!
//! ```
//! use kiln_proto::sandbox::{ExtraHost, Ulimit, parse_shm_size};
//!
//! let host = ExtraHost::parse("db:10.0.0.5").unwrap();
//! assert_eq!(host.hosts_line(), "10.0.0.5\tdb");
//! let limit = Ulimit::parse("nofile=1024:2048").unwrap();
//! assert_eq!((limit.soft(), limit.hard()), (1024, 2048));
//! assert_eq!(parse_shm_size("64m"), Ok(64 << 20));
//! ```

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The build arg that names the steps' hostname (BuildKit's).
pub const HOSTNAME_ARG: &str = "BUILDKIT_SANDBOX_HOSTNAME";

/// The longest hostname (`HOST_NAME_MAX`; sethostname(2) refuses more).
pub const MAX_HOSTNAME: usize = 64;

/// The longest `--add-host` name (a DNS name's limit).
pub const MAX_HOST: usize = 253;

/// `/dev/shm`'s size when `--shm-size` is not given: Docker's 64 MiB.
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// What is wrong with a value; each names its flag or build arg.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SandboxOptionError {
    #[error("invalid {HOSTNAME_ARG} {value:?}: {reason}")]
    Hostname { value: String, reason: String },
    #[error("invalid --add-host {value:?}: {reason}")]
    AddHost { value: String, reason: String },
    #[error("invalid --ulimit {value:?}: {reason}")]
    Ulimit { value: String, reason: String },
    #[error("invalid --shm-size {value:?}: {reason}")]
    ShmSize { value: String, reason: String },
}

type Result<T> = std::result::Result<T, SandboxOptionError>;

/// The sandbox settings every RUN step of a build gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxOptions {
    /// `None`: the worker's default, "kiln".
    pub hostname: Option<String>,
    /// `/etc/hosts` lines after the default ones, in order.
    pub extra_hosts: Vec<ExtraHost>,
    /// At most one per name (see [`Ulimit::merge`]).
    pub ulimits: Vec<Ulimit>,
    /// `/dev/shm`'s size in bytes; `None`: [`DEFAULT_SHM_SIZE`].
    pub shm_size: Option<u64>,
}

impl SandboxOptions {
    /// The options of docker build's flags as given, each `--add-host`
    /// and `--ulimit` value, and `--shm-size` (empty: the default). The
    /// hostname is a build arg: the conversion reads it.
    pub fn from_flags(
        add_hosts: &[String],
        ulimits: &[String],
        shm_size: Option<&str>,
    ) -> Result<Self> {
        let extra_hosts = add_hosts
            .iter()
            .map(|h| ExtraHost::parse(h))
            .collect::<Result<_>>()?;
        let ulimits = ulimits
            .iter()
            .map(|u| Ulimit::parse(u))
            .collect::<Result<Vec<_>>>()?;
        let shm_size = shm_size
            .filter(|s| !s.is_empty())
            .map(parse_shm_size)
            .transpose()?
            .filter(|s| *s > 0);
        Ok(Self {
            hostname: None,
            extra_hosts,
            ulimits: Ulimit::merge(ulimits),
            shm_size,
        })
    }

    /// The options of an exec op's `Meta`, checked again (a graph may come
    /// from elsewhere than this frontend).
    pub fn from_meta(meta: &crate::ops::v1::Meta) -> Result<Self> {
        let hostname = (!meta.hostname.is_empty())
            .then(|| check_hostname(&meta.hostname).map(|()| meta.hostname.clone()))
            .transpose()?;
        let extra_hosts = meta
            .extra_hosts
            .iter()
            .map(|h| ExtraHost::new(&h.host, &h.ip))
            .collect::<Result<_>>()?;
        let ulimits = meta
            .ulimits
            .iter()
            .map(|u| Ulimit::new(&u.name, u.soft, u.hard))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            hostname,
            extra_hosts,
            ulimits: Ulimit::merge(ulimits),
            shm_size: (meta.shm_size > 0).then_some(meta.shm_size),
        })
    }

    /// Sets these options in an exec op's `Meta`.
    pub fn fill_meta(&self, meta: &mut crate::ops::v1::Meta) {
        meta.hostname = self.hostname.clone().unwrap_or_default();
        meta.extra_hosts = self
            .extra_hosts
            .iter()
            .map(|h| crate::ops::v1::HostIp {
                host: h.host.clone(),
                ip: h.ip.to_string(),
            })
            .collect();
        meta.ulimits = self
            .ulimits
            .iter()
            .map(|u| crate::ops::v1::Ulimit {
                name: u.name.as_str().to_owned(),
                soft: u.soft,
                hard: u.hard,
            })
            .collect();
        meta.shm_size = self.shm_size.unwrap_or_default();
    }
}

/// Checks a sandbox hostname: RFC 1123 labels (letters, digits, '-', not
/// at a label's ends) joined by '.', at most [`MAX_HOSTNAME`] bytes. It
/// goes into `/etc/hosts` and sethostname(2): nothing else may get in.
pub fn check_hostname(value: &str) -> Result<()> {
    let bad = |reason: &str| SandboxOptionError::Hostname {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if value.len() > MAX_HOSTNAME {
        return Err(bad(&format!("longer than {MAX_HOSTNAME} bytes")));
    }
    for label in value.split('.') {
        check_label(label).map_err(bad)?;
    }
    Ok(())
}

/// One RFC 1123 label, or why not.
fn check_label(label: &str) -> std::result::Result<(), &'static str> {
    if label.is_empty() {
        return Err("an empty label (a hostname is labels joined by '.')");
    }
    if label.len() > 63 {
        return Err("a label longer than 63 bytes");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err("only letters, digits, '-' and '.' are allowed");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a label starts or ends with '-'");
    }
    Ok(())
}

/// One extra `/etc/hosts` entry (`--add-host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraHost {
    host: String,
    ip: IpAddr,
}

impl ExtraHost {
    /// `--add-host`'s value: `host:ip` (docker) or `host=ip` (buildx); an
    /// IPv6 address plain (`host:::1`) or in brackets (`host=[::1]`).
    pub fn parse(spec: &str) -> Result<Self> {
        let split = spec.split_once('=').or_else(|| spec.split_once(':'));
        let Some((host, ip)) = split else {
            return Err(SandboxOptionError::AddHost {
                value: spec.to_owned(),
                reason: "expected HOST:IP or HOST=IP".to_owned(),
            });
        };
        Self::checked(spec, host, ip)
    }

    /// A host and its address, as a graph or a farm step carries them.
    pub fn new(host: &str, ip: &str) -> Result<Self> {
        Self::checked(&format!("{host}={ip}"), host, ip)
    }

    fn checked(spec: &str, host: &str, ip: &str) -> Result<Self> {
        let bad = |reason: &str| SandboxOptionError::AddHost {
            value: spec.to_owned(),
            reason: reason.to_owned(),
        };
        check_host(host).map_err(bad)?;
        if ip == "host-gateway" {
            return Err(bad(
                "host-gateway is not supported: kiln's RUN steps have no gateway to the host \
                 (the default network's NAT never reaches the host's loopback); give the host's address",
            ));
        }
        let bare = ip
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(ip);
        let ip = bare
            .parse::<IpAddr>()
            .map_err(|_| bad(&format!("{ip:?} is not an IPv4 or IPv6 address")))?;
        Ok(Self {
            host: host.to_owned(),
            ip,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The entry's `/etc/hosts` line, without its newline.
    pub fn hosts_line(&self) -> String {
        format!("{}\t{}", self.ip, self.host)
    }
}

/// An `--add-host` name: what `/etc/hosts` can hold as one name (letters,
/// digits, '-', '_', '.'), never a second name, a comment or a line break.
fn check_host(host: &str) -> std::result::Result<(), &'static str> {
    if host.is_empty() {
        return Err("no host name");
    }
    if host.len() > MAX_HOST {
        return Err("a host name longer than 253 bytes");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("a host name has only letters, digits, '-', '_' and '.'");
    }
    if host.starts_with(['-', '.']) || host.contains("..") {
        return Err("a host name starts with '-' or '.', or has an empty label");
    }
    Ok(())
}

/// Docker's `--ulimit` names, each a setrlimit(2) resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UlimitName {
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

impl UlimitName {
    /// Every name, in Docker's spelling.
    pub const ALL: [(Self, &'static str); 15] = [
        (Self::Core, "core"),
        (Self::Cpu, "cpu"),
        (Self::Data, "data"),
        (Self::Fsize, "fsize"),
        (Self::Locks, "locks"),
        (Self::Memlock, "memlock"),
        (Self::Msgqueue, "msgqueue"),
        (Self::Nice, "nice"),
        (Self::Nofile, "nofile"),
        (Self::Nproc, "nproc"),
        (Self::Rss, "rss"),
        (Self::Rtprio, "rtprio"),
        (Self::Rttime, "rttime"),
        (Self::Sigpending, "sigpending"),
        (Self::Stack, "stack"),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == self)
            .map_or("", |(_, text)| text)
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == text)
            .map(|(name, _)| *name)
    }
}

/// One resource limit (`--ulimit`): -1 is unlimited; soft ≤ hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    name: UlimitName,
    soft: i64,
    hard: i64,
}

impl Ulimit {
    /// `--ulimit`'s value: `name=soft[:hard]` (hard defaults to soft).
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |reason: String| SandboxOptionError::Ulimit {
            value: spec.to_owned(),
            reason,
        };
        let Some((name, limits)) = spec.split_once('=') else {
            return Err(bad("expected NAME=SOFT[:HARD]".to_owned()));
        };
        let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
        let number = |text: &str| {
            text.parse::<i64>()
                .map_err(|_| bad(format!("{text:?} is not a number (-1 for unlimited)")))
        };
        Self::checked(spec, name, number(soft)?, number(hard)?)
    }

    /// A limit as a graph or a farm step carries it.
    pub fn new(name: &str, soft: i64, hard: i64) -> Result<Self> {
        Self::checked(&format!("{name}={soft}:{hard}"), name, soft, hard)
    }

    fn checked(spec: &str, name: &str, soft: i64, hard: i64) -> Result<Self> {
        let bad = |reason: String| SandboxOptionError::Ulimit {
            value: spec.to_owned(),
            reason,
        };
        let Some(name) = UlimitName::parse(name) else {
            let known: Vec<&str> = UlimitName::ALL.iter().map(|(_, t)| *t).collect();
            return Err(bad(format!(
                "unknown name {name:?} (one of {})",
                known.join(", ")
            )));
        };
        if soft < -1 || hard < -1 {
            return Err(bad("a limit is at least 0 (-1 for unlimited)".to_owned()));
        }
        if Self::above(soft, hard) {
            return Err(bad(format!(
                "the soft limit {soft} is above the hard limit {hard}"
            )));
        }
        Ok(Self { name, soft, hard })
    }

    /// Whether limit `a` is above limit `b` (-1 is above everything else).
    fn above(a: i64, b: i64) -> bool {
        let unlimited = |v: i64| u64::try_from(v).unwrap_or(u64::MAX);
        unlimited(a) > unlimited(b)
    }

    pub fn name(&self) -> UlimitName {
        self.name
    }

    /// -1: unlimited.
    pub fn soft(&self) -> i64 {
        self.soft
    }

    /// -1: unlimited.
    pub fn hard(&self) -> i64 {
        self.hard
    }

    /// One limit per name, the last given winning (as docker's flag), in
    /// name order: the same limits make the same op however they were
    /// spelt.
    pub fn merge(limits: impl IntoIterator<Item = Self>) -> Vec<Self> {
        let by_name: std::collections::BTreeMap<UlimitName, Self> =
            limits.into_iter().map(|l| (l.name, l)).collect();
        by_name.into_values().collect()
    }
}

/// `--shm-size`'s value in bytes: a number with an optional binary unit,
/// as docker reads it (`65536`, `64m`, `64MiB`, `1g`, `1.5g`; k, m, g, t,
/// p, each 1024 times the one before). 0 is Docker's default, 64 MiB. A
/// worker refuses more than its machine's memory.
pub fn parse_shm_size(text: &str) -> Result<u64> {
    let bad = |reason: &str| SandboxOptionError::ShmSize {
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    let lower = text.trim().to_ascii_lowercase();
    let unit_at = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(unit_at);
    let unit = unit.trim_start();
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad("expected a number of bytes with k, m, g, t or p")),
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad("expected a number of bytes with k, m, g, t or p"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| bad("expected a number of bytes with k, m, g, t or p"))?;
    let bytes = value * 2f64.powi(shift);
    // 2^63, past the most Docker's int64 holds.
    if !bytes.is_finite() || bytes >= 2f64.powi(63) {
        return Err(bad("too large"));
    }
    // Truncated to whole bytes, as docker's units.RAMInBytes does.
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests;
