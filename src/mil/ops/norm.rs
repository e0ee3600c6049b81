//! Normalization ops: `layer_norm`, `batch_norm`, `instance_norm`. Semantics: coremltools
//! `defs/iOS15/normalization.py` (`layer_norm.value_inference` is the spec: biased variance,
//! epsilon inside the square root). Means and variances accumulate in f64.

use super::{Array, EvalArgs, EvalError, OpArgs, OpDef, Param, TypeError, FLOAT, INT32};
use crate::mil::types::{Dim, TensorType};
use crate::mil::Opset;
use crate::numeric;

type Eval = Result<Vec<Array>, EvalError>;

/// Default `epsilon` of `layer_norm`, `batch_norm` and `instance_norm` (coremltools `default_inputs`).
pub const NORM_EPSILON: f32 = 1e-5;

/// `layer_norm`: normalize over `axes` (default all), then `gamma`·x̂ + `beta` (shaped like those axes).
pub const LAYER_NORM: OpDef = OpDef {
    name: "layer_norm",
    since: Opset::Ios15,
    params: &[
        Param::t("x", FLOAT),
        Param::new("axes", INT32).konst().optional(),
        Param::t("gamma", FLOAT).konst().optional(),
        Param::t("beta", FLOAT).konst().optional(),
        Param::t("epsilon", FLOAT).konst().optional(),
    ],
    infer: infer_layer_norm,
    eval: eval_layer_norm,
};

fn infer_layer_norm(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let axes = match a.ints("axes")? {
        Some(v) => v.iter().map(|&ax| a.axis(ax, x.rank())).collect::<Result<Vec<_>, _>>()?,
        None => (0..x.rank()).collect(),
    };
    let normalized: Vec<Dim> = {
        let mut s = axes.clone();
        s.sort_unstable();
        s.iter().map(|&i| x.shape[i]).collect()
    };
    for p in ["gamma", "beta"] {
        if let Some(t) = a.opt_tensor(p) {
            if t.shape != normalized {
                return Err(a.invalid(format!("{p} shape {t} must match the normalized axes")));
            }
        }
    }
    Ok(vec![x.clone()])
}

/// `batch_norm`: per-channel (axis 1) `(x − mean)/sqrt(variance + ε)·gamma + beta`; x rank 3–5.
pub const BATCH_NORM: OpDef = OpDef {
    name: "batch_norm",
    since: Opset::Ios15,
    params: &[
        Param::t("x", FLOAT),
        Param::t("mean", FLOAT).konst(),
        Param::t("variance", FLOAT).konst(),
        Param::t("gamma", FLOAT).konst().optional(),
        Param::t("beta", FLOAT).konst().optional(),
        Param::t("epsilon", FLOAT).konst().optional(),
    ],
    infer: infer_batch_norm,
    eval: eval_batch_norm,
};

fn infer_batch_norm(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    if !(3..=5).contains(&x.rank()) {
        return Err(a.invalid(format!("x must be rank 3 to 5, got {x}")));
    }
    for p in ["mean", "variance", "gamma", "beta"] {
        if let Some(t) = a.opt_tensor(p) {
            if t.shape != [x.shape[1]] && x.shape[1] != Dim::Unknown {
                return Err(a.invalid(format!("{p} shape {t} must be [C]")));
            }
        }
    }
    Ok(vec![x.clone()])
}

/// `(x − mean) / sqrt(var + eps)` over `axes`, then `· scale + shift`, where `scale`/`shift`
/// are read through `param_strides` (one stride per axis of x; 0 where they do not vary).
fn normalize(
    x: &[f32],
    shape: &[usize],
    axes: &[usize],
    eps: f32,
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
    param_strides: &[isize],
) -> Vec<f32> {
    let cells = numeric::reduce::cell_of(shape, axes);
    let n_cells = numeric::numel(&numeric::reduce::reduced_shape(shape, axes, true));
    let count = axes.iter().map(|&a| shape[a]).product::<usize>().max(1) as f64;
    let mut mean = vec![0.0f64; n_cells];
    for (&v, &c) in x.iter().zip(&cells) {
        mean[c] += f64::from(v);
    }
    mean.iter_mut().for_each(|m| *m /= count);
    let mut var = vec![0.0f64; n_cells];
    for (&v, &c) in x.iter().zip(&cells) {
        let d = f64::from(v) - mean[c];
        var[c] += d * d;
    }
    let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v / count + f64::from(eps)).sqrt()).collect();
    let pidx = numeric::offsets(shape, param_strides, 0);
    x.iter()
        .zip(&cells)
        .zip(pidx)
        .map(|((&v, &c), p)| {
            let mut y = (f64::from(v) - mean[c]) * inv[c];
            if let Some(g) = scale {
                y *= f64::from(g[p]);
            }
            if let Some(b) = shift {
                y += f64::from(b[p]);
            }
            y as f32
        })
        .collect()
}

