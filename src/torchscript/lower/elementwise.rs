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
pub(super) const SCALAR_TYPE_I32: i64 = 3;
const SCALAR_TYPE_I64: i64 = 4;
pub(super) const SCALAR_TYPE_BOOL: i64 = 11;

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

/// `x ∘ y` through the MIL binary op `def`, scalars broadcast as consts of the tensor's dtype;
/// `fold` computes it when both sides are numbers known at conversion.
pub(super) fn binary(l: &mut Lower, x: &Value, y: &Value, def: &'static OpDef, fold: fn(f64, f64) -> f64) -> Result<Value, String> {
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

/// The MIL unary op `def` on a tensor.
pub(super) fn unary(l: &mut Lower, x: &Value, def: &'static OpDef) -> Result<Value, String> {
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

/// Ops with no value a program needs (`_assert_tensor_metadata` and other runtime asserts of
/// torch.export programs, which check what conversion already knows): `None`.
pub fn nothing(_: &mut Lower, _: &[Value]) -> Result<Value, String> {
    Ok(Value::None)
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

/// `aten::minimum(self, other)` (and the two-tensor `aten::min`) → `minimum`.
pub fn minimum(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    binary(l, &a[0], &a[1], &ew::MINIMUM, f64::min)
}

/// `aten::maximum(self, other)` (and the two-tensor `aten::max`) → `maximum`.
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

/// Above this `threshold`, torch's `softplus` returns x itself; MIL's softplus differs from x there
/// by ln(1 + e^−βx)/β < e^−20 ≈ 2·10⁻⁹, below fp32's resolution of any x > 20/β, so the
/// select that reproduces the switch is left out (20 is torch's default).
const SOFTPLUS_THRESHOLD_NEGLIGIBLE: f64 = 20.0;
/// SELU's α (Klambauer et al. 2017, the value torch's `selu` uses).
const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
/// SELU's λ, the output scale (same source).
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

pub(super) fn built(r: Result<crate::mil::builder::Var, crate::mil::ops::TypeError>) -> Result<Value, String> {
    r.map(Value::Tensor).map_err(|e| e.to_string())
}

fn mul_by(l: &mut Lower, x: &Value, k: f64) -> Result<Value, String> {
    binary(l, x, &Value::Float(k), &ew::MUL, |p, q| p * q)
}

fn add_to(l: &mut Lower, x: &Value, k: f64) -> Result<Value, String> {
    binary(l, x, &Value::Float(k), &ew::ADD, |p, q| p + q)
}

/// `aten::clamp(self, min, max)` and `aten::clip`: number bounds on a float tensor → `clip`;
/// one bound, or tensor bounds → `maximum` then `minimum` (torch's order: max wins when min > max).
pub fn clamp(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (lo, hi) = (&a[1], &a[2]);
    if *lo == Value::None && *hi == Value::None {
        return Err("aten::clamp with neither min nor max: pass at least one bound".into());
    }
    let number = |v: &Value| matches!(v, Value::Int(_) | Value::Float(_));
    if let Value::Tensor(x) = &a[0] {
        let dt = l.ty(x)?.dtype;
        if dt.is_float() && number(lo) && number(hi) {
            let (p, q) = (float(lo)? as f32, float(hi)? as f32);
            let op = l.op(&ew::CLIP).arg("x", x).konst("alpha", Tensor::float_scalar(dt, p)).konst("beta", Tensor::float_scalar(dt, q));
            return built(op.build1());
        }
    }
    let mut y = a[0].clone();
    if *lo != Value::None {
        y = binary(l, &y, lo, &ew::MAXIMUM, f64::max)?;
    }
    if *hi != Value::None {
        y = binary(l, &y, hi, &ew::MINIMUM, f64::min)?;
    }
    Ok(y)
}

/// `aten::clamp_min(self, min)` → `maximum`.
pub fn clamp_min(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    clamp(l, &[a[0].clone(), a[1].clone(), Value::None])
}

/// `aten::clamp_max(self, max)` → `minimum`.
pub fn clamp_max(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    clamp(l, &[a[0].clone(), Value::None, a[1].clone()])
}

fn leaky(l: &mut Lower, x: &Value, slope: f64) -> Result<Value, String> {
    let x = l.tensor(x)?;
    let dt = l.ty(&x)?.dtype;
    built(l.op(&ew::LEAKY_RELU).arg("x", &x).konst("alpha", Tensor::float_scalar(dt, slope as f32)).build1())
}

/// `aten::leaky_relu(self, negative_slope)` → `leaky_relu`.
pub fn leaky_relu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    leaky(l, &a[0], float(&a[1])?)
}

/// `aten::rrelu(self, lower, upper, training, generator)` at inference: a leaky ReLU with slope
/// (lower + upper)/2, as torch evaluates it.
pub fn rrelu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if a[3] == Value::Bool(true) {
        return Err("aten::rrelu in training mode (random slopes): call model.eval() before tracing".into());
    }
    leaky(l, &a[0], (float(&a[1])? + float(&a[2])?) / 2.0)
}

/// `aten::prelu(self, weight)`: one weight → `leaky_relu`; a weight per channel (axis 1) →
/// MIL `prelu` on a rank-4 input, else relu(x) + w·min(x, 0) with w along axis 1.
pub fn prelu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (x, w) = (l.tensor(&a[0])?, l.tensor(&a[1])?);
    let weights = l
        .b
        .value(&w)
        .and_then(|t| t.to_f32_vec())
        .ok_or("aten::prelu with a computed weight is not supported; only a parameter weight")?;
    if let [slope] = weights[..] {
        return leaky(l, &a[0], f64::from(slope));
    }
    let shape = l.shape(&x)?;
    let c = weights.len();
    if shape.get(1) != Some(&c) {
        return Err(format!("aten::prelu: {c} weights for an input of shape {}", super::dims_shown(&shape)));
    }
    let hint = format!("{}_weight", l.hint);
    if shape.len() == 4 {
        let alpha = l.weight(&hint, &Tensor::from_f32(&[c], &weights))?;
        return built(l.op(&ew::PRELU).arg("x", &x).arg("alpha", &alpha).build1());
    }
    let mut along: Vec<usize> = vec![1; shape.len() - 1];
    along[0] = c;
    let alpha = l.weight(&hint, &Tensor::from_f32(&along, &weights))?;
    let pos = unary(l, &a[0], &ew::RELU)?;
    let neg = binary(l, &a[0], &Value::Float(0.0), &ew::MINIMUM, f64::min)?;
    let scaled = binary(l, &neg, &Value::Tensor(alpha), &ew::MUL, |p, q| p * q)?;
    binary(l, &pos, &scaled, &ew::ADD, |p, q| p + q)
}

