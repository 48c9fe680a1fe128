//! Compiles `proto/shoal.proto` with `protox` (pure Rust; these machines have
//! no system `protoc`) and generates prost messages plus tonic services.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/shoal.proto");
    let fds = protox::compile(["shoal.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Payloads become `bytes::Bytes`: decoding slices the frame instead
        // of copying, and the head forwards argument bytes by refcount.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
