//! Elementwise ops: binary arithmetic, comparisons and logic (numpy broadcasting), unary math and
//! activations, `clip`, `cast`, `select`, and `softmax`. Semantics: coremltools
//! `defs/iOS15/elementwise_binary.py`, `elementwise_unary.py`, `activation.py` (their
//! `value_inference` methods are the spec the kernels follow; numbers are checked against torch
//! by tests/interp.rs). Transcendental functions are evaluated in f64 and rounded to f32.

use super::{
    broadcast, Array, Data, EvalArgs, EvalError, OpArgs, OpDef, Param, TypeError, BOOL, FLOAT, INT32, NUMERIC, STRING,
};
use crate::mil::types::{DType, TensorType};
use crate::mil::Opset;
use crate::numeric;

type Eval = Result<Vec<Array>, EvalError>;

const BINARY: &[Param] = &[Param::t("x", NUMERIC), Param::t("y", NUMERIC)];

fn infer_binary(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (x, y) = (a.tensor("x")?, a.tensor("y")?);
    Ok(vec![TensorType { dtype: x.dtype, shape: broadcast(a, &x.shape, &y.shape)? }])
}

fn infer_compare(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (x, y) = (a.tensor("x")?, a.tensor("y")?);
    Ok(vec![TensorType { dtype: DType::Bool, shape: broadcast(a, &x.shape, &y.shape)? }])
}

fn infer_same(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    Ok(vec![a.tensor("x")?.clone()])
}

/// Broadcast `x ∘ y` for the arithmetic ops: `f` on float storage, `g` on int32.
fn arith(a: &EvalArgs, f: fn(f32, f32) -> f32, g: fn(i32, i32) -> i32) -> Eval {
    let (x, y) = (a.array("x")?, a.array("y")?);
    let out = match (&x.data, &y.data) {
        (Data::F32(p), Data::F32(q)) => {
            numeric::broadcast::binary(p, &x.shape, q, &y.shape, f).map(|(v, s)| Array::float(x.dtype, s, v))
        }
        (Data::I32(p), Data::I32(q)) => {
            numeric::broadcast::binary(p, &x.shape, q, &y.shape, g).map(|(v, s)| Array::int(s, v))
        }
        _ => return Err(a.invalid(format!("x is {} but y is {}", x.dtype, y.dtype))),
    };
    out.map(|o| vec![o]).ok_or_else(|| a.shape_error("shapes do not broadcast"))
}

/// Broadcast comparison giving bools.
fn compare(a: &EvalArgs, f: fn(f32, f32) -> bool, g: fn(i32, i32) -> bool) -> Eval {
    let (x, y) = (a.array("x")?, a.array("y")?);
    let out = match (&x.data, &y.data) {
        (Data::F32(p), Data::F32(q)) => numeric::broadcast::binary(p, &x.shape, q, &y.shape, f),
        (Data::I32(p), Data::I32(q)) => numeric::broadcast::binary(p, &x.shape, q, &y.shape, g),
        (Data::Bool(p), Data::Bool(q)) => {
            numeric::broadcast::binary(p, &x.shape, q, &y.shape, |u, v| g(i32::from(u), i32::from(v)))
        }
        _ => return Err(a.invalid(format!("x is {} but y is {}", x.dtype, y.dtype))),
    };
    out.map(|(v, s)| vec![Array::bools(s, v)]).ok_or_else(|| a.shape_error("shapes do not broadcast"))
}

/// Broadcast logic on bools.
fn logical(a: &EvalArgs, f: fn(bool, bool) -> bool) -> Eval {
    let (x, y) = (a.array("x")?, a.array("y")?);
    let (Data::Bool(p), Data::Bool(q)) = (&x.data, &y.data) else {
        return Err(a.invalid(format!("x is {} and y is {}, both must be bool", x.dtype, y.dtype)));
    };
    let (v, s) = numeric::broadcast::binary(p, &x.shape, q, &y.shape, f)
        .ok_or_else(|| a.shape_error("shapes do not broadcast"))?;
    Ok(vec![Array::bools(s, v)])
}

/// `f` on every element of the float parameter `x` (large arrays split over the cores).
fn map_float(a: &EvalArgs, f: impl Fn(f32) -> f32 + Sync) -> Eval {
    let x = a.array("x")?;
    let v = a.floats("x")?;
    let mut out = vec![0.0; v.len()];
    numeric::par::for_rows(&mut out, 1, v.len(), |first, part| {
        for (o, &e) in part.iter_mut().zip(&v[first..]) {
            *o = f(e);
        }
    });
    Ok(vec![Array::float(x.dtype, x.shape.clone(), out)])
}