/// [`normalize`] when the normalized axes are consecutive: x is (outer, n, inner), each
/// (outer, inner) column is normalized over its n rows, and gamma/beta are indexed by the row.
/// Rows are read contiguously (the (B, C, 1, S) layer norm reduces over C with S-long rows);
/// the arithmetic is [`normalize`]'s, so the results are the same.
fn normalize_block(
    x: &[f32],
    (outer, n, inner): (usize, usize, usize),
    eps: f32,
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
) -> Vec<f32> {
    let count = n.max(1) as f64;
    let mut y = vec![0.0f32; x.len()];
    let affine = |t: f64, j: usize| {
        let t = scale.map_or(t, |g| t * f64::from(g[j]));
        shift.map_or(t, |b| t + f64::from(b[j]))
    };
    if inner == 1 {
        // Normalizing the last axis: each row is one contiguous group.
        for (row, out) in x.chunks(n.max(1)).zip(y.chunks_mut(n.max(1))) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / count;
            let var = row.iter().map(|&v| (f64::from(v) - mean) * (f64::from(v) - mean)).sum::<f64>();
            let inv = 1.0 / (var / count + f64::from(eps)).sqrt();
            for (j, (o, &v)) in out.iter_mut().zip(row).enumerate() {
                *o = affine((f64::from(v) - mean) * inv, j) as f32;
            }
        }
        return y;
    }
    let (mut mean, mut var) = (vec![0.0f64; inner], vec![0.0f64; inner]);
    for (xo, yo) in x.chunks(n * inner).zip(y.chunks_mut(n * inner)).take(outer) {
        mean.fill(0.0);
        var.fill(0.0);
        for row in xo.chunks(inner) {
            mean.iter_mut().zip(row).for_each(|(m, &v)| *m += f64::from(v));
        }
        mean.iter_mut().for_each(|m| *m /= count);
        for row in xo.chunks(inner) {
            for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                let d = f64::from(v) - m;
                *s += d * d;
            }
        }
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v / count + f64::from(eps)).sqrt()).collect();
        for (j, (row, out)) in xo.chunks(inner).zip(yo.chunks_mut(inner)).enumerate() {
            for (((o, &v), m), k) in out.iter_mut().zip(row).zip(&mean).zip(&inv) {
                *o = affine((f64::from(v) - m) * k, j) as f32;
            }
        }
    }
    y
}

fn check_len(a: &EvalArgs, v: Option<&[f32]>, n: usize, what: &str) -> Result<(), EvalError> {
    match v {
        Some(v) if v.len() != n => Err(a.invalid(format!("{what} has {} values, expected {n}", v.len()))),
        _ => Ok(()),
    }
}

fn eval_layer_norm(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let axes = a.axes(a.ints("axes")?, x.shape.len())?;
    let (gamma, beta) = (a.opt_floats("gamma")?, a.opt_floats("beta")?);
    let n: usize = axes.iter().map(|&i| x.shape[i]).product();
    check_len(a, gamma, n, "gamma")?;
    check_len(a, beta, n, "beta")?;
    let eps = a.float_or("epsilon", NORM_EPSILON)?;
    if axes.windows(2).all(|w| w[1] == w[0] + 1) && !axes.is_empty() {
        let outer: usize = x.shape[..axes[0]].iter().product();
        let inner: usize = x.shape[axes[axes.len() - 1] + 1..].iter().product();
        let y = normalize_block(a.floats("x")?, (outer, n, inner), eps, gamma, beta);
        return Ok(vec![Array::float(x.dtype, x.shape.clone(), y)]);
    }
    // gamma/beta are laid out over the normalized axes in order.
    let normalized: Vec<usize> = axes.iter().map(|&i| x.shape[i]).collect();
    let ns = numeric::strides(&normalized);
    let ps: Vec<isize> =
        (0..x.shape.len()).map(|i| axes.iter().position(|&ax| ax == i).map_or(0, |j| ns[j] as isize)).collect();
    let y = normalize(a.floats("x")?, &x.shape, &axes, eps, gamma, beta, &ps);
    Ok(vec![Array::float(x.dtype, x.shape.clone(), y)])
}

