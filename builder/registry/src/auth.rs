//! Registry authentication: `WWW-Authenticate` challenges (basic, and
//! bearer tokens from the realm the registry names, as Docker Hub uses),
//! and credentials where Docker keeps them — `~/.docker/config.json`
//! (`auths`), or a `docker-credential-*` helper (`credHelpers`,
//! `credsStore`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::session::{Options, Session};
use super::{RegistryError, Result};

/// A user name and password (or token). `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn basic(&self) -> String {
        format!(
            "Basic {}",
            BASE64.encode(format!("{}:{}", self.username, self.secret))
        )
    }
}

/// What a registry's 401 asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// `Basic realm="x"` or `Bearer realm="https://…",service="…",scope="…"`.
    pub(super) fn parse(header: &str) -> Option<Self> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header, ""));
        let param = |name: &str| -> Option<String> {
            let mut rest = params;
            while let Some((key, value)) = rest.split_once('=') {
                let key = key.trim().trim_start_matches(',').trim();
                let (value, after) = match value.strip_prefix('"') {
                    Some(quoted) => {
                        let end = quoted.find('"')?;
                        (&quoted[..end], &quoted[end + 1..])
                    }
                    None => value.split_once(',').unwrap_or((value, "")),
                };
                if key.eq_ignore_ascii_case(name) {
                    return Some(value.to_owned());
                }
                rest = after;
            }
            None
        };
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Self::Basic),
            "bearer" => Some(Self::Bearer {
                realm: param("realm")?,
                service: param("service"),
            }),
            _ => None,
        }
    }
}

/// The `Authorization` value that answers `challenge`.
pub(super) fn authorize(
    session: &Session,
    challenge: &Challenge,
    credentials: Option<&Credentials>,
) -> Result<String> {
    match challenge {
        Challenge::Basic => credentials.map(Credentials::basic).ok_or_else(|| {
            session.failed(
                "authentication",
                format!(
                    "the registry asks for a password (kiln login {})",
                    session.registry
                ),
            )
        }),
        Challenge::Bearer { realm, service } => {
            let mut query = vec![("scope", session.scope())];
            if let Some(service) = service {
                query.push(("service", service.clone()));
            }
            let mut request = session.http().get(realm).query(&query);
            if let Some(c) = credentials {
                request = request.header(reqwest::header::AUTHORIZATION, c.basic());
            }
            let response = request
                .send()
                .map_err(|e| session.failed("getting a token", kiln_image::error_chain(&e)))?;
            if !response.status().is_success() {
                return Err(session.status_error("getting a token", response));
            }
            let body: serde_json::Value = response
                .json()
                .map_err(|e| session.failed("getting a token", e))?;
            let token = body["token"]
                .as_str()
                .or_else(|| body["access_token"].as_str())
                .ok_or_else(|| session.failed("getting a token", "no token in the answer"))?;
            Ok(format!("Bearer {token}"))
        }
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

fn read_config() -> Result<serde_json::Value> {
    let Some(path) = config_path() else {
        return Ok(serde_json::json!({}));
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Credentials(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({})),
        Err(e) => Err(RegistryError::Credentials(format!(
            "{}: {e}",
            path.display()
        ))),
    }
}

/// The keys Docker may have stored a registry's entry under.
fn config_keys(registry: &str) -> Vec<String> {
    if registry == kiln_frontend::reference::DOCKER_HUB {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ]
    } else {
        vec![
            registry.to_owned(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ]
    }
}

/// The credentials Docker's configuration holds for `registry`, if any.
pub(super) fn credentials_for(registry: &str) -> Result<Option<Credentials>> {
    let config = read_config()?;
    let keys = config_keys(registry);
    let helper = keys
        .iter()
        .find_map(|k| config["credHelpers"][k].as_str())
        .or_else(|| config["credsStore"].as_str());
    if let Some(helper) = helper
        && let Some(found) = helper_get(helper, &keys[0])?
    {
        return Ok(Some(found));
    }
    for key in &keys {
        let entry = &config["auths"][key];
        if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
            let decoded = BASE64
                .decode(auth)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    RegistryError::Credentials(format!("the auths entry of {key} is not base64"))
                })?;
            let (username, secret) = decoded.split_once(':').ok_or_else(|| {
                RegistryError::Credentials(format!("the auths entry of {key} has no user:password"))
            })?;
            return Ok(Some(Credentials {
                username: username.to_owned(),
                secret: secret.to_owned(),
            }));
        }
        if let (Some(username), Some(secret)) =
            (entry["username"].as_str(), entry["password"].as_str())
        {
            return Ok(Some(Credentials {
                username: username.to_owned(),
                secret: secret.to_owned(),
            }));
        }
    }
    Ok(None)
}