/// `f` on float storage, `g` on int32, for the unary ops that take both.
fn map_numeric(a: &EvalArgs, f: fn(f32) -> f32, g: fn(i32) -> i32) -> Eval {
    let x = a.array("x")?;
    match &x.data {
        Data::I32(v) => Ok(vec![Array::int(x.shape.clone(), v.iter().map(|&e| g(e)).collect())]),
        _ => map_float(a, f),
    }
}

/// A float function evaluated in f64 and rounded once to f32.
fn wide(v: f32, f: fn(f64) -> f64) -> f32 {
    f(f64::from(v)) as f32
}

/// NaN-propagating max/min, as numpy `maximum`/`minimum` and torch do.
fn nan_max(x: f32, y: f32) -> f32 {
    if x.is_nan() || y.is_nan() {
        f32::NAN
    } else {
        x.max(y)
    }
}
fn nan_min(x: f32, y: f32) -> f32 {
    if x.is_nan() || y.is_nan() {
        f32::NAN
    } else {
        x.min(y)
    }
}

/// Python `//` on int32 (rounds toward −∞); division by zero gives 0 rather than trapping.
fn floor_div_i32(x: i32, y: i32) -> i32 {
    if y == 0 {
        return 0;
    }
    let q = x.wrapping_div(y);
    if x.wrapping_rem(y) != 0 && ((x < 0) != (y < 0)) {
        q - 1
    } else {
        q
    }
}

fn eval_add(a: &EvalArgs) -> Eval {
    arith(a, |x, y| x + y, i32::wrapping_add)
}
fn eval_sub(a: &EvalArgs) -> Eval {
    arith(a, |x, y| x - y, i32::wrapping_sub)
}
fn eval_mul(a: &EvalArgs) -> Eval {
    arith(a, |x, y| x * y, i32::wrapping_mul)
}
/// int32 `real_div` truncates the true quotient toward zero (numpy's `astype(int32)` of
/// `x / y`); a zero divisor gives 0.
fn eval_real_div(a: &EvalArgs) -> Eval {
    arith(a, |x, y| x / y, |x, y| if y == 0 { 0 } else { (f64::from(x) / f64::from(y)) as i32 })
}
/// int32 `pow` with a negative exponent gives 0 (numpy raises; Core ML leaves it undefined).
fn eval_pow(a: &EvalArgs) -> Eval {
    arith(a, |x, y| wide2(x, y, f64::powf), |x, y| u32::try_from(y).map_or(0, |e| x.wrapping_pow(e)))
}
fn wide2(x: f32, y: f32, f: fn(f64, f64) -> f64) -> f32 {
    f(f64::from(x), f64::from(y)) as f32
}
fn eval_maximum(a: &EvalArgs) -> Eval {
    arith(a, nan_max, i32::max)
}
fn eval_minimum(a: &EvalArgs) -> Eval {
    arith(a, nan_min, i32::min)
}
fn eval_floor_div(a: &EvalArgs) -> Eval {
    arith(a, |x, y| (x / y).floor(), floor_div_i32)
}
fn eval_equal(a: &EvalArgs) -> Eval {
    compare(a, |x, y| x == y, |x, y| x == y)
}
fn eval_not_equal(a: &EvalArgs) -> Eval {
    compare(a, |x, y| x != y, |x, y| x != y)
}
fn eval_less(a: &EvalArgs) -> Eval {
    compare(a, |x, y| x < y, |x, y| x < y)
}
fn eval_less_equal(a: &EvalArgs) -> Eval {
    compare(a, |x, y| x <= y, |x, y| x <= y)
}
fn eval_greater(a: &EvalArgs) -> Eval {
    compare(a, |x, y| x > y, |x, y| x > y)
}
fn eval_greater_equal(a: &EvalArgs) -> Eval {
    compare(a, |x, y| x >= y, |x, y| x >= y)
}
fn eval_logical_xor(a: &EvalArgs) -> Eval {
    logical(a, |x, y| x != y)
}
fn eval_logical_and(a: &EvalArgs) -> Eval {
    logical(a, |x, y| x && y)
}
fn eval_logical_or(a: &EvalArgs) -> Eval {
    logical(a, |x, y| x || y)
}

/// `add`: x + y, broadcast.
pub const ADD: OpDef = OpDef { name: "add", since: Opset::Ios15, params: BINARY, infer: infer_binary, eval: eval_add };
/// `sub`: x − y, broadcast.
pub const SUB: OpDef = OpDef { name: "sub", since: Opset::Ios15, params: BINARY, infer: infer_binary, eval: eval_sub };
/// `mul`: x · y, broadcast.
pub const MUL: OpDef = OpDef { name: "mul", since: Opset::Ios15, params: BINARY, infer: infer_binary, eval: eval_mul };
/// `real_div`: x / y, broadcast.
pub const REAL_DIV: OpDef =
    OpDef { name: "real_div", since: Opset::Ios15, params: BINARY, infer: infer_binary, eval: eval_real_div };
