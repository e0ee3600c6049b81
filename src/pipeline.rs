//! The data-flow picture of DESIGN.md as one library call: [`load`] picks the front end by what
//! the path is (a traced TorchScript `.pt`, a Hugging Face folder of a known family, or any
//! `.mlpackage`), builds MIL and runs the passes; [`write`] writes the result atomically, never
//! over data the tool did not write. Every subcommand (`convert`, `lint-ane`, `validate`,
//! `inspect`) calls it; `cli/` only parses, calls and prints.
//! Uses `torchscript`, `hf`, `passes`, `package`, `staging`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hf;
use crate::mil::{DType, Model, Opset, Program, TensorType, MAIN_FUNCTION as MAIN};
use crate::package;
use crate::passes::{self, Changes};
use crate::staging::{self, Replace, Staged};
use crate::torchscript::{self, graph};

pub use graph::InputSpec;

/// Why a model could not be loaded or written. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    #[error(transparent)]
    TorchScript(#[from] torchscript::Error),
    #[error(transparent)]
    Hf(#[from] hf::HfError),
    #[error(transparent)]
    Package(#[from] package::Error),
    #[error("{}: {source}", path.display())]
    Pass { path: PathBuf, source: passes::PassError },
    #[error(transparent)]
    Output(#[from] staging::Error),
    #[error(transparent)]
    File(#[from] crate::files::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn input_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Input { path: path.to_path_buf(), message: message.into() }
}

/// What a model path is, decided by [`kind`].
#[derive(Clone, Copy)]
pub enum Kind {
    /// A traced TorchScript archive (`torch.jit.trace` + `torch.jit.save`).
    TorchScript,
    /// A `torch.export` program (`torch.export.save`, `.pt2`), which carries its input shapes.
    Export,
    /// A Hugging Face folder (`config.json` + safetensors) of this family.
    HfFolder(&'static hf::Family),
    /// A Core ML package (ours or any other ML Program package).
    Package,
}

/// Decides which front end reads `path`: a directory is a package when it has `Manifest.json`, a
/// Hugging Face folder when it has `config.json` (the family is picked from its `model_type`);
/// a regular file is a TorchScript archive. Anything else (missing, FIFO, device) is an error.
pub fn kind(path: &Path) -> Result<Kind, Error> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => input_error(path, "no such file or directory"),
        _ => Error::Io { path: path.to_path_buf(), source: e },
    })?;
    if meta.is_dir() {
        if path.join(MANIFEST_FILE).exists() {
            return Ok(Kind::Package);
        }
        if path.join(hf::CONFIG_FILE).exists() {
            return Ok(Kind::HfFolder(hf::family_for(path)?));
        }
        return Err(input_error(path, "a directory that is neither a Core ML package (no Manifest.json) nor a Hugging Face folder (no config.json)"));
    }
    if !meta.is_file() {
        // Names what it is instead (a FIFO, a device): reading it would block or never end.
        crate::files::open_regular(path)?;
    }
    // Both are zips; a file that does not open as one is left to the TorchScript reader, whose
    // errors say what a .pt should be.
    if torchscript::zip::Zip::open(path).is_ok_and(|z| torchscript::export::is_export(&z)) {
        return Ok(Kind::Export);
    }
    Ok(Kind::TorchScript)
}

/// A package's manifest file name (how [`kind`] recognizes a package directory).
const MANIFEST_FILE: &str = "Manifest.json";

/// What the caller asks of [`load`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Deployment target of built programs (ignored for packages, which carry their own).
    pub opset: Opset,
    /// Compute and weight precision of built programs: fp16 or fp32.
    pub precision: DType,
    /// Run the ANE rewrite passes after cleanup (`convert` without `--no-ane`). `lint-ane`
    /// turns them off: findings describe the model as the user wrote it.
    pub ane: bool,
    /// TorchScript only: the shapes and dtypes of `forward()`'s arguments.
    pub inputs: Vec<InputSpec>,
    /// Hugging Face text families: sequence length of text inputs (BERT: default 128).
    pub seq_len: Option<usize>,
    /// Ops kept in fp32 by type or name (`convert --fp32-ops`), after the other passes.
    pub fp32_ops: Vec<glob::Pattern>,
    /// `convert --precision auto`: the inputs on which fp16 drift is measured; the ops whose fp16
    /// outputs overflow, turn inf/NaN or drift are kept in fp32. `None`: precision as asked.
    pub calibration: Option<Calibration>,
    /// Metadata, feature descriptions and output names for every built package.
    pub interface: Interface,
    /// `convert --compress`: large weights stored compressed, after everything else.
    pub compress: Option<Compression>,
    /// `convert --shapes` / `--seq-len A,B,…`: the shapes the one package accepts, one per
    /// bucket ([`load`] builds each and merges them). Empty: the one shape of `inputs` or
    /// `seq_len`.
    pub buckets: Vec<Bucket>,
}

/// One shape a bucketed package accepts: the model built at these input shapes (a `.pt`'s
/// `--input`s, a Hugging Face text family's `[1, L]` inputs) or at this sequence length.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    /// The function's name in a multifunction package (`input_ids_1x64`, `seq_64`).
    pub name: String,
    /// Shapes of named inputs.
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Hugging Face text families: the sequence length.
    pub seq_len: Option<usize>,
}

impl Default for Options {
    /// iOS16, fp16, ANE passes on, nothing else asked: what `convert` does without flags.
    fn default() -> Options {
        Options {
            opset: Opset::Ios16,
            precision: DType::F16,
            ane: true,
            inputs: Vec::new(),
            seq_len: None,
            fp32_ops: Vec::new(),
            calibration: None,
            interface: Interface::default(),
            compress: None,
            buckets: Vec::new(),
        }
    }
}

/// What `convert --compress` asks for.
#[derive(Clone, Debug)]
pub struct Compression {
    /// The compression (`--compress SPEC`).
    pub spec: passes::compress::Spec,
    /// For `Spec::Auto`: what the compressed program must keep.
    pub gate: passes::compress::Gate,
    /// For `Spec::Auto`: the inputs the gate is measured on.
    pub calibration: Calibration,
    /// For `Spec::Auto` on a Whisper folder: transcripts gate the choice instead (`--max-wer`
    /// on `--audio`).
    pub wer: Option<crate::speech::compress::WerGate>,
}

/// Where `--precision auto` gets its inputs: an example (`--example`), or drawn with a seed as
/// `validate --seed` draws them.
#[derive(Clone, Debug)]
pub enum Calibration {
    Example(Vec<(String, crate::mil::Tensor)>),
    Random { seed: u64 },
}

/// What a built package says about itself and how an app calls it (Model.proto `Metadata`,
/// `FeatureDescription`, image and classifier features): `convert`'s `--author`, `--license`,
/// `--description`, `--version`, `--meta`, `--describe`, `--output-names`, `--image` and
/// `--labels`. Empty fields leave the package's own.
#[derive(Clone, Debug, Default)]
pub struct Interface {
    pub author: Option<String>,
    pub license: Option<String>,
    pub description: Option<String>,
    pub version: Option<String>,
    /// User-defined metadata entries.
    pub meta: Vec<(String, String)>,
    /// Descriptions of inputs and outputs, by feature name (after renaming).
    pub describe: Vec<(String, String)>,
    /// New names for the outputs, in order.
    pub output_names: Vec<String>,
    /// Inputs to take as images (`--image`), with their preprocessing.
    pub images: Vec<ImageInput>,
    /// Outputs to return as images (`--image-output`), by their final names.
    pub image_outputs: Vec<(String, crate::mil::ColorSpace)>,
    /// Class labels (`--labels`): the package becomes a classifier over the model's one output.
    pub labels: Option<crate::mil::Labels>,
}

