//! THE op table: one [`OpDef`] per MIL op (and per op-set revision of its signature), grouped by
//! family in the sibling files. A declaration holds the op's name, the op set it appears in, its
//! parameter signature, its output type inference, and its interpreter kernel. The Builder
//! (`mil::builder`) calls [`check`] to type new ops; `package::read` calls it to re-check every op
//! it reads; `interp::run` calls each op's `eval` (value types in [`eval`], math in `numeric`).
//! Semantics follow coremltools' op definitions, `converters/mil/mil/ops/defs/iOS15..iOS18`
//! (coremltools 9.0), summarized in shared/docs/coreml-format.md §6.
//!
//! Adding an op: its `OpDef` in the family file, plus one line in [`OPS`].

pub mod attention;
pub mod elementwise;
pub mod eval;
pub mod linear;
pub mod norm;
pub mod recurrent;
pub mod reduce;
pub mod shape;
pub mod state;

use std::collections::BTreeMap;

use super::types::{DType, Dim, TensorType};
use super::{Opset, Tensor};
pub use eval::{Array, Data, EvalArgs, EvalError, EvalFn};

/// Most outputs one op may have (`split` is the only op with a data-dependent count): real
/// models split into at most a few hundred parts (heads, chunks); more is a bomb, since every
/// output is a value the program must name, type and write.
pub const MAX_OUTPUTS: usize = 1 << 16;

/// Output type inference: given the typed (and, where const, valued) arguments, the output types.
pub type InferFn = fn(&OpArgs) -> Result<Vec<TensorType>, TypeError>;

/// Everything we know about one MIL op in one op-set revision.
pub struct OpDef {
    /// MIL op type, spelled as Core ML does (`real_div`, `slice_by_index`).
    pub name: &'static str,
    /// First op set with this signature; `lookup` picks the newest revision not after the program's.
    pub since: Opset,
    /// Input parameters in coremltools' declaration order.
    pub params: &'static [Param],
    /// Output types from input types and const values.
    pub infer: InferFn,
    /// Interpreter kernel: output values from input values (Core ML's semantics, checked against torch).
    pub eval: EvalFn,
}

/// One input parameter of an op.
pub struct Param {
    pub name: &'static str,
    /// Allowed element dtypes.
    pub dtypes: &'static [DType],
    /// Must be bound to a `const` output (Core ML rejects computed values here).
    pub konst: bool,
    pub optional: bool,
    /// Takes a tuple of values (`concat.values`).
    pub variadic: bool,
    /// Params with the same non-zero tag must share one dtype (coremltools' type domain `T`).
    pub same_as: u8,
    /// Bound to an iOS18 state (a function input of state type, coremltools' `StateInputType`)
    /// rather than a tensor; `dtypes` then constrains the wrapped tensor. Only state params
    /// accept states, so a state reaches tensor ops only through `read_state`.
    pub state: bool,
    /// The op stores a new value into this state param. Its kernel returns that value after the
    /// op's declared outputs, and `interp` makes it the state's value for the rest of the run.
    pub writes: bool,
}

impl Param {
    /// A required tensor parameter with its own dtype.
    pub const fn new(name: &'static str, dtypes: &'static [DType]) -> Param {
        Param { name, dtypes, konst: false, optional: false, variadic: false, same_as: 0, state: false, writes: false }
    }
    /// A required parameter bound to a state whose wrapped tensor has one of `dtypes`.
    pub const fn state(name: &'static str, dtypes: &'static [DType]) -> Param {
        Param { state: true, ..Param::new(name, dtypes) }
    }
    /// This state parameter is written by the op (see [`Param::writes`]).
    pub const fn written(self) -> Param {
        Param { writes: true, ..self }
    }
    /// A required tensor parameter in type domain `T` (all `T` params share a dtype).
    pub const fn t(name: &'static str, dtypes: &'static [DType]) -> Param {
        Param { same_as: b'T', ..Param::new(name, dtypes) }
    }
    /// This parameter must be bound to a const.
    pub const fn konst(self) -> Param {
        Param { konst: true, ..self }
    }
    /// This parameter may be left out.
    pub const fn optional(self) -> Param {
        Param { optional: true, ..self }
    }
    /// This parameter takes a tuple of values.
    pub const fn variadic(self) -> Param {
        Param { variadic: true, ..self }
    }
}

