//! Reductions: `reduce_mean`, `reduce_sum`, `reduce_max`, `reduce_min`, `reduce_prod`,
//! `reduce_l1_norm`, `reduce_l2_norm`, `reduce_sum_square`, `reduce_log_sum_exp`,
//! `reduce_argmax`, `reduce_argmin`. Semantics: coremltools `defs/iOS15/reduction.py` (axes
//! default to all; `keep_dims` keeps size-1 axes; argmax/argmin take one `axis`, default −1,
//! and return int32). Float sums and means accumulate in f64; the norms and log-sum-exp are
//! computed in f64 and rounded once (on int32 input, truncated like numpy's `astype(int32)`).

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

/// `reduce_l1_norm`: Σ|x| over `axes`.
pub const REDUCE_L1_NORM: OpDef =
    OpDef { name: "reduce_l1_norm", since: Opset::Ios15, params: REDUCE, infer: infer_reduce, eval: eval_reduce_l1_norm };
/// `reduce_l2_norm`: √Σx² over `axes`.
pub const REDUCE_L2_NORM: OpDef =
    OpDef { name: "reduce_l2_norm", since: Opset::Ios15, params: REDUCE, infer: infer_reduce, eval: eval_reduce_l2_norm };
/// `reduce_sum_square`: Σx² over `axes`.
pub const REDUCE_SUM_SQUARE: OpDef = OpDef {
    name: "reduce_sum_square",
    since: Opset::Ios15,
    params: REDUCE,
    infer: infer_reduce,
    eval: eval_reduce_sum_square,
};
/// `reduce_log_sum_exp`: ln Σeˣ over `axes`, computed as m + ln Σe^(x−m) with m the maximum.
pub const REDUCE_LOG_SUM_EXP: OpDef = OpDef {
    name: "reduce_log_sum_exp",
    since: Opset::Ios15,
    params: REDUCE,
    infer: infer_reduce,
    eval: eval_reduce_log_sum_exp,
};

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

/// `x`, its values in f64, the reduced axes and the output shape.
type WideInput<'a> = (&'a Array, Vec<f64>, Vec<usize>, Vec<usize>);

/// `x` (float or int32) widened to f64 with its shape, the reduced `axes` and the output shape.
fn wide_input<'a>(a: &EvalArgs<'a>) -> Result<WideInput<'a>, EvalError> {
    let x = a.array("x")?;
    let wide: Vec<f64> = match &x.data {
        Data::F32(v) => v.iter().map(|&e| f64::from(e)).collect(),
        Data::I32(v) => v.iter().map(|&e| f64::from(e)).collect(),
        _ => return Err(a.invalid(format!("cannot reduce {} values", x.dtype))),
    };
    let axes = a.axes(a.ints("axes")?, x.shape.len())?;
    let shape = numeric::reduce::reduced_shape(&x.shape, &axes, a.bool_or("keep_dims", false)?);
    Ok((x, wide, axes, shape))
}

/// One reduced value per cell in f64, back in `x`'s dtype (int32 truncates toward zero).
fn narrowed(x: &Array, shape: Vec<usize>, out: Vec<f64>) -> Eval {
    Ok(vec![match x.data {
        Data::I32(_) => Array::int(shape, out.into_iter().map(|v| v as i32).collect()),
        _ => Array::float(x.dtype, shape, out.into_iter().map(|v| v as f32).collect()),
    }])
}

/// Σ pre(x) over the axes, then `post` of each sum, all in f64.
fn reduce_mapped(a: &EvalArgs, pre: fn(f64) -> f64, post: fn(f64) -> f64) -> Eval {
    let (x, wide, axes, shape) = wide_input(a)?;
    let mapped: Vec<f64> = wide.into_iter().map(pre).collect();
    let sums = numeric::reduce::fold(&mapped, &x.shape, &axes, 0.0, |s, v| s + v);
    narrowed(x, shape, sums.into_iter().map(post).collect())
}

fn eval_reduce_l1_norm(a: &EvalArgs) -> Eval {
    reduce_mapped(a, f64::abs, |s| s)
}
fn eval_reduce_l2_norm(a: &EvalArgs) -> Eval {
    reduce_mapped(a, |v| v * v, f64::sqrt)
}
fn eval_reduce_sum_square(a: &EvalArgs) -> Eval {
    reduce_mapped(a, |v| v * v, |s| s)
}

/// m + ln Σe^(x−m) per cell, m the cell's maximum; a cell whose maximum is infinite (or NaN)
/// gives that maximum, as torch's `logsumexp` does.
fn eval_reduce_log_sum_exp(a: &EvalArgs) -> Eval {
    let (x, wide, axes, shape) = wide_input(a)?;
    let max = numeric::reduce::fold(&wide, &x.shape, &axes, f64::NEG_INFINITY, nan_max);
    let mut sums = vec![0.0f64; max.len()];
    for (&v, c) in wide.iter().zip(numeric::reduce::cell_of(&x.shape, &axes)) {
        sums[c] += (v - max[c]).exp();
    }
    let out = max.iter().zip(sums).map(|(&m, s)| if m.is_finite() { m + s.ln() } else { m }).collect();
    narrowed(x, shape, out)
}

const REDUCE_AXIS: &[Param] = &[
    Param::new("x", NUMERIC),
    Param::new("axis", INT32).konst().optional(),
    Param::new("keep_dims", BOOL).konst().optional(),
];

/// `reduce_argmax`: index (int32) of the first maximum along `axis` (default −1).
pub const REDUCE_ARGMAX: OpDef = OpDef {
    name: "reduce_argmax",
    since: Opset::Ios15,
    params: REDUCE_AXIS,
    infer: infer_argmax,
    eval: eval_argmax,
};

/// `reduce_argmin`: index (int32) of the first minimum along `axis` (default −1).
pub const REDUCE_ARGMIN: OpDef = OpDef {
    name: "reduce_argmin",
    since: Opset::Ios15,
    params: REDUCE_AXIS,
    infer: infer_argmax,
    eval: eval_argmin,
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
    arg_extreme(a, false)
}
fn eval_argmin(a: &EvalArgs) -> Eval {
    arg_extreme(a, true)
}

/// Index of the first maximum (`want_min`: minimum) along `axis`.
fn arg_extreme(a: &EvalArgs, want_min: bool) -> Eval {
    let x = a.array("x")?;
    let axis = a.axis(a.int_or("axis", -1)?, x.shape.len())?;
    let out = match &x.data {
        // NaN compares false both ways; numpy picks the first NaN, torch too: treat NaN as the
        // extreme sought (+inf for argmax, −inf for argmin).
        Data::F32(v) => {
            let nan = if want_min { f32::NEG_INFINITY } else { f32::INFINITY };
            let keyed: Vec<f32> = v.iter().map(|&e| if e.is_nan() { nan } else { e }).collect();
            numeric::reduce::argmax(&keyed, &x.shape, axis, want_min)
        }
        Data::I32(v) => numeric::reduce::argmax(v, &x.shape, axis, want_min),
        _ => return Err(a.invalid(format!("cannot argmax {} values", x.dtype))),
    };
    let shape = numeric::reduce::reduced_shape(&x.shape, &[axis], a.bool_or("keep_dims", false)?);
    Ok(vec![Array::int(shape, out)])
}
