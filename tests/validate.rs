//! CLI tests of `torch2coreml validate`: packages coremltools wrote for the fixture models run
//! in our interpreter and agree with PyTorch's outputs; a package with one weight perturbed fails
//! with exit 1 and names the drifted output; bad input is exit 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn validate(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torch2coreml")).arg("validate").args(args).output().unwrap()
}

fn fixture(name: &str) -> PathBuf {
    root().join("fixtures/coremltools/out").join(name)
}

#[test]
fn coremltools_packages_agree_with_torch_in_our_interpreter() {
    for model in ["mlp", "convnet", "attention"] {
        for target in ["ios15_fp32", "ios16_fp16", "ios18_fp16"] {
            let pkg = fixture(&format!("{model}_{target}.mlpackage"));
            let (i, e) = (fixture(&format!("{model}.inputs.npz")), fixture(&format!("{model}.outputs.npz")));
            let out = validate(&[pkg.as_os_str(), "--inputs".as_ref(), i.as_os_str(), "--expected".as_ref(), e.as_os_str(), "--format".as_ref(), "json".as_ref()]);
            assert_eq!(out.status.code(), Some(0), "{model}_{target}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let cos = j["outputs"][0]["cosine"].as_f64().unwrap();
            assert!(cos > 0.9999, "{model}_{target}: cosine {cos}");
            for key in ["name", "shape", "max_abs", "max_rel", "mean_abs", "cosine", "psnr_db", "pass"] {
                assert!(j["outputs"][0].get(key).is_some(), "missing {key}");
            }
        }
    }
}

#[test]
fn a_perturbed_weight_fails_and_names_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("mlp.mlpackage");
    let src = fixture("mlp_ios15_fp32.mlpackage");
    for rel in ["Manifest.json", "Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin"] {
        std::fs::create_dir_all(pkg.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(src.join(rel), pkg.join(rel)).unwrap();
    }
    // The first blob's payload starts at byte 128 (metadata at 64); make one fp32 weight huge.
    let w = pkg.join("Data/com.apple.CoreML/weights/weight.bin");
    let mut bytes = std::fs::read(&w).unwrap();
    bytes[128..132].copy_from_slice(&50.0f32.to_le_bytes());
    std::fs::write(&w, bytes).unwrap();
    let (i, e) = (fixture("mlp.inputs.npz"), fixture("mlp.outputs.npz"));
    let out = validate(&[pkg.as_os_str(), "--inputs".as_ref(), i.as_os_str(), "--expected".as_ref(), e.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL") && text.contains("var_14"), "{text}");
}

#[test]
fn a_package_agrees_with_itself_on_random_inputs() {
    let pkg = fixture("attention_ios16_fp16.mlpackage");
    let out = validate(&[pkg.as_os_str(), "--against".as_ref(), pkg.as_os_str(), "--seed".as_ref(), "7".as_ref()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("all outputs within tolerance"));
}

#[test]
fn bad_input_is_exit_2_with_one_line() {
    let pkg = fixture("mlp_ios16_fp16.mlpackage");
    let wrong = fixture("convnet.inputs.npz");
    let e = fixture("mlp.outputs.npz");
    let missing = root().join("nope.npz");
    let pt = root().join("fixtures/torchscript/mlp.pt");
    for args in [
        vec![pkg.as_os_str(), "--inputs".as_ref(), wrong.as_os_str(), "--expected".as_ref(), e.as_os_str()],
        vec![pkg.as_os_str(), "--inputs".as_ref(), missing.as_os_str(), "--expected".as_ref(), e.as_os_str()],
        // Without the torch feature --reference explains how to get it; with it, this .pt
        // rejects the package's input shape ([2, 16] vs mlp.pt's 8 features). Both are exit 2.
        vec![pkg.as_os_str(), "--reference".as_ref(), pt.as_os_str()],
    ] {
        let out = validate(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// x · 300 · 300 overflows fp16 (9e4 > 65504) although every input is small: `--per-op` must name
/// the second `mul` (and only ops from there on), while the same program at fp32 is clean.
#[test]
fn per_op_names_the_op_where_fp16_overflows() {
    use torch2coreml::mil::builder::Builder;
    use torch2coreml::mil::ops::{elementwise as ew, norm};
    use torch2coreml::mil::{DType, Model, Opset, Program, Tensor, TensorType};
    let dir = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    for dt in [DType::F16, DType::F32] {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(dt, &[1, 8]));
        let y = b.op(&ew::MUL, "scale_a").arg("x", &x).konst("y", Tensor::float_scalar(dt, 300.0)).build1().unwrap();
        let z = b.op(&ew::MUL, "scale_b").arg("x", &y).konst("y", Tensor::float_scalar(dt, 300.0)).build1().unwrap();
        let n = b.op(&norm::LAYER_NORM, "norm").arg("x", &z).konst("axes", Tensor::i32_vec(&[-1])).build1().unwrap();
        let pkg = dir.path().join(format!("{dt}.mlpackage"));
        torch2coreml::package::write(&Model::new(Program::with_main(b.finish(&[n]))), &pkg).unwrap();
        let out = validate(&[pkg.as_os_str(), "--per-op".as_ref(), "--seed".as_ref(), "3".as_ref(), "--format".as_ref(), "json".as_ref()]);
        reports.push((out.status.code(), serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()));
    }
    let (code16, j16) = &reports[0];
    assert_eq!(*code16, Some(1), "{j16}");
    let first = &j16["ops"][0];
    assert_eq!((first["op"].as_str(), first["op_type"].as_str()), (Some("scale_b"), Some("mul")), "{j16}");
    assert!(first["fp32_peak"].as_f64().unwrap() > 65504.0 || first["non_finite"].as_u64().unwrap() > 0, "{j16}");
    assert!(j16["ops"].as_array().unwrap().iter().all(|o| o["op"] != "scale_a"), "{j16}");
    let (code32, j32) = &reports[1];
    assert_eq!((*code32, j32["pass"].as_bool()), (Some(0), Some(true)), "{j32}");
}

/// Asserts exit code 2 with exactly one stderr line holding every `needles` entry and no stdout.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "want one line, got: {err}");
    assert!(needles.iter().all(|n| err.contains(n)), "{needles:?} not all in: {err}");
    assert!(!err.contains("panicked") && out.stdout.is_empty(), "{err}");
}

/// A package computing `x + 1` over an fp32 input `x` of `dims`.
fn add_one_package(dir: &Path, name: &str, dims: &[usize]) -> PathBuf {
    use torch2coreml::mil::builder::Builder;
    use torch2coreml::mil::ops::elementwise as ew;
    use torch2coreml::mil::{DType, Model, Opset, Program, Tensor, TensorType};
    let mut b = Builder::new(Opset::Ios16);
    let x = b.input("x", TensorType::new(DType::F32, dims));
    let y = b.op(&ew::ADD, "y").arg("x", &x).konst("y", Tensor::float_scalar(DType::F32, 1.0)).build1().unwrap();
    let pkg = dir.join(format!("{name}.mlpackage"));
    torch2coreml::package::write(&Model::new(Program::with_main(b.finish(&[y]))), &pkg).unwrap();
    pkg
}

#[test]
fn issue_hostile_huge_dims_fail_with_one_line_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // 2^40 elements: the most a MIL type may declare (`mil::types::MAX_ELEMENTS`), 4 TiB of fp32.
    let pkg = add_one_package(dir.path(), "huge", &[65536, 65536, 256]);
    let per_op = validate(&[pkg.as_os_str(), "--per-op".as_ref()]);
    assert_one_line_error(&per_op, &["huge.mlpackage", "input `x`", "memory budget"]);
    let against = validate(&[pkg.as_os_str(), "--against".as_ref(), pkg.as_os_str()]);
    assert_one_line_error(&against, &["input `x`", "memory budget"]);
    // Dimensions whose element count wraps to 0 are refused when the package is read. Our
    // Builder refuses to make one, so the package is coremltools' (fixtures/hostile/make.py).
    let wrapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile/wrap_dims.mlpackage");
    let out = validate(&[wrapping.as_os_str(), "--against".as_ref(), wrapping.as_os_str()]);
    assert_one_line_error(&out, &["model.mlmodel"]);
}

#[test]
fn issue_hostile_a_nan_reference_fails() {
    use torch2coreml::mil::builder::Builder;
    use torch2coreml::mil::ops::elementwise as ew;
    use torch2coreml::mil::{DType, Model, Opset, Program, Tensor, TensorType};
    let dir = tempfile::tempdir().unwrap();
    let good = add_one_package(dir.path(), "good", &[4]);
    // The same signature, all outputs NaN (x · NaN).
    let mut b = Builder::new(Opset::Ios16);
    let x = b.input("x", TensorType::new(DType::F32, &[4]));
    let y = b.op(&ew::MUL, "y").arg("x", &x).konst("y", Tensor::float_scalar(DType::F32, f32::NAN)).build1().unwrap();
    let nan = dir.path().join("nan.mlpackage");
    torch2coreml::package::write(&Model::new(Program::with_main(b.finish(&[y]))), &nan).unwrap();
    for (pkg, reference) in [(&good, &nan), (&nan, &good)] {
        let out = validate(&[pkg.as_os_str(), "--against".as_ref(), reference.as_os_str()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("FAIL") && text.contains("some outputs out of tolerance"), "{text}");
    }
}