/// `docker-credential-<helper> get`; `None` when the helper knows nothing
/// of `server` or is not installed.
fn helper_get(helper: &str, server: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{helper}");
    let Ok(mut child) = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        tracing::debug!("{program} is not installed");
        return Ok(None);
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| RegistryError::Credentials(format!("{program}: {e}")))?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| RegistryError::Credentials(format!("{program} answered no JSON")))?;
    Ok(match (v["Username"].as_str(), v["Secret"].as_str()) {
        (Some(username), Some(secret)) => Some(Credentials {
            username: username.to_owned(),
            secret: secret.to_owned(),
        }),
        _ => None,
    })
}

/// `kiln login`: checks `credentials` against `registry` (its `/v2/`
/// challenge), then stores them as Docker does — in the `credsStore`
/// helper when one is set, else base64 in `auths`.
pub fn login(registry: &str, credentials: &Credentials, options: &Options) -> Result<PathBuf> {
    let session = Session::new(registry, "", options, "pull")?;
    let probe = session.http().get(session.api_root());
    let response = probe
        .send()
        .map_err(|e| session.failed("logging in", kiln_image::error_chain(&e)))?;
    if response.status() == reqwest::StatusCode::UNAUTHORIZED {
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
            .ok_or_else(|| session.failed("logging in", "HTTP 401 without a challenge"))?;
        let value = authorize(&session, &challenge, Some(credentials))?;
        let check = session
            .http()
            .get(session.api_root())
            .header(reqwest::header::AUTHORIZATION, value)
            .send()
            .map_err(|e| session.failed("logging in", kiln_image::error_chain(&e)))?;
        if !check.status().is_success() {
            return Err(session.status_error("logging in", check));
        }
    } else if !response.status().is_success() {
        return Err(session.status_error("logging in", response));
    }
    let path = config_path()
        .ok_or_else(|| RegistryError::Credentials("no $HOME or $DOCKER_CONFIG".into()))?;
    let mut config = read_config()?;
    let key = config_keys(registry).swap_remove(0);
    if let Some(helper) = config["credsStore"].as_str() {
        helper_store(helper, &key, credentials)?;
        return Ok(path);
    }
    if !config["auths"].is_object() {
        config["auths"] = serde_json::json!({});
    }
    config["auths"][&key] = serde_json::json!({
        "auth": BASE64.encode(format!("{}:{}", credentials.username, credentials.secret)),
    });
    write_private(&path, &config)?;
    Ok(path)
}

fn helper_store(helper: &str, server: &str, c: &Credentials) -> Result<()> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("store")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| RegistryError::Credentials(format!("{program}: {e}")))?;
    let body = serde_json::json!({"ServerURL": server, "Username": c.username, "Secret": c.secret});
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body.to_string().as_bytes());
    }
    let status = child
        .wait()
        .map_err(|e| RegistryError::Credentials(format!("{program}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(RegistryError::Credentials(format!(
            "{program} store failed"
        )))
    }
}

/// Writes the config readable by its owner only, through a temporary file.
fn write_private(path: &std::path::Path, config: &serde_json::Value) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| RegistryError::Credentials(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.kiln-tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    let text = serde_json::to_vec_pretty(config).unwrap_or_default();
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn credentials_never_print_their_secret() {
        let c = Credentials {
            username: "me".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
