//! Runs a MIL function on concrete inputs: binds the inputs, executes ops in block order through
//! each op's `eval` kernel (`mil::ops`), frees every value after its last use, and returns the
//! block outputs; [`run_stateful`] also binds iOS18 state inputs and hands back their final
//! values. fp16 emulation: every fp16 output is rounded to fp16 after its op (kernels
//! accumulate in f32), so drift reported against torch is the drift a device computing in fp16
//! shows; [`Compute::Fp32`] skips the rounding to get the same program's fp32 answer (the
//! `validate --per-op` baseline). Called by `validate` and by tests; uses `mil` and `numeric`.
//!
//! Memory: before a function runs, [`memory_needed`] adds up what its values will take from
//! their declared types (inputs, states, op outputs, freed after last use as a run frees them)
//! and refuses a function over [`MEMORY_BUDGET_BYTES`], so a package declaring a
//! [65536, 65536, 65536] tensor fails with one line instead of allocating. An op whose declared
//! output has unknown dimensions is checked again just before it runs, from the shapes its
//! `infer` gives for the actual inputs.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::mil::ops::{self, Arg, EvalArgs, EvalError, OpArgs};
use crate::mil::{Argument, Block, DType, Dim, Function, NamedType, Opset, Operation, Tensor, TensorType, ValueType};
use crate::numeric;

/// Most bytes the values of one run may take at once (inputs, states and op outputs; the
/// program's constants are not counted: they are bounded by the package's own files). Far above
/// what the models we validate need (the largest, whisper-medium's encoder, peaks near 200 MB
/// in fp32), and low enough that a hostile package cannot make us allocate past 1 GB: a
/// declared size beyond it is refused before anything is allocated.
pub const MEMORY_BUDGET_BYTES: u64 = 768 << 20;
/// Bytes one element takes in an [`Array`]: its data is f32 or i32 (bools take 1, counted as 4
/// to keep one rule).
const ARRAY_ELEMENT_BYTES: u64 = 4;

pub use crate::mil::ops::eval::{Array, Data};

/// How floats are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compute {
    /// As the program declares: fp16 values are rounded to fp16 after every op.
    #[default]
    AsDeclared,
    /// Everything in fp32: fp16 outputs keep their f32 values (fp16 consts stay as stored).
    Fp32,
}

/// Why a function cannot run. Unsupported ops are collected over the whole function first.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("the interpreter does not support op type(s): {}", .0.join(", "))]
    Unsupported(Vec<String>),
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("missing state `{0}` (a stateful function runs through `run_stateful`)")]
    MissingState(String),
    #[error("unknown input `{0}` (the function takes: {1})")]
    UnknownInput(String, String),
    #[error("input `{name}`: expected {expected}, got {got}")]
    BadInput { name: String, expected: String, got: String },
    #[error("op `{op}` uses `{value}`, which is not defined (or already freed)")]
    Undefined { op: String, value: String },
    /// The kernel's error is part of the message, not a chained `source` (printed once by `{:#}`).
    #[error("op `{op}`: {error}")]
    Eval { op: String, error: EvalError },
    #[error("op `{op}` ({op_type}) produced {got} for output `{output}` declared {declared}")]
    OutputMismatch { op: String, op_type: String, output: String, declared: String, got: String },
    #[error("op `{0}` has nested blocks (control flow), which the interpreter does not run")]
    ControlFlow(String),
    #[error("function output `{0}` is not defined")]
    UndefinedOutput(String),
    /// A value whose declared size overflows, or a run whose values would exceed
    /// [`MEMORY_BUDGET_BYTES`]; found before allocating.
    #[error("{value} {ty} needs {}{}: more than the interpreter's {} memory budget (is this shape meant?)", bytes_text(*bytes), alive_text(*live), bytes_text(MEMORY_BUDGET_BYTES))]
    OverBudget { value: String, ty: String, bytes: u64, live: u64 },
    #[error("{value} is declared {ty}, whose size overflows 64 bits")]
    SizeOverflow { value: String, ty: String },
    /// The op's types, with the values known at run time, do not check (e.g. a shape computed
    /// at run time beyond `mil::types::MAX_ELEMENTS`); found before its kernel allocates.
    #[error("op `{op}` cannot run on these values: {error}")]
    Refused { op: String, error: crate::mil::ops::TypeError },
}

/// A byte count for messages: `768 MiB`, `1.0 PiB`.
fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} bytes"),
        _ if v.fract() == 0.0 => format!("{v} {}", UNITS[unit]),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

/// ", with N of other values alive" for [`Error::OverBudget`], empty when nothing else is alive.
fn alive_text(live: u64) -> String {
    if live == 0 {
        String::new()
    } else {
        format!(", with {} of other values alive", bytes_text(live))
    }
}

/// Bytes an [`Array`] of type `ty` takes, or `None` while a dimension is unknown; an error when
/// the count overflows. `value` names it for the error.
fn array_bytes(ty: &TensorType, value: &dyn Fn() -> String) -> Result<Option<u64>, Error> {
    let Some(shape) = ty.fixed_shape() else { return Ok(None) };
    let bytes = shape.iter().try_fold(ARRAY_ELEMENT_BYTES, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?));
    bytes.map(Some).ok_or_else(|| Error::SizeOverflow { value: value(), ty: ty.to_string() })
}

