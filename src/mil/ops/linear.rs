//! Linear algebra and sliding-window ops: `linear`, `matmul`, `conv`, `avg_pool`, `max_pool`.
//! Semantics: coremltools `defs/iOS15/linear.py`, `conv.py`, `pool.py`, and the spatial output
//! rule of `defs/_utils.py::spatial_dimensions_out_shape`.

use super::{broadcast, OpArgs, OpDef, Param, TypeError, BOOL, FLOAT, INT32, NUMERIC, STRING};
use crate::mil::types::{Dim, TensorType};
use crate::mil::Opset;

/// `linear`: `x · weightᵀ + bias` over the last axis; weight `[D_out, D_in]`.
/// Rewritten to a 1×1 `conv` by the ANE passes.
pub const LINEAR: OpDef = OpDef {
    name: "linear",
    since: Opset::Ios15,
    params: &[Param::t("x", NUMERIC), Param::t("weight", NUMERIC).konst(), Param::t("bias", NUMERIC).konst().optional()],
    infer: infer_linear,
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
};

fn infer_matmul(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (x, y) = (a.tensor("x")?, a.tensor("y")?);
    let (mut xs, mut ys) = (x.shape.clone(), y.shape.clone());
    if xs.is_empty() || ys.is_empty() {
        return Err(a.invalid("matmul operands must have rank ≥ 1"));
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
