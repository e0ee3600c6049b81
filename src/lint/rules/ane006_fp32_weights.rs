//! ANE006 `fp32-weights`: weights stored in fp32. Reported once per function, at the first
//! such weight, with the count and bytes. Listed in `lint::RULES`.

use crate::lint::{is_const_op, Graph, Hit, Rule, Severity};
use crate::mil::DType;

/// Smallest fp32 constant counted as a weight: smaller ones are scalars and shape constants
/// whose size does not matter.
pub const MIN_WEIGHT_ELEMENTS: usize = 1024;

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE006",
    name: "fp32-weights",
    severity: Severity::Warning,
    summary: "weights stored in fp32: twice the size, and cast to fp16 for the ANE anyway",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
`const` (or `constexpr_*`) ops with an fp32 output of at least 1024 elements. Reported once per
function, at the first one, with the number and total size.

## Why it matters
The ANE computes in fp16, so fp32 weights are either cast at load time (twice the package size
and load time for nothing) or keep their ops on the GPU/CPU.

## Example
```text
weight = const((768, 768, fp32))
y = linear(x, weight)
```

## Fix
Store weights in fp16 (`--precision fp16`, coremltools' default from iOS16), or compress them
(`ct.optimize.coreml.linear_quantize_weights`, palettization).
"#;

fn check(g: &Graph) -> Vec<Hit> {
    let mut n = 0;
    let mut bytes = 0;
    let mut first = None;
    for op in g.ops.iter().filter(|o| is_const_op(o)) {
        let Some(out) = op.outputs.first() else { continue };
        let ty = out.ty.tensor();
        let Some(elements) = ty.num_elements() else { continue };
        if ty.dtype != DType::F32 || elements < MIN_WEIGHT_ELEMENTS {
            continue;
        }
        n += 1;
        bytes += elements * 4;
        first.get_or_insert(*op);
    }
    let Some(first) = first else { return Vec::new() };
    vec![Hit::on(
        first,
        format!("{n} fp32 weight tensor(s), {bytes} bytes (first: `{}`); the ANE uses fp16", first.name),
        "store weights in fp16 (`--precision fp16`) or compress them (linear_quantize_weights, palettize)".into(),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::hits;
    use crate::mil::builder::Builder;
    use crate::mil::ops::linear::LINEAR;
    use crate::mil::{Opset, Tensor, TensorType};

    fn fc(weight: Tensor) -> crate::mil::Function {
        let mut b = Builder::new(Opset::Ios16);
        let dt = weight.dtype();
        let x = b.input("x", TensorType::new(dt, &[1, 64]));
        let y = b.op(&LINEAR, "fc").arg("x", &x).konst("weight", weight).build1().unwrap();
        b.finish(&[y])
    }

    #[test]
    fn fires_on_fp32_weight() {
        let h = hits(&RULE, &fc(Tensor::from_f32(&[32, 64], &[0.0; 2048])));
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].message.contains("8192 bytes"), "{}", h[0].message);
    }

    #[test]
    fn quiet_on_fp16_weight() {
        assert!(hits(&RULE, &fc(Tensor::from_f32_as_f16(&[32, 64], &[0.0; 2048]))).is_empty());
    }
}
