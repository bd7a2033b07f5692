//! One repository on one registry: its base URL, the HTTP client, and the
//! authorization earned by answering the registry's challenge.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};

use super::auth::{self, Challenge, Credentials};
use super::insecure::{covers, host_name, is_loopback};
use super::{RegistryError, Result};

/// How kiln talks to registries.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Hosts (`host[:port]`) spoken to over plain HTTP, besides loopback
    /// ones (`--insecure-registry`).
    pub insecure: Vec<String>,
    /// The platform to pick from a multi-platform image; default: the host's.
    pub platform: Option<kiln_image::image::Platform>,
    /// Upload chunk size in bytes; 0: kiln's default (128 MiB).
    pub chunk_size: u64,
}

impl Options {
    /// Whether `host` is spoken to over plain HTTP: loopback hosts (as
    /// Docker treats them) and those given as insecure.
    fn plain_http(&self, host: &str) -> bool {
        is_loopback(host_name(host)) || self.insecure.iter().any(|h| covers(h, host))
    }
}

/// Rate-limited (429) and unavailable (503) requests are tried this many
/// times in all, waiting `Retry-After` or a doubling backoff between.
const ATTEMPTS: u32 = 4;

pub(super) struct Session {
    http: Client,
    /// The registry as named in the image reference (`docker.io`).
    pub(super) registry: String,
    pub(super) repository: String,
    /// `https://registry-1.docker.io`.
    base: String,
    credentials: Option<Credentials>,
    /// `pull` or `pull,push`.
    actions: &'static str,
    authorization: Mutex<Option<String>>,
}

/// Redirects followed as reqwest's default (at most 10), but never from
/// HTTPS to plain HTTP.
fn no_downgrade() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            attempt.error("a redirect from HTTPS to plain HTTP")
        } else if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else {
            attempt.follow()
        }
    })
}

impl Session {
    pub(super) fn new(
        registry: &str,
        repository: &str,
        options: &Options,
        actions: &'static str,
    ) -> Result<Self> {
        // Docker Hub's API lives on another host than its name.
        let host = if registry == kiln_frontend::reference::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if options.plain_http(registry) {
            "http"
        } else {
            "https"
        };
        let http = Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Layers are big; only a stalled read gives up.
            .timeout(None)
            // Registries send blob reads to their storage (a redirect);
            // never from HTTPS down to plain HTTP, where anyone on the
            // way, or a host nobody allowed, would answer.
            .redirect(no_downgrade())
            .build()
            .map_err(|e| RegistryError::Failed {
                registry: registry.to_owned(),
                repository: repository.to_owned(),
                what: "HTTP client".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            base: format!("{scheme}://{host}"),
            credentials: auth::credentials_for(registry)?,
            actions,
            authorization: Mutex::new(None),
        })
    }

    /// `https://host/v2/<repository>/<path>`.
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// `https://host/v2/`: the API's root, which answers a login's probe.
    pub(super) fn api_root(&self) -> String {
        format!("{}/v2/", self.base)
    }

    /// An absolute URL for a `Location` header, which may be relative.
    pub(super) fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base)
        }
    }

    pub(super) fn http(&self) -> &Client {
        &self.http
    }

    /// An error for `what` that failed with `response`'s status.
    pub(super) fn status_error(&self, what: &str, response: Response) -> RegistryError {
        let status = response.status().as_u16();
        // The registry's own words ({"errors":[{"message":…}]}), short.
        let detail = response
            .text()
            .ok()
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| {
                v["errors"][0]["message"]
                    .as_str()
                    .map(|m| format!(" ({})", m.chars().take(200).collect::<String>()))
            })
            .unwrap_or_default();
        RegistryError::Status {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            what: what.to_owned(),
            status,
            detail,
        }
    }

    pub(super) fn failed(&self, what: &str, reason: impl std::fmt::Display) -> RegistryError {
        RegistryError::Failed {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            what: what.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// Sends the request `build` makes, answering an authentication
    /// challenge once and retrying rate limits. `build` is called for
    /// every attempt (a body cannot be sent twice).
    pub(super) fn send(
        &self,
        what: &str,
        build: &dyn Fn(&Client) -> RequestBuilder,
    ) -> Result<Response> {
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = build(&self.http);
            if let Some(value) = self.current_authorization() {
                request = request.header(AUTHORIZATION, value);
            }
            let response = request
                .send()
                .map_err(|e| self.failed(what, kiln_image::error_chain(&e)))?;
            match response.status() {
                StatusCode::UNAUTHORIZED if !challenged => {
                    challenged = true;
                    let challenge = response
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(Challenge::parse);
                    let Some(challenge) = challenge else {
                        return Err(self.status_error(what, response));
                    };
                    let value = auth::authorize(self, &challenge, self.credentials.as_ref())?;
                    *self
                        .authorization
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    if attempt < ATTEMPTS =>
                {
                    let wait = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map_or(Duration::from_millis(500 << attempt), Duration::from_secs);
                    tracing::info!(registry = %self.registry, "{what}: HTTP {}; retrying in {wait:?}", response.status());
                    std::thread::sleep(wait.min(Duration::from_secs(60)));
                }
                _ => return Ok(response),
            }
        }
    }

    fn current_authorization(&self) -> Option<String> {
        self.authorization
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The scope a token is asked for.
    pub(super) fn scope(&self) -> String {
        format!("repository:{}:{}", self.repository, self.actions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers 429 (Retry-After: 0) twice, then 200.
    #[test]
    fn rate_limits_are_retried() {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            for n in 0..3 {
                let (conn, _) = listener.accept().unwrap();
                let mut reader = std::io::BufReader::new(&conn);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                let answer: &[u8] = if n < 2 {
                    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                };
                (&conn).write_all(answer).unwrap();
            }
        });
        let session = Session::new(&addr, "r", &Options::default(), "pull").unwrap();
        let url = session.url("manifests/1");
        let response = session.send("manifest 1", &|http| http.get(&url)).unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        server.join().unwrap();
    }

    #[test]
    fn loopback_and_listed_hosts_use_plain_http() {
        let o = Options {
            insecure: vec!["registry.lan:5000".into()],
            ..Options::default()
        };
        assert!(o.plain_http("127.0.0.1:5000"));
        assert!(o.plain_http("localhost"));
        assert!(o.plain_http("registry.lan:5000"));
        assert!(!o.plain_http("registry.lan:5001"));
        assert!(!o.plain_http("docker.io"));
        assert!(o.plain_http("127.1.2.3:80"));
        assert!(
            !o.plain_http("127.example.com"),
            "a DNS name is not loopback"
        );
    }
}
