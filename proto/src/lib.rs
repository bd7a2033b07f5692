//! kiln's wire types, generated from the `.proto` files under `proto/kiln/`.
//!
//! Owns: the protobuf messages that cross a process boundary or enter a
//! digest: the build graph (`kiln.ops.v1`), kilnd's control API
//! (`kiln.control.v1`) and the build farm's (`kiln.farm.v1`).
//!
//! Does not own: any logic. Helpers that interpret these messages live with
//! the code that produces or consumes them (`kiln-frontend` builds ops,
//! the solver and workers run them).

/// kilnd's control API (`kiln/control/v1/control.proto`): builds and the
/// image store, for the CLI and CI systems.
pub mod control {
    /// Version 1. Field numbers are stable.
    #[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/kiln.control.v1.rs"));
    }
}

/// The build farm (`kiln/farm/v1/farm.proto`): `kiln-worker`s attached to
/// kilnd run RUN steps and move layers by digest.
pub mod farm {
    /// Version 1. Field numbers are stable.
    #[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/kiln.farm.v1.rs"));
    }
}

/// The encoded descriptors of every kiln `.proto`, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kiln_descriptor.bin"));

/// The build graph: one [`ops::v1::Op`] per vertex, inputs by digest.
pub mod ops {
    /// Version 1 of the graph encoding. Field numbers are stable.
    #[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/kiln.ops.v1.rs"));
    }

    /// Readable JSON for the fields protobuf stores as numbers or bytes.
    pub(crate) mod json {
        use serde::Serializer;

        use super::v1::{CacheSharing, MountType, NetworkMode, SecurityMode};

        macro_rules! enum_names {
            ($($name:ident: $ty:ty),* $(,)?) => {$(
                pub(crate) fn $name<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
                    match <$ty>::try_from(*value) {
                        Ok(known) => s.serialize_str(known.as_str_name()),
                        Err(_) => s.serialize_i32(*value),
                    }
                }
            )*};
        }

        enum_names!(
            network_mode: NetworkMode,
            security_mode: SecurityMode,
            mount_type: MountType,
            cache_sharing: CacheSharing,
        );

        pub(crate) fn text<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&String::from_utf8_lossy(bytes))
        }
    }
}
