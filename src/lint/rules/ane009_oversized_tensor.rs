//! ANE009 `oversized-tensor`: a tensor with a dimension or rank beyond what the ANE supports.
//! Listed in `lint::RULES`.

use crate::lint::{is_const_op, Graph, Hit, Rule, Severity};
use crate::mil::{Dim, TensorType};

/// Largest size of any one axis the ANE accepts (Core ML falls back to GPU/CPU above it; e.g. a
/// GPT-2 vocabulary of 50257 logits).
pub const ANE_MAX_DIM: usize = 16384;

/// Highest tensor rank the ANE accepts.
pub const ANE_MAX_RANK: usize = 5;

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE009",
    name: "oversized-tensor",
    severity: Severity::Warning,
    summary: "tensor with an axis over 16384 or rank over 5, beyond the ANE's limits",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
Model inputs and op outputs with an axis longer than 16384 or a rank above 5 (weights are
exempt: they are checked by ANE010 when gathered).

## Why it matters
The ANE cannot hold such tensors; Core ML runs the ops that produce or consume them on the GPU or
CPU. The common case is a language-model head whose logits axis is the vocabulary (50257 for
GPT-2).

## Example
```text
logits = linear(h: (1, 64, 768, fp16), weight: (50257, 768))   # (1, 64, 50257)
```

## Fix
Split the long axis into chunks of at most 16384 (several `linear`s and a `concat`, or return
the chunks as separate outputs), or compute the head outside the model; merge axes to stay at
rank 5 or below.
"#;

fn problem(ty: &TensorType) -> Option<String> {
    if ty.rank() > ANE_MAX_RANK {
        return Some(format!("rank {} > {ANE_MAX_RANK}", ty.rank()));
    }
    let (axis, n) = ty.shape.iter().enumerate().find_map(|(i, d)| match d {
        Dim::Fixed(n) if *n > ANE_MAX_DIM => Some((i, *n)),
        _ => None,
    })?;
    Some(format!("axis {axis} is {n} > {ANE_MAX_DIM}"))
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
    }
}
