//! The ANE passes on the transformer zoo (issue: ANE rewrite passes): after `convert` (passes on
//! by default) no `linear` and no head-batched softmax is left, there are fewer transposes than
//! with `--no-ane`, and inside the blocks every activation is in the (B, C, 1, S) layout. The zoo
//! test (`tests/zoo.rs`) converts the same models the same way and checks them with coremltools'
//! type-checker and against PyTorch's outputs.

mod zoo_dir;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use torch2coreml::mil::Operation;


fn convert(m: &str, out: &Path, extra: &[&str]) -> torch2coreml::mil::Model {
    zoo_dir::convert(m, out, extra);
    torch2coreml::package::read(out).unwrap()
}

/// The `ops` histogram `inspect --format json` prints.
fn histogram(pkg: &Path) -> BTreeMap<String, u64> {
    let o = Command::new(env!("CARGO_BIN_EXE_torch2coreml")).arg("inspect").arg(pkg).args(["--format", "json"]).output().unwrap();
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    j["ops"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
}

fn shape(op: &Operation) -> Vec<usize> {
    op.outputs[0].ty.tensor().fixed_shape().unwrap()
}

/// Ops that only move data between layouts.
const LAYOUT_OPS: [&str; 4] = ["reshape", "transpose", "expand_dims", "squeeze"];

#[test]
#[ignore = "needs the zoo from `make setup`; `make test` runs it"]
fn transformer_blocks_end_up_in_the_ane_layout() {
    let dir = tempfile::tempdir().unwrap();
    for m in ["bert", "distilbert", "roberta", "minilm", "gpt2", "llama", "vit_hf", "whisper_encoder"] {
        let (ane_pkg, traced_pkg) = (dir.path().join(format!("{m}.mlpackage")), dir.path().join(format!("{m}_traced.mlpackage")));
        let model = convert(m, &ane_pkg, &[]);
        convert(m, &traced_pkg, &["--no-ane"]);
        let (ane, traced) = (histogram(&ane_pkg), histogram(&traced_pkg));
        let count = |h: &BTreeMap<String, u64>, op: &str| h.get(op).copied().unwrap_or(0);
        // Only a rank-2 head (BERT's pooler on the [CLS] vector) may stay a linear.
        assert!(count(&ane, "linear") <= 1, "{m}: linear left: {ane:?}");
        assert!(count(&ane, "conv") >= count(&traced, "linear") - count(&ane, "linear"), "{m}: {ane:?} vs {traced:?}");
        assert!(count(&ane, "transpose") < count(&traced, "transpose"), "{m}: transposes {} → {}", count(&traced, "transpose"), count(&ane, "transpose"));

        let main = model.program.main().unwrap();
        let ops: Vec<&Operation> = main.block.operations.iter().filter(|o| o.op_type != "const").collect();
        // The blocks: from the first to the last 1×1 conv (a rewritten linear).
        let is_1x1 = |o: &&Operation| o.op_type == "conv" && shape(o).len() == 4 && shape(o)[2] == 1;
        let first = ops.iter().position(is_1x1).unwrap();
        let last = ops.iter().rposition(is_1x1).unwrap();
        let consumers = |name: &str| ops.iter().filter(|o| o.inputs.iter().flat_map(|(_, a)| a).any(|a| matches!(a, torch2coreml::mil::Argument::Name(n) if n == name))).copied().collect::<Vec<_>>();
        for op in &ops {
            if op.op_type == "linear" {
                let x = op.outputs[0].ty.tensor().rank();
                assert_eq!(x, 2, "{m}: `{}` is a linear on a rank-{x} activation", op.name);
            }
        }
        for op in &ops[first..=last] {
            let s = shape(op);
            assert_ne!(op.op_type, "linear", "{m}: `{}` inside the blocks", op.name);
            if op.op_type == "softmax" {
                assert!(s.len() == 4 && s[2] == 1, "{m}: `{}` softmax on {s:?} is batched over heads", op.name);
            }
            if LAYOUT_OPS.contains(&op.op_type.as_str()) || s.len() < 3 {
                continue;
            }
            // (B, C, 1, S), or its (B, C, S) view that a per-head matmul works in.
            let ane_layout = (s.len() == 4 && s[2] == 1)
                || (s.len() == 3 && consumers(&op.outputs[0].name).iter().all(|c| c.op_type == "reshape" && shape(c) == [s[0], s[1], 1, s[2]]));
            assert!(ane_layout, "{m}: `{}` ({}) makes {s:?} inside the blocks, not (B, C, 1, S)", op.name, op.op_type);
        }
    }
}
