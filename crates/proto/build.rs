//! Generates Rust from `proto/` with a vendored `protoc`, so a clean build
//! needs nothing installed beyond the Rust toolchain.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled in another checkout that
    // shares the target directory must not point back at that checkout.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let public = [
        root.join("thoughtpartner/v1/conversation.proto"),
        root.join("thoughtpartner/v1/tenant_admin.proto"),
        root.join("thoughtpartner/v1/member.proto"),
        root.join("thoughtpartner/v1/knowledge.proto"),
        root.join("thoughtpartner/v1/subscription.proto"),
        root.join("thoughtpartner/v1/audit.proto"),
        root.join("thoughtpartner/v1/quota.proto"),
        root.join("thoughtpartner/v1/operations.proto"),
        root.join("thoughtpartner/v1/settings.proto"),
    ];
    let internal = [
        root.join("thoughtpartner/internal/knowledge/v1/knowledge.proto"),
        root.join("thoughtpartner/internal/conversation/v1/usage.proto"),
        root.join("thoughtpartner/internal/conversation/v1/retention.proto"),
    ];
    let includes = [root.clone(), protoc_bin_vendored::include_path()?];

    // Two descriptor sets, so the gateway's reflection shows only the public
    // API while internal services describe their own packages.
    for (protos, descriptor) in [
        (&public[..], "public_descriptor.bin"),
        (&internal[..], "internal_descriptor.bin"),
    ] {
        let mut config = prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        tonic_prost_build::configure()
            .file_descriptor_set_path(out_dir.join(descriptor))
            .compile_with_config(config, protos, &includes)?;
    }

    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