/// fp16 or fp32: the dtypes MIL computes floats in.
pub const FLOAT: &[DType] = &[DType::F16, DType::F32];
/// fp16, fp32 or int32: arithmetic ops.
pub const NUMERIC: &[DType] = &[DType::F16, DType::F32, DType::I32];
/// Tensors any op may move around unchanged (shape ops).
pub const ANY_TENSOR: &[DType] =
    &[DType::F16, DType::F32, DType::I32, DType::Bool, DType::I8, DType::U8, DType::I16, DType::U16];
/// Integer index/shape parameters.
pub const INT: &[DType] = &[DType::I32, DType::I16, DType::U16, DType::I8, DType::U8];
/// Exactly int32 (axes, perms, strides).
pub const INT32: &[DType] = &[DType::I32];
/// Booleans (masks, flags).
pub const BOOL: &[DType] = &[DType::Bool];
/// Strings (`pad_type`, `mode`, `dtype`).
pub const STRING: &[DType] = &[DType::String];

/// Every MIL op we can type and build, in the order the supported-ops table lists them.
pub const OPS: &[&OpDef] = &[
    &elementwise::ADD,
    &elementwise::SUB,
    &elementwise::MUL,
    &elementwise::REAL_DIV,
    &elementwise::FLOOR_DIV,
    &elementwise::POW,
    &elementwise::MAXIMUM,
    &elementwise::MINIMUM,
    &elementwise::EQUAL,
    &elementwise::NOT_EQUAL,
    &elementwise::LESS,
    &elementwise::LESS_EQUAL,
    &elementwise::GREATER,
    &elementwise::GREATER_EQUAL,
    &elementwise::LOGICAL_AND,
    &elementwise::LOGICAL_OR,
    &elementwise::LOGICAL_XOR,
    &elementwise::LOGICAL_NOT,
    &elementwise::SQRT,
    &elementwise::RSQRT,
    &elementwise::EXP,
    &elementwise::LOG,
    &elementwise::ERF,
    &elementwise::ABS,
    &elementwise::SQUARE,
    &elementwise::SIGN,
    &elementwise::FLOOR,
    &elementwise::CEIL,
    &elementwise::ROUND,
    &elementwise::SIN,
    &elementwise::COS,
    &elementwise::ATAN,
    &elementwise::TANH,
    &elementwise::SIGMOID,
    &elementwise::RELU,
    &elementwise::LEAKY_RELU, &elementwise::LEAKY_RELU_IOS17,
    &elementwise::ELU, &elementwise::ELU_IOS17,
    &elementwise::PRELU,
    &elementwise::PRELU_IOS17,
    &elementwise::SIGMOID_HARD, &elementwise::SIGMOID_HARD_IOS17,
    &elementwise::THRESHOLDED_RELU, &elementwise::THRESHOLDED_RELU_IOS17,
    &elementwise::SOFTPLUS,
    &elementwise::GELU,
    &elementwise::SILU,
    &elementwise::CLIP,
    &elementwise::CAST,
    &elementwise::SELECT,
    &elementwise::SOFTMAX,
    &linear::LINEAR,
    &linear::MATMUL,
    &linear::CONV,
    &linear::CONV_TRANSPOSE,
    &linear::AVG_POOL,
    &linear::MAX_POOL,
    &norm::LAYER_NORM,
    &norm::BATCH_NORM,
    &norm::INSTANCE_NORM,
    &reduce::REDUCE_MEAN,
    &reduce::REDUCE_SUM,
    &reduce::REDUCE_MAX,
    &reduce::REDUCE_MIN,
    &reduce::REDUCE_PROD,
    &reduce::REDUCE_L1_NORM,
    &reduce::REDUCE_L2_NORM,
    &reduce::REDUCE_SUM_SQUARE,
    &reduce::REDUCE_LOG_SUM_EXP,
    &reduce::REDUCE_ARGMAX,
    &reduce::REDUCE_ARGMIN,
    &shape::CONST,
    &shape::IDENTITY,
    &shape::SHAPE,
    &shape::RESHAPE,
    &shape::TRANSPOSE,
    &shape::EXPAND_DIMS,
    &shape::SQUEEZE,
    &shape::CONCAT,
    &shape::STACK,
    &shape::SPLIT,
    &shape::SLICE_BY_INDEX,
    &shape::SLICE_BY_SIZE,
    &shape::GATHER,
    &shape::GATHER_IOS16,
    &shape::GATHER_IOS17,
    &shape::GATHER_ALONG_AXIS,
    &shape::GATHER_ND,
    &shape::TILE,
    &shape::PAD,
    &shape::FILL,
    &shape::RANGE_1D,
    &shape::BAND_PART,
    &shape::CUMSUM,
    &shape::UPSAMPLE_NEAREST_NEIGHBOR,
    &shape::UPSAMPLE_BILINEAR,
    &shape::UPSAMPLE_BILINEAR_IOS16,
    &shape::PIXEL_SHUFFLE,
    &shape::PIXEL_UNSHUFFLE,
    &shape::SCATTER_ALONG_AXIS,
    &shape::SLICE_UPDATE,
    &recurrent::RNN, &recurrent::RNN_IOS17,
    &recurrent::GRU, &recurrent::GRU_IOS17, &recurrent::GRU_IOS18,
    &recurrent::LSTM, &recurrent::LSTM_IOS17,
    &attention::SCALED_DOT_PRODUCT_ATTENTION,
    &state::READ_STATE,
    &state::WRITE_STATE,
];