/// `convert --image`: an input Core ML hands over as an image of pixel values 0–255 in
/// `layout`'s channel order; the program computes `pixel · scale[c] + bias[c]` (one value, or
/// one per channel) before what the model does, so the app passes a `CVPixelBuffer` as is.
#[derive(Clone, Debug)]
pub struct ImageInput {
    pub name: String,
    pub layout: crate::mil::ColorSpace,
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One package of a loaded model: its name (file stem), model, and what each pass changed (empty
/// for packages read from disk).
pub struct Loaded {
    pub name: String,
    pub model: Model,
    pub passes: Vec<(&'static str, Changes)>,
    /// Layers the front end rescaled or kept in fp32 so fp16 loses no value, and ops kept in
    /// fp32 by `--fp32-ops` or `--precision auto`, one line each.
    pub precision_notes: Vec<String>,
    /// What the user should know about how the model was read (an input bound by position, a
    /// `--fp32-ops` pattern matching nothing), one line each.
    pub warnings: Vec<String>,
    /// Weights `--compress` stored compressed.
    pub compressed: Vec<passes::compress::Compressed>,
    /// `--compress auto`: the drift the chosen bits give on the calibration inputs.
    pub compression_gate: Option<String>,
    /// Image inputs whose preprocessing was folded into the first convolution's weights.
    pub folded_images: Vec<String>,
}

/// A loaded model: one package (TorchScript, BERT, any `.mlpackage`) or several (Whisper), plus
/// the source folder's files an app needs beside them (tokenizer, configs).
pub struct Loading {
    pub kind: Kind,
    pub packages: Vec<Loaded>,
    pub side_files: Vec<PathBuf>,
}

/// Loads `path` with the front end [`kind`] picks: TorchScript is lowered with `options.inputs`, a
/// `.pt2` program with the shapes it was exported with,
/// a Hugging Face folder is built by its family; both then run the passes. A package is read as
/// it is (no passes). Called by every subcommand.
pub fn load(path: &Path, options: &Options) -> Result<Loading, Error> {
    let kind = kind(path)?;
    if !options.buckets.is_empty() {
        return load_buckets(path, kind, options);
    }
    if !matches!(kind, Kind::TorchScript | Kind::Export) && !options.inputs.is_empty() {
        return Err(input_error(path, "input shapes (--input, --example) apply to TorchScript files and dynamic .pt2 programs only; packages and Hugging Face folders carry their own"));
    }
    let stem = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (built, side_files) = match kind {
        Kind::Package => {
            let model = package::read(path)?;
            let loaded = Loaded { name: stem, model, passes: Vec::new(), precision_notes: Vec::new(), warnings: Vec::new(), compressed: Vec::new(), compression_gate: None, folded_images: Vec::new() };
            return Ok(Loading { kind, packages: vec![loaded], side_files: Vec::new() });
        }
        Kind::TorchScript => {
            if options.inputs.is_empty() {
                return Err(input_error(path, "a TorchScript file needs its input shapes: --input NAME:DIMS:DTYPE (one per forward() argument) or --example INPUTS.npz"));
            }
            let archive = torchscript::read(path)?;
            let fp32_outputs = options.inputs.iter().any(|i| i.keep_dtype && i.ty.dtype == DType::F32);
            let opts = graph::Options { opset: options.opset, precision: options.precision, fp32_outputs };
            (vec![traced(path, stem, graph::lower(&archive, &options.inputs, &opts)?)], Vec::new())
        }
        Kind::Export => {
            let dynamic = torchscript::export::dynamic_dims(path)?;
            if !dynamic.symbols.is_empty() && options.inputs.is_empty() {
                return load_range(path, &dynamic, options);
            }
            let sizes = export_sizes(path, &dynamic, &options.inputs)?;
            let opts = graph::Options { opset: options.opset, precision: options.precision, fp32_outputs: false };
            (vec![traced(path, stem, torchscript::export::lower(path, &opts, &sizes)?)], Vec::new())
        }
        Kind::HfFolder(family) => {
            let folder = hf::open(path)?;
            let built = (family.build)(&folder, &hf::Options { opset: options.opset, precision: options.precision, seq_len: options.seq_len })?;
            let packages = built.packages.into_iter().map(|b| Built { name: b.name, model: b.model, precision_notes: Vec::new(), warnings: Vec::new() });
            (packages.collect(), built.side_files)
        }
    };
    if !options.interface.output_names.is_empty() && built.len() != 1 {
        return Err(input_error(path, format!("--output-names applies to one package; this model makes {}", built.len())));
    }
    finish(path, kind, built, side_files, options)
}

/// [`load`] with `options.buckets`: the model built and passed through at each bucket's shapes,
/// then merged into one package that accepts exactly those shapes (see [`merge_buckets`]).
fn load_buckets(path: &Path, kind: Kind, options: &Options) -> Result<Loading, Error> {
    let at = |m: String| input_error(path, m);
    if options.buckets.len() < 2 {
        return Err(at("give at least two shapes to bucket (one shape is --input or --seq-len)".into()));
    }
    // A .pt2's dynamic dimensions, read once for every bucket.
    let dynamic = match kind {
        Kind::Export => Some(torchscript::export::dynamic_dims(path)?).filter(|d| !d.symbols.is_empty()),
        _ => None,
    };
    let (mut parts, mut side_files) = (Vec::new(), Vec::new());
    for bucket in &options.buckets {
        let mut one = Options { buckets: Vec::new(), ..options.clone() };
        match kind {
            Kind::TorchScript => {
                for (name, shape) in &bucket.shapes {
                    let spec = one.inputs.iter_mut().find(|i| i.name.as_deref() == Some(name.as_str())).ok_or_else(|| {
                        at(format!("--shapes `{name}`: no --input of that name (give --input {name}:DIMS:DTYPE for its dtype)"))
                    })?;
                    spec.ty.shape = shape.iter().map(|&d| crate::mil::Dim::Fixed(d)).collect();
                }
            }
            Kind::HfFolder(_) => {
                let lengths: BTreeSet<usize> = bucket.shapes.iter().map(|(_, s)| s.last().copied().unwrap_or(0)).chain(bucket.seq_len).collect();
                let [len] = lengths.iter().copied().collect::<Vec<_>>()[..] else {
                    return Err(at(format!("bucket {}: a Hugging Face text model takes one sequence length per bucket, as [1, L] inputs", bucket.name)));
                };
                one.seq_len = Some(len);
            }
            Kind::Export => {
                let Some(dynamic) = &dynamic else {
                    return Err(at("--shapes: this .pt2 program was exported with fixed shapes; export with torch.export.Dim dimensions, or bucket the traced .pt".into()));
                };
                one.inputs = export_specs(dynamic, |name, _| bucket.shapes.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone()));
            }
            Kind::Package => return Err(at("--shapes and --seq-len apply to conversion, not to a package".into())),
        }
        let mut loading = load(path, &one)?;
        if loading.packages.len() != 1 {
            return Err(at(format!("buckets apply to models that make one package; this one makes {}", loading.packages.len())));
        }
        let loaded = loading.packages.remove(0);
        let main = loaded.model.program.main().ok_or_else(|| at("the built program has no main function".into()))?;
        for (name, shape) in &bucket.shapes {
            let ty = main.inputs.iter().find(|i| &i.name == name).map(|i| i.ty.tensor());
            match ty.and_then(TensorType::fixed_shape) {
                Some(s) if s == *shape => {}
                Some(s) => return Err(at(format!("bucket {}: input `{name}` is built as {s:?}, not the {shape:?} asked", bucket.name))),
                None => {
                    let names: Vec<&str> = main.inputs.iter().map(|i| i.name.as_str()).collect();
                    return Err(at(format!("--shapes `{name}`: the model has no such input ({})", names.join(", "))));
                }
            }
        }
        parts.push((bucket.name.clone(), loaded));
        side_files = loading.side_files;
    }
    let merged = merge_buckets(parts, options.opset).map_err(at)?;
    Ok(Loading { kind, packages: vec![merged], side_files })
}

/// The shapes the dynamic `.pt2` inputs of `dynamic` take: `shape(name, sizes)` gives them
/// (`None`: the input keeps its exported sizes, where any symbol then lacks a size).
fn export_specs(dynamic: &torchscript::export::Dynamic, shape: impl Fn(&str, &[torchscript::export::Size]) -> Option<Vec<usize>>) -> Vec<InputSpec> {
    dynamic
        .inputs
        .iter()
        .filter_map(|(name, dtype, sizes)| Some(InputSpec::new(Some(name.clone()), TensorType::new(*dtype, &shape(name, sizes)?))))
        .collect()
}

/// The size of each dynamic dimension of a `.pt2` program, from input shapes the user gave
/// (`--input`, a bucket): each named input must be one of the program's, with its static sizes
/// and every symbol within its range, the same wherever it appears.
fn export_sizes(path: &Path, dynamic: &torchscript::export::Dynamic, inputs: &[InputSpec]) -> Result<std::collections::BTreeMap<String, usize>, Error> {
    use torchscript::export::Size;
    let at = |m: String| input_error(path, m);
    if dynamic.symbols.is_empty() && !inputs.is_empty() {
        return Err(at("this .pt2 program was exported with fixed shapes, which it carries; give no --input".into()));
    }
    let mut sizes = std::collections::BTreeMap::new();
    for spec in inputs {
        let name = spec.name.as_deref().unwrap_or_default();
        let names: Vec<&str> = dynamic.inputs.iter().map(|(n, ..)| n.as_str()).collect();
        let (_, _, dims) = dynamic.inputs.iter().find(|(n, ..)| n == name).ok_or_else(|| at(format!("--input `{name}`: the program has no such input ({})", names.join(", "))))?;
        let shape = spec.ty.fixed_shape().unwrap_or_default();
        if shape.len() != dims.len() {
            return Err(at(format!("--input `{name}`: {} dimensions given, the program's input has {}", shape.len(), dims.len())));
        }
        for (k, (&n, d)) in shape.iter().zip(dims).enumerate() {
            match d {
                Size::Fixed(f) if *f != n => return Err(at(format!("--input `{name}`: dimension {k} is fixed at {f} in the program, not {n}"))),
                Size::Fixed(_) => {}
                Size::Symbol(sym) => {
                    let (lo, hi) = dynamic.symbols.get(sym).copied().unwrap_or((1, None));
                    if n < lo || hi.is_some_and(|h| n > h) {
                        let range = hi.map_or(format!("{lo}.."), |h| format!("{lo}..{h}"));
                        return Err(at(format!("--input `{name}`: dimension {k} ({sym}) must be within {range}, the range it was exported with, not {n}")));
                    }
                    if let Some(old) = sizes.insert(sym.clone(), n).filter(|&o| o != n) {
                        return Err(at(format!("--input `{name}`: dimension {k} is {sym}, already given as {old}, not {n}")));
                    }
                }
            }
        }
    }
    for (name, _, dims) in &dynamic.inputs {
        if let Some((k, Size::Symbol(sym))) = dims.iter().enumerate().find(|(_, d)| matches!(d, Size::Symbol(s) if !sizes.contains_key(s))) {
            return Err(at(format!("input `{name}`: dynamic dimension {k} ({sym}) needs a size: give --input {name}:DIMS")));
        }
    }
    Ok(sizes)
}

/// Sizes a dynamic dimension without an upper bound is sampled at when checking that the
/// program is valid over its range: its minimum times these, plus one for the odd size.
const UNBOUNDED_SAMPLES: [(usize, usize); 4] = [(1, 0), (2, 0), (2, 1), (4, 0)];

/// A `.pt2` program with dynamic dimensions and no sizes given: lowered at each symbol's
/// minimum, middle, middle + 1 (the other parity: a size halved shows) and maximum, all
/// symbols at once, and merged by `mil::merge` into one function whose dynamic dimensions are
/// Core ML ranges bounded by the program's range constraints: what the program computed from
/// a size becomes MIL shape ops. When that fails, an error saying what baked the size,
/// pointing to `--shapes`.
fn load_range(path: &Path, dynamic: &torchscript::export::Dynamic, options: &Options) -> Result<Loading, Error> {
    use torchscript::export::Size;
    // The program at sample `k`, each symbol's size raised to at least `floor`.
    let sample = |k: usize, floor: usize| -> Result<Loaded, Error> {
        let at_k = |&(lo, hi): &(usize, Option<usize>)| {
            let n = match hi {
                Some(h) => [lo, lo + (h - lo) / 2, (lo + (h - lo) / 2 + 1).min(h), h][k],
                None => lo.saturating_mul(UNBOUNDED_SAMPLES[k].0).saturating_add(UNBOUNDED_SAMPLES[k].1),
            };
            n.max(floor).min(hi.unwrap_or(usize::MAX))
        };
        let shape = |_: &str, dims: &[Size]| Some(dims.iter().map(|d| match d { Size::Fixed(n) => *n, Size::Symbol(s) => dynamic.symbols.get(s).map_or(1, at_k) }).collect());
        let one = Options { inputs: export_specs(dynamic, shape), ..options.clone() };
        Ok(load(path, &one)?.packages.remove(0))
    };
    let main_of = |l: &mut Loaded, k: usize| -> Result<(String, crate::mil::Function), Error> {
        Ok((format!("sample {k}"), l.model.program.functions.remove(MAIN).ok_or_else(|| input_error(path, "no main function"))?))
    };
    let mut parts = (0..UNBOUNDED_SAMPLES.len()).map(|k| sample(k, 0)).collect::<Result<Vec<_>, Error>>()?;
    let mut functions: Vec<(String, crate::mil::Function)> = parts.iter_mut().enumerate().map(|(k, l)| main_of(l, k)).collect::<Result<_, Error>>()?;
    let dims: Vec<String> = dynamic.inputs.iter().flat_map(|(n, _, d)| d.iter().enumerate().filter_map(move |(k, s)| match s { Size::Symbol(sym) => Some(format!("{n}[{k}] ({sym})")), _ => None })).collect();
    let bounded = dynamic.symbols.values().all(|(_, hi)| hi.is_some());
    let coverage = crate::mil::merge::Coverage::Range { bounded };
    let merged = match crate::mil::merge::merge(&functions, coverage) {
        Ok(merged) => Ok(merged),
        // A size of 1 often builds a different program (an `expand` to it is nothing): merge
        // from 2 up, then check the result against the program built at 1, in the interpreter.
        Err(why) if dynamic.symbols.values().any(|&(lo, hi)| lo == 1 && hi.is_none_or(|h| h >= 2)) => {
            let mut at_two = sample(0, 2)?;
            let (_, at_one) = std::mem::replace(&mut functions[0], main_of(&mut at_two, 0)?);
            crate::mil::merge::merge(&functions, coverage)
                .map_err(|_| why.clone())
                .and_then(|m| agrees(&m.function, &at_one).map(|()| m).map_err(|e| format!("{why}; merged from size 2 up, at size 1 {e}")))
        }
        Err(why) => Err(why),
    }
    .map_err(|why| {
        input_error(path, format!("the dynamic dimensions {} cannot be a Core ML range: the program bakes their size in ({why}); give the sizes to accept with --shapes NAME:DIMS,DIMS,… (buckets), or one with --input", dims.join(", ")))
    })?;
    let mut first = parts.remove(0);
    first.model.program.functions.insert(MAIN.into(), merged.function);
    first.model.flexible = dynamic
        .inputs
        .iter()
        .filter(|(_, _, d)| d.iter().any(|s| matches!(s, Size::Symbol(_))))
        .map(|(name, _, d)| {
            let range = d.iter().map(|s| match s { Size::Fixed(n) => (*n, Some(*n)), Size::Symbol(sym) => dynamic.symbols.get(sym).copied().unwrap_or((1, None)) }).collect();
            (name.clone(), crate::mil::ShapeSet::Range(range))
        })
        .collect();
    Ok(Loading { kind: Kind::Export, packages: vec![first], side_files: Vec::new() })
}

/// Seed of the inputs [`agrees`] draws.
const AGREE_SEED: u64 = 1;

/// Whether `merged` computes what `at` (the same model built at one size) computes: both run in
/// the interpreter from zero states on inputs drawn from `at`'s signature as `validate --seed`
/// draws them, but integers zero (a valid token id, position or index for any axis), judged as
/// `validate` judges a package against its reference. An error saying which output differs.
fn agrees(merged: &crate::mil::Function, at: &crate::mil::Function) -> Result<(), String> {
    let mut inputs = crate::validate::random_inputs(at, AGREE_SEED).map_err(|e| e.to_string())?;
    for (_, a) in &mut inputs {
        if let crate::interp::Data::I32(v) = &mut a.data {
            v.fill(0);
        }
    }
    let want = crate::interp::run_from_zero_states(at, &inputs).map_err(|e| e.to_string())?;
    let got = crate::interp::run_from_zero_states(merged, &inputs).map_err(|e| e.to_string())?;
    let reports = crate::validate::compare(&got, &want, crate::validate::default_criterion(at)).map_err(|e| e.to_string())?;
    match reports.iter().find(|r| !r.drift.pass) {
        Some(r) => Err(format!("output `{}` differs from the program built there", r.name)),
        None => Ok(()),
    }
}

/// One package from the same model built at each bucket's shapes (`parts`, in bucket order):
/// - when the programs differ only in the sizes of values (nothing computed from a shape was
///   baked in), one `main` whose differing dimensions are unknown, each flexible input
///   enumerating its bucket shapes (Core ML `EnumeratedShapes`; any target);
/// - otherwise, from iOS18, a multifunction package: one function per bucket, the first the
///   default, each with the static sizes of its bucket (the Neural Engine's best case); their
///   weights are equal tensors, which `package::write` stores once;
/// - below iOS18, one `main` with enumerated shapes whose baked sizes `mil::merge` computes
///   at run time from the input's shape (a warning says so), or an error when it cannot.
fn merge_buckets(mut parts: Vec<(String, Loaded)>, opset: Opset) -> Result<Loaded, String> {
    use crate::mil::merge::{merge, Coverage};
    let take = |l: &mut Loaded| l.model.program.functions.remove(MAIN).ok_or("a bucket has no main function".to_string());
    let functions: Vec<(String, crate::mil::Function)> = parts.iter_mut().map(|(n, l)| Ok((n.clone(), take(l)?))).collect::<Result<_, String>>()?;
    let (_, mut first) = parts.remove(0);
    for (_, p) in &parts {
        for (into, from) in [(&mut first.precision_notes, &p.precision_notes), (&mut first.warnings, &p.warnings)] {
            let new: Vec<String> = from.iter().filter(|n| !into.contains(n)).cloned().collect();
            into.extend(new);
        }
    }
    let merged = match merge(&functions, Coverage::Samples { computed: false }) {
        Ok(merged) => merged,
        Err(_) if opset >= Opset::Ios18 => {
            let default = functions[0].0.clone();
            first.model.program.functions = functions.into_iter().collect();
            first.model.default_function = Some(default);
            return Ok(first);
        }
        Err(why) => {
            let merged = merge(&functions, Coverage::Samples { computed: true }).map_err(|e| {
                format!("the program bakes its shape in ({why}; computing it from the input's shape fails: {e}), so each shape needs its own function: a multifunction package needs --target iOS18 or later")
            })?;
            first.warnings.push(format!(
                "the program bakes its shape in ({why}): below iOS18 there are no multifunction packages, so its sizes are computed from the input's shape at run time (--target iOS18 gives each bucket a function of static sizes)"
            ));
            merged
        }
    };
    first.model.program.functions.insert(MAIN.into(), merged.function);
    first.model.flexible = merged.flexible;
    Ok(first)
}

/// One package a front end built, before the passes.
struct Built {
    name: String,
    model: Model,
    precision_notes: Vec<String>,
    warnings: Vec<String>,
}

/// The package of a lowered `.pt` or `.pt2`, with its source file recorded.
fn traced(path: &Path, name: String, lowered: graph::Lowered) -> Built {
    let mut model = Model::new(Program::with_main(lowered.function));
    let source = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    model.metadata.user_defined.insert(SOURCE_KEY.into(), source);
    Built { name, model, precision_notes: lowered.precision_notes, warnings: lowered.warnings }
}

/// Reads the package at `path` (ours or any ML Program package) for `inspect` and `validate`;
/// anything that is not a package is refused with what it is.
pub fn read_package(path: &Path) -> Result<Model, Error> {
    if path.is_dir() && path.join(hf::CONFIG_FILE).exists() && !path.join(MANIFEST_FILE).exists() {
        return Err(input_error(path, "not an .mlpackage but a Hugging Face folder; convert it first"));
    }
    Ok(package::read(path)?)
}

/// Metadata key recording the writing version (read back by `inspect`).
const VERSION_KEY: &str = "torch2coreml.version";
/// Metadata key recording the source file name of a TorchScript conversion.
const SOURCE_KEY: &str = "torch2coreml.source";
/// Metadata key prefix (then the input name) recording an image input's preprocessing as
/// `scale=…;bias=…`: `validate --reference` applies it to the pixels it hands the source model,
/// since once folded into a convolution the program no longer shows it.
pub const PREPROCESSING_KEY: &str = "torch2coreml.image.";

/// The preprocessing (per-channel scale and bias, one value or one per channel) recorded for
/// image input `name` of `model` by `convert --image`, if any.
pub fn image_preprocessing(model: &Model, name: &str) -> Option<(Vec<f32>, Vec<f32>)> {
    let text = model.metadata.user_defined.get(&format!("{PREPROCESSING_KEY}{name}"))?;
    let (scale, bias) = text.strip_prefix("scale=")?.split_once(";bias=")?;
    let parse = |s: &str| s.split(',').map(|x| x.parse::<f32>().ok().filter(|v| v.is_finite())).collect::<Option<Vec<f32>>>();
    Some((parse(scale)?, parse(bias)?))
}

/// Runs the passes over each built package's `main` function, keeps in fp32 what
/// `--fp32-ops` and `--precision auto` ask for, applies the interface options and records our
/// version.
fn finish(path: &Path, kind: Kind, built: Vec<Built>, side_files: Vec<PathBuf>, options: &Options) -> Result<Loading, Error> {
    let pass_error = |source| Error::Pass { path: path.to_path_buf(), source };
    let mut packages = Vec::new();
    for Built { name, mut model, mut precision_notes, mut warnings } in built {
        model.metadata.user_defined.insert(VERSION_KEY.into(), env!("CARGO_PKG_VERSION").into());
        let Some(mut main) = model.program.functions.remove("main") else {
            return Err(input_error(path, format!("{name}: the built program has no main function")));
        };
        let mut folded_images = Vec::new();
        for image in &options.interface.images {
            if image_input(&mut main, image).map_err(|m| input_error(path, format!("--image {}: {m}", image.name)))? {
                folded_images.push(image.name.clone());
            }
            model.images.insert(image.name.clone(), image.layout);
            let numbers = |v: &[f32]| v.iter().map(f32::to_string).collect::<Vec<_>>().join(",");
            model.metadata.user_defined.insert(format!("{PREPROCESSING_KEY}{}", image.name), format!("scale={};bias={}", numbers(&image.scale), numbers(&image.bias)));
        }
        precision_notes.extend(passes::fp16_range::run(&mut main, None).map_err(pass_error)?);
        let changes = passes::run(&mut main, options.ane).map_err(pass_error)?;
        if !options.fp32_ops.is_empty() {
            let kept = passes::fp16_range::by_patterns(&mut main, &options.fp32_ops).map_err(pass_error)?;
            for p in options.fp32_ops.iter().filter(|p| !kept.iter().any(|k| k.ends_with(&format!("`{}`", p.as_str())))) {
                warnings.push(format!("--fp32-ops `{}` matches no fp16 op of {name}", p.as_str()));
            }
            precision_notes.extend(kept);
        }
        if let Some(calibration) = &options.calibration {
            precision_notes.extend(auto_precision(&mut main, calibration).map_err(|e| input_error(path, format!("--precision auto: {e}")))?);
        }
        // A Whisper folder's MelSpectrogram holds signal processing (DFT basis, mel filters),
        // not learned weights: compressing it would change every input the model sees.
        let (compressed, compression_gate) = match options.compress.as_ref().filter(|c| !(matches!(kind, Kind::HfFolder(_)) && (name == hf::whisper::MEL_PACKAGE || c.wer.is_some()))) {
            Some(c) => {
                let fail = |m: String| input_error(path, format!("--compress {}: {m}", c.spec.name()));
                if c.spec == passes::compress::Spec::Auto {
                    let inputs = calibration_inputs(&main, &c.calibration).map_err(fail)?;
                    let (done, gate) = passes::compress::auto(&mut main, &inputs, c.gate).map_err(fail)?;
                    (done, Some(gate))
                } else {
                    (passes::compress::run(&mut main, c.spec).map_err(fail)?, None)
                }
            }
            None => (Vec::new(), None),
        };
        model.program.functions.insert("main".into(), main);
        apply_interface(&mut model, &options.interface).map_err(|m| input_error(path, m))?;
        packages.push(Loaded { name, model, passes: changes, precision_notes, warnings, compressed, compression_gate, folded_images });
    }
    if let Some((c, gate)) = options.compress.as_ref().and_then(|c| Some((c, c.wer.as_ref()?))) {
        whisper_auto(path, &mut packages, &c.calibration, gate).map_err(|m| input_error(path, format!("--compress auto --max-wer: {m}")))?;
    }
    Ok(Loading { kind, packages, side_files })
}

/// Makes input `image.name` of `main` an fp32 `[1, C, H, W]` pixel tensor and puts the
/// preprocessing (scale, bias, then a cast to the compute dtype the input had) in front of
/// everything that read it. When the only reader is a convolution without padding, the
/// preprocessing is folded into its weights and bias instead (see [`fold_into_conv`]). Returns
/// whether it was folded.
fn image_input(main: &mut crate::mil::Function, image: &ImageInput) -> Result<bool, String> {
    use crate::mil::{Tensor, ValueType};
    use crate::passes::rewrite::{Arg, Rewriter};
    let names: Vec<String> = main.inputs.iter().map(|i| i.name.clone()).collect();
    let input = main.inputs.iter_mut().find(|i| i.name == image.name).ok_or_else(|| format!("the model has no such input ({})", names.join(", ")))?;
    let ValueType::Tensor(t) = &mut input.ty else { return Err("a state is not an image".into()) };
    let c = image.layout.channels();
    let Some([1, channels, _, _]) = t.fixed_shape().and_then(|s| <[usize; 4]>::try_from(s).ok()) else {
        return Err(format!("an image input must be [1, C, H, W], not {t}"));
    };
    if channels != c || !t.dtype.is_float() {
        return Err(format!("{} needs a float input with {c} channel(s), not {t}", image.layout.name()));
    }
    for (what, v) in [("scale", &image.scale), ("bias", &image.bias)] {
        if v.len() != 1 && v.len() != c {
            return Err(format!("{what} has {} values; give 1 or {c}", v.len()));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(format!("{what} must be finite"));
        }
    }
    let compute = t.dtype;
    t.dtype = DType::F32;
    let per_channel = |v: &[f32]| Tensor::from_f32(&[1, v.len(), 1, 1], v);
    let err = |e: crate::mil::ops::TypeError| e.to_string();
    let readers = readers(main, &image.name);
    let (mut r, ops) = Rewriter::new(main);
    let x = r.var(&image.name);
    // Pixels 0–255 are exact in fp16, so the cast may come first when the conv takes them raw.
    let cast = |r: &mut Rewriter, v| match compute {
        DType::F32 => Ok(v),
        _ => r.op1("cast", &format!("{}_cast", image.name), &[("x", Arg::Var(v)), ("dtype", Arg::Const(Tensor::string(compute.name())))]),
    };
    let preprocess = |r: &mut Rewriter, x| {
        let scaled = r.op1("mul", &format!("{}_scaled", image.name), &[("x", Arg::Var(x)), ("y", Arg::Const(per_channel(&image.scale)))])?;
        let v = r.op1("add", &format!("{}_preprocessed", image.name), &[("x", Arg::Var(scaled)), ("y", Arg::Const(per_channel(&image.bias)))])?;
        cast(r, v)
    };
    let mut folded = false;
    let mut ops = ops.into_iter();
    if let [reader] = readers.as_slice() {
        for op in ops.by_ref() {
            if op.name != *reader {
                r.keep(op);
                continue;
            }
            r.at(&op);
            match fold_into_conv(&r, &op, &image.name, c, image) {
                Some((weight, bias)) => {
                    let raw = cast(&mut r, x.clone()).map_err(err)?;
                    let mut args = vec![("x", Arg::Var(raw)), ("weight", Arg::Const(weight)), ("bias", Arg::Const(bias))];
                    for (param, a) in op.inputs.iter().filter(|(p, _)| !["x", "weight", "bias"].contains(&p.as_str())) {
                        let Some(crate::mil::Argument::Name(n)) = a.first() else { return Err(format!("conv `{}`: literal `{param}`", op.name)) };
                        args.push((param.as_str(), r.value(n).map_or_else(|| Arg::Var(r.var(n)), |v| Arg::Const(v.clone()))));
                    }
                    let y = r.op1("conv", &op.name, &args).map_err(err)?;
                    r.replace(&op.outputs[0].name, &y);
                    folded = true;
                }
                None => {
                    // Not foldable: the preprocessing goes in front of the reader as usual.
                    let v = preprocess(&mut r, x.clone()).map_err(err)?;
                    r.replace(&image.name, &v);
                    r.keep(op);
                }
            }
            break;
        }
    } else {
        let v = preprocess(&mut r, x).map_err(err)?;
        r.replace(&image.name, &v);
    }
    for op in ops {
        r.keep(op);
    }
    r.finish(main);
    Ok(folded)
}

/// The weight and bias of `op` with the image preprocessing `x · scale[c] + bias[c]` folded in,
/// when `op` is a `conv` reading `input` as `x`, without padding (padding adds zeros after the
/// preprocessing, which raw pixels cannot express) and with const weight and bias:
/// `W'[o,c,…] = W[o,c,…] · scale[c]` and `b'[o] = b[o] + Σ W[o,c,…] · bias[c]`.
fn fold_into_conv(r: &crate::passes::rewrite::Rewriter, op: &crate::mil::Operation, input: &str, channels: usize, image: &ImageInput) -> Option<(crate::mil::Tensor, crate::mil::Tensor)> {
    use crate::mil::{Argument, Tensor};
    let arg = |p: &str| op.inputs.iter().find(|(n, _)| n == p).and_then(|(_, a)| a.first());
    let named = |p: &str| match arg(p) {
        Some(Argument::Name(n)) => r.value(n),
        Some(Argument::Value(v)) => Some(v),
        None => None,
    };
    if op.op_type != "conv" || !matches!(arg("x"), Some(Argument::Name(n)) if n == input) {
        return None;
    }
    let pad_free = match named("pad_type").and_then(Tensor::as_str) {
        Some("valid") => true,
        Some("custom") | None => named("pad").and_then(Tensor::to_i64_vec).is_none_or(|p| p.iter().all(|&x| x == 0)),
        _ => false,
    };
    let w = named("weight")?;
    let shape = w.shape().to_vec();
    let groups = named("groups").and_then(Tensor::as_i64).unwrap_or(1).max(1) as usize;
    let (out, per_group_in) = (*shape.first()?, *shape.get(1)?);
    if !pad_free || shape.len() != 4 || out == 0 || per_group_in * groups != channels || out % groups != 0 || !w.dtype().is_float() {
        return None;
    }
    let weights = w.to_f32_vec()?;
    let bias = match arg("bias") {
        Some(_) => named("bias")?.to_f32_vec()?,
        None => vec![0.0; out],
    };
    let at = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c] };
    let (k, out_per_group) = (weights.len() / out, out / groups);
    let mut new_w = vec![0f32; weights.len()];
    let mut new_b = Vec::with_capacity(out);
    for o in 0..out {
        let mut sum = f64::from(bias[o]);
        for (i, (&wv, nw)) in weights[o * k..(o + 1) * k].iter().zip(&mut new_w[o * k..(o + 1) * k]).enumerate() {
            let c = (o / out_per_group) * per_group_in + i / (k / per_group_in);
            *nw = wv * at(&image.scale, c);
            sum += f64::from(wv) * f64::from(at(&image.bias, c));
        }
        new_b.push(sum as f32);
    }
    let make = |shape: &[usize], v: &[f32]| if w.dtype() == DType::F16 { Tensor::from_f32_as_f16(shape, v) } else { Tensor::from_f32(shape, v) };
    Some((make(&shape, &new_w), make(&[out], &new_b)))
}

