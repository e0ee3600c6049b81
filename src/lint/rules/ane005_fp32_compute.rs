//! ANE005 `fp32-compute`: ops that compute in fp32. The ANE computes in fp16 only, so Core ML
//! runs fp32 ops on the CPU or GPU. Reported once per function, at the first such op, with the
//! count. Listed in `lint::RULES`.

use crate::lint::{is_const_op, Graph, Hit, Rule, Severity};
use crate::mil::DType;

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE005",
    name: "fp32-compute",
    severity: Severity::Warning,
    summary: "ops computing in fp32, which the ANE cannot run",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
Ops (other than `const` and `cast`) with an fp32 output. Reported once per function, at the first
such op, with the number of fp32 ops.

## Why it matters
The ANE has fp16 (and int8) arithmetic only. Core ML places fp32 ops on the GPU or CPU, so an
fp32 model never touches the ANE, and a mixed model pays a copy at every fp32/fp16 boundary.

## Example
```text
x: (1, 64, fp32)
y = relu(x)          # fp32 compute
```
Quiet on the same op in fp16.

## Fix
Convert with fp16 compute: `torch2coreml convert --precision fp16` (the default), or
`ct.convert(..., compute_precision=ct.precision.FLOAT16)`. Keep fp32 only for the few ops that
overflow in fp16, and cast around them.
"#;

fn check(g: &Graph) -> Vec<Hit> {
    let fp32 = |op: &&&crate::mil::Operation| {
        !is_const_op(op) && op.op_type != "cast" && op.outputs.iter().any(|o| o.ty.tensor().dtype == DType::F32)
    };
    let n = g.ops.iter().filter(fp32).count();
    let Some(first) = g.ops.iter().find(fp32) else { return Vec::new() };
    vec![Hit::on(
        first,
        format!("{n} op(s) compute in fp32 (first: `{}` `{}`); the ANE computes in fp16 only", first.op_type, first.name),
        "convert with fp16 compute (`--precision fp16`; coremltools: compute_precision=ct.precision.FLOAT16)".into(),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::hits;
    use crate::mil::builder::Builder;
    use crate::mil::ops::elementwise::RELU;
    use crate::mil::{Opset, TensorType};

    fn relus(dt: DType) -> crate::mil::Function {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(dt, &[1, 64]));
        let y = b.op(&RELU, "a").arg("x", &x).build1().unwrap();
        let z = b.op(&RELU, "b").arg("x", &y).build1().unwrap();
        b.finish(&[z])
    }

    #[test]
    fn fires_on_fp32_relu() {
        let h = hits(&RULE, &relus(DType::F32));
        assert_eq!(h.len(), 1, "one finding per function: {h:?}");
        assert!(h[0].message.starts_with("2 op(s)"), "{}", h[0].message);
        assert_eq!(h[0].op_name, "a");
    }

    #[test]
    fn quiet_on_fp16_relu() {
        assert!(hits(&RULE, &relus(DType::F16)).is_empty());
    }
}
