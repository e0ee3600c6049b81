//! The `torch.export` front end: a `.pt2` archive as torch 2.13's `torch.export.save` writes it
//! (archive format `pt2`, program schema 8.x) becomes a MIL `main` function through the same
//! lowering table as TorchScript ([`super::lower::LOWERINGS`]): an FX node
//! `torch.ops.aten.linear.default` is lowered as `aten::linear`, its named arguments going to
//! the table's schema names. Pure Rust: the program is JSON (serde), weights are raw
//! little-endian storages mapped from the zip, never copied; pickled weights are refused.
//! Called by `pipeline::load` for files [`is_export`] recognizes.
//!
//! Archive layout (`MODEL/` is the archive's one top folder):
//!   `MODEL/archive_format` = `pt2`; `MODEL/models/model.json` = the serialized program (graph,
//!   signature, range constraints, schema version); `MODEL/data/weights/model_weights_config.json`
//!   and `MODEL/data/constants/model_constants_config.json` map each parameter, buffer and
//!   constant name to a stored file of `MODEL/data/weights/` or `MODEL/data/constants/` and
//!   its tensor metadata.
//!
//! Dynamic dimensions (`torch.export.Dim`) are read as symbols with the program's range
//! constraints ([`dynamic_dims`]); [`lower`] specializes the program to given sizes of them:
//! `sym_size` reads the size, and the symbolic integer arithmetic of `_operator` nodes is
//! folded. `pipeline` lowers at several sizes and merges the results into a range or buckets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value as Json;

use super::graph::{self, Lowered, Options, UnsupportedOp};
use super::lower::{self, Lower, Value};
use super::zip::Zip;
use super::Error;
use crate::files::shown;
use crate::mil::builder::Builder;
use crate::mil::ops::state::STATE_DTYPE;
use crate::mil::{DType, Tensor, TensorType};

/// The program schema major version this reader knows (torch 2.13 writes 8.x); other majors
/// change field meanings.
pub const SCHEMA_MAJOR: i64 = 8;
/// Content of `archive_format` in a `torch.export.save` archive.
const ARCHIVE_FORMAT: &str = "pt2";
/// Largest `model.json` (or weights config) read: a program of a million nodes is ~1 GB of
/// JSON; real ones are a few MB.
const MAX_JSON_BYTES: u64 = 256 << 20;
/// Most source locations listed per unsupported op kind (as for TorchScript).
const MAX_LOCATIONS: usize = 3;

/// Whether `zip` is a `torch.export` archive: it has `*/archive_format` reading `pt2` or a
/// `*/models/model.json`. Called by `pipeline::kind`.
pub fn is_export(zip: &Zip) -> bool {
    zip.entries().iter().any(|e| {
        let mut parts = e.name.splitn(2, '/');
        let (_, rest) = (parts.next(), parts.next().unwrap_or_default());
        rest == "models/model.json" || (rest == "archive_format" && zip.read(e).is_ok_and(|b| b.trim_ascii() == ARCHIVE_FORMAT.as_bytes()))
    })
}

#[derive(Deserialize)]
struct Program {
    graph_module: GraphModule,
    schema_version: SchemaVersion,
    /// Bounds of each dynamic dimension's symbol (`torch.export.Dim(min=…, max=…)`).
    #[serde(default)]
    range_constraints: BTreeMap<String, RangeConstraint>,
}

/// `RangeConstraint` of the schema: a symbol's bounds; a max beyond any tensor (torch's
/// `int_oo`, written as a huge number) means unbounded.
#[derive(Deserialize)]
struct RangeConstraint {
    #[serde(default)]
    min_val: Option<Json>,
    #[serde(default)]
    max_val: Option<Json>,
}

/// Largest size a dynamic dimension's upper bound is taken as; torch writes `int_oo` (no
/// bound) as a number far beyond it.
const MAX_DYNAMIC_SIZE: u64 = 1 << 31;

/// One dimension of a user input: a size, or a symbol the program was exported with.
#[derive(Clone, Debug, PartialEq)]
pub enum Size {
    Fixed(usize),
    Symbol(String),
}

/// The dynamic dimensions of a program (`torch.export.Dim`): each user input's sizes, and
/// each symbol's bounds (lowest, highest or `None` for unbounded). Empty when all are static.
#[derive(Clone, Debug, Default)]
pub struct Dynamic {
    pub inputs: Vec<(String, DType, Vec<Size>)>,
    pub symbols: BTreeMap<String, (usize, Option<usize>)>,
}

#[derive(Deserialize)]
struct SchemaVersion {
    major: i64,
    minor: i64,
}

