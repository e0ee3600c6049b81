//! ANE009 `oversized-tensor`: a tensor with a dimension or rank beyond what the ANE supports.
//! Listed in `lint::RULES`.

use crate::lint::{is_const_op, Graph, Hit, Rule, Severity};
use crate::mil::{Dim, TensorType};

/// Largest size of an axis the ANE accepts, except the channel axis of a (B, C, H, W) tensor:
/// H, W ≤ 16384 in ANEMLL's rules, and the limit onnxruntime's Core ML provider applies to every
/// axis (after coremltools#1003). Above it Core ML runs the op on the GPU or CPU, e.g. for a
/// GPT-2 vocabulary of 50257 logits on the last axis. Community-measured; sources in `--explain`.
pub const ANE_MAX_DIM: usize = 16384;

/// Largest channel axis (axis 1 of a rank-4 (B, C, H, W) tensor) the ANE accepts (ANEMLL's rules).
pub const ANE_MAX_CHANNELS: usize = 65536;

/// The axis that may be as long as [`ANE_MAX_CHANNELS`] in a tensor of [`CHANNEL_RANK`].
const CHANNEL_AXIS: usize = 1;
/// Rank of the (B, C, H, W) tensors whose axis [`CHANNEL_AXIS`] is the channel axis.
const CHANNEL_RANK: usize = 4;

/// Highest tensor rank the ANE accepts (its compiler: "Rank ... must be between 0 and 5").
pub const ANE_MAX_RANK: usize = 5;

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE009",
    name: "oversized-tensor",
    severity: Severity::Warning,
    summary: "tensor with an axis over 16384 (channels over 65536) or rank over 5, beyond the ANE's limits",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
Model inputs and op outputs with a rank above 5, or an axis longer than 16384, except the
channel axis of a rank-4 (B, C, H, W) tensor, which may reach 65536 (weights are exempt: they
are checked by ANE010 when gathered).

## Why it matters
The ANE cannot hold such tensors; Core ML runs the ops that produce or consume them on the GPU or
CPU. The common case is a language-model head whose logits axis is the vocabulary (50257 for
GPT-2).

## Sources, and how sure each limit is
Apple documents none of these limits; all are community-measured:
- 16384 per axis: a model with an input dimension above 16384 failed to load in Core ML
  (https://github.com/apple/coremltools/issues/1003, 2020, NeuralNetwork format); onnxruntime's
  Core ML provider cites it and refuses every tensor with such an axis
  (https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/core/providers/coreml/builders/helper.cc).
- 65536 for channels: ANEMLL, which ships LLMs on the ANE, allows (N, C, H, W) tensors with
  H and W up to 16384 and C up to 65536 (contributor rules in https://github.com/Anemll/Anemll).
  onnxruntime applies 16384 to every axis; this rule follows ANEMLL for the channel axis of
  rank-4 tensors, the layout the ANE passes produce, and 16384 elsewhere.
- Rank 5: the ANE compiler rejects rank 6 ("Rank ... must be between 0 and 5",
  https://aneforge.readthedocs.io/en/latest/api/graph/), and onnxruntime refuses rank > 5 for
  Core ML, citing https://github.com/apple/coremltools/issues/832. ANEMLL's own rules keep
  rank ≤ 4.
Confirm on a device with Xcode's Core ML performance report.

## Example
```text
logits = linear(h: (1, 64, 768, fp16), weight: (50257, 768))   # (1, 64, 50257)
```

## Fix
Split the long axis into chunks of at most 16384 (several `linear`s and a `concat`, or return
the chunks as separate outputs), put it on the channel axis of a (B, C, 1, S) tensor (up to
65536), or compute the head outside the model; merge axes to stay at rank 5 or below.
"#;

fn problem(ty: &TensorType) -> Option<String> {
    if ty.rank() > ANE_MAX_RANK {
        return Some(format!("rank {} > {ANE_MAX_RANK}", ty.rank()));
    }
    let limit = |axis: usize| if ty.rank() == CHANNEL_RANK && axis == CHANNEL_AXIS { ANE_MAX_CHANNELS } else { ANE_MAX_DIM };
    let (axis, n) = ty.shape.iter().enumerate().find_map(|(i, d)| match d {
        Dim::Fixed(n) if *n > limit(i) => Some((i, *n)),
        _ => None,
    })?;
    Some(format!("axis {axis} is {n} > {}", limit(axis)))
}

fn check(g: &Graph) -> Vec<Hit> {
    let mut hits = Vec::new();
    let fix =
        || format!("split the axis into chunks of at most {ANE_MAX_DIM} (or compute it outside the model); keep rank ≤ {ANE_MAX_RANK}");
    for i in &g.function.inputs {
        if let Some(p) = problem(i.ty.tensor()) {
            hits.push(Hit {
                op_name: i.name.clone(),
                op_type: "input".into(),
                message: format!("model input `{}` {}: {p}", i.name, i.ty),
                fix: fix(),
            });
        }
    }
    for op in g.ops.iter().filter(|o| !is_const_op(o)) {
        let Some((out, p)) = op.outputs.iter().find_map(|o| Some((o, problem(o.ty.tensor())?))) else { continue };
        hits.push(Hit::on(op, format!("`{}` output `{}` {}: {p}", op.op_type, out.name, out.ty), fix()));
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::{hits, relu_on};


    #[test]
    fn fires_on_vocabulary_axis() {
        let h = hits(&RULE, &relu_on(&[1, 50257]));
        assert_eq!(h.len(), 2, "input and relu: {h:?}");
        assert!(h[1].message.contains("axis 1 is 50257"), "{}", h[1].message);
    }

    #[test]
    fn quiet_at_the_limits() {
        assert!(hits(&RULE, &relu_on(&[1, 1, 1, 2, ANE_MAX_DIM])).is_empty());
        assert!(hits(&RULE, &relu_on(&[1, ANE_MAX_CHANNELS, 1, 64])).is_empty(), "channels of (B, C, H, W)");
    }

    #[test]
    fn fires_on_channels_over_65536_and_rank_6() {
        let h = hits(&RULE, &relu_on(&[1, ANE_MAX_CHANNELS + 1, 1, 64]));
        assert!(h.iter().any(|h| h.message.contains("axis 1 is 65537 > 65536")), "{h:?}");
        let h = hits(&RULE, &relu_on(&[1, ANE_MAX_DIM + 1, 64]));
        assert!(h.iter().any(|h| h.message.contains("axis 1 is 16385 > 16384")), "not a rank-4 channel axis: {h:?}");
        let h = hits(&RULE, &relu_on(&[1, 1, 1, 1, 1, 2]));
        assert!(h.iter().any(|h| h.message.contains("rank 6 > 5")), "{h:?}");
    }
}
