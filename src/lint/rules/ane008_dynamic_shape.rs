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
not (the shape depends on the data). Sizes computed from an input's shape (`shape` and the
arithmetic on it, which a converted dynamic `.pt2` has) follow that input and are not reported
again.

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
    // Values computed from a `shape` op (sizes `mil::merge` recovers for a flexible input):
    // an output they size follows the input's shape, which the input's finding covers.
    let mut from_shape: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for op in &g.ops {
        let args = || op.inputs.iter().flat_map(|(_, a)| a);
        let reads_shape = args().any(|a| matches!(a, Argument::Name(n) if from_shape.contains(n.as_str())));
        if op.op_type == "shape" || reads_shape {
            from_shape.extend(op.outputs.iter().map(|o| o.name.as_str()));
        }
        let Some(out) = op.outputs.iter().find(|o| unknown(o.ty.tensor())) else { continue };
        let inputs_fixed = args().all(|a| match a {
            Argument::Name(n) => g.ty(n).is_some_and(|t| !unknown(t)),
            Argument::Value(_) => true,
        });
        if inputs_fixed && !reads_shape {
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
    fn sizes_read_from_the_input_shape_are_not_reported_again() {
        use crate::mil::ops::{elementwise::ADD, shape};
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType { dtype: DType::F16, shape: vec![Dim::Fixed(1), Dim::Unknown] });
        let size = b.op(&shape::SHAPE, "size").arg("x", &x).build1().unwrap();
        let table = b.konst("table", crate::mil::Tensor::from_f32_as_f16(&[1, 8], &[0.5; 8]));
        let rows = b.op(&shape::SLICE_BY_INDEX, "rows").arg("x", &table).konst("begin", crate::mil::Tensor::i32_vec(&[0, 0])).arg("end", &size).build1().unwrap();
        let y = b.op(&ADD, "y").arg("x", &x).arg("y", &rows).build1().unwrap();
        let h = hits(&RULE, &b.finish(&[y]));
        assert_eq!(h.iter().map(|h| h.op_name.as_str()).collect::<Vec<_>>(), ["x"], "{h:?}");
    }

    #[test]
    fn quiet_on_fixed_shapes() {
        assert!(hits(&RULE, &relu_on(TensorType::new(DType::F16, &[1, 8, 64]))).is_empty());
    }
}