#[derive(Deserialize)]
struct GraphModule {
    graph: Graph,
    signature: Signature,
}

#[derive(Deserialize)]
struct Graph {
    nodes: Vec<Node>,
    #[serde(default)]
    tensor_values: BTreeMap<String, TensorMeta>,
}

#[derive(Deserialize)]
struct Node {
    target: String,
    #[serde(default)]
    inputs: Vec<NamedArgument>,
    #[serde(default)]
    outputs: Vec<Json>,
    #[serde(default)]
    metadata: BTreeMap<String, Json>,
}

#[derive(Deserialize)]
struct NamedArgument {
    name: String,
    arg: Json,
    /// The schema's `ArgumentKind`: positional or keyword-only ([`ARGUMENT_KEYWORD`]).
    #[serde(default)]
    kind: Option<i64>,
}

/// `ArgumentKind.KEYWORD` of the program schema: a keyword-only argument.
const ARGUMENT_KEYWORD: i64 = 2;

#[derive(Deserialize)]
struct Signature {
    input_specs: Vec<Json>,
    output_specs: Vec<Json>,
}

/// `TensorMeta` of the schema: dtype code (the schema's `ScalarType`), sizes, strides, offset.
#[derive(Deserialize, Clone)]
struct TensorMeta {
    dtype: i64,
    sizes: Vec<Json>,
    #[serde(default)]
    strides: Vec<Json>,
    #[serde(default)]
    storage_offset: Option<Json>,
}

#[derive(Deserialize)]
struct WeightsConfig {
    config: BTreeMap<String, WeightEntry>,
}

#[derive(Deserialize)]
struct WeightEntry {
    path_name: String,
    #[serde(default)]
    use_pickle: bool,
    tensor_meta: TensorMeta,
}

/// The MIL dtype of an export `ScalarType` code (torch/_export/serde/schema.py), with the
/// c10 `ScalarType` code TorchScript uses for it (what the lowerings' `dtype` arguments take).
fn scalar_type(code: i64) -> Option<(DType, i64)> {
    Some(match code {
        1 => (DType::U8, 0),
        2 => (DType::I8, 1),
        3 => (DType::I16, 2),
        4 => (DType::I32, 3),
        5 => (DType::I64, 4),
        6 => (DType::F16, 5),
        7 => (DType::F32, 6),
        8 => (DType::F64, 7),
        12 => (DType::Bool, 11),
        _ => return None,
    })
}

/// The archive at `path`, its top folder and its program (schema version checked).
fn open(path: &Path) -> Result<(Zip, String, Program), Error> {
    let zip = Zip::open(path)?;
    let bad = |reason: String| Error::Export { path: path.to_path_buf(), reason };
    let root = zip
        .entries()
        .iter()
        .find_map(|e| e.name.strip_suffix("models/model.json"))
        .ok_or_else(|| bad("a .pt2 archive without models/model.json".into()))?
        .to_string();
    let program: Program = read_json(&zip, &format!("{root}models/model.json"))?;
    let version = &program.schema_version;
    if version.major != SCHEMA_MAJOR {
        return Err(bad(format!("program schema version {}.{} is not supported (this reader knows {SCHEMA_MAJOR}.x, as torch 2.13 writes)", version.major, version.minor)));
    }
    Ok((zip, root, program))
}

/// The user inputs' sizes and the symbols of the program at `path` (see [`Dynamic`]). Called by
/// `pipeline::load` to decide the sizes [`lower`] specializes to.
pub fn dynamic_dims(path: &Path) -> Result<Dynamic, Error> {
    let (_, root, program) = open(path)?;
    let at = |message: String| Error::Lower { path: path.to_path_buf(), location: format!("{root}models/model.json"), message };
    let gm = &program.graph_module;
    let mut out = Dynamic::default();
    for spec in &gm.signature.input_specs {
        let Some(("user_input", body)) = one_key(spec) else { continue };
        let Some(name) = tensor_name(&body["arg"]) else { continue };
        let meta = gm.graph.tensor_values.get(name).ok_or_else(|| at(format!("input `{}` has no tensor metadata", shown(name))))?;
        let (dtype, _) = scalar_type(meta.dtype).ok_or_else(|| at(format!("input `{}`: dtype code {} is not supported", shown(name), meta.dtype)))?;
        let sizes = meta.sizes.iter().map(|d| size(d).map_err(|m| at(format!("input `{}`: {m}", shown(name))))).collect::<Result<Vec<_>, _>>()?;
        for s in &sizes {
            if let Size::Symbol(sym) = s {
                let bound = |v: &Option<Json>| v.as_ref().and_then(Json::as_u64).filter(|&n| n <= MAX_DYNAMIC_SIZE).map(|n| n as usize);
                let c = program.range_constraints.get(sym);
                if c.and_then(|c| c.min_val.as_ref()).is_some_and(|m| m.as_u64().is_some_and(|n| n > MAX_DYNAMIC_SIZE)) {
                    return Err(at(format!("dimension `{}` is at least {}, more than any tensor", shown(sym), MAX_DYNAMIC_SIZE)));
                }
                let (lo, hi) = (c.and_then(|c| bound(&c.min_val)).unwrap_or(1).max(1), c.and_then(|c| bound(&c.max_val)));
                if hi.is_some_and(|h| h < lo) {
                    return Err(at(format!("dimension `{}` has the empty range {lo}..{}", shown(sym), hi.unwrap_or(0))));
                }
                out.symbols.insert(sym.clone(), (lo, hi));
            }
        }
        out.inputs.push((name.to_string(), dtype, sizes));
    }
    Ok(out)
}

