//! aten → MIL. [`LOWERINGS`] is the one table of torch ops we convert: each entry has the aten
//! name, its argument names and defaults in schema order (so printed calls that leave out
//! defaults or use keywords normalize to one form), and the function that emits MIL through the
//! Builder. Shape arithmetic (`size`, `NumToTensor`, `int`) folds to constants because input
//! shapes are static. Called by the inliner in `torchscript::graph`, one call at a time.

mod attention;
mod elementwise;
mod nn;
mod recurrent;
mod reduce;
mod resample;
mod shape;

use crate::mil::builder::{Builder, Var};
use crate::mil::ops::OpDef;
use crate::mil::{DType, Tensor, TensorType};

/// A value during lowering: a MIL tensor, or a constant the trace computed (ints, lists, …).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Tensor(Var),
    /// `torch.device("cpu")`: carried along, never lowered.
    Device,
}

/// Most items of a list a message quotes; the rest are counted.
pub const MAX_ITEMS_SHOWN: usize = 8;

/// Largest element count of a constant a lowering materializes from the trace (`arange`,
/// `new_ones`, `full_like`, `expand`'s zeros, `index`'s row ids, a causal mask): 2^24 elements
/// is 64 MiB of fp32, and building one takes about three such buffers, well inside the 1 GiB
/// a conversion may use. A larger one is refused rather than allocated.
pub const MAX_CONST_ELEMENTS: usize = 1 << 24;

impl Value {
    /// A one-line description of this value for error messages, bounded whatever the file
    /// holds: strings go through `files::shown`, lists show their first few items.
    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Float(x) => format!("float {x:?}"),
            Value::Str(s) => format!("string \"{}\"", crate::files::shown(s)),
            Value::Device => "a device".into(),
            Value::Tensor(v) => format!("tensor `{}`", crate::files::shown(&v.0)),
            Value::List(items) | Value::Tuple(items) => {
                let kind = if matches!(self, Value::List(_)) { "list" } else { "tuple" };
                // Nested lists are not expanded: a hostile nesting stays one short line.
                let shown: Vec<String> = items
                    .iter()
                    .take(MAX_ITEMS_SHOWN)
                    .map(|v| match v {
                        Value::List(_) | Value::Tuple(_) => "[…]".to_string(),
                        v => v.describe(),
                    })
                    .collect();
                let more = items.len().saturating_sub(MAX_ITEMS_SHOWN);
                let more = if more > 0 { format!(", … ({more} more)") } else { String::new() };
                format!("{kind} [{}{more}]", shown.join(", "))
            }
        }
    }
}

/// An int list (sizes, dims) for a message: the first few entries, the rest counted.
pub fn ints_shown(v: &[i64]) -> String {
    let mut s = v.iter().take(MAX_ITEMS_SHOWN).map(i64::to_string).collect::<Vec<_>>().join(", ");
    if v.len() > MAX_ITEMS_SHOWN {
        s += &format!(", … ({} more)", v.len() - MAX_ITEMS_SHOWN);
    }
    format!("[{s}]")
}

/// A shape for a message, like [`ints_shown`].
pub fn dims_shown(v: &[usize]) -> String {
    ints_shown(&v.iter().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect::<Vec<_>>())
}

/// The element count of a constant of `shape` that a lowering is about to build, or an error
/// when it overflows or passes [`MAX_CONST_ELEMENTS`] (checked before anything is allocated).
pub fn const_elements(shape: &[usize]) -> Result<usize, String> {
    match crate::mil::types::checked_elements(shape) {
        Some(n) if n <= MAX_CONST_ELEMENTS => Ok(n),
        _ => Err(format!(
            "a constant of shape {} would have more than {MAX_CONST_ELEMENTS} elements",
            dims_shown(shape)
        )),
    }
}

/// `dims` as int32 (MIL's shape type), or an error naming the first that does not fit.
pub fn dims_i32(dims: &[usize]) -> Result<Vec<i32>, String> {
    dims.iter().map(|&d| i32::try_from(d).map_err(|_| format!("dimension {d} does not fit in int32"))).collect()
}

