//! The build graph: ops keyed by digest, in an order where every op comes
//! after its inputs.

use std::collections::HashMap;

use kiln_proto::ops::v1::{Op, op};
use prost::Message;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::parser::Location;

/// One vertex: an op, its digest and what to show for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vertex {
    /// `sha256:<hex>` of the op's canonical encoding (see `ops.proto`).
    pub digest: String,
    pub op: Op,
    pub meta: VertexMeta,
}

/// What progress and errors show for a vertex. Never part of a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VertexMeta {
    /// `[build 2/5] RUN make`.
    pub description: String,
    /// Index of the stage that made the vertex; `None` for shared ones (the
    /// build context).
    pub stage: Option<usize>,
    /// The instruction's lines in the Dockerfile; `None` for ops no
    /// instruction wrote (the build context).
    pub location: Option<Location>,
}

impl VertexMeta {
    /// The vertex as errors name it: its description and Dockerfile line.
    pub fn described(&self) -> String {
        match self.location {
            Some(l) => format!("{} (Dockerfile line {})", self.description, l.start),
            None => self.description.clone(),
        }
    }
}

/// The digest of an op: SHA-256 of its protobuf encoding with the fields
/// that do not affect the result cleared: proxy variables, and the
/// addresses of `--add-host` names (as BuildKit's `ExecOp.CacheMap`: a
/// name's address is the environment's, as a proxy's is).
pub fn op_digest(op: &Op) -> String {
    let mut buf = Vec::new();
    op_digest_with(op, &mut buf)
}

/// The digest of what `op` does, its inputs left out: a cache key adds
/// its inputs' keys in their place, as BuildKit's cache map does, so that
/// a step over the same content keys the same whichever digest pinned its
/// base image (the manifest of a compressed copy, another name).
pub fn op_cache_digest(op: &Op) -> String {
    if op.inputs.is_empty() {
        return op_digest(op);
    }
    op_digest(&Op {
        inputs: Vec::new(),
        ..op.clone()
    })
}

/// [`op_digest`], encoding into `buf` (cleared first) to spare an
/// allocation per op.
fn op_digest_with(op: &Op, buf: &mut Vec<u8>) -> String {
    buf.clear();
    match &op.kind {
        Some(op::Kind::Exec(exec))
            if !exec.proxy_env.is_empty()
                || exec
                    .meta
                    .as_ref()
                    .is_some_and(|m| !m.extra_hosts.is_empty()) =>
        {
            let mut stripped = op.clone();
            if let Some(op::Kind::Exec(exec)) = &mut stripped.kind {
                exec.proxy_env.clear();
                for host in exec.meta.iter_mut().flat_map(|m| &mut m.extra_hosts) {
                    host.ip.clear();
                }
            }
            stripped.encode_raw(buf);
        }
        _ => op.encode_raw(buf),
    }
    sha256_digest(buf)
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash.iter() {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0xf)] as char);
    }
    out
}

/// Collects vertices, merging identical ones.
#[derive(Debug, Default)]
pub(super) struct GraphBuilder {
    pub(super) vertices: Vec<Vertex>,
    by_digest: HashMap<String, usize>,
    /// Scratch space for encoding ops.
    buf: Vec<u8>,
}

impl GraphBuilder {
    /// Adds `op` (whose inputs must already be added) and returns its digest.
    /// An op already present keeps its first metadata.
    pub(super) fn add(&mut self, op: Op, meta: VertexMeta) -> String {
        let digest = op_digest_with(&op, &mut self.buf);
        if !self.by_digest.contains_key(&digest) {
            self.by_digest.insert(digest.clone(), self.vertices.len());
            self.vertices.push(Vertex {
                digest: digest.clone(),
                op,
                meta,
            });
        }
        digest
    }
}