/// Makes output `name` of `main` (`--image-output`) an fp32 `[1, C, H, W]` tensor of `space`'s
/// channels, casting it to fp32 under the same name if the program computes it in fp16.
fn image_output(main: &mut crate::mil::Function, name: &str, space: crate::mil::ColorSpace) -> Result<(), String> {
    use crate::passes::rewrite::{Arg, Rewriter};
    if !main.block.outputs.iter().any(|o| o == name) {
        return Err(format!("the model has no such output ({})", main.block.outputs.join(", ")));
    }
    let ty = main.block.operations.iter().flat_map(|o| &o.outputs).find(|o| o.name == name).map(|o| o.ty.tensor().clone()).ok_or("the output is not computed by the program")?;
    let c = space.channels();
    if !matches!(ty.fixed_shape().as_deref(), Some(&[1, ch, _, _]) if ch == c) || !ty.dtype.is_float() {
        return Err(format!("a {} image output must be a float [1, {c}, H, W] tensor, not {ty}", space.name()));
    }
    if ty.dtype == DType::F32 {
        return Ok(());
    }
    let computed = format!("{name}_{}", ty.dtype.name());
    if main.block.defines(&computed) || main.inputs.iter().any(|i| i.name == computed) {
        return Err(format!("the program already has a value named {computed}"));
    }
    main.block.rename(name, &computed);
    let (mut r, ops) = Rewriter::new(main);
    for op in ops {
        r.keep(op);
    }
    let v = r.op1("cast", name, &[("x", Arg::Var(r.var(&computed))), ("dtype", Arg::Const(crate::mil::Tensor::string("fp32")))]).map_err(|e| e.to_string())?;
    r.replace(&computed, &v);
    r.finish(main);
    Ok(())
}