/// A default of one schema argument.
#[derive(Clone, Copy, Debug)]
pub enum Default {
    Required,
    None,
    Int(i64),
    Float(f64),
    Bool(bool),
    Ints(&'static [i64]),
}

impl Default {
    fn value(self) -> Option<Value> {
        Some(match self {
            Default::Required => return None,
            Default::None => Value::None,
            Default::Int(i) => Value::Int(i),
            Default::Float(x) => Value::Float(x),
            Default::Bool(b) => Value::Bool(b),
            Default::Ints(v) => Value::List(v.iter().map(|&i| Value::Int(i)).collect()),
        })
    }
}

/// `(name, default)` of one schema argument.
pub type Arg = (&'static str, Default);

/// Emits MIL for one call; `args` are in schema order, defaults filled in.
pub type LowerFn = fn(&mut Lower, &[Value]) -> Result<Value, String>;

/// One supported torch op.
pub struct Lowering {
    /// As TorchScript names it after `torch.` / `ops.` (`aten::linear`, `prim::NumToTensor`).
    pub kind: &'static str,
    pub args: &'static [Arg],
    pub lower: LowerFn,
}

const R: Default = Default::Required;
const NONE: Default = Default::None;

/// The schema of `aten::lstm`/`gru`/`rnn_*` (`.input` overloads; `hx` is LSTM's `[h0, c0]`).
const RNN_ARGS: &[Arg] = &[("input", R), ("hx", R), ("params", R), ("has_biases", R), ("num_layers", R), ("dropout", R), ("train", R), ("bidirectional", R), ("batch_first", R)];

/// `aten::conv{1,2,3}d` arguments (padding: ints or "valid"/"same").
const CONV_ND_ARGS: &[Arg] =
    &[("input", R), ("weight", R), ("bias", NONE), ("stride", Default::Int(1)), ("padding", Default::Int(0)), ("dilation", Default::Int(1)), ("groups", Default::Int(1))];
/// `aten::conv_transpose{1,2,3}d` arguments.
const CONV_TRANSPOSE_ARGS: &[Arg] = &[
    ("input", R),
    ("weight", R),
    ("bias", NONE),
    ("stride", Default::Int(1)),
    ("padding", Default::Int(0)),
    ("output_padding", Default::Int(0)),
    ("groups", Default::Int(1)),
    ("dilation", Default::Int(1)),
];

/// Every torch op we lower, grouped like `mil/ops`. Before lowering, the inliner checks every
/// call in the model against this table and reports all missing ones at once.
pub const LOWERINGS: &[Lowering] = &[
    // elementwise and activations
    Lowering { kind: "aten::add", args: &[("self", R), ("other", R), ("alpha", Default::Int(1))], lower: elementwise::add },
    Lowering { kind: "aten::sub", args: &[("self", R), ("other", R), ("alpha", Default::Int(1))], lower: elementwise::sub },
    Lowering { kind: "aten::mul", args: &[("self", R), ("other", R)], lower: elementwise::mul },
    Lowering { kind: "aten::div", args: &[("self", R), ("other", R), ("rounding_mode", NONE)], lower: elementwise::div },
    Lowering { kind: "aten::pow", args: &[("self", R), ("exponent", R)], lower: elementwise::pow },
    Lowering { kind: "aten::rsub", args: &[("self", R), ("other", R), ("alpha", Default::Int(1))], lower: elementwise::rsub },
    Lowering { kind: "aten::neg", args: &[("self", R)], lower: elementwise::neg },
    Lowering { kind: "aten::sqrt", args: &[("self", R)], lower: elementwise::sqrt },
    Lowering { kind: "aten::rsqrt", args: &[("self", R)], lower: elementwise::rsqrt },
    Lowering { kind: "aten::exp", args: &[("self", R)], lower: elementwise::exp },
    Lowering { kind: "aten::erf", args: &[("self", R)], lower: elementwise::erf },
    Lowering { kind: "aten::tanh", args: &[("self", R)], lower: elementwise::tanh },
    Lowering { kind: "aten::sigmoid", args: &[("self", R)], lower: elementwise::sigmoid },
    Lowering { kind: "aten::relu", args: &[("self", R)], lower: elementwise::relu },
    Lowering { kind: "aten::silu", args: &[("self", R)], lower: elementwise::silu },
    Lowering { kind: "aten::gelu", args: &[("self", R), ("approximate", Default::None)], lower: elementwise::gelu },
    Lowering { kind: "aten::hardtanh", args: &[("self", R), ("min_val", Default::Float(-1.0)), ("max_val", Default::Float(1.0))], lower: elementwise::hardtanh },
    Lowering { kind: "aten::hardsigmoid", args: &[("self", R)], lower: elementwise::hardsigmoid },
    Lowering { kind: "aten::hardswish", args: &[("self", R)], lower: elementwise::hardswish },
    Lowering { kind: "aten::softmax", args: &[("self", R), ("dim", R), ("dtype", NONE)], lower: elementwise::softmax },
    Lowering { kind: "aten::dropout", args: &[("input", R), ("p", R), ("train", R)], lower: elementwise::identity },
    Lowering { kind: "aten::detach", args: &[("self", R)], lower: elementwise::identity },
    // recurrent layers (unrolled over time, see recurrent.rs)
    Lowering { kind: "aten::lstm", args: RNN_ARGS, lower: recurrent::lstm },
    Lowering { kind: "aten::gru", args: RNN_ARGS, lower: recurrent::gru },
    Lowering { kind: "aten::rnn_tanh", args: RNN_ARGS, lower: recurrent::rnn_tanh },
    Lowering { kind: "aten::rnn_relu", args: RNN_ARGS, lower: recurrent::rnn_relu },
    // torch.export IR forms: aliases and lifted constants are the value itself; the runtime
    // asserts checked what conversion already knows (static dtypes and shapes).
    Lowering { kind: "aten::alias", args: &[("self", R)], lower: elementwise::identity },
    Lowering { kind: "aten::lift_fresh_copy", args: &[("self", R)], lower: elementwise::identity },
    Lowering { kind: "aten::_to_copy", args: &[("self", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE), ("non_blocking", Default::Bool(false)), ("memory_format", NONE)], lower: elementwise::to },
    Lowering { kind: "aten::_assert_tensor_metadata", args: &[("a", R), ("size", NONE), ("stride", NONE), ("dtype", NONE), ("device", NONE), ("layout", NONE)], lower: elementwise::nothing },
    Lowering { kind: "aten::_assert_scalar", args: &[("self", R), ("assert_msg", R)], lower: elementwise::nothing },
    Lowering { kind: "aten::_assert_async", args: &[("self", R), ("assert_msg", NONE)], lower: elementwise::nothing },
    Lowering { kind: "aten::contiguous", args: &[("self", R), ("memory_format", Default::Int(0))], lower: elementwise::identity },
    Lowering { kind: "aten::to", args: &[("self", R), ("a", NONE), ("b", NONE), ("c", NONE), ("d", NONE), ("dtype", NONE), ("layout", NONE), ("device", NONE)], lower: elementwise::to },
    Lowering { kind: "aten::clamp", args: &[("self", R), ("min", NONE), ("max", NONE)], lower: elementwise::clamp },
    Lowering { kind: "aten::clip", args: &[("self", R), ("min", NONE), ("max", NONE)], lower: elementwise::clamp },
    Lowering { kind: "aten::clamp_min", args: &[("self", R), ("min", R)], lower: elementwise::clamp_min },
    Lowering { kind: "aten::clamp_max", args: &[("self", R), ("max", R)], lower: elementwise::clamp_max },
    Lowering { kind: "aten::prelu", args: &[("self", R), ("weight", R)], lower: elementwise::prelu },
    Lowering { kind: "aten::leaky_relu", args: &[("self", R), ("negative_slope", Default::Float(0.01))], lower: elementwise::leaky_relu },
    Lowering { kind: "aten::rrelu", args: &[("self", R), ("lower", Default::Float(0.125)), ("upper", Default::Float(1.0 / 3.0)), ("training", Default::Bool(false)), ("generator", NONE)], lower: elementwise::rrelu },
    Lowering { kind: "aten::elu", args: &[("self", R), ("alpha", Default::Float(1.0)), ("scale", Default::Float(1.0)), ("input_scale", Default::Float(1.0))], lower: elementwise::elu },
    Lowering { kind: "aten::selu", args: &[("self", R)], lower: elementwise::selu },
    Lowering { kind: "aten::celu", args: &[("self", R), ("alpha", Default::Float(1.0))], lower: elementwise::celu },
    Lowering { kind: "aten::softplus", args: &[("self", R), ("beta", Default::Float(1.0)), ("threshold", Default::Float(20.0))], lower: elementwise::softplus },
    Lowering { kind: "aten::mish", args: &[("self", R)], lower: elementwise::mish },
    Lowering { kind: "aten::relu6", args: &[("self", R)], lower: elementwise::relu6 },
    Lowering { kind: "aten::log_sigmoid", args: &[("self", R)], lower: elementwise::log_sigmoid },
    Lowering { kind: "aten::hardshrink", args: &[("self", R), ("lambd", Default::Float(0.5))], lower: elementwise::hardshrink },
    Lowering { kind: "aten::softshrink", args: &[("self", R), ("lambd", Default::Float(0.5))], lower: elementwise::softshrink },
    Lowering { kind: "aten::threshold", args: &[("self", R), ("threshold", R), ("value", R)], lower: elementwise::threshold },
    Lowering { kind: "aten::glu", args: &[("self", R), ("dim", Default::Int(-1))], lower: elementwise::glu },
    Lowering { kind: "aten::log_softmax", args: &[("self", R), ("dim", R), ("dtype", NONE)], lower: reduce::log_softmax },
    Lowering { kind: "aten::feature_dropout", args: &[("input", R), ("p", R), ("train", R)], lower: elementwise::identity },
    Lowering { kind: "aten::alpha_dropout", args: &[("input", R), ("p", R), ("train", R)], lower: elementwise::identity },
    Lowering { kind: "aten::feature_alpha_dropout", args: &[("input", R), ("p", R), ("train", R)], lower: elementwise::identity },
    Lowering { kind: "aten::reciprocal", args: &[("self", R)], lower: elementwise::reciprocal },
    Lowering { kind: "aten::square", args: &[("self", R)], lower: elementwise::square },
    Lowering { kind: "aten::log1p", args: &[("self", R)], lower: elementwise::log1p },
    Lowering { kind: "aten::expm1", args: &[("self", R)], lower: elementwise::expm1 },
    Lowering { kind: "aten::floor", args: &[("self", R)], lower: elementwise::floor },
    Lowering { kind: "aten::ceil", args: &[("self", R)], lower: elementwise::ceil },
    Lowering { kind: "aten::round", args: &[("self", R), ("decimals", Default::Int(0))], lower: elementwise::round },
    Lowering { kind: "aten::trunc", args: &[("self", R)], lower: elementwise::trunc },
    Lowering { kind: "aten::sign", args: &[("self", R)], lower: elementwise::sign },
    Lowering { kind: "aten::remainder", args: &[("self", R), ("other", R)], lower: elementwise::remainder },
    Lowering { kind: "aten::fmod", args: &[("self", R), ("other", R)], lower: elementwise::fmod },
    Lowering { kind: "aten::atan", args: &[("self", R)], lower: elementwise::atan },
    Lowering { kind: "aten::atan2", args: &[("self", R), ("other", R)], lower: elementwise::atan2 },
    Lowering { kind: "aten::maximum", args: &[("self", R), ("other", R)], lower: elementwise::maximum },
    Lowering { kind: "aten::minimum", args: &[("self", R), ("other", R)], lower: elementwise::minimum },
    Lowering { kind: "aten::logical_not", args: &[("self", R)], lower: elementwise::logical_not },
    Lowering { kind: "aten::logical_and", args: &[("self", R), ("other", R)], lower: elementwise::logical_and },
    Lowering { kind: "aten::logical_or", args: &[("self", R), ("other", R)], lower: elementwise::logical_or },
    Lowering { kind: "aten::logical_xor", args: &[("self", R), ("other", R)], lower: elementwise::logical_xor },
    Lowering { kind: "aten::bitwise_not", args: &[("self", R)], lower: elementwise::bitwise_not },
    Lowering { kind: "aten::bitwise_and", args: &[("self", R), ("other", R)], lower: elementwise::and },
    Lowering { kind: "aten::bitwise_or", args: &[("self", R), ("other", R)], lower: elementwise::or },
    Lowering { kind: "aten::bitwise_xor", args: &[("self", R), ("other", R)], lower: elementwise::xor },
    // reductions and vector norms
    Lowering { kind: "aten::sum", args: &[("self", R), ("dim", NONE), ("keepdim", Default::Bool(false)), ("dtype", NONE)], lower: reduce::sum },
    Lowering { kind: "aten::prod", args: &[("self", R), ("dim", NONE), ("keepdim", Default::Bool(false)), ("dtype", NONE)], lower: reduce::prod },
    Lowering { kind: "aten::any", args: &[("self", R), ("dim", NONE), ("keepdim", Default::Bool(false))], lower: reduce::any },
    Lowering { kind: "aten::all", args: &[("self", R), ("dim", NONE), ("keepdim", Default::Bool(false))], lower: reduce::all },
    Lowering { kind: "aten::amax", args: &[("self", R), ("dim", Default::Ints(&[])), ("keepdim", Default::Bool(false))], lower: reduce::amax },
    Lowering { kind: "aten::amin", args: &[("self", R), ("dim", Default::Ints(&[])), ("keepdim", Default::Bool(false))], lower: reduce::amin },
    Lowering { kind: "aten::max", args: &[("self", R), ("other", NONE), ("keepdim", Default::Bool(false))], lower: reduce::max },
    Lowering { kind: "aten::min", args: &[("self", R), ("other", NONE), ("keepdim", Default::Bool(false))], lower: reduce::min },
    Lowering { kind: "aten::var", args: &[("self", R), ("dim", NONE), ("unbiased", NONE), ("keepdim", Default::Bool(false)), ("correction", NONE)], lower: reduce::var },
    Lowering { kind: "aten::std", args: &[("self", R), ("dim", NONE), ("unbiased", NONE), ("keepdim", Default::Bool(false)), ("correction", NONE)], lower: reduce::std },
    Lowering { kind: "aten::logsumexp", args: &[("self", R), ("dim", R), ("keepdim", Default::Bool(false))], lower: reduce::logsumexp },
    Lowering { kind: "aten::linalg_vector_norm", args: &[("self", R), ("ord", Default::Float(2.0)), ("dim", NONE), ("keepdim", Default::Bool(false)), ("dtype", NONE)], lower: reduce::linalg_vector_norm },
    Lowering { kind: "aten::norm", args: &[("self", R), ("p", Default::Float(2.0)), ("dim", NONE), ("keepdim", Default::Bool(false)), ("dtype", NONE)], lower: reduce::norm },
    Lowering { kind: "aten::frobenius_norm", args: &[("self", R), ("dim", Default::Ints(&[])), ("keepdim", Default::Bool(false))], lower: reduce::frobenius_norm },
    // linear algebra, conv, pooling, normalization
    Lowering { kind: "aten::linear", args: &[("input", R), ("weight", R), ("bias", NONE)], lower: nn::linear },
    Lowering { kind: "aten::matmul", args: &[("self", R), ("other", R)], lower: nn::matmul },
    Lowering { kind: "aten::mm", args: &[("self", R), ("mat2", R)], lower: nn::matmul },
    Lowering { kind: "aten::bmm", args: &[("self", R), ("mat2", R)], lower: nn::matmul },
    Lowering {
        kind: "aten::native_layer_norm",
        args: &[("input", R), ("normalized_shape", R), ("weight", NONE), ("bias", NONE), ("eps", R)],
        lower: nn::native_layer_norm,
    },
    Lowering {
        kind: "aten::group_norm",
        args: &[("input", R), ("num_groups", R), ("weight", NONE), ("bias", NONE), ("eps", Default::Float(1e-5)), ("cudnn_enabled", Default::Bool(true))],
        lower: nn::group_norm,
    },
    Lowering {
        kind: "aten::instance_norm",
        args: &[("input", R), ("weight", NONE), ("bias", NONE), ("running_mean", NONE), ("running_var", NONE), ("use_input_stats", R), ("momentum", R), ("eps", R), ("cudnn_enabled", R)],
        lower: nn::instance_norm,
    },
    Lowering { kind: "aten::argmax", args: &[("self", R), ("dim", NONE), ("keepdim", Default::Bool(false))], lower: reduce::argmax },
    Lowering { kind: "aten::argmin", args: &[("self", R), ("dim", NONE), ("keepdim", Default::Bool(false))], lower: reduce::argmin },
    Lowering { kind: "aten::clone", args: &[("self", R), ("memory_format", NONE)], lower: elementwise::identity },
    Lowering { kind: "aten::_softmax", args: &[("self", R), ("dim", R), ("half_to_float", R)], lower: elementwise::softmax },
    Lowering { kind: "aten::_log_softmax", args: &[("self", R), ("dim", R), ("half_to_float", R)], lower: reduce::log_softmax },
    Lowering {
        kind: "aten::_convolution",
        args: &[("input", R), ("weight", R), ("bias", NONE), ("stride", R), ("padding", R), ("dilation", R), ("transposed", R), ("output_padding", R), ("groups", R), ("benchmark", NONE), ("deterministic", NONE), ("cudnn_enabled", NONE), ("allow_tf32", NONE)],
        lower: nn::convolution,
    },
    Lowering {
        kind: "aten::convolution",
        args: &[("input", R), ("weight", R), ("bias", NONE), ("stride", R), ("padding", R), ("dilation", R), ("transposed", R), ("output_padding", R), ("groups", R)],
        lower: nn::convolution,
    },
    Lowering { kind: "aten::conv1d", args: CONV_ND_ARGS, lower: nn::conv_nd },
    Lowering { kind: "aten::_convolution_mode", args: CONV_ND_ARGS, lower: nn::conv_nd },
    Lowering { kind: "aten::conv2d", args: CONV_ND_ARGS, lower: nn::conv_nd },
    Lowering { kind: "aten::conv3d", args: CONV_ND_ARGS, lower: nn::conv_nd },
    Lowering { kind: "aten::conv_transpose1d", args: CONV_TRANSPOSE_ARGS, lower: nn::conv_transpose_nd },
    Lowering { kind: "aten::conv_transpose2d", args: CONV_TRANSPOSE_ARGS, lower: nn::conv_transpose_nd },
    Lowering { kind: "aten::conv_transpose3d", args: CONV_TRANSPOSE_ARGS, lower: nn::conv_transpose_nd },
    Lowering {
        kind: "aten::batch_norm",
        args: &[("input", R), ("weight", R), ("bias", R), ("running_mean", R), ("running_var", R), ("training", R), ("momentum", R), ("eps", R), ("cudnn_enabled", R)],
        lower: nn::batch_norm,
    },
    Lowering {
        kind: "aten::layer_norm",
        args: &[("input", R), ("normalized_shape", R), ("weight", NONE), ("bias", NONE), ("eps", Default::Float(1e-5)), ("cudnn_enable", Default::Bool(true))],
        lower: nn::layer_norm,
    },
    Lowering {
        kind: "aten::max_pool2d",
        args: &[("self", R), ("kernel_size", R), ("stride", Default::Ints(&[])), ("padding", Default::Ints(&[0])), ("dilation", Default::Ints(&[1])), ("ceil_mode", Default::Bool(false))],
        lower: nn::max_pool2d,
    },
    Lowering {
        kind: "aten::avg_pool2d",
        args: &[("self", R), ("kernel_size", R), ("stride", Default::Ints(&[])), ("padding", Default::Ints(&[0])), ("ceil_mode", Default::Bool(false)), ("count_include_pad", Default::Bool(true)), ("divisor_override", NONE)],
        lower: nn::avg_pool2d,
    },
    Lowering { kind: "aten::adaptive_avg_pool2d", args: &[("self", R), ("output_size", R)], lower: nn::adaptive_avg_pool2d },
    Lowering { kind: "aten::embedding", args: &[("weight", R), ("indices", R), ("padding_idx", Default::Int(-1)), ("scale_grad_by_freq", Default::Bool(false)), ("sparse", Default::Bool(false))], lower: nn::embedding },
    Lowering { kind: "aten::mean", args: &[("self", R), ("dim", NONE), ("keepdim", Default::Bool(false)), ("dtype", NONE)], lower: nn::mean },
    Lowering { kind: "aten::abs", args: &[("self", R)], lower: elementwise::abs },
    Lowering { kind: "aten::log", args: &[("self", R)], lower: elementwise::log },
    Lowering { kind: "aten::floor_divide", args: &[("self", R), ("other", R)], lower: elementwise::floor_divide },
    Lowering { kind: "aten::where", args: &[("condition", R), ("self", R), ("other", R)], lower: elementwise::where_ },
    Lowering { kind: "aten::masked_fill", args: &[("self", R), ("mask", R), ("value", R)], lower: elementwise::masked_fill },
    Lowering { kind: "aten::eq", args: &[("self", R), ("other", R)], lower: elementwise::eq },
    Lowering { kind: "aten::ne", args: &[("self", R), ("other", R)], lower: elementwise::ne },
    Lowering { kind: "aten::lt", args: &[("self", R), ("other", R)], lower: elementwise::lt },
    Lowering { kind: "aten::le", args: &[("self", R), ("other", R)], lower: elementwise::le },
    Lowering { kind: "aten::gt", args: &[("self", R), ("other", R)], lower: elementwise::gt },
    Lowering { kind: "aten::ge", args: &[("self", R), ("other", R)], lower: elementwise::ge },
    Lowering { kind: "aten::sin", args: &[("self", R)], lower: elementwise::sin },
    Lowering { kind: "aten::cos", args: &[("self", R)], lower: elementwise::cos },
    Lowering { kind: "aten::__and__", args: &[("self", R), ("other", R)], lower: elementwise::and },
    Lowering { kind: "aten::__or__", args: &[("self", R), ("other", R)], lower: elementwise::or },
    Lowering { kind: "aten::type_as", args: &[("self", R), ("other", R)], lower: elementwise::type_as },
    // attention
    Lowering {
        kind: "aten::scaled_dot_product_attention",
        args: &[("query", R), ("key", R), ("value", R), ("attn_mask", NONE), ("dropout_p", Default::Float(0.0)), ("is_causal", Default::Bool(false)), ("scale", NONE), ("enable_gqa", Default::Bool(false))],
        lower: attention::sdpa,
    },
    Lowering {
        kind: "aten::_native_multi_head_attention",
        args: &[("query", R), ("key", R), ("value", R), ("embed_dim", R), ("num_head", R), ("qkv_weight", R), ("qkv_bias", R), ("proj_weight", R), ("proj_bias", R), ("mask", NONE), ("need_weights", Default::Bool(true)), ("average_attn_weights", Default::Bool(true)), ("mask_type", NONE)],
        lower: attention::native_mha,
    },
    Lowering { kind: "aten::addmm", args: &[("self", R), ("mat1", R), ("mat2", R), ("beta", Default::Int(1)), ("alpha", Default::Int(1))], lower: attention::addmm },
    // tensors made from shapes (constants at conversion)
    Lowering {
        kind: "aten::arange",
        args: &[("a", R), ("b", NONE), ("c", NONE), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE)],
        lower: shape::arange,
    },
    Lowering { kind: "aten::new_ones", args: &[("self", R), ("size", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE)], lower: shape::new_ones },
    Lowering {
        kind: "aten::full_like",
        args: &[("self", R), ("fill_value", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE), ("memory_format", NONE)],
        lower: shape::full_like,
    },
    // shapes
    Lowering { kind: "aten::expand", args: &[("self", R), ("size", R), ("implicit", Default::Bool(false))], lower: shape::expand },
    Lowering { kind: "aten::index", args: &[("self", R), ("indices", R)], lower: shape::index },
    Lowering { kind: "aten::gather", args: &[("self", R), ("dim", R), ("index", R), ("sparse_grad", Default::Bool(false))], lower: shape::gather },
    Lowering { kind: "aten::cumsum", args: &[("self", R), ("dim", R), ("dtype", NONE)], lower: shape::cumsum },
    Lowering { kind: "aten::split", args: &[("self", R), ("split_size", R), ("dim", Default::Int(0))], lower: shape::split },
    Lowering { kind: "aten::size", args: &[("self", R), ("dim", NONE)], lower: shape::size },
    Lowering { kind: "prim::NumToTensor", args: &[("a", R)], lower: shape::scalar_passthrough },
    Lowering { kind: "aten::Int", args: &[("a", R)], lower: shape::scalar_passthrough },
    Lowering { kind: "aten::view", args: &[("self", R), ("size", R)], lower: shape::reshape },
    Lowering { kind: "aten::reshape", args: &[("self", R), ("shape", R)], lower: shape::reshape },
    Lowering { kind: "aten::flatten", args: &[("self", R), ("start_dim", Default::Int(0)), ("end_dim", Default::Int(-1))], lower: shape::flatten },
    Lowering { kind: "aten::transpose", args: &[("self", R), ("dim0", R), ("dim1", R)], lower: shape::transpose },
    Lowering { kind: "aten::permute", args: &[("self", R), ("dims", R)], lower: shape::permute },
    Lowering { kind: "aten::unsqueeze", args: &[("self", R), ("dim", R)], lower: shape::unsqueeze },
    Lowering { kind: "aten::squeeze", args: &[("self", R), ("dim", NONE)], lower: shape::squeeze },
    Lowering { kind: "aten::cat", args: &[("tensors", R), ("dim", Default::Int(0))], lower: shape::cat },
    Lowering { kind: "aten::chunk", args: &[("self", R), ("chunks", R), ("dim", Default::Int(0))], lower: shape::chunk },
    Lowering { kind: "aten::slice", args: &[("self", R), ("dim", Default::Int(0)), ("start", NONE), ("end", NONE), ("step", Default::Int(1))], lower: shape::slice },
    Lowering { kind: "aten::select", args: &[("self", R), ("dim", R), ("index", R)], lower: shape::select },
    // padding
    Lowering { kind: "aten::pad", args: &[("self", R), ("pad", R), ("mode", NONE), ("value", NONE)], lower: shape::pad },
    Lowering { kind: "aten::constant_pad_nd", args: &[("self", R), ("pad", R), ("value", Default::Int(0))], lower: shape::constant_pad_nd },
    Lowering { kind: "aten::reflection_pad1d", args: &[("self", R), ("padding", R)], lower: shape::reflection_pad },
    Lowering { kind: "aten::reflection_pad2d", args: &[("self", R), ("padding", R)], lower: shape::reflection_pad },
    Lowering { kind: "aten::reflection_pad3d", args: &[("self", R), ("padding", R)], lower: shape::reflection_pad },
    Lowering { kind: "aten::replication_pad1d", args: &[("self", R), ("padding", R)], lower: shape::replication_pad },
    Lowering { kind: "aten::replication_pad2d", args: &[("self", R), ("padding", R)], lower: shape::replication_pad },
    Lowering { kind: "aten::replication_pad3d", args: &[("self", R), ("padding", R)], lower: shape::replication_pad },
    Lowering { kind: "aten::_pad_circular", args: &[("self", R), ("pad", R)], lower: shape::circular_pad },
    // stacking and splitting
    Lowering { kind: "aten::stack", args: &[("tensors", R), ("dim", Default::Int(0))], lower: shape::stack },
    Lowering { kind: "aten::hstack", args: &[("tensors", R)], lower: shape::hstack },
    Lowering { kind: "aten::vstack", args: &[("tensors", R)], lower: shape::vstack },
    Lowering { kind: "aten::unsafe_chunk", args: &[("self", R), ("chunks", R), ("dim", Default::Int(0))], lower: shape::chunk },
    Lowering { kind: "aten::unsafe_split", args: &[("self", R), ("split_size", R), ("dim", Default::Int(0))], lower: shape::split },
    Lowering { kind: "aten::split_with_sizes", args: &[("self", R), ("split_sizes", R), ("dim", Default::Int(0))], lower: shape::split },
    Lowering { kind: "aten::unsafe_split_with_sizes", args: &[("self", R), ("split_sizes", R), ("dim", Default::Int(0))], lower: shape::split },
    Lowering { kind: "aten::unbind", args: &[("self", R), ("dim", Default::Int(0))], lower: shape::unbind },
    Lowering { kind: "aten::tensor_split", args: &[("self", R), ("indices_or_sections", R), ("dim", Default::Int(0))], lower: shape::tensor_split },
    // constructors (constants at conversion) and shape utilities
    Lowering { kind: "aten::zeros", args: &[("size", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE)], lower: shape::zeros },
    Lowering { kind: "aten::empty", args: &[("size", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE), ("memory_format", NONE)], lower: shape::zeros },
    Lowering { kind: "aten::ones", args: &[("size", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE)], lower: shape::ones },
    Lowering { kind: "aten::full", args: &[("size", R), ("fill_value", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE)], lower: shape::full },
    Lowering { kind: "aten::zeros_like", args: &[("self", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE), ("memory_format", NONE)], lower: shape::zeros_like },
    Lowering { kind: "aten::empty_like", args: &[("self", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE), ("memory_format", NONE)], lower: shape::zeros_like },
    Lowering { kind: "aten::ones_like", args: &[("self", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE), ("memory_format", NONE)], lower: shape::ones_like },
    Lowering { kind: "aten::zero", args: &[("self", R)], lower: shape::zero },
    Lowering { kind: "aten::fill", args: &[("self", R), ("value", R)], lower: shape::fill },
    Lowering { kind: "aten::new_zeros", args: &[("self", R), ("size", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE)], lower: shape::new_zeros },
    Lowering { kind: "aten::new_empty", args: &[("self", R), ("size", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE)], lower: shape::new_zeros },
    Lowering { kind: "aten::new_full", args: &[("self", R), ("size", R), ("fill_value", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE)], lower: shape::new_full },
    Lowering { kind: "aten::scalar_tensor", args: &[("s", R), ("dtype", NONE), ("layout", NONE), ("device", NONE), ("pin_memory", NONE)], lower: shape::scalar_tensor },
    Lowering { kind: "aten::expand_as", args: &[("self", R), ("other", R)], lower: shape::expand_as },
    Lowering { kind: "aten::repeat", args: &[("self", R), ("repeats", R)], lower: shape::repeat },
    Lowering { kind: "aten::repeat_interleave", args: &[("self", R), ("repeats", R), ("dim", NONE), ("output_size", NONE)], lower: shape::repeat_interleave },
    Lowering { kind: "aten::flip", args: &[("self", R), ("dims", R)], lower: shape::flip },
    Lowering { kind: "aten::roll", args: &[("self", R), ("shifts", R), ("dims", Default::Ints(&[]))], lower: shape::roll },
    Lowering { kind: "aten::narrow", args: &[("self", R), ("dim", R), ("start", R), ("length", R)], lower: shape::narrow },
    Lowering { kind: "aten::diff", args: &[("self", R), ("n", Default::Int(1)), ("dim", Default::Int(-1)), ("prepend", NONE), ("append", NONE)], lower: shape::diff },
    Lowering { kind: "aten::unflatten", args: &[("self", R), ("dim", R), ("sizes", R)], lower: shape::unflatten },
    Lowering { kind: "aten::movedim", args: &[("self", R), ("source", R), ("destination", R)], lower: shape::movedim },
    Lowering { kind: "aten::swapaxes", args: &[("self", R), ("axis0", R), ("axis1", R)], lower: shape::transpose },
    Lowering { kind: "aten::swapdims", args: &[("self", R), ("dim0", R), ("dim1", R)], lower: shape::transpose },
    Lowering { kind: "aten::t", args: &[("self", R)], lower: shape::t },
    Lowering { kind: "aten::mT", args: &[("self", R)], lower: shape::mt },
    Lowering { kind: "aten::numel", args: &[("self", R)], lower: shape::numel },
    Lowering { kind: "aten::dim", args: &[("self", R)], lower: shape::rank },
    Lowering { kind: "aten::index_put", args: &[("self", R), ("indices", R), ("values", R), ("accumulate", Default::Bool(false))], lower: shape::index_put },
    Lowering {
        kind: "aten::embedding_bag",
        args: &[("weight", R), ("indices", R), ("offsets", R), ("scale_grad_by_freq", Default::Bool(false)), ("mode", Default::Int(0)), ("sparse", Default::Bool(false)), ("per_sample_weights", NONE), ("include_last_offset", Default::Bool(false)), ("padding_idx", NONE)],
        lower: shape::embedding_bag,
    },
    Lowering {
        kind: "aten::_embedding_bag",
        args: &[("weight", R), ("indices", R), ("offsets", R), ("scale_grad_by_freq", Default::Bool(false)), ("mode", Default::Int(0)), ("sparse", Default::Bool(false)), ("per_sample_weights", NONE), ("include_last_offset", Default::Bool(false)), ("padding_idx", Default::Int(-1))],
        lower: shape::embedding_bag,
    },
    Lowering { kind: "aten::index_select", args: &[("self", R), ("dim", R), ("index", R)], lower: shape::index_select },
    Lowering { kind: "aten::scatter", args: &[("self", R), ("dim", R), ("index", R), ("src", R), ("reduce", NONE)], lower: shape::scatter },
    Lowering { kind: "aten::index_copy", args: &[("self", R), ("dim", R), ("index", R), ("source", R)], lower: shape::index_copy },
    Lowering { kind: "aten::copy", args: &[("self", R), ("src", R), ("non_blocking", Default::Bool(false))], lower: shape::copy },
    Lowering { kind: "aten::scatter_add", args: &[("self", R), ("dim", R), ("index", R), ("src", R)], lower: shape::scatter_add },
    // resampling
    Lowering { kind: "aten::upsample_nearest2d", args: &[("input", R), ("output_size", R), ("a", NONE), ("b", NONE)], lower: resample::upsample_nearest2d },
    Lowering { kind: "aten::_upsample_nearest_exact2d", args: &[("input", R), ("output_size", R), ("a", NONE), ("b", NONE)], lower: resample::upsample_nearest_exact2d },
    Lowering {
        kind: "aten::upsample_bilinear2d",
        args: &[("input", R), ("output_size", R), ("align_corners", R), ("a", NONE), ("b", NONE)],
        lower: resample::upsample_bilinear2d,
    },
    Lowering { kind: "aten::pixel_shuffle", args: &[("self", R), ("upscale_factor", R)], lower: resample::pixel_shuffle },
    Lowering { kind: "aten::pixel_unshuffle", args: &[("self", R), ("downscale_factor", R)], lower: resample::pixel_unshuffle },
];

/// The table entry for a call name, if we lower it. An in-place variant (`aten::add_`) lowers
/// like its functional form; the inliner rebinds the mutated name to the result.
pub fn lookup(kind: &str) -> Option<&'static Lowering> {
    LOWERINGS.iter().find(|l| l.kind == kind).or_else(|| {
        let functional = kind.strip_suffix('_')?;
        LOWERINGS.iter().find(|l| l.kind == functional)
    })
}

