//! Compiles the contract with protox (pure Rust, no protoc) and feeds the
//! descriptors to tonic-prost-build. The encoded descriptor set is kept in
//! OUT_DIR for the gRPC reflection service.

use std::path::PathBuf;

use prost::Message;

const FILES: &[&str] = &[
    "proto/hotline/federation/v1/ticket.proto",
    "proto/hotline/federation/v1/transfer.proto",
    "proto/hotline/federation/v1/city_hotline.proto",
    "proto/hotline/federation/v1/federation.proto",
    "proto/hotline/federation/v1/city_node.proto",
    "proto/hotline/federation/v1/observatory.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(FILES, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("hotline_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // A message that does not decode is INVALID_ARGUMENT (src/grpc.rs).
        .codec_path("crate::grpc::Codec")
        // Personal data must not reach logs through `{:?}`: Citizen gets a
        // hand-written Debug that masks it.
        .skip_debug([".hotline.federation.v1.Citizen"])
        .compile_fds(fds)?;
    Ok(())
}
