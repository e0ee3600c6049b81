//! Lowerings of elementwise torch ops: arithmetic with tensor/scalar broadcasting (scalars
//! become consts of the tensor's dtype; scalar-only arithmetic folds), activations, softmax,
//! casts, and the ops that are identities at inference (dropout, detach, contiguous).

use super::{float, int, Lower, Value};
use crate::mil::ops::{elementwise as ew, OpDef};
use crate::mil::{DType, Tensor};

/// c10 ScalarType codes that TorchScript prints as plain ints (`torch.to(x, 6)`).
const SCALAR_TYPE_F16: i64 = 5;
const SCALAR_TYPE_F32: i64 = 6;
const SCALAR_TYPE_F64: i64 = 7;
const SCALAR_TYPE_I32: i64 = 3;
const SCALAR_TYPE_I64: i64 = 4;
const SCALAR_TYPE_BOOL: i64 = 11;

/// The number behind a scalar-like value: an int/float, or a one-element const tensor
/// (`NumToTensor` results and 0-d `CONSTANTS`), with whether it is an integer.
fn scalar_of(l: &Lower, v: &Value) -> Option<(f64, bool)> {
    match v {
        Value::Int(i) => Some((*i as f64, true)),
        Value::Float(x) => Some((*x, false)),
        Value::Tensor(t) => {
            let c = l.b.value(t)?;
            if c.len() != 1 || !c.shape().is_empty() {
                return None;
            }
            match c.to_i64_vec() {
                Some(v) => Some((v[0] as f64, true)),
                None => c.to_f32_vec().map(|v| (f64::from(v[0]), false)),
            }
        }
        _ => None,
    }
}

fn binary(l: &mut Lower, x: &Value, y: &Value, def: &'static OpDef, fold: fn(f64, f64) -> f64) -> Result<Value, String> {
    if let (Some((a, ai)), Some((b, bi))) = (scalar_of(l, x), scalar_of(l, y)) {
        let r = fold(a, b);
        return Ok(if ai && bi && def.name != "real_div" { Value::Int(r as i64) } else { Value::Float(r) });
    }
    match (x, y) {
        (Value::Int(a), Value::Int(b)) if def.name != "real_div" => Ok(Value::Int(fold(*a as f64, *b as f64) as i64)),
        (Value::Tensor(xt), Value::Tensor(yt)) if l.ty(xt)?.dtype != l.ty(yt)?.dtype => {
            // Mixed int/float operands: promote the integer side, as torch does.
            let (x, y) = (to_float(l, x)?, to_float(l, y)?);
            binary(l, &x, &y, def, fold)
        }
        (Value::Tensor(_), _) | (_, Value::Tensor(_)) => {
            let (xv, yv) = (tensor_like(l, x, y)?, tensor_like(l, y, x)?);
            Ok(Value::Tensor(l.op(def).arg("x", &xv).arg("y", &yv).build1().map_err(|e| e.to_string())?))
        }
        _ => Ok(Value::Float(fold(float(x)?, float(y)?))),
    }
}

/// `v` as a MIL tensor; a scalar becomes a const of the dtype of `other` (a tensor).
fn tensor_like(l: &mut Lower, v: &Value, other: &Value) -> Result<crate::mil::builder::Var, String> {
    if let Value::Tensor(t) = v {
        return Ok(t.clone());
    }
    let dtype = match other {
        Value::Tensor(o) => l.ty(o)?.dtype,
        _ => l.dtype,
    };
    let x = float(v)?;
    Ok(l.scalar(dtype, x))
}

/// `aten::add(self, other, alpha)`.
pub fn add(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let y = scaled(l, &a[1], &a[2])?;
    binary(l, &a[0], &y, &ew::ADD, |p, q| p + q)
}

/// `aten::sub(self, other, alpha)`.
pub fn sub(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let y = scaled(l, &a[1], &a[2])?;
    binary(l, &a[0], &y, &ew::SUB, |p, q| p - q)
}

/// `aten::rsub(self, other, alpha)` = other − alpha·self.
pub fn rsub(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = scaled(l, &a[0], &a[2])?;
    binary(l, &a[1], &x, &ew::SUB, |p, q| p - q)
}

fn scaled(l: &mut Lower, v: &Value, alpha: &Value) -> Result<Value, String> {
    if float(alpha)? == 1.0 {
        return Ok(v.clone());
    }
    binary(l, v, alpha, &ew::MUL, |p, q| p * q)
}

