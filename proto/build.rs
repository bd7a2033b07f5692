//! Generates the Rust types for `kiln/*.proto` with `protox` (a pure-Rust protobuf
//! compiler), so a plain `cargo build` needs no `protoc` on the machine.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let protos = [
        "kiln/ops/v1/ops.proto",
        "kiln/control/v1/control.proto",
        "kiln/farm/v1/farm.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    // For gRPC server reflection.
    std::fs::write(
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("kiln_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // `kiln debug graph --format json` prints ops through serde; enum fields
    // (i32 on the wire) and bytes print by name and as text.
    // Services (the control and farm APIs) get a server and a client with
    // the `grpc` feature; without it (the worker, which only needs the
    // field syntax) every message is still generated, no service is.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let mut config = tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        .type_attribute(".kiln.ops.v1", "#[derive(serde::Serialize)]");
    for (field, with) in [
        ("ExecOp.network", "network_mode"),
        ("ExecOp.security", "security_mode"),
        ("Mount.type", "mount_type"),
        ("CacheOpt.sharing", "cache_sharing"),
        ("FileMkfile.data", "text"),
    ] {
        config = config.field_attribute(
            format!(".kiln.ops.v1.{field}"),
            format!("#[serde(serialize_with = \"crate::ops::json::{with}\")]"),
        );
    }
    config.compile_fds(descriptors)?;
    Ok(())
}
