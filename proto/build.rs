//! Generates the Rust types for `kiln/*.proto` with `protox` (a pure-Rust protobuf
//! compiler), so a plain `cargo build` needs no `protoc` on the machine.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let protos = ["kiln/ops/v1/ops.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        // `kiln debug graph --format json` prints ops through serde.
        .type_attribute(".kiln.ops.v1", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