/// `aten::mul`.
pub fn mul(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    binary(l, &a[0], &a[1], &ew::MUL, |p, q| p * q)
}

/// `aten::div` (true division only).
pub fn div(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if a[2] != Value::None {
        return Err("aten::div with a rounding_mode is not supported".into());
    }
    // True division promotes integer tensors to float, as torch does.
    let (x, y) = (to_float(l, &a[0])?, to_float(l, &a[1])?);
    binary(l, &x, &y, &ew::REAL_DIV, |p, q| p / q)
}

/// `aten::pow`.
pub fn pow(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    binary(l, &a[0], &a[1], &ew::POW, f64::powf)
}

/// `aten::neg` = x · −1 (MIL has no neg op).
pub fn neg(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    binary(l, &a[0], &Value::Int(-1), &ew::MUL, |p, q| p * q)
}

fn unary(l: &mut Lower, x: &Value, def: &'static OpDef) -> Result<Value, String> {
    let x = l.tensor(x)?;
    Ok(Value::Tensor(l.op(def).arg("x", &x).build1().map_err(|e| e.to_string())?))
}

/// `aten::sqrt`.
pub fn sqrt(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::SQRT)
}
/// `aten::rsqrt`.
pub fn rsqrt(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::RSQRT)
}
/// `aten::exp`.
pub fn exp(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::EXP)
}
/// `aten::erf`.
pub fn erf(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::ERF)
}
/// `aten::tanh`.
pub fn tanh(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::TANH)
}
/// `aten::sigmoid`.
pub fn sigmoid(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::SIGMOID)
}
/// `aten::relu`, `aten::relu_`.
pub fn relu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::RELU)
}
/// `aten::silu`.
pub fn silu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::SILU)
}

/// `aten::gelu(self, approximate)`: `none` → EXACT, `tanh` → TANH_APPROXIMATION.
pub fn gelu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let mode = match &a[1] {
        Value::None => "EXACT",
        Value::Str(s) if s == "none" => "EXACT",
        Value::Str(s) if s == "tanh" => "TANH_APPROXIMATION",
        other => return Err(format!("gelu approximate={other:?} is not supported")),
    };
    let x = l.tensor(&a[0])?;
    Ok(Value::Tensor(l.op(&ew::GELU).arg("x", &x).konst("mode", Tensor::string(mode)).build1().map_err(|e| e.to_string())?))
}

/// `aten::hardtanh` = clip(min_val, max_val) (ReLU6 traces to it).
pub fn hardtanh(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let dt = l.ty(&x)?.dtype;
    let (lo, hi) = (float(&a[1])? as f32, float(&a[2])? as f32);
    let op = l.op(&ew::CLIP).arg("x", &x).konst("alpha", Tensor::float_scalar(dt, lo)).konst("beta", Tensor::float_scalar(dt, hi));
    Ok(Value::Tensor(op.build1().map_err(|e| e.to_string())?))
}

/// `aten::hardsigmoid` = clip(x/6 + 1/2, 0, 1), from MIL ops every target has.
pub fn hardsigmoid(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let dt = l.ty(&x)?.dtype;
    let scaled = binary(l, &Value::Tensor(x), &Value::Float(1.0 / 6.0), &ew::MUL, |p, q| p * q)?;
    let shifted = binary(l, &scaled, &Value::Float(0.5), &ew::ADD, |p, q| p + q)?;
    let s = l.tensor(&shifted)?;
    let op = l.op(&ew::CLIP).arg("x", &s).konst("alpha", Tensor::float_scalar(dt, 0.0)).konst("beta", Tensor::float_scalar(dt, 1.0));
    Ok(Value::Tensor(op.build1().map_err(|e| e.to_string())?))
}

/// `aten::hardswish` = x · hardsigmoid(x).
pub fn hardswish(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let hs = hardsigmoid(l, a)?;
    binary(l, &a[0], &hs, &ew::MUL, |p, q| p * q)
}

/// `aten::softmax(self, dim, dtype)`.
pub fn softmax(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let axis = super::i32_of(int(&a[1])?)?;
    Ok(Value::Tensor(l.op(&ew::SOFTMAX).arg("x", &x).konst("axis", Tensor::i32_scalar(axis)).build1().map_err(|e| e.to_string())?))
}

/// Ops that do nothing at inference: `dropout` (eval), `detach`, `contiguous`.
pub fn identity(_: &mut Lower, a: &[Value]) -> Result<Value, String> {
    Ok(a[0].clone())
}

