//! BERT-family Hugging Face folders end to end (issue 8). The folders and the transformers
//! outputs they must reproduce are built by `fixtures/hf/make_bert.py` into `$T2C_HF` (`make
//! setup` does): tiny random BERT, DistilBERT and RoBERTa, and the real all-MiniLM-L6-v2. Each
//! converts (fp16), passes coremltools 9.0's type-check, lints clean of the layout rules
//! (ANE001–ANE003), and runs in our interpreter to the outputs transformers / sentence-transformers
//! saved. Bad folders, written here in Rust, fail with one line, exit 2, nothing written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Folders `make_bert.py` writes.
const FOLDERS: &[&str] = &["bert", "distilbert", "roberta", "minilm"];
/// Least cosine similarity to transformers per output and per example (fp16 package).
const MIN_COSINE: f64 = 0.999;
/// Layout rules a BERT package built in the ANE layout must not trigger.
const LAYOUT_RULES: &[&str] = &["ANE001", "ANE002", "ANE003"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn hf() -> PathBuf {
    let dir = std::env::var_os("T2C_HF").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/torch2coreml/hf")
    });
    assert!(dir.is_dir(), "{} is missing: run `make setup` (make test does)", dir.display());
    dir
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_torch2coreml"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The example indices `I` for which `NAME.I.inputs.npz` exists.
fn examples(hf: &Path, name: &str) -> Vec<usize> {
    let v: Vec<usize> = (0..).take_while(|i| hf.join(format!("{name}.{i}.inputs.npz")).is_file()).collect();
    assert!(!v.is_empty(), "{} has no examples of {name}", hf.display());
    v
}

fn convert(folder: &Path, out: &Path, extra: &[&str]) -> Output {
    bin().arg("convert").arg(folder).arg("-o").arg(out).args(extra).output().unwrap()
}