/// `floor_div`: ⌊x / y⌋, broadcast (Python `//`).
pub const FLOOR_DIV: OpDef =
    OpDef { name: "floor_div", since: Opset::Ios15, params: BINARY, infer: infer_binary, eval: eval_floor_div };
/// `pow`: x ** y, broadcast.
pub const POW: OpDef = OpDef { name: "pow", since: Opset::Ios15, params: BINARY, infer: infer_binary, eval: eval_pow };
/// `maximum`: elementwise max, broadcast.
pub const MAXIMUM: OpDef =
    OpDef { name: "maximum", since: Opset::Ios15, params: BINARY, infer: infer_binary, eval: eval_maximum };
/// `minimum`: elementwise min, broadcast.
pub const MINIMUM: OpDef =
    OpDef { name: "minimum", since: Opset::Ios15, params: BINARY, infer: infer_binary, eval: eval_minimum };
/// `equal`: x == y as bool, broadcast.
pub const EQUAL: OpDef =
    OpDef { name: "equal", since: Opset::Ios15, params: BINARY, infer: infer_compare, eval: eval_equal };
/// `not_equal`: x != y as bool, broadcast.
pub const NOT_EQUAL: OpDef =
    OpDef { name: "not_equal", since: Opset::Ios15, params: BINARY, infer: infer_compare, eval: eval_not_equal };
/// `less`: x < y as bool, broadcast.
pub const LESS: OpDef =
    OpDef { name: "less", since: Opset::Ios15, params: BINARY, infer: infer_compare, eval: eval_less };
/// `less_equal`: x ≤ y as bool, broadcast.
pub const LESS_EQUAL: OpDef =
    OpDef { name: "less_equal", since: Opset::Ios15, params: BINARY, infer: infer_compare, eval: eval_less_equal };
/// `greater`: x > y as bool, broadcast.
pub const GREATER: OpDef =
    OpDef { name: "greater", since: Opset::Ios15, params: BINARY, infer: infer_compare, eval: eval_greater };
/// `greater_equal`: x ≥ y as bool, broadcast.
pub const GREATER_EQUAL: OpDef = OpDef {
    name: "greater_equal",
    since: Opset::Ios15,
    params: BINARY,
    infer: infer_compare,
    eval: eval_greater_equal,
};

const LOGICAL: &[Param] = &[Param::t("x", BOOL), Param::t("y", BOOL)];

/// `logical_and`: x ∧ y on bools, broadcast.
pub const LOGICAL_AND: OpDef =
    OpDef { name: "logical_and", since: Opset::Ios15, params: LOGICAL, infer: infer_compare, eval: eval_logical_and };
/// `logical_or`: x ∨ y on bools, broadcast.
pub const LOGICAL_OR: OpDef =
    OpDef { name: "logical_or", since: Opset::Ios15, params: LOGICAL, infer: infer_compare, eval: eval_logical_or };

/// `logical_xor`: x ⊕ y on bools, broadcast.
pub const LOGICAL_XOR: OpDef =
    OpDef { name: "logical_xor", since: Opset::Ios15, params: LOGICAL, infer: infer_compare, eval: eval_logical_xor };

/// `logical_not`: ¬x on bools.
pub const LOGICAL_NOT: OpDef = OpDef {
    name: "logical_not",
    since: Opset::Ios15,
    params: &[Param::new("x", BOOL)],
    infer: infer_same,
    eval: eval_logical_not,
};

fn eval_logical_not(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let Data::Bool(v) = &x.data else { return Err(a.invalid(format!("x is {}, must be bool", x.dtype))) };
    Ok(vec![Array::bools(x.shape.clone(), v.iter().map(|b| !b).collect())])
}

const UNARY_FLOAT: &[Param] = &[Param::new("x", FLOAT)];
const UNARY_NUMERIC: &[Param] = &[Param::new("x", NUMERIC)];