/// `aten::to(self, …)`: device moves are no-ops; a dtype change becomes `cast`, except between
/// float types, which all compute in the package's precision.
pub fn to(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let code = a[1..].iter().find_map(|v| if let Value::Int(i) = v { Some(*i) } else { None });
    let Value::Tensor(x) = &a[0] else { return Ok(a[0].clone()) };
    let from = l.ty(x)?.dtype;
    let target = match code {
        None => return Ok(a[0].clone()),
        Some(SCALAR_TYPE_F16 | SCALAR_TYPE_F32 | SCALAR_TYPE_F64) if from.is_float() => return Ok(a[0].clone()),
        Some(SCALAR_TYPE_F16 | SCALAR_TYPE_F32 | SCALAR_TYPE_F64) => l.dtype,
        Some(SCALAR_TYPE_I32 | SCALAR_TYPE_I64) => DType::I32,
        Some(SCALAR_TYPE_BOOL) => DType::Bool,
        Some(c) => return Err(format!("cast to ScalarType {c} is not supported")),
    };
    if target == from {
        return Ok(a[0].clone());
    }
    let op = l.op(&ew::CAST).arg("x", x).konst("dtype", Tensor::string(target.name()));
    Ok(Value::Tensor(op.build1().map_err(|e| e.to_string())?))
}

/// `aten::abs`.
pub fn abs(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if let Some((v, int)) = scalar_of(l, &a[0]) {
        return Ok(if int { Value::Int(v.abs() as i64) } else { Value::Float(v.abs()) });
    }
    unary(l, &a[0], &ew::ABS)
}

/// `aten::log` (natural log).
pub fn log(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if let Some((v, _)) = scalar_of(l, &a[0]) {
        return Ok(Value::Float(v.ln()));
    }
    unary(l, &a[0], &ew::LOG)
}

/// Two-argument `aten::min(self, other)` → `minimum`.
pub fn minimum(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    binary(l, &a[0], &a[1], &ew::MINIMUM, f64::min)
}

/// Two-argument `aten::max(self, other)` → `maximum`.
pub fn maximum(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    binary(l, &a[0], &a[1], &ew::MAXIMUM, f64::max)
}

/// `aten::floor_divide` of sizes (shape arithmetic, folded); tensors are not supported yet.
pub fn floor_divide(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    match (scalar_of(l, &a[0]), scalar_of(l, &a[1])) {
        (Some((x, true)), Some((y, true))) if y != 0.0 => Ok(Value::Int((x / y).floor() as i64)),
        (Some((x, _)), Some((y, _))) if y != 0.0 => Ok(Value::Float((x / y).floor())),
        _ => Err("floor_divide of tensors is not supported yet".into()),
    }
}

/// A value as a MIL tensor of the same dtype as `like` (bool stays bool, numbers become consts).
fn operand(l: &mut Lower, v: &Value, like: &Value) -> Result<crate::mil::builder::Var, String> {
    match v {
        Value::Tensor(t) => Ok(t.clone()),
        Value::Bool(b) => Ok(l.b.konst(&format!("{}_flag", l.hint), Tensor::bool_scalar(*b))),
        other => tensor_like(l, other, like),
    }
}

/// `aten::where(condition, self, other)` → `select`.
pub fn where_(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let c = l.tensor(&a[0])?;
    let like = if matches!(a[1], Value::Tensor(_)) { &a[1] } else { &a[2] };
    let (mut x, y) = (operand(l, &a[1], like)?, operand(l, &a[2], like)?);
    // Core ML's select takes its shape from `a` and `b`; widen `a` when the condition is larger.
    let (cs, xs, ys) = (l.shape(&c)?, l.shape(&x)?, l.shape(&y)?);
    let full = broadcast_shapes(&broadcast_shapes(&cs, &xs)?, &ys)?;
    if broadcast_shapes(&xs, &ys)? != full {
        let size: Vec<Value> = full.iter().map(|&d| Value::Int(d as i64)).collect();
        let Value::Tensor(wide) = super::shape::expand(l, &[Value::Tensor(x), Value::List(size), Value::Bool(false)])? else {
            return Err("expand produced no tensor".into());
        };
        x = wide;
    }
    Ok(Value::Tensor(l.op(&ew::SELECT).arg("cond", &c).arg("a", &x).arg("b", &y).build1().map_err(|e| e.to_string())?))
}

