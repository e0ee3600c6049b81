//! Lowerings of torch reductions and vector norms: `sum`, `prod`, `amax`/`amin`, `max`/`min`
//! over everything or along one dim (values and indices), `var`/`std`, `logsumexp`,
//! `linalg_vector_norm`/`norm`/`frobenius_norm`. Dims resolve against the static rank; no dim
//! (or an empty list) reduces every axis, as torch does.

use super::elementwise::{binary, built, to, unary};
use super::{dim, float, i32_of, int, ints, Lower, Value};
use crate::mil::builder::Var;
use crate::mil::ops::{elementwise as ew, reduce, shape, OpDef};
use crate::mil::{DType, Tensor};

/// `torch.float32`'s ScalarType code, asked of `to` to make an integer tensor float.
const SCALAR_TYPE_F32: i64 = 6;

/// The reduced axes of `x` for a torch `dim` argument: None or `[]` means all of them.
fn axes_of(l: &Lower, x: &Var, d: &Value) -> Result<Vec<i32>, String> {
    let rank = l.shape(x)?.len();
    let listed = match d {
        Value::None => Vec::new(),
        v => ints(v)?,
    };
    if listed.is_empty() {
        return (0..rank).map(|i| i32_of(i as i64)).collect();
    }
    listed.into_iter().map(|d| dim(d, rank).and_then(|d| i32_of(d as i64))).collect()
}

/// One `reduce_*` op over `axes` (a rank-0 input, with nothing to reduce, is returned as is).
fn reduce_op(l: &mut Lower, def: &'static OpDef, x: &Var, axes: &[i32], keep: bool) -> Result<Var, String> {
    if axes.is_empty() {
        return Ok(x.clone());
    }
    let op = l.op(def).arg("x", x).konst("axes", Tensor::i32_vec(axes)).konst("keep_dims", Tensor::bool_scalar(keep));
    op.build1().map_err(|e| e.to_string())
}

/// `x` ready to reduce: a bool tensor becomes int32 (torch sums masks as integers), and an
/// explicit `dtype` argument casts first, as torch does.
fn reducible(l: &mut Lower, x: &Value, dtype: &Value) -> Result<Var, String> {
    let mut v = x.clone();
    if let Value::Tensor(t) = x {
        if l.ty(t)?.dtype == DType::Bool {
            v = to(l, &[v, Value::Int(super::elementwise::SCALAR_TYPE_I32)])?;
        }
    }
    if let Value::Int(code) = dtype {
        v = to(l, &[v, Value::Int(*code)])?;
    }
    l.tensor(&v)
}

/// A tensor value cast to the compute float dtype when it is integer or bool.
fn float_tensor(l: &mut Lower, v: &Value) -> Result<Var, String> {
    let f = super::elementwise::to_float(l, v)?;
    l.tensor(&f)
}

fn keep(v: &Value) -> bool {
    *v == Value::Bool(true)
}

/// `aten::sum(self, dim, keepdim, dtype)` → `reduce_sum`.
pub fn sum(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = reducible(l, &a[0], &a[3])?;
    let axes = axes_of(l, &x, &a[1])?;
    Ok(Value::Tensor(reduce_op(l, &reduce::REDUCE_SUM, &x, &axes, keep(&a[2]))?))
}

/// `aten::prod(self, dim, keepdim, dtype)` → `reduce_prod`.
pub fn prod(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = reducible(l, &a[0], &a[3])?;
    let axes = axes_of(l, &x, &a[1])?;
    Ok(Value::Tensor(reduce_op(l, &reduce::REDUCE_PROD, &x, &axes, keep(&a[2]))?))
}

/// `aten::any(self, dim, keepdim)` (`.dim`, `.dims` and whole-tensor overloads): whether an
/// element is non-zero, as `reduce_max` of the values as a 0/1 int32 mask, cast back to bool.
pub fn any(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    either(l, a, &reduce::REDUCE_MAX)
}