fn eval_sqrt(a: &EvalArgs) -> Eval {
    map_float(a, f32::sqrt)
}
fn eval_exp(a: &EvalArgs) -> Eval {
    map_float(a, |v| wide(v, f64::exp))
}
fn eval_erf(a: &EvalArgs) -> Eval {
    map_float(a, |v| wide(v, libm::erf))
}
fn eval_tanh(a: &EvalArgs) -> Eval {
    map_float(a, |v| wide(v, f64::tanh))
}
fn sigmoid(v: f32) -> f32 {
    wide(v, |x| 1.0 / (1.0 + (-x).exp()))
}
fn eval_sigmoid(a: &EvalArgs) -> Eval {
    map_float(a, sigmoid)
}
fn eval_relu(a: &EvalArgs) -> Eval {
    map_float(a, |v| if v > 0.0 || v.is_nan() { v } else { 0.0 })
}
fn eval_silu(a: &EvalArgs) -> Eval {
    map_float(a, |v| wide(v, |x| x / (1.0 + (-x).exp())))
}
fn eval_sin(a: &EvalArgs) -> Eval {
    map_float(a, |v| wide(v, f64::sin))
}
fn eval_cos(a: &EvalArgs) -> Eval {
    map_float(a, |v| wide(v, f64::cos))
}
fn eval_floor(a: &EvalArgs) -> Eval {
    map_float(a, f32::floor)
}
fn eval_atan(a: &EvalArgs) -> Eval {
    map_float(a, |v| wide(v, f64::atan))
}
fn eval_ceil(a: &EvalArgs) -> Eval {
    map_float(a, f32::ceil)
}
/// numpy `round`: halves go to the even neighbour (0.5 → 0, 1.5 → 2).
fn eval_round(a: &EvalArgs) -> Eval {
    map_float(a, f32::round_ties_even)
}
fn eval_softplus(a: &EvalArgs) -> Eval {
    map_float(a, |v| wide(v, |x| (-x.abs()).exp().ln_1p() + x.max(0.0)))
}
fn eval_abs(a: &EvalArgs) -> Eval {
    map_numeric(a, f32::abs, i32::wrapping_abs)
}
fn eval_square(a: &EvalArgs) -> Eval {
    map_numeric(a, |v| v * v, |v| v.wrapping_mul(v))
}
/// numpy `sign`: −1, 0 or 1 (NaN stays NaN).
fn eval_sign(a: &EvalArgs) -> Eval {
    map_numeric(
        a,
        |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        },
        i32::signum,
    )
}

/// `sqrt`: elementwise square root.
pub const SQRT: OpDef =
    OpDef { name: "sqrt", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_sqrt };
/// `exp`: elementwise e^x.
pub const EXP: OpDef =
    OpDef { name: "exp", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_exp };
/// `erf`: the error function (exact GELU lowers through it).
pub const ERF: OpDef =
    OpDef { name: "erf", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_erf };
/// `tanh`: hyperbolic tangent.
pub const TANH: OpDef =
    OpDef { name: "tanh", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_tanh };
/// `sigmoid`: 1 / (1 + e^−x).
pub const SIGMOID: OpDef =
    OpDef { name: "sigmoid", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_sigmoid };
/// `relu`: max(x, 0).
pub const RELU: OpDef =
    OpDef { name: "relu", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_relu };
/// `silu`: x · sigmoid(x).
pub const SILU: OpDef =
    OpDef { name: "silu", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_silu };
/// `sin`: sine (radians).
pub const SIN: OpDef =
    OpDef { name: "sin", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_sin };
/// `cos`: cosine (radians).
pub const COS: OpDef =
    OpDef { name: "cos", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_cos };
/// `floor`: largest integer ≤ x.
pub const FLOOR: OpDef =
    OpDef { name: "floor", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_floor };
/// `atan`: inverse tangent, in (−π/2, π/2).
pub const ATAN: OpDef =
    OpDef { name: "atan", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_atan };
/// `ceil`: smallest integer ≥ x.
pub const CEIL: OpDef =
    OpDef { name: "ceil", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_ceil };
/// `round`: nearest integer, halves to even.
pub const ROUND: OpDef =
    OpDef { name: "round", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_round };
/// `softplus`: ln(1 + e^x), computed stably.
pub const SOFTPLUS: OpDef =
    OpDef { name: "softplus", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same, eval: eval_softplus };

/// `abs`: |x| (also on int32).
pub const ABS: OpDef =
    OpDef { name: "abs", since: Opset::Ios15, params: UNARY_NUMERIC, infer: infer_same, eval: eval_abs };
/// `square`: x² (also on int32).
pub const SQUARE: OpDef =
    OpDef { name: "square", since: Opset::Ios15, params: UNARY_NUMERIC, infer: infer_same, eval: eval_square };
/// `sign`: −1, 0 or 1 (also on int32).
pub const SIGN: OpDef =
    OpDef { name: "sign", since: Opset::Ios15, params: UNARY_NUMERIC, infer: infer_same, eval: eval_sign };