/// Peak bytes a run of `function` holds in values (inputs, states, op outputs), from declared
/// types, freeing each value after its last use as a run does (block outputs and states are kept
/// to the end). Constants are not counted (see [`MEMORY_BUDGET_BYTES`]); values with unknown
/// dimensions count 0 here and are checked when their op runs. Errors when one value or the peak
/// exceeds [`MEMORY_BUDGET_BYTES`], naming the value that crosses it. Called before every run
/// and by `validate` before it draws random inputs.
pub fn memory_needed(function: &Function) -> Result<u64, Error> {
    let block = &function.block;
    let mut size: HashMap<&str, u64> = HashMap::new();
    let mut live = 0u64;
    let over = |value: String, ty: &TensorType, bytes: u64, live: u64| Error::OverBudget { value, ty: ty.to_string(), bytes, live };
    for i in &function.inputs {
        let ty = i.ty.tensor();
        let bytes = array_bytes(ty, &|| format!("input `{}`", i.name))?.unwrap_or(0);
        if live.saturating_add(bytes) > MEMORY_BUDGET_BYTES {
            return Err(over(format!("input `{}`", i.name), ty, bytes, live));
        }
        live += bytes;
        size.insert(&i.name, bytes);
    }
    let mut last_use = last_uses(block);
    for i in &function.inputs {
        if matches!(i.ty, ValueType::State(_)) {
            last_use.insert(&i.name, usize::MAX);
        }
    }
    let mut peak = live;
    for (i, op) in block.operations.iter().enumerate() {
        if op.op_type != "const" {
            for o in &op.outputs {
                let ty = o.ty.tensor();
                let what = || format!("op `{}` output `{}`", op.name, o.name);
                let bytes = array_bytes(ty, &what)?.unwrap_or(0);
                if live.saturating_add(bytes) > MEMORY_BUDGET_BYTES {
                    return Err(over(what(), ty, bytes, live));
                }
                live += bytes;
                size.insert(&o.name, bytes);
            }
        }
        peak = peak.max(live);
        for (_, args) in &op.inputs {
            for arg in args {
                if let Argument::Name(n) = arg {
                    if last_use.get(n.as_str()) == Some(&i) {
                        live -= size.remove(n.as_str()).unwrap_or(0);
                    }
                }
            }
        }
    }
    Ok(peak)
}

/// Longest int32 input that [`check_unknown_outputs`] hands to `infer` as a value: shape-like
/// vectors (a `fill`'s `shape`, a `tile`'s `reps` computed at run time) are one entry per axis.
const SHAPE_LIKE_MAX_ELEMENTS: usize = 64;

/// For an op whose declared outputs have unknown dimensions: types its outputs by its `infer` on
/// the actual input shapes and the values of constants and short int32 inputs (a `tile`'s
/// `reps`, a `fill`'s `shape`, whether constant or computed), and refuses to run it when they
/// would take the values already held (`held` bytes) past the budget. When `infer` cannot say,
/// the op runs.
fn check_unknown_outputs<'e>(
    op: &Operation,
    opset: Opset,
    lookup: &dyn Fn(&str) -> Option<&'e Array>,
    consts: &HashMap<&str, &Tensor>,
    held: u64,
) -> Result<(), Error> {
    if op.outputs.iter().all(|o| o.ty.tensor().fixed_shape().is_some()) {
        return Ok(());
    }
    let Some(def) = ops::lookup(&op.op_type, opset) else { return Ok(()) };
    // Short int32 values computed at run time, as tensors `infer` can read (by argument order).
    let mut computed: Vec<Option<Tensor>> = Vec::new();
    for b in op.inputs.iter().flat_map(|(_, bound)| bound) {
        computed.push(match b {
            Argument::Name(n) if !consts.contains_key(n.as_str()) => {
                lookup(n).filter(|a| a.dtype == DType::I32 && a.len() <= SHAPE_LIKE_MAX_ELEMENTS).map(Array::to_tensor)
            }
            _ => None,
        });
    }
    let mut computed = computed.iter();
    let mut args = Vec::with_capacity(op.inputs.len());
    for (param, bound) in &op.inputs {
        let mut list = Vec::with_capacity(bound.len());
        for b in bound {
            let value = computed.next().and_then(Option::as_ref);
            list.push(match b {
                Argument::Name(n) => match (consts.get(n.as_str()).copied(), value, lookup(n)) {
                    (Some(t), _, _) | (None, Some(t), _) => Arg { ty: t.tensor_type(), value: Some(t), state: false, constexpr: false },
                    (None, None, Some(a)) => Arg { ty: TensorType::new(a.dtype, &a.shape), value: None, state: false, constexpr: false },
                    (None, None, None) => return Ok(()),
                },
                Argument::Value(t) => Arg { ty: t.tensor_type(), value: Some(t), state: false, constexpr: false },
            });
        }
        args.push((param.as_str(), list));
    }
    let op_args = OpArgs { op: &op.op_type, opset, args, attributes: &op.attributes };
    let inferred = ops::check(def, &op_args).map_err(|error| Error::Refused { op: op.name.clone(), error })?;
    let mut total = held;
    for (ty, decl) in inferred.iter().zip(&op.outputs) {
        let what = || format!("op `{}` output `{}`", op.name, decl.name);
        let bytes = array_bytes(ty, &what)?.unwrap_or(0);
        if total.saturating_add(bytes) > MEMORY_BUDGET_BYTES {
            return Err(Error::OverBudget { value: what(), ty: ty.to_string(), bytes, live: total });
        }
        total += bytes;
    }
    Ok(())
}

/// Last op index reading each value of `block`; block outputs (`usize::MAX`) are never freed.
/// Used by [`memory_needed`] and the run loop.
fn last_uses(block: &Block) -> HashMap<&str, usize> {
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (i, op) in block.operations.iter().enumerate() {
        for (_, args) in &op.inputs {
            for arg in args {
                if let Argument::Name(n) = arg {
                    last_use.insert(n.as_str(), i);
                }
            }
        }
    }
    for o in &block.outputs {
        last_use.insert(o.as_str(), usize::MAX);
    }
    last_use
}

/// Runs `function` on `inputs` (by input name) with the program's declared precision.
/// Returns the block outputs in order, by name. An fp16 input given as an fp16 [`Array`] is
/// taken as it is (such an array holds fp16 values); given as fp32 it is rounded first.
pub fn run(function: &Function, inputs: &[(String, Array)]) -> Result<Vec<(String, Array)>, Error> {
    run_known(function, inputs, &mut [], Compute::AsDeclared, None, &Known::default())
}