/// `aten::all(self, dim, keepdim)`: whether every element is non-zero, as `reduce_min` of the
/// 0/1 mask.
pub fn all(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    either(l, a, &reduce::REDUCE_MIN)
}

/// `any`/`all`: `def` (max or min) over the input as a 0/1 int32 mask.
fn either(l: &mut Lower, a: &[Value], def: &'static OpDef) -> Result<Value, String> {
    use super::elementwise::{SCALAR_TYPE_BOOL, SCALAR_TYPE_I32};
    let mask = to(l, &[a[0].clone(), Value::Int(SCALAR_TYPE_BOOL)])?;
    let ints = to(l, &[mask, Value::Int(SCALAR_TYPE_I32)])?;
    let x = l.tensor(&ints)?;
    let axes = axes_of(l, &x, &a[1])?;
    let reduced = reduce_op(l, def, &x, &axes, keep(&a[2]))?;
    to(l, &[Value::Tensor(reduced), Value::Int(SCALAR_TYPE_BOOL)])
}

/// `aten::amax(self, dim, keepdim)` → `reduce_max`.
pub fn amax(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = reducible(l, &a[0], &Value::None)?;
    let axes = axes_of(l, &x, &a[1])?;
    Ok(Value::Tensor(reduce_op(l, &reduce::REDUCE_MAX, &x, &axes, keep(&a[2]))?))
}

/// `aten::amin(self, dim, keepdim)` → `reduce_min`.
pub fn amin(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = reducible(l, &a[0], &Value::None)?;
    let axes = axes_of(l, &x, &a[1])?;
    Ok(Value::Tensor(reduce_op(l, &reduce::REDUCE_MIN, &x, &axes, keep(&a[2]))?))
}

/// The three overloads of `aten::max` / `aten::min` (`self, other, keepdim`): no `other` reduces
/// every element; an int `other` is a dim and gives the tuple (values, int32 indices); a tensor
/// or number is the elementwise `maximum`/`minimum`.
fn extreme(l: &mut Lower, a: &[Value], is_max: bool) -> Result<Value, String> {
    let (values, arg, pairwise): (&'static OpDef, &'static OpDef, &'static OpDef) = if is_max {
        (&reduce::REDUCE_MAX, &reduce::REDUCE_ARGMAX, &ew::MAXIMUM)
    } else {
        (&reduce::REDUCE_MIN, &reduce::REDUCE_ARGMIN, &ew::MINIMUM)
    };
    match (&a[0], &a[1]) {
        (Value::Tensor(x), Value::None) => {
            let x = reducible(l, &Value::Tensor(x.clone()), &Value::None)?;
            let axes = axes_of(l, &x, &Value::None)?;
            Ok(Value::Tensor(reduce_op(l, values, &x, &axes, false)?))
        }
        (Value::Tensor(x), Value::Int(d)) if l.b.value(x).is_none_or(|c| !c.shape().is_empty()) => {
            let x = reducible(l, &Value::Tensor(x.clone()), &Value::None)?;
            let rank = l.shape(&x)?.len();
            let axis = i32_of(dim(*d, rank)? as i64)?;
            let keep = keep(&a[2]);
            let v = reduce_op(l, values, &x, &[axis], keep)?;
            let op = l.op(arg).arg("x", &x).konst("axis", Tensor::i32_scalar(axis)).konst("keep_dims", Tensor::bool_scalar(keep));
            let i = op.build1().map_err(|e| e.to_string())?;
            Ok(Value::Tuple(vec![Value::Tensor(v), Value::Tensor(i)]))
        }
        (x, y) if is_max => binary(l, x, y, pairwise, f64::max),
        (x, y) => binary(l, x, y, pairwise, f64::min),
    }
}

/// `aten::max(self, other | dim, keepdim)`: see [`extreme`].
pub fn max(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    extreme(l, a, true)
}

