//! Lowerings of neural-network layers: linear, matmul, convolution, batch/layer norm, pooling,
//! embedding, mean.

use crate::mil::builder::Var;
use super::{dim, float, i32_of, int, ints, Lower, Value};
use crate::mil::ops::{linear as lin, norm, reduce, shape, elementwise as ew};
use crate::mil::{DType, Tensor};

fn built(r: Result<crate::mil::builder::Var, crate::mil::ops::TypeError>) -> Result<Value, String> {
    r.map(Value::Tensor).map_err(|e| e.to_string())
}

/// `aten::linear(input, weight, bias)`. MIL `linear` needs a const weight; a computed weight
/// becomes `matmul(x, weightᵀ)` (+ bias).
pub fn linear(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let w = l.tensor(&a[1])?;
    if l.b.value(&w).is_some() {
        let mut op = l.op(&lin::LINEAR).arg("x", &x).arg("weight", &w);
        let bias;
        if let Value::Tensor(bv) = &a[2] {
            bias = bv.clone();
            op = op.arg("bias", &bias);
        }
        return built(op.build1());
    }
    let y = l.op(&lin::MATMUL).arg("x", &x).arg("y", &w).konst("transpose_y", Tensor::bool_scalar(true)).build1().map_err(|e| e.to_string())?;
    match &a[2] {
        Value::Tensor(bv) => built(l.op(&ew::ADD).arg("x", &y).arg("y", bv).build1()),
        _ => Ok(Value::Tensor(y)),
    }
}

/// `aten::matmul`.
pub fn matmul(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (x, y) = (l.tensor(&a[0])?, l.tensor(&a[1])?);
    built(l.op(&lin::MATMUL).arg("x", &x).arg("y", &y).build1())
}

/// Expands a per-axis list (`[2]` for 2 axes means `[2, 2]`).
fn per_axis(v: &Value, n: usize) -> Result<Vec<i32>, String> {
    let v = ints(v)?;
    let v = match v[..] {
        [one] => vec![one; n],
        _ => v,
    };
    if v.len() != n {
        return Err(format!("expected {n} values, got {}", super::ints_shown(&v)));
    }
    v.into_iter().map(i32_of).collect()
}

/// `aten::_convolution` and `aten::convolution` (input, weight, bias, stride, padding,
/// dilation, transposed, output_padding, groups, …): 1-D to 3-D `conv`, or `conv_transpose`
/// when transposed.
pub fn convolution(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let w = l.tensor(&a[1])?;
    let n = l.shape(&w)?.len().saturating_sub(2);
    let (stride, dilation, groups) = (per_axis(&a[3], n)?, per_axis(&a[5], n)?, i32_of(int(&a[8])?)?);
    if a[6] == Value::Bool(true) {
        return conv_transpose(l, &a[0], &w, &a[2], &stride, &per_axis(&a[4], n)?, &per_axis(&a[7], n)?, &dilation, groups);
    }
    let pad: Vec<i32> = per_axis(&a[4], n)?.into_iter().flat_map(|p| [p, p]).collect();
    conv(l, &a[0], &w, &a[2], &stride, &pad, &dilation, groups)
}

/// `aten::conv1d`, `conv2d`, `conv3d` (input, weight, bias, stride, padding, dilation, groups),
/// the form `torch.export` keeps; `padding` may be `"valid"` or `"same"` (torch pads
/// dilation·(k−1) in all, the odd one at the end).
pub fn conv_nd(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let w = l.tensor(&a[1])?;
    let kernel = l.shape(&w)?;
    let n = kernel.len().saturating_sub(2);
    let (stride, dilation) = (per_axis(&a[3], n)?, per_axis(&a[5], n)?);
    let pad: Vec<i32> = match &a[4] {
        Value::Str(mode) if mode == "valid" => vec![0; 2 * n],
        Value::Str(mode) if mode == "same" => {
            if stride.iter().any(|&s| s != 1) {
                return Err("padding='same' needs stride 1 (as torch requires)".into());
            }
            let mut pad = Vec::with_capacity(2 * n);
            for (k, d) in kernel[2..].iter().zip(&dilation) {
                let total = d * (i32::try_from(*k).map_err(|_| "kernel too large")? - 1);
                pad.extend([total / 2, total - total / 2]);
            }
            pad
        }
        Value::Str(mode) => return Err(format!("padding `{mode}` is not one of 'valid', 'same'")),
        p => per_axis(p, n)?.into_iter().flat_map(|p| [p, p]).collect(),
    };
    conv(l, &a[0], &w, &a[2], &stride, &pad, &dilation, i32_of(int(&a[6])?)?)
}

