//! Compiles proto/ into Rust with protox (a pure-Rust protobuf compiler), so
//! building needs no `protoc` binary. Also writes the encoded descriptor set to
//! OUT_DIR, which the management server hands to gRPC reflection.

#![forbid(unsafe_code)]

use std::path::PathBuf;

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &["cgnat/v1/cgnat.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    // Source info keeps the proto comments, so `grpcurl describe` shows the
    // API documentation; imports make the set self-contained (the well-known
    // types) as reflection clients require.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;

    std::fs::write(
        out_dir.join("cgnat_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