/// Rounds of `--precision auto`: each keeps in fp32 what the last one found, then measures
/// again (an op kept in fp32 may hand a value fp16 cannot hold to the next one).
const AUTO_ROUNDS: usize = 4;
/// Largest error of one fp16 op, given exact inputs, as a fraction of its output's peak, that
/// `--precision auto` accepts: fp16's rounding (2^-11 relative) plus what an fp16 accumulation
/// over a few thousand terms adds stays well under it; an op past it loses what the next layers
/// need.
const AUTO_MAX_ERROR_OF_PEAK: f64 = 1e-2;

/// `--precision auto`: measures each op of `main` at fp16 against fp32 on the calibration
/// inputs (`validate::per_op`, each op on exact inputs) and keeps in fp32 those whose fp16
/// output overflows, turns inf/NaN, or errs by more than [`AUTO_MAX_ERROR_OF_PEAK`] of its peak.
/// A cast down to fp16 that overflows takes its readers into fp32, a cast up from an fp16 value
/// that already overflowed takes that value's producer. Each round rewrites the original
/// function with everything found so far, so neighbouring fp32 ops pass fp32 values to each
/// other. Returns one line per op kept.
/// The inputs `calibration` names for `main`.
/// `--compress auto --max-wer` on the packages of the Whisper folder `dir`: the AudioEncoder's
/// and TextDecoder's tables chosen together by transcripts (`speech::compress`).
fn whisper_auto(dir: &Path, packages: &mut [Loaded], calibration: &Calibration, gate: &crate::speech::compress::WerGate) -> Result<(), String> {
    let index = |n: &str| packages.iter().position(|p| p.name == n).ok_or_else(|| format!("--max-wer applies to a Whisper folder; no {n} package was built"));
    let (m, e, d) = (index(hf::whisper::MEL_PACKAGE)?, index(hf::whisper::ENCODER_PACKAGE)?, index(hf::whisper::DECODER_PACKAGE)?);
    let mut take = |i: usize| packages[i].model.program.functions.remove("main").ok_or("a package has no main function".to_string());
    let (mel, mut encoder, mut decoder) = (take(m)?, take(e)?, take(d)?);
    let result = (|| {
        let (ei, di) = (calibration_inputs(&encoder, calibration)?, calibration_inputs(&decoder, calibration)?);
        crate::speech::compress::auto(&mel, &mut encoder, &mut decoder, [&ei, &di], dir, gate)
    })();
    for (i, f) in [(m, mel), (e, encoder), (d, decoder)] {
        packages[i].model.program.functions.insert("main".into(), f);
    }
    let chosen = result?;
    packages[e].compressed = chosen.encoder;
    packages[d].compressed = chosen.decoder;
    for i in [e, d] {
        packages[i].compression_gate = Some(chosen.summary.clone());
    }
    Ok(())
}

