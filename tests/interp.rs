//! Interpreter tests against torch: every case of fixtures/interp/cases.json (written by
//! fixtures/interp/make.py from torch) is built as a one-op MIL program with the Builder, run by
//! `interp::run`, and compared with torch's numbers; the coremltools-written packages in
//! fixtures/coremltools/out run on their torch inputs and must give torch's outputs (proof that
//! we read MIL as Core ML means it). In `make test`, coremltools 9.0 also type-checks the
//! one-op programs (our `infer` against theirs).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use torch2coreml::interp::{self, Array, Data};
use torch2coreml::mil::builder::{Builder, Var};
use torch2coreml::mil::ops::{self, OPS};
use torch2coreml::mil::{DType, Function, Model, Opset, Program, TensorType};
use torch2coreml::package;

fn fixture(path: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e} (run fixtures/interp/make.py)", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn shape_of(v: &Value) -> Vec<usize> {
    v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v["data"].as_array().unwrap().iter().map(|d| d.as_f64().unwrap() as f32).collect()
}

fn dtype_of(v: &Value) -> DType {
    DType::from_name(v["dtype"].as_str().unwrap()).unwrap()
}

/// A JSON tensor as an interpreter value.
fn array(v: &Value) -> Array {
    let (dtype, shape) = (dtype_of(v), shape_of(v));
    let data = v["data"].as_array().unwrap();
    match dtype {
        DType::F16 | DType::F32 => Array::float(dtype, shape, f32s(v)),
        DType::I32 => Array::int(shape, data.iter().map(|d| d.as_i64().unwrap() as i32).collect()),
        DType::U32 => Array { dtype, shape, data: Data::I32(data.iter().map(|d| d.as_i64().unwrap() as i32).collect()) },
        DType::Bool => Array::bools(shape, data.iter().map(|d| d.as_bool().unwrap()).collect()),
        DType::String => Array { dtype, shape, data: Data::Str(vec![data[0].as_str().unwrap().to_string()]) },
        d => panic!("fixture dtype {d}"),
    }
}

fn opset(case: &Value) -> Opset {
    Opset::from_target(case["opset"].as_str().unwrap()).unwrap()
}

/// The case's one-op program: inputs for `kind: input` args, consts for `kind: const`, iOS18
/// state inputs for `kind: state`; with `scalars_as_consts`, rank-0 inputs become consts too
/// (Core ML has no rank-0 model inputs). Returns the program, its input feeds and its states.
fn build(case: &Value, scalars_as_consts: bool) -> (Function, Vec<(String, Array)>, Vec<(String, Array)>) {
    let op = case["op"].as_str().unwrap();
    let opset = opset(case);
    let def = ops::lookup(op, opset).unwrap_or_else(|| panic!("no OpDef for {op} at {opset:?}"));
    let mut b = Builder::new(opset);
    let mut bound: Vec<(String, Vec<Var>)> = Vec::new();
    let (mut feeds, mut states) = (Vec::new(), Vec::new());
    for (i, arg) in case["args"].as_array().unwrap().iter().enumerate() {
        let param = arg["param"].as_str().unwrap().to_string();
        let value = array(arg);
        let var = if arg["kind"] == "state" {
            let v = b.state_input(&format!("{param}_{i}"), TensorType::new(value.dtype, &value.shape));
            states.push((v.0.clone(), value));
            v
        } else if arg["kind"] == "input" && !(scalars_as_consts && value.shape.is_empty()) {
            let name = format!("{param}_{i}");
            let v = b.input(&name, TensorType::new(value.dtype, &value.shape));
            feeds.push((v.0.clone(), value));
            v
        } else {
            b.konst(&format!("{op}_{param}"), value.to_tensor())
        };
        match bound.iter_mut().find(|(p, _)| *p == param) {
            Some((_, vs)) => vs.push(var),
            None => bound.push((param, vec![var])),
        }
    }
    let mut ob = b.op(def, "out");
    for (param, vars) in &bound {
        ob = if def.params.iter().any(|p| p.name == param && p.variadic) {
            ob.args(param, vars)
        } else {
            ob.arg(param, &vars[0])
        };
    }
    let outs = ob.build().unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
    (b.finish(&outs), feeds, states)
}