/// Why we do not lower the torch op `op` (bare aten name, or `ns::op` for other namespaces),
/// by the kind of op it is; "not lowered yet" when nothing rules it out. The README's op table
/// (generated by tests/op_table.rs from [`LOWERINGS`] and `targets.txt`) gives this reason for
/// every op of coremltools' and Core ATen's lists that we refuse.
pub fn refusal(op: &str) -> &'static str {
    let has = |parts: &[&str]| parts.iter().any(|p| op.contains(p));
    if has(&["quantiz", "int4pack", "qparams", "embedding_byte", "embedding_4bit", "dequantize"]) || op.starts_with("quant") {
        "quantized torch tensors: convert the float model"
    } else if has(&["backward"]) {
        "training only (gradients)"
    } else if matches!(op, "rand" | "randn" | "randint" | "rand_like" | "randn_like" | "randint_like" | "bernoulli" | "normal" | "uniform" | "multinomial" | "randperm" | "native_dropout" | "poisson" | "exponential" | "geometric") {
        "random sampling: an inference trace has none"
    } else if has(&["fft", "stft", "complex", "view_as_real", "view_as_complex", "polar"]) || matches!(op, "real" | "imag" | "angle") {
        "complex numbers: Core ML has no complex type"
    } else if matches!(op, "nonzero" | "nonzero_numpy" | "argwhere" | "unique" | "_unique2" | "unique_dim" | "unique_consecutive" | "masked_select" | "torchvision::nms") {
        "output shape depends on the values; Core ML needs it known when converting"
    } else if op.starts_with("sym_") || op == "_local_scalar_dense" {
        "symbolic shape arithmetic: dynamic shapes are not supported yet"
    } else if op.starts_with("dim_order_ops::") {
        "ExecuTorch's dim-order IR, not a torch.export program op"
    } else if matches!(op, "_if" | "_loop" | "if" | "loop") {
        "scripted control flow: torch.jit.trace the model instead"
    } else if matches!(op, "as_strided" | "as_strided_copy" | "as_strided_scatter") {
        "arbitrary memory strides: no MIL equivalent"
    } else if op.starts_with("coreml::") {
        "coremltools' own custom op"
    } else {
        NOT_YET
    }
}

