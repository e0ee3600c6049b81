//! ANE010 `large-gather`: a gather from a large constant table (a token or position embedding)
//! inside the model. Listed in `lint::RULES`.

use crate::lint::{is_const_op, Graph, Hit, Rule, Severity};

/// Smallest gathered table flagged (1 MiB): smaller tables (position embeddings of short models,
/// small lookups) cost little wherever they run.
pub const LARGE_GATHER_BYTES: usize = 1 << 20;

/// Gather ops whose `x` may be an embedding table.
const GATHER_OPS: &[&str] = &["gather", "gather_along_axis", "gather_nd"];

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE010",
    name: "large-gather",
    severity: Severity::Warning,
    summary: "gather from a large constant table (an embedding) inside the model",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
`gather`, `gather_along_axis` and `gather_nd` whose `x` is a constant of 1 MiB or more: the
token embedding of a language model (30522 × 768 fp16 = 45 MiB for BERT).

## Why it matters
A gather is a memory lookup, not arithmetic; Core ML runs large ones on the CPU, which splits
the model right at its start, and the whole table is loaded into every compute unit's memory.

## Example
```text
input_ids: (1, 128, int32)
h = gather(x=const((30522, 768, fp16)), indices=input_ids, axis=0)
```

## Fix
Do the embedding lookup outside the model (in the app, from the same weights) and make the
model take embeddings `(1, 128, 768)` (or `(1, 768, 1, 128)`) as its input.
"#;

fn check(g: &Graph) -> Vec<Hit> {
    let mut hits = Vec::new();
    for op in g.ops.iter().filter(|o| GATHER_OPS.contains(&o.op_type.as_str())) {
        let Some(table) = g.arg_name(op, "x").and_then(|n| g.producer(n)).filter(|p| is_const_op(p)) else { continue };
        let Some(ty) = table.outputs.first().map(|o| o.ty.tensor()) else { continue };
        let Some(bytes) = ty.num_elements().and_then(|n| ty.dtype.storage_bytes(n)) else { continue };
        if bytes < LARGE_GATHER_BYTES {
            continue;
        }
        hits.push(Hit::on(
            op,
            format!("`{}` looks up a {ty} constant table ({:.1} MiB) inside the model", op.op_type, bytes as f64 / (1 << 20) as f64),
            "do the embedding lookup outside the model and take the embeddings as the model input".into(),
        ));
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::hits;
    use crate::mil::builder::Builder;
    use crate::mil::ops::shape::GATHER;
    use crate::mil::{DType, Opset, Tensor, TensorType};

    fn embedding(rows: usize) -> crate::mil::Function {
        let mut b = Builder::new(Opset::Ios16);
        let ids = b.input("input_ids", TensorType::new(DType::I32, &[1, 8]));
        let table = Tensor::from_f32_as_f16(&[rows, 64], &vec![0.0; rows * 64]);
        let y = b.op(&GATHER, "embed").konst("x", table).arg("indices", &ids).konst("axis", Tensor::i32_scalar(0)).build1().unwrap();
        b.finish(&[y])
    }

    #[test]
    fn fires_on_embedding_table() {
        let h = hits(&RULE, &embedding(8192));
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].message.contains("1.0 MiB"), "{}", h[0].message);
    }

    #[test]
    fn quiet_on_small_table() {
        assert!(hits(&RULE, &embedding(16)).is_empty());
    }
}