/// `rsqrt` default epsilon (coremltools `rsqrt.default_inputs`).
pub const RSQRT_EPSILON: f32 = 1e-12;
/// `log` default epsilon (coremltools `log.default_inputs`): the smallest f32 subnormal, so
/// `log(0)` is finite.
pub const LOG_EPSILON: f32 = 1e-45;

/// `rsqrt`: 1 / sqrt(x + epsilon); epsilon defaults to 1e-12.
pub const RSQRT: OpDef = OpDef {
    name: "rsqrt",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("epsilon", FLOAT).konst().optional()],
    infer: infer_same,
    eval: eval_rsqrt,
};

fn eval_rsqrt(a: &EvalArgs) -> Eval {
    let eps = f64::from(a.float_or("epsilon", RSQRT_EPSILON)?);
    map_float(a, |v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
}

/// `log`: ln(x + epsilon); epsilon defaults to 1e-45.
pub const LOG: OpDef = OpDef {
    name: "log",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("epsilon", FLOAT).konst().optional()],
    infer: infer_same,
    eval: eval_log,
};

fn eval_log(a: &EvalArgs) -> Eval {
    let eps = f64::from(a.float_or("epsilon", LOG_EPSILON)?);
    map_float(a, |v| (f64::from(v) + eps).ln() as f32)
}

/// Values `gelu.mode` accepts.
pub const GELU_MODES: &[&str] = &["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"];
/// The logistic slope of `SIGMOID_APPROXIMATION` (coremltools `gelu.value_inference`).
pub const GELU_SIGMOID_SLOPE: f64 = 1.702;
/// The cubic coefficient of `TANH_APPROXIMATION` (Hendrycks & Gimpel; coremltools).
pub const GELU_TANH_CUBIC: f64 = 0.044715;

/// `gelu`: x · Φ(x), exact or approximated per `mode` (default `EXACT`).
pub const GELU: OpDef = OpDef {
    name: "gelu",
    since: Opset::Ios15,
    params: &[Param::new("x", FLOAT), Param::new("mode", STRING).konst().optional()],
    infer: infer_gelu,
    eval: eval_gelu,
};

fn infer_gelu(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    if let Some(mode) = a.string("mode") {
        if !GELU_MODES.contains(&mode) {
            return Err(a.invalid(format!("unknown mode `{mode}`")));
        }
    }
    infer_same(a)
}

fn eval_gelu(a: &EvalArgs) -> Eval {
    match a.string("mode").unwrap_or("EXACT") {
        // 0.5·x·(1 + erf(x/√2)) written with erfc, which keeps its accuracy for negative x.
        "EXACT" => map_float(a, |x| 0.5 * x * numeric::approx::erfc(-x * std::f32::consts::FRAC_1_SQRT_2)),
        "TANH_APPROXIMATION" => map_float(a, |v| {
            wide(v, |x| {
                let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + GELU_TANH_CUBIC * x * x * x);
                0.5 * x * (1.0 + inner.tanh())
            })
        }),
        "SIGMOID_APPROXIMATION" => map_float(a, |v| wide(v, |x| x / (1.0 + (-GELU_SIGMOID_SLOPE * x).exp()))),
        mode => Err(a.invalid(format!("unknown mode `{mode}`"))),
    }
}

/// `leaky_relu`: x where x ≥ 0, else alpha·x.
pub const LEAKY_RELU: OpDef = OpDef {
    name: "leaky_relu",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("alpha", FLOAT).konst()],
    infer: infer_same,
    eval: eval_leaky_relu,
};

/// `leaky_relu` from iOS17: its parameters may have another float dtype than `x` (coremltools keeps
/// them fp32 in fp16 programs).
pub const LEAKY_RELU_IOS17: OpDef = OpDef {
    name: "leaky_relu",
    since: Opset::Ios17,
    params: &[Param::t("x", FLOAT), Param::new("alpha", FLOAT).konst()],
    infer: infer_same,
    eval: eval_leaky_relu,
};

fn eval_leaky_relu(a: &EvalArgs) -> Eval {
    let alpha = a.float_or("alpha", 0.0)?;
    map_float(a, |v| if v < 0.0 { v * alpha } else { v })
}

/// `elu`: x where x > 0, else alpha·(eˣ − 1).
pub const ELU: OpDef = OpDef {
    name: "elu",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("alpha", FLOAT).konst()],
    infer: infer_same,
    eval: eval_elu,
};

/// `elu` from iOS17: its parameters may have another float dtype than `x` (coremltools keeps
/// them fp32 in fp16 programs).
pub const ELU_IOS17: OpDef = OpDef {
    name: "elu",
    since: Opset::Ios17,
    params: &[Param::t("x", FLOAT), Param::new("alpha", FLOAT).konst()],
    infer: infer_same,
    eval: eval_elu,
};