/// One input size of the schema: `{"as_int": n}`, or `{"as_expr": {"expr_str":
/// "Symbol('s77', positive=True, integer=True)", …}}` for a dynamic dimension (sympy's
/// `srepr`; a plain `s77` is read too). A size computed from symbols (`2*s0`) is refused.
fn size(d: &Json) -> Result<Size, String> {
    if let Some(n) = d.get("as_int").and_then(Json::as_i64) {
        return usize::try_from(n).map(Size::Fixed).map_err(|_| format!("negative size {n}"));
    }
    let expr = d.get("as_expr").and_then(|e| e.get("expr_str")).and_then(Json::as_str).ok_or("a size that is neither a number nor a symbol")?;
    // sympy's `srepr` (what torch 2.13 writes) or its plain `str` (`s0`).
    let name = expr.strip_prefix("Symbol('").and_then(|r| r.split_once('\'')).map_or(expr, |(n, _)| n);
    let name = Some(name).filter(|n| n.starts_with(|c: char| c.is_ascii_alphabetic()) && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    name.map(|n| Size::Symbol(n.to_string())).ok_or_else(|| format!("size `{}` is an expression of dynamic dimensions; only a plain torch.export.Dim is supported", shown(expr)))
}

/// Reads the `.pt2` archive at `path` and lowers its program into a MIL `main` function, each
/// dynamic dimension's symbol taking its size from `sizes` (see [`dynamic_dims`]).
pub fn lower(path: &Path, opts: &Options, sizes: &BTreeMap<String, usize>) -> Result<Lowered, Error> {
    let (zip, root, program) = open(path)?;
    let at = |message: String| Error::Lower { path: path.to_path_buf(), location: format!("{root}models/model.json"), message };
    let gm = &program.graph_module;
    check_supported(path, &gm.graph)?;
    let weights = Weights { zip: &zip, root: &root, path: path.to_path_buf() };
    let params = weights.config("weights")?;
    let consts = weights.config("constants")?;

    let mut l = Lower { b: Builder::new(opts.opset), dtype: opts.precision, hint: String::new(), precision_notes: Vec::new(), fresh: Default::default() };
    l.b.fold_constants(true);
    let mut env: HashMap<String, Value> = HashMap::new();
    // Buffers the program updates in place (a KV cache written with `index_copy_` or `copy_`),
    // by buffer name: they become Core ML states. After `run_decompositions()` the update is a
    // `buffer_mutation` output; in the default export IR it is an in-place node on the buffer.
    let written: BTreeSet<&str> = gm.graph.nodes.iter().filter(|n| in_place(&n.target)).filter_map(|n| tensor_name(&n.inputs.first()?.arg)).collect();
    let mutated: BTreeSet<&str> = gm
        .signature
        .output_specs
        .iter()
        .filter_map(|spec| match one_key(spec) {
            Some(("buffer_mutation", body)) => body["buffer_name"].as_str(),
            _ => None,
        })
        .chain(gm.signature.input_specs.iter().filter_map(|spec| match one_key(spec) {
            Some(("buffer", body)) if body["arg"]["name"].as_str().is_some_and(|a| written.contains(a)) => body["buffer_name"].as_str(),
            _ => None,
        }))
        .collect();
    // The graph argument of each state's buffer: its last value is what the program wrote.
    let mut state_args: Vec<(String, String)> = Vec::new();
    let mut states: HashMap<String, crate::mil::builder::Var> = HashMap::new();
    let mut warnings = Vec::new();
    for spec in &gm.signature.input_specs {
        let (kind, body) = one_key(spec).ok_or_else(|| at("an input spec that is not an object of one kind".into()))?;
        match kind {
            "user_input" => {
                let name = tensor_name(&body["arg"]).ok_or_else(|| at(format!("user input {} is not a tensor (only tensor inputs are supported)", shown(&body["arg"].to_string()))))?;
                let meta = gm.graph.tensor_values.get(name).ok_or_else(|| at(format!("input `{}` has no tensor metadata", shown(name))))?;
                let ty = input_type(meta, sizes).map_err(|m| at(format!("input `{}`: {m}", shown(name))))?;
                let v = graph::input(&mut l, name, &ty, false, opts).map_err(|m| at(format!("input `{}`: {m}", shown(name))))?;
                env.insert(name.to_string(), Value::Tensor(v));
            }
            "parameter" | "buffer" | "tensor_constant" | "constant_tensor" => {
                let arg = body["arg"]["name"].as_str().ok_or_else(|| at(format!("{kind} without an argument name")))?;
                let target = ["parameter_name", "buffer_name", "tensor_constant_name"]
                    .iter()
                    .find_map(|k| body[*k].as_str())
                    .ok_or_else(|| at(format!("{kind} `{}` without a target name", shown(arg))))?;
                let entry = params.get(target).map(|e| ("weights", e)).or_else(|| consts.get(target).map(|e| ("constants", e)));
                let (dir, entry) = entry.ok_or_else(|| at(format!("{kind} `{}` is not among the stored weights or constants", shown(target))))?;
                let t = weights.tensor(dir, target, entry)?;
                if kind == "buffer" && mutated.contains(target) {
                    let v = state(&mut l, target, &t, &mut states, &mut warnings).map_err(|m| at(format!("buffer `{}`: {m}", shown(target))))?;
                    env.insert(arg.to_string(), Value::Tensor(v));
                    state_args.push((target.to_string(), arg.to_string()));
                    continue;
                }
                let t = if t.dtype() == DType::I64 { graph::to_i32(&t).map_err(|m| at(format!("{kind} `{}`: {m}", shown(target))))? } else { t };
                l.hint = arg.to_string();
                let v = l.weight(arg, &t).map_err(|m| at(format!("{kind} `{}`: {m}", shown(target))))?;
                env.insert(arg.to_string(), Value::Tensor(v));
            }
            other => return Err(at(format!("inputs of kind `{}` (not a tensor, parameter, buffer or constant) are not supported", shown(other)))),
        }
    }
    for node in &gm.graph.nodes {
        let kind = aten_kind(&node.target).ok_or_else(|| at(format!("node target `{}` is not an aten op", shown(&node.target))))?;
        let location = node_location(node).unwrap_or_else(|| kind.clone());
        let fail = |m: String| Error::Lower { path: path.to_path_buf(), location: location.clone(), message: format!("{kind}: {m}") };
        let lowering = lower::lookup(&kind).ok_or_else(|| fail("not lowered".into()))?;
        // Positional arguments by position, as TorchScript calls them: overloads name them
        // differently (`upsample_nearest2d.vec` has `scale_factors` where the table, written
        // from another overload, has `scales_h`), but keyword-only ones by name.
        let (mut args, mut kwargs) = (Vec::new(), Vec::new());
        for a in &node.inputs {
            let v = argument(&a.arg, &env).map_err(&fail)?;
            match a.kind {
                Some(ARGUMENT_KEYWORD) => kwargs.push((a.name.clone(), v)),
                _ if kwargs.is_empty() => args.push(v),
                _ => kwargs.push((a.name.clone(), v)),
            }
        }
        let args = Lower::normalize(lowering, args, kwargs).map_err(&fail)?;
        l.hint = node_name(node).unwrap_or("op").to_string();
        let result = (lowering.lower)(&mut l, &args).map_err(&fail)?;
        // An in-place op updates its `self`: later nodes naming it read the new value.
        if let (true, Some(name), Value::Tensor(_)) = (in_place(&node.target), node.inputs.first().and_then(|a| tensor_name(&a.arg)), &result) {
            env.insert(name.to_string(), result.clone());
        }
        bind(&node.outputs, result, &mut env).map_err(&fail)?;
    }
    let mut outputs = Vec::new();
    for spec in &gm.signature.output_specs {
        let (kind, body) = one_key(spec).ok_or_else(|| at("an output spec that is not an object of one kind".into()))?;
        if kind == "buffer_mutation" {
            // `arg` is a TensorArgument (`{"name": …}`), not an Argument union.
            let buffer = body["buffer_name"].as_str().unwrap_or_default();
            let (Some(state), Some(Value::Tensor(v))) = (states.get(buffer), body["arg"]["name"].as_str().or_else(|| tensor_name(&body["arg"])).and_then(|n| env.get(n))) else {
                return Err(at(format!("the update of buffer `{}` is not a tensor the graph computes", shown(buffer))));
            };
            let (state, v) = (state.clone(), v.clone());
            write_state(&mut l, buffer, &state, &v).map_err(|m| at(format!("buffer `{}`: {m}", shown(buffer))))?;
            state_args.retain(|(t, _)| t != buffer);
            continue;
        }
        if kind != "user_output" {
            return Err(at(format!("outputs of kind `{}` (a gradient or a mutated input) are not supported", shown(kind))));
        }
        let name = tensor_name(&body["arg"]).ok_or_else(|| at("a user output that is not a tensor".into()))?;
        match env.get(name) {
            Some(Value::Tensor(v)) => outputs.push(v.clone()),
            _ => return Err(at(format!("output `{}` is not a tensor the graph computes", shown(name)))),
        }
    }
    // Buffers updated by in-place nodes: their last value goes back into the state.
    for (target, arg) in &state_args {
        let (Some(state), Some(Value::Tensor(v))) = (states.get(target), env.get(arg)) else { continue };
        let (state, v) = (state.clone(), v.clone());
        write_state(&mut l, target, &state, &v).map_err(|m| at(format!("buffer `{}`: {m}", shown(target))))?;
    }
    let mut lowered = graph::finish(l, outputs, opts).map_err(at)?;
    lowered.warnings = warnings;
    Ok(lowered)
}

/// Whether the node target is an in-place aten op (`torch.ops.aten.index_copy_.default`).
fn in_place(target: &str) -> bool {
    target.strip_prefix("torch.ops.aten.").and_then(|r| r.split('.').next()).is_some_and(|op| op.ends_with('_') && !op.starts_with('_'))
}

/// Makes the mutated buffer `target` (stored initial value `t`) an fp16
/// state input (iOS18+) and returns its value as the program reads it (`read_state`, cast to
/// the compute dtype). Core ML starts a state from zeros (`MLModel.makeState()`): a buffer
/// stored with other values gets a warning.
fn state(l: &mut Lower, target: &str, t: &Tensor, states: &mut HashMap<String, crate::mil::builder::Var>, warnings: &mut Vec<String>) -> Result<crate::mil::builder::Var, String> {
    if l.b.opset() < crate::mil::Opset::Ios18 {
        return Err("updated in place (a cache); Core ML keeps such buffers as states, which need --target iOS18 or later".into());
    }
    if !t.dtype().is_float() {
        return Err(format!("a {} buffer updated in place; Core ML states are fp16", t.dtype()));
    }
    let name = state_name(target);
    let state = l.b.state_input(&name, TensorType::new(STATE_DTYPE, t.shape()));
    let read = l.b.op(&crate::mil::ops::state::READ_STATE, &format!("{name}_read")).arg("input", &state).build1().map_err(|e| e.to_string())?;
    let v = if l.dtype == STATE_DTYPE { read } else { l.b.op(&crate::mil::ops::elementwise::CAST, &format!("{name}_compute")).arg("x", &read).konst("dtype", Tensor::string(l.dtype.name())).build1().map_err(|e| e.to_string())? };
    if t.to_f32_vec().is_some_and(|v| v.iter().any(|&x| x != 0.0)) {
        warnings.push(format!("buffer `{}` becomes state `{name}`, which Core ML starts from zeros (MLModel.makeState()), not from the values stored in the program", shown(target)));
    }
    states.insert(target.to_string(), state);
    Ok(v)
}

/// The state's name for buffer `target` (`layers.0.k_cache` → `layers_0_k_cache`: a MIL name).
fn state_name(target: &str) -> String {
    target.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// Stores `v` (cast to fp16 if needed) into the state of buffer `target` (`write_state`).
fn write_state(l: &mut Lower, target: &str, state: &crate::mil::builder::Var, v: &crate::mil::builder::Var) -> Result<(), String> {
    let hint = state_name(target);
    let v = if l.ty(v)?.dtype == STATE_DTYPE { v.clone() } else { l.b.op(&crate::mil::ops::elementwise::CAST, &format!("{hint}_state")).arg("x", v).konst("dtype", Tensor::string(STATE_DTYPE.name())).build1().map_err(|e| e.to_string())? };
    l.b.op(&crate::mil::ops::state::WRITE_STATE, &format!("{hint}_write")).arg("input", state).arg("data", &v).build().map_err(|e| e.to_string())?;
    Ok(())
}

/// The single `(key, value)` of a schema union object (`{"as_tensor": {...}}`).
fn one_key(v: &Json) -> Option<(&str, &Json)> {
    let o = v.as_object()?;
    let mut it = o.iter().filter(|(_, v)| !v.is_null());
    let (k, v) = it.next()?;
    Some((k.as_str(), v))
}

/// The name of an `as_tensor` argument.
fn tensor_name(arg: &Json) -> Option<&str> {
    arg.get("as_tensor")?.get("name")?.as_str()
}

/// `torch.ops.aten.linear.default` → `aten::linear` (the overload does not choose the lowering:
/// its named arguments do). Symbolic size nodes map to the lowerings that fold their integers:
/// `aten.sym_size.int` reads a size as `aten::size` does, and the `_operator` arithmetic FX
/// records on symbolic ints is TorchScript's integer `aten::add`, `aten::mul`, ….
fn aten_kind(target: &str) -> Option<String> {
    if let Some(op) = target.strip_prefix("_operator.") {
        let aten = match op {
            "add" => "add",
            "sub" => "sub",
            "mul" => "mul",
            "floordiv" => "floor_divide",
            _ => return None,
        };
        return Some(format!("aten::{aten}"));
    }
    let rest = target.strip_prefix("torch.ops.aten.")?;
    let op = rest.split('.').next()?;
    Some(format!("aten::{}", if op == "sym_size" { "size" } else { op }))
}

/// The node's name (its first output's), the hint for the ops it lowers to.
fn node_name(node: &Node) -> Option<&str> {
    node.outputs.first().and_then(|o| tensor_name(o).or_else(|| o.get("as_tensors")?.get(0)?.get("name")?.as_str()))
}

/// The user's line a node came from: the first `File "…", line N` of its stack trace, as
/// `file.py:N`.
fn node_location(node: &Node) -> Option<String> {
    let trace = node.metadata.get("stack_trace")?.as_str()?;
    let line = trace.lines().find(|l| l.trim_start().starts_with("File \""))?;
    let file = line.split('"').nth(1)?;
    let number = line.split(", line ").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?;
    let base = Path::new(file).file_name()?.to_string_lossy();
    Some(format!("{}:{number}", shown(&base)))
}

/// Refuses the program when any node calls an op we do not lower: every such op, with counts
/// and the user's lines, in one error (as for TorchScript).
fn check_supported(path: &Path, g: &Graph) -> Result<(), Error> {
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in &g.nodes {
        let kind = aten_kind(&node.target).unwrap_or_else(|| node.target.clone());
        if lower::lookup(&kind).is_none() {
            missing.entry(kind).or_default().push(node_location(node).unwrap_or_else(|| "models/model.json".into()));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let ops = missing
        .into_iter()
        .map(|(kind, mut locations)| {
            let count = locations.len();
            locations.dedup();
            locations.truncate(MAX_LOCATIONS);
            UnsupportedOp { kind, count, locations }
        })
        .collect();
    Err(Error::Unsupported { path: path.to_path_buf(), ops })
}

/// A node argument as a lowering value.
fn argument(arg: &Json, env: &HashMap<String, Value>) -> Result<Value, String> {
    let (kind, v) = one_key(arg).unwrap_or(("as_none", &Json::Null));
    let tensor = |name: &Json| -> Result<Value, String> {
        let n = name.get("name").and_then(Json::as_str).ok_or("a tensor argument without a name")?;
        env.get(n).cloned().ok_or_else(|| format!("tensor `{}` is used before it is computed", shown(n)))
    };
    let int = |v: &Json| v.as_i64().ok_or_else(|| format!("`{}` is not an integer", shown(&v.to_string())));
    let list = |v: &Json| v.as_array().cloned().ok_or_else(|| format!("`{}` is not a list", shown(&v.to_string())));
    Ok(match kind {
        "as_none" => Value::None,
        "as_tensor" => tensor(v)?,
        "as_tensors" => Value::List(list(v)?.iter().map(tensor).collect::<Result<_, _>>()?),
        "as_optional_tensors" => Value::List(
            list(v)?
                .iter()
                .map(|o| match one_key(o) {
                    Some(("as_tensor", t)) => tensor(t),
                    _ => Ok(Value::None),
                })
                .collect::<Result<_, _>>()?,
        ),
        "as_int" => Value::Int(int(v)?),
        "as_ints" => Value::List(list(v)?.iter().map(|x| int(x).map(Value::Int)).collect::<Result<_, _>>()?),
        "as_float" => Value::Float(json_float(v).ok_or("a float argument that is not a number")?),
        "as_floats" => Value::List(list(v)?.iter().map(|x| x.as_f64().map(Value::Float).ok_or("not a float")).collect::<Result<_, _>>()?),
        "as_bool" => Value::Bool(v.as_bool().ok_or("a bool argument that is not a bool")?),
        "as_bools" => Value::List(list(v)?.iter().map(|x| x.as_bool().map(Value::Bool).ok_or("not a bool")).collect::<Result<_, _>>()?),
        "as_string" => Value::Str(v.as_str().ok_or("a string argument that is not a string")?.to_string()),
        "as_scalar_type" => Value::Int(scalar_type(int(v)?).map(|(_, c10)| c10).ok_or_else(|| format!("dtype code {v} is not supported"))?),
        "as_device" => Value::Device,
        // Layouts and memory formats change nothing a MIL program sees.
        "as_layout" | "as_memory_format" => Value::None,
        // A symbolic integer is a number or a name bound to the size [`lower`] specialized it to.
        "as_sym_int" | "as_sym_bool" | "as_sym_float" => sym(v, env)?,
        "as_sym_ints" => Value::List(list(v)?.iter().map(|x| sym(x, env)).collect::<Result<_, _>>()?),
        other => return Err(format!("arguments of kind `{}` are not supported", shown(other))),
    })
}

/// A float as torch's serializer writes it: a JSON number, or the strings `"Infinity"`,
/// `"-Infinity"` and `"NaN"` for what JSON has no number for (`float("-inf")` masks).
fn json_float(v: &Json) -> Option<f64> {
    v.as_f64().or_else(|| match v.as_str()? {
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => None,
    })
}

/// A symbolic scalar argument: `{"as_int": n}` (or `as_float`, `as_bool`) or `{"as_name": …}`,
/// a symbolic value computed before.
fn sym(v: &Json, env: &HashMap<String, Value>) -> Result<Value, String> {
    match one_key(v) {
        Some(("as_int", i)) => i.as_i64().map(Value::Int).ok_or_else(|| "a symbolic int that is not an integer".into()),
        Some(("as_float", f)) => json_float(f).map(Value::Float).ok_or_else(|| "a symbolic float that is not a number".into()),
        Some(("as_bool", b)) => b.as_bool().map(Value::Bool).ok_or_else(|| "a symbolic bool that is not a bool".into()),
        Some(("as_name", n)) => {
            let n = n.as_str().ok_or("a symbolic value without a name")?;
            env.get(n).cloned().ok_or_else(|| format!("symbolic value `{}` is used before it is computed", shown(n)))
        }
        _ => Err(format!("symbolic value `{}` is not a number or a name", shown(&v.to_string()))),
    }
}

/// Binds a node's outputs (`as_tensor`, or `as_tensors` for several) to what its lowering returned.
fn bind(outputs: &[Json], result: Value, env: &mut HashMap<String, Value>) -> Result<(), String> {
    let mut names = Vec::new();
    for o in outputs {
        match one_key(o) {
            Some(("as_tensor", t)) => names.push(t.get("name").and_then(Json::as_str)),
            Some(("as_tensors", ts)) => names.extend(ts.as_array().into_iter().flatten().map(|t| t.get("name").and_then(Json::as_str))),
            Some(("as_sym_int" | "as_sym_bool" | "as_sym_float", v)) => names.push(v.get("as_name").and_then(Json::as_str)),
            Some(("as_none", _)) | None => names.push(None),
            Some((other, _)) => return Err(format!("outputs of kind `{}` are not supported", shown(other))),
        }
    }
    let values = match (names.len(), result) {
        (1, v @ Value::Tensor(_)) => vec![v],
        (_, Value::Tuple(vs) | Value::List(vs)) => vs,
        (_, v) => vec![v],
    };
    // A lowering may return fewer values than the op has outputs (attention weights left
    // out); those outputs are unused in a traced inference graph.
    for (name, v) in names.into_iter().zip(values) {
        if let Some(n) = name {
            env.insert(n.to_string(), v);
        }
    }
    Ok(())
}

/// An input's MIL type from its tensor metadata, dynamic dimensions taking their `sizes`.
fn input_type(meta: &TensorMeta, sizes: &BTreeMap<String, usize>) -> Result<TensorType, String> {
    let (dtype, _) = scalar_type(meta.dtype).ok_or_else(|| format!("dtype code {} is not supported", meta.dtype))?;
    let dims = meta
        .sizes
        .iter()
        .map(|d| match size(d)? {
            Size::Fixed(n) => Ok(n),
            Size::Symbol(s) => sizes.get(&s).copied().ok_or_else(|| format!("dynamic dimension `{}` has no size given", shown(&s))),
        })
        .collect::<Result<Vec<_>, String>>()?;
    let ty = TensorType::new(dtype, &dims);
    ty.size_problem().map_or(Ok(ty), Err)
}

/// `[{"as_int": 3}, …]` as ints; `None` when any is symbolic.
fn fixed_ints(v: &[Json]) -> Option<Vec<i64>> {
    v.iter().map(|d| d.get("as_int")?.as_i64()).collect()
}

/// Reads and parses one JSON entry of the archive, bounded in size.
fn read_json<T: for<'de> Deserialize<'de>>(zip: &Zip, name: &str) -> Result<T, Error> {
    let bad = |reason: String| Error::Export { path: zip.path().to_path_buf(), reason: format!("{}: {reason}", shown(name)) };
    let entry = zip.find(name).ok_or_else(|| bad("missing".into()))?;
    if entry.size > MAX_JSON_BYTES {
        return Err(bad(format!("{} bytes, more than the {MAX_JSON_BYTES} this reader takes", entry.size)));
    }
    let bytes = zip.read(entry)?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("not the torch.export program JSON this reader knows: {e}")))
}

/// The archive's stored weights and constants.
struct Weights<'z> {
    zip: &'z Zip,
    root: &'z str,
    path: PathBuf,
}

impl Weights<'_> {
    /// `data/{dir}/model_{dir}_config.json` (absent: nothing of that kind is stored).
    fn config(&self, dir: &str) -> Result<BTreeMap<String, WeightEntry>, Error> {
        let name = format!("{}data/{dir}/model_{dir}_config.json", self.root);
        if self.zip.find(&name).is_none() {
            return Ok(BTreeMap::new());
        }
        Ok(read_json::<WeightsConfig>(self.zip, &name)?.config)
    }

    /// The tensor `target` stored as `entry` under `data/{dir}/`, mapped from the zip, after
    /// checking its file holds the bytes its metadata claims, contiguously.
    fn tensor(&self, dir: &str, target: &str, entry: &WeightEntry) -> Result<Tensor, Error> {
        let file = format!("{}data/{dir}/{}", self.root, entry.path_name);
        let bad = |reason: String| Error::BadTensor { path: self.path.clone(), entry: format!("{} ({})", shown(&file), shown(target)), reason };
        if entry.use_pickle {
            return Err(bad("stored pickled; only raw storages are supported".into()));
        }
        if entry.path_name.contains('/') || entry.path_name.contains("..") {
            return Err(bad("the stored name leaves its folder".into()));
        }
        let meta = &entry.tensor_meta;
        let (dtype, _) = scalar_type(meta.dtype).ok_or_else(|| bad(format!("dtype code {} is not supported", meta.dtype)))?;
        let sizes = fixed_ints(&meta.sizes).ok_or_else(|| bad("symbolic size".into()))?;
        let shape = sizes.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<_>, _>>().map_err(|_| bad("a negative size".into()))?;
        let strides = fixed_ints(&meta.strides).ok_or_else(|| bad("symbolic stride".into()))?;
        let offset = meta.storage_offset.as_ref().and_then(|o| o.get("as_int")?.as_i64()).unwrap_or(0);
        let mut expected = 1i64;
        let contiguous = strides.len() == sizes.len()
            && sizes.iter().zip(&strides).rev().all(|(&d, &s)| {
                let ok = d <= 1 || s == expected;
                expected = expected.saturating_mul(d.max(1));
                ok
            });
        if !contiguous || offset != 0 {
            return Err(bad(format!("a strided view (strides {strides:?}, offset {offset}) is not supported; save contiguous weights")));
        }
        let zentry = self.zip.find(&file).ok_or_else(|| bad("missing from the archive".into()))?;
        let range = self.zip.stored_range(zentry)?;
        let n = crate::mil::types::checked_elements(&shape).ok_or_else(|| bad("too many elements".into()))?;
        let need = dtype.storage_bytes(n).ok_or_else(|| bad("too large".into()))?;
        if range.len() < need {
            return Err(bad(format!("holds {} bytes, its metadata needs {need}", range.len())));
        }
        Tensor::from_mapped(dtype, &shape, self.zip.map().clone(), range.start).map_err(|e| bad(e.to_string()))
    }
}
