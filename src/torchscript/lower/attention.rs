//! Lowerings for transformer blocks: `scaled_dot_product_attention` (decomposed into matmul,
//! scale, mask, softmax, matmul, which every target has; the fused iOS18 op comes with the ANE
//! passes), and `addmm` (GPT-2's Conv1D), which becomes `linear` with the weight transposed once
//! at conversion.

use half::f16;

use super::{const_elements, dims_shown, float, Lower, Value};
use crate::mil::builder::Var;
use crate::mil::ops::{elementwise as ew, linear as lin};
use crate::mil::{DType, Tensor};

/// Score added where a boolean mask says "do not attend": large enough to zero the softmax
/// term, small enough that fp16 (max 65504) does not overflow when added to real scores.
pub const MASKED_SCORE: f32 = -30000.0;

fn built(r: Result<Var, crate::mil::ops::TypeError>) -> Result<Var, String> {
    r.map_err(|e| e.to_string())
}

/// `aten::scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)`.
/// Grouped-query attention (`enable_gqa`, as Llama/Qwen2/Mistral trace it: H query heads over
/// Hk < H key/value heads, query head h reading key head h / (H/Hk)) is computed without copying
/// keys: queries are viewed as [.., Hk, H/Hk, L, E] against keys [.., Hk, 1, S, E], and matmul
/// broadcasts the group axis.
pub fn sdpa(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (q, k, v) = (l.tensor(&a[0])?, l.tensor(&a[1])?, l.tensor(&a[2])?);
    let qs = l.shape(&q)?;
    let ks = l.shape(&k)?;
    let vs = l.shape(&v)?;
    let n = qs.len();
    if n < 2 || ks.len() != n || vs.len() != n {
        return Err(format!("query {}, key {} and value {} must have the same rank ≥ 2", dims_shown(&qs), dims_shown(&ks), dims_shown(&vs)));
    }
    let group = heads_group(&qs, &ks, &vs, a[7] == Value::Bool(true))?;
    let (lq, s, e) = (qs[n - 2], ks[n - 2], qs[n - 1]);
    let dt = l.ty(&q)?.dtype;
    let scale = match &a[6] {
        Value::None => 1.0 / (e as f64).sqrt(),
        v => float(v)?,
    };
    let hint = l.hint.clone();
    // With groups: q as [.., Hk, g, L, E], k and v as [.., Hk, 1, S, *].
    let (q, k, v) = match group {
        Some(g) => {
            let grouped = |s: &[usize], g: usize| -> Result<Vec<i32>, String> {
                let mut t = s[..n - 3].to_vec();
                t.extend([s[n - 3] / g, g, s[n - 2], s[n - 1]]);
                super::dims_i32(&t)
            };
            (
                reshape(l, &format!("{hint}_q_grouped"), &q, &grouped(&qs, g)?)?,
                reshape(l, &format!("{hint}_k_grouped"), &k, &grouped(&ks, 1)?)?,
                reshape(l, &format!("{hint}_v_grouped"), &v, &grouped(&vs, 1)?)?,
            )
        }
        None => (q, k, v),
    };
    let mut scores = built(l.b.op(&lin::MATMUL, &format!("{hint}_scores")).arg("x", &q).arg("y", &k).konst("transpose_x", Tensor::bool_scalar(false)).konst("transpose_y", Tensor::bool_scalar(true)).build1())?;
    if group.is_some() {
        // Back to [.., H, L, S], so masks broadcast as torch broadcasts them.
        let mut t = qs[..n - 1].to_vec();
        t.push(s);
        scores = reshape(l, &format!("{hint}_scores_heads"), &scores, &super::dims_i32(&t)?)?;
    }
    if scale != 1.0 {
        let c = l.scalar(dt, scale);
        scores = built(l.b.op(&ew::MUL, &format!("{hint}_scaled")).arg("x", &scores).arg("y", &c).build1())?;
    }
    if a[5] == Value::Bool(true) {
        // Query i may see key j ≤ i + S − L (written without the unsigned underflow when L > S).
        const_elements(&[lq, s])?;
        let causal: Vec<bool> = (0..lq).flat_map(|i| (0..s).map(move |j| j + lq <= i + s)).collect();
        let m = l.b.konst(&format!("{hint}_causal"), Tensor::from_bools(&[lq, s], &causal));
        scores = masked(l, &hint, &scores, &m, dt)?;
    }
    if let Value::Tensor(m) = &a[3] {
        scores = match l.ty(m)?.dtype {
            DType::Bool => masked(l, &hint, &scores, m, dt)?,
            _ => built(l.b.op(&ew::ADD, &format!("{hint}_masked")).arg("x", &scores).arg("y", m).build1())?,
        };
    }
    let mut probs = built(l.b.op(&ew::SOFTMAX, &format!("{hint}_probs")).arg("x", &scores).konst("axis", Tensor::i32_scalar(-1)).build1())?;
    let Some(g) = group else {
        return Ok(Value::Tensor(built(l.op(&lin::MATMUL).arg("x", &probs).arg("y", &v).build1())?));
    };
    let mut t = qs[..n - 3].to_vec();
    t.extend([qs[n - 3] / g, g, lq, s]);
    probs = reshape(l, &format!("{hint}_probs_grouped"), &probs, &super::dims_i32(&t)?)?;
    let out = built(l.b.op(&lin::MATMUL, &format!("{hint}_grouped")).arg("x", &probs).arg("y", &v).build1())?;
    let mut t = qs[..n - 1].to_vec();
    t.push(vs[n - 1]);
    let t = super::dims_i32(&t)?;
    Ok(Value::Tensor(built(l.op(&crate::mil::ops::shape::RESHAPE).arg("x", &out).konst("shape", Tensor::i32_vec(&t)).build1())?))
}