fn eval_elu(a: &EvalArgs) -> Eval {
    let alpha = f64::from(a.float_or("alpha", 1.0)?);
    map_float(a, |v| if v > 0.0 { v } else { (alpha * f64::from(v).exp_m1()) as f32 })
}

/// `prelu`: x where x > 0, else alpha[c]·x, c the channel (axis 1) of a rank-3 to 5 `x`;
/// `alpha` has one value per channel, all equal unless `x` has rank 4 (coremltools' rule).
pub const PRELU: OpDef = OpDef {
    name: "prelu",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("alpha", FLOAT).konst()],
    infer: infer_prelu,
    eval: eval_prelu,
};

/// `prelu` from iOS17: `alpha` may have another float dtype than `x` (coremltools keeps an fp32
/// `alpha` in fp16 programs).
pub const PRELU_IOS17: OpDef = OpDef {
    name: "prelu",
    since: Opset::Ios17,
    params: &[Param::new("x", FLOAT), Param::new("alpha", FLOAT).konst()],
    infer: infer_prelu,
    eval: eval_prelu,
};

fn infer_prelu(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (x, alpha) = (a.tensor("x")?, a.tensor("alpha")?);
    if !(3..=5).contains(&x.rank()) {
        return Err(a.invalid(format!("x must be rank 3 to 5, got {x}")));
    }
    if alpha.rank() != 1 || (alpha.shape[0] != x.shape[1] && x.shape[1] != crate::mil::types::Dim::Unknown) {
        return Err(a.invalid(format!("alpha {alpha} must be [C], C the size of x's axis 1 ({x})")));
    }
    if x.rank() != 4 {
        let v = a.value("alpha").and_then(|t| t.to_f32_vec()).unwrap_or_default();
        if v.iter().any(|&e| e != v[0]) {
            return Err(a.invalid(format!("per-channel alpha needs a rank-4 x, got {x}")));
        }
    }
    Ok(vec![x.clone()])
}

fn eval_prelu(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let (v, alpha) = (a.floats("x")?, a.floats("alpha")?);
    let (channels, inner) = (x.shape.get(1).copied().unwrap_or(0), x.shape.iter().skip(2).product::<usize>());
    if alpha.len() != channels || x.shape.len() < 2 {
        return Err(a.shape_error("alpha must have one value per channel of x"));
    }
    let out = v
        .iter()
        .enumerate()
        .map(|(i, &e)| if e > 0.0 || e.is_nan() { e } else { e * alpha[(i / inner.max(1)) % channels] })
        .collect();
    Ok(vec![Array::float(x.dtype, x.shape.clone(), out)])
}

/// `sigmoid_hard`: min(max(alpha·x + beta, 0), 1); coremltools writes hardsigmoid/hardswish with it.
pub const SIGMOID_HARD: OpDef = OpDef {
    name: "sigmoid_hard",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("alpha", FLOAT).konst().optional(), Param::t("beta", FLOAT).konst().optional()],
    infer: infer_same,
    eval: eval_sigmoid_hard,
};

/// `sigmoid_hard` from iOS17: its parameters may have another float dtype than `x` (coremltools keeps
/// them fp32 in fp16 programs).
pub const SIGMOID_HARD_IOS17: OpDef = OpDef {
    name: "sigmoid_hard",
    since: Opset::Ios17,
    params: &[Param::t("x", FLOAT), Param::new("alpha", FLOAT).konst().optional(), Param::new("beta", FLOAT).konst().optional()],
    infer: infer_same,
    eval: eval_sigmoid_hard,
};

fn eval_sigmoid_hard(a: &EvalArgs) -> Eval {
    // Defaults as in coremltools' iOS15 `sigmoid_hard`.
    let (alpha, beta) = (a.float_or("alpha", 0.2)?, a.float_or("beta", 0.5)?);
    map_float(a, |v| (alpha * v + beta).clamp(0.0, 1.0))
}

/// `thresholded_relu`: x where x > alpha, else 0 (coremltools' hardswish uses alpha = −3).
pub const THRESHOLDED_RELU: OpDef = OpDef {
    name: "thresholded_relu",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("alpha", FLOAT).konst().optional()],
    infer: infer_same,
    eval: eval_thresholded_relu,
};

