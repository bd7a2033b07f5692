//! Entitlements: what a build may have beyond the sandbox, as BuildKit's.
//!
//! A Dockerfile alone never gets them. `RUN --security=insecure` (every
//! capability, no `no_new_privs`) needs `security.insecure`; `RUN
//! --network=host`, and every RUN of a `kiln build --network=host`,
//! `network.host`. Three parties must agree, each trusting the next only as
//! far as its own operator allows:
//!
//! - the client asks (`kiln build --allow security.insecure,network.host`;
//!   `--network=host` asks for `network.host` itself, as buildx's does);
//!   embedded, the CLI runs as the machine's own user, so what it asks is
//!   granted;
//! - kilnd grants a client at most what it was started with
//!   (`kilnd --allow-insecure-entitlement …`), else the build fails before
//!   its context is read: BuildKit's "granting entitlement X is not allowed
//!   by build daemon configuration";
//! - the solver checks the whole graph against the grant before any step
//!   runs ([`check_graph`]): "X is not allowed", naming the Dockerfile line
//!   and the flag to add;
//! - a farm worker runs a step that needs one only if the build was granted
//!   it (the step carries the grant) and its own operator allowed it
//!   (`kiln-worker --allow-insecure-entitlement …`): [`check_step`].

use std::collections::BTreeSet;
use std::fmt;

use kiln_frontend::convert::BuildGraph;
use kiln_proto::farm::v1 as farm_pb;
use kiln_proto::ops::v1::{ExecOp, NetworkMode, SecurityMode, op};
use thiserror::Error;

/// One entitlement, by BuildKit's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entitlement {
    /// `network.host`: a RUN step on the host's network.
    NetworkHost,
    /// `security.insecure`: a privileged RUN step.
    SecurityInsecure,
}

impl Entitlement {
    pub const ALL: [Self; 2] = [Self::NetworkHost, Self::SecurityInsecure];

    pub fn name(self) -> &'static str {
        match self {
            Self::NetworkHost => "network.host",
            Self::SecurityInsecure => "security.insecure",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl fmt::Display for Entitlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EntitlementError {
    #[error(
        "{flag} {value}: unknown entitlement {name:?} (kiln knows network.host and security.insecure)"
    )]
    Unknown {
        flag: String,
        value: String,
        name: String,
    },
    /// BuildKit's words, then who can change it.
    #[error(
        "granting entitlement {0} is not allowed by build daemon configuration (kilnd's operator can allow it: kilnd --allow-insecure-entitlement {0})"
    )]
    NotAllowedByDaemon(Entitlement),
    /// A RUN step needs one the build was not granted.
    #[error(
        "{description}: {entitlement} is not allowed (grant it: kiln build --allow {entitlement})"
    )]
    NotGranted {
        /// The step and its Dockerfile line.
        description: String,
        entitlement: Entitlement,
    },
    /// A farm step needs one its build was not granted (kilnd would not
    /// send it; a worker does not take kilnd's word for it).
    #[error("{0} is not allowed: the step's build was not granted it")]
    StepNotGranted(Entitlement),
    /// A farm step needs one this worker's operator did not allow.
    #[error(
        "{0} is not allowed: this worker was not started with --allow-insecure-entitlement {0}"
    )]
    NotAllowedByWorker(Entitlement),
}

/// A set of entitlements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entitlements(BTreeSet<Entitlement>);

impl Entitlements {
    /// The values of `flag` (repeated, each a comma-separated list, as
    /// buildx's `--allow`); every name must be one kiln knows.
    pub fn from_flag<S: AsRef<str>>(flag: &str, values: &[S]) -> Result<Self, EntitlementError> {
        let mut set = BTreeSet::new();
        for value in values {
            let value = value.as_ref();
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let e = Entitlement::parse(name).ok_or_else(|| EntitlementError::Unknown {
                    flag: flag.to_owned(),
                    value: value.to_owned(),
                    name: name.to_owned(),
                })?;
                set.insert(e);
            }
        }
        Ok(Self(set))
    }

    pub fn insert(&mut self, e: Entitlement) {
        self.0.insert(e);
    }

    pub fn contains(&self, e: Entitlement) -> bool {
        self.0.contains(&e)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names, sorted (what travels in messages).
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|e| e.name().to_owned()).collect()
    }

    /// What a service allowed `self` grants a client that asks `asked`:
    /// all of it, or an error naming the first one it may not grant.
    pub fn grant(&self, asked: &Self) -> Result<Self, EntitlementError> {
        match asked.0.iter().find(|e| !self.contains(**e)) {
            Some(e) => Err(EntitlementError::NotAllowedByDaemon(*e)),
            None => Ok(asked.clone()),
        }
    }
}

