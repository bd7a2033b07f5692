//! `--progress rawjson`: BuildKit's `SolveStatus` as buildx prints it, one
//! JSON object per line on standard error, so that tools written for
//! buildx's output read kiln's. Its shape is BuildKit's `client/graph.go`:
//! `vertexes` (`digest`, `name`, `started`, `completed`, `cached`,
//! `error`), `statuses` (a download's bytes), `logs` (`vertex`, `stream`,
//! `data` in base64, `timestamp`) and `warnings` (`level`, `short` and
//! `detail` in base64, `url`, `range`).
//!
//! A vertex's `digest` names it within the build: kiln's events number
//! steps, so the digest is that of the build's own token, the number and
//! the step's name — unique per step and build, as BuildKit's are per op.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use kiln_cache::Digest;
use kiln_frontend::checks::Violation;
use kiln_solver::pipeline::Notice;
use kiln_solver::solve::Event;
use serde_json::{Value, json};

/// What the output remembers of each step: its digest, name and start.
struct Vertex {
    digest: String,
    name: String,
    started: String,
}

/// One build's events as `SolveStatus` lines.
pub(crate) struct RawJson {
    /// Makes this build's vertex digests its own.
    token: String,
    vertexes: HashMap<usize, Vertex>,
    /// Notices become vertexes of their own, numbered after the steps.
    notices: usize,
}

/// RFC 3339 with nanoseconds, as Go marshals a `time.Time`.
fn now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = kiln_image::image::config::rfc3339(since.as_secs());
    let whole = secs.strip_suffix('Z').unwrap_or(&secs);
    format!("{whole}.{:09}Z", since.subsec_nanos())
}

fn encoded(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl RawJson {
    pub(crate) fn new() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            token: format!("{}:{}", std::process::id(), since.as_nanos()),
            vertexes: HashMap::new(),
            notices: 0,
        }
    }

    /// The `SolveStatus` line of `event`.
    pub(crate) fn event(&mut self, event: Event) -> Value {
        let at = now();
        match event {
            Event::Started {
                vertex,
                description,
            } => {
                let v = self.start(vertex, description, &at);
                status_of(json!({"digest": v.digest, "name": v.name, "started": v.started}))
            }
            Event::Cached { vertex } => {
                let v = self.known(vertex, &at);
                status_of(json!({
                    "digest": v.digest, "name": v.name, "started": v.started,
                    "completed": at, "cached": true,
                }))
            }
            Event::Done { vertex, .. } => {
                let v = self.known(vertex, &at);
                status_of(json!({
                    "digest": v.digest, "name": v.name, "started": v.started, "completed": at,
                }))
            }
            Event::Failed { vertex, error } => {
                let v = self.known(vertex, &at);
                status_of(json!({
                    "digest": v.digest, "name": v.name, "started": v.started,
                    "completed": at, "error": error,
                }))
            }
            Event::Log { vertex, line } => {
                let v = self.known(vertex, &at);
                let mut data = line.into_bytes();
                data.push(b'\n');
                json!({"logs": [{
                    "vertex": v.digest, "stream": 1, "data": encoded(&data), "timestamp": at,
                }]})
            }
            Event::Bytes {
                vertex,
                current,
                total,
            } => {
                let v = self.known(vertex, &at);
                let mut status = json!({
                    "id": format!("downloading {}", v.name), "vertex": v.digest,
                    "name": "downloading", "current": current, "timestamp": at,
                    "started": v.started,
                });
                if let Some(total) = total {
                    status["total"] = total.into();
                }
                json!({"statuses": [status]})
            }
            Event::Warning { warning } => warning_of(&warning),
        }
    }

    /// A pipeline notice (a cache imported, an image pushed) as a vertex
    /// of its own, started and completed.
    pub(crate) fn notice(&mut self, notice: &Notice) -> Value {
        let at = now();
        self.notices += 1;
        let name = match notice.level {
            kiln_solver::pipeline::Level::Info => notice.text.clone(),
            kiln_solver::pipeline::Level::Warning => format!("warning: {}", notice.text),
        };
        let digest = self.digest(&format!("notice {}", self.notices), &name);
        status_of(json!({"digest": digest, "name": name, "started": at, "completed": at}))
    }

    fn digest(&self, id: &str, name: &str) -> String {
        Digest::of(format!("{}\n{id}\n{name}", self.token).as_bytes()).to_string()
    }

    fn start(&mut self, vertex: usize, name: String, at: &str) -> &Vertex {
        let digest = self.digest(&vertex.to_string(), &name);
        self.vertexes.entry(vertex).or_insert(Vertex {
            digest,
            name,
            started: at.to_owned(),
        })
    }

    /// The vertex an event names; one never started (an event of a step
    /// whose start this output missed) gets a name of its number.
    fn known(&mut self, vertex: usize, at: &str) -> &Vertex {
        if !self.vertexes.contains_key(&vertex) {
            self.start(vertex, format!("#{vertex}"), at);
        }
        &self.vertexes[&vertex]
    }
}