/// `aten::min(self, other | dim, keepdim)`: see [`extreme`].
pub fn min(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    extreme(l, a, false)
}

/// Σ(x − mean)² / (n − correction) over `dim`, for `aten::var` and `aten::std`
/// (`self, dim, unbiased, keepdim, correction`). `torch.var(x, False)` prints the bool
/// `unbiased` where `dim` goes: a bool there is taken as `unbiased` over every axis.
fn variance(l: &mut Lower, a: &[Value]) -> Result<Var, String> {
    let (dims, unbiased) = match &a[1] {
        Value::Bool(b) => (Value::None, Value::Bool(*b)),
        d => (d.clone(), a[2].clone()),
    };
    let correction = match (&a[4], &unbiased) {
        (Value::None, Value::Bool(false)) => 0.0,
        (Value::None, _) => 1.0,
        (c, _) => float(c)?,
    };
    let x = float_tensor(l, &a[0])?;
    let shape = l.shape(&x)?;
    let axes = axes_of(l, &x, &dims)?;
    let n: usize = axes.iter().map(|&i| shape[i as usize]).product();
    let dof = n as f64 - correction;
    if dof <= 0.0 {
        return Err(format!("var/std over {n} elements with correction {correction} divides by {dof}"));
    }
    let mean = reduce_op(l, &reduce::REDUCE_MEAN, &x, &axes, true)?;
    let centered = binary(l, &Value::Tensor(x), &Value::Tensor(mean), &ew::SUB, |p, q| p - q)?;
    let centered = l.tensor(&centered)?;
    let squares = reduce_op(l, &reduce::REDUCE_SUM_SQUARE, &centered, &axes, keep(&a[3]))?;
    let var = binary(l, &Value::Tensor(squares), &Value::Float(1.0 / dof), &ew::MUL, |p, q| p * q)?;
    l.tensor(&var)
}

/// `aten::var(self, dim, unbiased, keepdim, correction)`.
pub fn var(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    Ok(Value::Tensor(variance(l, a)?))
}

/// `aten::std(self, dim, unbiased, keepdim, correction)` = √var.
pub fn std(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let v = variance(l, a)?;
    unary(l, &Value::Tensor(v), &ew::SQRT)
}

/// `aten::logsumexp(self, dim, keepdim)` → `reduce_log_sum_exp`.
pub fn logsumexp(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = float_tensor(l, &a[0])?;
    let axes = axes_of(l, &x, &a[1])?;
    Ok(Value::Tensor(reduce_op(l, &reduce::REDUCE_LOG_SUM_EXP, &x, &axes, keep(&a[2]))?))
}

/// The vector p-norm of `x` over `dims`: ord 2 → `reduce_l2_norm`, 1 → `reduce_l1_norm`,
/// ±∞ → max/min of |x|, 0 → the count of non-zeros, any other p → (Σ|x|^p)^(1/p).
fn vector_norm(l: &mut Lower, x: &Value, ord: f64, dims: &Value, keepdim: bool) -> Result<Value, String> {
    let x = float_tensor(l, x)?;
    let axes = axes_of(l, &x, dims)?;
    let reduced = |l: &mut Lower, def, v: &Value| -> Result<Value, String> {
        let v = l.tensor(v)?;
        Ok(Value::Tensor(reduce_op(l, def, &v, &axes, keepdim)?))
    };
    let xv = Value::Tensor(x.clone());
    if ord == 2.0 {
        return reduced(l, &reduce::REDUCE_L2_NORM, &xv);
    }
    if ord == 1.0 {
        return reduced(l, &reduce::REDUCE_L1_NORM, &xv);
    }
    if ord == 0.0 {
        let nonzero = super::elementwise::ne(l, &[xv, Value::Float(0.0)])?;
        let counted = to(l, &[nonzero, Value::Int(SCALAR_TYPE_F32)])?;
        return reduced(l, &reduce::REDUCE_SUM, &counted);
    }
    if ord.is_nan() {
        return Err("vector norm of order NaN is not defined".into());
    }
    let abs = unary(l, &xv, &ew::ABS)?;
    if ord == f64::INFINITY {
        return reduced(l, &reduce::REDUCE_MAX, &abs);
    }
    if ord == f64::NEG_INFINITY {
        return reduced(l, &reduce::REDUCE_MIN, &abs);
    }
    let powered = binary(l, &abs, &Value::Float(ord), &ew::POW, f64::powf)?;
    let total = reduced(l, &reduce::REDUCE_SUM, &powered)?;
    binary(l, &total, &Value::Float(1.0 / ord), &ew::POW, f64::powf)
}

