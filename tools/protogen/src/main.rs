//! Generates crates/warden-oip/src/generated/inference.rs (and the encoded
//! descriptors, inference_descriptor.bin) from the vendored proto, with protox (a protobuf compiler in Rust: no `protoc`).

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/warden-oip");
    let proto_dir = root.join("proto");
    let out = root.join("src/generated");
    std::fs::create_dir_all(&out)?;
    let fds = protox::compile(["open_inference_grpc.proto"], [&proto_dir])?;
    // The encoded descriptors, for gRPC server reflection (grpc.reflection).
    std::fs::write(
        out.join("inference_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        // Raw tensor contents as `bytes::Bytes`: sliced, never copied.
        .bytes(".inference")
        .out_dir(&out)
        .compile_fds(fds)?;
    Ok(())
}
