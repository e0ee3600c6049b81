//! `torch.export` programs with dynamic dimensions and mutated buffers (issue 15), end to end
//! against torch: a ResNet-18 exported with a dynamic batch becomes one package whose batch is a
//! Core ML range, validated at the range's minimum, middle and maximum; a BERT exported with a
//! dynamic sequence length, from which its program computes positions, masks and reshapes,
//! becomes a range too (those sizes as MIL shape ops), validated at 8, 37, 68 and 128 in both
//! IR forms; a size used as a float is computed, a squared one refused with a pointer to
//! `--shapes`, and bucketed by `--shapes` the BERT validates at each length; the test zoo's text
//! models with a dynamic sequence and vision models with a dynamic batch become ranges too;
//! a registered KV cache written with `index_copy_` becomes an iOS18 state, stepped in our
//! interpreter as torch steps the module, also with a dynamic number of new tokens (a range). coremltools' own conversions of the dynamic ResNet
//! (a `RangeDim` package, and one with `EnumeratedShapes`) run in our interpreter at the same sizes. The programs and torch's outputs are made here by
//! Python scripts (`.venv`, `make test`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torch2coreml")).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {} {}", String::from_utf8_lossy(&o.stdout), stderr(o)))
}

/// The BERT-family folders `make setup` builds (`fixtures/hf/make_bert.py`).
fn hf() -> PathBuf {
    std::env::var_os("T2C_HF")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/torch2coreml/hf"))
}

/// Exports both programs into `argv[1]` with torch's outputs at the sizes our range check and
/// `validate` sample: a range's minimum, middle (min + (max − min) / 2) and maximum.
const SCRIPT: &str = r#"
import os, sys, numpy as np, torch, torchvision, transformers, coremltools as ct
out, hf = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
net = torchvision.models.resnet18(num_classes=10).eval()
batch = torch.export.Dim("batch", min=1, max=8)
program = torch.export.export(net, (torch.randn(2, 3, 64, 64),), dynamic_shapes={"x": {0: batch}})
torch.export.save(program, f"{out}/resnet.pt2")
# coremltools' own conversion of the same program: its batch becomes a RangeDim.
ct.convert(program.run_decompositions({}), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
           skip_model_load=True).save(f"{out}/ct_resnet.mlpackage")
# And with the batch as enumerated shapes.
ct.convert(program.run_decompositions({}), convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
           inputs=[ct.TensorType(name="x", shape=ct.EnumeratedShapes(shapes=[(1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)]))],
           skip_model_load=True).save(f"{out}/ct_resnet_enum.mlpackage")
for n in (1, 4, 8):
    x = torch.randn(n, 3, 64, 64)
    np.savez(f"{out}/resnet.{n}.inputs.npz", x=x.numpy())
    np.savez(f"{out}/resnet.{n}.outputs.npz", output=net(x).detach().numpy())