/// `aten::conv_transpose1d`, `conv_transpose2d`, `conv_transpose3d` (input, weight, bias,
/// stride, padding, output_padding, groups, dilation).
pub fn conv_transpose_nd(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let w = l.tensor(&a[1])?;
    let n = l.shape(&w)?.len().saturating_sub(2);
    let (stride, pad, out_pad, dilation) = (per_axis(&a[3], n)?, per_axis(&a[4], n)?, per_axis(&a[5], n)?, per_axis(&a[7], n)?);
    conv_transpose(l, &a[0], &w, &a[2], &stride, &pad, &out_pad, &dilation, i32_of(int(&a[6])?)?)
}

/// A `conv` with explicit per-side `pad` (begin, end per spatial axis).
#[allow(clippy::too_many_arguments)]
fn conv(l: &mut Lower, x: &Value, w: &Var, bias: &Value, stride: &[i32], pad: &[i32], dilation: &[i32], groups: i32) -> Result<Value, String> {
    let x = l.tensor(x)?;
    let mut op = l
        .op(&lin::CONV)
        .arg("x", &x)
        .arg("weight", w)
        .konst("strides", Tensor::i32_vec(stride))
        .konst("pad_type", Tensor::string("custom"))
        .konst("pad", Tensor::i32_vec(pad))
        .konst("dilations", Tensor::i32_vec(dilation))
        .konst("groups", Tensor::i32_scalar(groups));
    let b;
    if let Value::Tensor(v) = bias {
        b = v.clone();
        op = op.arg("bias", &b);
    }
    built(op.build1())
}

/// A `conv_transpose` (weight `[C_in, C_out/groups, k…]`, torch's layout and MIL's): `padding`
/// crops both sides; `output_padding` (torch's extra rows at the end) is given to MIL as the
/// output shape.
#[allow(clippy::too_many_arguments)]
fn conv_transpose(
    l: &mut Lower,
    x: &Value,
    w: &Var,
    bias: &Value,
    stride: &[i32],
    pad: &[i32],
    out_pad: &[i32],
    dilation: &[i32],
    groups: i32,
) -> Result<Value, String> {
    let x = l.tensor(x)?;
    let (xs, ws) = (l.shape(&x)?, l.shape(w)?);
    if xs.len() != ws.len() || ws.len() < 3 || out_pad.iter().zip(stride.iter().zip(dilation)).any(|(&o, (&s, &d))| o < 0 || (o >= s && o >= d)) {
        return Err(format!("conv_transpose: input {xs:?}, weight {ws:?}, output_padding {out_pad:?} (must be below stride or dilation)"));
    }
    let mut op = l
        .op(&lin::CONV_TRANSPOSE)
        .arg("x", &x)
        .arg("weight", w)
        .konst("pad_type", Tensor::string("custom"))
        .konst("pad", Tensor::i32_vec(&pad.iter().flat_map(|&p| [p, p]).collect::<Vec<_>>()))
        .konst("strides", Tensor::i32_vec(stride))
        .konst("dilations", Tensor::i32_vec(dilation))
        .konst("groups", Tensor::i32_scalar(groups));
    if out_pad.iter().any(|&o| o != 0) {
        let mut shape = vec![i64::try_from(xs[0]).map_err(|_| "batch too large")?, ws[1] as i64 * i64::from(groups)];
        for r in 0..ws.len() - 2 {
            let (i, k) = (xs[2 + r] as i64, ws[2 + r] as i64);
            let (s, p, d, o) = (i64::from(stride[r]), i64::from(pad[r]), i64::from(dilation[r]), i64::from(out_pad[r]));
            shape.push((i - 1) * s - 2 * p + d * (k - 1) + o + 1);
        }
        let shape: Vec<i32> = shape.into_iter().map(i32::try_from).collect::<Result<_, _>>().map_err(|_| "conv_transpose output too large")?;
        op = op.konst("output_shape", Tensor::i32_vec(&shape));
    }
    let b;
    if let Value::Tensor(v) = bias {
        b = v.clone();
        op = op.arg("bias", &b);
    }
    built(op.build1())
}