/// [`refusal`]'s reason for an op nothing rules out: we could lower it and have not yet.
pub const NOT_YET: &str = "not lowered yet";

/// Lowering state: the Builder, the compute dtype (fp16 or fp32), and the name hint for the
/// op being lowered (its TorchScript output name).
pub struct Lower {
    pub b: Builder,
    pub dtype: DType,
    pub hint: String,
    /// What the lowering did to keep fp16 from losing values (a layer rescaled or kept in
    /// fp32), one line each; `convert` reports them.
    pub precision_notes: Vec<String>,
    /// Tensors a constructor (`zeros`, `empty`, `full`, …) just made: the only ones `fill_` and
    /// `zero_` may overwrite, since the inliner rebinds an in-place result to its name but
    /// cannot carry a write through a view (`x[:, 1].fill_(0)`) back to the viewed tensor.
    pub fresh: std::collections::HashSet<Var>,
}

impl Lower {
    /// Puts `args` (positional, then keywords) into schema order with defaults filled in.
    pub fn normalize(l: &Lowering, args: Vec<Value>, kwargs: Vec<(String, Value)>) -> Result<Vec<Value>, String> {
        if args.len() > l.args.len() {
            return Err(format!("{} takes {} arguments, got {}", l.kind, l.args.len(), args.len()));
        }
        let mut out: Vec<Option<Value>> = args.into_iter().map(Some).collect();
        out.resize(l.args.len(), None);
        for (k, v) in kwargs {
            let i = l.args.iter().position(|(n, _)| *n == k).ok_or_else(|| format!("{} has no argument `{}`", l.kind, crate::files::shown(&k)))?;
            out[i] = Some(v);
        }
        out.into_iter()
            .zip(l.args)
            .map(|(v, (name, d))| v.or_else(|| d.value()).ok_or_else(|| format!("{} needs argument `{name}`", l.kind)))
            .collect()
    }

