//! The floor a conversion's write path is judged against: the least work any converter must do
//! to turn a traced `.pt` into fp16 weights on disk. It maps the `.pt`, takes every stored
//! tensor storage (`*/data/*` entries) as fp32, casts it to fp16 and writes one weight.bin with
//! `package::blob::BlobWriter` (all cores, no copy) — no parsing, lowering, passes or protobuf.
//! Prints one JSON line: `{"seconds", "read_bytes", "written_bytes"}`. Called by
//! `bench/convert_bench.py` (`make bench`); build with `cargo build --release --example bench_floor`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use torch2coreml::mil::{DType, Tensor};
use torch2coreml::package::blob::BlobWriter;
use torch2coreml::torchscript::zip::{Zip, METHOD_STORED};

/// Arguments: the traced model and where its weights go.
#[derive(Parser, Debug)]
#[command(name = "bench_floor", about = "Read, cast to fp16 and write a .pt's fp32 storages")]
struct Args {
    /// A TorchScript `.pt` whose storages are fp32 (every bench encoder).
    pt: PathBuf,
    /// The weight file to write (replaced).
    out: PathBuf,
}

/// Bytes of one fp32 element.
const F32_BYTES: usize = 4;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let zip = Zip::open(&args.pt).with_context(|| format!("{}", args.pt.display()))?;
    let mut blobs = BlobWriter::create(&args.out);
    let mut read_bytes = 0;
    for e in zip.entries().iter().filter(|e| e.method == METHOD_STORED && e.name.contains("/data/")) {
        let range = zip.stored_range(e)?;
        let elements = range.len() / F32_BYTES;
        let t = Tensor::from_mapped(DType::F32, &[elements], zip.map().clone(), range.start)?;
        blobs.append(&Tensor::f16_of(&t))?;
        read_bytes += elements * F32_BYTES;
    }
    let (written, _) = blobs.finish()?;
    let seconds = start.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({"seconds": seconds, "read_bytes": read_bytes, "written_bytes": written}));
    Ok(())
}