/// `aten::batch_norm` at inference (running statistics).
pub fn batch_norm(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if a[5] == Value::Bool(true) {
        return Err("batch_norm in training mode: call model.eval() before tracing".into());
    }
    let x = l.tensor(&a[0])?;
    let dt = l.ty(&x)?.dtype;
    let (mean, var) = (l.tensor(&a[3])?, l.tensor(&a[4])?);
    let eps = float(&a[7])? as f32;
    if dt == DType::F16 {
        if let Some(v) = fp16_safe_batch_norm(l, &x, a, f64::from(eps))? {
            return Ok(v);
        }
    }
    let mut op = l.op(&norm::BATCH_NORM).arg("x", &x).arg("mean", &mean).arg("variance", &var);
    let (g, b);
    if let Value::Tensor(v) = &a[1] {
        g = v.clone();
        op = op.arg("gamma", &g);
    }
    if let Value::Tensor(v) = &a[2] {
        b = v.clone();
        op = op.arg("beta", &b);
    }
    built(op.konst("epsilon", Tensor::float_scalar(dt, eps)).build1())
}

/// Largest finite fp16 magnitude: a const beyond it becomes infinity when cast.
const FP16_MAX: f64 = 65504.0;

/// An fp16 `batch_norm` whose running statistics or affine parameters exceed fp16's range (a
/// pitch CNN's variances reach 10^6): written as it would overflow, every output of the layer
/// would be wrong. Its parameters fold exactly into one per-channel scale and shift, computed in
/// f64 from the fp32 weights (`scale = gamma / sqrt(var + eps)`, `shift = beta - mean · scale`):
/// when those fit fp16, the layer is `x · scale + shift` in fp16; otherwise it runs in fp32
/// between casts. Either way a precision note says so. `None` when every parameter fits fp16
/// (the plain `batch_norm`) or one is not a const.
fn fp16_safe_batch_norm(l: &mut Lower, x: &crate::mil::builder::Var, a: &[Value], eps: f64) -> Result<Option<Value>, String> {
    let exact = |l: &Lower, v: &Value| -> Option<Vec<f64>> {
        let Value::Tensor(t) = v else { return None };
        Some(l.b.value(t)?.to_f32_vec_exact()?.into_iter().map(f64::from).collect())
    };
    let (Some(mean), Some(var)) = (exact(l, &a[3]), exact(l, &a[4])) else { return Ok(None) };
    let c = mean.len();
    let optional = |l: &Lower, v: &Value, default: f64| match v {
        Value::Tensor(_) => exact(l, v),
        _ => Some(vec![default; c]),
    };
    let (Some(gamma), Some(beta)) = (optional(l, &a[1], 1.0), optional(l, &a[2], 0.0)) else { return Ok(None) };
    if var.len() != c || gamma.len() != c || beta.len() != c {
        return Ok(None);
    }
    let params = [&mean, &var, &gamma, &beta];
    let peak = params.iter().flat_map(|p| p.iter()).fold(0f64, |m, v| m.max(v.abs()));
    if peak <= FP16_MAX {
        return Ok(None);
    }
    let scale: Vec<f64> = (0..c).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
    let shift: Vec<f64> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
    // Per-channel values broadcast over the axes after the channel axis (1).
    let rank = l.shape(x)?.len();
    let shape: Vec<usize> = std::iter::once(c).chain(std::iter::repeat_n(1, rank.saturating_sub(2))).collect();
    let fits = scale.iter().chain(&shift).all(|v| v.is_finite() && v.abs() <= FP16_MAX);
    let compute = if fits { DType::F16 } else { DType::F32 };
    let konst = |v: &[f64]| {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        if fits { Tensor::from_f32_as_f16(&shape, &v) } else { Tensor::from_f32(&shape, &v) }
    };
    let (scale, shift) = (konst(&scale), konst(&shift));
    let err = |e: crate::mil::ops::TypeError| e.to_string();
    let cast = |l: &mut Lower, v: &crate::mil::builder::Var, to: DType| l.op(&ew::CAST).arg("x", v).konst("dtype", Tensor::string(to.name())).build1().map_err(err);
    let input = if fits { x.clone() } else { cast(l, x, compute)? };
    let scaled = l.op(&ew::MUL).arg("x", &input).konst("y", scale).build1().map_err(err)?;
    let mut y = l.op(&ew::ADD).arg("x", &scaled).konst("y", shift).build1().map_err(err)?;
    if !fits {
        y = cast(l, &y, DType::F16)?;
    }
    let how = if fits { "folded into an fp16 per-channel scale and shift" } else { "kept in fp32 (its folded scale or shift exceeds fp16 too), with casts around it" };
    l.precision_notes.push(format!("batch_norm `{}`: running statistics or affine parameters reach {peak:.3e}, beyond fp16's {FP16_MAX}; {how}", l.hint));
    Ok(Some(Value::Tensor(y)))
}

