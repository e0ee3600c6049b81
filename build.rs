//! Compiles `proto/*.proto` (our hand-written Core ML subset) into Rust with protox + prost-build,
//! so no `protoc` binary is needed. The generated module is included only by `src/package/proto.rs`.
//!
//! With the `torch` feature it also writes libtorch's `lib/` directory into every linked artifact
//! (binary, tests) as an rpath, so the binary runs without `LD_LIBRARY_PATH`: torch-sys's build
//! script reports the directory it linked against (pip torch's `torch/lib` under
//! `LIBTORCH_USE_PYTORCH=1`) as `cargo:libtorch_lib`, which cargo hands to us, a direct dependent
//! of its `links = "tch"`, as `DEP_TCH_LIBTORCH_LIB`.
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
    libtorch_rpath();
    Ok(())
}

/// Emits `-Wl,-rpath,<torch/lib>` when the `torch` feature is on (ELF and Mach-O linkers; Windows
/// has no rpath and finds DLLs on `PATH`). torch-sys only adds it to its own C++ shim, not to us.
fn libtorch_rpath() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() || std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("windows") {
        return;
    }
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
