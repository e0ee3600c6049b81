//! `torch2coreml validate PACKAGE`: runs the package in our MIL interpreter (no Core ML runtime
//! needed) and compares its outputs with a reference: the source TorchScript model run in
//! PyTorch on the same inputs (`--reference`, through `reference`; needs the cargo feature
//! `torch`), saved outputs (`--expected`), or another package run on the same inputs
//! (`--against`). Reports drift per output; exit 1 when any output is out of tolerance. Used in CI.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::json;

use super::output::{self, Format};
use super::ExitStatus;
use torch2coreml::interp;
use torch2coreml::pipeline;
use torch2coreml::mil::Function;
use torch2coreml::validate::{self, npz, Criterion};

/// Arguments of `validate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .mlpackage to check, or the folder `convert WHISPER_DIR` wrote (speech validation).
    pub package: PathBuf,
    /// The source TorchScript model, run through PyTorch (needs the `torch` cargo feature); for
    /// a Whisper package folder, the Hugging Face folder it was converted from.
    #[arg(long, group = "reference_kind")]
    pub reference: Option<PathBuf>,
    /// Outputs the source model produced for `--inputs` (or `--image-input`), as .npz.
    #[arg(long, group = "reference_kind")]
    pub expected: Option<PathBuf>,
    /// Another package to run on the same inputs.
    #[arg(long, group = "reference_kind")]
    pub against: Option<PathBuf>,
    /// Inputs as .npz (matched to the package inputs by name, else by position).
    #[arg(long)]
    pub inputs: Option<PathBuf>,
    /// An image file (PNG or JPEG) for image input NAME, as NAME=FILE (repeatable): its pixels
    /// 0–255 in the input's color space, stretched to the input's size if it differs. With
    /// --reference, the source model gets them through the preprocessing `convert --image`
    /// recorded in the package.
    #[arg(long, value_name = "NAME=FILE")]
    pub image_input: Vec<String>,
    /// Seed for random inputs drawn from the package signature when --inputs is not given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Judge outputs elementwise (numpy.allclose) with this absolute tolerance instead of the
    /// default criterion (default with --rtol: 0.05 for fp16 packages, 0.001 for fp32).
    #[arg(long, conflicts_with = "min_psnr")]
    pub atol: Option<f64>,
    /// Judge outputs elementwise with this relative tolerance (see --atol).
    #[arg(long, conflicts_with = "min_psnr")]
    pub rtol: Option<f64>,
    /// Judge outputs against their scale with this least PSNR in dB (and no element off by more
    /// than 5 % of the output's peak). The default for fp16 packages, at 35 dB; fp32 packages
    /// default to allclose with atol = rtol = 0.001.
    #[arg(long)]
    pub min_psnr: Option<f64>,
    /// Find where drift starts: run once in fp32, then each op at the package's precision on
    /// the fp32 values of its inputs; list the ops that drift past tolerance, overflow or turn NaN.
    /// With --reference MODEL (no torch needed here) the fp32 run starts from MODEL's fp32
    /// constants, converted again, so constants that fp16 stored as inf or 0 are named too.
    #[arg(long)]
    pub per_op: bool,
    /// For classifier packages: how many top labels to show from each side.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Whisper folders: WAV files to transcribe with the packages and the reference.
    #[arg(long, num_args = 1..)]
    pub audio: Vec<PathBuf>,
    /// Whisper folders: the spoken text, as a TSV of id, wav file name, text (refs.tsv).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Whisper folders: largest corpus WER of converted vs reference transcripts that passes.
    #[arg(long, default_value_t = 0.0)]
    pub max_wer: f64,
    /// For a multifunction package: check only this function (default: every function).
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Most drifting ops listed in the text report of `--per-op` (JSON lists all).
const PER_OP_SHOWN: usize = 10;