/// `validate --format json` of `pkg` on example `i` of `name` against `reference` args; the
/// report, after checking it passes with cosine ≥ [`MIN_COSINE`] on every output.
fn validate_example(pkg: &Path, hf: &Path, name: &str, i: usize, reference: &[&std::ffi::OsStr]) -> Result<serde_json::Value, String> {
    let v = bin()
        .arg("validate")
        .arg(pkg)
        .arg("--inputs")
        .arg(hf.join(format!("{name}.{i}.inputs.npz")))
        .args(reference)
        .args(["--format", "json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap_or_default();
    let outputs = report["outputs"].as_array().cloned().unwrap_or_default();
    let cosine_ok = !outputs.is_empty() && outputs.iter().all(|r| r["cosine"].as_f64().unwrap_or(0.0) >= MIN_COSINE);
    if v.status.success() && report["pass"] == true && cosine_ok {
        Ok(report)
    } else {
        Err(format!("{name}.{i}: validate: {} {}", String::from_utf8_lossy(&v.stdout), stderr(&v)))
    }
}

#[test]
#[ignore = "needs $T2C_HF and coremltools from `make setup`; `make test` runs it"]
fn every_folder_converts_type_checks_lints_clean_and_matches_transformers() {
    let hf = hf();
    let out = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut pkgs = Vec::new();
    for name in FOLDERS {
        let pkg = out.path().join(format!("{name}.mlpackage"));
        let c = convert(&hf.join(name), &pkg, &[]);
        if !c.status.success() {
            failures.push(format!("{name}: convert: {}", stderr(&c)));
            continue;
        }
        for i in examples(&hf, name) {
            let expected = hf.join(format!("{name}.{i}.outputs.npz"));
            match validate_example(&pkg, &hf, name, i, &["--expected".as_ref(), expected.as_os_str()]) {
                Ok(report) => {
                    let names: Vec<&str> = report["outputs"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
                    let want: &[&str] = if *name == "minilm" { &["last_hidden_state", "sentence_embedding"] } else { &["last_hidden_state"] };
                    if names != want {
                        failures.push(format!("{name}.{i}: outputs {names:?}, expected {want:?}"));
                    }
                }
                Err(e) => failures.push(e),
            }
        }
        let l = bin().arg("lint-ane").arg(&pkg).args(["--format", "json"]).output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap_or_default();
        let Some(findings) = report["findings"].as_array() else {
            failures.push(format!("{name}: lint-ane: {} {}", String::from_utf8_lossy(&l.stdout), stderr(&l)));
            continue;
        };
        for f in findings.iter().filter(|f| LAYOUT_RULES.contains(&f["code"].as_str().unwrap_or_default())) {
            failures.push(format!("{name}: lint-ane: {f}"));
        }
        pkgs.push(pkg);
    }
    let o = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).args(&pkgs).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.lines().filter(|l| l.starts_with("OK:")).count(), pkgs.len(), "oracle: {text} {}", String::from_utf8_lossy(&o.stderr));
    failures.extend(text.lines().filter(|l| !l.starts_with("OK:")).map(str::to_string));
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
#[ignore = "needs $T2C_HF from `make setup`; `make test` runs it"]
fn fp32_package_matches_transformers_tightly() {
    let hf = hf();
    let out = tempfile::tempdir().unwrap();
    for name in ["bert", "roberta"] {
        let pkg = out.path().join(format!("{name}.mlpackage"));
        let c = convert(&hf.join(name), &pkg, &["--precision", "fp32"]);
        assert!(c.status.success(), "{name}: {}", stderr(&c));
        for i in examples(&hf, name) {
            let expected = hf.join(format!("{name}.{i}.outputs.npz"));
            // fp32 default tolerances: atol = rtol = 0.001.
            validate_example(&pkg, &hf, name, i, &["--expected".as_ref(), expected.as_os_str()]).unwrap();
        }
    }
}

#[test]
#[ignore = "needs $T2C_HF from `make setup`; `make test` runs it"]
fn seq_len_sets_the_input_length_and_task_heads_are_tolerated() {
    let hf = hf();
    let out = tempfile::tempdir().unwrap();
    let pkg = out.path().join("MiniLM.mlpackage");
    let c = convert(&hf.join("minilm"), &pkg, &["--seq-len", "32", "--format", "json"]);
    assert!(c.status.success(), "{}", stderr(&c));
    let i = bin().arg("inspect").arg(&pkg).args(["--format", "json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    let text = report["inputs"].to_string();
    assert!(text.contains("input_ids") && text.contains("[1,32]"), "{text}");
    // MiniLM's checkpoint carries `pooler.*` and the `embeddings.position_ids` buffer, unused.
    let too_long = convert(&hf.join("minilm"), &out.path().join("Long.mlpackage"), &["--seq-len", "513"]);
    assert_eq!(too_long.status.code(), Some(2));
    assert!(stderr(&too_long).contains("--seq-len 513"), "{}", stderr(&too_long));
}

/// Largest size of the bucketed MiniLM package over the single-shape one (issue 15: weights
/// stored once, so only the per-bucket programs and position rows add).
const MAX_BUCKETS_OVERHEAD: f64 = 1.05;

/// Total bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).map(|e| if e.file_type().unwrap().is_dir() { dir_bytes(&e.path()) } else { e.metadata().unwrap().len() }).sum()
}

/// `validate PKG` on MiniLM's example `minilm.EXAMPLE.{inputs,outputs}.npz` in `hf`, as JSON.
fn validate_minilm(pkg: &Path, hf: &Path, example: &str) -> (std::process::Output, serde_json::Value) {
    let v = bin()
        .arg("validate")
        .arg(pkg)
        .arg("--inputs")
        .arg(hf.join(format!("minilm.{example}.inputs.npz")))
        .arg("--expected")
        .arg(hf.join(format!("minilm.{example}.outputs.npz")))
        .args(["--format", "json"])
        .output()
        .unwrap();
    let report = serde_json::from_slice(&v.stdout).unwrap_or_default();
    (v, report)
}

#[test]
#[ignore = "needs $T2C_HF and coremltools from `make setup`; `make test` runs it"]
fn seq_len_buckets_make_one_multifunction_package_matching_transformers_at_each_length() {
    let hf = hf();
    let out = tempfile::tempdir().unwrap();
    let (pkg, single) = (out.path().join("Buckets.mlpackage"), out.path().join("Single.mlpackage"));
    let c = convert(&hf.join("minilm"), &pkg, &["--seq-len", "64,128,256", "--target", "iOS18", "--format", "json"]);
    assert!(c.status.success(), "{}", stderr(&c));
    let summary: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    let functions = &summary["packages"][0]["functions"];
    assert_eq!(functions["default"], "seq_64", "{summary}");
    assert_eq!(functions["names"], serde_json::json!(["seq_128", "seq_256", "seq_64"]), "{summary}");
    let s = convert(&hf.join("minilm"), &single, &["--target", "iOS18"]);
    assert!(s.status.success(), "{}", stderr(&s));
    let (bucketed, one) = (dir_bytes(&pkg), dir_bytes(&single));
    assert!(bucketed as f64 <= MAX_BUCKETS_OVERHEAD * one as f64, "3 buckets take {bucketed} bytes, one shape {one}");

    // Each bucket against what transformers computed at that length: a multifunction package
    // given inputs runs the function taking their shape.
    for (example, function) in [("len64", "seq_64"), ("0", "seq_128"), ("len256", "seq_256")] {
        let (v, report) = validate_minilm(&pkg, &hf, example);
        let ran: Vec<&String> = report["functions"].as_object().map(|o| o.keys().collect()).unwrap_or_default();
        assert_eq!(ran, [function], "{example}: {report} {}", stderr(&v));
        let outputs = report["functions"][function]["outputs"].as_array().cloned().unwrap_or_default();
        assert_eq!(outputs.len(), 2, "{report}");
        assert!(v.status.success() && outputs.iter().all(|o| o["cosine"].as_f64().unwrap_or(0.0) >= MIN_COSINE), "{example}: {report}");
    }
    // Without inputs every function runs; --function picks one; a wrong name is refused.
    let all = bin().arg("validate").arg(&pkg).arg("--against").arg(&single).args(["--function", "seq_128", "--format", "json"]).output().unwrap();
    assert!(all.status.success(), "{} {}", String::from_utf8_lossy(&all.stdout), stderr(&all));
    let wrong = bin().arg("validate").arg(&pkg).arg("--against").arg(&single).args(["--function", "seq_100"]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(stderr(&wrong).contains("seq_128, seq_256, seq_64"), "{}", stderr(&wrong));

    let i = bin().arg("inspect").arg(&pkg).args(["--format", "json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    let shapes: Vec<String> = report["functions"].as_array().unwrap().iter().map(|f| f["inputs"][0]["shape"].to_string()).collect();
    assert_eq!(shapes, ["[1,64]", "[1,128]", "[1,256]"], "{report}");
    let l = bin().arg("lint-ane").arg(&pkg).args(["--format", "json"]).output().unwrap();
    let findings: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
    let linted: std::collections::BTreeSet<&str> = findings["findings"].as_array().unwrap().iter().filter_map(|f| f["location"]["function"].as_str()).collect();
    assert_eq!(linted.len(), 3, "lint-ane covers every function: {findings}");

    // coremltools type-checks every function against its own description.
    let o = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg("--json").arg(&pkg).output().unwrap();
    let oracle: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let r = &oracle[pkg.to_str().unwrap()];
    assert!(r["ok"] == true && r["functions"] == serde_json::json!(["seq_128", "seq_256", "seq_64"]), "{oracle} {}", stderr(&o));

    // Below iOS18 there are no functions: one `main` with enumerated shapes whose baked sizes
    // (position rows, reshape targets) are computed from the input's shape, with a warning.
    // It matches transformers at each length and coremltools type-checks it.
    let old = out.path().join("Old.mlpackage");
    let c = convert(&hf.join("minilm"), &old, &["--seq-len", "64,128,256", "--format", "json"]);
    assert!(c.status.success(), "{}", stderr(&c));
    let summary: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert!(summary["packages"][0]["warnings"].to_string().contains("computed from the input's shape"), "{summary}");
    assert!(dir_bytes(&old) as f64 <= MAX_BUCKETS_OVERHEAD * one as f64, "enumerated: {} bytes, one shape {one}", dir_bytes(&old));
    let i = bin().arg("inspect").arg(&old).args(["--format", "json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    assert_eq!(report["inputs"][0]["flexible"]["enumerated"], serde_json::json!([[1, 64], [1, 128], [1, 256]]), "{report}");
    for example in ["len64", "0", "len256"] {
        let (v, report) = validate_minilm(&old, &hf, example);
        let outputs = report["outputs"].as_array().cloned().unwrap_or_default();
        assert_eq!(outputs.len(), 2, "{report} {}", stderr(&v));
        assert!(v.status.success() && outputs.iter().all(|o| o["cosine"].as_f64().unwrap_or(0.0) >= MIN_COSINE), "{example}: {report}");
    }
    let o = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&old).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

// ---- bad folders (pure Rust: no venv needed) ----------------------------------------------

/// Hidden size, heads, intermediate size, vocabulary and positions of the hand-made folder.
const TINY: (usize, usize, usize, usize, usize) = (8, 2, 16, 20, 16);

/// Tensor names and shapes of a one-layer BERT with the TINY sizes.
fn tiny_bert_tensors() -> Vec<(String, Vec<usize>)> {
    let (c, _, i, v, p) = TINY;
    let mut t: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![v, c]),
        ("embeddings.position_embeddings.weight".into(), vec![p, c]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, c]),
        ("embeddings.LayerNorm.weight".into(), vec![c]),
        ("embeddings.LayerNorm.bias".into(), vec![c]),
    ];
    let l = "encoder.layer.0";
    for (m, o, n) in [
        ("attention.self.query", c, c),
        ("attention.self.key", c, c),
        ("attention.self.value", c, c),
        ("attention.output.dense", c, c),
        ("intermediate.dense", i, c),
        ("output.dense", c, i),
    ] {
        t.push((format!("{l}.{m}.weight"), vec![o, n]));
        t.push((format!("{l}.{m}.bias"), vec![o]));
    }
    for m in ["attention.output.LayerNorm", "output.LayerNorm"] {
        t.push((format!("{l}.{m}.weight"), vec![c]));
        t.push((format!("{l}.{m}.bias"), vec![c]));
    }
    t
}

/// Writes a one-layer BERT folder; `edit` may change the tensor list and `poison` names a tensor
/// whose first value becomes NaN.
fn write_tiny_bert(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>)>), poison: Option<&str>) {
    let (c, h, i, v, p) = TINY;
    let mut tensors = tiny_bert_tensors();
    edit(&mut tensors);
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            (0..count)
                .map(|k| if k == 0 && poison == Some(n.as_str()) { f32::NAN } else { ((k * 7 % 13) as f32 - 6.0) / 20.0 })
                .flat_map(|x| x.to_le_bytes())
                .collect()
        })
        .collect();
    let views = tensors.iter().zip(&bytes).map(|((n, s), b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()));
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({"model_type": "bert", "hidden_size": c, "num_attention_heads": h,
        "num_hidden_layers": 1, "intermediate_size": i, "vocab_size": v, "max_position_embeddings": p,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Converts `folder` into an empty directory and checks: exit 2, one stderr line containing
/// every one of `needles`, and nothing left in the output directory.
fn assert_refused(folder: &Path, needles: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    let o = convert(folder, &out.path().join("Model.mlpackage"), &["--seq-len", "8"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing written, found {left:?}");
}

#[test]
fn the_hand_made_folder_converts() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), |_| {}, None);
    let out = tempfile::tempdir().unwrap();
    let o = convert(dir.path(), &out.path().join("Model.mlpackage"), &["--seq-len", "8"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), |t| t.retain(|(n, _)| n != "encoder.layer.0.attention.self.key.bias"), None);
    assert_refused(dir.path(), &["encoder.layer.0.attention.self.key.bias", "missing"]);
}

#[test]
fn mis_shaped_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), |t| t.iter_mut().filter(|(n, _)| n == "encoder.layer.0.intermediate.dense.weight").for_each(|(_, s)| *s = vec![8, 16]), None);
    assert_refused(dir.path(), &["model.safetensors", "encoder.layer.0.intermediate.dense.weight", "[16, 8]", "[8, 16]"]);
}