class Bert(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.m = transformers.BertModel.from_pretrained(f"{hf}/bert").eval()
    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
bert = Bert().eval()
seq = torch.export.Dim("seq", min=8, max=128)
ids, mask = torch.randint(3, 1000, (1, 32)), torch.ones(1, 32, dtype=torch.int64)
bert_program = torch.export.export(bert, (ids, mask), dynamic_shapes={"input_ids": {1: seq}, "attention_mask": {1: seq}})
torch.export.save(bert_program, f"{out}/bert.pt2")
# After run_decompositions(): the mask is built with any/bitwise_and and -inf scalars.
torch.export.save(bert_program.run_decompositions(), f"{out}/bert_decomposed.pt2")
for n in (8, 37, 68, 128):
    ids, mask = torch.randint(3, 1000, (1, n)), torch.ones(1, n, dtype=torch.int64)
    mask[0, n // 2:] = 0
    with torch.no_grad():
        y = bert(ids, mask)
    np.savez(f"{out}/bert.{n}.inputs.npz", input_ids=ids.numpy().astype(np.int32), attention_mask=mask.numpy().astype(np.int32))
    np.savez(f"{out}/bert.{n}.outputs.npz", output=y.numpy())

# A size used as a value: its mean (a size cast) is computed at run time, its square is no
# a*s + b of the input's size, so no Core ML range.
class Mean(torch.nn.Module):
    def forward(self, x):
        return x.sum(dim=1) / x.shape[1]
class Square(torch.nn.Module):
    def forward(self, x):
        return x * (x.shape[1] * x.shape[1])
n = torch.export.Dim("n", min=4, max=64)
for name, m in (("mean", Mean()), ("square", Square())):
    torch.export.save(torch.export.export(m, (torch.randn(2, 16),), dynamic_shapes={"x": {1: n}}), f"{out}/{name}.pt2")
for k in (4, 23, 64):
    x = torch.randn(2, k)
    np.savez(f"{out}/mean.{k}.inputs.npz", x=x.numpy())
    np.savez(f"{out}/mean.{k}.outputs.npz", output=Mean()(x).numpy())
"#;

/// `validate PKG --inputs NAME.N.inputs.npz --expected NAME.N.outputs.npz --format json`.
fn validate(pkg: &Path, dir: &Path, name: &str, n: usize) -> serde_json::Value {
    let inputs = dir.join(format!("{name}.{n}.inputs.npz"));
    let expected = dir.join(format!("{name}.{n}.outputs.npz"));
    let v = run(&["validate".as_ref(), pkg.as_os_str(), "--inputs".as_ref(), inputs.as_os_str(), "--expected".as_ref(), expected.as_os_str(), "--format".as_ref(), "json".as_ref()]);
    let report = json(&v);
    assert!(v.status.success() && report["pass"] == true, "{name} at {n}: {report}");
    report
}

#[test]
#[ignore = "needs torch, torchvision, transformers and coremltools from `make setup`; `make test` runs it"]
fn dynamic_dims_become_ranges_or_buckets_valid_against_torch_at_min_middle_and_max() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let py = Command::new(root().join(".venv/bin/python")).arg("-c").arg(SCRIPT).arg(d).arg(hf()).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(py.status.success(), "{}", stderr(&py));

    // A dynamic batch: nothing in the program depends on it, so it is a Core ML range.
    let resnet = d.join("resnet.mlpackage");
    let c = run(&["convert".as_ref(), d.join("resnet.pt2").as_os_str(), "-o".as_ref(), resnet.as_os_str(), "--format".as_ref(), "json".as_ref()]);
    assert!(c.status.success(), "{}", stderr(&c));
    assert_eq!(json(&c)["packages"][0]["shapes"]["x"], "[1..8, 3, 64, 64]");
    let info = json(&run(&["inspect".as_ref(), resnet.as_os_str(), "--format".as_ref(), "json".as_ref()]));
    assert_eq!(info["inputs"][0]["flexible"]["range"], serde_json::json!([[1, 8], [3, 3], [64, 64], [64, 64]]), "{info}");
    for n in [1, 4, 8] {
        let report = validate(&resnet, d, "resnet", n);
        assert!(report["outputs"][0]["cosine"].as_f64().unwrap() >= 0.9999, "{report}");
    }
    // A .pt2 cannot be the torch reference (libtorch runs TorchScript): one line saying what to give.
    let v = run(&["validate".as_ref(), resnet.as_os_str(), "--reference".as_ref(), d.join("resnet.pt2").as_os_str()]);
    assert_eq!(v.status.code(), Some(2));
    assert!(stderr(&v).contains("--expected") && stderr(&v).lines().count() == 1, "{}", stderr(&v));
    // coremltools' package of the same program runs in our interpreter across its range too.
    let ct = d.join("ct_resnet.mlpackage");
    let info = json(&run(&["inspect".as_ref(), ct.as_os_str(), "--format".as_ref(), "json".as_ref()]));
    assert_eq!(info["inputs"][0]["flexible"]["range"], serde_json::json!([[1, 8], [3, 3], [64, 64], [64, 64]]), "{info}");
    for n in [1, 4, 8] {
        validate(&ct, d, "resnet", n);
    }
    let ct_enum = d.join("ct_resnet_enum.mlpackage");
    let info = json(&run(&["inspect".as_ref(), ct_enum.as_os_str(), "--format".as_ref(), "json".as_ref()]));
    assert_eq!(info["inputs"][0]["flexible"]["enumerated"], serde_json::json!([[1, 3, 64, 64], [4, 3, 64, 64], [8, 3, 64, 64]]), "{info}");
    for n in [1, 4, 8] {
        validate(&ct_enum, d, "resnet", n);
    }
    // Outside the range: refused as Core ML would.
    let v = run(&["validate".as_ref(), resnet.as_os_str(), "--inputs".as_ref(), d.join("bert.8.inputs.npz").as_os_str(), "--expected".as_ref(), d.join("bert.8.outputs.npz").as_os_str()]);
    assert_eq!(v.status.code(), Some(2), "{}", stderr(&v));
    let oracle = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&resnet).output().unwrap();
    assert!(oracle.status.success(), "{}", String::from_utf8_lossy(&oracle.stdout));
    let lint = json(&run(&["lint-ane".as_ref(), resnet.as_os_str(), "--format".as_ref(), "json".as_ref()]));
    assert!(lint["findings"].to_string().contains("ANE008"), "a range may leave the ANE: {lint}");
    // One size of the range, given as an input shape; and one outside it.
    let one = d.join("resnet4.mlpackage");
    let c = run(&["convert".as_ref(), d.join("resnet.pt2").as_os_str(), "-o".as_ref(), one.as_os_str(), "--input".as_ref(), "x:4x3x64x64".as_ref()]);
    assert!(c.status.success(), "{}", stderr(&c));
    validate(&one, d, "resnet", 4);
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = bad_dir.path().join("bad.mlpackage");
    let c = run(&["convert".as_ref(), d.join("resnet.pt2").as_os_str(), "-o".as_ref(), bad.as_os_str(), "--input".as_ref(), "x:9x3x64x64".as_ref()]);
    assert_eq!(c.status.code(), Some(2));
    assert!(stderr(&c).contains("must be within 1..8") && stderr(&c).lines().count() == 1 && !bad.exists(), "{}", stderr(&c));

    // A dynamic sequence length, from which BERT's program computes its position ids, the
    // token-type rows, the mask and every head reshape: those become MIL shape ops reading the
    // input's shape, so it is a Core ML range too, right at a size it was not built at (37).
    let bert = d.join("bert.pt2");
    let ranged = d.join("bert_range.mlpackage");
    let c = run(&["convert".as_ref(), bert.as_os_str(), "-o".as_ref(), ranged.as_os_str(), "--format".as_ref(), "json".as_ref()]);
    assert!(c.status.success(), "{}", stderr(&c));
    assert_eq!(json(&c)["packages"][0]["shapes"]["input_ids"], "[1, 8..128]");
    for n in [8, 37, 68, 128] {
        let report = validate(&ranged, d, "bert", n);
        assert!(report["outputs"][0]["cosine"].as_f64().unwrap() >= 0.999, "{report}");
    }
    let oracle = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&ranged).output().unwrap();
    assert!(oracle.status.success(), "{}", String::from_utf8_lossy(&oracle.stdout));
    let info = json(&run(&["inspect".as_ref(), ranged.as_os_str(), "--format".as_ref(), "json".as_ref()]));
    assert!(info["ops"].to_string().contains("\"shape\""), "the sizes are read from the input: {info}");
    let decomposed = d.join("bert_decomposed.mlpackage");
    let c = run(&["convert".as_ref(), d.join("bert_decomposed.pt2").as_os_str(), "-o".as_ref(), decomposed.as_os_str()]);
    assert!(c.status.success(), "{}", stderr(&c));
    for n in [8, 37, 128] {
        let report = validate(&decomposed, d, "bert", n);
        assert!(report["outputs"][0]["cosine"].as_f64().unwrap() >= 0.999, "{report}");
    }
    // A size used as a float: cast from the computed size.
    let mean = d.join("mean.mlpackage");
    let c = run(&["convert".as_ref(), d.join("mean.pt2").as_os_str(), "-o".as_ref(), mean.as_os_str(), "--precision".as_ref(), "fp32".as_ref()]);
    assert!(c.status.success(), "{}", stderr(&c));
    for k in [4, 23, 64] {
        let report = validate(&mean, d, "mean", k);
        assert!(report["outputs"][0]["max_abs"].as_f64().unwrap() <= 1e-5, "{report}");
    }
    // A size squared is no a·s + b of the input's size: refused, saying why and what to do.
    let c = run(&["convert".as_ref(), d.join("square.pt2").as_os_str(), "-o".as_ref(), bad.as_os_str()]);
    assert_eq!(c.status.code(), Some(2));
    assert!(stderr(&c).contains("cannot be a Core ML range") && stderr(&c).contains("--shapes") && stderr(&c).lines().count() == 1 && !bad.exists(), "{}", stderr(&c));
    // Buckets of the same program at those sizes.
    let buckets = d.join("bert.mlpackage");
    let shapes = ["--shapes", "input_ids:1x8,1x68,1x128", "--shapes", "attention_mask:1x8,1x68,1x128", "--target", "iOS18"];
    let mut args: Vec<&std::ffi::OsStr> = vec!["convert".as_ref(), bert.as_os_str(), "-o".as_ref(), buckets.as_os_str()];
    args.extend(shapes.iter().map(|s| std::ffi::OsStr::new(s)));
    let c = run(&args);
    assert!(c.status.success(), "{}", stderr(&c));
    for n in [8, 68, 128] {
        let report = validate(&buckets, d, "bert", n);
        let functions = report["functions"].as_object().unwrap();
        assert_eq!(functions.len(), 1, "the bucket of this length runs: {report}");
        let f = functions.values().next().unwrap();
        assert!(f["outputs"][0]["cosine"].as_f64().unwrap() >= 0.999, "{report}");
    }
    let oracle = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&buckets).output().unwrap();
    assert!(oracle.status.success(), "{}", String::from_utf8_lossy(&oracle.stdout));
}

