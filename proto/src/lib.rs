//! kiln's wire types, generated from the `.proto` files under `proto/kiln/`.
//!
//! Owns: the protobuf messages that cross a process boundary or enter a
//! digest — today the build graph (`kiln.ops.v1`). The control API for
//! `kilnd` and the worker API for the farm join it as those parts are built.
//!
//! Does not own: any logic. Helpers that interpret these messages live with
//! the code that produces or consumes them (`kiln-frontend` builds ops,
//! the solver and workers run them).

/// The build graph: one [`ops::v1::Op`] per vertex, inputs by digest.
pub mod ops {
    /// Version 1 of the graph encoding. Field numbers are stable.
    #[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/kiln.ops.v1.rs"));
    }
}
