//! Elementwise ops: binary arithmetic and comparisons (numpy broadcasting), unary math and
//! activations, `clip`, `cast`, `select`, and `softmax`. Semantics: coremltools
//! `defs/iOS15/elementwise_binary.py`, `elementwise_unary.py`, `activation.py`.

use super::{broadcast, OpArgs, OpDef, Param, TypeError, BOOL, FLOAT, INT32, NUMERIC, STRING};
use crate::mil::types::{DType, TensorType};
use crate::mil::Opset;

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

/// `add`: x + y, broadcast.
pub const ADD: OpDef = OpDef { name: "add", since: Opset::Ios15, params: BINARY, infer: infer_binary };
/// `sub`: x − y, broadcast.
pub const SUB: OpDef = OpDef { name: "sub", since: Opset::Ios15, params: BINARY, infer: infer_binary };
/// `mul`: x · y, broadcast.
pub const MUL: OpDef = OpDef { name: "mul", since: Opset::Ios15, params: BINARY, infer: infer_binary };
/// `real_div`: x / y, broadcast.
pub const REAL_DIV: OpDef = OpDef { name: "real_div", since: Opset::Ios15, params: BINARY, infer: infer_binary };
/// `pow`: x ** y, broadcast.
pub const POW: OpDef = OpDef { name: "pow", since: Opset::Ios15, params: BINARY, infer: infer_binary };
/// `maximum`: elementwise max, broadcast.
pub const MAXIMUM: OpDef = OpDef { name: "maximum", since: Opset::Ios15, params: BINARY, infer: infer_binary };
/// `minimum`: elementwise min, broadcast.
pub const MINIMUM: OpDef = OpDef { name: "minimum", since: Opset::Ios15, params: BINARY, infer: infer_binary };
/// `equal`: x == y as bool, broadcast.
pub const EQUAL: OpDef = OpDef { name: "equal", since: Opset::Ios15, params: BINARY, infer: infer_compare };
/// `less`: x < y as bool, broadcast.
pub const LESS: OpDef = OpDef { name: "less", since: Opset::Ios15, params: BINARY, infer: infer_compare };
/// `greater`: x > y as bool, broadcast.
pub const GREATER: OpDef = OpDef { name: "greater", since: Opset::Ios15, params: BINARY, infer: infer_compare };

const UNARY_FLOAT: &[Param] = &[Param::new("x", FLOAT)];

/// `sqrt`: elementwise square root.
pub const SQRT: OpDef = OpDef { name: "sqrt", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same };
/// `exp`: elementwise e^x.
pub const EXP: OpDef = OpDef { name: "exp", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same };
/// `erf`: the error function (exact GELU lowers through it).
pub const ERF: OpDef = OpDef { name: "erf", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same };
/// `tanh`: hyperbolic tangent.
pub const TANH: OpDef = OpDef { name: "tanh", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same };
/// `sigmoid`: 1 / (1 + e^−x).
pub const SIGMOID: OpDef = OpDef { name: "sigmoid", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same };
/// `relu`: max(x, 0).
pub const RELU: OpDef = OpDef { name: "relu", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same };
/// `silu`: x · sigmoid(x).
pub const SILU: OpDef = OpDef { name: "silu", since: Opset::Ios15, params: UNARY_FLOAT, infer: infer_same };

/// `abs`: |x| (also on int32).
pub const ABS: OpDef = OpDef { name: "abs", since: Opset::Ios15, params: &[Param::new("x", NUMERIC)], infer: infer_same };

/// `rsqrt`: 1 / sqrt(x + epsilon); epsilon defaults to 1e-12.
pub const RSQRT: OpDef = OpDef {
    name: "rsqrt",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("epsilon", FLOAT).konst().optional()],
    infer: infer_same,
};

/// `log`: ln(x + epsilon); epsilon defaults to 1e-45.
pub const LOG: OpDef = OpDef {
    name: "log",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("epsilon", FLOAT).konst().optional()],
    infer: infer_same,
};

/// Values `gelu.mode` accepts.
pub const GELU_MODES: &[&str] = &["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"];

/// `gelu`: x · Φ(x), exact or approximated per `mode`.
pub const GELU: OpDef = OpDef {
    name: "gelu",
    since: Opset::Ios15,
    params: &[Param::new("x", FLOAT), Param::new("mode", STRING).konst().optional()],
    infer: infer_gelu,
};

fn infer_gelu(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    if let Some(mode) = a.string("mode") {
        if !GELU_MODES.contains(&mode) {
            return Err(a.invalid(format!("unknown mode `{mode}`")));
        }
    }
    infer_same(a)
}

/// `clip`: min(max(x, alpha), beta).
pub const CLIP: OpDef = OpDef {
    name: "clip",
    since: Opset::Ios15,
    params: &[Param::t("x", FLOAT), Param::t("alpha", FLOAT).konst(), Param::t("beta", FLOAT).konst()],
    infer: infer_same,
};

/// `cast`: converts to the dtype named by `dtype` (`fp16`, `fp32`, `int32`, `bool`, …).
pub const CAST: OpDef = OpDef {
    name: "cast",
    since: Opset::Ios15,
    params: &[
        Param::new("x", &[DType::F16, DType::F32, DType::I32, DType::Bool, DType::I8, DType::U8, DType::I16, DType::U16]),
        Param::new("dtype", STRING).konst(),
    ],
    infer: infer_cast,
};

fn infer_cast(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let name = a.string("dtype").ok_or_else(|| a.invalid("`dtype` must be a const string"))?;
    let dtype = DType::from_name(name).ok_or_else(|| a.invalid(format!("unknown dtype `{name}`")))?;
    Ok(vec![a.tensor("x")?.with_dtype(dtype)])
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
};

fn infer_select(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (c, x, y) = (a.tensor("cond")?, a.tensor("a")?, a.tensor("b")?);
    let shape = broadcast(a, &broadcast(a, &c.shape, &x.shape)?, &y.shape)?;
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

/// `softmax`: exp-normalize along `axis` (default −1).
pub const SOFTMAX: OpDef = OpDef {
    name: "softmax",
    since: Opset::Ios15,
    params: &[Param::new("x", FLOAT), Param::new("axis", INT32).konst().optional()],
    infer: infer_softmax,
};

fn infer_softmax(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    a.axis(a.int_or("axis", -1)?, x.rank())?;
    Ok(vec![x.clone()])
}
