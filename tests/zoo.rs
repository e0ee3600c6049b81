//! The model zoo end to end (built by `fixtures/zoo/make.py` into `$T2C_ZOO`, which `make setup`
//! does): every torchvision and Hugging Face model, traced (`.pt`) and exported with
//! torch.export (`.pt2`), converts with `convert`, every package
//! passes coremltools 9.0's type-check, and every package run in our interpreter agrees with the
//! outputs PyTorch saved for the same inputs (`validate --expected`).

mod zoo_dir;
use zoo_dir::zoo;

use std::path::Path;
use std::process::Command;


fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_torch2coreml"))
}

#[test]
#[ignore = "needs the zoo and coremltools from `make setup`; `make test` runs it"]
fn every_zoo_model_converts_type_checks_and_matches_torch() {
    let zoo = zoo();
    let mut models: Vec<String> = std::fs::read_dir(&zoo)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".pt").map(str::to_string))
        .collect();
    models.sort();
    assert!(models.len() >= 20, "zoo has {} models: {models:?}", models.len());
    let out = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut pkgs = Vec::new();
    // Each model as traced (`.pt`, input shapes from the example) and as torch.export captured
    // it (`.pt2`, which carries its shapes; issue 15), held to the same criterion.
    for (m, ext) in models.iter().flat_map(|m| [(m, "pt"), (m, "pt2")]) {
        let pkg = out.path().join(format!("{m}_{ext}.mlpackage"));
        let inputs = zoo.join(format!("{m}.inputs.npz"));
        let mut c = bin();
        c.arg("convert").arg(zoo.join(format!("{m}.{ext}"))).arg("-o").arg(&pkg);
        if ext == "pt" {
            c.arg("--example").arg(&inputs);
        }
        let c = c.output().unwrap();
        if !c.status.success() {
            failures.push(format!("{m}.{ext}: convert: {}", String::from_utf8_lossy(&c.stderr)));
            continue;
        }
        let v = bin()
            .arg("validate")
            .arg(&pkg)
            .arg("--inputs")
            .arg(&inputs)
            .arg("--expected")
            .arg(zoo.join(format!("{m}.outputs.npz")))
            .args(["--format", "json"])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap_or_default();
        let cosine_ok = report["outputs"].as_array().is_some_and(|o| o.iter().all(|r| r["cosine"].as_f64().unwrap_or(0.0) >= 0.9999));
        if !v.status.success() || report["pass"] != true || !cosine_ok {
            failures.push(format!("{m}.{ext}: validate: {} {}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr)));
        }
        pkgs.push(pkg);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(root.join(".venv/bin/python")).arg(root.join("tests/oracle/validate_mlpackage.py")).args(&pkgs).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    failures.extend(text.lines().filter(|l| !l.starts_with("OK:")).map(str::to_string));
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Batches and image sizes of the bucketed ResNet-18 (issue 15: a dynamic batch for vision).
const RESNET_BUCKETS: &str = "x:1x3x64x64,2x3x64x64,4x3x96x96";

#[cfg(feature = "torch")]
#[test]
#[ignore = "needs the zoo and coremltools from `make setup`; `make test` runs it"]
fn traced_resnet_bucketed_by_batch_and_size_validates_against_torch_at_every_shape() {
    let zoo = zoo();
    let out = tempfile::tempdir().unwrap();
    let model = zoo.join("resnet18.pt");
    for target in ["iOS16", "iOS18"] {
        let pkg = out.path().join(format!("resnet18_{target}.mlpackage"));
        let c = bin().arg("convert").arg(&model).arg("-o").arg(&pkg).args(["--input", "x:1x3x64x64", "--shapes", RESNET_BUCKETS, "--target", target, "--format", "json"]).output().unwrap();
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
        // The trace's reshapes differ only in the batch, which becomes -1: one program for
        // every shape, with enumerated shapes (no multifunction needed, at any target).
        assert_eq!(summary["packages"][0]["shapes"]["x"], "1x3x64x64 | 2x3x64x64 | 4x3x96x96", "{summary}");
        assert!(summary["packages"][0]["functions"].is_null(), "{summary}");
        let v = bin().arg("validate").arg(&pkg).arg("--reference").arg(&model).args(["--format", "json"]).output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap_or_default();
        assert!(v.status.success() && report["pass"] == true, "{report} {}", String::from_utf8_lossy(&v.stderr));
        let batches: Vec<u64> = report["shapes"].as_array().unwrap().iter().map(|s| s["outputs"][0]["shape"][0].as_u64().unwrap()).collect();
        assert_eq!(batches, [1, 2, 4], "{report}");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let o = Command::new(root.join(".venv/bin/python")).arg(root.join("tests/oracle/validate_mlpackage.py")).arg(&pkg).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }
}
