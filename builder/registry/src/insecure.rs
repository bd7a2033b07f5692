//! Which registries are spoken to over plain HTTP, and who decides.
//!
//! Plain HTTP sends the registry credentials in clear and takes whatever
//! content a man in the middle serves. Embedded, the user running `kiln`
//! decides (`--insecure-registry`). A shared kilnd speaks to registries
//! with its own credentials, so there its operator decides: kilnd's
//! `--insecure-registry` is an allow-list, and a client's hosts are
//! granted only within it ([`InsecureRegistries::grant`]), as Docker's
//! `insecure-registries` is the daemon's configuration, not a client's.
//! Loopback registries are plain HTTP for everyone (as Docker's); asking
//! for one changes nothing, so it is always granted.

use thiserror::Error;

/// Why a host is not taken.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InsecureError {
    /// An operator's value that is not `HOST` or `HOST:PORT`.
    #[error("{flag} {value:?}: {reason} (expected HOST or HOST:PORT)")]
    Malformed {
        flag: String,
        value: String,
        reason: &'static str,
    },
    /// A client asked for a host kilnd's operator did not allow. Worded as
    /// BuildKit's entitlement refusal, then who can change it.
    #[error(
        "plain HTTP to registry {0} is not allowed by build daemon configuration (kilnd's operator can allow it: kilnd --insecure-registry {0})"
    )]
    NotAllowedByDaemon(String),
}

/// `host` without its `:PORT`, when it has one.
pub(crate) fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether the host name `name` (no port) is this machine's loopback:
/// `localhost`, `[::1]` or an address in 127.0.0.0/8 (a DNS name such as
/// `127.example.com` is not).
pub(crate) fn is_loopback(name: &str) -> bool {
    matches!(name, "localhost" | "[::1]")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the list entry `entry` covers `host`: the same, or `host`'s
/// name with any port (an entry without a port covers them all; one with a
/// port, only that port).
pub(crate) fn covers(entry: &str, host: &str) -> bool {
    entry == host || entry == host_name(host)
}

/// The registries a service's operator lets its clients have spoken to
/// over plain HTTP (kilnd's `--insecure-registry`); none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InsecureRegistries(Vec<String>);

impl InsecureRegistries {
    /// The values of `flag`, each `HOST` or `HOST:PORT` as the CLI's
    /// `--insecure-registry` takes them.
    pub fn from_flag<S: AsRef<str>>(flag: &str, values: &[S]) -> Result<Self, InsecureError> {
        let mut hosts = Vec::with_capacity(values.len());
        for value in values {
            let value = value.as_ref();
            check_host(value).map_err(|reason| InsecureError::Malformed {
                flag: flag.to_owned(),
                value: value.to_owned(),
                reason,
            })?;
            if !hosts.iter().any(|h| h == value) {
                hosts.push(value.to_owned());
            }
        }
        Ok(Self(hosts))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The hosts, as given.
    pub fn hosts(&self) -> &[String] {
        &self.0
    }

    /// What a client that asks `asked` is granted: exactly its hosts (the
    /// allow-list never adds any), each covered by an allowed one or a
    /// loopback one; else an error naming the first host outside.
    pub fn grant(&self, asked: &[String]) -> Result<Vec<String>, InsecureError> {
        match asked.iter().find(|h| !self.allows(h)) {
            Some(host) => Err(InsecureError::NotAllowedByDaemon(host.clone())),
            None => Ok(asked.to_vec()),
        }
    }

    /// Whether a client may have `host` spoken to over plain HTTP.
    fn allows(&self, host: &str) -> bool {
        is_loopback(host_name(host)) || self.0.iter().any(|entry| covers(entry, host))
    }
}

/// `Err(reason)` unless `value` is `HOST` or `HOST:PORT` (an IPv6 address
/// in brackets): what a registry reference starts with.
fn check_host(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("empty");
    }
    if value.contains("://") {
        return Err("a host, without a scheme");
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/,@?#".contains(c))
    {
        return Err("a host, without a path or a list");
    }
    let (name, port) = match value.rsplit_once(':') {
        Some((name, port)) if !value.ends_with(']') => (name, Some(port)),
        _ => (value, None),
    };
    let bracketed = name.starts_with('[') && name.ends_with(']');
    if name.is_empty() || (name.contains(':') && !bracketed) {
        return Err("a host name or address");
    }
    match port.map(str::parse::<u16>) {
        Some(Ok(0) | Err(_)) => Err("a port from 1 to 65535"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(hosts: &[&str]) -> InsecureRegistries {
        InsecureRegistries::from_flag("--insecure-registry", hosts).unwrap()
    }

    fn asked(hosts: &[&str]) -> Vec<String> {
        hosts.iter().map(|h| (*h).to_owned()).collect()
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let none = InsecureRegistries::default();
        assert_eq!(none.grant(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(
            none.grant(&asked(&["0.0.0.0:5000"]))
                .unwrap_err()
                .to_string(),
            "plain HTTP to registry 0.0.0.0:5000 is not allowed by build daemon configuration (kilnd's operator can allow it: kilnd --insecure-registry 0.0.0.0:5000)"
        );
    }

    #[test]
    fn a_client_gets_exactly_its_hosts_within_the_list() {
        let list = allowed(&["registry.lan:5000", "mirror.lan"]);
        assert_eq!(
            list.grant(&asked(&["registry.lan:5000"])).unwrap(),
            asked(&["registry.lan:5000"]),
            "the list adds nothing the client did not ask"
        );
        // An entry without a port covers every port of that host.
        assert!(list.grant(&asked(&["mirror.lan", "mirror.lan:80"])).is_ok());
        // One with a port does not cover the host's other ports, nor all of them.
        for outside in [
            "registry.lan:5001",
            "registry.lan",
            "docker.io",
            "REGISTRY.lan:5000",
        ] {
            assert_eq!(
                list.grant(&asked(&["mirror.lan", outside])),
                Err(InsecureError::NotAllowedByDaemon(outside.to_owned())),
                "{outside}"
            );
        }
    }

    #[test]
    fn loopback_is_granted_as_it_changes_nothing() {
        let none = InsecureRegistries::default();
        for host in ["localhost:5000", "127.0.0.1", "127.1.2.3:80", "[::1]:5000"] {
            assert!(none.grant(&asked(&[host])).is_ok(), "{host}");
        }
        // 0.0.0.0 is not a loopback name.
        assert!(none.grant(&asked(&["0.0.0.0:5000"])).is_err());
    }

    #[test]
    fn the_flag_takes_hosts_as_the_cli_does() {
        for good in [
            "registry.lan",
            "registry.lan:5000",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
            "[::1]",
        ] {
            assert!(
                InsecureRegistries::from_flag("--insecure-registry", &[good]).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "",
            "http://registry.lan",
            "registry.lan/path",
            "a.lan,b.lan",
            "registry.lan:",
            "registry.lan:0",
            "registry.lan:99999",
            "fe80::1",
            ":5000",
            "a lan",
        ] {
            let error = InsecureRegistries::from_flag("--insecure-registry", &[bad]).unwrap_err();
            assert!(
                error.to_string().starts_with("--insecure-registry ")
                    && error.to_string().ends_with("(expected HOST or HOST:PORT)"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn repeated_hosts_are_kept_once() {
        let list = allowed(&["a.lan:1", "a.lan:1", "b.lan"]);
        assert_eq!(list.hosts(), ["a.lan:1", "b.lan"]);
    }
}