fn calibration_inputs(main: &crate::mil::Function, calibration: &Calibration) -> Result<Vec<(String, crate::interp::Array)>, String> {
    match calibration {
        Calibration::Example(given) => crate::validate::inputs_from(main, given.clone()),
        Calibration::Random { seed } => crate::validate::random_inputs(main, *seed),
    }
    .map_err(|e| e.to_string())
}

fn auto_precision(main: &mut crate::mil::Function, calibration: &Calibration) -> Result<Vec<String>, String> {
    use crate::validate;
    let inputs = calibration_inputs(main, calibration)?;
    let original = main.clone();
    let candidates: std::collections::HashMap<&str, &crate::mil::Operation> = original
        .block
        .operations
        .iter()
        .filter(|o| o.op_type != "const" && o.blocks.is_empty() && !is_cast_to(o, DType::F16))
        .map(|o| (o.name.as_str(), o))
        .collect();
    let mut notes = Vec::new();
    let mut kept = foldhash::HashSet::default();
    for _ in 0..AUTO_ROUNDS {
        let drifts = validate::per_op(main, &inputs, 0.0, 0.0).map_err(|e| e.to_string())?;
        let mut found = false;
        for d in drifts.iter().filter(|d| d.op_type != "const") {
            let why = if d.non_finite > d.fp32_non_finite {
                format!("{} element(s) turn inf/NaN in fp16", d.non_finite)
            } else if d.fp32_peak > validate::FP16_MAX {
                format!("its output reaches {:.3e}, beyond fp16's 65504", d.fp32_peak)
            } else if d.max_abs > AUTO_MAX_ERROR_OF_PEAK * d.fp32_peak {
                format!("fp16 errs by {:.1} % of its peak", 100.0 * d.max_abs / d.fp32_peak.max(f64::MIN_POSITIVE))
            } else {
                continue;
            };
            let op = main.block.operations.iter().find(|o| o.name == d.op);
            let mut targets = vec![d.op.clone()];
            if let Some(op) = op.filter(|o| is_cast_to(o, DType::F16)) {
                targets = readers(main, &op.outputs[0].name);
            } else if let Some(op) = op.filter(|o| is_cast_to(o, DType::F32)) {
                targets = op.inputs.iter().filter(|(p, _)| p == "x").flat_map(|(_, a)| a).filter_map(|a| match a {
                    crate::mil::Argument::Name(n) => producer(main, n),
                    _ => None,
                }).collect();
            }
            for t in targets {
                let Some(op) = candidates.get(t.as_str()) else { continue };
                if !kept.insert(t.clone()) {
                    continue;
                }
                found = true;
                // A cast up to fp32 it takes is no op of its own any more: nothing to report.
                if op.op_type != "cast" {
                    notes.push(format!("`{t}` ({}) computes in fp32: {why} on the calibration inputs", op.op_type));
                }
            }
        }
        if !found {
            break;
        }
        *main = original.clone();
        crate::passes::fp16_range::keep_in_fp32(main, &kept, &foldhash::HashMap::default()).map_err(|e| e.to_string())?;
    }
    Ok(notes)
}

