//! ANE007 `int64-tensor`: a model input or op output typed int64, which the ANE has no support
//! for. Listed in `lint::RULES`.

use crate::lint::{Graph, Hit, Rule, Severity};
use crate::mil::DType;

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE007",
    name: "int64-tensor",
    severity: Severity::Warning,
    summary: "int64 tensor, which the ANE cannot hold",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
Function inputs and op outputs of dtype int64, typically `input_ids` traced from PyTorch's
default `torch.long`.

## Why it matters
The ANE has no 64-bit integers. Core ML runs every op that touches an int64 tensor on the CPU,
including the embedding gather at the start of a transformer, and casts at the boundary.

## Example
```text
input_ids: (1, 128, int64)
h = gather(x=embeddings, indices=input_ids)
```

## Fix
Declare token inputs as int32 (`--input input_ids:1x128:int32`, or
`ct.TensorType(dtype=np.int32)`); MIL index ops take int32.
"#;

fn check(g: &Graph) -> Vec<Hit> {
    let mut hits = Vec::new();
    let fix = || "use int32 (`--input NAME:DIMS:int32`; coremltools: ct.TensorType(dtype=np.int32))".to_string();
    for i in g.function.inputs.iter().filter(|i| i.ty.tensor().dtype == DType::I64) {
        hits.push(Hit {
            op_name: i.name.clone(),
            op_type: "input".into(),
            message: format!("model input `{}` is {}", i.name, i.ty),
            fix: fix(),
        });
    }
    for op in &g.ops {
        let Some(out) = op.outputs.iter().find(|o| o.ty.tensor().dtype == DType::I64) else { continue };
        hits.push(Hit::on(op, format!("`{}` output `{}` is {}", op.op_type, out.name, out.ty), fix()));
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::hits;
    use crate::mil::builder::Builder;
    use crate::mil::ops::elementwise::CAST;
    use crate::mil::{Opset, Tensor, TensorType};

    #[test]
    fn fires_on_int64_input() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("input_ids", TensorType::new(DType::I64, &[1, 8]));
        let h = hits(&RULE, &b.finish(&[x]));
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!((h[0].op_type.as_str(), h[0].op_name.as_str()), ("input", "input_ids"));
    }

    #[test]
    fn quiet_on_int32_input() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("input_ids", TensorType::new(DType::I32, &[1, 8]));
        let y = b.op(&CAST, "ids").arg("x", &x).konst("dtype", Tensor::string("fp16")).build1().unwrap();
        assert!(hits(&RULE, &b.finish(&[y])).is_empty());
    }
}