/// The newest declaration of `name` usable in `opset`, or `None` for ops we do not know
/// (those still round-trip through packages, untyped).
pub fn lookup(name: &str, opset: Opset) -> Option<&'static OpDef> {
    OPS.iter().copied().filter(|d| d.name == name && d.since <= opset).max_by_key(|d| d.since)
}

/// Orders an op's parameters as its `OpDef` declares them (alphabetically for ops we do not know),
/// so a program reads back from a package (where inputs are a map) exactly as it was built.
/// Called by `Builder::build` and `package::read`.
pub fn sort_params(op_type: &str, opset: Opset, inputs: &mut [(String, Vec<super::Argument>)]) {
    match lookup(op_type, opset) {
        Some(def) => inputs.sort_by_key(|(p, _)| def.params.iter().position(|d| d.name == p).unwrap_or(usize::MAX)),
        None => inputs.sort_by(|a, b| a.0.cmp(&b.0)),
    }
}

/// Why an op's arguments do not type-check. `op` is the MIL op type.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TypeError {
    #[error("{op}: missing required parameter `{param}`")]
    Missing { op: String, param: String },
    #[error("{op}: unknown parameter `{param}`")]
    Unknown { op: String, param: String },
    #[error("{op}: parameter `{param}` must be a const")]
    NotConst { op: String, param: String },
    #[error("{op}: parameter `{param}` has dtype {got}, expected one of {allowed}")]
    DType { op: String, param: String, got: DType, allowed: String },
    #[error("{op}: {message}")]
    Invalid { op: String, message: String },
    #[error("{op}: parameter `{param}` {}", if *.expected { "must be bound to a state" } else { "is bound to a state; read it with `read_state` first" })]
    State { op: String, param: String, expected: bool },
    #[error("{op}: not available before {since:?} (program op set {opset:?})")]
    TooNew { op: String, since: Opset, opset: Opset },
}

