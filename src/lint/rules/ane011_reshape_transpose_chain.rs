//! ANE011 `reshape-transpose-chain`: three or more layout ops (reshape, transpose, squeeze,
//! expand_dims) in a row, each copying the whole tensor. Listed in `lint::RULES`.

use std::collections::{HashMap, HashSet};

use crate::lint::{Graph, Hit, Rule, Severity};

/// Ops that only move data between layouts.
const LAYOUT_OPS: &[&str] = &["reshape", "transpose", "squeeze", "expand_dims", "reshape_like"];

/// Shortest chain flagged: one reshape + transpose pair is the normal cost of a head split;
/// a third op in a row means the layouts of the two ends disagree.
pub const MIN_CHAIN: usize = 3;

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE011",
    name: "reshape-transpose-chain",
    severity: Severity::Note,
    summary: "three or more reshapes/transposes in a row, each a full copy on the ANE",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
Chains of at least three `reshape`, `transpose`, `squeeze`, `expand_dims` or `reshape_like` ops
where each feeds only the next. Reported once, at the last op of the chain.

## Why it matters
On the ANE a transpose, and a reshape that changes the last axis, is a memory copy through the
64-byte row layout. A chain of them usually means the model moves between (B, S, C) and a
head-split layout and back; the copies can cost more than the arithmetic around them.

## Example
```text
x: (1, 8, 32, fp16)
a = reshape(x, shape=[1, 8, 4, 8])
b = transpose(a, perm=[0, 2, 1, 3])
c = reshape(b, shape=[1, 4, 64])
```

## Fix
Pick one layout for the whole block, (B, C, 1, S) for transformers, so heads split with
`split` on the channel axis and no transposes are needed; merge what is left into a single
reshape or transpose.
"#;

fn check(g: &Graph) -> Vec<Hit> {
    let is_layout = |t: &str| LAYOUT_OPS.contains(&t);
    let mut length: HashMap<&str, usize> = HashMap::new();
    let mut continued: HashSet<&str> = HashSet::new();
    for op in g.ops.iter().filter(|o| is_layout(&o.op_type)) {
        let prev = g.arg_name(op, "x").filter(|x| g.uses(x) == 1).and_then(|x| Some((x, *length.get(x)?)));
        let n = prev.map_or(1, |(_, n)| n + 1);
        if let Some((x, _)) = prev {
            continued.insert(x);
        }
        for o in &op.outputs {
            length.insert(o.name.as_str(), n);
        }
    }
    let mut hits = Vec::new();
    for op in g.ops.iter().filter(|o| is_layout(&o.op_type)) {
        let Some(out) = op.outputs.first() else { continue };
        let Some(&n) = length.get(out.name.as_str()) else { continue };
        if n >= MIN_CHAIN && !continued.contains(out.name.as_str()) {
            hits.push(Hit::on(
                op,
                format!("{n} layout ops in a row end at `{}` {}", op.name, out.ty),
                "keep one layout for the block ((B, C, 1, S) for transformers) and merge the rest into one reshape".into(),
            ));
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::hits;
    use crate::mil::builder::Builder;
    use crate::mil::ops::shape::{RESHAPE, TRANSPOSE};
    use crate::mil::{DType, Opset, Tensor, TensorType};

    fn chain(with_third: bool) -> crate::mil::Function {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F16, &[1, 8, 32]));
        let a = b.op(&RESHAPE, "a").arg("x", &x).konst("shape", Tensor::i32_vec(&[1, 8, 4, 8])).build1().unwrap();
        let mut y = b.op(&TRANSPOSE, "b").arg("x", &a).konst("perm", Tensor::i32_vec(&[0, 2, 1, 3])).build1().unwrap();
        if with_third {
            y = b.op(&RESHAPE, "c").arg("x", &y).konst("shape", Tensor::i32_vec(&[1, 4, 64])).build1().unwrap();
        }
        b.finish(&[y])
    }

    #[test]
    fn fires_on_reshape_transpose_reshape() {
        let h = hits(&RULE, &chain(true));
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].op_name, "c");
        assert!(h[0].message.starts_with("3 layout ops"), "{}", h[0].message);
    }

    #[test]
    fn quiet_on_reshape_transpose_pair() {
        assert!(hits(&RULE, &chain(false)).is_empty());
    }
}