/// A module with a registered cache written in place at a position each step, exported in the
/// default IR (an `index_copy_` node) and after `run_decompositions()` (a `buffer_mutation`
/// output), with torch's outputs over STEPS steps from the zero buffer.
const CACHE_SCRIPT: &str = r#"
import sys, numpy as np, torch
out = sys.argv[1]
class Cache(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(1, 4, 8))
        self.proj = torch.nn.Linear(4, 4)
    def forward(self, x, pos):
        self.k_cache.index_copy_(2, pos, self.proj(x).transpose(1, 2))
        return torch.softmax(self.k_cache.sum(dim=1), dim=-1), self.k_cache * 2
torch.manual_seed(0)
m = Cache().eval()
fresh = Cache().eval()
fresh.load_state_dict(m.state_dict())
ep = torch.export.export(m, (torch.randn(1, 1, 4), torch.tensor([0])))
torch.export.save(ep, f"{out}/cache.pt2")
torch.export.save(ep.run_decompositions(), f"{out}/cache_functional.pt2")
for step in range(3):
    x, pos = torch.randn(1, 1, 4), torch.tensor([step * 2])
    with torch.no_grad():
        a, b = m(x, pos)
    np.savez(f"{out}/cache.{step}.inputs.npz", x=x.numpy(), pos=pos.numpy().astype(np.int32))
    np.savez(f"{out}/cache.{step}.outputs.npz", output_0=a.numpy(), output_1=b.numpy())
