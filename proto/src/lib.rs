//! kiln's wire types, generated from the `.proto` files under `proto/kiln/`.
//!
//! Owns: the protobuf messages that cross a process boundary or enter a
//! digest: the build graph (`kiln.ops.v1`), kilnd's control API
//! (`kiln.control.v1`) and the build farm's (`kiln.farm.v1`).
//!
//! Also owns the syntax of the graph's fields that one side writes and the
//! other reads, so both agree by construction: `.dockerignore`-style
//! patterns (a context's `.dockerignore`, `COPY --exclude`: [`dockerignore`]),
//! `--chmod` modes ([`chmod`]), the RUN sandbox's build-wide settings
//! (`--add-host`, `--ulimit`, `--shm-size`: [`sandbox`]) and Go's slash-path
//! cleaning ([`path`]). The frontend parses and checks them, the worker
//! applies them; neither needs the other. And one bound every walk of a
//! directory tree keeps, on the client, in kilnd and in the worker alike
//! ([`depth`]).
//!
//! Does not own: I/O, or what the messages mean beyond that syntax
//! (`kiln-frontend` builds ops, the solver and workers run them). The gRPC
//! servers and clients come with the `grpc` feature (on by default); the
//! worker builds without it.

pub mod chmod;
pub mod depth;
pub mod dockerignore;
pub mod path;
pub mod sandbox;

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
