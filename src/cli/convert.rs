//! `torch2coreml convert MODEL -o OUT`: a traced TorchScript archive (with input shapes) or a
//! Hugging Face folder in, Core ML package(s) out, through `pipeline::load` and
//! `pipeline::write` (pure Rust: no Python, no libtorch; temp dir + rename, never over data the
//! tool did not write). Used in build scripts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;

use super::output::{self, Format};
use super::progress::Progress;
use super::ExitStatus;
use torch2coreml::mil::{ColorSpace, DType, Labels, Model, Opset, TensorType};
use torch2coreml::{passes, pipeline};
use torch2coreml::staging::Replace;
use torch2coreml::validate::npz;

/// Arguments of `convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A traced TorchScript file (torch.jit.trace + torch.jit.save), a torch.export program
    /// (torch.export.save, .pt2; dynamic dimensions become ranges, the sizes the program
    /// computes from them MIL shape ops, or, with --shapes, buckets; buffers it updates in
    /// place become states at iOS18), or a Hugging Face folder (config.json +
    /// model.safetensors) of a known family.
    pub model: PathBuf,
    /// Where to write: a .mlpackage for a .pt file or a one-package folder; a directory for
    /// folders that make several packages (Whisper). An existing output is replaced only if
    /// torch2coreml wrote it; the input itself or a folder containing it is never replaced.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an existing output even if torch2coreml did not write it (a file, a folder, a
    /// package from another tool). Never the input or a folder containing it.
    #[arg(long)]
    pub force: bool,
    /// A model input as NAME:DIMS:DTYPE, e.g. `x:1x3x224x224:fp32` or `input_ids:1x128:int64`;
    /// one per forward() argument, matched by name, else by position. DTYPE defaults to fp32.
    /// For a .pt2 with dynamic dimensions: the one size to convert it at.
    #[arg(long = "input", value_name = "NAME:DIMS:DTYPE")]
    pub inputs: Vec<String>,
    /// Take input names, shapes and dtypes from the arrays of an example .npz instead (for a
    /// traced model); the same arrays are the calibration inputs of `--precision auto` and
    /// `--compress auto` (for a Hugging Face folder, only that).
    #[arg(long, value_name = "INPUTS.npz", conflicts_with = "inputs")]
    pub example: Option<PathBuf>,
    /// Compute precision of the package.
    #[arg(long, value_enum, default_value_t = Precision::Fp16)]
    pub precision: Precision,
    /// Minimum deployment target: iOS15–iOS18 or macOS12–macOS15.
    #[arg(long, default_value = "iOS16")]
    pub target: String,
    /// Sequence length of text inputs for Hugging Face text models (BERT family: 128). Several
    /// (`64,128,256`) make one package accepting each, as `--shapes` does.
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub seq_len: Vec<usize>,
    /// Buckets: the package accepts exactly these shapes of input NAME, as
    /// `NAME:DIMS[,DIMS...]` (e.g. `input_ids:1x64,1x128,1x256`); repeat for other inputs with
    /// as many shapes (the k-th shapes go together). A program valid at every shape gets Core
    /// ML enumerated shapes (any target); one whose trace baked the shape in becomes a
    /// multifunction package at --target iOS18+, a function per bucket (`input_ids_1x64`, …;
    /// the first is the default) sharing one copy of the weights, and below iOS18 enumerated
    /// shapes whose baked sizes are computed from the input's shape. For a .pt, each NAME also
    /// needs its --input (for the dtype).
    #[arg(long, value_name = "NAME:DIMS,...")]
    pub shapes: Vec<String>,
    /// Skip the ANE rewrite passes (keep the traced layout: `linear`, batched attention).
    #[arg(long)]
    pub no_ane: bool,
    /// Keep these ops in fp32 (casts around them): shell globs over op types or op names as
    /// `inspect` and `validate --per-op` show them, e.g. `layer_norm,*attn*`.
    #[arg(long, value_name = "PATTERN,...", value_delimiter = ',')]
    pub fp32_ops: Vec<String>,
    /// Seed of the random calibration inputs of `--precision auto` and `--compress auto`
    /// (without `--example`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Store large weights compressed (iOS16+): `int8` (per-channel symmetric linear),
    /// `palettize:N` (an N-bit k-means table per tensor, N = 1, 2, 4, 6, 8; 3 and
    /// `palettize:N:group=G`, a table per G output channels, need iOS18), `int4[:block=B]`
    /// (iOS18: symmetric int4, a scale per B input channels, default 32), or `auto` (8, 6, 4 or
    /// 2 bits per weight, as few as the gate allows on calibration inputs: `--example`, else
    /// random with `--seed`; for Whisper folders `--max-wer` on `--audio`). Weights of rank ≥ 2
    /// with at least 2048 elements are compressed; biases, norms and small tensors are not.
    #[arg(long, value_name = "SPEC")]
    pub compress: Option<String>,
    /// `--compress auto` gate: least PSNR (dB, against each output's peak) of every output
    /// against the uncompressed program, as `psnr:DB` (default psnr:35).
    #[arg(long, value_name = "psnr:DB", requires = "compress")]
    pub max_drift: Option<String>,
    /// `--compress auto` gate: least cosine of every output (for embeddings).
    #[arg(long, value_name = "C", requires = "compress")]
    pub min_cosine: Option<f64>,
    /// `--compress auto` gate for Whisper folders: largest word error rate (0 to 1) of the
    /// compressed packages' transcripts of `--audio` against the uncompressed packages'.
    #[arg(long, value_name = "W")]
    pub max_wer: Option<f64>,
    /// WAV files the `--max-wer` gate transcribes.
    #[arg(long, value_name = "A.wav", num_args = 1..)]
    pub audio: Vec<PathBuf>,
    /// Model author (package metadata, shown by Xcode).
    #[arg(long)]
    pub author: Option<String>,
    /// Model license (package metadata).
    #[arg(long)]
    pub license: Option<String>,
    /// Short description of the model (package metadata).
    #[arg(long)]
    pub description: Option<String>,
    /// Model version string (package metadata).
    #[arg(long)]
    pub version: Option<String>,
    /// A user-defined metadata entry KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// A description of an input or output, NAME=TEXT (repeatable); Xcode shows it.
    #[arg(long, value_name = "NAME=TEXT")]
    pub describe: Vec<String>,
    /// Take input NAME as an image: `NAME[:layout=RGB|BGR|GRAY][:scale=S][:bias=B|r,g,b]`
    /// (pixels 0–255 arrive; the program computes pixel·scale + bias per channel). Repeatable.
    #[arg(long, value_name = "NAME[:layout=..][:scale=..][:bias=..]")]
    pub image: Vec<String>,
    /// Return output NAME as an image: `NAME[:layout=RGB|BGR|GRAY]` (the model returns pixel
    /// values 0–255 as a [1, C, H, W] tensor; cast to fp32 if computed in fp16). Repeatable.
    #[arg(long, value_name = "NAME[:layout=..]")]
    pub image_output: Vec<String>,
    /// torchvision-style normalization of the `--image` input, per channel (e.g.
    /// `0.485,0.456,0.406`): becomes scale 1/(255·std) and bias −mean/std.
    #[arg(long, value_name = "R,G,B", value_delimiter = ',', requires = "std")]
    pub mean: Vec<f32>,
    /// See `--mean` (e.g. `0.229,0.224,0.225`).
    #[arg(long, value_name = "R,G,B", value_delimiter = ',', requires = "mean")]
    pub std: Vec<f32>,
    /// Make the package a classifier: FILE holds one label per line, or a JSON list of strings
    /// or integers, one per element of the model's single output (its class scores).
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Names of the outputs, in order (default: `output`, or `output_0`, `output_1`, … for a
    /// traced model; the family's own names for Hugging Face folders).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub output_names: Vec<String>,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `--precision`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// fp16 weights and compute (the ANE's precision).
    Fp16,
    /// fp32 everywhere (CPU/GPU only).
    Fp32,
    /// fp16, except the ops whose fp16 outputs overflow, turn inf/NaN or drift on calibration
    /// inputs (`--example`, else random ones drawn with `--seed`): those compute in fp32.
    Auto,
}