/// [`run_stateful`] from states that start at zeros (Core ML's initial `MLState`), the
/// states' final values dropped: one call of a stateful function, as `--compress auto` and
/// `--precision auto` measure programs on calibration inputs. [`run`] for stateless functions.
pub fn run_from_zero_states(function: &Function, inputs: &[(String, Array)]) -> Result<Vec<(String, Array)>, Error> {
    let mut states = Vec::new();
    for i in &function.inputs {
        if let crate::mil::ValueType::State(t) = &i.ty {
            let bad = |got: String| Error::BadInput { name: i.name.clone(), expected: "a state of fixed shape".into(), got };
            let shape = t.fixed_shape().ok_or_else(|| bad(t.to_string()))?;
            let n = t.num_elements().ok_or_else(|| bad(format!("{t}, too many elements")))?;
            states.push((i.name.clone(), Array::float(t.dtype, shape, vec![0.0; n])));
        }
    }
    run_stateful(function, inputs, &mut states)
}

/// [`run`] with a precision choice and an observer called with every op output as it is made
/// (name, value). Used by tests.
pub fn run_with(
    function: &Function,
    inputs: &[(String, Array)],
    compute: Compute,
    observe: &mut dyn FnMut(&str, &Array),
) -> Result<Vec<(String, Array)>, Error> {
    let visit: &mut Visit = &mut |op, _, outputs| {
        for (value, decl) in outputs.iter().zip(&op.outputs) {
            observe(&decl.name, value);
        }
        Ok(())
    };
    run_known(function, inputs, &mut [], compute, Some(visit), &Known::default())
}

/// What [`run_visiting`] calls after each op: the op, a lookup of the values it read (still
/// held: they are freed after the visit), and its outputs. An error stops the run.
pub type Visit<'v> = dyn for<'a> FnMut(&Operation, &(dyn Fn(&str) -> Option<&'a Array> + 'a), &[Array]) -> Result<(), Error> + 'v;

/// [`run`] with a precision choice and `visit` called after every op with the op's inputs and
/// outputs, holding no more than the run holds. `validate --per-op` re-evaluates each op from
/// its inputs this way. Reshapes are not done in place (the visitor may read their input).
pub fn run_visiting(function: &Function, inputs: &[(String, Array)], compute: Compute, visit: &mut Visit) -> Result<Vec<(String, Array)>, Error> {
    run_known(function, inputs, &mut [], compute, Some(visit), &Known::default())
}

/// Runs a function with iOS18 state inputs. `states` holds each state's value by name (the
/// caller's `MLState`; Core ML starts one at zeros): `read_state` reads it, `write_state`
/// replaces it, and on success `states` holds the values the run left, for the next run. On
/// error `states` is unchanged. Tensor inputs and outputs as in [`run`]. Called by
/// `speech::packages` for the iOS18 Whisper decoder and by tests.
pub fn run_stateful(
    function: &Function,
    inputs: &[(String, Array)],
    states: &mut [(String, Array)],
) -> Result<Vec<(String, Array)>, Error> {
    run_known(function, inputs, states, Compute::AsDeclared, None, &Known::default())
}

/// A function prepared for many runs (a decoder called once per token): the values of its
/// top-level `const` ops are converted to arrays once, here, instead of on every run (for a
/// large fp16 embedding table that conversion costs more than the step's math), and inputs
/// that stay the same over many runs can be fixed ([`Prepared::fix_inputs`]). Built by callers
/// that run one package repeatedly (transcription loops, benchmarks).
pub struct Prepared {
    function: Function,
    consts: HashMap<String, Array>,
    /// Values computed from fixed inputs (and constants) that later runs read.
    fixed: HashMap<String, Array>,
    /// Per op: computed already (a `const`, or an op of the fixed inputs only).
    done: Vec<bool>,
    fixed_inputs: Vec<String>,
}

impl Prepared {
    /// Takes `function` and converts every top-level `const` of it.
    pub fn new(function: Function) -> Result<Prepared, Error> {
        memory_needed(&function)?;
        let mut consts = HashMap::new();
        let ops = &function.block.operations;
        for op in ops.iter().filter(|o| o.op_type == "const") {
            let values = eval_op(op, function.opset, &HashMap::new(), Compute::AsDeclared)?;
            for (value, decl) in values.into_iter().zip(&op.outputs) {
                consts.insert(decl.name.clone(), value);
            }
        }
        let done = ops.iter().map(|o| o.op_type == "const").collect();
        Ok(Prepared { function, consts, fixed: HashMap::new(), done, fixed_inputs: Vec::new() })
    }

    /// The function this runs.
    pub fn function(&self) -> &Function {
        &self.function
    }

