//! Fused attention: `scaled_dot_product_attention` (iOS18). Semantics: coremltools
//! `defs/iOS18/transformers.py` — `softmax(Q·Kᵀ/√E + mask)·V`, a bool mask turning `False`
//! into −∞. The kernel runs both products through `numeric::gemm`.

use super::{broadcast, Array, Data, EvalArgs, EvalError, OpArgs, OpDef, Param, TypeError, FLOAT};
use crate::mil::types::{DType, Dim, TensorType};
use crate::mil::Opset;
use crate::numeric;

/// `scaled_dot_product_attention`: query `[*B, L, E]`, key `[*B, S, E]`, value `[*B, S, Ev]`,
/// optional `attn_mask` broadcastable to `[*B, L, S]` (bool: keep where true; float: added).
pub const SCALED_DOT_PRODUCT_ATTENTION: OpDef = OpDef {
    name: "scaled_dot_product_attention",
    since: Opset::Ios18,
    params: &[
        Param::t("query", FLOAT),
        Param::t("key", FLOAT),
        Param::t("value", FLOAT),
        Param::new("attn_mask", &[DType::Bool, DType::F16, DType::F32]).optional(),
    ],
    infer: infer_sdpa,
    eval: eval_sdpa,
};

fn infer_sdpa(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (q, k, v) = (a.tensor("query")?, a.tensor("key")?, a.tensor("value")?);
    if q.rank() < 3 || k.rank() != q.rank() || v.rank() != q.rank() {
        return Err(a.invalid("query, key and value must have one rank ≥ 3"));
    }
    let r = q.rank();
    if let (Dim::Fixed(e1), Dim::Fixed(e2)) = (q.shape[r - 1], k.shape[r - 1]) {
        if e1 != e2 {
            return Err(a.invalid(format!("query and key embeddings differ ({e1} vs {e2})")));
        }
    }
    if let (Dim::Fixed(s1), Dim::Fixed(s2)) = (k.shape[r - 2], v.shape[r - 2]) {
        if s1 != s2 {
            return Err(a.invalid(format!("key and value lengths differ ({s1} vs {s2})")));
        }
    }
    if let Some(m) = a.opt_tensor("attn_mask") {
        if let (Some(Dim::Fixed(sm)), Dim::Fixed(sk)) = (m.shape.last(), k.shape[r - 2]) {
            if *sm != sk {
                return Err(a.invalid(format!("mask length {sm} != key length {sk}")));
            }
        }
        broadcast(a, &q.shape[..r - 1], &m.shape[..m.rank().saturating_sub(1)])?;
    }
    let mut shape = q.shape[..r - 1].to_vec();
    shape.push(v.shape[r - 1]);
    Ok(vec![TensorType { dtype: q.dtype, shape }])
}

fn eval_sdpa(a: &EvalArgs) -> Result<Vec<Array>, EvalError> {
    let (q, k, v) = (a.array("query")?, a.array("key")?, a.array("value")?);
    let bad = || a.shape_error("shapes do not fit");
    let e = *q.shape.last().ok_or_else(bad)?;
    let (mut scores, s_shape) =
        numeric::gemm::matmul(a.floats("query")?, &q.shape, a.floats("key")?, &k.shape, false, true).ok_or_else(bad)?;
    let scale = 1.0 / (e as f64).sqrt();
    scores.iter_mut().for_each(|x| *x = (f64::from(*x) * scale) as f32);
    if let Some(m) = a.get("attn_mask") {
        let add: Vec<f32> = match &m.data {
            Data::Bool(b) => b.iter().map(|&keep| if keep { 0.0 } else { f32::NEG_INFINITY }).collect(),
            Data::F32(f) => f.clone(),
            _ => return Err(a.invalid("attn_mask must be bool or float")),
        };
        let (sum, shape) =
            numeric::broadcast::binary(&scores, &s_shape, &add, &m.shape, |x, y| x + y).ok_or_else(bad)?;
        if shape != s_shape {
            return Err(bad());
        }
        scores = sum;
    }
    let last = s_shape.len() - 1;
    numeric::reduce::softmax(&mut scores, &s_shape, last);
    let (out, shape) =
        numeric::gemm::matmul(&scores, &s_shape, a.floats("value")?, &v.shape, false, false).ok_or_else(bad)?;
    Ok(vec![Array::float(q.dtype, shape, out)])
}