    /// The MIL tensor behind `v`, or an error naming what it is instead.
    pub fn tensor(&self, v: &Value) -> Result<Var, String> {
        match v {
            Value::Tensor(t) => Ok(t.clone()),
            other => Err(format!("expected a tensor, got {}", other.describe())),
        }
    }

    /// The type of a tensor value.
    pub fn ty(&self, v: &Var) -> Result<TensorType, String> {
        self.b.ty(v).cloned().ok_or_else(|| format!("unknown value {}", v.0))
    }

    /// The static shape of a tensor value.
    pub fn shape(&self, v: &Var) -> Result<Vec<usize>, String> {
        self.ty(v)?.fixed_shape().ok_or_else(|| format!("{} has a dynamic shape", v.0))
    }

    /// A scalar const of `dtype` (fp16/fp32/int32) holding `x`.
    pub fn scalar(&mut self, dtype: DType, x: f64) -> Var {
        let t = match dtype {
            DType::I32 => Tensor::i32_scalar(x as i32),
            DType::F16 => Tensor::from_f32_as_f16(&[], &[x as f32]),
            _ => Tensor::from_f32(&[], &[x as f32]),
        };
        let hint = format!("{}_scalar", self.hint);
        self.b.konst(&hint, t)
    }

    /// Starts an op named after the current hint.
    pub fn op(&mut self, def: &'static OpDef) -> crate::mil::builder::OpBuilder<'_> {
        let hint = self.hint.clone();
        self.b.op(def, &hint)
    }

    /// A weight const, cast to the compute dtype (fp32 → fp16 when converting at fp16).
    pub fn weight(&mut self, name: &str, t: &Tensor) -> Result<Var, String> {
        let t = self.cast_const(t)?;
        Ok(self.b.konst(name, t))
    }

    /// `t` in the compute dtype when it is a float tensor; other dtypes unchanged.
    pub fn cast_const(&self, t: &Tensor) -> Result<Tensor, String> {
        if !t.dtype().is_float() || t.dtype() == self.dtype {
            return Ok(t.clone());
        }
        if t.dtype() == DType::F32 && self.dtype == DType::F16 {
            return Ok(Tensor::f16_of(t));
        }
        let v = t.to_f32_vec().ok_or_else(|| format!("cannot read {} values", t.dtype()))?;
        Ok(match self.dtype {
            DType::F16 => Tensor::from_f32_as_f16(t.shape(), &v),
            _ => Tensor::from_f32(t.shape(), &v),
        })
    }
}

/// An integer argument.
pub fn int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(i64::from(*b)),
        other => Err(format!("expected an int, got {}", other.describe())),
    }
}