    /// Fixes `inputs` for the coming runs (a Whisper decoder's cross-attention caches, the same
    /// for every token of an audio window): every op that depends only on them and on constants
    /// runs now, once, and [`Prepared::run`] then takes the remaining inputs only. Replaces the
    /// inputs fixed before (on error they stay as they were). States cannot be fixed.
    pub fn fix_inputs(&mut self, inputs: Vec<(String, Array)>) -> Result<(), Error> {
        let ops = &self.function.block.operations;
        let mut done: Vec<bool> = ops.iter().map(|o| o.op_type == "const").collect();
        let mut fixed: HashMap<String, Array> = HashMap::new();
        let mut fixed_inputs = Vec::new();
        for (name, given) in inputs {
            let decl = self
                .function
                .inputs
                .iter()
                .find(|i| i.name == name && matches!(i.ty, ValueType::Tensor(_)))
                .ok_or_else(|| self.unknown_input(&name))?;
            fixed.insert(name.clone(), bind_input(decl, &given, Compute::AsDeclared)?.into_owned());
            fixed_inputs.push(name);
        }
        for (i, op) in ops.iter().enumerate() {
            let ready = |n: &str| self.consts.contains_key(n) || fixed.contains_key(n);
            if done[i] || !op.blocks.is_empty() || !op.inputs.iter().flat_map(|(_, a)| a).all(|a| match a {
                Argument::Name(n) => ready(n),
                Argument::Value(_) => true,
            }) {
                continue;
            }
            let lookup = |n: &str| fixed.get(n).or_else(|| self.consts.get(n));
            let values = eval_op_with(op, self.function.opset, &lookup, Compute::AsDeclared)?;
            for (value, decl) in values.into_iter().zip(&op.outputs) {
                fixed.insert(decl.name.clone(), value);
            }
            done[i] = true;
        }
        // Keep what the other ops and the outputs read.
        let mut read: std::collections::HashSet<&str> = self.function.block.outputs.iter().map(|o| o.as_str()).collect();
        for (op, _) in ops.iter().zip(&done).filter(|(_, &d)| !d) {
            read.extend(op.inputs.iter().flat_map(|(_, a)| a).filter_map(|a| match a {
                Argument::Name(n) => Some(n.as_str()),
                Argument::Value(_) => None,
            }));
        }
        fixed.retain(|n, _| read.contains(n.as_str()));
        // Only now, so a failure leaves the previous inputs fixed.
        (self.fixed, self.done, self.fixed_inputs) = (fixed, done, fixed_inputs);
        Ok(())
    }

    /// [`run`] with the prepared constants and fixed inputs; `inputs` are the others.
    pub fn run(&self, inputs: &[(String, Array)]) -> Result<Vec<(String, Array)>, Error> {
        self.run_stateful(inputs, &mut [])
    }

    /// [`run_stateful`] with the prepared constants and fixed inputs.
    pub fn run_stateful(&self, inputs: &[(String, Array)], states: &mut [(String, Array)]) -> Result<Vec<(String, Array)>, Error> {
        let known = Known { consts: Some(&self.consts), fixed: Some(&self.fixed), done: &self.done, fixed_inputs: &self.fixed_inputs };
        run_known(&self.function, inputs, states, Compute::AsDeclared, None, &known)
    }

    fn unknown_input(&self, name: &str) -> Error {
        let names: Vec<&str> = self.function.inputs.iter().map(|i| i.name.as_str()).collect();
        Error::UnknownInput(name.to_string(), names.join(", "))
    }
}

/// What a run reads instead of computing: a [`Prepared`] function's constants, the values of
/// its fixed inputs, which ops those cover, and which inputs are fixed. Empty for plain runs.
#[derive(Default)]
struct Known<'k> {
    consts: Option<&'k HashMap<String, Array>>,
    fixed: Option<&'k HashMap<String, Array>>,
    done: &'k [bool],
    fixed_inputs: &'k [String],
}

impl Known<'_> {
    fn get(&self, name: &str) -> Option<&Array> {
        self.fixed.and_then(|m| m.get(name)).or_else(|| self.consts.and_then(|m| m.get(name)))
    }
}