/// Parses one `--input` value.
pub(super) fn parse_input(s: &str) -> anyhow::Result<pipeline::InputSpec> {
    let parts: Vec<&str> = s.split(':').collect();
    let (name, dims, dtype, keep_dtype) = match parts.as_slice() {
        [name, dims] => (*name, *dims, "fp32", false),
        [name, dims, dtype] => (*name, *dims, *dtype, true),
        _ => bail!("--input `{s}`: expected NAME:DIMS:DTYPE, e.g. x:1x3x224x224:fp32"),
    };
    let shape = dims
        .split(['x', ','])
        .map(|d| d.trim().parse::<usize>().with_context(|| format!("--input `{s}`: `{d}` is not a dimension")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if shape.contains(&0) || shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|n| n > MAX_INPUT_ELEMENTS) {
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
    Ok(pipeline::InputSpec { name, ty: TensorType::new(dtype, &shape), keep_dtype })
}

/// Most buckets `--shapes`/`--seq-len` take: each is a full build of the model, and Core ML
/// apps pick among a handful.
const MAX_BUCKETS: usize = 16;

/// The buckets of `--shapes` (the k-th shape of every input together) or of a `--seq-len`
/// list; none for one shape.
fn buckets(shapes: &[String], seq_lens: &[usize]) -> anyhow::Result<Vec<pipeline::Bucket>> {
    if !shapes.is_empty() && seq_lens.len() > 1 {
        bail!("give buckets either by --shapes or by a --seq-len list, not both");
    }
    if seq_lens.len() > 1 {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(l) = seq_lens.iter().find(|&&l| !seen.insert(l) || l == 0) {
            bail!("--seq-len: {l} is zero or given twice");
        }
        if seq_lens.len() > MAX_BUCKETS {
            bail!("--seq-len: {} lengths; at most {MAX_BUCKETS}", seq_lens.len());
        }
        return Ok(seq_lens.iter().map(|&l| pipeline::Bucket { name: format!("seq_{l}"), shapes: Vec::new(), seq_len: Some(l) }).collect());
    }
    let mut per_input: Vec<(String, Vec<Vec<usize>>)> = Vec::new();
    for spec in shapes {
        let Some((name, list)) = spec.split_once(':').filter(|(n, l)| !n.is_empty() && !l.is_empty()) else {
            bail!("--shapes `{spec}`: expected NAME:DIMS[,DIMS...], e.g. input_ids:1x64,1x128");
        };
        if per_input.iter().any(|(n, _)| n == name) {
            bail!("--shapes `{name}` given twice");
        }
        let shapes = list.split(',').map(|dims| parse_input(&format!("{name}:{dims}")).map(|i| i.ty.fixed_shape().unwrap_or_default())).collect::<anyhow::Result<Vec<_>>>().with_context(|| format!("--shapes `{spec}`"))?;
        if shapes.len() > MAX_BUCKETS {
            bail!("--shapes `{name}`: {} shapes; at most {MAX_BUCKETS}", shapes.len());
        }
        per_input.push((name.to_string(), shapes));
    }
    let Some(count) = per_input.first().map(|(_, s)| s.len()) else { return Ok(Vec::new()) };
    if let Some((n, s)) = per_input.iter().find(|(_, s)| s.len() != count) {
        bail!("--shapes `{n}` gives {} shapes where `{}` gives {count}; every input needs one shape per bucket", s.len(), per_input[0].0);
    }
    let mut buckets: Vec<pipeline::Bucket> = Vec::new();
    for k in 0..count {
        let shapes: Vec<(String, Vec<usize>)> = per_input.iter().map(|(n, s)| (n.clone(), s[k].clone())).collect();
        let name: String = shapes
            .iter()
            .map(|(n, s)| format!("{n}_{}", s.iter().map(usize::to_string).collect::<Vec<_>>().join("x")))
            .collect::<Vec<_>>()
            .join("_")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
            .collect();
        if buckets.iter().any(|b| b.shapes == shapes) {
            bail!("--shapes: bucket {name} is given twice");
        }
        buckets.push(pipeline::Bucket { name, shapes, seq_len: None });
    }
    Ok(buckets)
}

/// Largest labels file read (ImageNet-21k's names take about 400 KB).
const MAX_LABELS_BYTES: u64 = 16 << 20;

/// `--labels FILE`: a JSON list of strings or integers, else one label per line.
fn read_labels(path: &Path) -> anyhow::Result<Labels> {
    let text = torch2coreml::files::read_text_capped(path, MAX_LABELS_BYTES)?;
    let bad = |why: &str| anyhow::anyhow!("{}: {why}", path.display());
    let labels = if text.trim_start().starts_with('[') {
        let list: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| bad(&format!("not a JSON list: {e}")))?;
        if list.iter().all(|v| v.is_i64()) {
            Labels::Ids(list.iter().filter_map(serde_json::Value::as_i64).collect())
        } else if list.iter().all(|v| v.is_string()) {
            Labels::Names(list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        } else {
            return Err(bad("a JSON list of labels must be all strings or all integers"));
        }
    } else {
        let lines: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
        if lines.iter().any(String::is_empty) {
            return Err(bad("an empty line (one label per line, no blank lines)"));
        }
        Labels::Names(lines)
    };
    if labels.is_empty() {
        return Err(bad("no labels"));
    }
    Ok(labels)
}

/// The `--image` specs, with `--mean`/`--std` folded into scale and bias.
fn image_inputs(specs: &[String], mean: &[f32], std: &[f32]) -> anyhow::Result<Vec<pipeline::ImageInput>> {
    if !mean.is_empty() && specs.len() != 1 {
        bail!("--mean/--std apply to exactly one --image input ({} given)", specs.len());
    }
    let mut out = Vec::new();
    for spec in specs {
        let mut parts = spec.split(':');
        let name = parts.next().filter(|n| !n.is_empty()).with_context(|| format!("--image `{spec}`: no input name"))?;
        let mut image = pipeline::ImageInput { name: name.to_string(), layout: ColorSpace::Rgb, scale: vec![1.0], bias: vec![0.0] };
        let numbers = |v: &str| v.split(',').map(|x| x.trim().parse::<f32>().ok().filter(|f| f.is_finite())).collect::<Option<Vec<f32>>>();
        for part in parts {
            match part.split_once('=') {
                Some(("layout", l)) => image.layout = layout("--image", spec, l)?,
                Some(("scale", v)) => image.scale = numbers(v).filter(|v| v.len() == 1).with_context(|| format!("--image `{spec}`: scale `{v}` is not one number"))?,
                Some(("bias", v)) => image.bias = numbers(v).with_context(|| format!("--image `{spec}`: bias `{v}` is not a list of numbers"))?,
                _ => bail!("--image `{spec}`: `{part}` is not layout=…, scale=… or bias=…"),
            }
        }
        if !mean.is_empty() {
            let c = image.layout.channels();
            if mean.len() != c || std.len() != c || std.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
                bail!("--mean/--std need {c} values each (std positive) for a {} image", image.layout.name());
            }
            image.scale = std.iter().map(|s| 1.0 / (PIXEL_MAX * s)).collect();
            image.bias = mean.iter().zip(std).map(|(m, s)| -m / s).collect();
        }
        out.push(image);
    }
    Ok(out)
}

/// The color space `l` of a `flag` `spec` (`layout=RGB|BGR|GRAY`).
fn layout(flag: &str, spec: &str, l: &str) -> anyhow::Result<ColorSpace> {
    Ok(match l.to_ascii_uppercase().as_str() {
        "RGB" => ColorSpace::Rgb,
        "BGR" => ColorSpace::Bgr,
        "GRAY" | "GRAYSCALE" => ColorSpace::Gray,
        _ => bail!("{flag} `{spec}`: layout `{l}` is not RGB, BGR or GRAY"),
    })
}

/// The `--image-output` specs: `NAME[:layout=RGB|BGR|GRAY]`, RGB by default.
fn image_outputs(specs: &[String]) -> anyhow::Result<Vec<(String, ColorSpace)>> {
    specs
        .iter()
        .map(|spec| {
            let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
            if name.is_empty() {
                bail!("--image-output `{spec}`: no output name");
            }
            let space = match rest.split_once('=') {
                None if rest.is_empty() => ColorSpace::Rgb,
                Some(("layout", l)) => layout("--image-output", spec, l)?,
                _ => bail!("--image-output `{spec}`: `{rest}` is not layout=…"),
            };
            Ok((name.to_string(), space))
        })
        .collect()
}

/// Largest pixel value Core ML hands an image model (8-bit channels): torchvision's ToTensor
/// divides by it, so `--mean`/`--std` scale by 1/(255·std).
const PIXEL_MAX: f32 = 255.0;

/// Splits a `KEY=VALUE` flag value (the key non-empty).
fn key_value(flag: &str, s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("{flag} `{s}`: expected KEY=VALUE"),
    }
}