/// Per-channel (axis 1) strides for `[C]`-shaped parameters.
fn channel_strides(rank: usize) -> Vec<isize> {
    (0..rank).map(|i| isize::from(i == 1)).collect()
}

fn eval_batch_norm(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let (mean, var) = (a.floats("mean")?, a.floats("variance")?);
    let c = *x.shape.get(1).ok_or_else(|| a.shape_error("x needs a channel axis"))?;
    let (gamma, beta) = (a.opt_floats("gamma")?, a.opt_floats("beta")?);
    for (v, what) in [(Some(mean), "mean"), (Some(var), "variance"), (gamma, "gamma"), (beta, "beta")] {
        check_len(a, v, c, what)?;
    }
    let eps = f64::from(a.float_or("epsilon", NORM_EPSILON)?);
    // Per channel: y = (x − mean)·scale + shift, scale = gamma/√(var + eps) (computed in f64).
    let scale: Vec<f32> =
        (0..c).map(|k| (gamma.map_or(1.0, |g| f64::from(g[k])) / (f64::from(var[k]) + eps).sqrt()) as f32).collect();
    let shift: Vec<f32> = (0..c).map(|k| beta.map_or(0.0, |b| b[k])).collect();
    let inner: usize = x.shape[2..].iter().product();
    let mut y = a.floats("x")?.to_vec();
    for (i, plane) in y.chunks_mut(inner.max(1)).enumerate() {
        let k = i % c;
        plane.iter_mut().for_each(|v| *v = (*v - mean[k]) * scale[k] + shift[k]);
    }
    Ok(vec![Array::float(x.dtype, x.shape.clone(), y)])
}

/// `instance_norm`: per sample and channel, normalize over the spatial axes (x rank 3 or 4),
/// then per-channel `gamma`·x̂ + `beta`.
pub const INSTANCE_NORM: OpDef = OpDef {
    name: "instance_norm",
    since: Opset::Ios15,
    params: &[
        Param::t("x", FLOAT),
        Param::t("gamma", FLOAT).konst().optional(),
        Param::t("beta", FLOAT).konst().optional(),
        Param::t("epsilon", FLOAT).konst().optional(),
    ],
    infer: infer_instance_norm,
    eval: eval_instance_norm,
};

fn infer_instance_norm(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    if !(3..=4).contains(&x.rank()) {
        return Err(a.invalid(format!("x must be rank 3 or 4, got {x}")));
    }
    for p in ["gamma", "beta"] {
        if let Some(t) = a.opt_tensor(p) {
            if t.shape != [x.shape[1]] && x.shape[1] != Dim::Unknown {
                return Err(a.invalid(format!("{p} shape {t} must be [C]")));
            }
        }
    }
    Ok(vec![x.clone()])
}

fn eval_instance_norm(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let c = *x.shape.get(1).ok_or_else(|| a.shape_error("x needs a channel axis"))?;
    let (gamma, beta) = (a.opt_floats("gamma")?, a.opt_floats("beta")?);
    check_len(a, gamma, c, "gamma")?;
    check_len(a, beta, c, "beta")?;
    let axes: Vec<usize> = (2..x.shape.len()).collect();
    let ps = channel_strides(x.shape.len());
    let y = normalize(a.floats("x")?, &x.shape, &axes, a.float_or("epsilon", NORM_EPSILON)?, gamma, beta, &ps);
    Ok(vec![Array::float(x.dtype, x.shape.clone(), y)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_layer_norm_equals_the_general_one() {
        let shape = [2, 3, 4, 5];
        let x: Vec<f32> = (0..120).map(|i| ((i * 29 % 31) as f32 - 15.0) / 4.0).collect();
        for axes in [vec![1usize, 2], vec![3], vec![1, 2, 3]] {
            let n: usize = axes.iter().map(|&i| shape[i]).product();
            let g: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / 10.0).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 / 3.0 - 1.0).collect();
            let normalized: Vec<usize> = axes.iter().map(|&i| shape[i]).collect();
            let ns = numeric::strides(&normalized);
            let ps: Vec<isize> = (0..4).map(|i| axes.iter().position(|&ax| ax == i).map_or(0, |j| ns[j] as isize)).collect();
            let general = normalize(&x, &shape, &axes, 1e-5, Some(&g), Some(&b), &ps);
            let outer: usize = shape[..axes[0]].iter().product();
            let inner: usize = shape[axes[axes.len() - 1] + 1..].iter().product();
            assert_eq!(normalize_block(&x, (outer, n, inner), 1e-5, Some(&g), Some(&b)), general, "axes {axes:?}");
        }
    }
}