/// `aten::layer_norm` over the trailing `normalized_shape` axes.
pub fn layer_norm(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let ty = l.ty(&x)?;
    let k = ints(&a[1])?.len();
    if k > ty.rank() {
        return Err(format!("layer_norm over {k} axes of a rank-{} input", ty.rank()));
    }
    let rank = ty.rank() as i32;
    let axes: Vec<i32> = (rank - k as i32..rank).collect();
    let eps = float(&a[4])? as f32;
    let mut op = l.op(&norm::LAYER_NORM).arg("x", &x).konst("axes", Tensor::i32_vec(&axes));
    let (g, b);
    if let Value::Tensor(v) = &a[2] {
        g = v.clone();
        op = op.arg("gamma", &g);
    }
    if let Value::Tensor(v) = &a[3] {
        b = v.clone();
        op = op.arg("beta", &b);
    }
    built(op.konst("epsilon", Tensor::float_scalar(ty.dtype, eps)).build1())
}

/// `aten::max_pool2d` (dilation 1 only).
pub fn max_pool2d(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if per_axis(&a[4], 2)? != [1, 1] {
        return Err("max_pool2d with dilation is not supported".into());
    }
    let x = l.tensor(&a[0])?;
    let k = per_axis(&a[1], 2)?;
    let s = if ints(&a[2])?.is_empty() { k.clone() } else { per_axis(&a[2], 2)? };
    let p: Vec<i32> = per_axis(&a[3], 2)?.into_iter().flat_map(|p| [p, p]).collect();
    let op = l
        .op(&lin::MAX_POOL)
        .arg("x", &x)
        .konst("kernel_sizes", Tensor::i32_vec(&k))
        .konst("strides", Tensor::i32_vec(&s))
        .konst("pad_type", Tensor::string("custom"))
        .konst("pad", Tensor::i32_vec(&p))
        .konst("ceil_mode", Tensor::bool_scalar(a[5] == Value::Bool(true)));
    built(op.build1())
}

/// `aten::avg_pool2d` (no divisor override).
pub fn avg_pool2d(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if a[6] != Value::None {
        return Err("avg_pool2d with divisor_override is not supported".into());
    }
    let x = l.tensor(&a[0])?;
    let k = per_axis(&a[1], 2)?;
    let s = if ints(&a[2])?.is_empty() { k.clone() } else { per_axis(&a[2], 2)? };
    let p: Vec<i32> = per_axis(&a[3], 2)?.into_iter().flat_map(|p| [p, p]).collect();
    avg_pool(l, &x, &k, &s, &p, a[4] == Value::Bool(true), a[5] == Value::Bool(false))
}

fn avg_pool(l: &mut Lower, x: &crate::mil::builder::Var, k: &[i32], s: &[i32], p: &[i32], ceil: bool, exclude_pad: bool) -> Result<Value, String> {
    let op = l
        .op(&lin::AVG_POOL)
        .arg("x", x)
        .konst("kernel_sizes", Tensor::i32_vec(k))
        .konst("strides", Tensor::i32_vec(s))
        .konst("pad_type", Tensor::string("custom"))
        .konst("pad", Tensor::i32_vec(p))
        .konst("exclude_padding_from_average", Tensor::bool_scalar(exclude_pad))
        .konst("ceil_mode", Tensor::bool_scalar(ceil));
    built(op.build1())
}

