//! Linear algebra and sliding-window ops: `linear`, `matmul`, `conv`, `conv_transpose`,
//! `avg_pool`, `max_pool`. Semantics: coremltools `defs/iOS15/linear.py`, `conv.py`, `pool.py`,
//! and the spatial output rule of `defs/_utils.py::spatial_dimensions_out_shape`. Kernels run
//! through a real GEMM (`numeric::gemm`, `numeric::conv`), accumulating in f32.

use super::{
    broadcast, Array, Data, EvalArgs, EvalError, OpArgs, OpDef, Param, TypeError, BOOL, FLOAT, INT32, NUMERIC, STRING,
};
use crate::mil::types::{Dim, TensorType};
use crate::mil::Opset;
use crate::numeric;
use crate::numeric::conv::{Filter, Pool, Window};

type Eval = Result<Vec<Array>, EvalError>;

/// `linear`: `x · weightᵀ + bias` over the last axis; weight `[D_out, D_in]`.
/// Rewritten to a 1×1 `conv` by the ANE passes.
pub const LINEAR: OpDef = OpDef {
    name: "linear",
    since: Opset::Ios15,
    params: &[
        Param::t("x", NUMERIC),
        Param::t("weight", NUMERIC).konst(),
        Param::t("bias", NUMERIC).konst().optional(),
    ],
    infer: infer_linear,
    eval: eval_linear,
};

