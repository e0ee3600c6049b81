//! Times the MIL interpreter on one package: reads the package and an inputs `.npz`, prepares
//! the main function (`interp::Prepared`: constants converted once, as a runtime loads a model
//! once), runs it `--warmup` times untimed, then `--runs` times timed, and prints one JSON line:
//! `{"package", "runs", "median_s", "min_s", "load_s"}` (seconds; `load_s` is `package::read`,
//! input binding and preparing, which the runs exclude). Called by
//! `bench/interp_bench.py` (`make bench`); build with `cargo build --release --example bench_interp`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use torch2coreml::validate::npz;
use torch2coreml::{interp, package, validate};

/// Arguments: the package, its inputs and how many runs.
#[derive(Parser, Debug)]
#[command(name = "bench_interp", about = "Median wall time of the MIL interpreter on a package")]
struct Args {
    /// The `.mlpackage` to run.
    package: PathBuf,
    /// Inputs, one array per function input (matched by name, else by position).
    inputs: PathBuf,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Untimed runs first (page in the memory-mapped weights, warm the allocator).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
}

/// Median of sorted, non-empty `times` (mean of the middle two for an even count).
fn median(times: &[f64]) -> f64 {
    let n = times.len();
    if n % 2 == 1 { times[n / 2] } else { (times[n / 2 - 1] + times[n / 2]) / 2.0 }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let t0 = Instant::now();
    let model = package::read(&args.package).with_context(|| format!("reading {}", args.package.display()))?;
    let main = model.program.main().context("the package has no main function")?;
    let tensors = npz::read(&args.inputs).with_context(|| format!("reading {}", args.inputs.display()))?;
    let inputs = validate::inputs_from(main, tensors).with_context(|| format!("{}", args.inputs.display()))?;
    let prepared = interp::Prepared::new(main.clone())?;
    let load_s = t0.elapsed().as_secs_f64();

    for _ in 0..args.warmup {
        prepared.run(&inputs)?;
    }
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t = Instant::now();
        let outputs = prepared.run(&inputs)?;
        times.push(t.elapsed().as_secs_f64());
        drop(outputs);
    }
    times.sort_by(f64::total_cmp);
    let report = serde_json::json!({
        "package": args.package.display().to_string(),
        "runs": args.runs,
        "median_s": median(&times),
        "min_s": times[0],
        "load_s": load_s,
    });
    println!("{report}");
    Ok(())
}