#[test]
fn truncated_safetensors_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), |_| {}, None);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    assert_refused(dir.path(), &["model.safetensors", "truncated"]);
}

#[test]
fn unknown_model_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), |_| {}, None);
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"bert\"", "\"mamba\"");
    std::fs::write(&path, text).unwrap();
    assert_refused(dir.path(), &["config.json", "mamba", "bert, distilbert, roberta"]);
}

#[test]
fn nan_weight_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), |_| {}, Some("encoder.layer.0.output.dense.weight"));
    assert_refused(dir.path(), &["model.safetensors", "encoder.layer.0.output.dense.weight", "NaN"]);
}

#[test]
fn extra_tensor_is_named_but_task_heads_are_not() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), |t| t.push(("encoder.layer.1.output.dense.bias".into(), vec![8])), None);
    assert_refused(dir.path(), &["encoder.layer.1.output.dense.bias", "unexpected"]);
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(
        dir.path(),
        |t| {
            for (n, _) in t.iter_mut() {
                *n = format!("bert.{n}");
            }
            t.push(("cls.predictions.bias".into(), vec![20]));
            t.push(("bert.pooler.dense.bias".into(), vec![8]));
        },
        None,
    );
    let out = tempfile::tempdir().unwrap();
    let o = convert(dir.path(), &out.path().join("Model.mlpackage"), &["--seq-len", "8"]);
    assert!(o.status.success(), "a BertForMaskedLM-style checkpoint converts: {}", stderr(&o));
}