/// `thresholded_relu` from iOS17: its parameters may have another float dtype than `x` (coremltools keeps
/// them fp32 in fp16 programs).
pub const THRESHOLDED_RELU_IOS17: OpDef = OpDef {
    name: "thresholded_relu",
    since: Opset::Ios17,
    params: &[Param::t("x", FLOAT), Param::new("alpha", FLOAT).konst().optional()],
    infer: infer_same,
    eval: eval_thresholded_relu,
};

fn eval_thresholded_relu(a: &EvalArgs) -> Eval {
    // Default as in coremltools' iOS15 `thresholded_relu`.
    let alpha = a.float_or("alpha", 1.0)?;
    map_float(a, |v| if v > alpha { v } else { 0.0 })
}

/// `clip`: min(max(x, alpha), beta).
pub const CLIP: OpDef = OpDef {
    name: "clip",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("alpha", FLOAT).konst(), Param::t("beta", FLOAT).konst()],
    infer: infer_same,
    eval: eval_clip,
};

fn eval_clip(a: &EvalArgs) -> Eval {
    let (lo, hi) = (a.float_or("alpha", f32::NEG_INFINITY)?, a.float_or("beta", f32::INFINITY)?);
    map_float(a, |v| nan_min(nan_max(v, lo), hi))
}

/// `cast`: converts to the dtype named by `dtype` (`fp16`, `fp32`, `int32`, `bool`, …).
pub const CAST: OpDef = OpDef {
    name: "cast",
    since: Opset::Ios15,
    params: &[
        Param::new(
            "x",
            &[DType::F16, DType::F32, DType::I32, DType::Bool, DType::I8, DType::U8, DType::I16, DType::U16],
        ),
        Param::new("dtype", STRING).konst(),
    ],
    infer: infer_cast,
    eval: eval_cast,
};

fn infer_cast(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let name = a.string("dtype").ok_or_else(|| a.invalid("`dtype` must be a const string"))?;
    let dtype = DType::from_name(name).ok_or_else(|| a.invalid(format!("unknown dtype `{name}`")))?;
    Ok(vec![a.tensor("x")?.with_dtype(dtype)])
}

/// Wraps an integer to the width of `dtype` (numpy `astype` of an int to a narrower int).
fn narrow(dtype: DType, v: i64) -> i32 {
    match dtype {
        DType::I8 => i32::from(v as i8),
        DType::U8 => i32::from(v as u8),
        DType::I16 => i32::from(v as i16),
        DType::U16 => i32::from(v as u16),
        _ => v as i32,
    }
}

/// numpy `astype` semantics: float → int truncates toward zero (saturating, NaN → 0),
/// anything → bool is `!= 0`, bool → number is 0/1. fp16 rounding happens in `interp::run`.
fn eval_cast(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let name = a.string("dtype").ok_or_else(|| a.invalid("`dtype` must be a const string"))?;
    let to = DType::from_name(name).ok_or_else(|| a.invalid(format!("unknown dtype `{name}`")))?;
    let data = match (to, &x.data) {
        (DType::F16 | DType::F32, _) => Data::F32(x.to_f32_vec().ok_or_else(|| a.invalid("cannot cast strings"))?),
        (DType::Bool, Data::F32(v)) => Data::Bool(v.iter().map(|&e| e != 0.0).collect()),
        (DType::Bool, Data::I32(v)) => Data::Bool(v.iter().map(|&e| e != 0).collect()),
        (DType::Bool, Data::Bool(v)) => Data::Bool(v.clone()),
        (DType::I32 | DType::I8 | DType::U8 | DType::I16 | DType::U16, Data::F32(v)) => {
            Data::I32(v.iter().map(|&e| narrow(to, e as i64)).collect())
        }
        (DType::I32 | DType::I8 | DType::U8 | DType::I16 | DType::U16, Data::I32(v)) => {
            Data::I32(v.iter().map(|&e| narrow(to, i64::from(e))).collect())
        }
        (DType::I32 | DType::I8 | DType::U8 | DType::I16 | DType::U16, Data::Bool(v)) => {
            Data::I32(v.iter().map(|&e| i32::from(e)).collect())
        }
        _ => return Err(a.invalid(format!("cannot cast {} to {to}", x.dtype))),
    };
    Ok(vec![Array { dtype: to, shape: x.shape.clone(), data }])
}

/// `select`: `a` where `cond` else `b`, all three broadcast.
pub const SELECT: OpDef = OpDef {
    name: "select",
    since: Opset::Ios15,
    params: &[
        Param::new("cond", BOOL),
        Param::t("a", &[DType::F16, DType::F32, DType::I32, DType::Bool]),
        Param::t("b", &[DType::F16, DType::F32, DType::I32, DType::Bool]),
    ],
    infer: infer_select,
    eval: eval_select,
};

