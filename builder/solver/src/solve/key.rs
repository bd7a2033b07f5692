//! A step's cache key, in one place: what it is made of, as data.
//!
//! A vertex's key is the SHA-256 of its op's digest without its inputs
//! (`op_cache_digest`), its inputs' keys (in
//! input order), the digest of the context files it reads, the build's
//! `SOURCE_DATE_EPOCH` (clamped mtimes make other layer bytes) and, for a
//! RUN on the default network, the build's `--network` when not the
//! private one. What the vertices after it are keyed by is
//! [`passed_on`]: that key and what the step made.

use kiln_cache::Hasher;
use kiln_proto::ops::v1::op::Kind;
use kiln_proto::ops::v1::{NetworkMode, Op, source_op};
use kiln_worker::sandbox::spec::Network;

use super::Fs;

/// What a vertex's cache key is computed from.
#[derive(Debug)]
pub(super) struct StepKey<'a> {
    /// The op's digest (cache-irrelevant fields already cleared).
    pub op_digest: &'a str,
    /// The keys its inputs passed on, in input order.
    pub inputs: Vec<&'a str>,
    /// The digests of the context files it reads (`context.rs`), joined.
    pub context: String,
    pub source_date_epoch: Option<u64>,
    /// The build's default network, when it changes what the op does.
    pub network: Option<Network>,
}

impl<'a> StepKey<'a> {
    /// The parts of `op`'s key the build adds to what the graph says.
    pub(super) fn new(
        op_digest: &'a str,
        op: &Op,
        inputs: Vec<&'a str>,
        context: String,
        source_date_epoch: Option<u64>,
        network: Network,
    ) -> Self {
        let default_network = matches!(
            &op.kind,
            Some(Kind::Exec(e)) if e.network == NetworkMode::Default as i32
        );
        Self {
            op_digest,
            inputs,
            context,
            source_date_epoch,
            network: (default_network && network != Network::Private).then_some(network),
        }
    }

    /// The key: a `sha256:` digest.
    pub(super) fn digest(&self) -> String {
        let mut h = Hasher::default();
        h.update(self.op_digest.as_bytes());
        for key in &self.inputs {
            h.update(key.as_bytes());
        }
        h.update(self.context.as_bytes());
        if let Some(epoch) = self.source_date_epoch {
            h.update(format!("source-date-epoch={epoch}").as_bytes());
        }
        match self.network {
            Some(Network::None) => h.update(b"network=none"),
            Some(Network::Host) => h.update(b"network=host"),
            Some(Network::Private) | None => {}
        }
        h.finish().to_string()
    }

    /// The key of this step's line of results: the same op on the same
    /// inputs, whatever the context files it reads hold. The solver keeps
    /// the step's latest result under it, so that a copy run again links
    /// the files it would write again (`kiln_worker::fileop::Onto`).
    /// `None` for a step that reads no context file.
    pub(super) fn lineage(&self) -> Option<String> {
        if self.context.is_empty() {
            return None;
        }
        let line = StepKey {
            op_digest: self.op_digest,
            inputs: self.inputs.clone(),
            context: String::new(),
            source_date_epoch: self.source_date_epoch,
            network: self.network,
        };
        Some(format!("previous:{}", line.digest()))
    }
}

/// The key the vertices after a step are keyed by: for a RUN or file step,
/// its key and the diff ID of the layer it made, so a step run again
/// (`--no-cache`, `--no-cache-filter`) that makes the same layer leaves the
/// steps after it cached, and one that makes another layer re-runs them;
/// for a download or checkout, its key and what was fetched; for a base
/// image, its layers alone ([`image_key`]); else the key.
pub(super) fn passed_on(key: String, op: &Op, made: &Fs) -> String {
    if let (Some(Kind::Source(source)), Fs::Layers(chain)) = (&op.kind, made)
        && matches!(source.source, Some(source_op::Source::Image(_)))
    {
        return image_key(chain);
    }
    let made_part = match (&op.kind, made) {
        (Some(Kind::Exec(_) | Kind::File(_)), Fs::Layers(chain)) => {
            Some(chain.last().map(|top| top.diff_id.to_string()))
        }
        (_, Fs::Fetched(fetched)) => Some(Some(fetched.digest.clone())),
        _ => None,
    };
    let Some(part) = made_part else {
        return key;
    };
    let mut h = Hasher::default();
    h.update(key.as_bytes());
    if let Some(part) = part {
        h.update(part.as_bytes());
    }
    h.finish().to_string()
}

