//! Inline cache (`--cache-to type=inline`, or `--build-arg
//! BUILDKIT_INLINE_CACHE=1`): the records of the image's own steps in its
//! config, under kiln's key [`INLINE_KEY`] — BuildKit writes its own
//! records under `moby.buildkit.cache.v0`; kiln's keys are not
//! BuildKit's, so it uses a key of its own. A record names a layer by its
//! index in the image, so the config does not depend on how the layers
//! are compressed when they leave. `--cache-from REF` of an image pushed
//! with it reuses its layers. Only `mode=min` is possible inline (the
//! other stages' layers are not in the image), as BuildKit.

use std::collections::BTreeSet;

use kiln_cache::Digest;
use kiln_image::image::Layer;
use serde::{Deserialize, Serialize};

use super::artifact::{MAX_RECORDS, Record};

/// The image config's key that holds kiln's inline cache.
pub const INLINE_KEY: &str = "kiln.buildcache.inline.v1";

#[derive(Debug, Serialize, Deserialize)]
struct Inline {
    records: Vec<InlineRecord>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct InlineRecord {
    key: String,
    /// The index of the layer in the image, bottom first.
    layer: usize,
}

/// The value of [`INLINE_KEY`] for an image of `layers` built by `steps`:
/// each step whose layer is one of the image's. Sorted, so the same build
/// makes the same config (steps finish in any order).
pub fn value(layers: &[Layer], steps: &[(String, Layer)]) -> serde_json::Value {
    let records: BTreeSet<InlineRecord> = steps
        .iter()
        .filter_map(|(key, step)| {
            let layer = layers.iter().position(|l| l.diff_id == step.diff_id)?;
            Some(InlineRecord {
                key: key.clone(),
                layer,
            })
        })
        .collect();
    serde_json::to_value(Inline {
        records: records.into_iter().collect(),
    })
    .unwrap_or_default()
}

/// The records an image's config (`config`, parsed) holds for its
/// manifest's `layers` (digest, media type, size, bottom first); `None`
/// when it holds none. Records naming a layer the image lacks are
/// dropped.
pub(super) fn records(
    config: &serde_json::Value,
    layers: &[(Digest, String, u64)],
) -> Option<Vec<Record>> {
    let inline: Inline = serde_json::from_value(config.get(INLINE_KEY)?.clone()).ok()?;
    let diff_ids = config["rootfs"]["diff_ids"].as_array()?;
    let records = inline
        .records
        .into_iter()
        .take(MAX_RECORDS)
        .filter_map(|r| {
            let (blob, media_type, size) = layers.get(r.layer)?;
            let diff_id = diff_ids.get(r.layer)?.as_str()?.parse().ok()?;
            Some(Record {
                key: r.key,
                blob: blob.clone(),
                diff_id,
                media_type: media_type.clone(),
                size: *size,
            })
        })
        .collect();
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> Layer {
        Layer {
            blob: Digest::of(&[n]),
            diff_id: Digest::of(&[n, n]),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            size: 1,
            annotations: Default::default(),
        }
    }

    #[test]
    fn the_images_steps_round_trip() {
        let layers = [layer(1), layer(2)];
        let steps = vec![
            ("k2".to_owned(), layer(2)),
            ("other-stage".to_owned(), layer(9)),
            ("k1".to_owned(), layer(1)),
        ];
        let value = value(&layers, &steps);
        assert_eq!(
            value,
            serde_json::json!({"records": [{"key": "k1", "layer": 0}, {"key": "k2", "layer": 1}]})
        );
        let config = serde_json::json!({
            INLINE_KEY: value,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        });
        let pushed: Vec<_> = layers
            .iter()
            .map(|l| (Digest::of(l.blob.hex().as_bytes()), "gz".to_owned(), 7))
            .collect();
        let records = records(&config, &pushed).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].key, "k2");
        assert_eq!(records[1].blob, pushed[1].0);
        assert_eq!(records[1].diff_id, layers[1].diff_id);
        assert!(super::records(&serde_json::json!({}), &pushed).is_none());
    }
}