/// Whether `op` is a `cast` whose output has dtype `to`.
fn is_cast_to(op: &crate::mil::Operation, to: DType) -> bool {
    op.op_type == "cast" && op.outputs.first().is_some_and(|o| o.ty.tensor().dtype == to)
}

/// The name of the top-level op of `f` that defines the value `name`.
fn producer(f: &crate::mil::Function, name: &str) -> Option<String> {
    f.block.operations.iter().find(|o| o.outputs.iter().any(|x| x.name == name)).map(|o| o.name.clone())
}

/// The names of the top-level ops of `f` that read the value `name`.
fn readers(f: &crate::mil::Function, name: &str) -> Vec<String> {
    f.block
        .operations
        .iter()
        .filter(|o| o.inputs.iter().flat_map(|(_, a)| a).any(|a| matches!(a, crate::mil::Argument::Name(n) if n == name)))
        .map(|o| o.name.clone())
        .collect()
}

/// Name of a classifier's top-label output, as coremltools names it.
const CLASS_LABEL: &str = "classLabel";

/// `--labels`: the one output of `main` (cast to fp32 if it is not) becomes the probabilities
/// of a classifier with `labels`, one per element of the output.
fn classifier(main: &mut crate::mil::Function, labels: &crate::mil::Labels) -> Result<crate::mil::Classifier, String> {
    use crate::passes::rewrite::{Arg, Rewriter};
    let [out] = main.block.outputs.as_slice() else {
        return Err(format!("--labels needs a model with one output (the class scores); this one has {}", main.block.outputs.len()));
    };
    let out = out.clone();
    let ty = main.block.operations.iter().flat_map(|o| &o.outputs).find(|o| o.name == out).map(|o| o.ty.tensor().clone()).ok_or("the output is not computed by the program")?;
    let shape = ty.fixed_shape().unwrap_or_default();
    let n: usize = shape.iter().product();
    if !ty.dtype.is_float() || n != labels.len() || shape.iter().rev().skip(1).any(|&d| d != 1) {
        return Err(format!("--labels: {} labels for an output of {ty}; give one label per class score", labels.len()));
    }
    if [CLASS_LABEL.to_string(), format!("{CLASS_LABEL}_probs")].iter().any(|n| main.block.defined_names().contains(n.as_str()) || main.inputs.iter().any(|i| &i.name == n)) {
        return Err(format!("--labels: the program already has a value named {CLASS_LABEL}"));
    }
    let mut probabilities = out.clone();
    if ty.dtype != DType::F32 {
        let (mut r, ops) = Rewriter::new(main);
        for op in ops {
            r.keep(op);
        }
        let v = r
            .op1("cast", &format!("{out}_fp32"), &[("x", Arg::Var(r.var(&out))), ("dtype", Arg::Const(crate::mil::Tensor::string("fp32")))])
            .map_err(|e| e.to_string())?;
        r.finish(main);
        main.block.outputs = vec![v.0.clone()];
        probabilities = v.0;
    }
    Ok(crate::mil::Classifier { labels: labels.clone(), probabilities, predicted: CLASS_LABEL.to_string() })
}

