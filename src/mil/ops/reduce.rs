//! Reductions: `reduce_mean`, `reduce_sum`, `reduce_max`, `reduce_min`, `reduce_prod`,
//! `reduce_argmax`. Semantics: coremltools `defs/iOS15/reduction.py` (axes default to all;
//! `keep_dims` keeps size-1 axes; argmax takes one `axis`, default −1, and returns int32).
//! Float sums and means accumulate in f64.

use super::{Array, Data, EvalArgs, EvalError, OpArgs, OpDef, Param, TypeError, BOOL, INT32, NUMERIC};
use crate::mil::types::{DType, Dim, TensorType};
use crate::mil::Opset;
use crate::numeric;

type Eval = Result<Vec<Array>, EvalError>;

const REDUCE: &[Param] = &[
    Param::new("x", NUMERIC),
    Param::new("axes", INT32).konst().optional(),
    Param::new("keep_dims", BOOL).konst().optional(),
];

/// `reduce_mean`: mean over `axes`.
pub const REDUCE_MEAN: OpDef =
    OpDef { name: "reduce_mean", since: Opset::Ios15, params: REDUCE, infer: infer_reduce, eval: eval_reduce_mean };
/// `reduce_sum`: sum over `axes`.
pub const REDUCE_SUM: OpDef =
    OpDef { name: "reduce_sum", since: Opset::Ios15, params: REDUCE, infer: infer_reduce, eval: eval_reduce_sum };
/// `reduce_max`: maximum over `axes`.
pub const REDUCE_MAX: OpDef =
    OpDef { name: "reduce_max", since: Opset::Ios15, params: REDUCE, infer: infer_reduce, eval: eval_reduce_max };
/// `reduce_min`: minimum over `axes`.
pub const REDUCE_MIN: OpDef =
    OpDef { name: "reduce_min", since: Opset::Ios15, params: REDUCE, infer: infer_reduce, eval: eval_reduce_min };
/// `reduce_prod`: product over `axes`.
pub const REDUCE_PROD: OpDef =
    OpDef { name: "reduce_prod", since: Opset::Ios15, params: REDUCE, infer: infer_reduce, eval: eval_reduce_prod };

fn infer_reduce(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let axes = match a.ints("axes")? {
        Some(v) => v.iter().map(|&ax| a.axis(ax, x.rank())).collect::<Result<Vec<_>, _>>()?,
        None => (0..x.rank()).collect(),
    };
    let keep = a.bool_or("keep_dims", false)?;
    let shape = (0..x.rank())
        .filter_map(|i| match (axes.contains(&i), keep) {
            (false, _) => Some(x.shape[i]),
            (true, true) => Some(Dim::Fixed(1)),
            (true, false) => None,
        })
        .collect();
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

/// Reduces `x` over its `axes`: `f` folds f64 on float storage, `g` folds i64 on int32 storage;
/// `mean` divides the result by the reduced element count (int32 truncates toward zero, as
/// numpy's mean cast back to int32 does).
fn reduce(a: &EvalArgs, init: f64, f: fn(f64, f64) -> f64, g_init: i64, g: fn(i64, i64) -> i64, mean: bool) -> Eval {
    let x = a.array("x")?;
    let axes = a.axes(a.ints("axes")?, x.shape.len())?;
    let shape = numeric::reduce::reduced_shape(&x.shape, &axes, a.bool_or("keep_dims", false)?);
    let count: usize = axes.iter().map(|&i| x.shape[i]).product();
    match &x.data {
        Data::F32(v) => {
            let wide: Vec<f64> = v.iter().map(|&e| f64::from(e)).collect();
            let out = numeric::reduce::fold(&wide, &x.shape, &axes, init, f);
            let n = if mean { count.max(1) as f64 } else { 1.0 };
            Ok(vec![Array::float(x.dtype, shape, out.into_iter().map(|s| (s / n) as f32).collect())])
        }
        Data::I32(v) => {
            let wide: Vec<i64> = v.iter().map(|&e| i64::from(e)).collect();
            let out = numeric::reduce::fold(&wide, &x.shape, &axes, g_init, g);
            let n = if mean { count.max(1) as i64 } else { 1 };
            Ok(vec![Array::int(shape, out.into_iter().map(|s| (s / n) as i32).collect())])
        }
        _ => Err(a.invalid(format!("cannot reduce {} values", x.dtype))),
    }
}

fn nan_max(x: f64, y: f64) -> f64 {
    if x.is_nan() || y.is_nan() {
        f64::NAN
    } else {
        x.max(y)
    }
}
fn nan_min(x: f64, y: f64) -> f64 {
    if x.is_nan() || y.is_nan() {
        f64::NAN
    } else {
        x.min(y)
    }
}

fn eval_reduce_mean(a: &EvalArgs) -> Eval {
    reduce(a, 0.0, |s, v| s + v, 0, i64::wrapping_add, true)
}
fn eval_reduce_sum(a: &EvalArgs) -> Eval {
    reduce(a, 0.0, |s, v| s + v, 0, i64::wrapping_add, false)
}
fn eval_reduce_max(a: &EvalArgs) -> Eval {
    reduce(a, f64::NEG_INFINITY, nan_max, i64::MIN, i64::max, false)
}
fn eval_reduce_min(a: &EvalArgs) -> Eval {
    reduce(a, f64::INFINITY, nan_min, i64::MAX, i64::min, false)
}
fn eval_reduce_prod(a: &EvalArgs) -> Eval {
    reduce(a, 1.0, |s, v| s * v, 1, i64::wrapping_mul, false)
}

/// `reduce_argmax`: index (int32) of the first maximum along `axis` (default −1).
pub const REDUCE_ARGMAX: OpDef = OpDef {
    name: "reduce_argmax",
    since: Opset::Ios15,
    params: &[
        Param::new("x", NUMERIC),
        Param::new("axis", INT32).konst().optional(),
        Param::new("keep_dims", BOOL).konst().optional(),
    ],
    infer: infer_argmax,
    eval: eval_argmax,
};

fn infer_argmax(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let axis = a.axis(a.int_or("axis", -1)?, x.rank())?;
    let keep = a.bool_or("keep_dims", false)?;
    let mut shape = x.shape.clone();
    if keep {
        shape[axis] = Dim::Fixed(1);
    } else {
        shape.remove(axis);
    }
    Ok(vec![TensorType { dtype: DType::I32, shape }])
}

fn eval_argmax(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let axis = a.axis(a.int_or("axis", -1)?, x.shape.len())?;
    let out = match &x.data {
        // NaN compares false both ways; numpy picks the first NaN, torch too: treat NaN as +inf.
        Data::F32(v) => {
            let keyed: Vec<f32> = v.iter().map(|&e| if e.is_nan() { f32::INFINITY } else { e }).collect();
            numeric::reduce::argmax(&keyed, &x.shape, axis, false)
        }
        Data::I32(v) => numeric::reduce::argmax(v, &x.shape, axis, false),
        _ => return Err(a.invalid(format!("cannot argmax {} values", x.dtype))),
    };
    let shape = numeric::reduce::reduced_shape(&x.shape, &[axis], a.bool_or("keep_dims", false)?);
    Ok(vec![Array::int(shape, out)])
}
