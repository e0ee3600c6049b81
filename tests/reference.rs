//! The reference runner (`src/reference/`, cargo feature `torch`; `make test` turns it on): every
//! model our `convert` handles validates against its own `.pt` run in PyTorch through tch
//! (`validate --reference`) within the default tolerances, and tch itself reproduces the outputs
//! Python torch saved for the zoo (`$T2C_ZOO/NAME.outputs.npz`), so the runner is right.

#![cfg(feature = "torch")]

mod zoo_dir;
use zoo_dir::zoo;

use std::path::Path;
use std::process::{Command, Output};

use torch2coreml::interp::Array;
use torch2coreml::validate::{self, npz};

/// How far tch may be from the outputs Python torch saved: the same libtorch on the same CPU,
/// so only thread-scheduling differences in reductions remain.
const TCH_VS_PYTHON_ATOL: f64 = 1e-5;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}


/// Every model name in the zoo (`NAME.pt` beside `NAME.inputs.npz` and `NAME.outputs.npz`).
fn zoo_models(zoo: &Path) -> Vec<String> {
    let mut models: Vec<String> = std::fs::read_dir(zoo)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".pt").map(str::to_string))
        .collect();
    models.sort();
    assert!(!models.is_empty(), "{} holds no models", zoo.display());
    models
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_torch2coreml"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// (fixture, --input flags), as in tests/convert.rs.
const FIXTURES: &[(&str, &[&str])] = &[
    ("fixtures/torchscript/mlp.pt", &["--input", "x:2x8:fp32"]),
    ("fixtures/torchscript/convnet.pt", &["--input", "x:1x3x6x6:fp32"]),
    ("fixtures/torchscript/zoo.pt", &["--input", "x:2x4:fp32"]),
];

#[test]
fn converted_fixtures_validate_against_their_pt_on_random_inputs() {
    let dir = tempfile::tempdir().unwrap();
    for (model, inputs) in FIXTURES {
        let pt = root().join(model);
        for precision in ["fp16", "fp32"] {
            let pkg = dir.path().join(format!("{}_{precision}.mlpackage", pt.file_stem().unwrap().to_str().unwrap()));
            let c = bin().arg("convert").arg(&pt).arg("-o").arg(&pkg).args(*inputs).args(["--precision", precision]).output().unwrap();
            assert!(c.status.success(), "{model} {precision}: convert: {}", text(&c));
            for seed in ["0", "1"] {
                let v = bin().arg("validate").arg(&pkg).arg("--reference").arg(&pt).args(["--seed", seed]).output().unwrap();
                assert_eq!(v.status.code(), Some(0), "{model} {precision} seed {seed}: {}", text(&v));
                assert!(String::from_utf8_lossy(&v.stdout).contains("all outputs within tolerance"), "{}", text(&v));
            }
        }
    }
}

#[test]
fn a_wrong_model_fails_validation() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("mlp.mlpackage");
    let c = bin().arg("convert").arg(root().join("fixtures/torchscript/mlp.pt")).arg("-o").arg(&pkg).args(["--input", "x:2x8:fp32"]).output().unwrap();
    assert!(c.status.success(), "{}", text(&c));
    // zoo.pt takes a [2, 4] input: torch refuses the [2, 8] one, which is exit 2 with one line.
    let v = bin().arg("validate").arg(&pkg).arg("--reference").arg(root().join("fixtures/torchscript/zoo.pt")).output().unwrap();
    let err = String::from_utf8_lossy(&v.stderr);
    assert_eq!(v.status.code(), Some(2), "{}", text(&v));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("zoo.pt") && err.contains("forward failed"), "{err}");
}

#[test]
#[ignore = "needs the zoo from `make setup`; `make test` runs it"]
fn tch_reproduces_the_outputs_python_torch_saved() {
    let zoo = zoo();
    let mut failures = Vec::new();
    for m in zoo_models(&zoo) {
        let read = |suffix: &str| -> Vec<(String, Array)> {
            npz::read(&zoo.join(format!("{m}.{suffix}.npz"))).unwrap().iter().map(|(n, t)| (n.clone(), Array::from_tensor(t).unwrap())).collect()
        };
        let got = match torch2coreml::reference::run(&zoo.join(format!("{m}.pt")), &read("inputs")) {
            Ok(got) => got,
            Err(e) => {
                failures.push(format!("{m}: {e}"));
                continue;
            }
        };
        match validate::compare(&got, &read("outputs"), torch2coreml::validate::Criterion::Allclose { atol: TCH_VS_PYTHON_ATOL, rtol: 0.0 }) {
            Ok(reports) => failures.extend(reports.iter().filter(|r| !r.drift.pass).map(|r| format!("{m}: {} max_abs {:.3e}", r.name, r.drift.max_abs))),
            Err(e) => failures.push(format!("{m}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
#[ignore = "needs the zoo from `make setup`; `make test` runs it"]
fn every_zoo_model_validates_against_its_pt() {
    let zoo = zoo();
    let out = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for m in zoo_models(&zoo) {
        let (pt, inputs) = (zoo.join(format!("{m}.pt")), zoo.join(format!("{m}.inputs.npz")));
        let pkg = out.path().join(format!("{m}.mlpackage"));
        let c = bin().arg("convert").arg(&pt).arg("-o").arg(&pkg).arg("--example").arg(&inputs).output().unwrap();
        if !c.status.success() {
            failures.push(format!("{m}: convert: {}", text(&c)));
            continue;
        }
        let v = bin().arg("validate").arg(&pkg).arg("--reference").arg(&pt).arg("--inputs").arg(&inputs).output().unwrap();
        if v.status.code() != Some(0) {
            failures.push(format!("{m}: validate: {}", text(&v)));
        }
        std::fs::remove_dir_all(&pkg).unwrap();
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
#[ignore = "needs the zoo from `make setup`; `make test` runs it"]
fn a_package_fails_against_another_models_pt() {
    let zoo = zoo();
    let out = tempfile::tempdir().unwrap();
    let (pkg, inputs) = (out.path().join("resnet18.mlpackage"), zoo.join("resnet18.inputs.npz"));
    let c = bin().arg("convert").arg(zoo.join("resnet18.pt")).arg("-o").arg(&pkg).arg("--example").arg(&inputs).output().unwrap();
    assert!(c.status.success(), "{}", text(&c));
    // Same signature ([1, 3, 64, 64] → [1, 10]), different network: runs, and drifts.
    let v = bin().arg("validate").arg(&pkg).arg("--reference").arg(zoo.join("mobilenet_v2.pt")).arg("--inputs").arg(&inputs).output().unwrap();
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(String::from_utf8_lossy(&v.stdout).contains("FAIL"), "{}", text(&v));
}