/// `aten::adaptive_avg_pool2d`: a global mean for 1×1 output, a plain average pool when the
/// input divides evenly; other sizes are not supported.
pub fn adaptive_avg_pool2d(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let shape = l.shape(&x)?;
    let out = per_axis(&a[1], 2)?;
    let rank = shape.len();
    if rank < 2 {
        return Err("adaptive_avg_pool2d needs a rank ≥ 2 input".into());
    }
    let [h, w] = super::dims_i32(&shape[rank - 2..])?[..] else { return Err("adaptive_avg_pool2d needs two spatial axes".into()) };
    if out == [1, 1] {
        let op = l.op(&reduce::REDUCE_MEAN).arg("x", &x).konst("axes", Tensor::i32_vec(&[-2, -1])).konst("keep_dims", Tensor::bool_scalar(true));
        return built(op.build1());
    }
    if out[0] <= 0 || out[1] <= 0 || h % out[0] != 0 || w % out[1] != 0 {
        return Err(format!("adaptive_avg_pool2d from {h}×{w} to {out:?} does not divide evenly"));
    }
    let k = [h / out[0], w / out[1]];
    avg_pool(l, &x, &k, &k, &[0, 0, 0, 0], false, false)
}

/// `aten::embedding(weight, indices)` → `gather` along axis 0 (indices cast to int32).
pub fn embedding(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let w = l.tensor(&a[0])?;
    let idx = l.tensor(&a[1])?;
    // Every row in order (`embed_positions(arange(n))`, as Whisper's encoder does): the table
    // itself, kept a weight rather than folded into a copy of it.
    let rows = l.shape(&w)?.first().copied();
    let all_rows = |v: &[i64]| rows == Some(v.len()) && v.iter().enumerate().all(|(i, &x)| x == i as i64);
    if l.ty(&idx)?.rank() == 1 && l.b.value(&idx).and_then(|t| t.to_i64_vec()).is_some_and(|v| all_rows(&v)) {
        return Ok(Value::Tensor(w));
    }
    let idx = if l.ty(&idx)?.dtype == DType::I32 {
        idx
    } else {
        l.op(&ew::CAST).arg("x", &idx).konst("dtype", Tensor::string("int32")).build1().map_err(|e| e.to_string())?
    };
    built(l.op(&shape::GATHER).arg("x", &w).arg("indices", &idx).konst("axis", Tensor::i32_scalar(0)).build1())
}

/// `aten::mean(self, dim, keepdim)` → `reduce_mean`.
pub fn mean(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let rank = l.shape(&x)?.len();
    let axes: Vec<i32> = match &a[1] {
        Value::None => (0..rank as i32).collect(),
        v => ints(v)?.into_iter().map(|d| dim(d, rank).map(|d| d as i32)).collect::<Result<_, _>>()?,
    };
    let keep = a[2] == Value::Bool(true);
    built(l.op(&reduce::REDUCE_MEAN).arg("x", &x).konst("axes", Tensor::i32_vec(&axes)).konst("keep_dims", Tensor::bool_scalar(keep)).build1())
}

/// `aten::native_layer_norm(input, normalized_shape, weight, bias, eps)` (torch.export's form):
/// the normalized tensor, the mean and 1/√(var + eps) over the normalized axes (kept as size-1
/// axes), as torch returns them; unused statistics are swept by dead-code removal.
pub fn native_layer_norm(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let out = layer_norm(l, &[a[0].clone(), a[1].clone(), a[2].clone(), a[3].clone(), a[4].clone(), Value::Bool(true)])?;
    let x = l.tensor(&a[0])?;
    let rank = l.shape(&x)?.len() as i32;
    let axes: Vec<i32> = (rank - ints(&a[1])?.len() as i32..rank).collect();
    let (mean, rstd) = statistics(l, &x, &axes, float(&a[4])?)?;
    Ok(Value::Tuple(vec![out, Value::Tensor(mean), Value::Tensor(rstd)]))
}