/// Compares one value with torch's; `None` when they agree, else what differs.
fn differs(got: &Array, want: &Value, rtol: f32, atol: f32) -> Option<String> {
    let want_shape = shape_of(want);
    if got.shape != want_shape || got.dtype != dtype_of(want) {
        return Some(format!("got {} {:?}, torch {} {:?}", got.dtype, got.shape, dtype_of(want), want_shape));
    }
    let expect = array(want);
    match (&got.data, &expect.data) {
        (Data::F32(g), Data::F32(w)) => {
            let (i, err) = g
                .iter()
                .zip(w)
                .map(|(&g, &w)| if g == w { 0.0 } else { (g - w).abs() - rtol * w.abs() })
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, e)| if e.is_nan() || e > best.1 { (i, e) } else { best });
            (err > atol || err.is_nan()).then(|| format!("element {i}: got {}, torch {}", g[i], w[i]))
        }
        (g, w) => (g != w).then(|| format!("got {g:?}, torch {w:?}")),
    }
}

#[test]
fn every_op_kernel_matches_torch() {
    let cases = fixture("fixtures/interp/cases.json");
    let mut failures = Vec::new();
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (f, feeds, mut states) = build(case, false);
        let (rtol, atol) = (case["rtol"].as_f64().unwrap() as f32, case["atol"].as_f64().unwrap() as f32);
        match interp::run_stateful(&f, &feeds, &mut states) {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(outs) => {
                let want = case["outputs"].as_array().unwrap();
                if outs.len() != want.len() {
                    failures.push(format!("{name}: {} outputs, torch {}", outs.len(), want.len()));
                }
                for (k, ((_, got), want)) in outs.iter().zip(want).enumerate() {
                    if let Some(d) = differs(got, want, rtol, atol) {
                        failures.push(format!("{name} output {k}: {d}"));
                    }
                }
                let after = case["states_after"].as_array().map(Vec::as_slice).unwrap_or_default();
                for (k, ((_, got), want)) in states.iter().zip(after).enumerate() {
                    if let Some(d) = differs(got, want, rtol, atol) {
                        failures.push(format!("{name} state {k} after the op: {d}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from torch:\n{}",
        failures.len(),
        cases.as_array().unwrap().len(),
        failures.join("\n")
    );
}

#[test]
fn every_op_in_the_table_has_a_torch_case() {
    let cases = fixture("fixtures/interp/cases.json");
    let covered: HashSet<&str> = cases.as_array().unwrap().iter().map(|c| c["op"].as_str().unwrap()).collect();
    let missing: Vec<&str> = OPS.iter().map(|d| d.name).filter(|n| *n != "const" && !covered.contains(n)).collect();
    assert!(missing.is_empty(), "ops without a torch case in fixtures/interp/make.py: {missing:?}");
}

/// (model, target suffix, absolute tolerance, relative tolerance) for the coremltools packages.
/// fp32 packages agree to float rounding; fp16 ones to what ~10 fp16 ops of drift allow.
const PACKAGES: &[(&str, &str, f32, f32)] = &[
    ("mlp", "ios15_fp32", 1e-4, 1e-4),
    ("mlp", "ios16_fp16", 1e-2, 1e-2),
    ("mlp", "ios18_fp16", 1e-2, 1e-2),
    ("convnet", "ios15_fp32", 1e-4, 1e-4),
    ("convnet", "ios16_fp16", 3e-2, 1e-2),
    ("convnet", "ios18_fp16", 3e-2, 1e-2),
    ("attention", "ios15_fp32", 1e-4, 1e-4),
    ("attention", "ios16_fp16", 1e-2, 1e-2),
    ("attention", "ios18_fp16", 1e-2, 1e-2),
    // coremltools' prelu, elu and reduce_l2_norm (issue 14).
    ("activations", "ios15_fp32", 1e-4, 1e-4),
    ("activations", "ios16_fp16", 1e-2, 1e-2),
    ("activations", "ios18_fp16", 1e-2, 1e-2),
    // coremltools' lstm (two layers, bidirectional) and rnn from torch; gru from its MIL builder.
    ("recurrent", "ios15_fp32", 1e-4, 1e-4),
    ("recurrent", "ios16_fp16", 1e-2, 1e-2),
    ("recurrent", "ios18_fp16", 1e-2, 1e-2),
    ("gru_reset_before", "ios15_fp32", 1e-4, 1e-4),
    ("gru_reset_before", "ios17_fp16", 1e-2, 1e-2),
    ("gru_reset_after", "ios18_fp16", 1e-2, 1e-2),
];

#[test]
fn coremltools_packages_run_to_torch_outputs() {
    let models = fixture("fixtures/interp/models.json");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/coremltools/out");
    let mut failures = Vec::new();
    for &(model, target, atol, rtol) in PACKAGES {
        let path = dir.join(format!("{model}_{target}.mlpackage"));
        let m = package::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let main = m.program.main().unwrap();
        let io = &models[model];
        let feeds: Vec<(String, Array)> = io["inputs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, v)| (name.clone(), Array::float(DType::F32, shape_of(v), f32s(v))))
            .collect();
        let outs = interp::run(main, &feeds).unwrap_or_else(|e| panic!("{model}_{target}: {e}"));
        for (name, got) in &outs {
            let want = &io["outputs"][name];
            let mut want = want.clone();
            want["dtype"] = Value::from(got.dtype.name());
            if let Some(d) = differs(got, &want, rtol, atol) {
                failures.push(format!("{model}_{target} `{name}`: {d}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fp32_run_of_an_fp16_package_is_closer_to_torch() {
    let models = fixture("fixtures/interp/models.json");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/coremltools/out/attention_ios16_fp16.mlpackage");
    let m = package::read(&path).unwrap();
    let io = &models["attention"];
    let x = &io["inputs"]["x"];
    let feeds = vec![("x".to_string(), Array::float(DType::F32, shape_of(x), f32s(x)))];
    let max_err = |compute| {
        let outs = interp::run_with(m.program.main().unwrap(), &feeds, compute, &mut |_, _| {}).unwrap();
        let (name, got) = &outs[0];
        let want = f32s(&io["outputs"][name]);
        got.floats().unwrap().iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max)
    };
    let (fp16, fp32) = (max_err(interp::Compute::AsDeclared), max_err(interp::Compute::Fp32));
    assert!(fp32 < fp16, "fp32 run drift {fp32} should be below the fp16 run's {fp16}");
    assert!(fp32 < 5e-3, "fp32 run drift {fp32} (only fp16 weights remain)");
}

/// The one-op programs whose I/O Core ML allows as model I/O (fp32/fp16/int32), as packages.
fn oracle_packages(dir: &Path) -> Vec<PathBuf> {
    let cases = fixture("fixtures/interp/cases.json");
    let io_ok = |v: &Value| matches!(v["dtype"].as_str(), Some("fp32" | "fp16" | "int32"));
    let mut paths = Vec::new();
    for case in cases.as_array().unwrap() {
        let is_input = |a: &&Value| a["kind"] == "input" && !a["shape"].as_array().unwrap().is_empty();
        let inputs_ok = case["args"].as_array().unwrap().iter().filter(is_input).all(io_ok);
        if !inputs_ok || !case["outputs"].as_array().unwrap().iter().all(io_ok) {
            continue;
        }
        let (f, _, _) = build(case, true);
        let path = dir.join(format!("{}.mlpackage", case["name"].as_str().unwrap()));
        package::write(&Model::new(Program::with_main(f)), &path).unwrap_or_else(|e| panic!("{e}"));
        paths.push(path);
    }
    paths
}

#[test]
#[ignore = "needs coremltools 9.0 from `make setup`; `make test` runs it"]
fn coremltools_type_checks_every_one_op_program() {
    let dir = tempfile::tempdir().unwrap();
    let paths = oracle_packages(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/validate_mlpackage.py");
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let out = Command::new(python).arg(&script).args(&paths).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fails: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails.is_empty() && out.status.success(),
        "coremltools rejected:\n{}\n{}",
        fails.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("OK:").count(), paths.len(), "{stdout}");
}

#[test]
fn builder_programs_of_tests_common_run() {
    // Every shared test program runs end to end (no torch numbers: a smoke test that the
    // kernels accept what our own Builder emits, at every target).
    for (name, model) in common::all() {
        let main = model.program.main().unwrap();
        let feeds: Vec<(String, Array)> = main
            .inputs
            .iter()
            .map(|i| {
                let ty = i.ty.tensor();
                let shape = ty.fixed_shape().unwrap();
                let n = shape.iter().product();
                let v = match ty.dtype {
                    DType::I32 => Array::int(shape, (0..n as i32).map(|k| k % 7).collect()),
                    d => Array::float(d, shape, common::rand(n, 3)),
                };
                (i.name.clone(), v)
            })
            .collect();
        let outs = interp::run(main, &feeds).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (o, v) in outs {
            assert!(v.to_f32_vec().unwrap().iter().all(|x| x.is_finite()), "{name}: `{o}` has non-finite values");
        }
    }
}