/// For grouped-query attention, how many query heads share one key/value head (`None` when the
/// batch dims of q, k and v agree). Torch requires `enable_gqa` for it, a head axis (rank ≥ 3,
/// the third from last) and a query head count that the key head count divides.
fn heads_group(qs: &[usize], ks: &[usize], vs: &[usize], enable_gqa: bool) -> Result<Option<usize>, String> {
    let n = qs.len();
    let (qb, kb, vb) = (&qs[..n - 2], &ks[..n - 2], &vs[..n - 2]);
    if ks[n - 2] != vs[n - 2] || qs[n - 1] != ks[n - 1] {
        return Err(format!("query {}, key {} and value {} do not fit together", dims_shown(qs), dims_shown(ks), dims_shown(vs)));
    }
    if qb == kb && kb == vb {
        return Ok(None);
    }
    let why = format!("query {}, key {} and value {}", dims_shown(qs), dims_shown(ks), dims_shown(vs));
    if !enable_gqa {
        return Err(format!("{why} differ in batch or heads, and enable_gqa is off"));
    }
    if n < 3 || kb != vb || qb[..n - 3] != kb[..n - 3] {
        return Err(format!("{why}: grouped-query attention needs the same batch dims and a head axis"));
    }
    let (h, hk) = (qs[n - 3], ks[n - 3]);
    if hk == 0 || h % hk != 0 {
        return Err(format!("{why}: {h} query heads are not a multiple of {hk} key/value heads"));
    }
    Ok(Some(h / hk))
}

fn reshape(l: &mut Lower, hint: &str, x: &Var, shape: &[i32]) -> Result<Var, String> {
    built(l.b.op(&crate::mil::ops::shape::RESHAPE, hint).arg("x", x).konst("shape", Tensor::i32_vec(shape)).build1())
}

fn masked(l: &mut Lower, hint: &str, scores: &Var, mask: &Var, dt: DType) -> Result<Var, String> {
    let fill = l.b.konst(&format!("{hint}_masked_score"), Tensor::float_scalar(dt, MASKED_SCORE));
    built(l.b.op(&ew::SELECT, &format!("{hint}_masked")).arg("cond", mask).arg("a", scores).arg("b", &fill).build1())
}

/// `aten::addmm(self, mat1, mat2, beta, alpha)` = beta·self + alpha·(mat1 @ mat2).
pub fn addmm(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    if float(&a[3])? != 1.0 || float(&a[4])? != 1.0 {
        return Err("addmm with beta or alpha other than 1 is not supported".into());
    }
    let (bias, x, w) = (l.tensor(&a[0])?, l.tensor(&a[1])?, l.tensor(&a[2])?);
    let Some(wt) = l.b.value(&w).map(transpose_2d).transpose()? else {
        let y = built(l.op(&lin::MATMUL).arg("x", &x).arg("y", &w).build1())?;
        return Ok(Value::Tensor(built(l.op(&ew::ADD).arg("x", &y).arg("y", &bias).build1())?));
    };
    let hint = format!("{}_weight_t", l.hint);
    let wt = l.b.konst(&hint, wt);
    Ok(Value::Tensor(built(l.op(&lin::LINEAR).arg("x", &x).arg("weight", &wt).arg("bias", &bias).build1())?))
}

/// A 2-D fp16/fp32 tensor transposed on the host (weights only; done once at conversion).
fn transpose_2d(t: &Tensor) -> Result<Tensor, String> {
    let [r, c] = t.shape() else { return Err(format!("addmm weight must be 2-D, got {}", dims_shown(t.shape()))) };
    let (r, c) = (*r, *c);
    let v = t.to_f32_vec().ok_or("addmm weight is not float")?;
    let out: Vec<f32> = (0..c).flat_map(|j| (0..r).map(move |i| (i, j))).map(|(i, j)| v.get(i * c + j).copied().unwrap_or(0.0)).collect();
    Ok(match t.dtype() {
        DType::F16 => {
            let bytes = out.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect();
            Tensor::from_bytes(DType::F16, &[c, r], bytes).map_err(|e| e.to_string())?
        }
        _ => Tensor::from_f32(&[c, r], &out),
    })
}