/// What a RUN step needs: `network_host` is the build's default network
/// being the host's (`kiln build --network=host`).
pub fn required(exec: &ExecOp, network_host: bool) -> Vec<Entitlement> {
    let mut needs = Vec::new();
    let host = exec.network == NetworkMode::Host as i32
        || (network_host && exec.network == NetworkMode::Default as i32);
    if host {
        needs.push(Entitlement::NetworkHost);
    }
    if exec.security == SecurityMode::Insecure as i32 {
        needs.push(Entitlement::SecurityInsecure);
    }
    needs
}

/// Checks every RUN step of `graph` against `granted`, before any runs:
/// the first that needs more fails the build, named with its Dockerfile
/// line.
pub fn check_graph(
    graph: &BuildGraph,
    granted: &Entitlements,
    network_host: bool,
) -> Result<(), EntitlementError> {
    for vertex in &graph.vertices {
        let Some(op::Kind::Exec(exec)) = &vertex.op.kind else {
            continue;
        };
        if let Some(entitlement) = required(exec, network_host)
            .into_iter()
            .find(|e| !granted.contains(*e))
        {
            return Err(EntitlementError::NotGranted {
                description: vertex.meta.described(),
                entitlement,
            });
        }
    }
    Ok(())
}

/// A farm worker's check of a step kilnd sent: what it needs must be in
/// the step's grant (its build's) and in `allowed` (this worker's
/// operator's), whatever kilnd says.
pub fn check_step(step: &farm_pb::RunStep, allowed: &Entitlements) -> Result<(), EntitlementError> {
    let granted = Entitlements::from_flag("the step's entitlements", &step.entitlements)?;
    let needs = [
        (step.privileged, Entitlement::SecurityInsecure),
        (step.network_host, Entitlement::NetworkHost),
    ];
    for (needed, entitlement) in needs {
        if !needed {
            continue;
        }
        if !granted.contains(entitlement) {
            return Err(EntitlementError::StepNotGranted(entitlement));
        }
        if !allowed.contains(entitlement) {
            return Err(EntitlementError::NotAllowedByWorker(entitlement));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kiln_proto::farm::v1::RunStep;

    use super::*;

    fn set(names: &[&str]) -> Entitlements {
        Entitlements::from_flag("--allow", names).unwrap()
    }

    #[test]
    fn flags_take_lists_and_repeats_and_refuse_unknown_names() {
        assert_eq!(
            set(&["network.host,security.insecure"]),
            set(&["security.insecure", "network.host"])
        );
        assert_eq!(set(&[]), Entitlements::default());
        assert_eq!(
            Entitlements::from_flag("--allow", &["network.host,device"]),
            Err(EntitlementError::Unknown {
                flag: "--allow".into(),
                value: "network.host,device".into(),
                name: "device".into(),
            })
        );
        let text = Entitlements::from_flag("--allow-insecure-entitlement", &["Security.Insecure"])
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("--allow-insecure-entitlement Security.Insecure: unknown entitlement"),
            "{text}"
        );
    }

    #[test]
    fn a_daemon_grants_at_most_what_it_allows() {
        let daemon = set(&["security.insecure"]);
        assert_eq!(daemon.grant(&set(&[])), Ok(set(&[])));
        assert_eq!(
            daemon.grant(&set(&["security.insecure"])),
            Ok(set(&["security.insecure"]))
        );
        let refused = daemon.grant(&set(&["security.insecure,network.host"]));
        assert_eq!(
            refused,
            Err(EntitlementError::NotAllowedByDaemon(
                Entitlement::NetworkHost
            ))
        );
        assert!(refused.unwrap_err().to_string().starts_with(
            "granting entitlement network.host is not allowed by build daemon configuration"
        ));
        // Allowed by the daemon is not granted to a client that did not ask.
        assert_eq!(set(&["network.host"]).grant(&set(&[])), Ok(set(&[])));
    }

    #[test]
    fn what_a_run_step_needs() {
        let exec = |network: NetworkMode, security: SecurityMode| ExecOp {
            network: network as i32,
            security: security as i32,
            ..ExecOp::default()
        };
        let plain = exec(NetworkMode::Default, SecurityMode::Sandbox);
        assert!(required(&plain, false).is_empty());
        assert_eq!(required(&plain, true), [Entitlement::NetworkHost]);
        assert!(required(&exec(NetworkMode::None, SecurityMode::Sandbox), true).is_empty());
        assert_eq!(
            required(&exec(NetworkMode::Host, SecurityMode::Insecure), false),
            [Entitlement::NetworkHost, Entitlement::SecurityInsecure]
        );
    }

    #[test]
    fn the_graph_is_checked_with_the_line_of_the_first_step_denied() {
        let dockerfile = "FROM scratch\nRUN --network=none true\nRUN --security=insecure true\n";
        let resolver = kiln_frontend::convert::NoImages;
        let options = kiln_frontend::convert::ConvertOptions::new(&resolver);
        let graph = kiln_frontend::convert::convert_dockerfile(dockerfile, &options).unwrap();
        let denied = check_graph(&graph, &set(&["network.host"]), false).unwrap_err();
        let text = denied.to_string();
        assert!(text.contains("(Dockerfile line 3)"), "{text}");
        assert!(
            text.contains(
                "security.insecure is not allowed (grant it: kiln build --allow security.insecure)"
            ),
            "{text}"
        );
        assert!(check_graph(&graph, &set(&["security.insecure"]), false).is_ok());
        // `--network=host` for the build: the default-network step needs it,
        // the `--network=none` one does not.
        let dockerfile = "FROM scratch\nRUN --network=none true\nRUN true\n";
        let graph = kiln_frontend::convert::convert_dockerfile(dockerfile, &options).unwrap();
        assert!(check_graph(&graph, &set(&[]), false).is_ok());
        let text = check_graph(&graph, &set(&[]), true)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("(Dockerfile line 3)") && text.contains("network.host is not allowed"),
            "{text}"
        );
    }

    #[test]
    fn a_worker_needs_the_builds_grant_and_its_own() {
        let step = |privileged, network_host, granted: &[&str]| RunStep {
            privileged,
            network_host,
            entitlements: granted.iter().map(|s| (*s).to_owned()).collect(),
            ..RunStep::default()
        };
        let both = set(&["security.insecure,network.host"]);
        assert_eq!(check_step(&step(false, false, &[]), &set(&[])), Ok(()));
        // A step kilnd should never have sent: privileged, not granted.
        assert_eq!(
            check_step(&step(true, false, &[]), &both),
            Err(EntitlementError::StepNotGranted(
                Entitlement::SecurityInsecure
            ))
        );
        assert_eq!(
            check_step(&step(false, true, &["security.insecure"]), &both),
            Err(EntitlementError::StepNotGranted(Entitlement::NetworkHost))
        );
        // Granted by kilnd, not by this worker's operator.
        let refused = check_step(
            &step(true, false, &["security.insecure"]),
            &set(&["network.host"]),
        );
        assert_eq!(
            refused,
            Err(EntitlementError::NotAllowedByWorker(
                Entitlement::SecurityInsecure
            ))
        );
        assert_eq!(
            refused.unwrap_err().to_string(),
            "security.insecure is not allowed: this worker was not started with --allow-insecure-entitlement security.insecure"
        );
        assert_eq!(
            check_step(
                &step(true, true, &["security.insecure", "network.host"]),
                &both
            ),
            Ok(())
        );
        // A grant kiln does not know is refused, not ignored.
        assert!(matches!(
            check_step(&step(false, false, &["device"]), &both),
            Err(EntitlementError::Unknown { .. })
        ));
    }
}