# A dynamic number of new tokens: a prefill of 3, then 1, then 2.
s = torch.export.Dim("s", min=1, max=4)
torch.export.save(torch.export.export(fresh, (torch.randn(1, 2, 4), torch.tensor([0, 1])), dynamic_shapes=({1: s}, {0: s})), f"{out}/cache_dynamic.pt2")
for step, positions in enumerate(([0, 1, 2], [3], [4, 5])):
    x, pos = torch.randn(1, len(positions), 4), torch.tensor(positions)
    with torch.no_grad():
        a, b = fresh(x, pos)
    np.savez(f"{out}/cache_dynamic.{step}.inputs.npz", x=x.numpy(), pos=pos.numpy().astype(np.int32))
    np.savez(f"{out}/cache_dynamic.{step}.outputs.npz", output_0=a.numpy(), output_1=b.numpy())
"#;

/// Steps of the cache module compared.
const STEPS: usize = 3;

#[test]
#[ignore = "needs torch and coremltools from `make setup`; `make test` runs it"]
fn buffers_updated_in_place_become_states_that_step_like_torch() {
    use torch2coreml::interp::{self, Array};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let py = Command::new(root().join(".venv/bin/python")).arg("-c").arg(CACHE_SCRIPT).arg(d).output().unwrap();
    assert!(py.status.success(), "{}", stderr(&py));
    let arrays = |p: PathBuf| -> Vec<(String, Array)> { torch2coreml::validate::npz::read(&p).unwrap().into_iter().map(|(n, t)| (n, Array::from_tensor(&t).unwrap())).collect() };
    for (program, steps) in [("cache", "cache"), ("cache_functional", "cache"), ("cache_dynamic", "cache_dynamic")] {
        let pkg = d.join(format!("{program}.mlpackage"));
        let c = run(&["convert".as_ref(), d.join(format!("{program}.pt2")).as_os_str(), "-o".as_ref(), pkg.as_os_str(), "--target".as_ref(), "iOS18".as_ref(), "--format".as_ref(), "json".as_ref()]);
        assert!(c.status.success(), "{program}: {}", stderr(&c));
        let info = json(&run(&["inspect".as_ref(), pkg.as_os_str(), "--format".as_ref(), "json".as_ref()]));
        assert_eq!(info["states"], serde_json::json!([{"name": "k_cache", "shape": [1, 4, 8], "dtype": "fp16"}]), "{info}");
        if program == "cache_dynamic" {
            assert_eq!(info["inputs"][0]["flexible"]["range"], serde_json::json!([[1, 1], [1, 4], [4, 4]]), "{info}");
        }
        let oracle = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&pkg).output().unwrap();
        assert!(oracle.status.success(), "{}", String::from_utf8_lossy(&oracle.stdout));
        // Stepped from a zero state (Core ML's `makeState()`), as torch stepped its buffer.
        let model = torch2coreml::package::read(&pkg).unwrap();
        let main = model.program.main().unwrap().clone();
        let prepared = interp::Prepared::new(main.clone()).unwrap();
        let mut states = vec![("k_cache".to_string(), Array::from_tensor(&torch2coreml::mil::Tensor::from_f32_as_f16(&[1, 4, 8], &[0.0; 32])).unwrap())];
        for step in 0..STEPS {
            let got = prepared.run_stateful(&arrays(d.join(format!("{steps}.{step}.inputs.npz"))), &mut states).unwrap();
            let want = arrays(d.join(format!("{steps}.{step}.outputs.npz")));
            for r in torch2coreml::validate::compare(&got, &want, torch2coreml::validate::default_criterion(&main)).unwrap() {
                assert!(r.drift.pass && r.drift.cosine > 0.999, "{program} step {step}: {r:?}");
            }
        }
    }
    // Below iOS18 there are no states: one line saying so, nothing written.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = bad_dir.path().join("bad.mlpackage");
    let c = run(&["convert".as_ref(), d.join("cache.pt2").as_os_str(), "-o".as_ref(), bad.as_os_str()]);
    assert_eq!(c.status.code(), Some(2));
    assert!(stderr(&c).contains("buffer `k_cache`") && stderr(&c).contains("--target iOS18") && !bad.exists(), "{}", stderr(&c));
}