/// The first `rows` rows starting at `start` of a const weight, as its own tensor (host slice).
fn rows(t: &Tensor, start: usize, count: usize) -> Result<Tensor, String> {
    let shape = t.shape();
    let Some((_, rest)) = shape.split_first() else { return Err("a packed attention weight must have rows, not be a scalar".into()) };
    let row = crate::mil::types::checked_elements(rest).ok_or("weight too large")?;
    let bytes_per = t.dtype().storage_bytes(row).ok_or("weight too large")?;
    let all = t.bytes();
    let range = start.checked_add(count).and_then(|end| Some(start.checked_mul(bytes_per)?..end.checked_mul(bytes_per)?));
    let b = range.and_then(|r| all.get(r)).ok_or("weight rows out of range")?;
    let mut s = shape.to_vec();
    s[0] = count;
    Tensor::from_bytes(t.dtype(), &s, b.to_vec()).map_err(|e| e.to_string())
}

/// `aten::_native_multi_head_attention(q, k, v, embed_dim, num_head, qkv_weight, qkv_bias,
/// proj_weight, proj_bias, mask, need_weights…)`: the fused path `nn.MultiheadAttention` takes
/// in eval mode, rebuilt as q/k/v `linear`s, per-head SDPA and the output projection. Returns
/// `(output, None)`; attention weights are not produced.
pub fn native_mha(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    use crate::mil::ops::shape;
    if a[10] == Value::Bool(true) {
        return Err("need_weights=True is not supported".into());
    }
    if a[9] != Value::None {
        return Err("a mask on the fused attention path is not supported yet".into());
    }
    let positive = |v: &Value, what: &str| {
        let i = super::int(v)?;
        usize::try_from(i).ok().filter(|&n| n > 0 && i32::try_from(n).is_ok()).ok_or_else(|| format!("{what} {i} is not a positive int32"))
    };
    let (e, h) = (positive(&a[3], "embed_dim")?, positive(&a[4], "num_head")?);
    if e % h != 0 {
        return Err(format!("embed_dim {e} is not divisible by {h} heads"));
    }
    let (w, b) = (l.tensor(&a[5])?, l.tensor(&a[6])?);
    let (w, b) = (l.b.value(&w).cloned().ok_or("in_proj_weight must be a weight")?, l.b.value(&b).cloned().ok_or("in_proj_bias must be a weight")?);
    let hint = l.hint.clone();
    let mut heads = Vec::new();
    for (i, name) in ["q", "k", "v"].iter().enumerate() {
        let x = l.tensor(&a[i])?;
        let s = l.shape(&x)?;
        let [bsz, len, _] = s[..] else { return Err(format!("attention input must be [batch, seq, embed], got {}", dims_shown(&s))) };
        // i ≤ 2 and e fits in int32: no overflow.
        let wi = l.b.konst(&format!("{hint}_{name}_weight"), rows(&w, i * e, e)?);
        let bi = l.b.konst(&format!("{hint}_{name}_bias"), rows(&b, i * e, e)?);
        let p = built(l.b.op(&lin::LINEAR, &format!("{hint}_{name}")).arg("x", &x).arg("weight", &wi).arg("bias", &bi).build1())?;
        let shape_v = super::dims_i32(&[bsz, len, h, e / h])?;
        let p = built(l.b.op(&shape::RESHAPE, &format!("{hint}_{name}_heads")).arg("x", &p).konst("shape", Tensor::i32_vec(&shape_v)).build1())?;
        let p = built(l.b.op(&shape::TRANSPOSE, &format!("{hint}_{name}_t")).arg("x", &p).konst("perm", Tensor::i32_vec(&[0, 2, 1, 3])).build1())?;
        heads.push(Value::Tensor(p));
    }
    let args = [heads[0].clone(), heads[1].clone(), heads[2].clone(), Value::None, Value::Float(0.0), Value::Bool(false), Value::None, Value::Bool(false)];
    let Value::Tensor(ctx) = sdpa(l, &args)? else { return Err("attention produced no tensor".into()) };
    let q = l.tensor(&a[0])?;
    let qs = l.shape(&q)?;
    let ctx = built(l.b.op(&shape::TRANSPOSE, &format!("{hint}_ctx_t")).arg("x", &ctx).konst("perm", Tensor::i32_vec(&[0, 2, 1, 3])).build1())?;
    let (Some(&b0), Some(&b1)) = (qs.first(), qs.get(1)) else { return Err("attention query lost its batch and sequence axes".into()) };
    let merged = super::dims_i32(&[b0, b1, e])?;
    let ctx = built(l.b.op(&shape::RESHAPE, &format!("{hint}_ctx")).arg("x", &ctx).konst("shape", Tensor::i32_vec(&merged)).build1())?;
    let (pw, pb) = (l.tensor(&a[7])?, l.tensor(&a[8])?);
    let out = built(l.op(&lin::LINEAR).arg("x", &ctx).arg("weight", &pw).arg("bias", &pb).build1())?;
    Ok(Value::Tuple(vec![Value::Tensor(out), Value::None]))
}