/// Applies `--output-names`, `--describe` and the metadata flags to `model`; a name that is not
/// a feature of the model is an error naming the ones it has.
fn apply_interface(model: &mut Model, interface: &Interface) -> Result<(), String> {
    let main = model.program.functions.get_mut("main").ok_or("the program has no main function")?;
    if !interface.output_names.is_empty() {
        let outputs = &main.block.outputs;
        if interface.output_names.len() != outputs.len() {
            return Err(format!("--output-names gives {} names for {} outputs ({})", interface.output_names.len(), outputs.len(), outputs.join(", ")));
        }
        let defined = main.block.defined_names();
        let inputs: BTreeSet<&str> = main.inputs.iter().map(|i| i.name.as_str()).collect();
        let mut renames = std::collections::HashMap::new();
        for (old, new) in outputs.iter().zip(&interface.output_names) {
            if new.is_empty() || renames.values().any(|v| v == new) {
                return Err(format!("--output-names: `{new}` is empty or given twice"));
            }
            if old != new && (defined.contains(new.as_str()) || inputs.contains(new.as_str())) && !outputs.contains(new) {
                return Err(format!("--output-names: `{new}` already names a value inside the program; choose another"));
            }
            renames.insert(old.clone(), new.clone());
        }
        main.block.rename_all(&renames);
    }
    for (name, space) in &interface.image_outputs {
        image_output(main, name, *space).map_err(|m| format!("--image-output {name}: {m}"))?;
        model.images.insert(name.clone(), *space);
    }
    if let Some(labels) = &interface.labels {
        model.classifier = Some(classifier(main, labels)?);
    }
    let mut features: Vec<String> = main.inputs.iter().map(|i| i.name.clone()).chain(main.block.outputs.iter().cloned()).collect();
    if let Some(c) = &model.classifier {
        features.extend([c.predicted.clone(), format!("{}_probs", c.predicted)]);
    }
    for (name, text) in &interface.describe {
        if !features.contains(name) {
            return Err(format!("--describe `{name}`: the model has no such input or output ({})", features.join(", ")));
        }
        model.feature_descriptions.insert(name.clone(), text.clone());
    }
    let md = &mut model.metadata;
    for (field, value) in [(&mut md.author, &interface.author), (&mut md.license, &interface.license), (&mut md.short_description, &interface.description), (&mut md.version, &interface.version)] {
        if let Some(v) = value {
            *field = v.clone();
        }
    }
    md.user_defined.extend(interface.meta.iter().cloned());
    Ok(())
}

