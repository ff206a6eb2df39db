//! The echo service of the bare-tonic baseline, generated with a vendored
//! `protoc` like the product's own API.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[proto.join("echo.proto")],
        std::slice::from_ref(&proto),
    )?;
    println!("cargo:rerun-if-changed={}", proto.display());
    Ok(())
}
