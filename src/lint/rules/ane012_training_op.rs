//! ANE012 `training-op`: random ops left in an inference model, which is what dropout traced in
//! training mode turns into. Listed in `lint::RULES`.

use crate::lint::{Graph, Hit, Rule, Severity};

/// MIL ops that only a model traced in training mode contains (dropout's Bernoulli mask, noise).
const TRAINING_OPS: &[&str] = &["random_bernoulli", "random_categorical", "random_normal", "random_uniform"];

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE012",
    name: "training-op",
    severity: Severity::Error,
    summary: "random op left in the model, usually dropout traced in training mode",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
`random_bernoulli`, `random_categorical`, `random_normal` and `random_uniform` ops.

## Why it matters
In a PyTorch model these come from dropout (or noise layers) traced while the module was in
training mode. They make predictions random, and the ANE has no random number generator, so
Core ML runs them, and the segments around them, on the CPU.

## Example
```text
mask = random_bernoulli(shape=[1, 128, 768], prob=0.9)
h = mul(x=h, y=mask)
```

## Fix
Call `model.eval()` before `torch.jit.trace`, then convert again.
"#;

fn check(g: &Graph) -> Vec<Hit> {
    g.ops
        .iter()
        .filter(|o| TRAINING_OPS.contains(&o.op_type.as_str()))
        .map(|op| {
            Hit::on(
                op,
                format!("`{}` in an inference model (dropout or noise traced in training mode)", op.op_type),
                "call model.eval() before torch.jit.trace and convert again".into(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::{hits, push_raw};
    use crate::mil::builder::Builder;
    use crate::mil::ops::elementwise::RELU;
    use crate::mil::{DType, Opset, TensorType};

    #[test]
    fn fires_on_random_bernoulli() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F16, &[1, 8]));
        let mut f = b.finish(&[x]);
        push_raw(&mut f, "random_bernoulli", &[("shape", "x")], "mask", TensorType::new(DType::F16, &[1, 8]));
        let h = hits(&RULE, &f);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].op_name, "mask");
    }

    #[test]
    fn quiet_on_eval_mode_model() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F16, &[1, 8]));
        let y = b.op(&RELU, "y").arg("x", &x).build1().unwrap();
        assert!(hits(&RULE, &b.finish(&[y])).is_empty());
    }
}