/// Mean and 1/√(biased variance + eps) of `x` over `axes`, kept as size-1 axes.
fn statistics(l: &mut Lower, x: &Var, axes: &[i32], eps: f64) -> Result<(Var, Var), String> {
    let dt = l.ty(x)?.dtype;
    let mean_of = |l: &mut Lower, v: &Var| {
        l.op(&reduce::REDUCE_MEAN).arg("x", v).konst("axes", Tensor::i32_vec(axes)).konst("keep_dims", Tensor::bool_scalar(true)).build1().map_err(|e| e.to_string())
    };
    let mean = mean_of(l, x)?;
    let centered = l.op(&ew::SUB).arg("x", x).arg("y", &mean).build1().map_err(|e| e.to_string())?;
    let square = l.op(&ew::MUL).arg("x", &centered).arg("y", &centered).build1().map_err(|e| e.to_string())?;
    let var = mean_of(l, &square)?;
    let rstd = l.op(&ew::RSQRT).arg("x", &var).konst("epsilon", Tensor::float_scalar(dt, eps as f32)).build1().map_err(|e| e.to_string())?;
    Ok((mean, rstd))
}

/// `aten::group_norm(input, num_groups, weight, bias, eps, cudnn_enabled)`: `x` `[N, C, …]`
/// viewed as `[N, G, C/G·…]`, normalized over its last axis (`layer_norm`), viewed back, then
/// scaled and shifted per channel.
pub fn group_norm(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let groups = int(&a[1])?;
    normalize_groups(l, &x, groups, &a[2], &a[3], float(&a[4])?)
}

/// `aten::instance_norm(input, weight, bias, running_mean, running_var, use_input_stats,
/// momentum, eps, cudnn_enabled)`: per-sample statistics (one group per channel), or the
/// running ones when the layer tracks them and is in eval mode (a `batch_norm`).
pub fn instance_norm(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if a[5] == Value::Bool(false) {
        let args = [a[0].clone(), a[1].clone(), a[2].clone(), a[3].clone(), a[4].clone(), Value::Bool(false), a[6].clone(), a[7].clone(), a[8].clone()];
        return batch_norm(l, &args);
    }
    let x = l.tensor(&a[0])?;
    let channels = *l.shape(&x)?.get(1).ok_or("instance_norm of a rank-1 input")?;
    normalize_groups(l, &x, channels as i64, &a[1], &a[2], float(&a[7])?)
}

/// Group normalization of `x` `[N, C, …]` in `groups` groups, with optional per-channel
/// `weight` and `bias`.
fn normalize_groups(l: &mut Lower, x: &Var, groups: i64, weight: &Value, bias: &Value, eps: f64) -> Result<Value, String> {
    let shape = l.shape(x)?;
    let (n, c) = match shape[..] {
        [n, c, ..] => (n, c),
        _ => return Err(format!("group normalization of a rank-{} input", shape.len())),
    };
    if groups <= 0 || c % groups as usize != 0 {
        return Err(format!("{c} channels do not split into {groups} groups"));
    }
    let dt = l.ty(x)?.dtype;
    let grouped = [i32_of(n as i64)?, i32_of(groups)?, -1];
    let v = l.op(&shape::RESHAPE).arg("x", x).konst("shape", Tensor::i32_vec(&grouped)).build1().map_err(|e| e.to_string())?;
    let v = l
        .op(&norm::LAYER_NORM)
        .arg("x", &v)
        .konst("axes", Tensor::i32_vec(&[2]))
        .konst("epsilon", Tensor::float_scalar(dt, eps as f32))
        .build1()
        .map_err(|e| e.to_string())?;
    let back: Vec<i32> = shape.iter().map(|&d| i32_of(d as i64)).collect::<Result<_, _>>()?;
    let mut y = l.op(&shape::RESHAPE).arg("x", &v).konst("shape", Tensor::i32_vec(&back)).build1().map_err(|e| e.to_string())?;
    // Per-channel parameters as [C, 1, …] to broadcast over the spatial axes.
    let per_channel: Vec<i32> = std::iter::once(i32_of(c as i64)).chain(std::iter::repeat_n(Ok(1), shape.len() - 2)).collect::<Result<_, _>>()?;
    for (p, def) in [(weight, &ew::MUL), (bias, &ew::ADD)] {
        if let Value::Tensor(t) = p {
            let t = l.op(&shape::RESHAPE).arg("x", t).konst("shape", Tensor::i32_vec(&per_channel)).build1().map_err(|e| e.to_string())?;
            y = l.op(def).arg("x", &y).arg("y", &t).build1().map_err(|e| e.to_string())?;
        }
    }
    Ok(Value::Tensor(y))
}