/// scale·(x if x > 0 else α·(e^(s·x) − 1)) as (scale/s)·elu(s·x, α·s), torch's `elu` with
/// `input_scale` s.
fn elu_scaled(l: &mut Lower, x: &Value, alpha: f64, scale: f64, input_scale: f64) -> Result<Value, String> {
    if input_scale <= 0.0 {
        return Err(format!("elu with input_scale {input_scale} is not supported (must be positive)"));
    }
    let inner = if input_scale == 1.0 { x.clone() } else { mul_by(l, x, input_scale)? };
    let t = l.tensor(&inner)?;
    let dt = l.ty(&t)?.dtype;
    let y = built(l.op(&ew::ELU).arg("x", &t).konst("alpha", Tensor::float_scalar(dt, (alpha * input_scale) as f32)).build1())?;
    let outer = scale / input_scale;
    if outer == 1.0 {
        Ok(y)
    } else {
        mul_by(l, &y, outer)
    }
}

/// `aten::elu(self, alpha, scale, input_scale)` → `elu`.
pub fn elu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    elu_scaled(l, &a[0], float(&a[1])?, float(&a[2])?, float(&a[3])?)
}

/// `aten::selu(self)` = λ·elu(x, α).
pub fn selu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    elu_scaled(l, &a[0], SELU_ALPHA, SELU_SCALE, 1.0)
}

/// `aten::celu(self, alpha)` = elu with input scale 1/α.
pub fn celu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let alpha = float(&a[1])?;
    if alpha == 0.0 {
        return Err("aten::celu with alpha 0 is undefined".into());
    }
    elu_scaled(l, &a[0], alpha, 1.0, 1.0 / alpha)
}

