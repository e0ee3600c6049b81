//! `torch2coreml convert MODEL.pt -o OUT.mlpackage`: reads a traced TorchScript archive (pure
//! Rust: no Python, no libtorch), lowers it to MIL with the given input shapes, and writes the
//! package (temp dir + rename: a failure leaves nothing). Used in build scripts.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;

use super::output::{self, Format};
use super::progress::Progress;
use super::ExitStatus;
use torch2coreml::mil::{DType, Model, Opset, Program, TensorType};
use torch2coreml::hf;
use torch2coreml::package;
use torch2coreml::passes;
use torch2coreml::torchscript::{self, graph};
use torch2coreml::validate::npz;

/// Arguments of `convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A traced TorchScript file (torch.jit.trace + torch.jit.save), or a Hugging Face folder
    /// (config.json + model.safetensors) of a known family.
    pub model: PathBuf,
    /// Where to write: a .mlpackage for a .pt file or a one-package folder; a directory for
    /// folders that make several packages (Whisper). Replaced whole if it exists.
    #[arg(short, long)]
    pub output: PathBuf,
    /// A model input as NAME:DIMS:DTYPE, e.g. `x:1x3x224x224:fp32` or `input_ids:1x128:int64`;
    /// one per forward() argument, matched by name, else by position. DTYPE defaults to fp32.
    #[arg(long = "input", value_name = "NAME:DIMS:DTYPE")]
    pub inputs: Vec<String>,
    /// Take input names, shapes and dtypes from the arrays of an example .npz instead.
    #[arg(long, value_name = "INPUTS.npz", conflicts_with = "inputs")]
    pub example: Option<PathBuf>,
    /// Compute precision of the package.
    #[arg(long, value_enum, default_value_t = Precision::Fp16)]
    pub precision: Precision,
    /// Minimum deployment target: iOS15–iOS18 or macOS12–macOS15.
    #[arg(long, default_value = "iOS16")]
    pub target: String,
    /// Sequence length of text inputs for Hugging Face text models (BERT family: 128).
    #[arg(long, value_name = "N")]
    pub seq_len: Option<usize>,
    /// Skip the ANE rewrite passes (keep the traced layout: `linear`, batched attention).
    #[arg(long)]
    pub no_ane: bool,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `--precision`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp16,
    Fp32,
}