/// `--per-op`: the ops where fp16 drift starts, in program order.
/// With `--reference MODEL`, the baseline takes its constants from MODEL converted at fp32.
fn run_per_op(args: &Args, main: &torch2coreml::mil::Function, inputs: &[(String, interp::Array)]) -> anyhow::Result<Report> {
    let (atol0, rtol0) = validate::default_tolerances(main);
    let (atol, rtol) = (args.atol.unwrap_or(atol0), args.rtol.unwrap_or(rtol0));
    let mut main = main.clone();
    let fp32_constants = match &args.reference {
        Some(model) => {
            let reference = fp32_conversion(model, &main)?;
            let (matched, total) = validate::use_fp32_constants(&mut main, &reference);
            Some((model.display().to_string(), matched, total))
        }
        None => None,
    };
    let drifts = validate::per_op(&main, inputs, atol, rtol).with_context(|| format!("running {}", args.package.display()))?;
    let consts = fp32_constants.as_ref().map(|(m, matched, total)| json!({ "from": m, "matched": matched, "fp16_constants": total }));
    let json = json!({ "ops": drifts, "pass": drifts.is_empty(), "atol": atol, "rtol": rtol, "fp32_constants": consts });
    let text = {
        let mut s = format!("{}  per-op drift at package precision (atol {atol}, rtol {rtol})\n", args.package.display());
        match &fp32_constants {
            Some((m, matched, total)) => s += &format!("  fp32 constants from {m}: {matched} of {total} fp16 constants\n"),
            None => s += "  constants as stored (give --reference MODEL to start from its fp32 values)\n",
        }
        if drifts.is_empty() {
            s += "no op drifts past tolerance, overflows or turns NaN\n";
        }
        for d in drifts.iter().take(PER_OP_SHOWN) {
            let why = if d.op_type == "const" {
                format!("fp32 value reaches {:.3e}: {} values overflow fp16", d.fp32_peak, d.non_finite)
            } else if d.non_finite > 0 {
                format!("{} values inf/NaN", d.non_finite)
            } else if d.fp32_peak > validate::FP16_MAX {
                format!("fp32 peak {:.3e} overflows fp16", d.fp32_peak)
            } else {
                format!("max abs {:.3e}, max rel {:.3e}", d.max_abs, d.max_rel)
            };
            s += &format!("  {:<16} {:<40} {why}\n", d.op_type, d.op);
        }
        if drifts.len() > PER_OP_SHOWN {
            s += &format!("  … and {} more (see --format json)\n", drifts.len() - PER_OP_SHOWN);
        }
        s
    };
    Ok(Report { pass: drifts.is_empty(), json, text })
}

/// What checking one function gives: whether it passed, and the report in both formats.
struct Report {
    pass: bool,
    json: serde_json::Value,
    text: String,
}

/// `model` (the package's source: TorchScript, a Hugging Face folder or a package) converted at
/// fp32 with the package's op set and input shapes, for `--per-op`'s exact constants.
fn fp32_conversion(model: &std::path::Path, package: &Function) -> anyhow::Result<Function> {
    let torchscript = matches!(pipeline::kind(model)?, pipeline::Kind::TorchScript);
    let inputs = if torchscript {
        package
            .inputs
            .iter()
            .map(|i| {
                let mut ty = i.ty.tensor().clone();
                if ty.dtype == torch2coreml::mil::DType::F16 {
                    ty.dtype = torch2coreml::mil::DType::F32;
                }
                pipeline::InputSpec::new(Some(i.name.clone()), ty)
            })
            .collect()
    } else {
        Vec::new()
    };
    let options = pipeline::Options { opset: package.opset, precision: torch2coreml::mil::DType::F32, inputs, ..pipeline::Options::default() };
    let mut loading = pipeline::load(model, &options).with_context(|| format!("converting {} at fp32 for its constants", model.display()))?;
    let Some(first) = loading.packages.first_mut() else { bail!("{}: nothing to convert", model.display()) };
    first.model.program.functions.remove("main").with_context(|| format!("{}: no main function", model.display()))
}