/// `aten::softplus(self, beta, threshold)` = softplus(β·x)/β, and x itself where β·x > threshold
/// (see [`SOFTPLUS_THRESHOLD_NEGLIGIBLE`]).
pub fn softplus(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (beta, threshold) = (float(&a[1])?, float(&a[2])?);
    if beta == 0.0 {
        return Err("aten::softplus with beta 0 is undefined".into());
    }
    let scaled = if beta == 1.0 { a[0].clone() } else { mul_by(l, &a[0], beta)? };
    let sp = unary(l, &scaled, &ew::SOFTPLUS)?;
    let sp = if beta == 1.0 { sp } else { mul_by(l, &sp, 1.0 / beta)? };
    if threshold >= SOFTPLUS_THRESHOLD_NEGLIGIBLE {
        return Ok(sp);
    }
    let above = gt(l, &[scaled, Value::Float(threshold)])?;
    where_(l, &[above, a[0].clone(), sp])
}

/// `aten::mish(self)` = x·tanh(softplus(x)).
pub fn mish(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let sp = unary(l, &a[0], &ew::SOFTPLUS)?;
    let t = unary(l, &sp, &ew::TANH)?;
    binary(l, &a[0], &t, &ew::MUL, |p, q| p * q)
}

/// `aten::log_sigmoid(self)` = −softplus(−x).
pub fn log_sigmoid(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let negated = mul_by(l, &a[0], -1.0)?;
    let sp = unary(l, &negated, &ew::SOFTPLUS)?;
    mul_by(l, &sp, -1.0)
}

/// `aten::relu6(self)` = clip(x, 0, 6).
pub fn relu6(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    hardtanh(l, &[a[0].clone(), Value::Float(0.0), Value::Float(6.0)])
}

/// `aten::hardshrink(self, lambd)` = x where |x| > λ, else 0.
pub fn hardshrink(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let abs = unary(l, &a[0], &ew::ABS)?;
    let keep = gt(l, &[abs, a[1].clone()])?;
    where_(l, &[keep, a[0].clone(), Value::Float(0.0)])
}

/// `aten::softshrink(self, lambd)` = x − clip(x, −λ, λ).
pub fn softshrink(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let lambd = float(&a[1])?;
    let clipped = hardtanh(l, &[a[0].clone(), Value::Float(-lambd), Value::Float(lambd)])?;
    binary(l, &a[0], &clipped, &ew::SUB, |p, q| p - q)
}

/// `aten::threshold(self, threshold, value)` = x where x > threshold, else value
/// (`thresholded_relu` when value is 0).
pub fn threshold(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (th, value) = (float(&a[1])?, float(&a[2])?);
    if value == 0.0 {
        let x = l.tensor(&a[0])?;
        let dt = l.ty(&x)?.dtype;
        return built(l.op(&ew::THRESHOLDED_RELU).arg("x", &x).konst("alpha", Tensor::float_scalar(dt, th as f32)).build1());
    }
    let above = gt(l, &[a[0].clone(), Value::Float(th)])?;
    where_(l, &[above, a[0].clone(), Value::Float(value)])
}

/// `aten::glu(self, dim)` = a·sigmoid(b), a and b the two halves of `dim`.
pub fn glu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let shape = l.shape(&x)?;
    let axis = super::dim(int(&a[1])?, shape.len())?;
    if !shape[axis].is_multiple_of(2) {
        return Err(format!("aten::glu halves dim {axis} of shape {}, which is odd", super::dims_shown(&shape)));
    }
    let op = l.op(&crate::mil::ops::shape::SPLIT).arg("x", &x).konst("num_splits", Tensor::i32_scalar(2)).konst("axis", Tensor::i32_scalar(super::i32_of(axis as i64)?));
    let halves = op.build().map_err(|e| e.to_string())?;
    let gate = unary(l, &Value::Tensor(halves[1].clone()), &ew::SIGMOID)?;
    binary(l, &Value::Tensor(halves[0].clone()), &gate, &ew::MUL, |p, q| p * q)
}

/// `aten::reciprocal(self)` = 1/x (integer tensors become float, as in torch).
pub fn reciprocal(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = to_float(l, &a[0])?;
    binary(l, &Value::Float(1.0), &x, &ew::REAL_DIV, |p, q| p / q)
}