/// Parses one `--input` value.
pub(super) fn parse_input(s: &str) -> anyhow::Result<graph::InputSpec> {
    let parts: Vec<&str> = s.split(':').collect();
    let (name, dims, dtype) = match parts.as_slice() {
        [name, dims] => (*name, *dims, "fp32"),
        [name, dims, dtype] => (*name, *dims, *dtype),
        _ => bail!("--input `{s}`: expected NAME:DIMS:DTYPE, e.g. x:1x3x224x224:fp32"),
    };
    let shape = dims
        .split(['x', ','])
        .map(|d| d.trim().parse::<usize>().with_context(|| format!("--input `{s}`: `{d}` is not a dimension")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if shape.iter().any(|&d| d == 0) || shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|n| n > MAX_INPUT_ELEMENTS) {
        bail!("--input `{s}`: dimensions must be positive and at most {MAX_INPUT_ELEMENTS} elements in all");
    }
    let dtype = match dtype.to_ascii_lowercase().as_str() {
        "fp32" | "float32" | "float" => DType::F32,
        "fp16" | "float16" | "half" => DType::F16,
        "int64" | "long" => DType::I64,
        "int32" | "int" => DType::I32,
        "bool" => DType::Bool,
        other => bail!("--input `{s}`: unknown dtype `{other}` (fp32, fp16, int64, int32, bool)"),
    };
    let name = (!name.is_empty()).then(|| name.to_string());
    Ok(graph::InputSpec { name, ty: TensorType::new(dtype, &shape) })
}

/// Largest input accepted (2^31 elements): beyond it int32 shape arithmetic in MIL overflows.
const MAX_INPUT_ELEMENTS: usize = i32::MAX as usize;

/// `convert HF_DIR`: builds the folder's packages, runs the cleanup passes, and writes them.
/// One package and an `-o` ending in .mlpackage: written there. Otherwise `-o` is a directory
/// holding `NAME.mlpackage` per package plus the tokenizer and config files, assembled in a
/// temporary directory beside it and renamed into place (a failure leaves nothing).
fn run_folder(args: &Args, start: Instant, opset: Opset, precision: DType) -> anyhow::Result<ExitStatus> {
    let progress = Progress::new();
    progress.stage("building from safetensors");
    let options = hf::Options { opset, precision, seq_len: args.seq_len };
    let mut out = hf::build(&args.model, &options)?;
    let mut models = Vec::new();
    let mut pass_reports = Vec::new();
    for built in &mut out.packages {
        progress.stage(&format!("optimizing {}", built.name));
        let mut main = built.model.program.functions.remove("main").context("family built no main function")?;
        let changes = passes::run(&mut main, !args.no_ane)?;
        built.model.program.functions.insert("main".into(), main);
        built.model.metadata.user_defined.insert("torch2coreml.version".into(), env!("CARGO_PKG_VERSION").into());
        pass_reports.push(json!({"package": built.name, "passes": changes.iter().map(|(name, c)| json!({"name": name, "changes": c})).collect::<Vec<_>>()}));
    }
    let single = out.packages.len() == 1 && args.output.extension().is_some_and(|e| e == package::PACKAGE_EXTENSION);
    if single {
        progress.stage(&format!("writing {}", out.packages[0].name));
        let summary = package::write(&out.packages[0].model, &args.output)?;
        models.push((out.packages[0].name.clone(), args.output.clone(), &out.packages[0].model, summary.weight_bytes));
    } else {
        let parent = match args.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).with_context(|| format!("{}: cannot create", parent.display()))?;
        let tmp = tempfile::Builder::new().prefix(".t2c-out.").tempdir_in(&parent).with_context(|| format!("{}: cannot write", parent.display()))?;
        for built in &out.packages {
            progress.stage(&format!("writing {}", built.name));
            let path = tmp.path().join(format!("{}.{}", built.name, package::PACKAGE_EXTENSION));
            let summary = package::write(&built.model, &path)?;
            models.push((built.name.clone(), args.output.join(path.file_name().unwrap()), &built.model, summary.weight_bytes));
        }
        for f in &out.side_files {
            let name = f.file_name().context("side file without a name")?;
            std::fs::copy(f, tmp.path().join(name)).with_context(|| format!("{}: cannot copy", f.display()))?;
        }
        if args.output.exists() {
            let old = tempfile::Builder::new().prefix(".t2c-old.").tempdir_in(&parent)?;
            std::fs::rename(&args.output, old.path().join("out")).with_context(|| format!("{}: cannot replace", args.output.display()))?;
        }
        std::fs::rename(tmp.keep(), &args.output).with_context(|| format!("{}: cannot write", args.output.display()))?;
    }
    progress.finish();
    let seconds = start.elapsed().as_secs_f64();
    let text = match args.format {
        Format::Json => output::json(&json!({
            "output": args.output,
            "spec_version": opset.spec_version(),
            "opset": opset.opset_name(),
            "precision": precision.name(),
            "packages": models.iter().zip(&pass_reports).map(|((name, path, model, weight_bytes), passes)| json!({
                "name": name,
                "path": path,
                "ops": compute_ops(model),
                "weight_bytes": weight_bytes,
                "passes": passes["passes"],
            })).collect::<Vec<_>>(),
            "seconds": seconds,
        })),
        Format::Text => {
            let mut s = String::new();
            for (name, path, model, weight_bytes) in &models {
                s += &format!("  {name}: {} ({} ops, {} of weights)\n", path.display(), compute_ops(model), output::human_bytes(*weight_bytes));
            }
            format!("wrote {} package(s) to {} ({}, {precision}) in {seconds:.2} s\n{s}", models.len(), args.output.display(), opset.target_name())
        }
    };
    output::print(&text)?;
    Ok(ExitStatus::Success)
}

