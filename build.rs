//! Compiles `proto/*.proto` (our hand-written Core ML subset) into Rust with protox + prost-build,
//! so no `protoc` binary is needed. The generated module is included only by `src/package/proto.rs`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/Model.proto", "proto/FeatureTypes.proto", "proto/MIL.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // BTreeMap, not HashMap: map fields encode in sorted key order, so our output is byte-reproducible.
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