/// `aten::square(self)` → `square`.
pub fn square(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if let Some((v, int)) = scalar_of(l, &a[0]) {
        return Ok(if int { Value::Int((v * v) as i64) } else { Value::Float(v * v) });
    }
    unary(l, &a[0], &ew::SQUARE)
}

/// `aten::log1p(self)` = ln(x + 1).
pub fn log1p(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = to_float(l, &a[0])?;
    let shifted = add_to(l, &x, 1.0)?;
    unary(l, &shifted, &ew::LOG)
}

/// `aten::expm1(self)` = eˣ − 1.
pub fn expm1(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = to_float(l, &a[0])?;
    let e = unary(l, &x, &ew::EXP)?;
    add_to(l, &e, -1.0)
}

/// A rounding op on floats; integer tensors are already whole and pass through.
fn rounding(l: &mut Lower, x: &Value, def: &'static OpDef, fold: fn(f64) -> f64) -> Result<Value, String> {
    if let Some((v, int)) = scalar_of(l, x) {
        return Ok(if int { Value::Int(v as i64) } else { Value::Float(fold(v)) });
    }
    let t = l.tensor(x)?;
    if !l.ty(&t)?.dtype.is_float() {
        return Ok(x.clone());
    }
    unary(l, x, def)
}

/// `aten::floor(self)` → `floor`.
pub fn floor(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    rounding(l, &a[0], &ew::FLOOR, f64::floor)
}

/// `aten::ceil(self)` → `ceil`.
pub fn ceil(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    rounding(l, &a[0], &ew::CEIL, f64::ceil)
}

/// `aten::round(self, decimals)` → `round` (halves to even, as torch), scaled by 10^decimals.
pub fn round(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let decimals = int(&a[1])?;
    if decimals == 0 {
        return rounding(l, &a[0], &ew::ROUND, f64::round_ties_even);
    }
    let k = 10f64.powi(i32::try_from(decimals).map_err(|_| format!("aten::round with {decimals} decimals"))?);
    let up = mul_by(l, &a[0], k)?;
    let r = rounding(l, &up, &ew::ROUND, f64::round_ties_even)?;
    mul_by(l, &r, 1.0 / k)
}

/// `aten::trunc(self)` = sign(x)·floor(|x|).
pub fn trunc(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if let Some((v, int)) = scalar_of(l, &a[0]) {
        return Ok(if int { Value::Int(v as i64) } else { Value::Float(v.trunc()) });
    }
    let t = l.tensor(&a[0])?;
    if !l.ty(&t)?.dtype.is_float() {
        return Ok(a[0].clone());
    }
    let sign = unary(l, &a[0], &ew::SIGN)?;
    let abs = unary(l, &a[0], &ew::ABS)?;
    let whole = unary(l, &abs, &ew::FLOOR)?;
    binary(l, &sign, &whole, &ew::MUL, |p, q| p * q)
}

/// `aten::sign(self)` → `sign`.
pub fn sign(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    unary(l, &a[0], &ew::SIGN)
}

/// `aten::remainder(self, other)` = x − ⌊x/y⌋·y (the sign of the divisor, Python's `%`).
pub fn remainder(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let q = binary(l, &a[0], &a[1], &ew::FLOOR_DIV, |p, q| (p / q).floor())?;
    let back = binary(l, &q, &a[1], &ew::MUL, |p, q| p * q)?;
    binary(l, &a[0], &back, &ew::SUB, |p, q| p - q)
}

/// `aten::fmod(self, other)` = x − trunc(x/y)·y (the sign of the dividend, C's `fmod`).
pub fn fmod(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    // int32 `real_div` already truncates toward zero; float quotients are truncated here.
    let q = binary(l, &a[0], &a[1], &ew::REAL_DIV, |p, q| (p / q).trunc())?;
    let q = trunc(l, &[q])?;
    let back = binary(l, &q, &a[1], &ew::MUL, |p, q| p * q)?;
    binary(l, &a[0], &back, &ew::SUB, |p, q| p - q)
}

/// `aten::atan(self)` → `atan`.
pub fn atan(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = to_float(l, &a[0])?;
    unary(l, &x, &ew::ATAN)
}

