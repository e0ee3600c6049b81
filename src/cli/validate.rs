//! `torch2coreml validate PACKAGE`: runs the package in our MIL interpreter (no Core ML runtime
//! needed) and compares its outputs with a reference: saved outputs (`--expected`), or another
//! package run on the same inputs (`--against`). Reports drift per output; exit 1 when any
//! output is out of tolerance. Used in CI.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::json;

use super::output::{self, Format};
use super::ExitStatus;
use torch2coreml::interp;
use torch2coreml::package;
use torch2coreml::validate::{self, npz};

/// Arguments of `validate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .mlpackage to check.
    pub package: PathBuf,
    /// The source TorchScript model, run through PyTorch (needs the `torch` cargo feature).
    #[arg(long, group = "reference_kind")]
    pub reference: Option<PathBuf>,
    /// Outputs the source model produced for `--inputs`, as .npz.
    #[arg(long, group = "reference_kind", requires = "inputs")]
    pub expected: Option<PathBuf>,
    /// Another package to run on the same inputs.
    #[arg(long, group = "reference_kind")]
    pub against: Option<PathBuf>,
    /// Inputs as .npz (matched to the package inputs by name, else by position).
    #[arg(long)]
    pub inputs: Option<PathBuf>,
    /// Seed for random inputs drawn from the package signature when --inputs is not given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Absolute tolerance (default: 0.05 for fp16 packages, 0.001 for fp32).
    #[arg(long)]
    pub atol: Option<f64>,
    /// Relative tolerance (default: 0.05 for fp16 packages, 0.001 for fp32).
    #[arg(long)]
    pub rtol: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Runs `validate`.
pub fn run(args: &Args) -> anyhow::Result<ExitStatus> {
    if let Some(model) = &args.reference {
        bail!(
            "{}: validating against a TorchScript model needs PyTorch, and this build has no `torch` feature; \
             rebuild with `cargo build --features torch` (libtorch from pip torch==2.13.0), or pass \
             --expected OUTPUTS.npz saved from the model together with --inputs",
            model.display()
        );
    }
    if args.expected.is_none() && args.against.is_none() {
        bail!("give a reference: --expected OUTPUTS.npz (with --inputs), --against OTHER.mlpackage, or --reference MODEL.pt");
    }
    let model = package::read(&args.package)?;
    let main = model.program.main().context("the package has no main function")?;
    let inputs = match &args.inputs {
        Some(p) => validate::inputs_from(main, npz::read(p)?).with_context(|| format!("{}", p.display()))?,
        None => validate::random_inputs(main, args.seed)?,
    };
    let outputs = interp::run(main, &inputs).with_context(|| format!("running {}", args.package.display()))?;
    let reference = match (&args.expected, &args.against) {
        (Some(p), _) => npz::read(p)?
            .into_iter()
            .map(|(n, t)| interp::Array::from_tensor(&t).map(|a| (n.clone(), a)).map_err(|e| anyhow::anyhow!("{}: array `{n}`: {e}", p.display())))
            .collect::<anyhow::Result<Vec<_>>>()?,
        (None, Some(other)) => {
            let m = package::read(other)?;
            let f = m.program.main().context("the other package has no main function")?;
            interp::run(f, &inputs).with_context(|| format!("running {}", other.display()))?
        }
        (None, None) => unreachable!("checked above"),
    };
    let (atol0, rtol0) = validate::default_tolerances(main);
    let (atol, rtol) = (args.atol.unwrap_or(atol0), args.rtol.unwrap_or(rtol0));
    let reports = validate::compare(&outputs, &reference, atol, rtol).with_context(|| format!("{}", args.package.display()))?;
    let pass = reports.iter().all(|r| r.drift.pass);
    let text = match args.format {
        Format::Json => output::json(&json!({ "outputs": reports, "pass": pass, "atol": atol, "rtol": rtol })),
        Format::Text => {
            let mut s = format!("{}  (atol {atol}, rtol {rtol})\n", args.package.display());
            s += &format!("  {:<24} {:<16} {:>10} {:>10} {:>10} {:>9} {:>8}  result\n", "output", "shape", "max_abs", "max_rel", "mean_abs", "cosine", "psnr_db");
            for r in &reports {
                let d = &r.drift;
                let shape = format!("{:?}", r.shape);
                let verdict = if d.pass { "ok" } else if d.non_finite > 0 { "FAIL (non-finite)" } else { "FAIL" };
                s += &format!(
                    "  {:<24} {:<16} {:>10.3e} {:>10.3e} {:>10.3e} {:>9.6} {:>8.1}  {verdict}\n",
                    r.name, shape, d.max_abs, d.max_rel, d.mean_abs, d.cosine, d.psnr_db
                );
            }
            s += if pass { "all outputs within tolerance\n" } else { "some outputs out of tolerance\n" };
            s
        }
    };
    output::print(&text)?;
    Ok(if pass { ExitStatus::Success } else { ExitStatus::Failure })
}