/// One bound argument as type inference sees it: its type (for a state, the wrapped tensor
/// type), its value when it is a const, whether it is a state, and whether it is a compressed
/// weight (a `constexpr_*` output: a constant to Core ML whose dense value is not materialized
/// while a package is written).
#[derive(Clone, Debug)]
pub struct Arg<'a> {
    pub ty: TensorType,
    pub value: Option<&'a Tensor>,
    pub state: bool,
    pub constexpr: bool,
}

/// The arguments of one op, by parameter, as given to an [`InferFn`].
pub struct OpArgs<'a> {
    pub op: &'a str,
    pub opset: Opset,
    pub args: Vec<(&'a str, Vec<Arg<'a>>)>,
    /// Literal attributes of the op (`const.val`); empty for ordinary ops.
    pub attributes: &'a BTreeMap<String, Tensor>,
}

impl<'a> OpArgs<'a> {
    /// An `Invalid` error for this op.
    pub fn invalid(&self, message: impl Into<String>) -> TypeError {
        TypeError::Invalid { op: self.op.to_string(), message: message.into() }
    }

    fn get(&self, param: &str) -> Option<&[Arg<'a>]> {
        self.args.iter().find(|(p, _)| *p == param).map(|(_, a)| a.as_slice())
    }

    /// The type of a (single-valued) parameter that must be present.
    pub fn tensor(&self, param: &str) -> Result<&TensorType, TypeError> {
        self.opt_tensor(param).ok_or_else(|| TypeError::Missing { op: self.op.to_string(), param: param.to_string() })
    }

    /// The type of an optional parameter.
    pub fn opt_tensor(&self, param: &str) -> Option<&TensorType> {
        self.get(param).and_then(|a| a.first()).map(|a| &a.ty)
    }

    /// Every argument of a variadic parameter.
    pub fn variadic(&self, param: &str) -> &[Arg<'a>] {
        self.get(param).unwrap_or(&[])
    }

    /// The const value of a parameter, `None` when absent or not const.
    pub fn value(&self, param: &str) -> Option<&'a Tensor> {
        self.get(param).and_then(|a| a.first()).and_then(|a| a.value)
    }

    /// A const integer-vector parameter (axes, perm, pad…), `None` when absent.
    pub fn ints(&self, param: &str) -> Result<Option<Vec<i64>>, TypeError> {
        match self.value(param) {
            None => Ok(None),
            Some(t) => t.to_i64_vec().map(Some).ok_or_else(|| self.invalid(format!("`{param}` is not integer"))),
        }
    }

    /// A const integer scalar parameter, or `default` when absent.
    pub fn int_or(&self, param: &str, default: i64) -> Result<i64, TypeError> {
        match self.ints(param)?.as_deref() {
            None => Ok(default),
            Some([v]) => Ok(*v),
            Some(_) => Err(self.invalid(format!("`{param}` must be a scalar"))),
        }
    }

    /// A const bool scalar parameter, or `default` when absent.
    pub fn bool_or(&self, param: &str, default: bool) -> Result<bool, TypeError> {
        Ok(self.int_or(param, i64::from(default))? != 0)
    }

    /// A const string parameter, `None` when absent.
    pub fn string(&self, param: &str) -> Option<&'a str> {
        self.value(param).and_then(|t| t.as_str())
    }

    /// The fixed shape of a parameter's type, or an error naming it.
    pub fn fixed(&self, param: &str) -> Result<Vec<usize>, TypeError> {
        self.tensor(param)?.fixed_shape().ok_or_else(|| self.invalid(format!("`{param}` needs a static shape")))
    }

    /// Resolves a possibly negative `axis` against `rank` (Python style).
    pub fn axis(&self, axis: i64, rank: usize) -> Result<usize, TypeError> {
        let r = rank as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if (0..r).contains(&a) {
            Ok(a as usize)
        } else {
            Err(self.invalid(format!("axis {axis} out of range for rank {rank}")))
        }
    }
}