/// Non-const ops of `model`'s main function.
fn compute_ops(model: &Model) -> usize {
    model.program.main().map_or(0, |f| f.block.walk_ops().iter().filter(|o| o.op_type != "const").count())
}

/// Runs `convert`.
pub fn run(args: &Args) -> anyhow::Result<ExitStatus> {
    let start = Instant::now();
    let opset = Opset::from_target(&args.target)
        .with_context(|| format!("--target `{}`: expected iOS15–iOS18 or macOS12–macOS15", args.target))?;
    let precision = match args.precision {
        Precision::Fp16 => DType::F16,
        Precision::Fp32 => DType::F32,
    };
    if hf::is_folder(&args.model) {
        return run_folder(args, start, opset, precision);
    }
    if args.model.is_dir() {
        bail!("{}: is a directory without config.json; expected a traced TorchScript file or a Hugging Face folder", args.model.display());
    }
    if args.inputs.is_empty() && args.example.is_none() {
        bail!("{}: a TorchScript file needs its input shapes: --input NAME:DIMS:DTYPE (one per forward() argument) or --example INPUTS.npz", args.model.display());
    }
    let inputs = match &args.example {
        Some(npz) => npz::read(npz)?
            .into_iter()
            .map(|(name, t)| graph::InputSpec { name: Some(name), ty: t.tensor_type() })
            .collect(),
        None => args.inputs.iter().map(|s| parse_input(s)).collect::<anyhow::Result<Vec<_>>>()?,
    };
    let progress = Progress::new();
    progress.stage("reading TorchScript");
    let archive = torchscript::read(&args.model)?;
    progress.stage("lowering to MIL");
    let mut main = graph::to_mil(&archive, &inputs, &graph::Options { opset, precision })?;
    progress.stage("optimizing");
    let passes = passes::run(&mut main, !args.no_ane)?;
    let mut model = Model::new(Program::with_main(main));
    model.metadata.user_defined.insert("torch2coreml.version".into(), env!("CARGO_PKG_VERSION").into());
    model.metadata.user_defined.insert("torch2coreml.source".into(), args.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    progress.stage("writing package");
    let summary = package::write(&model, &args.output)?;
    progress.finish();

    let main = model.program.main().context("no main function")?;
    let ops = main.block.walk_ops();
    let compute_ops = ops.iter().filter(|o| o.op_type != "const").count();
    let seconds = start.elapsed().as_secs_f64();
    let text = match args.format {
        Format::Json => output::json(&json!({
            "output": args.output,
            "spec_version": opset.spec_version(),
            "opset": opset.opset_name(),
            "precision": precision.name(),
            "ops": compute_ops,
            "consts": ops.len() - compute_ops,
            "weight_bytes": summary.weight_bytes,
            "seconds": seconds,
            "passes": passes.iter().map(|(name, c)| json!({"name": name, "changes": c})).collect::<Vec<_>>(),
        })),
        Format::Text => format!(
            "wrote {} ({} ops, {} of weights, {}, {precision}) in {seconds:.2} s\n",
            args.output.display(),
            compute_ops,
            output::human_bytes(summary.weight_bytes),
            opset.target_name(),
        ),
    };
    output::print(&text)?;
    Ok(ExitStatus::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_specs_parse() {
        let s = parse_input("input_ids:1x128:int64").unwrap();
        assert_eq!((s.name.as_deref(), s.ty), (Some("input_ids"), TensorType::new(DType::I64, &[1, 128])));
        assert_eq!(parse_input("x:2,16").unwrap().ty, TensorType::new(DType::F32, &[2, 16]));
        for bad in ["x", "x:1x0:fp32", "x:1xA", "x:2:complex", "x:99999x99999x99999"] {
            assert!(parse_input(bad).is_err(), "{bad}");
        }
    }
}