/// [`run_visiting`] (`visit` optional), reading `known` values by reference, and the inputs from
/// `inputs` where they need no conversion (never copied into the value environment: a decoder
/// step reads tens of MB of caches it does not change). State values live in the environment
/// under the state's name, are never freed, and are copied back into `states` at the end.
fn run_known(
    function: &Function,
    inputs: &[(String, Array)],
    states: &mut [(String, Array)],
    compute: Compute,
    mut visit: Option<&mut Visit>,
    known: &Known,
) -> Result<Vec<(String, Array)>, Error> {
    let block = &function.block;
    let unsupported = unsupported_ops(function);
    if !unsupported.is_empty() {
        return Err(Error::Unsupported(unsupported));
    }
    if known.consts.is_none() {
        // A `Prepared` function was checked once, when it was prepared.
        memory_needed(function)?;
    }
    // Constant tensors by output name, for typing ops with unknown output dims; built on first need.
    let mut const_tensors: Option<HashMap<&str, &Tensor>> = None;
    let mut bound = bind_inputs(function, inputs, compute, known.fixed_inputs)?;
    let mut env: HashMap<String, Array> = HashMap::new();
    for (name, value) in bind_states(function, states, compute)? {
        env.insert(name, value);
    }

    let mut last_use = last_uses(block);
    let state_names: Vec<&str> =
        function.inputs.iter().filter(|i| matches!(i.ty, ValueType::State(_))).map(|i| i.name.as_str()).collect();
    for s in &state_names {
        last_use.insert(s, usize::MAX);
    }

    for (i, op) in block.operations.iter().enumerate() {
        if known.done.get(i).copied().unwrap_or(false) {
            continue;
        }
        let in_place = if visit.is_none() { reshape_in_place(op, i, &last_use, &mut env, &mut bound) } else { None };
        let mut outputs = match in_place {
            Some(value) => vec![value],
            None => {
                let lookup = |n: &str| env.get(n).or_else(|| bound.get(n).map(|c| c.as_ref())).or_else(|| known.get(n));
                if op.outputs.iter().any(|o| o.ty.tensor().fixed_shape().is_none()) {
                    let consts = const_tensors.get_or_insert_with(|| {
                        block.operations.iter().filter_map(|o| Some((o.outputs.first()?.name.as_str(), o.const_val()?))).collect()
                    });
                    let held = env.values().chain(bound.values().map(|c| c.as_ref())).map(|a| a.len() as u64 * ARRAY_ELEMENT_BYTES).sum();
                    check_unknown_outputs(op, function.opset, &lookup, consts, held)?;
                }
                eval_op_with(op, function.opset, &lookup, compute)?
            }
        };
        if let Some(visit) = visit.as_deref_mut() {
            let lookup = |n: &str| env.get(n).or_else(|| bound.get(n).map(|c| c.as_ref())).or_else(|| known.get(n));
            visit(op, &lookup, &outputs[..op.outputs.len().min(outputs.len())])?;
        }
        let written = outputs.split_off(op.outputs.len().min(outputs.len()));
        store_written_states(op, function.opset, written, &mut env);
        for (value, decl) in outputs.into_iter().zip(&op.outputs) {
            env.insert(decl.name.clone(), value);
        }
        for (_, args) in &op.inputs {
            for arg in args {
                if let Argument::Name(n) = arg {
                    if last_use.get(n.as_str()) == Some(&i) {
                        env.remove(n);
                    }
                }
            }
        }
    }
    let outputs = block
        .outputs
        .iter()
        .map(|o| {
            let value = env.remove(o).or_else(|| bound.get(o.as_str()).map(|c| c.as_ref().clone())).or_else(|| known.get(o).cloned());
            value.map(|v| (o.clone(), v)).ok_or_else(|| Error::UndefinedOutput(o.clone()))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    for (name, value) in states.iter_mut() {
        if let Some(v) = env.remove(name.as_str()) {
            *value = v;
        }
    }
    Ok(outputs)
}

/// Makes the values an op's kernel returned after its declared outputs (one per `written`
/// state param, in param order) the new values of the states bound to those params.
fn store_written_states(op: &Operation, opset: Opset, written: Vec<Array>, env: &mut HashMap<String, Array>) {
    let Some(def) = ops::lookup(&op.op_type, opset) else { return };
    for (param, value) in def.params.iter().filter(|p| p.writes).zip(written) {
        if let Some([Argument::Name(state)]) = op.input(param.name) {
            env.insert(state.clone(), value);
        }
    }
}

/// A reshape-like op (`mil::ops::shape::RESHAPES`) whose input this op reads last and this run
/// owns: the input array itself, under the declared output shape, without copying its data.
/// `None` otherwise (the kernel then runs as usual).
fn reshape_in_place(
    op: &Operation,
    i: usize,
    last_use: &HashMap<&str, usize>,
    env: &mut HashMap<String, Array>,
    bound: &mut HashMap<&str, Cow<Array>>,
) -> Option<Array> {
    if !ops::shape::is_reshape(&op.op_type) || op.outputs.len() != 1 {
        return None;
    }
    let [Argument::Name(x)] = op.input("x")? else { return None };
    let ty = op.outputs[0].ty.tensor();
    let shape = ty.fixed_shape()?;
    if last_use.get(x.as_str()) != Some(&i) {
        return None;
    }
    let fits = |a: &Array| a.dtype == ty.dtype && a.len() == numeric::numel(&shape);
    let mut value = if env.get(x).is_some_and(fits) {
        env.remove(x)?
    } else if matches!(bound.get(x.as_str()), Some(Cow::Owned(a)) if fits(a)) {
        bound.remove(x.as_str())?.into_owned()
    } else {
        return None;
    };
    value.shape = shape;
    Some(value)
}

/// Runs one op on values looked up in `env` (by name), checks its outputs against the declared
/// types, and rounds fp16 outputs unless `compute` is `Fp32`. An op that writes a state
/// (`write_state`) returns the state's new value after its declared outputs. Used by [`run_with`] and by
/// `validate --per-op`, which feeds each op the fp32 values of its inputs.
pub fn eval_op(op: &Operation, opset: Opset, env: &HashMap<String, Array>, compute: Compute) -> Result<Vec<Array>, Error> {
    eval_op_with(op, opset, &|n| env.get(n), compute)
}

/// [`eval_op`] with values found through `lookup`.
fn eval_op_with<'e>(op: &Operation, opset: Opset, lookup: &dyn Fn(&str) -> Option<&'e Array>, compute: Compute) -> Result<Vec<Array>, Error> {
    if !op.blocks.is_empty() {
        return Err(Error::ControlFlow(op.name.clone()));
    }
    let def = ops::lookup(&op.op_type, opset).ok_or_else(|| Error::Unsupported(vec![op.op_type.clone()]))?;
    let mut inline: Vec<Array> = Vec::new();
    for (_, args) in &op.inputs {
        for arg in args {
            if let Argument::Value(t) = arg {
                let a = Array::from_tensor(t).map_err(|m| Error::Eval {
                    op: op.name.clone(),
                    error: EvalError::Invalid { op: op.op_type.clone(), message: m },
                })?;
                inline.push(a);
            }
        }
    }
    let outputs = {
        let mut next_inline = inline.iter();
        let mut args = Vec::with_capacity(op.inputs.len());
        for (param, bound) in &op.inputs {
            let mut values = Vec::with_capacity(bound.len());
            for arg in bound {
                values.push(match arg {
                    Argument::Name(n) => {
                        lookup(n).ok_or_else(|| Error::Undefined { op: op.name.clone(), value: n.clone() })?
                    }
                    Argument::Value(_) => next_inline
                        .next()
                        .ok_or_else(|| Error::Undefined { op: op.name.clone(), value: param.clone() })?,
                });
            }
            args.push((param.as_str(), values));
        }
        let eval_args = EvalArgs { op: &op.op_type, opset, args, attributes: &op.attributes };
        (def.eval)(&eval_args).map_err(|error| Error::Eval { op: op.name.clone(), error })?
    };
    let written = def.params.iter().filter(|p| p.writes).count();
    if outputs.len() != op.outputs.len() + written {
        return Err(Error::OutputMismatch {
            op: op.name.clone(),
            op_type: op.op_type.clone(),
            output: op.outputs.first().map(|o| o.name.clone()).unwrap_or_default(),
            declared: format!("{} outputs", op.outputs.len()),
            got: format!("{} outputs", outputs.len()),
        });
    }
    let mut outputs = outputs;
    // Copies of fp16 inputs are fp16 already: rounding them again would only cost time.
    let moves_values = ops::shape::moves_values(&op.op_type);
    for (value, decl) in outputs.iter_mut().zip(&op.outputs) {
        let ty = decl.ty.tensor();
        let shape_ok = ty.rank() == value.shape.len()
            && ty.shape.iter().zip(&value.shape).all(|(d, &n)| matches!(d, Dim::Unknown) || *d == Dim::Fixed(n));
        if !shape_ok || ty.dtype != value.dtype {
            return Err(Error::OutputMismatch {
                op: op.name.clone(),
                op_type: op.op_type.clone(),
                output: decl.name.clone(),
                declared: ty.to_string(),
                got: format!("{} {:?}", value.dtype, value.shape),
            });
        }
        if compute == Compute::AsDeclared && value.dtype == DType::F16 && !moves_values {
            if let Data::F32(v) = &mut value.data {
                numeric::fp16::round_slice(v);
            }
        }
    }
    Ok(outputs)
}
/// Every op type in `function` (nested blocks included) that has no kernel, sorted, each once.
pub fn unsupported_ops(function: &Function) -> Vec<String> {
    let mut out: Vec<String> = function
        .block
        .walk_ops()
        .into_iter()
        .filter(|op| ops::lookup(&op.op_type, function.opset).is_none())
        .map(|op| op.op_type.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Checks each given input against the function's signature (`fixed` inputs are not expected:
/// a [`Prepared`] function holds them).
fn bind_inputs<'i>(
    function: &Function,
    inputs: &'i [(String, Array)],
    compute: Compute,
    fixed: &[String],
) -> Result<HashMap<&'i str, Cow<'i, Array>>, Error> {
    let expected = || function.inputs.iter().filter(|i| matches!(i.ty, ValueType::Tensor(_)) && !fixed.contains(&i.name));
    for (name, _) in inputs {
        if !expected().any(|i| &i.name == name) {
            let names: Vec<&str> = expected().map(|i| i.name.as_str()).collect();
            return Err(Error::UnknownInput(name.clone(), names.join(", ")));
        }
    }
    let mut bound = HashMap::new();
    for decl in expected() {
        let (name, given) =
            inputs.iter().find(|(n, _)| n == &decl.name).ok_or_else(|| Error::MissingInput(decl.name.clone()))?;
        bound.insert(name.as_str(), bind_input(decl, given, compute)?);
    }
    Ok(bound)
}

/// Checks each given state against the function's state inputs; returns owned copies for the
/// run to update (`states` itself changes only when the run succeeds).
fn bind_states(function: &Function, states: &[(String, Array)], compute: Compute) -> Result<Vec<(String, Array)>, Error> {
    let declared = || function.inputs.iter().filter(|i| matches!(i.ty, ValueType::State(_)));
    for (name, _) in states {
        if !declared().any(|i| &i.name == name) {
            let names: Vec<&str> = declared().map(|i| i.name.as_str()).collect();
            return Err(Error::UnknownInput(name.clone(), names.join(", ")));
        }
    }
    declared()
        .map(|decl| {
            let (_, given) = states.iter().find(|(n, _)| n == &decl.name).ok_or_else(|| Error::MissingState(decl.name.clone()))?;
            Ok((decl.name.clone(), bind_input(decl, given, compute)?.into_owned()))
        })
        .collect()
}

/// Checks one input (or state) against its declaration. fp32 data is accepted for an fp16 input (rounded,
/// as Core ML converts an fp32 MLMultiArray, into a new array) and the reverse; an input of the
/// declared dtype is borrowed (an fp16 [`Array`] holds fp16 values already).
fn bind_input<'i>(decl: &NamedType, given: &'i Array, compute: Compute) -> Result<Cow<'i, Array>, Error> {
    let ty = decl.ty.tensor();
    let bad = || Error::BadInput {
        name: decl.name.clone(),
        expected: ty.to_string(),
        got: format!("{} {:?}", given.dtype, given.shape),
    };
    let shape_ok = ty.rank() == given.shape.len()
        && ty.shape.iter().zip(&given.shape).all(|(d, &n)| matches!(d, Dim::Unknown) || *d == Dim::Fixed(n));
    let float_pair = ty.dtype.is_float() && given.dtype.is_float();
    let elements = given.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if !shape_ok || !(ty.dtype == given.dtype || float_pair) || elements != Some(given.len()) {
        return Err(bad());
    }
    if given.dtype == ty.dtype {
        return Ok(Cow::Borrowed(given));
    }
    let mut value = given.clone();
    value.dtype = ty.dtype;
    if let (DType::F16, Compute::AsDeclared, Data::F32(v)) = (ty.dtype, compute, &mut value.data) {
        numeric::fp16::round_slice(v);
    }
    Ok(Cow::Owned(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::builder::Builder;
    use crate::mil::ops::{elementwise, linear, shape};
    use crate::mil::{Opset, Tensor, TensorType};

    fn tiny(dtype: DType) -> Function {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(dtype, &[2]));
        let y =
            b.op(&elementwise::ADD, "y").arg("x", &x).konst("y", Tensor::float_scalar(dtype, 1.0)).build1().unwrap();
        let z = b.op(&elementwise::MUL, "z").arg("x", &y).arg("y", &y).build1().unwrap();
        b.finish(&[z])
    }

    #[test]
    fn prepared_runs_match_plain_runs() {
        let f = tiny(DType::F16);
        let x = Array::float(DType::F16, vec![2], vec![0.5, 1.0 / 3.0]);
        let inputs = [("x".to_string(), x)];
        let prepared = Prepared::new(f.clone()).unwrap();
        assert_eq!(prepared.consts.len(), 1);
        for _ in 0..2 {
            assert_eq!(prepared.run(&inputs).unwrap(), run(&f, &inputs).unwrap());
        }
    }

    /// `out = reshape(c + 1, (2, 3)) * x`, with `reshape(x)` also returned: `c` is the input
    /// to fix, the reshapes exercise the in-place path (`c + 1` is read once, `x` twice).
    fn with_fixable_input() -> Function {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F32, &[2, 3]));
        let c = b.input("c", TensorType::new(DType::F32, &[6]));
        let c1 = b.op(&elementwise::ADD, "c1").arg("x", &c).konst("y", Tensor::float_scalar(DType::F32, 1.0)).build1().unwrap();
        let shape = Tensor::from_i32(&[2], &[2, 3]);
        let c2 = b.op(&shape::RESHAPE, "c2").arg("x", &c1).konst("shape", shape.clone()).build1().unwrap();
        let out = b.op(&elementwise::MUL, "out").arg("x", &x).arg("y", &c2).build1().unwrap();
        let flat = b.op(&shape::RESHAPE, "flat").arg("x", &x).konst("shape", Tensor::from_i32(&[1], &[6])).build1().unwrap();
        let again = b.op(&shape::RESHAPE, "again").arg("x", &flat).konst("shape", shape).build1().unwrap();
        b.finish(&[out, again])
    }

    #[test]
    fn fixed_inputs_give_the_plain_answer_and_are_not_taken_again() {
        let f = with_fixable_input();
        let x = Array::float(DType::F32, vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let c = Array::float(DType::F32, vec![6], vec![0.5, -1.0, 2.0, 0.0, 3.0, -2.5]);
        let plain = run(&f, &[("x".into(), x.clone()), ("c".into(), c.clone())]).unwrap();
        assert_eq!(plain[0].1.floats().unwrap(), &[1.5, 0.0, 9.0, 4.0, 20.0, -9.0]);
        assert_eq!(plain[1].1, x);
        let mut prepared = Prepared::new(f).unwrap();
        prepared.fix_inputs(vec![("c".into(), c)]).unwrap();
        assert_eq!(prepared.fixed.keys().collect::<Vec<_>>(), vec!["c2"], "only what later ops read is kept");
        assert_eq!(prepared.run(&[("x".into(), x.clone())]).unwrap(), plain);
        let again = prepared.run(&[("x".into(), x.clone()), ("c".into(), x.clone())]);
        assert!(matches!(again, Err(Error::UnknownInput(n, _)) if n == "c"));
        // A failed fix keeps the inputs fixed before.
        let refix = prepared.fix_inputs(vec![("c".into(), x.clone())]);
        assert!(matches!(refix, Err(Error::BadInput { .. })), "{refix:?}");
        assert_eq!(prepared.run(&[("x".into(), x)]).unwrap(), plain);
    }

    #[test]
    fn runs_in_order_and_rounds_fp16_unless_asked_not_to() {
        let f = tiny(DType::F16);
        let x = Array::float(DType::F32, vec![2], vec![0.0, 1.0 / 3.0]);
        let out = run(&f, &[("x".into(), x.clone())]).unwrap();
        let third = numeric::fp16::round(1.0 / 3.0);
        let expect = numeric::fp16::round(numeric::fp16::round(1.0 + third).powi(2));
        assert_eq!(out[0].1.floats().unwrap(), &[1.0, expect]);
        let exact = run_with(&f, &[("x".into(), x)], Compute::Fp32, &mut |_, _| {}).unwrap();
        assert_eq!(exact[0].1.floats().unwrap()[1], (1.0f32 + 1.0 / 3.0) * (1.0 + 1.0 / 3.0));
    }

    #[test]
    fn input_errors_are_typed() {
        let f = tiny(DType::F32);
        assert_eq!(run(&f, &[]), Err(Error::MissingInput("x".into())));
        let wrong = Array::float(DType::F32, vec![3], vec![0.0; 3]);
        assert!(matches!(run(&f, &[("x".into(), wrong)]), Err(Error::BadInput { .. })));
        let ints = Array::int(vec![2], vec![0; 2]);
        assert!(matches!(run(&f, &[("x".into(), ints)]), Err(Error::BadInput { .. })));
        let extra = Array::float(DType::F32, vec![2], vec![0.0; 2]);
        assert!(matches!(run(&f, &[("x".into(), extra.clone()), ("q".into(), extra)]), Err(Error::UnknownInput(..))));
    }

    #[test]
    fn stateful_runs_read_write_and_hand_back_states() {
        use crate::mil::ops::state::{READ_STATE, WRITE_STATE};
        // y = 2·(acc + x) with acc += x: coremltools' accumulator example of stateful models.
        let mut b = Builder::new(Opset::Ios18);
        let x = b.input("x", TensorType::new(DType::F16, &[2]));
        let acc = b.state_input("acc", TensorType::new(DType::F16, &[2]));
        let old = b.op(&READ_STATE, "old").arg("input", &acc).build1().unwrap();
        let sum = b.op(&elementwise::ADD, "sum").arg("x", &old).arg("y", &x).build1().unwrap();
        b.op(&WRITE_STATE, "store").arg("input", &acc).arg("data", &sum).build().unwrap();
        let new = b.op(&READ_STATE, "new").arg("input", &acc).build1().unwrap();
        let y = b.op(&elementwise::MUL, "y").arg("x", &new).konst("y", Tensor::float_scalar(DType::F16, 2.0)).build1().unwrap();
        let f = b.finish(&[y]);
        let mut states = vec![("acc".to_string(), Array::float(DType::F16, vec![2], vec![0.0, 1.0]))];
        for (x, acc, y) in [([1.0, 2.0], [1.0, 3.0], [2.0, 6.0]), ([0.5, -3.0], [1.5, 0.0], [3.0, 0.0])] {
            let inputs = [("x".to_string(), Array::float(DType::F16, vec![2], x.to_vec()))];
            let out = run_stateful(&f, &inputs, &mut states).unwrap();
            assert_eq!(out[0].1.floats().unwrap(), &y);
            assert_eq!(states[0].1.floats().unwrap(), &acc);
        }
        let x = [("x".to_string(), Array::float(DType::F16, vec![2], vec![0.0; 2]))];
        assert_eq!(run(&f, &x), Err(Error::MissingState("acc".into())));
        let mut wrong = vec![("acc".to_string(), Array::float(DType::F16, vec![3], vec![0.0; 3]))];
        assert!(matches!(run_stateful(&f, &x, &mut wrong), Err(Error::BadInput { .. })));
        assert_eq!(wrong[0].1.len(), 3, "a failed run leaves the states as they were");
    }

    #[test]
    fn unknown_ops_are_listed_once_each() {
        let mut f = tiny(DType::F32);
        for op in &mut f.block.operations {
            if op.op_type != "const" {
                op.op_type = format!("mystery_{}", op.op_type);
            }
        }
        let x = Array::float(DType::F32, vec![2], vec![0.0; 2]);
        assert_eq!(
            run(&f, &[("x".into(), x)]),
            Err(Error::Unsupported(vec!["mystery_add".into(), "mystery_mul".into()]))
        );
    }

    /// `y = x + 1; z = y + 1` over `n` fp32 elements, returning `z` (and `x` too when `keep_x`).
    fn chain(n: usize, keep_x: bool) -> Function {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F32, &[n]));
        let one = || Tensor::float_scalar(DType::F32, 1.0);
        let y = b.op(&elementwise::ADD, "y").arg("x", &x).konst("y", one()).build1().unwrap();
        let z = b.op(&elementwise::ADD, "z").arg("x", &y).konst("y", one()).build1().unwrap();
        if keep_x {
            b.finish(&[z, x])
        } else {
            b.finish(&[z])
        }
    }

    #[test]
    fn issue_hostile_huge_declared_inputs_are_refused_before_allocating() {
        let mut b = Builder::new(Opset::Ios16);
        // 2^40 elements: the most a MIL type may declare (`mil::types::MAX_ELEMENTS`).
        let x = b.input("x", TensorType::new(DType::F32, &[65536, 65536, 256]));
        let y = b.op(&elementwise::ADD, "y").arg("x", &x).konst("y", Tensor::float_scalar(DType::F32, 1.0)).build1().unwrap();
        let f = b.finish(&[y]);
        let tiny = Array::float(DType::F32, vec![1], vec![0.0]);
        let e = run(&f, &[("x".into(), tiny)]).unwrap_err();
        assert!(matches!(&e, Error::OverBudget { value, .. } if value == "input `x`"), "{e}");
        assert!(e.to_string().contains("needs 4 TiB") && e.to_string().contains("768 MiB memory budget"), "{e}");
        assert!(Prepared::new(f).is_err());
        // Dimensions whose byte count wraps around (4 · 2^32 · 2^32 = 2^66 ≡ 0) are an error, not 0 bytes.
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F32, &[1 << 32, 1 << 32]));
        let f = b.finish(&[x]);
        assert!(matches!(memory_needed(&f), Err(Error::SizeOverflow { .. })));
    }

    #[test]
    fn memory_needed_frees_values_after_their_last_use() {
        // 200 MiB per value: x and y, then y and z are alive together (400 MiB) …
        let n = 50 << 20;
        assert_eq!(memory_needed(&chain(n, false)).unwrap(), 2 * 4 * n as u64);
        // … but x returned too stays alive to the end: x, y and z (600 MiB) …
        assert_eq!(memory_needed(&chain(n, true)).unwrap(), 3 * 4 * n as u64);
        // … which at 300 MiB per value is over the budget, found at `z`.
        let e = memory_needed(&chain(75 << 20, true)).unwrap_err();
        assert!(matches!(&e, Error::OverBudget { value, live, .. } if value == "op `z` output `z`" && *live == 600 << 20), "{e}");
    }

    #[test]
    fn issue_hostile_outputs_sized_at_run_time_are_checked_before_their_op_runs() {
        // `fill` with a shape computed from an input: the declared output has unknown dims, so
        // only the actual shape values can tell its size.
        let mut b = Builder::new(Opset::Ios16);
        let s = b.input("s", TensorType::new(DType::I32, &[3]));
        let shape = b.op(&elementwise::ADD, "shape").arg("x", &s).konst("y", Tensor::from_i32(&[], &[0])).build1().unwrap();
        let filled = b.op(&shape::FILL, "filled").arg("shape", &shape).build1().unwrap();
        let f = b.finish(&[filled]);
        assert!(f.block.operations.iter().any(|o| o.name == "filled" && o.outputs[0].ty.tensor().fixed_shape().is_none()));
        let small = run(&f, &[("s".into(), Array::int(vec![3], vec![2, 3, 4]))]).unwrap();
        assert_eq!(small[0].1.shape, vec![2, 3, 4]);
        let e = run(&f, &[("s".into(), Array::int(vec![3], vec![65536, 65536, 65536]))]).unwrap_err();
        // 2^48 elements: beyond what a MIL type may declare, so refused by type checking.
        assert!(matches!(&e, Error::Refused { op, .. } if op == "filled"), "{e}");
        let e = run(&f, &[("s".into(), Array::int(vec![3], vec![1024, 1024, 1024]))]).unwrap_err();
        assert!(matches!(&e, Error::OverBudget { value, .. } if value == "op `filled` output `filled`"), "{e}");
    }

    #[test]
    fn observer_sees_every_op_output() {
        let mut b = Builder::new(Opset::Ios15);
        let x = b.input("x", TensorType::new(DType::F32, &[1, 2]));
        let y = b
            .op(&linear::LINEAR, "fc")
            .arg("x", &x)
            .konst("weight", Tensor::from_f32(&[1, 2], &[1.0, 2.0]))
            .build1()
            .unwrap();
        let f = b.finish(&[y]);
        let mut seen = Vec::new();
        let out = run_with(
            &f,
            &[("x".into(), Array::float(DType::F32, vec![1, 2], vec![3.0, 4.0]))],
            Compute::AsDeclared,
            &mut |n, _| seen.push(n.to_string()),
        )
        .unwrap();
        assert_eq!(out[0].1.floats().unwrap(), &[11.0]);
        assert_eq!(seen, vec!["fc_weight", "fc"]);
    }
}
