//! Which media types an image leaves this machine with
//! (`-o …,oci-mediatypes=true|false`): OCI's, or Docker's schema 2.
//!
//! The store keeps its own form (OCI manifests and indexes, layers with
//! OCI types); only what leaves — a push, an OCI output — is written in
//! the other. The blobs are the same bytes either way: a layer compressed
//! once serves both, only its descriptor's media type differs.

use super::{
    DOCKER_LIST, DOCKER_MANIFEST, ImageError, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Result,
};

pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The media types of the manifests, indexes, configs and layers that
/// leave.
///
/// kiln's default is [`MediaTypes::Oci`], as it has always written OCI;
/// BuildKit's image exporter defaults to Docker's (`oci-mediatypes=false`)
/// unless compression or annotations need OCI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MediaTypes {
    /// `oci-mediatypes=true`: an OCI manifest or index.
    #[default]
    Oci,
    /// `oci-mediatypes=false`: a Docker schema 2 manifest or manifest
    /// list; gzip or uncompressed layers only (Docker has no zstd type).
    Docker,
}

impl MediaTypes {
    /// The value of `oci-mediatypes=`: `true` or `false`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "true" => Some(Self::Oci),
            "false" => Some(Self::Docker),
            _ => None,
        }
    }

    /// An image's manifest.
    pub fn manifest(self) -> &'static str {
        match self {
            Self::Oci => OCI_MANIFEST,
            Self::Docker => DOCKER_MANIFEST,
        }
    }

    /// An index of several platforms' manifests (Docker: a manifest list).
    pub fn index(self) -> &'static str {
        match self {
            Self::Oci => OCI_INDEX,
            Self::Docker => DOCKER_LIST,
        }
    }

    /// An image's config.
    pub fn config(self) -> &'static str {
        match self {
            Self::Oci => OCI_CONFIG,
            Self::Docker => DOCKER_CONFIG,
        }
    }

    /// A layer's media type in these types: OCI keeps it as it is (a base
    /// image's Docker layers too, as kiln always wrote them); Docker maps
    /// OCI's gzip and uncompressed layers to its own and refuses any other
    /// (zstd has no Docker type).
    pub fn layer(self, media_type: &str) -> Result<&str> {
        match (self, media_type) {
            (Self::Oci, _)
            | (Self::Docker, DOCKER_LAYER | DOCKER_LAYER_GZIP | DOCKER_FOREIGN_LAYER_GZIP) => {
                Ok(media_type)
            }
            (Self::Docker, OCI_LAYER_GZIP) => Ok(DOCKER_LAYER_GZIP),
            (Self::Docker, OCI_LAYER) => Ok(DOCKER_LAYER),
            (Self::Docker, _) => Err(ImageError::MediaType {
                what: "a layer of a Docker manifest (oci-mediatypes=false)",
                media_type: media_type.to_owned(),
            }),
        }
    }
}

/// OCI's type for a Docker layer type naming the same bytes (gzip, plain
/// tar); any other type as it is.
pub fn oci_layer(media_type: &str) -> &str {
    match media_type {
        DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
        DOCKER_LAYER => OCI_LAYER,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_types_map_gzip_and_plain_layers_and_refuse_zstd() {
        let docker = MediaTypes::Docker;
        assert_eq!(docker.layer(OCI_LAYER_GZIP).unwrap(), DOCKER_LAYER_GZIP);
        assert_eq!(docker.layer(OCI_LAYER).unwrap(), DOCKER_LAYER);
        assert_eq!(docker.layer(DOCKER_LAYER_GZIP).unwrap(), DOCKER_LAYER_GZIP);
        let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
        let e = docker.layer(zstd).unwrap_err();
        assert!(
            matches!(&e, ImageError::MediaType { media_type, .. } if media_type == zstd),
            "{e}"
        );
        assert_eq!(MediaTypes::Oci.layer(zstd).unwrap(), zstd);
        assert_eq!(
            MediaTypes::Oci.layer(DOCKER_LAYER_GZIP).unwrap(),
            DOCKER_LAYER_GZIP
        );
    }

    /// A Docker manifest names the same blobs as the OCI one, in Docker's
    /// types; a list of such manifests is a Docker manifest list.
    #[test]
    fn docker_manifests_and_lists_name_the_same_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = kiln_cache::Store::open(dir.path()).unwrap();
        let config = store.content.write_bytes(b"{}").unwrap();
        let layer = kiln_cache::Digest::of(b"layer");
        let layers = [(layer.clone(), OCI_LAYER_GZIP.to_owned(), 5)];
        let json = |d: &kiln_cache::Digest| -> serde_json::Value {
            serde_json::from_slice(&store.content.read(d).unwrap()).unwrap()
        };
        let (oci, _) = super::super::write_manifest(&store, (&config, 2), &layers).unwrap();
        let (docker, size) =
            super::super::write_manifest_as(&store, MediaTypes::Docker, (&config, 2), &layers)
                .unwrap();
        let (o, d) = (json(&oci), json(&docker));
        assert_eq!(o["mediaType"], OCI_MANIFEST);
        assert_eq!(d["mediaType"], DOCKER_MANIFEST);
        assert_eq!(d["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(d["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
        assert_eq!(d["config"]["digest"], o["config"]["digest"]);
        assert_eq!(d["layers"][0]["digest"], o["layers"][0]["digest"]);
        let zstd = [(
            layer,
            "application/vnd.oci.image.layer.v1.tar+zstd".to_owned(),
            5,
        )];
        assert!(
            super::super::write_manifest_as(&store, MediaTypes::Docker, (&config, 2), &zstd)
                .is_err()
        );
        let platform = kiln_frontend::platform::parse("linux/arm64").unwrap();
        let (list, _) =
            super::super::write_index_as(&store, MediaTypes::Docker, &[(docker, size, platform)])
                .unwrap();
        let l = json(&list);
        assert_eq!(l["mediaType"], DOCKER_LIST);
        assert_eq!(l["manifests"][0]["mediaType"], DOCKER_MANIFEST);
        assert_eq!(l["manifests"][0]["platform"]["architecture"], "arm64");
        assert_eq!(
            super::super::media_type_of(&store, &list).unwrap(),
            DOCKER_LIST
        );
    }

    #[test]
    fn oci_mediatypes_is_true_or_false() {
        assert_eq!(MediaTypes::parse("true"), Some(MediaTypes::Oci));
        assert_eq!(MediaTypes::parse("false"), Some(MediaTypes::Docker));
        assert_eq!(MediaTypes::parse("yes"), None);
        assert_eq!(MediaTypes::default(), MediaTypes::Oci);
        assert_eq!(MediaTypes::Docker.manifest(), DOCKER_MANIFEST);
        assert_eq!(MediaTypes::Docker.index(), DOCKER_LIST);
        assert_eq!(MediaTypes::Docker.config(), DOCKER_CONFIG);
    }
}