/// Largest input accepted (2^31 elements): beyond it int32 shape arithmetic in MIL overflows.
const MAX_INPUT_ELEMENTS: usize = i32::MAX as usize;

/// `--compress` with its gate and calibration inputs; gate flags without `auto` are refused.
fn compression(args: &Args, opset: Opset) -> anyhow::Result<Option<pipeline::Compression>> {
    let Some(c) = &args.compress else {
        if args.max_wer.is_some() || !args.audio.is_empty() {
            bail!("--max-wer and --audio are the gate of --compress auto on a Whisper folder; give --compress auto");
        }
        return Ok(None);
    };
    let spec = passes::compress::Spec::parse(c, opset).map_err(|e| anyhow::anyhow!("--compress {e}"))?;
    if spec != passes::compress::Spec::Auto && (args.max_drift.is_some() || args.min_cosine.is_some()) {
        bail!("--max-drift and --min-cosine are the gate of --compress auto; `{c}` has no gate");
    }
    let mut gate = passes::compress::Gate::default();
    if let Some(d) = &args.max_drift {
        gate.min_psnr_db = d.strip_prefix("psnr:").and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite()).with_context(|| format!("--max-drift `{d}`: expected psnr:DB, e.g. psnr:35"))?;
    }
    if let Some(c) = args.min_cosine {
        if !(-1.0..=1.0).contains(&c) {
            bail!("--min-cosine {c}: a cosine is between -1 and 1");
        }
        gate.min_cosine = c;
        if args.max_drift.is_none() {
            gate.min_psnr_db = f64::NEG_INFINITY;
        }
    }
    let wer = match (args.max_wer, args.audio.is_empty()) {
        (None, true) => None,
        (Some(_), true) => bail!("--max-wer needs the audio its transcripts are measured on: give --audio A.wav [B.wav …]"),
        (None, false) => bail!("--audio is the test set of --max-wer W; give both (with --compress auto on a Whisper folder)"),
        (Some(w), false) => {
            if spec != passes::compress::Spec::Auto || args.max_drift.is_some() || args.min_cosine.is_some() {
                bail!("--max-wer is the gate of --compress auto on a Whisper folder, instead of --max-drift/--min-cosine");
            }
            if !(0.0..=1.0).contains(&w) {
                bail!("--max-wer {w}: a word error rate between 0 and 1");
            }
            if !matches!(pipeline::kind(&args.model), Ok(pipeline::Kind::HfFolder(_))) {
                bail!("{}: --max-wer applies to a Whisper folder (a Hugging Face folder with config.json)", args.model.display());
            }
            Some(torch2coreml::speech::compress::WerGate { max_wer: w, audio: args.audio.clone() })
        }
    };
    Ok(Some(pipeline::Compression { spec, gate, calibration: calibration(args)?, wer }))
}