/// Runs `validate`.
pub fn run(args: &Args) -> anyhow::Result<ExitStatus> {
    if torch2coreml::speech::packages::is_whisper_dir(&args.package) {
        return super::validate_speech::run(args);
    }
    if !args.audio.is_empty() || args.text.is_some() {
        bail!("{}: --audio and --text apply to a folder of Whisper packages (MelSpectrogram, AudioEncoder, TextDecoder.mlpackage)", args.package.display());
    }
    #[cfg(not(feature = "torch"))]
    if let Some(model) = args.reference.as_ref().filter(|_| !args.per_op) {
        bail!(
            "{}: validating against a TorchScript model needs PyTorch, and this build has no `torch` feature; \
             rebuild with `LIBTORCH_USE_PYTORCH=1 cargo build --features torch` with a python that has pip \
             torch==2.13.0 first on PATH (`make` does this), or pass \
             --expected OUTPUTS.npz saved from the model together with --inputs",
            model.display()
        );
    }
    if !args.per_op && args.reference.is_none() && args.expected.is_none() && args.against.is_none() {
        bail!("give a reference: --expected OUTPUTS.npz (with --inputs), --against OTHER.mlpackage, or --reference MODEL.pt");
    }
    if let Some(model) = args.reference.as_ref().filter(|m| matches!(pipeline::kind(m), Ok(pipeline::Kind::Export))) {
        bail!(
            "{}: a torch.export program runs only in Python (libtorch runs TorchScript): give torch's outputs \
             as --expected OUTPUTS.npz with --inputs (in Python: np.savez(path, output_0=program.module()(*inputs))), \
             or the model's traced .pt as --reference",
            model.display()
        );
    }
    if args.expected.is_some() && args.inputs.is_none() && args.image_input.is_empty() {
        bail!("--expected needs the inputs its outputs were made from: give --inputs INPUTS.npz (or --image-input NAME=FILE)");
    }
    let model = pipeline::read_package(&args.package)?;
    let mut names = model.functions_to_check(args.function.as_deref()).map_err(|m| anyhow::anyhow!("{}: --function: {m}", args.package.display()))?;
    if let (Some(p), None, Some(_)) = (&args.inputs, &args.function, &model.default_function) {
        // Given inputs fit the buckets of their shapes only.
        let given: Vec<(String, Vec<usize>)> = npz::read(p)?.into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
        let fits = |name: &String| {
            model.program.functions[name].inputs.iter().all(|i| given.iter().find(|(n, _)| *n == i.name).is_none_or(|(_, s)| i.ty.tensor().fixed_shape().as_ref() == Some(s)))
        };
        names.retain(fits);
        if names.is_empty() {
            bail!("{}: no function of the package takes the shapes of {} (give --function NAME to choose one)", args.package.display(), p.display());
        }
    }
    let report = if model.default_function.is_none() && args.function.is_none() {
        check(args, &model)?
    } else {
        // Each function on its own (a multifunction package: one per bucket), as its own model.
        let mut reports = Vec::new();
        for name in &names {
            let one = model.select(name).context("a listed function")?;
            reports.push((name.clone(), check(args, &one).with_context(|| format!("function `{name}`"))?));
        }
        Report {
            pass: reports.iter().all(|(_, r)| r.pass),
            json: json!({
                "functions": reports.iter().map(|(n, r)| (n.clone(), r.json.clone())).collect::<serde_json::Map<_, _>>(),
                "pass": reports.iter().all(|(_, r)| r.pass),
            }),
            text: reports.iter().map(|(n, r)| format!("function {n}: {}", r.text)).collect(),
        }
    };
    output::print(&match args.format {
        Format::Json => output::json(&report.json),
        Format::Text => report.text,
    })?;
    Ok(if report.pass { ExitStatus::Success } else { ExitStatus::Failure })
}

