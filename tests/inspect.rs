//! CLI tests of `torch2coreml inspect`: bad input gives one error line and exit 2; the JSON
//! report's op histogram equals what coremltools itself counts, on packages coremltools wrote
//! (fixtures) and on packages we wrote.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use torch2coreml::mil::Opset;
use torch2coreml::package;

fn inspect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torch2coreml")).arg("inspect").args(args).output().unwrap()
}

/// Asserts exit code 2 and exactly one stderr line containing every `needles` entry.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "want one line, got: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty());
}

fn written(dir: &Path) -> PathBuf {
    let p = dir.join("mlp.mlpackage");
    package::write(&common::mlp(Opset::Ios16), &p).unwrap();
    p
}

#[test]
fn missing_path_is_one_error_line() {
    let out = inspect(&["/nonexistent/Model.mlpackage"]);
    assert_one_line_error(&out, &["/nonexistent/Model.mlpackage", "no such file"]);
}

#[test]
fn plain_file_is_not_a_package() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("model.pt");
    std::fs::write(&f, b"PK\x03\x04 not a package").unwrap();
    assert_one_line_error(&inspect(&[f.to_str().unwrap()]), &["model.pt", "not an .mlpackage"]);
    let d = dir.path().join("empty.mlpackage");
    std::fs::create_dir(&d).unwrap();
    assert_one_line_error(&inspect(&[d.to_str().unwrap()]), &["empty.mlpackage", "no Manifest.json"]);
}

#[test]
fn truncated_model_file_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = written(dir.path());
    let model = p.join("Data/com.apple.CoreML/model.mlmodel");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(&inspect(&[p.to_str().unwrap()]), &["model.mlmodel", "truncated or corrupt"]);
}

#[test]
fn truncated_weight_file_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = written(dir.path());
    let w = p.join("Data/com.apple.CoreML/weights/weight.bin");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    assert_one_line_error(&inspect(&[p.to_str().unwrap()]), &["weight.bin", "truncated"]);
}

#[test]
fn corrupt_manifest_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = written(dir.path());
    std::fs::write(p.join("Manifest.json"), b"{\"fileFormatVersion\": ").unwrap();
    assert_one_line_error(&inspect(&[p.to_str().unwrap()]), &["Manifest.json"]);
}

/// Replaces `file` with a FIFO (no writer ever comes: reading it would block forever).
fn make_fifo(file: &Path) {
    std::fs::remove_file(file).unwrap();
    let status = Command::new("mkfifo").arg(file).status().unwrap();
    assert!(status.success());
}