/// The calibration inputs of `--precision auto` and `--compress auto`: `--example`, else
/// random with `--seed`.
fn calibration(args: &Args) -> anyhow::Result<pipeline::Calibration> {
    Ok(match &args.example {
        Some(npz) => pipeline::Calibration::Example(npz::read(npz)?),
        None => pipeline::Calibration::Random { seed: args.seed },
    })
}

/// Non-const ops of `model`'s main function (compressed weights are constants too).
fn compute_ops(model: &Model) -> usize {
    let default = model.default_function.as_deref().unwrap_or(torch2coreml::mil::MAIN_FUNCTION);
    model.program.functions.get(default).map_or(0, |f| f.block.walk_ops().iter().filter(|o| o.op_type != "const" && !o.op_type.starts_with("constexpr_")).count())
}

/// The input specs of `--input` / `--example` (empty when neither is given).
pub(super) fn input_specs(inputs: &[String], example: Option<&Path>) -> anyhow::Result<Vec<pipeline::InputSpec>> {
    match example {
        Some(npz) => Ok(npz::read(npz)?.into_iter().map(|(name, t)| pipeline::InputSpec::new(Some(name), t.tensor_type())).collect()),
        None => inputs.iter().map(|s| parse_input(s)).collect(),
    }
}

/// Runs `convert`: `pipeline::load` then `pipeline::write`, and prints the summary.
pub fn run(args: &Args) -> anyhow::Result<ExitStatus> {
    let start = Instant::now();
    let opset = Opset::from_target(&args.target)
        .with_context(|| format!("--target `{}`: expected iOS15–iOS18 or macOS12–macOS15", args.target))?;
    let precision = match args.precision {
        Precision::Fp16 | Precision::Auto => DType::F16,
        Precision::Fp32 => DType::F32,
    };
    let calibration = if args.precision == Precision::Auto { Some(calibration(args)?) } else { None };
    let fp32_ops = args
        .fp32_ops
        .iter()
        .map(|p| glob::Pattern::new(p).with_context(|| format!("--fp32-ops `{p}`: not a valid pattern")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let interface = pipeline::Interface {
        author: args.author.clone(),
        license: args.license.clone(),
        description: args.description.clone(),
        version: args.version.clone(),
        meta: args.meta.iter().map(|m| key_value("--meta", m)).collect::<anyhow::Result<_>>()?,
        describe: args.describe.iter().map(|m| key_value("--describe", m)).collect::<anyhow::Result<_>>()?,
        output_names: args.output_names.clone(),
        images: image_inputs(&args.image, &args.mean, &args.std)?,
        image_outputs: image_outputs(&args.image_output)?,
        labels: args.labels.as_deref().map(read_labels).transpose()?,
    };
    let options = pipeline::Options {
        opset,
        precision,
        ane: !args.no_ane,
        inputs: input_specs(&args.inputs, args.example.as_deref().filter(|_| !args.model.is_dir()))?,
        seq_len: args.seq_len.first().copied().filter(|_| args.seq_len.len() == 1),
        fp32_ops,
        calibration,
        interface,
        compress: compression(args, opset)?,
        buckets: buckets(&args.shapes, &args.seq_len)?,
    };
    let progress = Progress::new();
    progress.stage("loading and optimizing");
    let loading = pipeline::load(&args.model, &options)?;
    if matches!(loading.kind, pipeline::Kind::Package) {
        bail!("{}: is already a Core ML package; convert takes a TorchScript file or a Hugging Face folder", args.model.display());
    }
    progress.stage("writing");
    let replace = if args.force { Replace::Anything } else { Replace::OursOnly };
    let written = pipeline::write(&loading, &args.model, &args.output, replace)?;
    progress.finish();
    if args.format == Format::Text {
        for w in loading.packages.iter().flat_map(|p| &p.warnings) {
            eprintln!("warning: {w}");
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let packages: Vec<_> = loading.packages.iter().zip(&written).collect();
    let text = match args.format {
        Format::Json => output::json(&json!({
            "output": args.output,
            "spec_version": opset.spec_version(),
            "opset": opset.opset_name(),
            "precision": precision.name(),
            "packages": packages.iter().map(|(p, w)| json!({
                "name": p.name,
                "path": w.path,
                "ops": compute_ops(&p.model),
                "weight_bytes": w.weight_bytes,
                "passes": p.passes.iter().map(|(name, c)| json!({"name": name, "changes": c})).collect::<Vec<_>>(),
                "precision_notes": p.precision_notes.iter().chain(&w.precision_notes).collect::<Vec<_>>(),
                "compressed": p.compressed,
                "compression_gate": p.compression_gate,
                "images_folded_into_conv": p.folded_images,
                "functions": p.model.default_function.as_ref().map(|d| json!({"default": d, "names": p.model.program.functions.keys().collect::<Vec<_>>()})),
                "shapes": p.model.flexible.iter().map(|(n, set)| (n.clone(), json!(set.describe()))).collect::<serde_json::Map<_, _>>(),
                "warnings": p.warnings,
            })).collect::<Vec<_>>(),
            "seconds": seconds,
        })),
        Format::Text => {
            let mut s = format!("wrote {} package(s) to {} ({}, {precision}) in {seconds:.2} s\n", written.len(), args.output.display(), opset.target_name());
            for (p, w) in &packages {
                s += &format!("  {}: {} ({} ops, {} of weights)\n", p.name, w.path.display(), compute_ops(&p.model), output::human_bytes(w.weight_bytes));
                for note in p.precision_notes.iter().chain(&w.precision_notes) {
                    s += &format!("    fp16: {note}\n");
                }
                if let Some(d) = &p.model.default_function {
                    let names: Vec<&str> = p.model.program.functions.keys().map(String::as_str).collect();
                    s += &format!("    {} functions, one per shape ({}), default {d}; weights stored once\n", names.len(), names.join(", "));
                }
                for (n, set) in &p.model.flexible {
                    s += &format!("    input {n} accepts shapes {}\n", set.describe());
                }
                for name in &p.folded_images {
                    s += &format!("    image {name}: scale and bias folded into the first convolution\n");
                }
                if !p.compressed.is_empty() {
                    let (stored, dense) = p.compressed.iter().fold((0, 0), |(s, d), c| (s + c.stored_bytes, d + c.dense_bytes));
                    let mut counts = std::collections::BTreeMap::new();
                    for c in &p.compressed {
                        *counts.entry(c.how.as_str()).or_insert(0) += 1;
                    }
                    let how: Vec<String> = counts.iter().map(|(h, n)| format!("{n} {h}")).collect();
                    s += &format!("    compressed: {} weights ({}), {} stored for {} dense\n", p.compressed.len(), how.join(", "), output::human_bytes(stored as u64), output::human_bytes(dense as u64));
                }
                if let Some(g) = &p.compression_gate {
                    s += &format!("    compress auto: {g}\n");
                }
            }
            s
        }
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