/// Validates the single-function `model` (a package, or one function of one) as `run` was
/// asked to.
fn check(args: &Args, model: &torch2coreml::mil::Model) -> anyhow::Result<Report> {
    let main = model.program.main().context("the package has no main function")?;
    let images = image_inputs(args, &model, main)?;
    let inputs = match &args.inputs {
        Some(p) => {
            let mut given = npz::read(p)?;
            given.retain(|(n, _)| !images.iter().any(|(i, ..)| i == n));
            for (name, a, _) in &images {
                let Some(v) = a.to_f32_vec() else { unreachable!("images are fp32") };
                given.push((name.clone(), torch2coreml::mil::Tensor::from_f32(&a.shape, &v)));
            }
            validate::inputs_from(main, given).with_context(|| format!("{}", p.display()))?
        }
        None if !model.flexible.is_empty() && !args.per_op => return run_shapes(args, &model, main),
        None => {
            let mut drawn = validate::random_inputs(main, args.seed).with_context(|| format!("{}", args.package.display()))?;
            for (name, a) in &mut drawn {
                match images.iter().find(|(i, ..)| i == name) {
                    Some((_, image, _)) => *a = image.clone(),
                    // Random pixels: [-1, 1) mapped to whole values 0–255.
                    None if model.images.contains_key(name.as_str()) => {
                        if let interp::Data::F32(v) = &mut a.data {
                            v.iter_mut().for_each(|x| *x = ((*x + 1.0) * 128.0).floor().min(255.0));
                        }
                    }
                    None => {}
                }
            }
            drawn
        }
    };
    accepted(args, &model, &inputs)?;
    if args.per_op {
        return run_per_op(args, main, &inputs);
    }
    let outputs = interp::run_from_zero_states(main, &inputs).with_context(|| format!("running {}", args.package.display()))?;
    let reference = reference_outputs(args, &model, &inputs)?;
    let criterion = criterion(args, main);
    let reports = validate::compare(&outputs, &reference, criterion).with_context(|| format!("{}", args.package.display()))?;
    let pass = reports.iter().all(|r| r.drift.pass);
    // A classifier's top labels, from the package's probabilities and the reference's paired output.
    let top = model.classifier.as_ref().map(|c| {
        let ours = outputs.iter().position(|(n, _)| *n == c.probabilities);
        let theirs = ours.and_then(|i| reference.iter().find(|(n, _)| *n == c.probabilities).or_else(|| reference.get(i)));
        let pick = |a: Option<&(String, interp::Array)>| a.map(|(_, a)| top_labels(a, &c.labels, args.top_k)).unwrap_or_default();
        (pick(ours.map(|i| &outputs[i])), pick(theirs))
    });
    let json = {
        let mut j = json!({ "outputs": reports, "pass": pass, "criterion": criterion });
        if !images.is_empty() {
            j["images"] = images.iter().map(|(n, _, (file, how))| json!({"input": n, "file": file, "original": [how.original.0, how.original.1], "resized": how.resized})).collect();
        }
        if let Some((ours, theirs)) = &top {
            let list = |v: &[(String, f32)]| v.iter().map(|(l, p)| json!({"label": l, "probability": p})).collect::<Vec<_>>();
            j["top_k"] = json!({"package": list(ours), "reference": list(theirs)});
        }
        j
    };
    let text = {
        let mut s = format!("{}  ({criterion})\n", args.package.display());
        for (n, a, (file, how)) in &images {
            let (w, h) = (a.shape[3], a.shape[2]);
            let size = if how.resized { format!("{}×{}, stretched to {w}×{h}", how.original.0, how.original.1) } else { format!("{w}×{h}") };
            s += &format!("  image {n}: {} ({size})\n", file.display());
        }
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
        if let Some((ours, theirs)) = &top {
            let show = |v: &[(String, f32)]| v.iter().map(|(l, p)| format!("{l} {p:.4}")).collect::<Vec<_>>().join(", ");
            s += &format!("  top-{} package:   {}\n  top-{} reference: {}\n", ours.len(), show(ours), theirs.len(), show(theirs));
        }
        s += if pass { "all outputs within tolerance\n" } else { "some outputs out of tolerance\n" };
        s
    };
    Ok(Report { pass, json, text })
}

/// The reference's outputs for `inputs`: the source model in torch (image pixels preprocessed
/// as the package does; `reference::run` gives the arrays torch's dtypes), the `--expected`
/// arrays, or the `--against` package run in our interpreter.
fn reference_outputs(args: &Args, model: &torch2coreml::mil::Model, inputs: &[(String, interp::Array)]) -> anyhow::Result<Vec<(String, interp::Array)>> {
    let _ = model;
    Ok(match (&args.reference, &args.expected, &args.against) {
        #[cfg(feature = "torch")]
        (Some(dir), _, _) if dir.is_dir() => torch2coreml::reference::run_folder(dir, &preprocessed(args, model, inputs)?)?,
        #[cfg(feature = "torch")]
        (Some(pt), _, _) => torch2coreml::reference::run(pt, &preprocessed(args, model, inputs)?)?,
        (_, Some(p), _) => npz::read(p)?
            .into_iter()
            .map(|(n, t)| interp::Array::from_tensor(&t).map(|a| (n.clone(), a)).map_err(|e| anyhow::anyhow!("{}: array `{n}`: {e}", p.display())))
            .collect::<anyhow::Result<Vec<_>>>()?,
        (_, None, Some(other)) => {
            let m = pipeline::read_package(other)?;
            // A multifunction package runs the function that takes these shapes.
            let shapes_fit = |f: &&Function| f.inputs.iter().all(|i| inputs.iter().find(|(n, _)| *n == i.name).is_none_or(|(_, a)| i.ty.tensor().fixed_shape().is_none_or(|s| s == a.shape)));
            let f = m.program.main().or_else(|| m.program.functions.values().find(shapes_fit)).context("no function of the other package takes these inputs' shapes")?;
            interp::run_from_zero_states(f, inputs).with_context(|| format!("running {}", other.display()))?
        }
        _ => unreachable!("checked before: one reference is given, and --reference only with the torch feature"),
    })
}