/// The test zoo's Hugging Face text models of each attention kind and a set of its vision models
/// (`fixtures/zoo/make.py` builds them), exported with a dynamic sequence length (text: both inputs' axis 1,
/// `Dim(min=4, max=64)`; RoBERTa's positions stop at 16) or batch (vision: `Dim(min=1, max=6)`),
/// with torch's outputs at the range's ends and at a size that is none of the sizes our range
/// check lowers at (11 of 4..64, 5 of 1..6).
const ZOO_SCRIPT: &str = r#"
import sys, numpy as np, torch
out, root = sys.argv[1], sys.argv[2]
sys.path.insert(0, f"{root}/fixtures/zoo")
import make
for name in ("bert", "roberta", "gpt2", "llama", "t5_encoder", "vit_hf", "vit_tv", "convnext_tiny"):
    torch.manual_seed(0)
    model, inputs = make.MODELS[name]()
    make.randomize_norms(model)
    model.eval()
    if "input_ids" in inputs:
        hi = 16 if name == "roberta" else 64
        dims, sizes = {k: {1: torch.export.Dim("seq", min=4, max=hi)} for k in inputs}, (4, 11, hi)
        def example(n):
            ids, mask = torch.randint(3, make.VOCAB, (2, n)), torch.ones(2, n, dtype=torch.int64)
            mask[1, n - 2:] = 0
            return {"input_ids": ids, "attention_mask": mask}
    else:
        (key, x), = inputs.items()
        dims, sizes = {key: {0: torch.export.Dim("batch", min=1, max=6)}}, (1, 5, 6)
        def example(n):
            return {key: torch.randn(n, *x.shape[1:])}
    with torch.no_grad():
        program = torch.export.export(model, (), kwargs=example(sizes[1] - 2), dynamic_shapes=dims, strict=False)
    torch.export.save(program, f"{out}/{name}.pt2")
    for n in sizes:
        inputs = example(n)
        with torch.no_grad():
            got = make.flatten(model(**inputs))
        np.savez(f"{out}/{name}.{n}.inputs.npz", **{k: v.numpy() for k, v in inputs.items()})
        np.savez(f"{out}/{name}.{n}.outputs.npz", **{f"output_{i}": t.numpy() for i, t in enumerate(got)})
    print(name, *sizes)