/// `aten::atan2(self, other)`: the angle of the point (other, self) = atan(self/other), shifted
/// by +π (self ≥ 0) or −π (self < 0) where other < 0; 0 at the origin, as torch gives.
pub fn atan2(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if let (Some((y, _)), Some((x, _))) = (scalar_of(l, &a[0]), scalar_of(l, &a[1])) {
        return Ok(Value::Float(y.atan2(x)));
    }
    let (y, x) = (to_float(l, &a[0])?, to_float(l, &a[1])?);
    let pi = std::f64::consts::PI;
    // At the origin y/x is 0/0: divide by 1 there instead (atan(0) = 0, no shift).
    let (x_zero, y_zero) = (eq(l, &[x.clone(), Value::Float(0.0)])?, eq(l, &[y.clone(), Value::Float(0.0)])?);
    let origin = logical(l, &[x_zero, y_zero], &ew::LOGICAL_AND, |p, q| p && q)?;
    let divisor = where_(l, &[origin, Value::Float(1.0), x.clone()])?;
    let ratio = binary(l, &y, &divisor, &ew::REAL_DIV, |p, q| p / q)?;
    let base = unary(l, &ratio, &ew::ATAN)?;
    let y_nonneg = ge(l, &[y, Value::Float(0.0)])?;
    let half_turn = where_(l, &[y_nonneg, Value::Float(pi), Value::Float(-pi)])?;
    let x_neg = lt(l, &[x, Value::Float(0.0)])?;
    let shift = where_(l, &[x_neg, half_turn, Value::Float(0.0)])?;
    binary(l, &base, &shift, &ew::ADD, |p, q| p + q)
}

/// A value as a bool mask: bool tensors as they are, others `!= 0` (torch's truthiness).
fn as_bool(l: &mut Lower, v: &Value) -> Result<Value, String> {
    match v {
        Value::Tensor(t) if l.ty(t)?.dtype != DType::Bool => to(l, &[v.clone(), Value::Int(SCALAR_TYPE_BOOL)]),
        Value::Int(i) => Ok(Value::Bool(*i != 0)),
        Value::Float(x) => Ok(Value::Bool(*x != 0.0)),
        _ => Ok(v.clone()),
    }
}

/// `aten::logical_not(self)` → `logical_not` (numbers count as true when non-zero).
pub fn logical_not(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    match as_bool(l, &a[0])? {
        Value::Bool(b) => Ok(Value::Bool(!b)),
        v => unary(l, &v, &ew::LOGICAL_NOT),
    }
}

/// `aten::logical_and(self, other)` → `logical_and`.
pub fn logical_and(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (x, y) = (as_bool(l, &a[0])?, as_bool(l, &a[1])?);
    logical(l, &[x, y], &ew::LOGICAL_AND, |x, y| x && y)
}

/// `aten::logical_or(self, other)` → `logical_or`.
pub fn logical_or(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (x, y) = (as_bool(l, &a[0])?, as_bool(l, &a[1])?);
    logical(l, &[x, y], &ew::LOGICAL_OR, |x, y| x || y)
}

/// Boolean `^` (`aten::bitwise_xor` of masks) → `logical_xor`.
pub fn xor(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    logical(l, a, &ew::LOGICAL_XOR, |x, y| x != y)
}

/// `aten::logical_xor(self, other)` → `logical_xor`.
pub fn logical_xor(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (x, y) = (as_bool(l, &a[0])?, as_bool(l, &a[1])?);
    logical(l, &[x, y], &ew::LOGICAL_XOR, |x, y| x != y)
}

/// `aten::bitwise_not(self)`: `logical_not` on a mask, −x − 1 (two's complement) on integers.
pub fn bitwise_not(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    match &a[0] {
        Value::Bool(b) => Ok(Value::Bool(!b)),
        Value::Tensor(t) if l.ty(t)?.dtype == DType::Bool => unary(l, &a[0], &ew::LOGICAL_NOT),
        Value::Tensor(t) if l.ty(t)?.dtype.is_float() => Err("aten::bitwise_not of a float tensor is not defined".into()),
        v => {
            let negated = binary(l, v, &Value::Int(-1), &ew::MUL, |p, q| p * q)?;
            binary(l, &negated, &Value::Int(1), &ew::SUB, |p, q| p - q)
        }
    }
}

/// An integer/bool tensor cast to the compute float dtype; other values unchanged.
pub(super) fn to_float(l: &mut Lower, v: &Value) -> Result<Value, String> {
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
