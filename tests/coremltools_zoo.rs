//! The zoo as coremltools converts it (`fixtures/coremltools/zoo.py`, run by `make setup` into
//! `$T2C_CT_ZOO`): every package `ct.convert` wrote runs in our interpreter and agrees with the
//! outputs PyTorch saved (`$T2C_ZOO`, from `fixtures/zoo/make.py`). This checks that the
//! interpreter reads MIL as Core ML's own converter writes it, not only as our `convert` does;
//! `NAME@pt2` packages are coremltools' conversions of the zoo's torch.export programs.
//! coremltools' output names (`var_123`) differ from the zoo's `output_N`, so `validate` pairs
//! outputs by position.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fewer converted models than this means the fixture run broke, not that a few models are
/// beyond coremltools 9.0; the test must not pass on an (almost) empty directory.
const MIN_CONVERTED: usize = 10;
/// coremltools computes in fp16 (`ct.precision.FLOAT16`), so looser than `tests/zoo.rs`'s fp32.
const MIN_COSINE: f64 = 0.999;

/// `$var`, or `~/.cache/torch2coreml/<default>` when unset.
fn cache_dir(var: &str, default: &str) -> PathBuf {
    let dir = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/torch2coreml").join(default)
    });
    assert!(dir.is_dir(), "{} is missing: run `make setup` (make test does)", dir.display());
    dir
}

/// One entry of `status.json`, as `zoo.py` writes it.
#[derive(serde::Deserialize)]
struct Status {
    ok: bool,
    error: Option<String>,
}

#[test]
#[ignore = "needs the zoo and coremltools from `make setup`; `make test` runs it"]
fn every_coremltools_zoo_package_matches_torch() {
    let zoo = cache_dir("T2C_ZOO", "zoo");
    let ct_zoo = cache_dir("T2C_CT_ZOO", "ct_zoo");
    let status_path = ct_zoo.join("status.json");
    let text = std::fs::read_to_string(&status_path).unwrap_or_else(|e| panic!("{}: {e}", status_path.display()));
    let status: BTreeMap<String, Status> = serde_json::from_str(&text).unwrap();
    for (m, s) in status.iter().filter(|(_, s)| !s.ok) {
        eprintln!("coremltools could not convert {m}: {}", s.error.as_deref().unwrap_or("?"));
    }
    let converted: Vec<&String> = status.iter().filter(|(_, s)| s.ok).map(|(m, _)| m).collect();
    assert!(converted.len() >= MIN_CONVERTED, "only {} models converted: {converted:?}", converted.len());
    let mut failures = Vec::new();
    // `NAME@pt2`: coremltools' conversion of the torch.export program (issue 15).
    assert!(converted.iter().any(|m| m.ends_with("@pt2")), "no ExportedProgram conversions: {converted:?}");
    for m in converted {
        let base = m.split('@').next().unwrap_or(m);
        let v = Command::new(env!("CARGO_BIN_EXE_torch2coreml"))
            .arg("validate")
            .arg(ct_zoo.join(format!("{m}.mlpackage")))
            .arg("--inputs")
            .arg(zoo.join(format!("{base}.inputs.npz")))
            .arg("--expected")
            .arg(zoo.join(format!("{base}.outputs.npz")))
            .args(["--format", "json"])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap_or_default();
        let cosine_ok = report["outputs"]
            .as_array()
            .is_some_and(|o| !o.is_empty() && o.iter().all(|r| r["cosine"].as_f64().unwrap_or(0.0) >= MIN_COSINE));
        if !v.status.success() || !cosine_ok {
            failures.push(format!("{m}: {} {}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr)));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
