//! The image config a stage produces, in Docker's JSON shape.
//!
//! `oci-spec`'s config type drops Docker's `Healthcheck`, `OnBuild`, `Shell`
//! and `ArgsEscaped`, which Dockerfiles set and base images carry, so kiln
//! has its own. Maps are `BTreeMap`s so the same config always serializes to
//! the same bytes (and so the same image digest).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An empty JSON object, the value type of Docker's set-like maps
/// (`"ExposedPorts": {"80/tcp": {}}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

/// `config` of an image configuration (Docker's `container.Config` subset
/// that images carry).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Empty>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

/// Docker's `HealthConfig`; durations in nanoseconds, 0 = default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One entry of the image's history: what an instruction did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The instruction, e.g. `RUN /bin/sh -c make`.
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The instruction changed only the config, not the filesystem.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// The value of `name` in `Env`.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .as_deref()
            .and_then(|env| crate::shell::Vars::var(env, name))
    }

    /// Sets `name=value` in `Env`, in place when already there.
    pub fn set_env(&mut self, name: &str, value: &str) {
        let entry = format!("{name}={value}");
        let env = self.env.get_or_insert_with(Vec::new);
        match env
            .iter_mut()
            .find(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == name)
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_field_names() {
        let mut c = ImageConfig {
            exposed_ports: Some([("80/tcp".to_owned(), Empty {})].into()),
            working_dir: Some("/app".into()),
            healthcheck: Some(HealthConfig {
                test: vec!["NONE".into()],
                ..HealthConfig::default()
            }),
            on_build: Some(vec!["RUN x".into()]),
            ..ImageConfig::default()
        };
        c.set_env("A", "1");
        c.set_env("A", "2");
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"ExposedPorts":{"80/tcp":{}},"Env":["A=2"],"WorkingDir":"/app","Healthcheck":{"Test":["NONE"]},"OnBuild":["RUN x"]}"#
        );
        let back: ImageConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.env_var("A"), Some("2"));
    }
}
