//! ANE003 `batched-attention`: multi-head attention computed for all heads in one batched
//! `matmul` (or one `scaled_dot_product_attention`) over (B, H, S, D) tensors instead of one
//! small attention per head. Listed in `lint::RULES`.

use crate::lint::{show, Graph, Hit, Rule, Severity};
use crate::mil::Dim;

/// Axis of the heads in the (B, H, S, D) layout that `torch.nn.MultiheadAttention` and HF
/// models use after `split_heads`.
const HEAD_AXIS: usize = 1;

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE003",
    name: "batched-attention",
    severity: Severity::Warning,
    summary: "multi-head attention batched over a head axis instead of split per head",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
A `matmul` of two activations (neither is a weight) of rank 4 with more than one head on axis 1,
i.e. Q·Kᵀ or attention·V over (B, H, S, D), and `scaled_dot_product_attention` on such tensors.

## Why it matters
The (B, H, S, D) layout puts the small head dimension D last, where the ANE pads it to a 64-byte
row, and needs reshape + transpose around every attention to get there. Apple's ANE
transformers instead split Q, K and V per head and run one small attention per head on
(B, D, 1, S) slices; the per-head matmuls map to ANE-friendly einsums and the softmax runs over
the last axis without relayout.

## Example
```text
q: (1, 12, 128, 64, fp16)   k: (1, 12, 128, 64, fp16)
scores = matmul(x=q, y=k, transpose_y=true)      # all 12 heads at once
```
Quiet when each head is its own op:
```text
q_h: (1, 1, 128, 64, fp16)  k_h: (1, 1, 128, 64, fp16)
scores_h = matmul(x=q_h, y=k_h, transpose_y=true)
```

## Fix
Keep Q, K, V as (B, C, 1, S), `split` them into H chunks on axis 1, compute
`einsum('bchq,bkhc->bkhq')`, softmax and the value product per head, and `concat` the heads on
axis 1 (see `MultiHeadAttention` in github.com/apple/ml-ane-transformers).
"#;

fn heads(ty: &crate::mil::TensorType) -> Option<usize> {
    match ty.shape.get(HEAD_AXIS) {
        Some(Dim::Fixed(h)) if ty.rank() == 4 && *h > 1 => Some(*h),
        _ => None,
    }
}

fn check(g: &Graph) -> Vec<Hit> {
    let mut hits = Vec::new();
    for op in &g.ops {
        let (a, b) = match op.op_type.as_str() {
            "matmul" if !g.is_const(op, "x") && !g.is_const(op, "y") => ("x", "y"),
            "scaled_dot_product_attention" => ("query", "key"),
            _ => continue,
        };
        let (Some(ta), Some(tb)) = (g.arg_ty(op, a), g.arg_ty(op, b)) else { continue };
        let (Some(h), Some(_)) = (heads(&ta), heads(&tb)) else { continue };
        hits.push(Hit::on(
            op,
            format!("`{}` computes {h} attention heads in one batched op on {} and {}", op.op_type, show(Some(&ta)), show(Some(&tb))),
            format!("split q, k, v into {h} heads on the channel axis of (B, C, 1, S) and run one attention per head, then concat"),
        ));
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::hits;
    use crate::mil::builder::Builder;
    use crate::mil::ops::linear::MATMUL;
    use crate::mil::{DType, Opset, Tensor, TensorType};

    fn scores(heads: usize) -> crate::mil::Function {
        let mut b = Builder::new(Opset::Ios16);
        let q = b.input("q", TensorType::new(DType::F16, &[1, heads, 16, 8]));
        let k = b.input("k", TensorType::new(DType::F16, &[1, heads, 16, 8]));
        let s = b
            .op(&MATMUL, "scores")
            .arg("x", &q)
            .arg("y", &k)
            .konst("transpose_x", Tensor::bool_scalar(false))
            .konst("transpose_y", Tensor::bool_scalar(true))
            .build1()
            .unwrap();
        b.finish(&[s])
    }

    #[test]
    fn fires_on_matmul_over_all_heads() {
        let h = hits(&RULE, &scores(4));
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].message.contains("4 attention heads"), "{}", h[0].message);
    }

    #[test]
    fn quiet_on_one_head_per_op_and_weight_matmul() {
        assert!(hits(&RULE, &scores(1)).is_empty());
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F16, &[1, 4, 16, 8]));
        let y = b.op(&MATMUL, "proj").arg("x", &x).konst("y", Tensor::from_f32_as_f16(&[1, 4, 8, 8], &[0.0; 256])).build1().unwrap();
        assert!(hits(&RULE, &b.finish(&[y])).is_empty());
    }
}