/// Refuses inputs of a shape a flexible input does not accept, as Core ML does.
fn accepted(args: &Args, model: &torch2coreml::mil::Model, inputs: &[(String, interp::Array)]) -> anyhow::Result<()> {
    for (name, a) in inputs {
        if let Some(set) = model.flexible.get(name).filter(|set| !set.accepts(&a.shape)) {
            bail!("{}: input `{name}` has shape {:?}, which the package does not accept ({}); Core ML would refuse it", args.package.display(), a.shape, set.describe());
        }
    }
    Ok(())
}

/// `validate` of a flexible package without `--inputs`: random inputs drawn at every
/// enumerated shape, or at the minimum, a middle and the maximum of each range (the k-th
/// sample of every flexible input together), each run and compared with the reference.
fn run_shapes(args: &Args, model: &torch2coreml::mil::Model, main: &Function) -> anyhow::Result<Report> {
    let declared = |name: &str| main.inputs.iter().find(|i| i.name == name).map(|i| i.ty.tensor().shape.iter().map(|d| match d { torch2coreml::mil::Dim::Fixed(n) => *n, _ => 1 }).collect::<Vec<_>>()).unwrap_or_default();
    let samples: Vec<(String, Vec<Vec<usize>>)> = model.flexible.iter().map(|(n, set)| (n.clone(), set.samples(&declared(n)))).collect();
    let count = samples.iter().map(|(_, s)| s.len()).max().unwrap_or(1);
    let criterion = criterion(args, main);
    let mut runs = Vec::with_capacity(count);
    for k in 0..count {
        let shapes: Vec<(String, Vec<usize>)> = samples.iter().map(|(n, s)| (n.clone(), s[k.min(s.len() - 1)].clone())).collect();
        let inputs = validate::random_inputs_at(main, args.seed, &shapes).with_context(|| format!("{}", args.package.display()))?;
        let outputs = interp::run_from_zero_states(main, &inputs).with_context(|| format!("running {} at {shapes:?}", args.package.display()))?;
        let reference = reference_outputs(args, model, &inputs)?;
        let reports = validate::compare(&outputs, &reference, criterion).with_context(|| format!("{}", args.package.display()))?;
        runs.push((shapes, reports));
    }
    let pass = runs.iter().all(|(_, r)| r.iter().all(|r| r.drift.pass));
    let json = json!({
        "shapes": runs.iter().map(|(shapes, reports)| json!({"inputs": shapes.iter().map(|(n, s)| (n.clone(), json!(s))).collect::<serde_json::Map<_, _>>(), "outputs": reports, "pass": reports.iter().all(|r| r.drift.pass)})).collect::<Vec<_>>(),
        "pass": pass,
        "criterion": criterion,
    });
    let text = {
        let mut s = format!("{}  ({criterion}), flexible inputs at {count} shape(s)\n", args.package.display());
        for (shapes, reports) in &runs {
            s += &format!("  at {}\n", shapes.iter().map(|(n, d)| format!("{n} {d:?}")).collect::<Vec<_>>().join(", "));
            for r in reports {
                let verdict = if r.drift.pass { "ok" } else { "FAIL" };
                s += &format!("    {:<24} {:<16} max_abs {:>10.3e} cosine {:>9.6} psnr {:>6.1} dB  {verdict}\n", r.name, format!("{:?}", r.shape), r.drift.max_abs, r.drift.cosine, r.drift.psnr_db);
            }
        }
        s += if pass { "all outputs within tolerance at every shape\n" } else { "some outputs out of tolerance\n" };
        s
    };
    Ok(Report { pass, json, text })
}