fn infer_select(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (c, x, y) = (a.tensor("cond")?, a.tensor("a")?, a.tensor("b")?);
    // coremltools types the result from `a` and `b` alone; `cond` must fit inside it.
    let shape = broadcast(a, &x.shape, &y.shape)?;
    if broadcast(a, &c.shape, &shape)? != shape {
        return Err(a.invalid(format!("cond {c} is larger than the broadcast of a and b; broadcast a or b first")));
    }
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

fn eval_select(a: &EvalArgs) -> Eval {
    let (c, x, y) = (a.array("cond")?, a.array("a")?, a.array("b")?);
    let Data::Bool(cv) = &c.data else { return Err(a.invalid("cond must be bool")) };
    let bad = || a.shape_error("shapes do not broadcast");
    let shape = numeric::broadcast::shape(&c.shape, &x.shape)
        .and_then(|s| numeric::broadcast::shape(&s, &y.shape))
        .ok_or_else(bad)?;
    let cond = numeric::broadcast::expand(cv, &c.shape, &shape).ok_or_else(bad)?;
    fn pick<T: Copy>(cond: &[bool], p: &[T], ps: &[usize], q: &[T], qs: &[usize], to: &[usize]) -> Option<Vec<T>> {
        let (p, q) = (numeric::broadcast::expand(p, ps, to)?, numeric::broadcast::expand(q, qs, to)?);
        Some(cond.iter().zip(p.into_iter().zip(q)).map(|(&c, (u, v))| if c { u } else { v }).collect())
    }
    let data = match (&x.data, &y.data) {
        (Data::F32(p), Data::F32(q)) => Data::F32(pick(&cond, p, &x.shape, q, &y.shape, &shape).ok_or_else(bad)?),
        (Data::I32(p), Data::I32(q)) => Data::I32(pick(&cond, p, &x.shape, q, &y.shape, &shape).ok_or_else(bad)?),
        (Data::Bool(p), Data::Bool(q)) => Data::Bool(pick(&cond, p, &x.shape, q, &y.shape, &shape).ok_or_else(bad)?),
        _ => return Err(a.invalid(format!("a is {} but b is {}", x.dtype, y.dtype))),
    };
    Ok(vec![Array { dtype: x.dtype, shape, data }])
}

/// `softmax`: exp-normalize along `axis` (default −1).
pub const SOFTMAX: OpDef = OpDef {
    name: "softmax",
    since: Opset::Ios15,
    params: &[Param::new("x", FLOAT), Param::new("axis", INT32).konst().optional()],
    infer: infer_softmax,
    eval: eval_softmax,
};

fn infer_softmax(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    a.axis(a.int_or("axis", -1)?, x.rank())?;
    Ok(vec![x.clone()])
}

fn eval_softmax(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let axis = a.axis(a.int_or("axis", -1)?, x.shape.len())?;
    let mut v = a.floats("x")?.to_vec();
    numeric::reduce::softmax(&mut v, &x.shape, axis);
    Ok(vec![Array::float(x.dtype, x.shape.clone(), v)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_division_rounds_like_python() {
        assert_eq!(
            [floor_div_i32(7, 2), floor_div_i32(-7, 2), floor_div_i32(7, -2), floor_div_i32(-7, -2)],
            [3, -4, -4, 3]
        );
        assert_eq!(narrow(DType::I8, 200), -56);
    }
}

/// The ops of this family that act on each element on its own (numpy broadcasting among their
/// tensor inputs, no axis parameter): every op here but `softmax` and `prelu` (per channel). Passes use it to know an op
/// commutes with any change of layout (`passes::split_heads`, `passes::ane_layout`).
pub const POINTWISE: &[&OpDef] = &[
    &ADD, &SUB, &MUL, &REAL_DIV, &FLOOR_DIV, &POW, &MAXIMUM, &MINIMUM, &EQUAL, &NOT_EQUAL, &LESS, &LESS_EQUAL,
    &GREATER, &GREATER_EQUAL, &LOGICAL_AND, &LOGICAL_OR, &LOGICAL_NOT, &SQRT, &EXP, &ERF, &TANH, &SIGMOID, &RELU,
    &SILU, &SIN, &COS, &FLOOR, &ROUND, &SOFTPLUS, &ABS, &SQUARE, &SIGN, &RSQRT, &LOG, &GELU, &LEAKY_RELU,
    &SIGMOID_HARD, &THRESHOLDED_RELU, &CLIP, &CAST, &SELECT,
];

/// Whether `op_type` is in [`POINTWISE`].
pub fn is_pointwise(op_type: &str) -> bool {
    POINTWISE.iter().any(|d| d.name == op_type)
}