/// What [`write`] wrote: one path per package, with its weight bytes.
pub struct Written {
    pub name: String,
    pub path: PathBuf,
    pub weight_bytes: u64,
    /// Ops kept in fp32 because a large weight they read overflowed fp16 while it was written
    /// (`passes::fp16_range`), one line each; the small constants' notes are in `Loaded`.
    pub precision_notes: Vec<String>,
}

/// Writes one package; when a weight's fp16 cast overflowed on the way (`package::Error::
/// Fp16Infinity`, nothing kept), keeps the ops reading it in fp32 and writes again. Returns
/// the write summary and what was kept in fp32.
fn write_package(model: &Model, path: &Path, replace: Replace) -> Result<(package::WriteSummary, Vec<String>), Error> {
    let consts = match package::write_replacing(model, path, replace) {
        Err(package::Error::Fp16Infinity { consts, .. }) => consts,
        other => return Ok((other?, Vec::new())),
    };
    let mut model = model.clone();
    let main = model.program.functions.get_mut("main").ok_or_else(|| input_error(path, "the program has no main function"))?;
    let notes = passes::fp16_range::run(main, Some(&consts)).map_err(|source| Error::Pass { path: path.to_path_buf(), source })?;
    Ok((package::write_replacing(&model, path, replace)?, notes))
}

/// File marking a folder of packages as written by us (the list of what we put there), so a
/// later `convert` may replace it and nothing else.
pub const FOLDER_MARKER: &str = ".torch2coreml.json";

/// Contents of [`FOLDER_MARKER`].
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct FolderMarker {
    writer: String,
    files: BTreeSet<String>,
}

/// Our name in [`FolderMarker::writer`].
const WRITER: &str = "torch2coreml";
/// Largest marker file read (ours lists a handful of names).
const MAX_MARKER_BYTES: u64 = 1 << 16;

/// Whether `dir` is a folder of packages we wrote: its marker lists exactly what it holds.
pub fn is_our_folder(dir: &Path) -> bool {
    let Ok(text) = crate::files::read_text_capped(&dir.join(FOLDER_MARKER), MAX_MARKER_BYTES) else { return false };
    let Ok(marker) = serde_json::from_str::<FolderMarker>(&text) else { return false };
    let Ok(entries) = fs::read_dir(dir) else { return false };
    let mut found = BTreeSet::new();
    for e in entries {
        let Ok(e) = e else { return false };
        let name = e.file_name().to_string_lossy().into_owned();
        if name != FOLDER_MARKER {
            found.insert(name);
        }
    }
    marker.writer == WRITER && found == marker.files
}

/// Writes `loading` (loaded from `input`) to `out`. One package and an `out` ending in
/// `.mlpackage`: the package is written there. Several packages: `out` is a folder holding
/// `NAME.mlpackage` per package, the side files and [`FOLDER_MARKER`].
///
/// Never destroys what the tool did not write: `out` equal to the input or containing it is
/// always refused; an existing `out` is replaced only if we wrote it, or with
/// `Replace::Anything` (`--force`). Everything is staged beside `out` and renamed into place.
pub fn write(loading: &Loading, input: &Path, out: &Path, replace: Replace) -> Result<Vec<Written>, Error> {
    check_not_over_input(input, out)?;
    let single = loading.packages.len() == 1;
    if single && out.extension().is_some_and(|e| e == package::PACKAGE_EXTENSION) {
        let p = &loading.packages[0];
        let (summary, precision_notes) = write_package(&p.model, out, replace)?;
        return Ok(vec![Written { name: p.name.clone(), path: out.to_path_buf(), weight_bytes: summary.weight_bytes, precision_notes }]);
    }
    if matches!(loading.kind, Kind::TorchScript | Kind::Export | Kind::Package) {
        return Err(input_error(out, format!("a Core ML package path must end in .{}", package::PACKAGE_EXTENSION)));
    }
    let staged = Staged::begin(out, replace, is_our_folder)?;
    let mut written = Vec::new();
    let mut files = BTreeSet::new();
    for p in &loading.packages {
        let file = format!("{}.{}", p.name, package::PACKAGE_EXTENSION);
        let (summary, precision_notes) = write_package(&p.model, &staged.path().join(&file), Replace::OursOnly)?;
        written.push(Written { name: p.name.clone(), path: out.join(&file), weight_bytes: summary.weight_bytes, precision_notes });
        files.insert(file);
    }
    for f in &loading.side_files {
        let name = f.file_name().ok_or_else(|| input_error(f, "a side file without a name"))?;
        let (mut from, _) = crate::files::open_regular(f).map_err(|e| input_error(f, e.to_string()))?;
        let to = staged.path().join(name);
        let mut dest = fs::File::create(&to).map_err(|source| Error::Io { path: to.clone(), source })?;
        std::io::copy(&mut from, &mut dest).map_err(|source| Error::Io { path: f.clone(), source })?;
        files.insert(name.to_string_lossy().into_owned());
    }
    let marker = FolderMarker { writer: WRITER.into(), files };
    let json = serde_json::to_string_pretty(&marker).map_err(|e| input_error(out, e.to_string()))?;
    let marker_path = staged.path().join(FOLDER_MARKER);
    fs::write(&marker_path, json + "\n").map_err(|source| Error::Io { path: marker_path, source })?;
    staged.commit()?;
    Ok(written)
}

/// Refuses an output equal to the input or containing it (`-o` naming the model folder or one
/// of its parents would delete the model; with `--force` too).
fn check_not_over_input(input: &Path, out: &Path) -> Result<(), Error> {
    let Ok(input) = input.canonicalize() else { return Ok(()) };
    let resolved = out.canonicalize().ok().or_else(|| {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(out.file_name()?))
    });
    let Some(out_real) = resolved else { return Ok(()) };
    if input.starts_with(&out_real) {
        let what = if input == out_real { "is the input itself" } else { "contains the input" };
        return Err(input_error(out, format!("the output {what} ({}); writing there would destroy the model: choose another -o", input.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_over_the_input_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("models").join("bert");
        fs::create_dir_all(&model).unwrap();
        for out in [model.clone(), dir.path().join("models"), dir.path().to_path_buf(), model.join(".")] {
            let e = check_not_over_input(&model, &out).unwrap_err().to_string();
            assert!(e.contains("would destroy the model"), "{e}");
        }
        assert!(check_not_over_input(&model, &dir.path().join("models/out")).is_ok());
        assert!(check_not_over_input(&model, &model.join("Out.mlpackage")).is_ok());
    }

    #[test]
    fn a_folder_is_ours_only_when_its_marker_lists_exactly_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(!is_our_folder(d));
        let marker = FolderMarker { writer: WRITER.into(), files: ["A.mlpackage".to_string()].into() };
        fs::write(d.join(FOLDER_MARKER), serde_json::to_string(&marker).unwrap()).unwrap();
        fs::create_dir(d.join("A.mlpackage")).unwrap();
        assert!(is_our_folder(d));
        fs::write(d.join("thesis.tex"), b"user data").unwrap();
        assert!(!is_our_folder(d), "a file we did not write makes the folder foreign");
    }
}