/// `--image-input NAME=FILE`: each file read as image input NAME of `model` needs it.
fn image_inputs(args: &Args, model: &torch2coreml::mil::Model, main: &Function) -> anyhow::Result<Vec<(String, interp::Array, (PathBuf, validate::image::Loaded))>> {
    let mut out: Vec<(String, interp::Array, (PathBuf, validate::image::Loaded))> = Vec::new();
    for spec in &args.image_input {
        let Some((name, file)) = spec.split_once('=').filter(|(n, f)| !n.is_empty() && !f.is_empty()) else {
            bail!("--image-input `{spec}`: give NAME=FILE");
        };
        let Some(&space) = model.images.get(name).filter(|_| main.inputs.iter().any(|i| i.name == name)) else {
            let images: Vec<&str> = main.inputs.iter().map(|i| i.name.as_str()).filter(|n| model.images.contains_key(*n)).collect();
            bail!("{}: --image-input `{name}`: not an image input of the package (image inputs: {})", args.package.display(), if images.is_empty() { "none".to_string() } else { images.join(", ") });
        };
        if out.iter().any(|(n, ..)| n == name) {
            bail!("--image-input `{name}` given twice");
        }
        let shape = main.inputs.iter().find(|i| i.name == name).and_then(|i| i.ty.tensor().fixed_shape()).unwrap_or_default();
        let [_, _, h, w] = shape[..] else { bail!("{}: image input `{name}` has shape {shape:?}, not [1, C, H, W]", args.package.display()) };
        let file = PathBuf::from(file);
        let (array, how) = validate::image::load(&file, space, h, w)?;
        out.push((name.to_string(), array, (file, how)));
    }
    Ok(out)
}

/// `inputs` as the source model takes them: each image input's pixels through the
/// preprocessing `convert --image` recorded in the package (the program may have folded it
/// into a convolution, so only the record tells).
#[cfg(feature = "torch")]
fn preprocessed(args: &Args, model: &torch2coreml::mil::Model, inputs: &[(String, interp::Array)]) -> anyhow::Result<Vec<(String, interp::Array)>> {
    let mut out = inputs.to_vec();
    for (name, a) in &mut out {
        if !model.images.contains_key(name.as_str()) {
            continue;
        }
        let Some((scale, bias)) = pipeline::image_preprocessing(model, name) else {
            bail!(
                "{}: image input `{name}` has no preprocessing recorded (`convert --image` records it); compare with --expected OUTPUTS.npz made from the same pixels instead",
                args.package.display()
            );
        };
        let channels = a.shape.get(1).copied().unwrap_or(0);
        if [&scale, &bias].iter().any(|t| t.len() != 1 && t.len() != channels) {
            bail!("{}: image input `{name}`: the recorded preprocessing does not have 1 or {channels} values", args.package.display());
        }
        let plane: usize = a.shape.iter().skip(2).product();
        if let interp::Data::F32(v) = &mut a.data {
            let at = |t: &[f32], c: usize| if t.len() == 1 { t[0] } else { t[c] };
            for (i, x) in v.iter_mut().enumerate() {
                let c = i / plane.max(1);
                *x = *x * at(&scale, c) + at(&bias, c);
            }
        }
    }
    Ok(out)
}

/// The `k` highest scores of `a` with their labels, best first (ties by label order).
fn top_labels(a: &interp::Array, labels: &torch2coreml::mil::Labels, k: usize) -> Vec<(String, f32)> {
    let Some(v) = a.to_f32_vec() else { return Vec::new() };
    let mut order: Vec<usize> = (0..v.len().min(labels.len())).collect();
    order.sort_by(|&i, &j| v[j].total_cmp(&v[i]).then(i.cmp(&j)));
    order.into_iter().take(k).filter_map(|i| Some((labels.get(i)?, v[i]))).collect()
}

/// The pass criterion the user asked for: `--atol`/`--rtol` (elementwise, the other from the
/// package's default tolerances), `--min-psnr` (scaled), else the package's default.
fn criterion(args: &Args, main: &Function) -> Criterion {
    let (atol0, rtol0) = validate::default_tolerances(main);
    match (args.atol, args.rtol, args.min_psnr) {
        (None, None, Some(min_psnr_db)) => Criterion::Scaled { min_psnr_db, max_error_of_peak: validate::FP16_MAX_ERROR_OF_PEAK },
        (None, None, None) => validate::default_criterion(main),
        (atol, rtol, _) => Criterion::Allclose { atol: atol.unwrap_or(atol0), rtol: rtol.unwrap_or(rtol0) },
    }
}