/// What a base image passes on: its layers' diff IDs, as BuildKit keys an
/// image source by its content — not the name or the manifest digest the
/// frontend pinned, which change when the same image comes compressed
/// otherwise (a build's own image pushed, then pulled into another store).
fn image_key(chain: &[kiln_image::image::Layer]) -> String {
    let mut h = Hasher::default();
    h.update(b"image layers\0");
    for layer in chain {
        h.update(layer.diff_id.to_string().as_bytes());
        h.update(b"\0");
    }
    h.finish().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::ops::v1::ExecOp;

    fn exec(network: NetworkMode) -> Op {
        Op {
            kind: Some(Kind::Exec(ExecOp {
                network: network as i32,
                ..ExecOp::default()
            })),
            ..Op::default()
        }
    }

    #[test]
    fn each_part_changes_the_key() {
        let op = exec(NetworkMode::Default);
        let base = StepKey::new(
            "sha256:op",
            &op,
            vec!["a"],
            String::new(),
            None,
            Network::Private,
        );
        let keys = [
            base.digest(),
            StepKey {
                op_digest: "sha256:other",
                ..StepKey::new("", &op, vec!["a"], String::new(), None, Network::Private)
            }
            .digest(),
            StepKey::new(
                "sha256:op",
                &op,
                vec!["b"],
                String::new(),
                None,
                Network::Private,
            )
            .digest(),
            StepKey::new(
                "sha256:op",
                &op,
                vec!["a"],
                "ctx".into(),
                None,
                Network::Private,
            )
            .digest(),
            StepKey::new(
                "sha256:op",
                &op,
                vec!["a"],
                String::new(),
                Some(0),
                Network::Private,
            )
            .digest(),
            StepKey::new(
                "sha256:op",
                &op,
                vec!["a"],
                String::new(),
                None,
                Network::None,
            )
            .digest(),
            StepKey::new(
                "sha256:op",
                &op,
                vec!["a"],
                String::new(),
                None,
                Network::Host,
            )
            .digest(),
        ];
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:#?}");
        assert_eq!(base.digest(), base.digest());
    }

    #[test]
    fn the_build_network_counts_only_for_a_default_network_run() {
        let own = exec(NetworkMode::None);
        let key = |network| {
            StepKey::new("sha256:op", &own, vec![], String::new(), None, network).digest()
        };
        assert_eq!(key(Network::Private), key(Network::Host));
        let file = Op::default();
        let key = |network| {
            StepKey::new("sha256:op", &file, vec![], String::new(), None, network).digest()
        };
        assert_eq!(key(Network::Private), key(Network::None));
    }

    #[test]
    fn a_step_passes_on_what_it_made() {
        use kiln_image::image::Layer;
        let layer = |diff: &str| Layer {
            blob: kiln_cache::Digest::of(b"blob"),
            diff_id: kiln_cache::Digest::of(diff.as_bytes()),
            media_type: String::new(),
            size: 0,
            annotations: std::collections::BTreeMap::new(),
        };
        let op = exec(NetworkMode::Default);
        let made = |diff| passed_on("k".into(), &op, &Fs::Layers(vec![layer(diff)]));
        assert_eq!(made("one"), made("one"));
        assert_ne!(made("one"), made("two"));
        assert_ne!(made("one"), "k");
        let merge = Op::default();
        assert_eq!(
            passed_on("k".into(), &merge, &Fs::Layers(vec![layer("one")])),
            "k"
        );
    }

    #[test]
    fn a_base_image_passes_on_its_layers_whatever_names_it() {
        use kiln_proto::ops::v1::{ImageSource, SourceOp};
        let image = |reference: &str| Op {
            kind: Some(Kind::Source(SourceOp {
                source: Some(source_op::Source::Image(ImageSource {
                    reference: reference.into(),
                })),
            })),
            ..Op::default()
        };
        let layer = |n: u8| kiln_image::image::Layer {
            blob: kiln_cache::Digest::of(&[n, 0]),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: 1,
            diff_id: kiln_cache::Digest::of(&[n]),
            annotations: std::collections::BTreeMap::new(),
        };
        let made = Fs::Layers(vec![layer(1), layer(2)]);
        // Pinned to the manifest of its compressed copy, or another name.
        let pushed = passed_on("k1".into(), &image("a@sha256:1"), &made);
        let pulled = passed_on("k2".into(), &image("b@sha256:2"), &made);
        assert_eq!(pushed, pulled);
        let other = Fs::Layers(vec![layer(1), layer(3)]);
        assert_ne!(pushed, passed_on("k1".into(), &image("a@sha256:1"), &other));
    }
}
