//! Normalization ops: `layer_norm` and `batch_norm`. Semantics: coremltools
//! `defs/iOS15/normalization.py`.

use super::{OpArgs, OpDef, Param, TypeError, FLOAT, INT32};
use crate::mil::types::{Dim, TensorType};
use crate::mil::Opset;

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