/// `aten::masked_fill(self, mask, value)` = select(mask, value, self).
pub fn masked_fill(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    where_(l, &[a[1].clone(), a[2].clone(), a[0].clone()])
}

fn logical(l: &mut Lower, a: &[Value], def: &'static OpDef, fold: fn(bool, bool) -> bool) -> Result<Value, String> {
    if let (Value::Bool(x), Value::Bool(y)) = (&a[0], &a[1]) {
        return Ok(Value::Bool(fold(*x, *y)));
    }
    let like = if matches!(a[0], Value::Tensor(_)) { &a[0] } else { &a[1] };
    let (x, y) = (operand(l, &a[0], like)?, operand(l, &a[1], like)?);
    if l.ty(&x)?.dtype != DType::Bool || l.ty(&y)?.dtype != DType::Bool {
        return Err("bitwise and/or of integer tensors is not supported; only bool masks".into());
    }
    Ok(Value::Tensor(l.op(def).arg("x", &x).arg("y", &y).build1().map_err(|e| e.to_string())?))
}

/// Boolean `&` → `logical_and`.
pub fn and(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    logical(l, a, &ew::LOGICAL_AND, |x, y| x && y)
}

/// Boolean `|` → `logical_or`.
pub fn or(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    logical(l, a, &ew::LOGICAL_OR, |x, y| x || y)
}

/// `aten::type_as(self, other)`: cast to `other`'s dtype (floats all compute in the package precision).
pub fn type_as(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (x, o) = (l.tensor(&a[0])?, l.tensor(&a[1])?);
    let (from, to) = (l.ty(&x)?.dtype, l.ty(&o)?.dtype);
    if from == to || (from.is_float() && to.is_float()) {
        return Ok(a[0].clone());
    }
    let op = l.op(&ew::CAST).arg("x", &x).konst("dtype", Tensor::string(to.name()));
    Ok(Value::Tensor(op.build1().map_err(|e| e.to_string())?))
}

fn compare(l: &mut Lower, a: &[Value], def: &'static OpDef, fold: fn(f64, f64) -> bool) -> Result<Value, String> {
    if let (Some((x, _)), Some((y, _))) = (scalar_of(l, &a[0]), scalar_of(l, &a[1])) {
        return Ok(Value::Bool(fold(x, y)));
    }
    let (x, y) = (tensor_like(l, &a[0], &a[1])?, tensor_like(l, &a[1], &a[0])?);
    Ok(Value::Tensor(l.op(def).arg("x", &x).arg("y", &y).build1().map_err(|e| e.to_string())?))
}

/// `aten::eq`.
pub fn eq(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    compare(l, a, &ew::EQUAL, |x, y| x == y)
}
/// `aten::ne`.
pub fn ne(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    compare(l, a, &ew::NOT_EQUAL, |x, y| x != y)
}
/// `aten::lt`.
pub fn lt(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    compare(l, a, &ew::LESS, |x, y| x < y)
}
/// `aten::le`.
pub fn le(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    compare(l, a, &ew::LESS_EQUAL, |x, y| x <= y)
}
/// `aten::gt`.
pub fn gt(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    compare(l, a, &ew::GREATER, |x, y| x > y)
}
/// `aten::ge`.
pub fn ge(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    compare(l, a, &ew::GREATER_EQUAL, |x, y| x >= y)
}
/// `aten::sin`.
pub fn sin(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::SIN)
}
/// `aten::cos`.
pub fn cos(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::COS)
}

/// An integer/bool tensor cast to the compute float dtype; other values unchanged.
fn to_float(l: &mut Lower, v: &Value) -> Result<Value, String> {
    let Value::Tensor(t) = v else { return Ok(v.clone()) };
    if l.ty(t)?.dtype.is_float() {
        return Ok(v.clone());
    }
    let hint = format!("{}_float", l.hint);
    let dt = l.dtype;
    let op = l.b.op(&ew::CAST, &hint).arg("x", t).konst("dtype", Tensor::string(dt.name()));
    Ok(Value::Tensor(op.build1().map_err(|e| e.to_string())?))
}

/// Numpy broadcast of two static shapes.
fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let n = a.len().max(b.len());
    let at = |s: &[usize], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { 1 };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (1, d) | (d, 1) => Ok(d),
            (x, y) if x == y => Ok(x),
            (x, y) => Err(format!("shapes {a:?} and {b:?} do not broadcast ({x} vs {y})")),
        })
        .collect()
}
