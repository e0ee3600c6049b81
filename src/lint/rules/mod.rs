//! The lint rules, one file each, named `aneNNN_<name>.rs` after the rule's code and name. Each
//! file holds `pub const RULE: Rule` and its `fires_on_*` / `quiet_on_*` tests. Listed in
//! `lint::RULES`.

pub mod ane001_short_last_axis;
pub mod ane002_linear_on_bsc;
pub mod ane003_batched_attention;
pub mod ane004_cpu_gpu_only_op;
pub mod ane005_fp32_compute;
pub mod ane006_fp32_weights;
pub mod ane007_int64_tensor;
pub mod ane008_dynamic_shape;
pub mod ane009_oversized_tensor;
pub mod ane010_large_gather;
pub mod ane011_reshape_transpose_chain;
pub mod ane012_training_op;
pub mod ane013_small_palette_groups;
pub mod ane014_blockwise_quantized;

/// Helpers for the rules' tests: run one rule on a function, and append ops our op table does not
/// declare (a third-party package may hold any op).
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;

    use crate::lint::{Graph, Hit, Rule};
    use crate::mil::{Argument, Function, NamedType, Operation, TensorType, ValueType};

    /// The hits of `rule` on `f`.
    pub fn hits(rule: &Rule, f: &Function) -> Vec<Hit> {
        (rule.check)(&Graph::new(f))
    }

    /// `y = relu(x)` on an fp16 input of `shape`: the smallest program a shape rule can judge.
    pub fn relu_on(shape: &[usize]) -> Function {
        let mut b = crate::mil::builder::Builder::new(crate::mil::Opset::Ios16);
        let x = b.input("x", TensorType::new(crate::mil::DType::F16, shape));
        let y = b.op(&crate::mil::ops::elementwise::RELU, "y").arg("x", &x).build1().unwrap();
        b.finish(&[y])
    }

    /// Appends an op of any type with named-value inputs and one output `out` of type `ty`, and
    /// makes `out` the function's only output.
    pub fn push_raw(f: &mut Function, op_type: &str, inputs: &[(&str, &str)], out: &str, ty: TensorType) {
        f.block.operations.push(Operation {
            op_type: op_type.to_string(),
            name: out.to_string(),
            inputs: inputs.iter().map(|(p, v)| (p.to_string(), vec![Argument::Name(v.to_string())])).collect(),
            outputs: vec![NamedType { name: out.to_string(), ty: ValueType::Tensor(ty) }],
            attributes: BTreeMap::new(),
            blocks: Vec::new(),
            source: None,
        });
        f.block.outputs = vec![out.to_string()];
    }
}