/// Checks one op's arguments against `def` (required/unknown params, const-ness, dtypes, shared
/// dtypes) and returns the inferred output types, refusing any beyond the size ceilings of
/// [`TensorType::size_problem`]. Callers: `Builder::build`, `package::read`.
pub fn check(def: &OpDef, args: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let op = || def.name.to_string();
    if def.since > args.opset {
        return Err(TypeError::TooNew { op: op(), since: def.since, opset: args.opset });
    }
    for (name, _) in &args.args {
        if !def.params.iter().any(|p| p.name == *name) {
            return Err(TypeError::Unknown { op: op(), param: name.to_string() });
        }
    }
    // The dtype each type-domain tag (`same_as`) is bound to so far.
    let mut shared: Vec<(u8, DType)> = Vec::new();
    for p in def.params {
        let bound = args.get(p.name).unwrap_or(&[]);
        if bound.is_empty() && !p.optional {
            return Err(TypeError::Missing { op: op(), param: p.name.to_string() });
        }
        for a in bound {
            if p.konst && a.value.is_none() && !a.constexpr {
                return Err(TypeError::NotConst { op: op(), param: p.name.to_string() });
            }
            if p.state != a.state {
                return Err(TypeError::State { op: op(), param: p.name.to_string(), expected: p.state });
            }
            let allowed = || p.dtypes.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ");
            if !p.dtypes.contains(&a.ty.dtype) {
                return Err(TypeError::DType {
                    op: op(),
                    param: p.name.to_string(),
                    got: a.ty.dtype,
                    allowed: allowed(),
                });
            }
            if p.same_as != 0 {
                match shared.iter().find(|(tag, _)| *tag == p.same_as).map(|&(_, d)| d) {
                    Some(d) if d != a.ty.dtype => {
                        return Err(TypeError::DType {
                            op: op(),
                            param: p.name.to_string(),
                            got: a.ty.dtype,
                            allowed: d.name().to_string(),
                        })
                    }
                    Some(_) => {}
                    None => shared.push((p.same_as, a.ty.dtype)),
                }
            }
        }
    }
    let out = (def.infer)(args)?;
    if out.len() > MAX_OUTPUTS {
        return Err(TypeError::Invalid { op: op(), message: format!("{} outputs, more than the {MAX_OUTPUTS} allowed", out.len()) });
    }
    if let Some(problem) = out.iter().find_map(TensorType::size_problem) {
        return Err(TypeError::Invalid { op: op(), message: format!("output {problem}") });
    }
    Ok(out)
}

/// Numpy broadcasting of two shapes; unknown dims broadcast to unknown. Used by elementwise ops.
pub fn broadcast(args: &OpArgs, a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, TypeError> {
    let n = a.len().max(b.len());
    let at = |s: &[Dim], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { Dim::Fixed(1) };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (Dim::Fixed(1), d) | (d, Dim::Fixed(1)) => Ok(d),
            (Dim::Fixed(x), Dim::Fixed(y)) if x == y => Ok(Dim::Fixed(x)),
            (Dim::Fixed(x), Dim::Fixed(y)) => Err(args.invalid(format!("shapes do not broadcast ({x} vs {y})"))),
            _ => Ok(Dim::Unknown),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_table_has_unique_name_and_opset_pairs() {
        for (i, a) in OPS.iter().enumerate() {
            for b in &OPS[i + 1..] {
                assert!(!(a.name == b.name && a.since == b.since), "{} declared twice for {:?}", a.name, a.since);
            }
            let mut names: Vec<_> = a.params.iter().map(|p| p.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), a.params.len(), "{} repeats a parameter", a.name);
        }
    }

    #[test]
    fn lookup_picks_newest_revision_not_after_opset() {
        assert_eq!(lookup("gather", Opset::Ios15).unwrap().since, Opset::Ios15);
        assert_eq!(lookup("gather", Opset::Ios16).unwrap().since, Opset::Ios16);
        assert_eq!(lookup("gather", Opset::Ios18).unwrap().since, Opset::Ios17);
        assert!(lookup("no_such_op", Opset::Ios18).is_none());
    }
}