// ---- the tch reference (cargo feature `torch`) --------------------------------------------

/// How far the tch forward may be from transformers: the same libtorch in fp32, but transformers
/// runs attention through SDPA and a different mask constant, so reductions round differently.
#[cfg(feature = "torch")]
const TCH_VS_TRANSFORMERS_TOL: f64 = 1e-4;

#[cfg(feature = "torch")]
fn arrays(path: &Path) -> Vec<(String, torch2coreml::interp::Array)> {
    torch2coreml::validate::npz::read(path)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, torch2coreml::interp::Array::from_tensor(&t).unwrap()))
        .collect()
}

#[cfg(feature = "torch")]
#[test]
#[ignore = "needs $T2C_HF from `make setup`; `make test` runs it"]
fn tch_reference_reproduces_transformers_and_validate_reference_folder_passes() {
    let hf = hf();
    let out = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for name in FOLDERS {
        for i in examples(&hf, name) {
            let inputs = arrays(&hf.join(format!("{name}.{i}.inputs.npz")));
            let want = arrays(&hf.join(format!("{name}.{i}.outputs.npz")));
            let got = torch2coreml::reference::bert::run(&hf.join(name), &inputs).unwrap();
            assert_eq!(got.len(), want.len(), "{name}.{i}");
            for r in torch2coreml::validate::compare(&got, &want, torch2coreml::validate::Criterion::Allclose { atol: TCH_VS_TRANSFORMERS_TOL, rtol: TCH_VS_TRANSFORMERS_TOL }).unwrap() {
                if !r.drift.pass {
                    failures.push(format!("{name}.{i}: tch vs transformers `{}`: {:?}", r.name, r.drift));
                }
            }
        }
        let pkg = out.path().join(format!("{name}.mlpackage"));
        let c = convert(&hf.join(name), &pkg, &[]);
        assert!(c.status.success(), "{name}: {}", stderr(&c));
        let folder = hf.join(name);
        if let Err(e) = validate_example(&pkg, &hf, name, 0, &["--reference".as_ref(), folder.as_os_str()]) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
