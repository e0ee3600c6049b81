//! ANE008 `dynamic-shape`: a model input with an unknown dimension (not one of a few enumerated
//! shapes), or an op whose output shape depends on the data. Listed in `lint::RULES`.

use crate::lint::{Graph, Hit, Rule, Severity};
use crate::mil::{Argument, Dim};

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE008",
    name: "dynamic-shape",
    severity: Severity::Warning,
    summary: "unknown or unbounded dimension, which keeps the model off the ANE",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
Model inputs with an unknown dimension (range or unbounded shapes; inputs limited to a few
enumerated shapes are fine), and ops whose inputs all have known shapes but whose output does
not (the shape depends on the data).

## Why it matters
The ANE compiler plans memory for fixed shapes. Core ML runs unbounded or data-dependent shapes
on the CPU/GPU; with range shapes it may only use the ANE for the default shape.

## Example
```text
x: (1, ?, 768, fp16)      # sequence length left flexible
```

## Fix
Give every input a fixed shape (`--input x:1x128x768:fp16`), or use `ct.EnumeratedShapes` with
the few sizes you need; pad sequences to a fixed length and pass an attention mask.
"#;

fn unknown(ty: &crate::mil::TensorType) -> bool {
    ty.shape.contains(&Dim::Unknown)
}

fn check(g: &Graph) -> Vec<Hit> {
    let mut hits = Vec::new();
    let fix = || "give the input a fixed shape (or ct.EnumeratedShapes); pad to a fixed length and pass a mask".to_string();
    // Enumerated shapes ("buckets") are fixed shapes the ANE compiler can plan for each.
    let bucketed = |name: &str| matches!(g.flexible.get(name), Some(crate::mil::ShapeSet::Enumerated(_)));
    for i in g.function.inputs.iter().filter(|i| unknown(i.ty.tensor()) && !bucketed(&i.name)) {
        hits.push(Hit {
            op_name: i.name.clone(),
            op_type: "input".into(),
            message: format!("model input `{}` has a dynamic shape {}", i.name, i.ty),
            fix: fix(),
        });
    }
    for op in &g.ops {
        let Some(out) = op.outputs.iter().find(|o| unknown(o.ty.tensor())) else { continue };
        let inputs_fixed = op.inputs.iter().flat_map(|(_, a)| a).all(|a| match a {
            Argument::Name(n) => g.ty(n).is_some_and(|t| !unknown(t)),
            Argument::Value(_) => true,
        });
        if inputs_fixed {
            hits.push(Hit::on(op, format!("`{}` output `{}` {} has a data-dependent shape", op.op_type, out.name, out.ty), fix()));
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::hits;
    use crate::mil::builder::Builder;
    use crate::mil::ops::elementwise::RELU;
    use crate::mil::{DType, Opset, TensorType};

    fn relu_on(ty: TensorType) -> crate::mil::Function {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", ty);
        let y = b.op(&RELU, "y").arg("x", &x).build1().unwrap();
        b.finish(&[y])
    }

    #[test]
    fn fires_on_unknown_sequence_length() {
        let ty = TensorType { dtype: DType::F16, shape: vec![Dim::Fixed(1), Dim::Unknown, Dim::Fixed(64)] };
        let h = hits(&RULE, &relu_on(ty));
        assert_eq!(h.len(), 1, "only the input, not every op downstream: {h:?}");
        assert_eq!(h[0].op_name, "x");
    }

    #[test]
    fn quiet_on_fixed_shapes() {
        assert!(hits(&RULE, &relu_on(TensorType::new(DType::F16, &[1, 8, 64]))).is_empty());
    }
}