/// A float argument (ints and bools widen, as Python's do).
pub fn float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Float(x) => Ok(*x),
        Value::Int(i) => Ok(*i as f64),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => Err(format!("expected a number, got {}", other.describe())),
    }
}

/// A list-of-ints argument (a lone int counts as a one-element list).
pub fn ints(v: &Value) -> Result<Vec<i64>, String> {
    match v {
        Value::List(items) | Value::Tuple(items) => items.iter().map(int).collect(),
        Value::Int(i) => Ok(vec![*i]),
        other => Err(format!("expected a list of ints, got {}", other.describe())),
    }
}

/// Resolves a possibly negative dimension against `rank`.
pub fn dim(d: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if d < 0 { d + r } else { d };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("dimension {d} out of range for rank {rank}"))
    }
}

/// `v` as i32 (MIL's index type), or an error when it does not fit.
pub fn i32_of(v: i64) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{v} does not fit in int32"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_table_has_no_duplicates() {
        for (i, a) in LOWERINGS.iter().enumerate() {
            assert!(LOWERINGS[i + 1..].iter().all(|b| b.kind != a.kind), "{} listed twice", a.kind);
        }
    }

    #[test]
    fn normalize_fills_defaults_and_keywords() {
        assert_eq!(lookup("aten::add_").unwrap().kind, "aten::add");
        assert!(lookup("aten::nope_").is_none());
        let l = lookup("aten::softmax").unwrap();
        let v = Lower::normalize(l, vec![Value::Int(7)], vec![("dim".into(), Value::Int(-1))]).unwrap();
        assert_eq!(v, vec![Value::Int(7), Value::Int(-1), Value::None]);
        assert!(Lower::normalize(l, vec![], vec![]).is_err());
        assert!(Lower::normalize(l, vec![], vec![("nope".into(), Value::None)]).is_err());
    }
}
