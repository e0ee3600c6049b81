//! ANE004 `cpu-gpu-only-op`: an op type Core ML does not schedule on the ANE, so the model is
//! split into ANE and CPU/GPU segments with a copy at every boundary. Listed in `lint::RULES`.

use crate::lint::{Graph, Hit, Rule, Severity};

/// MIL ops Core ML runs only on the CPU or GPU, with why. Apple publishes no such list (an Apple
/// engineer on coremltools#1780: placement "changes based on device generation, operating system
/// version, tensor sizes"); the sources of each entry are in [`EXPLANATION`]. Not exhaustive.
/// `random_*` ops are ANE012's, not listed here.
pub const CPU_GPU_ONLY_OPS: &[(&str, &str)] = &[
    ("lstm", "recurrent layers have no ANE kernel"),
    ("gru", "recurrent layers have no ANE kernel"),
    ("rnn", "recurrent layers have no ANE kernel"),
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
    ("scatter", "scatters have no ANE kernel"),
    ("scatter_nd", "scatters have no ANE kernel"),
    ("scatter_along_axis", "scatters have no ANE kernel"),
    ("reduce_prod", "products have no ANE kernel"),
    ("argsort", "sorting has no ANE kernel on M1-generation ANEs"),
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
Ops that Core ML does not place on the ANE: recurrent layers (`lstm`, `gru`, `rnn`), control
flow (`cond`, `while_loop`), tensor lists, ops whose output shape depends on the data
(`non_zero`, `non_maximum_suppression`), scatters, `reduce_prod`, `argsort`, `gather_nd` and
`cumsum`.

## Why it matters
Core ML splits the program into segments per compute unit. Each such op ends an ANE segment,
copies the activations to the CPU or GPU and back, and often keeps the whole model off the ANE
when the segments get small.

## Sources, and how sure each entry is
Apple documents no list of ANE ops; an Apple engineer says placement "changes based on device
generation, operating system version, tensor sizes etc." and points to Xcode's performance
report (https://github.com/apple/coremltools/issues/1780). So:
- Stated by Apple staff: RNN/LSTM "are not supported on the neural engine" (same issue).
- Community-measured: recurrent layers, gather and custom layers off the ANE
  (https://github.com/hollance/neural-engine/blob/master/docs/unsupported-layers.md, written for
  the older NeuralNetwork format); the scatter family, `reduce_prod` and recurrent cells have no
  ANE path on any generation, sort is rejected on M1-generation ANEs and runs on later ones
  (https://ane-guide.readthedocs.io/en/latest/part-1-machine/04-capability-surface.html, reverse
  engineering of the ANE compiler).
- Reasoned, not found in a public source: control flow, tensor lists, `non_zero` and
  `non_maximum_suppression` (data-dependent shapes, which the ANE's static graphs cannot hold),
  `gather_nd` and `cumsum`.
Where sources disagree the rule stays quiet: hollance lists dilated convolutions as off the ANE,
the reverse-engineering guide as native, so `conv` with dilations is not flagged. Confirm on a
device with Xcode's Core ML performance report.

## Example
```text
x: (1, 128, fp16)
y = cumsum(x, axis=1)         # runs on the CPU
```

## Fix
Compute it outside the model (before or after the Core ML call), or rewrite it with ANE ops:
`cumsum` as a `matmul` with a triangular constant, a data-dependent `non_zero` as a mask
multiply, a `scatter` of fixed positions as a `select` with a constant mask, an `lstm` as a
transformer or convolution block (or run it on the CPU in its own model).
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
    fn fires_on_lstm() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F16, &[16, 1, 32]));
        let mut f = b.finish(&[x]);
        push_raw(&mut f, "lstm", &[("x", "x")], "h", TensorType::new(DType::F16, &[16, 1, 64]));
        let h = hits(&RULE, &f);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].message.contains("recurrent"), "{}", h[0].message);
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