"#;

#[test]
#[ignore = "needs torch, torchvision, transformers and coremltools from `make setup`; `make test` runs it"]
fn the_zoo_exported_with_dynamic_dims_converts_to_ranges_that_match_torch_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let py = Command::new(root().join(".venv/bin/python")).arg("-c").arg(ZOO_SCRIPT).arg(d).arg(root()).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(py.status.success(), "{}", stderr(&py));
    let mut packages = Vec::new();
    for line in String::from_utf8_lossy(&py.stdout).lines() {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap().to_string();
        let sizes: Vec<usize> = words.map(|w| w.parse().unwrap()).collect();
        let pkg = d.join(format!("{name}.mlpackage"));
        let c = run(&["convert".as_ref(), d.join(format!("{name}.pt2")).as_os_str(), "-o".as_ref(), pkg.as_os_str(), "--format".as_ref(), "json".as_ref()]);
        assert!(c.status.success(), "{name}: {}", stderr(&c));
        let shapes = json(&c)["packages"][0]["shapes"].to_string();
        let range = format!("{}..{}", sizes[0], sizes[2]);
        assert!(shapes.contains(&range), "{name}: {shapes}");
        for n in sizes {
            let report = validate(&pkg, d, &name, n);
            let outputs = report["outputs"].as_array().unwrap();
            assert!(outputs.iter().all(|o| o["cosine"].as_f64().unwrap() >= 0.999), "{name} at {n}: {report}");
        }
        packages.push(pkg);
    }
    assert_eq!(packages.len(), 8, "{}", String::from_utf8_lossy(&py.stdout));
    let oracle = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).args(&packages).output().unwrap();
    assert!(oracle.status.success(), "{}", String::from_utf8_lossy(&oracle.stdout));
}