/// Runs `inspect` on `p` with a deadline: a reader that blocks fails the test instead of hanging it.
fn inspect_within_deadline(p: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_torch2coreml"))
        .arg("inspect")
        .arg(p)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("inspect {} did not finish within 10 s (blocked on a FIFO?)", p.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn issue_hostile_fifos_in_a_package_are_one_error_line_not_a_hang() {
    for file in ["Manifest.json", "Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin"] {
        let dir = tempfile::tempdir().unwrap();
        let p = written(dir.path());
        make_fifo(&p.join(file));
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        assert_one_line_error(&inspect_within_deadline(&p), &[name, "is a FIFO, not a regular file"]);
    }
}

#[test]
fn issue_hostile_symlinks_out_of_a_package_are_refused() {
    for file in ["Manifest.json", "Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin"] {
        let dir = tempfile::tempdir().unwrap();
        let p = written(dir.path());
        // A copy of the real file outside the package: only where it lives is wrong.
        let outside = dir.path().join("elsewhere");
        std::fs::copy(p.join(file), &outside).unwrap();
        std::fs::remove_file(p.join(file)).unwrap();
        std::os::unix::fs::symlink(&outside, p.join(file)).unwrap();
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        assert_one_line_error(&inspect(&[p.to_str().unwrap()]), &[name, "resolves outside the folder"]);
    }
    // A link that stays inside the package is fine.
    let dir = tempfile::tempdir().unwrap();
    let p = written(dir.path());
    let w = p.join("Data/com.apple.CoreML/weights/weight.bin");
    std::fs::rename(&w, p.join("Data/com.apple.CoreML/weights/real.bin")).unwrap();
    std::os::unix::fs::symlink("real.bin", &w).unwrap();
    assert!(inspect(&[p.to_str().unwrap()]).status.success());
}

#[test]
fn issue_hostile_oversized_manifest_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let p = written(dir.path());
    let f = std::fs::File::create(p.join("Manifest.json")).unwrap();
    f.set_len(package::MAX_MANIFEST_BYTES + 1).unwrap();
    assert_one_line_error(&inspect(&[p.to_str().unwrap()]), &["Manifest.json", "more than the 1048576 bytes allowed"]);
}

fn json_report(p: &Path) -> serde_json::Value {
    let out = inspect(&["--format", "json", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ops_of(report: &serde_json::Value) -> BTreeMap<String, u64> {
    serde_json::from_value(report["ops"].clone()).unwrap()
}

#[test]
fn json_report_describes_signature_and_weights() {
    let dir = tempfile::tempdir().unwrap();
    let r = json_report(&written(dir.path()));
    assert_eq!(r["spec_version"], 7);
    assert_eq!(r["opset"], "CoreML6");
    assert_eq!(r["inputs"], serde_json::json!([{"name": "x", "shape": [2, 16], "dtype": "fp16"}]));
    assert_eq!(r["outputs"], serde_json::json!([{"name": "probs", "shape": [2, 8], "dtype": "fp16"}]));
    // fc1.weight [32,16], fc1.bias [32], fc2.weight [8,32] are ≥ 10 elements; fc2.bias [8] is not.
    assert_eq!(r["weights"], 3);
    assert_eq!(r["weight_bytes"], (32 * 16 + 32 + 8 * 32) * 2);
    let ops = ops_of(&r);
    assert_eq!((ops["linear"], ops["gelu"], ops["softmax"]), (2, 1, 1));
}

/// Op histograms as coremltools counts them, via the oracle script's `--json`.
fn coremltools_histograms(paths: &[PathBuf]) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/oracle/validate_mlpackage.py"))
        .arg("--json")
        .args(paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs coremltools 9.0 from `make setup`; `make test` runs it"]
fn histogram_matches_coremltools_on_our_packages() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = common::all()
        .into_iter()
        .map(|(name, m)| {
            let p = dir.path().join(format!("{name}.mlpackage"));
            package::write(&m, &p).unwrap();
            p
        })
        .collect();
    let theirs = coremltools_histograms(&paths);
    for p in &paths {
        let ct = &theirs[p.to_str().unwrap()];
        assert_eq!(ct["ok"], true, "{p:?}: {}", ct["error"]);
        let ct_ops: BTreeMap<String, u64> = serde_json::from_value(ct["ops"].clone()).unwrap();
        assert_eq!(ops_of(&json_report(p)), ct_ops, "{}", p.display());
    }
}

fn coremltools_fixtures() -> (PathBuf, serde_json::Map<String, serde_json::Value>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/coremltools/out");
    let text = std::fs::read_to_string(dir.join("histograms.json")).expect("fixtures missing: run `make setup`");
    let hist: serde_json::Value = serde_json::from_str(&text).unwrap();
    (dir, hist.as_object().unwrap().clone())
}

#[test]
fn histogram_matches_coremltools_on_its_own_packages() {
    let (dir, hist) = coremltools_fixtures();
    assert!(hist.len() >= 9, "expected 3 models × 3 targets, got {}", hist.len());
    for (pkg, ct_ops) in &hist {
        let ct_ops: BTreeMap<String, u64> = serde_json::from_value(ct_ops.clone()).unwrap();
        assert_eq!(ops_of(&json_report(&dir.join(pkg))), ct_ops, "{pkg}");
    }
}

#[test]
#[ignore = "needs coremltools 9.0 from `make setup`; `make test` runs it"]
fn coremltools_packages_rewritten_by_us_still_load_in_coremltools() {
    let (dir, hist) = coremltools_fixtures();
    let out = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = hist
        .keys()
        .map(|pkg| {
            let model = package::read(&dir.join(pkg)).unwrap_or_else(|e| panic!("{pkg}: {e}"));
            let p = out.path().join(pkg);
            package::write(&model, &p).unwrap_or_else(|e| panic!("{pkg}: {e}"));
            assert_eq!(package::read(&p).unwrap(), model, "{pkg}: our re-write does not read back identically");
            p
        })
        .collect();
    let theirs = coremltools_histograms(&paths);
    for p in &paths {
        let ct = &theirs[p.to_str().unwrap()];
        assert_eq!(ct["ok"], true, "{p:?}: {}", ct["error"]);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(ct["ops"], hist[name], "{name}");
    }
}
