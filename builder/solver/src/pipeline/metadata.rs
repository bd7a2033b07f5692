//! What a build's result tells the pipeline that ran it
//! (`--metadata-file`, `--iidfile`), in buildx's keys and shapes, so that a
//! CI step reading `containerimage.digest` after `docker buildx build`
//! reads it after `kiln build` too. Made where the image is (embedded, or
//! kilnd: it travels in `BuildResult.metadata`), written by the client.
//!
//! Not written: `buildx.build.provenance` (kiln makes no provenance
//! attestation) and `buildx.build.warnings` (buildx writes it only when
//! `BUILDX_METADATA_WARNINGS` asks).

use kiln_cache::{Digest, Store};
use kiln_image::image::{self, ImageError};
use serde_json::{Map, Value, json};

use crate::build::Built;

/// The image a build made, as buildx's metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// `buildx.build.ref`: `kiln/NODE/ID`, buildx's `builder/node/ref`.
    pub build_ref: String,
    /// The manifest, or for several platforms the index, as it left the
    /// machine when it did (pushed), else as the store holds it.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// The config's digest, for one platform only (an index has none).
    pub config: Option<Digest>,
    /// The config's `created`, for one platform only.
    pub created: Option<String>,
    /// The full names tagged (and pushed).
    pub names: Vec<String>,
}

impl Metadata {
    /// The metadata of `built`, named `names`, built as `build_ref`.
    pub fn of(
        store: &Store,
        built: &Built,
        names: &[String],
        build_ref: String,
    ) -> Result<Self, ImageError> {
        let digest = built.leaving().clone();
        // Its size and whether it is an index from one read; its media
        // type as a tag records it (its JSON checked).
        let bytes = image::read_metadata(store, &digest)?;
        let media_type = image::media_type_of(store, &digest)?;
        let (config, created) = if image::index::is_index(&bytes) {
            (None, None)
        } else {
            let img = image::read_image(store, &digest, &image::host_platform())?;
            (Some(img.config_digest), img.config.created)
        };
        Ok(Self {
            build_ref,
            digest,
            media_type,
            size: bytes.len() as u64,
            config,
            created,
            names: names.to_vec(),
        })
    }

    /// The image ID `--iidfile` holds: the config's digest, else (several
    /// platforms) the index's, as buildx writes it.
    pub fn image_id(&self) -> &Digest {
        self.config.as_ref().unwrap_or(&self.digest)
    }

    /// The JSON object `--metadata-file` holds.
    pub fn to_json(&self) -> Value {
        let mut annotations = Map::new();
        if let Some(config) = &self.config {
            annotations.insert("config.digest".into(), config.to_string().into());
        }
        if let Some(created) = &self.created {
            annotations.insert(
                "org.opencontainers.image.created".into(),
                created.clone().into(),
            );
        }
        let mut descriptor = json!({
            "mediaType": self.media_type,
            "digest": self.digest.to_string(),
            "size": self.size,
        });
        if !annotations.is_empty() {
            descriptor["annotations"] = Value::Object(annotations);
        }
        let mut out = json!({
            "buildx.build.ref": self.build_ref,
            "containerimage.descriptor": descriptor,
            "containerimage.digest": self.digest.to_string(),
        });
        if let Some(config) = &self.config {
            out["containerimage.config.digest"] = config.to_string().into();
        }
        if !self.names.is_empty() {
            out["image.name"] = self.names.join(",").into();
        }
        out
    }
}

/// A new `buildx.build.ref` for a build on `node` (`embedded`, `kilnd`):
/// 25 random lower-case letters and digits, as BuildKit's identity IDs.
pub fn new_build_ref(node: &str) -> Result<String, std::io::Error> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = [0u8; 25];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    // 256 = 7 * 36 + 4: the bias toward the first four is too small to
    // matter for an id that only needs to be unique.
    let id: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    Ok(format!("kiln/{node}/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn one_platform_has_buildx_keys() {
        let m = Metadata {
            build_ref: "kiln/embedded/abc".into(),
            digest: digest('a'),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 506,
            config: Some(digest('b')),
            created: Some("2022-02-08T21:28:03Z".into()),
            names: vec!["docker.io/library/a:1".into(), "r.lan/a:1".into()],
        };
        assert_eq!(
            m.to_json(),
            json!({
                "buildx.build.ref": "kiln/embedded/abc",
                "containerimage.config.digest": digest('b').to_string(),
                "containerimage.descriptor": {
                    "annotations": {
                        "config.digest": digest('b').to_string(),
                        "org.opencontainers.image.created": "2022-02-08T21:28:03Z",
                    },
                    "digest": digest('a').to_string(),
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "size": 506,
                },
                "containerimage.digest": digest('a').to_string(),
                "image.name": "docker.io/library/a:1,r.lan/a:1",
            })
        );
        assert_eq!(m.image_id(), &digest('b'));
    }

    #[test]
    fn an_index_has_no_config_and_its_own_id() {
        let m = Metadata {
            build_ref: "kiln/kilnd/x".into(),
            digest: digest('c'),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            size: 9,
            config: None,
            created: None,
            names: Vec::new(),
        };
        let j = m.to_json();
        assert!(j.get("containerimage.config.digest").is_none());
        assert!(j.get("image.name").is_none());
        assert!(j["containerimage.descriptor"].get("annotations").is_none());
        assert_eq!(m.image_id(), &digest('c'));
    }

    #[test]
    fn build_refs_are_random_and_shaped() {
        let (a, b) = (
            new_build_ref("embedded").unwrap(),
            new_build_ref("embedded").unwrap(),
        );
        assert_ne!(a, b);
        let id = a.strip_prefix("kiln/embedded/").unwrap();
        assert_eq!(id.len(), 25);
        assert!(
            id.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