fn infer_linear(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let w = a.fixed("weight")?;
    let [d_out, d_in] = w[..] else { return Err(a.invalid(format!("weight must be rank 2, got {w:?}"))) };
    match x.shape.last() {
        Some(Dim::Fixed(n)) if *n != d_in => return Err(a.invalid(format!("x last dim {n} != weight D_in {d_in}"))),
        None => return Err(a.invalid("x must have rank ≥ 1")),
        _ => {}
    }
    if let Some(b) = a.opt_tensor("bias") {
        if b.shape != [Dim::Fixed(d_out)] {
            return Err(a.invalid(format!("bias shape {b} != [{d_out}]")));
        }
    }
    let mut shape = x.shape.clone();
    if let Some(last) = shape.last_mut() {
        *last = Dim::Fixed(d_out);
    }
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

/// `matmul`: numpy-style batched matrix product with optional transposes of the last two axes.
pub const MATMUL: OpDef = OpDef {
    name: "matmul",
    since: Opset::Ios15,
    params: &[
        Param::t("x", NUMERIC),
        Param::t("y", NUMERIC),
        Param::new("transpose_x", BOOL).konst().optional(),
        Param::new("transpose_y", BOOL).konst().optional(),
    ],
    infer: infer_matmul,
    eval: eval_matmul,
};

fn infer_matmul(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (x, y) = (a.tensor("x")?, a.tensor("y")?);
    let (mut xs, mut ys) = (x.shape.clone(), y.shape.clone());
    if xs.is_empty() || ys.len() < 2 {
        return Err(a.invalid("matmul needs x of rank ≥ 1 and y of rank ≥ 2 (coremltools 9.0 cannot type a rank-1 y)"));
    }
    if xs.len() == 1 && (ys.len() != 2 || a.bool_or("transpose_x", false)?) {
        // coremltools types rank-1 x against batched y as [1, …, N] where numpy gives [B, N].
        return Err(a.invalid("a rank-1 x needs a rank-2 y and no transpose_x (coremltools' rule)"));
    }
    let (x_vec, y_vec) = (xs.len() == 1, ys.len() == 1);
    if x_vec {
        xs.insert(0, Dim::Fixed(1));
    }
    if y_vec {
        ys.push(Dim::Fixed(1));
    }
    let (nx, ny) = (xs.len(), ys.len());
    if a.bool_or("transpose_x", false)? {
        xs.swap(nx - 2, nx - 1);
    }
    if a.bool_or("transpose_y", false)? {
        ys.swap(ny - 2, ny - 1);
    }
    if let (Dim::Fixed(k1), Dim::Fixed(k2)) = (xs[nx - 1], ys[ny - 2]) {
        if k1 != k2 {
            return Err(a.invalid(format!("inner dimensions differ ({k1} vs {k2})")));
        }
    }
    let mut shape = broadcast(a, &xs[..nx - 2], &ys[..ny - 2])?;
    if !x_vec {
        shape.push(xs[nx - 2]);
    }
    if !y_vec {
        shape.push(ys[ny - 1]);
    }
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

/// Values a conv/pool `pad_type` takes (`same_lower` only from iOS16).
pub const PAD_TYPES: &[&str] = &["valid", "same", "custom", "same_lower"];

/// Spatial output sizes, exactly as coremltools' `spatial_dimensions_out_shape` computes them.
/// `pad` is the per-axis before/after list used when `pad_type` is `custom`.
fn spatial_out(
    a: &OpArgs,
    input: &[Dim],
    kernel: &[usize],
    strides: &[i64],
    dilations: &[i64],
    pad: &[i64],
    ceil_mode: bool,
) -> Result<Vec<Dim>, TypeError> {
    let pad_type = a.string("pad_type").unwrap_or("valid");
    if !PAD_TYPES.contains(&pad_type) {
        return Err(a.invalid(format!("unknown pad_type `{pad_type}`")));
    }
    if pad_type == "same_lower" && a.opset < Opset::Ios16 {
        return Err(a.invalid("pad_type `same_lower` needs iOS16 (coremltools rejects it in iOS15 conv and pools)"));
    }
    let n = kernel.len();
    if input.len() != n || strides.len() != n || dilations.len() != n || (pad_type == "custom" && pad.len() != 2 * n) {
        return Err(a.invalid(format!("{n} spatial axes need {n} strides/dilations and {} pads", 2 * n)));
    }
    let mut out = Vec::with_capacity(n);
    for r in 0..n {
        let Dim::Fixed(i) = input[r] else {
            out.push(Dim::Unknown);
            continue;
        };
        let (i, s, d) = (i as i64, strides[r], dilations[r]);
        if s <= 0 || d <= 0 {
            return Err(a.invalid("strides and dilations must be positive"));
        }
        let k = (kernel[r] as i64 - 1) * d + 1;
        let p = match pad_type {
            "valid" => 0,
            "custom" => pad[2 * r] + pad[2 * r + 1],
            _ => (s * ((i + s - 1) / s) - i + k - s).max(0),
        };
        let mut o = if ceil_mode { (i + p - k + s - 1).div_euclid(s) + 1 } else { (i + p - k).div_euclid(s) + 1 };
        if ceil_mode && p > 0 && 2 * (o - 1) * s >= 2 * i + p {
            o -= 1;
        }
        if o <= 0 {
            return Err(a.invalid(format!("spatial axis {r} has output size {o}")));
        }
        out.push(Dim::Fixed(o as usize));
    }
    Ok(out)
}

/// `conv`: N-d convolution; x `[N, C_in, *S]`, weight `[C_out, C_in/groups, *K]`, pad before/after per axis.
pub const CONV: OpDef = OpDef {
    name: "conv",
    since: Opset::Ios15,
    params: &[
        Param::new("x", FLOAT),
        Param::new("weight", FLOAT),
        Param::new("bias", FLOAT).optional(),
        Param::new("strides", INT32).konst().optional(),
        Param::new("pad_type", STRING).konst().optional(),
        Param::new("pad", INT32).konst().optional(),
        Param::new("dilations", INT32).konst().optional(),
        Param::new("groups", INT32).konst().optional(),
    ],
    infer: infer_conv,
    eval: eval_conv,
};

fn infer_conv(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let w = a.fixed("weight")?;
    if w.len() < 3 || x.rank() != w.len() {
        return Err(a.invalid(format!("x {x} and weight {w:?} must both be rank ≥ 3 and equal")));
    }
    let n_sp = w.len() - 2;
    let groups = a.int_or("groups", 1)?;
    if let Dim::Fixed(c_in) = x.shape[1] {
        if groups <= 0 || c_in as i64 % groups != 0 || c_in as i64 / groups != w[1] as i64 {
            return Err(a.invalid(format!("C_in {c_in} / groups {groups} != weight[1] {}", w[1])));
        }
    }
    if let Some(b) = a.opt_tensor("bias") {
        if b.shape != [Dim::Fixed(w[0])] {
            return Err(a.invalid(format!("bias {b} must be [{}]", w[0])));
        }
    }
    let ones = vec![1; n_sp];
    let strides = a.ints("strides")?.unwrap_or_else(|| ones.clone());
    let dilations = a.ints("dilations")?.unwrap_or_else(|| ones.clone());
    let pad = a.ints("pad")?.unwrap_or_else(|| vec![0; 2 * n_sp]);
    let spatial = spatial_out(a, &x.shape[2..], &w[2..], &strides, &dilations, &pad, false)?;
    let mut shape = vec![x.shape[0], Dim::Fixed(w[0])];
    shape.extend(spatial);
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

/// `avg_pool`: mean over sliding windows; `pad_type` is required (coremltools gives it no default).
pub const AVG_POOL: OpDef = OpDef {
    name: "avg_pool",
    since: Opset::Ios15,
    params: &[
        Param::new("x", FLOAT),
        Param::new("kernel_sizes", INT32).konst(),
        Param::new("strides", INT32).konst().optional(),
        Param::new("pad_type", STRING).konst(),
        Param::new("pad", INT32).konst().optional(),
        Param::new("exclude_padding_from_average", BOOL).konst().optional(),
        Param::new("ceil_mode", BOOL).konst().optional(),
    ],
    infer: infer_pool,
    eval: eval_avg_pool,
};

/// `max_pool`: max over sliding windows; `pad_type` is required.
pub const MAX_POOL: OpDef = OpDef {
    name: "max_pool",
    since: Opset::Ios15,
    params: &[
        Param::new("x", FLOAT),
        Param::new("kernel_sizes", INT32).konst(),
        Param::new("strides", INT32).konst().optional(),
        Param::new("pad_type", STRING).konst(),
        Param::new("pad", INT32).konst().optional(),
        Param::new("ceil_mode", BOOL).konst().optional(),
    ],
    infer: infer_pool,
    eval: eval_max_pool,
};

fn infer_pool(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let k = a.ints("kernel_sizes")?.ok_or_else(|| a.invalid("`kernel_sizes` must be const"))?;
    if k.is_empty() || x.rank() != k.len() + 2 || k.iter().any(|&v| v <= 0) {
        return Err(a.invalid(format!("kernel_sizes {k:?} do not fit x {x}")));
    }
    let kernel: Vec<usize> = k.iter().map(|&v| v as usize).collect();
    let ones = vec![1; k.len()];
    let strides = a.ints("strides")?.unwrap_or_else(|| ones.clone());
    let pad = a.ints("pad")?.unwrap_or_else(|| vec![0; 2 * k.len()]);
    let spatial = spatial_out(a, &x.shape[2..], &kernel, &strides, &ones, &pad, a.bool_or("ceil_mode", false)?)?;
    let mut shape = x.shape[..2].to_vec();
    shape.extend(spatial);
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

fn eval_linear(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let w = a.array("weight")?;
    let [d_out, d_in] = w.shape[..] else { return Err(a.shape_error("weight must be rank 2")) };
    let out = match (&x.data, &w.data) {
        (Data::F32(xv), Data::F32(wv)) => numeric::gemm::linear(xv, &x.shape, wv, d_out, a.opt_floats("bias")?)
            .map(|(v, s)| Array::float(x.dtype, s, v)),
        (Data::I32(xv), Data::I32(wv)) => {
            numeric::gemm::matmul_i32(xv, &x.shape, wv, &[d_out, d_in], false, true).map(|(mut v, s)| {
                if let Some(Data::I32(b)) = a.get("bias").map(|b| &b.data) {
                    for (i, e) in v.iter_mut().enumerate() {
                        *e = e.wrapping_add(b.get(i % d_out.max(1)).copied().unwrap_or(0));
                    }
                }
                Array::int(s, v)
            })
        }
        _ => return Err(a.invalid(format!("x is {} but weight is {}", x.dtype, w.dtype))),
    };
    out.map(|o| vec![o]).ok_or_else(|| a.shape_error("shapes do not fit"))
}

fn eval_matmul(a: &EvalArgs) -> Eval {
    let (x, y) = (a.array("x")?, a.array("y")?);
    let (tx, ty) = (a.bool_or("transpose_x", false)?, a.bool_or("transpose_y", false)?);
    let out = match (&x.data, &y.data) {
        (Data::F32(p), Data::F32(q)) => {
            numeric::gemm::matmul(p, &x.shape, q, &y.shape, tx, ty).map(|(v, s)| Array::float(x.dtype, s, v))
        }
        (Data::I32(p), Data::I32(q)) => {
            numeric::gemm::matmul_i32(p, &x.shape, q, &y.shape, tx, ty).map(|(v, s)| Array::int(s, v))
        }
        _ => return Err(a.invalid(format!("x is {} but y is {}", x.dtype, y.dtype))),
    };
    out.map(|o| vec![o]).ok_or_else(|| a.shape_error("shapes do not fit"))
}

/// A non-negative integer-vector parameter with one entry per spatial axis, or all-`default`.
fn per_axis(a: &EvalArgs, param: &str, n: usize, default: usize) -> Result<Vec<usize>, EvalError> {
    match a.ints(param)? {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n => {
            v.iter().map(|&e| usize::try_from(e).map_err(|_| a.invalid(format!("negative `{param}`")))).collect()
        }
        Some(v) => Err(a.invalid(format!("`{param}` has {} entries for {n} spatial axes", v.len()))),
    }
}

/// The window geometry of a conv/pool op: kernel, strides, dilations, and explicit pads from
/// `pad_type` (`valid`; `custom` reads `pad` as before/after pairs; `same` puts the odd extra
/// pad after, `same_lower` before, as TensorFlow and Core ML do).
fn window(a: &EvalArgs, spatial: &[usize], kernel: Vec<usize>, default_pad_type: &str) -> Result<Window, EvalError> {
    let n = kernel.len();
    let strides = per_axis(a, "strides", n, 1)?;
    let dilations = per_axis(a, "dilations", n, 1)?;
    if strides.contains(&0) || dilations.contains(&0) {
        return Err(a.invalid("strides and dilations must be positive"));
    }
    let (mut before, mut after) = (vec![0; n], vec![0; n]);
    match a.string("pad_type").unwrap_or(default_pad_type) {
        "valid" => {}
        "custom" => {
            let pad = per_axis(a, "pad", 2 * n, 0)?;
            for r in 0..n {
                (before[r], after[r]) = (pad[2 * r], pad[2 * r + 1]);
            }
        }
        t @ ("same" | "same_lower") => {
            for r in 0..n {
                let total = numeric::conv::same_pad_total(spatial[r], kernel[r], strides[r], dilations[r]);
                let small = total / 2;
                (before[r], after[r]) = if t == "same" { (small, total - small) } else { (total - small, small) };
            }
        }
        t => return Err(a.invalid(format!("unknown pad_type `{t}`"))),
    }
    Ok(Window { kernel, strides, dilations, pad_before: before, pad_after: after })
}

fn eval_conv(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let w = a.array("weight")?;
    if x.shape.len() < 3 || w.shape.len() != x.shape.len() {
        return Err(a.shape_error("x and weight must both be rank ≥ 3 and equal"));
    }
    let win = window(a, &x.shape[2..], w.shape[2..].to_vec(), "valid")?;
    let groups = usize::try_from(a.int_or("groups", 1)?).map_err(|_| a.invalid("negative groups"))?;
    let filter = Filter { weight: a.floats("weight")?, shape: &w.shape, bias: a.opt_floats("bias")?, groups };
    let (y, shape) = numeric::conv::conv(a.floats("x")?, &x.shape, &filter, &win)
        .ok_or_else(|| a.shape_error("shapes do not fit"))?;
    Ok(vec![Array::float(x.dtype, shape, y)])
}

/// `conv_transpose`: the gradient of `conv` w.r.t. its input; x `[N, C_in, *S]`, weight
/// `[C_in, C_out/groups, *K]`. Output spatial size is `output_shape` when given, else
/// `s·(i−1) + k_eff − pad` (`valid`/`custom`) or `s·i` (`same`), as coremltools infers it.
pub const CONV_TRANSPOSE: OpDef = OpDef {
    name: "conv_transpose",
    since: Opset::Ios15,
    params: &[
        Param::t("x", FLOAT),
        Param::t("weight", FLOAT).konst(),
        Param::t("bias", FLOAT).konst().optional(),
        Param::new("pad", INT32).konst().optional(),
        Param::new("output_shape", INT32).konst().optional(),
        Param::new("pad_type", STRING).konst().optional(),
        Param::new("strides", INT32).konst().optional(),
        Param::new("dilations", INT32).konst().optional(),
        Param::new("groups", INT32).konst().optional(),
    ],
    infer: infer_conv_transpose,
    eval: eval_conv_transpose,
};

fn infer_conv_transpose(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let w = a.fixed("weight")?;
    if w.len() < 3 || x.rank() != w.len() {
        return Err(a.invalid(format!("x {x} and weight {w:?} must both be rank ≥ 3 and equal")));
    }
    let n = w.len() - 2;
    let groups = a.int_or("groups", 1)?;
    if groups <= 0 {
        return Err(a.invalid("groups must be positive"));
    }
    let c_out = w[1] * groups as usize;
    if let Some(b) = a.opt_tensor("bias") {
        if b.shape != [Dim::Fixed(c_out)] {
            return Err(a.invalid(format!("bias {b} must be [{c_out}]")));
        }
    }
    if let Some(shape) = a.ints("output_shape")? {
        let dims = shape.iter().map(|&d| usize::try_from(d).map(Dim::Fixed)).collect::<Result<Vec<_>, _>>();
        return Ok(vec![TensorType { dtype: x.dtype, shape: dims.map_err(|_| a.invalid("negative output_shape"))? }]);
    }
    let ones = vec![1; n];
    let strides = a.ints("strides")?.unwrap_or_else(|| ones.clone());
    let dilations = a.ints("dilations")?.unwrap_or_else(|| ones.clone());
    let pad = a.ints("pad")?.unwrap_or_else(|| vec![0; 2 * n]);
    if strides.len() != n || dilations.len() != n || pad.len() != 2 * n {
        return Err(a.invalid(format!("{n} spatial axes need {n} strides/dilations and {} pads", 2 * n)));
    }
    let mut shape = vec![x.shape[0], Dim::Fixed(c_out)];
    for r in 0..n {
        let Dim::Fixed(i) = x.shape[2 + r] else {
            shape.push(Dim::Unknown);
            continue;
        };
        let k = (w[2 + r] as i64 - 1) * dilations[r] + 1;
        let o = match a.string("pad_type").unwrap_or("valid") {
            "same" => strides[r] * i as i64,
            "valid" => strides[r] * (i as i64 - 1) + k,
            "custom" => strides[r] * (i as i64 - 1) + k - pad[2 * r] - pad[2 * r + 1],
            t => return Err(a.invalid(format!("unsupported pad_type `{t}`"))),
        };
        if o <= 0 {
            return Err(a.invalid(format!("spatial axis {r} has output size {o}")));
        }
        shape.push(Dim::Fixed(o as usize));
    }
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

fn eval_conv_transpose(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let w = a.array("weight")?;
    if x.shape.len() < 3 || w.shape.len() != x.shape.len() {
        return Err(a.shape_error("x and weight must both be rank ≥ 3 and equal"));
    }
    let n = x.shape.len() - 2;
    let kernel = w.shape[2..].to_vec();
    let strides = per_axis(a, "strides", n, 1)?;
    let dilations = per_axis(a, "dilations", n, 1)?;
    let groups = usize::try_from(a.int_or("groups", 1)?).map_err(|_| a.invalid("negative groups"))?;
    let sp = &x.shape[2..];
    let full: Vec<usize> = (0..n).map(|r| strides[r] * (sp[r] - 1) + (kernel[r] - 1) * dilations[r] + 1).collect();
    let (mut before, mut after) = (vec![0; n], vec![0; n]);
    match a.string("pad_type").unwrap_or("valid") {
        "valid" => {}
        "custom" => {
            let pad = per_axis(a, "pad", 2 * n, 0)?;
            for r in 0..n {
                (before[r], after[r]) = (pad[2 * r], pad[2 * r + 1]);
            }
        }
        "same" => {
            for r in 0..n {
                let total = full[r].saturating_sub(strides[r] * sp[r]);
                (before[r], after[r]) = (total / 2, total - total / 2);
            }
        }
        t => return Err(a.invalid(format!("unsupported pad_type `{t}`"))),
    }
    let out_sp: Vec<usize> = match a.ints("output_shape")? {
        Some(s) if s.len() == n + 2 => s[2..].iter().map(|&d| d.max(0) as usize).collect(),
        Some(_) => return Err(a.invalid("output_shape must have rank + 2 entries")),
        None => (0..n).map(|r| full[r].saturating_sub(before[r] + after[r])).collect(),
    };
    let win = Window { kernel, strides, dilations, pad_before: before, pad_after: after };
    let filter = Filter { weight: a.floats("weight")?, shape: &w.shape, bias: a.opt_floats("bias")?, groups };
    let (y, shape) = numeric::conv::conv_transpose(a.floats("x")?, &x.shape, &filter, &win, &out_sp)
        .ok_or_else(|| a.shape_error("shapes do not fit"))?;
    Ok(vec![Array::float(x.dtype, shape, y)])
}

fn eval_pool(a: &EvalArgs, kind: Pool) -> Eval {
    let x = a.array("x")?;
    let kernel = a.ints("kernel_sizes")?.ok_or_else(|| a.invalid("missing kernel_sizes"))?;
    let kernel = kernel
        .iter()
        .map(|&k| usize::try_from(k).map_err(|_| a.invalid("negative kernel size")))
        .collect::<Result<Vec<_>, _>>()?;
    if x.shape.len() != kernel.len() + 2 {
        return Err(a.shape_error("kernel_sizes do not fit x"));
    }
    let sp = &x.shape[2..];
    let win = window(a, sp, kernel, "valid")?;
    let ceil = a.bool_or("ceil_mode", false)?;
    let out_sp = (0..sp.len())
        .map(|r| {
            numeric::conv::out_size(sp[r], win.kernel[r], win.strides[r], 1, win.pad_before[r] + win.pad_after[r], ceil)
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| a.shape_error("window larger than padded input"))?;
    let (y, shape) = numeric::conv::pool(a.floats("x")?, &x.shape, &win, &out_sp, kind)
        .ok_or_else(|| a.shape_error("shapes do not fit"))?;
    Ok(vec![Array::float(x.dtype, shape, y)])
}

fn eval_avg_pool(a: &EvalArgs) -> Eval {
    eval_pool(a, Pool::Avg { exclude_padding: a.bool_or("exclude_padding_from_average", false)? })
}

fn eval_max_pool(a: &EvalArgs) -> Eval {
    eval_pool(a, Pool::Max)
}