fn status_of(vertex: Value) -> Value {
    json!({"vertexes": [vertex]})
}

/// A build check's warning as BuildKit's `VertexWarning`.
fn warning_of(warning: &Violation) -> Value {
    let mut w = json!({
        "level": 1,
        "short": encoded(warning.short().as_bytes()),
        "detail": [encoded(warning.message.as_bytes())],
        "url": warning.url,
    });
    if warning.location.start > 0 {
        w["range"] = json!([{
            "start": {"line": warning.location.start},
            "end": {"line": warning.location.end.max(warning.location.start)},
        }]);
    }
    json!({"warnings": [w]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> String {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_step_is_a_vertex_with_its_logs() {
        let mut raw = RawJson::new();
        let started = raw.event(Event::Started {
            vertex: 3,
            description: "[stage-0 2/2] RUN echo hi".into(),
        });
        let v = &started["vertexes"][0];
        assert_eq!(v["name"], "[stage-0 2/2] RUN echo hi");
        let digest = v["digest"].as_str().unwrap().to_owned();
        assert!(digest.starts_with("sha256:") && digest.len() == 71);
        assert!(v["started"].as_str().unwrap().ends_with('Z'));
        assert!(v.get("completed").is_none());

        let log = raw.event(Event::Log {
            vertex: 3,
            line: "hi".into(),
        });
        assert_eq!(log["logs"][0]["vertex"], digest.as_str());
        assert_eq!(log["logs"][0]["stream"], 1);
        assert_eq!(decode(log["logs"][0]["data"].as_str().unwrap()), "hi\n");

        let done = raw.event(Event::Done {
            vertex: 3,
            seconds: 0.1,
        });
        assert_eq!(done["vertexes"][0]["digest"], digest.as_str());
        assert!(done["vertexes"][0]["completed"].is_string());

        let failed = raw.event(Event::Failed {
            vertex: 4,
            error: "exit code 1".into(),
        });
        assert_eq!(failed["vertexes"][0]["error"], "exit code 1");
        assert_ne!(failed["vertexes"][0]["digest"], digest.as_str());
    }

    #[test]
    fn a_cached_step_and_a_download() {
        let mut raw = RawJson::new();
        raw.event(Event::Started {
            vertex: 1,
            description: "[1/2] ADD https://x/y /y".into(),
        });
        let bytes = raw.event(Event::Bytes {
            vertex: 1,
            current: 10,
            total: Some(20),
        });
        assert_eq!(bytes["statuses"][0]["current"], 10);
        assert_eq!(bytes["statuses"][0]["total"], 20);
        let cached = raw.event(Event::Cached { vertex: 2 });
        assert_eq!(cached["vertexes"][0]["cached"], true);
    }
}
