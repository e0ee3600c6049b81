//! ANE004 `cpu-gpu-only-op`: an op type Core ML does not schedule on the ANE, so the model is
//! split into ANE and CPU/GPU segments with a copy at every boundary. Listed in `lint::RULES`.

use crate::lint::{Graph, Hit, Rule, Severity};

/// MIL ops Core ML runs only on the CPU or GPU (Xcode's Core ML performance report on
/// iOS16–iOS18; not exhaustive). `random_*` ops are ANE012's, not listed here.
pub const CPU_GPU_ONLY_OPS: &[(&str, &str)] = &[
    ("cond", "control flow: the ANE runs static graphs only"),
    ("while_loop", "control flow: the ANE runs static graphs only"),
    ("make_list", "tensor lists are CPU data structures"),
    ("list_read", "tensor lists are CPU data structures"),
    ("list_write", "tensor lists are CPU data structures"),
    ("list_gather", "tensor lists are CPU data structures"),
    ("list_scatter", "tensor lists are CPU data structures"),
    ("list_length", "tensor lists are CPU data structures"),
    ("non_zero", "its output shape depends on the data"),
    ("non_maximum_suppression", "its output shape depends on the data"),
    ("argsort", "sorting has no ANE kernel"),
    ("scatter", "scatters have no ANE kernel"),
    ("scatter_nd", "scatters have no ANE kernel"),
    ("scatter_along_axis", "scatters have no ANE kernel"),
    ("gather_nd", "n-d gathers have no ANE kernel"),
    ("cumsum", "prefix sums have no ANE kernel"),
];

/// The rule.
pub const RULE: Rule = Rule {
    code: "ANE004",
    name: "cpu-gpu-only-op",
    severity: Severity::Warning,
    summary: "op that Core ML runs only on the CPU or GPU, splitting the model off the ANE",
    explanation: EXPLANATION,
    check,
};

const EXPLANATION: &str = r#"## What it finds
Ops that Core ML never places on the ANE: control flow (`cond`, `while_loop`), tensor lists,
ops whose output shape depends on the data (`non_zero`, `non_maximum_suppression`), sorts,
scatters, `gather_nd` and `cumsum`.

## Why it matters
Core ML splits the program into segments per compute unit. Each such op ends an ANE segment,
copies the activations to the CPU or GPU and back, and often keeps the whole model off the ANE
when the segments get small.

## Example
```text
x: (1, 128, fp16)
y = cumsum(x, axis=1)         # runs on the CPU
```

## Fix
Compute it outside the model (before or after the Core ML call), or rewrite it with ANE ops:
`cumsum` as a `matmul` with a triangular constant, a data-dependent `non_zero` as a mask
multiply, a `scatter` of fixed positions as a `select` with a constant mask.
"#;

fn check(g: &Graph) -> Vec<Hit> {
    let mut hits = Vec::new();
    for op in &g.ops {
        let Some((_, why)) = CPU_GPU_ONLY_OPS.iter().find(|(t, _)| *t == op.op_type) else { continue };
        hits.push(Hit::on(
            op,
            format!("`{}` runs only on the CPU or GPU ({why})", op.op_type),
            format!("compute `{}` outside the model or rewrite it with ANE ops (matmul, select, masks)", op.op_type),
        ));
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules::testing::{hits, push_raw};
    use crate::mil::builder::Builder;
    use crate::mil::ops::elementwise::RELU;
    use crate::mil::{DType, Opset, TensorType};

    #[test]
    fn fires_on_non_zero() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F16, &[1, 128]));
        let mut f = b.finish(&[x]);
        push_raw(&mut f, "non_zero", &[("x", "x")], "nz", TensorType::new(DType::I32, &[128, 2]));
        let h = hits(&RULE, &f);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].op_type, "non_zero");
    }

    #[test]
    fn quiet_on_relu() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F16, &[1, 128]));
        let y = b.op(&RELU, "y").arg("x", &x).build1().unwrap();
        assert!(hits(&RULE, &b.finish(&[y])).is_empty());
    }

    #[test]
    fn table_has_no_duplicates() {
        for (i, (t, _)) in CPU_GPU_ONLY_OPS.iter().enumerate() {
            assert!(!CPU_GPU_ONLY_OPS[i + 1..].iter().any(|(o, _)| o == t), "{t}");
        }
    }
}