/// `aten::linalg_vector_norm(self, ord, dim, keepdim, dtype)`.
pub fn linalg_vector_norm(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    vector_norm(l, &a[0], float(&a[1])?, &a[2], keep(&a[3]))
}

/// `aten::norm(self, p, dim, keepdim, dtype)`: p a number (None = 2) or "fro" (the 2-norm of
/// the flattened dims); the nuclear norm is not supported.
pub fn norm(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let p = match &a[1] {
        Value::None => 2.0,
        Value::Str(s) if s == "fro" => 2.0,
        Value::Str(s) => return Err(format!("aten::norm with p=\"{}\" is not supported (only numbers and \"fro\")", crate::files::shown(s))),
        v => float(v)?,
    };
    vector_norm(l, &a[0], p, &a[2], keep(&a[3]))
}

/// `aten::frobenius_norm(self, dim, keepdim)` = the 2-norm over `dim`.
pub fn frobenius_norm(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    vector_norm(l, &a[0], 2.0, &a[1], keep(&a[2]))
}

/// `aten::log_softmax(self, dim, dtype)` = x − logsumexp(x, dim) (kept dims).
pub fn log_softmax(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = float_tensor(l, &a[0])?;
    let rank = l.shape(&x)?.len();
    let axis = i32_of(dim(int(&a[1])?, rank)? as i64)?;
    let lse = reduce_op(l, &reduce::REDUCE_LOG_SUM_EXP, &x, &[axis], true)?;
    binary(l, &Value::Tensor(x), &Value::Tensor(lse), &ew::SUB, |p, q| p - q)
}

/// `aten::argmax` / `aten::argmin(self, dim=None, keepdim=False)`: int32 indices (Core ML has
/// no int64); without `dim`, the index into the flattened tensor.
fn arg_extreme(l: &mut Lower, a: &[Value], def: &'static OpDef) -> Result<Value, String> {
    let x = reducible(l, &a[0], &Value::None)?;
    let rank = l.shape(&x)?.len();
    let keep_dims = keep(&a[2]);
    let (x, axis) = match &a[1] {
        Value::None => (l.op(&shape::RESHAPE).arg("x", &x).konst("shape", Tensor::i32_vec(&[-1])).build1().map_err(|e| e.to_string())?, 0),
        d => (x, i32_of(dim(int(d)?, rank)? as i64)?),
    };
    let flat = matches!(a[1], Value::None);
    let op = l.op(def).arg("x", &x).konst("axis", Tensor::i32_scalar(axis)).konst("keep_dims", Tensor::bool_scalar(keep_dims && !flat));
    let i = op.build1().map_err(|e| e.to_string())?;
    if flat && keep_dims {
        return built(l.op(&shape::RESHAPE).arg("x", &i).konst("shape", Tensor::i32_vec(&vec![1; rank])).build1());
    }
    Ok(Value::Tensor(i))
}

/// `aten::argmax`: see [`arg_extreme`].
pub fn argmax(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    arg_extreme(l, a, &reduce::REDUCE_ARGMAX)
}

/// `aten::argmin`: see [`arg_extreme`].
pub fn argmin(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    arg_extreme(l, a, &reduce::REDUCE_ARGMIN)
}
