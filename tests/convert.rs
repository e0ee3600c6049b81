//! CLI tests of `torch2coreml convert`: traced fixtures convert, and the packages pass
//! coremltools' type-check (in `make test`); unsupported ops, scripted control flow, refused
//! pickle globals and corrupt files each give one error line, exit 2, and write nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn convert(model: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torch2coreml"))
        .arg("convert")
        .arg(model)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Asserts exit 2, one stderr line containing each needle, and no package at `out`.
fn assert_refused(out: &Output, pkg: &Path, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    assert!(!pkg.exists(), "partial output written");
    let leftovers: Vec<_> = std::fs::read_dir(pkg.parent().unwrap()).unwrap().collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// (fixture, --input flags) for every traced fixture we convert.
const FIXTURES: &[(&str, &[&str])] = &[
    ("fixtures/torchscript/mlp.pt", &["--input", "x:2x8:fp32"]),
    ("fixtures/torchscript/convnet.pt", &["--input", "x:1x3x6x6:fp32"]),
    ("fixtures/torchscript/zoo.pt", &["--input", "x:2x4:fp32"]),
];

fn convert_fixtures(dir: &Path, target: &str, precision: &str) -> Vec<PathBuf> {
    FIXTURES
        .iter()
        .map(|(model, inputs)| {
            let stem = Path::new(model).file_stem().unwrap().to_str().unwrap();
            let pkg = dir.join(format!("{stem}_{target}_{precision}.mlpackage"));
            let mut args = inputs.to_vec();
            args.extend(["--target", target, "--precision", precision]);
            let out = convert(&root().join(model), &pkg, &args);
            assert!(out.status.success(), "{model}: {}", String::from_utf8_lossy(&out.stderr));
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("wrote "));
            pkg
        })
        .collect()
}

#[test]
fn traced_fixtures_convert_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    for pkg in convert_fixtures(dir.path(), "iOS16", "fp16") {
        let model = torch2coreml::package::read(&pkg).unwrap();
        let main = model.program.main().unwrap();
        assert_eq!(main.block.outputs, ["output"], "{}", pkg.display());
        assert_eq!(main.inputs[0].name, "x");
    }
}

#[test]
fn json_summary_reports_the_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("m.mlpackage");
    let out = convert(&root().join("fixtures/torchscript/mlp.pt"), &pkg, &["--input", "x:2x8", "--format", "json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &j["packages"][0];
    assert_eq!((p["ops"].as_u64(), j["spec_version"].as_u64(), j["precision"].as_str()), (Some(3), Some(7), Some("fp16")));
    let names: Vec<&str> = p["passes"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["simplify", "split-heads", "ane-layout", "dead-code"]);
    // A rank-2 MLP has no (B, S, C) activations: its linears stay.
    assert_eq!(p["passes"][2]["changes"]["linears_rewritten"], 0);
}

#[test]
fn unsupported_ops_are_listed_together_with_counts_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("u.mlpackage");
    let out = convert(&root().join("fixtures/convert/unsupported.pt"), &pkg, &["--input", "x:2x4"]);
    assert_refused(&out, &pkg, &["unsupported.pt", "2 unsupported", "aten::logcumsumexp ×2", "aten::kron ×1", "code/__torch__.py:"]);
}

/// Ops refused for a reason (not just "not lowered yet") carry it in the error line.
#[test]
fn unsupported_ops_say_why_when_there_is_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("u.mlpackage");
    let out = convert(&root().join("fixtures/convert/unsupported_reason.pt"), &pkg, &["--input", "x:2x8"]);
    assert_refused(&out, &pkg, &["aten::fft_rfft ×1", "complex numbers", "aten::nonzero ×1", "output shape depends on the values"]);
}

#[test]
fn scripted_control_flow_suggests_tracing() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("s.mlpackage");
    let out = convert(&root().join("fixtures/convert/scripted.pt"), &pkg, &["--input", "x:2x4"]);
    assert_refused(&out, &pkg, &["scripted.pt", "`if` at code/__torch__.py:", "control flow", "torch.jit.trace"]);
}

/// Issue 14: a scripted `with` block is refused by name and line like other scripted code (it
/// used to be a parser token dump).
#[test]
fn scripted_with_block_suggests_tracing() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("w.mlpackage");
    let out = convert(&root().join("fixtures/convert/scripted_with.pt"), &pkg, &["--input", "x:2x4"]);
    assert_refused(&out, &pkg, &["scripted_with.pt", "`with` at code/__torch__/make.py:", "torch.jit.trace"]);
}

#[test]
fn bad_files_are_one_error_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let mlp = std::fs::read(root().join("fixtures/torchscript/mlp.pt")).unwrap();
    let truncated = src.path().join("truncated.pt");
    std::fs::write(&truncated, &mlp[..mlp.len() / 2]).unwrap();
    let text = src.path().join("notzip.pt");
    std::fs::write(&text, b"hello, not a model").unwrap();
    let cases: &[(PathBuf, &[&str])] = &[
        (root().join("fixtures/torchscript/evil.pt"), &["evil.pt", "os.system", "not allowed"]),
        (truncated, &["truncated.pt", "truncated"]),
        (text, &["notzip.pt", "not a zip"]),
        (src.path().join("missing.pt"), &["missing.pt"]),
    ];
    for (model, needles) in cases {
        let pkg = dir.path().join("out.mlpackage");
        assert_refused(&convert(model, &pkg, &["--input", "x:2x8"]), &pkg, needles);
    }
}

#[test]
fn wrong_input_shape_names_the_op_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("w.mlpackage");
    let out = convert(&root().join("fixtures/torchscript/mlp.pt"), &pkg, &["--input", "x:2x9"]);
    assert_refused(&out, &pkg, &["mlp.pt", "linear.py:", "aten::linear"]);
}

#[test]
#[ignore = "needs coremltools 9.0 from `make setup`; `make test` runs it"]
fn converted_fixtures_pass_coremltools_type_check_at_every_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut pkgs = Vec::new();
    for (target, precision) in [("iOS15", "fp32"), ("iOS15", "fp16"), ("iOS16", "fp16"), ("iOS17", "fp32"), ("iOS18", "fp16")] {
        pkgs.extend(convert_fixtures(dir.path(), target, precision));
    }
    let out = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).args(&pkgs).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("OK:").count(), pkgs.len(), "{stdout}");
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torch2coreml")).args(args).output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Issue 17: a model whose activations leave fp16's range fails `validate` at fp16; with
/// `--precision auto` (random calibration inputs, not the validation ones) it matches torch
/// with under 10 % of its ops in fp32, each named in the report, and `lint-ane` flags them.
#[test]
fn precision_auto_keeps_only_the_overflowing_ops_in_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/convert/loud.pt");
    let (inputs, expected) = (root().join("fixtures/convert/loud.inputs.npz"), root().join("fixtures/convert/loud.outputs.npz"));
    let validate = |pkg: &Path| run(&["validate".as_ref(), pkg.as_os_str(), "--inputs".as_ref(), inputs.as_os_str(), "--expected".as_ref(), expected.as_os_str()]);
    let fp16 = dir.path().join("fp16.mlpackage");
    assert!(convert(&model, &fp16, &["--input", "x:4x16"]).status.success());
    let v = validate(&fp16);
    assert_eq!(v.status.code(), Some(1), "fp16 should fail: {}", String::from_utf8_lossy(&v.stdout));

    let auto = dir.path().join("auto.mlpackage");
    let out = convert(&model, &auto, &["--input", "x:4x16", "--precision", "auto", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    let p = &report["packages"][0];
    let notes: Vec<&str> = p["precision_notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let ops = p["ops"].as_u64().unwrap() as usize;
    assert!(notes.iter().any(|n| n.contains("(linear) computes in fp32") && n.contains("calibration inputs")), "{notes:?}");
    assert!(!notes.is_empty() && notes.len() * 10 < ops, "{} of {ops} ops in fp32: {notes:?}", notes.len());
    let v = validate(&auto);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let lint = run(&["lint-ane".as_ref(), auto.as_os_str()]);
    assert!(String::from_utf8_lossy(&lint.stdout).contains("warning[ANE005]"), "{}", String::from_utf8_lossy(&lint.stdout));
}

/// Issue 17: `--fp32-ops` keeps the matching ops in fp32 (reported), warns about a pattern that
/// matches nothing, and the package still matches torch.
#[test]
fn fp32_ops_patterns_keep_matching_ops_and_warn_on_unmatched() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("c.mlpackage");
    let out = convert(&root().join("fixtures/torchscript/convnet.pt"), &pkg, &["--input", "x:1x3x6x6", "--fp32-ops", "relu,nothing*"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("(relu) computes in fp32: --fp32-ops `relu`"), "{stdout}");
    assert!(stderr.contains("warning: --fp32-ops `nothing*` matches no fp16 op"), "{stderr}");
    let v = run(&["validate".as_ref(), pkg.as_os_str(), "--inputs".as_ref(), root().join("fixtures/run/inputs.npz").as_os_str(), "--expected".as_ref(), root().join("fixtures/run/expected.npz").as_os_str()]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let bad = convert(&root().join("fixtures/torchscript/convnet.pt"), &dir.path().join("b.mlpackage"), &["--input", "x:1x3x6x6", "--fp32-ops", "[relu"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// Issue 17: a named fp32 input stays fp32 at iOS16 (fp16 compute inside, fp32 outputs); a
/// name that is not forward()'s parameter is bound by position with a warning; metadata,
/// descriptions and output names land in the package.
#[test]
fn input_dtype_names_metadata_and_descriptions_land_in_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/torchscript/convnet.pt");
    let pkg = dir.path().join("c.mlpackage");
    let out = convert(
        &model,
        &pkg,
        &["--input", "image:1x3x6x6:fp32", "--author", "Ada", "--license", "MIT", "--description", "a tiny net", "--version", "1.2",
          "--meta", "task=demo", "--output-names", "scores", "--describe", "scores=per-class scores", "--describe", "image=the picture"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: input `image` matches no forward() parameter (x); bound by position to `x`"), "{stderr}");
    let info = json(&run(&["inspect".as_ref(), pkg.as_os_str(), "--format".as_ref(), "json".as_ref()]));
    assert_eq!(info["inputs"][0]["name"], "image");
    assert_eq!(info["inputs"][0]["dtype"], "fp32");
    assert_eq!(info["inputs"][0]["description"], "the picture");
    assert_eq!(info["outputs"][0]["name"], "scores");
    assert_eq!(info["outputs"][0]["dtype"], "fp32");
    assert_eq!(info["metadata"]["author"], "Ada");
    assert_eq!(info["metadata"]["user_defined"]["task"], "demo");
    // Without a dtype the default holds: fp16 I/O at iOS16 with fp16 compute.
    let plain = dir.path().join("p.mlpackage");
    assert!(convert(&model, &plain, &["--input", "x:1x3x6x6"]).status.success());
    let info = json(&run(&["inspect".as_ref(), plain.as_os_str(), "--format".as_ref(), "json".as_ref()]));
    assert_eq!((info["inputs"][0]["dtype"].as_str(), info["outputs"][0]["dtype"].as_str()), (Some("fp16"), Some("fp16")));
    // Names and descriptions that do not fit are refused.
    for (flags, needle) in [
        (&["--output-names", "a,b"][..], "2 names for 1 outputs"),
        (&["--describe", "nope=x"][..], "no such input or output"),
        (&["--meta", "novalue"][..], "expected KEY=VALUE"),
    ] {
        let bad_dir = tempfile::tempdir().unwrap();
        let bad = bad_dir.path().join("bad.mlpackage");
        let mut args = vec!["--input", "x:1x3x6x6"];
        args.extend(flags);
        assert_refused(&convert(&model, &bad, &args), &bad, &[needle]);
    }
}

/// Issue 17: coremltools reads our metadata, descriptions, names and fp32 input back.
#[test]
#[ignore = "needs coremltools 9.0 from `make setup`; `make test` runs it"]
fn coremltools_sees_the_interface_we_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("c.mlpackage");
    let out = convert(
        &root().join("fixtures/torchscript/convnet.pt"),
        &pkg,
        &["--input", "x:1x3x6x6:fp32", "--author", "Ada", "--license", "MIT", "--version", "1.2", "--description", "a tiny net",
          "--meta", "task=demo", "--output-names", "scores", "--describe", "scores=per-class scores"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = "import sys, coremltools as ct\n\
                  s = ct.models.MLModel(sys.argv[1], skip_model_load=True).get_spec()\n\
                  d = s.description; m = d.metadata\n\
                  print(m.author, m.license, m.versionString, m.shortDescription, m.userDefined['task'], sep='|')\n\
                  print(d.input[0].name, d.input[0].type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32, sep='|')\n\
                  print(d.output[0].name, d.output[0].shortDescription, sep='|')\n";
    let py = Command::new(root().join(".venv/bin/python")).arg("-c").arg(script).arg(&pkg).output().unwrap();
    let stdout = String::from_utf8_lossy(&py.stdout);
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["Ada|MIT|1.2|a tiny net|demo", "x|True", "scores|per-class scores"], "{stdout}");
    let check = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&pkg).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
}

/// Issue 17: `--image` with torchvision's mean/std makes an image input (coremltools sees an
/// `imageType`, RGB, 6×6) whose program normalizes the 0–255 pixels itself, matching torch on
/// `(pixels/255 − mean)/std`; coremltools' own `ImageType` package of the same model is read
/// as an image input and runs in our interpreter to torch's outputs too.
#[test]
#[ignore = "needs torch and coremltools from `make setup`; `make test` runs it"]
fn image_inputs_normalize_in_the_program_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = r#"
import sys, numpy as np, torch, coremltools as ct
d, model = sys.argv[1], torch.jit.load(sys.argv[2]).eval()
mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
pix = np.random.default_rng(0).integers(0, 256, (1, 3, 6, 6)).astype(np.float32)
with torch.no_grad():
    ours = model(torch.from_numpy((pix / 255 - mean[None, :, None, None]) / std[None, :, None, None])).numpy()
    # coremltools' ImageType has one scale for all channels: its own normalization.
    scale, bias = 1 / (0.226 * 255), (-mean / 0.226).tolist()
    theirs = model(torch.from_numpy(pix * scale + np.array(bias, np.float32)[None, :, None, None])).numpy()
np.savez(f"{d}/pixels.npz", x=pix)
np.savez(f"{d}/ours.npz", output=ours)
np.savez(f"{d}/theirs.npz", output=theirs)
m = ct.convert(model, inputs=[ct.ImageType(name="x", shape=(1, 3, 6, 6), scale=scale, bias=bias)],
               convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16, skip_model_load=True)
m.save(f"{d}/ct.mlpackage")
s = ct.models.MLModel(sys.argv[3], skip_model_load=True).get_spec() if len(sys.argv) > 3 else None
"#;
    let py = |args: &[&std::ffi::OsStr]| Command::new(root().join(".venv/bin/python")).arg("-c").arg(script).args(args).output().unwrap();
    let model = root().join("fixtures/torchscript/convnet.pt");
    let o = py(&[d.as_os_str(), model.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pkg = d.join("ours.mlpackage");
    let c = convert(&model, &pkg, &["--input", "x:1x3x6x6", "--image", "x", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let check = "import sys, coremltools as ct\n\
                 i = ct.models.MLModel(sys.argv[1], skip_model_load=True).get_spec().description.input[0]\n\
                 print(i.type.WhichOneof('Type'), i.type.imageType.width, i.type.imageType.height, i.type.imageType.colorSpace)\n";
    let o = Command::new(root().join(".venv/bin/python")).arg("-c").arg(check).arg(&pkg).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "imageType 6 6 20", "{}", String::from_utf8_lossy(&o.stderr));
    let oracle = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&pkg).output().unwrap();
    assert!(oracle.status.success(), "{}", String::from_utf8_lossy(&oracle.stdout));
    for (package, expected) in [(pkg, d.join("ours.npz")), (d.join("ct.mlpackage"), d.join("theirs.npz"))] {
        let info = json(&run(&["inspect".as_ref(), package.as_os_str(), "--format".as_ref(), "json".as_ref()]));
        assert_eq!(info["inputs"][0]["image"]["color_space"], "RGB", "{}", package.display());
        let v = run(&["validate".as_ref(), package.as_os_str(), "--inputs".as_ref(), d.join("pixels.npz").as_os_str(), "--expected".as_ref(), expected.as_os_str()]);
        assert!(v.status.success(), "{}: {}{}", package.display(), String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    }
    // An image needs a [1, C, H, W] input with the layout's channels.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = bad_dir.path().join("bad.mlpackage");
    assert_refused(&convert(&model, &bad, &["--input", "x:1x3x6x6", "--image", "x:layout=GRAY"]), &bad, &["--image x", "GRAY needs a float input with 1 channel"]);
}

/// Issue 17: `--labels` makes a classifier as coremltools' `ClassifierConfig` does (a `classify`
/// op, `classLabel` + `classLabel_probs` features, predicted names set; string or integer
/// labels); coremltools reads and type-checks it; `validate` shows the same top-5 labels as
/// torch for our package and for coremltools' own classifier package of the same model.
#[test]
#[ignore = "needs torch and coremltools from `make setup`; `make test` runs it"]
fn labels_make_a_classifier_both_tools_read_and_rank_alike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = r#"
import sys, json, numpy as np, torch, coremltools as ct
d = sys.argv[1]
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Softmax(-1)).eval()
x = torch.rand(1, 3, 2, 2)
t = torch.jit.trace(m, x)
t.save(f"{d}/cls.pt")
with torch.no_grad():
    y = m(x)
np.savez(f"{d}/cls.inputs.npz", x=x.numpy())
np.savez(f"{d}/cls.outputs.npz", output=y.numpy())
labels = ["cat", "dog", "eel", "fox", "gnu"]
open(f"{d}/labels.txt", "w").write("\n".join(labels) + "\n")
json.dump([10, 20, 30, 40, 50], open(f"{d}/ids.json", "w"))
ct.convert(t, inputs=[ct.TensorType(name="x", shape=(1, 3, 2, 2))], classifier_config=ct.ClassifierConfig(labels),
           convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16, skip_model_load=True).save(f"{d}/ct.mlpackage")
print(" ".join(labels[i] for i in y[0].argsort(descending=True).tolist()))
"#;
    let py = Command::new(root().join(".venv/bin/python")).arg("-c").arg(script).arg(d).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let torch_order = String::from_utf8_lossy(&py.stdout).lines().last().unwrap_or_default().to_string();
    let model = d.join("cls.pt");
    let ours = d.join("ours.mlpackage");
    let c = convert(&model, &ours, &["--input", "input:1x3x2x2", "--labels", d.join("labels.txt").to_str().unwrap()]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let ids = d.join("ids.mlpackage");
    assert!(convert(&model, &ids, &["--input", "input:1x3x2x2", "--labels", d.join("ids.json").to_str().unwrap()]).status.success());
    let check = "import sys, coremltools as ct\n\
                 for p in sys.argv[1:]:\n\
                 \x20   s = ct.models.MLModel(p, skip_model_load=True).get_spec().description\n\
                 \x20   print(s.predictedFeatureName, s.predictedProbabilitiesName, *[o.type.WhichOneof('Type') for o in s.output])\n";
    let o = Command::new(root().join(".venv/bin/python")).arg("-c").arg(check).arg(&ours).arg(&ids).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().collect::<Vec<_>>(),
        ["classLabel classLabel_probs stringType dictionaryType", "classLabel classLabel_probs int64Type dictionaryType"],
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let oracle = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&ours).arg(&ids).output().unwrap();
    assert!(oracle.status.success(), "{}", String::from_utf8_lossy(&oracle.stdout));
    for pkg in [ours, d.join("ct.mlpackage")] {
        let v = run(&["validate".as_ref(), pkg.as_os_str(), "--inputs".as_ref(), d.join("cls.inputs.npz").as_os_str(), "--expected".as_ref(), d.join("cls.outputs.npz").as_os_str(), "--format".as_ref(), "json".as_ref()]);
        assert!(v.status.success(), "{}: {}", pkg.display(), String::from_utf8_lossy(&v.stdout));
        let report = json(&v);
        let order: Vec<&str> = report["top_k"]["package"].as_array().unwrap().iter().map(|e| e["label"].as_str().unwrap()).collect();
        assert_eq!(order.join(" "), torch_order, "{}", pkg.display());
        let info = json(&run(&["inspect".as_ref(), pkg.as_os_str(), "--format".as_ref(), "json".as_ref()]));
        assert_eq!(info["classifier"]["labels"].as_array().map(Vec::len), Some(5));
    }
    // One label per class score, or a clear refusal.
    std::fs::write(d.join("three.txt"), "a\nb\nc\n").unwrap();
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = bad_dir.path().join("bad.mlpackage");
    assert_refused(&convert(&model, &bad, &["--input", "input:1x3x2x2", "--labels", d.join("three.txt").to_str().unwrap()]), &bad, &["3 labels for an output of (1, 5"]);
}

/// Issue 17's must-show: a torchvision classifier (ResNet-18, seeded weights) converted with
/// `--image` (ImageNet mean/std) and `--labels` (ImageNet's class names) type-checks in
/// coremltools, whose spec shows an image input, the class labels and our metadata;
/// `validate --image-input x=PHOTO` ranks the same top-5 labels as torch does on the photo
/// through torchvision's transforms, with probabilities in tolerance; coremltools' own
/// `ImageType` + `ClassifierConfig` package of the same model ranks them alike in our
/// interpreter. The photo is scikit-learn's `flower.jpg` (shipped in its wheel).
#[test]
#[ignore = "needs torch, torchvision and coremltools from `make setup`; `make test` runs it"]
fn torchvision_classifier_takes_a_photo_and_ranks_like_torch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = r#"
import sys, os, numpy as np, torch, torchvision, sklearn, coremltools as ct
from PIL import Image
from torchvision import transforms as T
d = sys.argv[1]
torch.manual_seed(0)
m = torch.nn.Sequential(torchvision.models.resnet18(num_classes=1000), torch.nn.Softmax(-1)).eval()
t = torch.jit.trace(m, torch.rand(1, 3, 224, 224))
t.save(f"{d}/resnet18.pt")
labels = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
open(f"{d}/labels.txt", "w").write("\n".join(labels) + "\n")
photo = Image.open(os.path.join(os.path.dirname(sklearn.__file__), "datasets/images/flower.jpg")).convert("RGB")
crop = T.Compose([T.Resize(256), T.CenterCrop(224)])(photo)
crop.save(f"{d}/flower224.png")
mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# coremltools' ImageType has one scale for all channels: its package normalizes with std 0.226.
scale, bias = 1 / (0.226 * 255), [-m / 0.226 for m in mean]
pix = torch.from_numpy(np.asarray(crop, np.float32).transpose(2, 0, 1)[None].copy())
with torch.no_grad():
    ours = m(T.Normalize(mean, std)(T.ToTensor()(crop))[None])[0]
    theirs = m(pix * scale + torch.tensor(bias)[None, :, None, None])
np.savez(f"{d}/theirs.npz", classLabel_probs=theirs.numpy())
ct.convert(t, inputs=[ct.ImageType(name="x", shape=(1, 3, 224, 224), scale=scale, bias=bias)], classifier_config=ct.ClassifierConfig(labels),
           convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16, skip_model_load=True).save(f"{d}/ct.mlpackage")
top = lambda p: " | ".join(labels[i] for i in p.argsort(descending=True)[:5].tolist())
print(top(ours)); print(top(theirs[0]))
"#;
    let py = Command::new(root().join(".venv/bin/python")).arg("-c").arg(script).arg(d).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let stdout = String::from_utf8_lossy(&py.stdout);
    let tops: Vec<&str> = stdout.lines().rev().take(2).collect();
    let (torch_top, ct_torch_top) = (tops[1].to_string(), tops[0].to_string());
    let model = d.join("resnet18.pt");
    let ours = d.join("ours.mlpackage");
    let labels = d.join("labels.txt");
    let args = ["--input", "x:1x3x224x224", "--image", "x", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--labels", labels.to_str().unwrap(), "--author", "torch2coreml tests", "--license", "BSD-3-Clause", "--version", "1.0"];
    let c = convert(&model, &ours, &args);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let check = "import sys, coremltools as ct\n\
                 s = ct.models.MLModel(sys.argv[1], skip_model_load=True).get_spec()\n\
                 i = s.description.input[0].type.imageType\n\
                 print(i.width, i.height, i.colorSpace, len(s.mlProgram.functions['main'].block_specializations['CoreML6'].operations) > 0)\n\
                 print(s.description.metadata.author, s.description.metadata.license, s.description.metadata.versionString)\n\
                 print(s.description.predictedFeatureName, s.description.output[0].type.WhichOneof('Type'))\n";
    let o = Command::new(root().join(".venv/bin/python")).arg("-c").arg(check).arg(&ours).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().collect::<Vec<_>>(),
        ["224 224 20 True", "torch2coreml tests BSD-3-Clause 1.0", "classLabel stringType"],
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let oracle = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&ours).output().unwrap();
    assert!(oracle.status.success(), "{}", String::from_utf8_lossy(&oracle.stdout));
    let photo = format!("x={}", d.join("flower224.png").display());
    let top = |report: &serde_json::Value, side: &str| report["top_k"][side].as_array().unwrap().iter().map(|e| e["label"].as_str().unwrap().to_string()).collect::<Vec<_>>().join(" | ");
    let v = run(&["validate".as_ref(), ours.as_os_str(), "--reference".as_ref(), model.as_os_str(), "--image-input".as_ref(), photo.as_ref(), "--format".as_ref(), "json".as_ref()]);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    let report = json(&v);
    assert_eq!(top(&report, "package"), torch_top, "{report}");
    assert_eq!(top(&report, "reference"), torch_top, "{report}");
    assert_eq!(report["images"][0]["resized"], false);
    // coremltools' own image classifier of the same model, run in our interpreter.
    let theirs = d.join("ct.mlpackage");
    let v = run(&["validate".as_ref(), theirs.as_os_str(), "--expected".as_ref(), d.join("theirs.npz").as_os_str(), "--image-input".as_ref(), photo.as_ref(), "--format".as_ref(), "json".as_ref()]);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    assert_eq!(top(&json(&v), "package"), ct_torch_top);
    // The uncropped photo is stretched to 224×224; the source model sees the same pixels.
    let sklearn = Command::new(root().join(".venv/bin/python")).args(["-c", "import os, sklearn; print(os.path.dirname(sklearn.__file__))"]).output().unwrap();
    let whole = format!("x={}/datasets/images/flower.jpg", String::from_utf8_lossy(&sklearn.stdout).trim());
    let v = run(&["validate".as_ref(), ours.as_os_str(), "--reference".as_ref(), model.as_os_str(), "--image-input".as_ref(), whole.as_ref(), "--format".as_ref(), "json".as_ref()]);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    let report = json(&v);
    assert_eq!((report["images"][0]["original"].clone(), report["images"][0]["resized"].clone()), (serde_json::json!([640, 427]), serde_json::json!(true)));
    assert_eq!(top(&report, "package"), top(&report, "reference"));
}

/// Issue 17: image preprocessing folds into a first convolution without padding (no `mul`/`add`
/// left in front of it, the convert report says so, torch agrees on a photo), `--image-output`
/// makes an fp32 image output that coremltools and `inspect` see; bad image files and names
/// give one line and exit 2.
#[test]
#[ignore = "needs torch and coremltools from `make setup`; `make test` runs it"]
fn image_preprocessing_folds_into_the_first_conv_and_image_outputs_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = r#"
import sys, torch
class Enhance(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 3, 1)
    def forward(self, x):
        return torch.sigmoid(self.b(torch.relu(self.a(x)))) * 255
torch.manual_seed(0)
torch.jit.trace(Enhance().eval(), torch.rand(1, 3, 32, 32)).save(sys.argv[1])
"#;
    let model = d.join("enhance.pt");
    let py = Command::new(root().join(".venv/bin/python")).arg("-c").arg(script).arg(&model).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let pkg = d.join("enhance.mlpackage");
    let args = ["--input", "x:1x3x32x32", "--image", "x", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--image-output", "output", "--format", "json"];
    let c = convert(&model, &pkg, &args);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert_eq!(json(&c)["packages"][0]["images_folded_into_conv"], serde_json::json!(["x"]));
    let info = json(&run(&["inspect".as_ref(), pkg.as_os_str(), "--format".as_ref(), "json".as_ref()]));
    assert_eq!((info["inputs"][0]["image"]["color_space"].as_str(), info["outputs"][0]["image"]["color_space"].as_str()), (Some("RGB"), Some("RGB")), "{info}");
    assert_eq!(info["outputs"][0]["dtype"], "fp32");
    let ops = info["ops"].to_string();
    assert!(!ops.contains("\"add\""), "the preprocessing add is folded away: {ops}");
    let check = "import sys, coremltools as ct\n\
                 s = ct.models.MLModel(sys.argv[1], skip_model_load=True).get_spec().description\n\
                 print(s.input[0].type.WhichOneof('Type'), s.output[0].type.WhichOneof('Type'), s.output[0].type.imageType.width)\n";
    let o = Command::new(root().join(".venv/bin/python")).arg("-c").arg(check).arg(&pkg).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "imageType imageType 30", "{}", String::from_utf8_lossy(&o.stderr));
    let oracle = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&pkg).output().unwrap();
    assert!(oracle.status.success(), "{}", String::from_utf8_lossy(&oracle.stdout));
    // A PNG of our own making, 40×24: stretched to the 32×32 input on both sides.
    let png = d.join("stripes.png");
    std::fs::write(&png, stripes_png(40, 24)).unwrap();
    let photo = format!("x={}", png.display());
    let v = run(&["validate".as_ref(), pkg.as_os_str(), "--reference".as_ref(), model.as_os_str(), "--image-input".as_ref(), photo.as_ref()]);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stdout).contains("40×24, stretched to 32×32"), "{}", String::from_utf8_lossy(&v.stdout));
    // Bad image files and names: one line naming the problem, exit 2.
    std::fs::write(d.join("broken.png"), &stripes_png(40, 24)[..60]).unwrap();
    std::fs::write(d.join("notes.txt"), "not an image").unwrap();
    for (spec, needle) in [
        (format!("x={}", d.join("broken.png").display()), "broken.png: cannot decode"),
        (format!("x={}", d.join("notes.txt").display()), "notes.txt: not a PNG or JPEG file"),
        (format!("x={}", d.join("missing.png").display()), "missing.png"),
        (format!("y={}", png.display()), "`y`: not an image input of the package (image inputs: x)"),
        (format!("x={}", d.display()), "not a regular file"),
    ] {
        let v = run(&["validate".as_ref(), pkg.as_os_str(), "--reference".as_ref(), model.as_os_str(), "--image-input".as_ref(), spec.as_ref()]);
        let err = String::from_utf8_lossy(&v.stderr);
        assert_eq!(v.status.code(), Some(2), "{spec}: {err}");
        assert!(err.contains(needle) && err.trim().lines().count() == 1, "{spec}: {err}");
    }
    // An image output must be [1, C, H, W] with the layout's channels.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = bad_dir.path().join("bad.mlpackage");
    assert_refused(&convert(&model, &bad, &["--input", "x:1x3x32x32", "--image-output", "output:layout=GRAY"]), &bad, &["--image-output output", "GRAY image output must be a float [1, 1, H, W] tensor"]);
    assert_refused(&convert(&model, &bad, &["--input", "x:1x3x32x32", "--image-output", "nope"]), &bad, &["--image-output nope", "no such output"]);
}

#[test]
#[ignore = "needs torch and coremltools from `make setup`; `make test` runs it"]
fn shapes_of_a_shape_free_program_become_enumerated_shapes_valid_at_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = r#"
import sys, torch
class Denoise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 3, 3, padding=1)
    def forward(self, x):
        return x - torch.tanh(self.b(torch.relu(self.a(x))))
torch.manual_seed(0)
torch.jit.trace(Denoise().eval(), torch.rand(1, 3, 32, 32)).save(sys.argv[1])
"#;
    let model = d.join("denoise.pt");
    let py = Command::new(root().join(".venv/bin/python")).arg("-c").arg(script).arg(&model).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    // Nothing in this program depends on the shape: one function, enumerated shapes, iOS16.
    let pkg = d.join("denoise.mlpackage");
    let c = convert(&model, &pkg, &["--input", "x:1x3x32x32", "--shapes", "x:1x3x32x32,2x3x48x64,1x3x17x9", "--format", "json"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert_eq!(json(&c)["packages"][0]["shapes"]["x"], "1x3x32x32 | 2x3x48x64 | 1x3x17x9");
    let info = json(&run(&["inspect".as_ref(), pkg.as_os_str(), "--format".as_ref(), "json".as_ref()]));
    assert_eq!(info["inputs"][0]["flexible"]["enumerated"], serde_json::json!([[1, 3, 32, 32], [2, 3, 48, 64], [1, 3, 17, 9]]), "{info}");
    assert_eq!(info["inputs"][0]["shape"], serde_json::json!([null, 3, null, null]), "{info}");
    let check = "import sys, coremltools as ct\n\
                 a = ct.models.MLModel(sys.argv[1], skip_model_load=True).get_spec().description.input[0].type.multiArrayType\n\
                 print(list(a.shape), [list(s.shape) for s in a.enumeratedShapes.shapes])\n";
    let o = Command::new(root().join(".venv/bin/python")).arg("-c").arg(check).arg(&pkg).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[1, 3, 32, 32] [[1, 3, 32, 32], [2, 3, 48, 64], [1, 3, 17, 9]]", "{}", String::from_utf8_lossy(&o.stderr));
    let oracle = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/oracle/validate_mlpackage.py")).arg(&pkg).output().unwrap();
    assert!(oracle.status.success(), "{}", String::from_utf8_lossy(&oracle.stdout));
    // Validated against torch at every enumerated shape; a shape not listed is refused.
    let v = run(&["validate".as_ref(), pkg.as_os_str(), "--reference".as_ref(), model.as_os_str(), "--format".as_ref(), "json".as_ref()]);
    let report = json(&v);
    let at: Vec<String> = report["shapes"].as_array().unwrap().iter().map(|s| s["inputs"]["x"].to_string()).collect();
    assert!(v.status.success() && at == ["[1,3,32,32]", "[2,3,48,64]", "[1,3,17,9]"], "{report}");
    let l = json(&run(&["lint-ane".as_ref(), pkg.as_os_str(), "--format".as_ref(), "json".as_ref()]));
    assert!(!l["findings"].to_string().contains("ANE008"), "enumerated shapes keep the ANE: {l}");

    // Bad bucket specs: one line, exit 2, nothing written.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = bad_dir.path().join("bad.mlpackage");
    for (args, needle) in [
        (&["--input", "x:1x3x32x32", "--shapes", "x:1x3x32x32"][..], "at least two shapes"),
        (&["--input", "x:1x3x32x32", "--shapes", "y:1x3x32x32,1x3x8x8"][..], "--shapes `y`: no --input of that name"),
        (&["--input", "x:1x3x32x32", "--shapes", "x:1x3x32x32,1x3x0x8"][..], "dimensions must be positive"),
        (&["--input", "x:1x3x32x32", "--shapes", "x:1x3x32x32,1x3x32x32"][..], "given twice"),
        (&["--input", "x:1x3x32x32", "--shapes", "x"][..], "expected NAME:DIMS"),
        (&["--input", "x:1x3x32x32", "--shapes", "x:1x3x32x32,1x4x8x8"][..], "denoise.pt"),
    ] {
        assert_refused(&convert(&model, &bad, args), &bad, &[needle]);
    }
}

#[test]
#[ignore = "needs torch from `make setup`; `make test` runs it"]
fn in_place_writes_through_a_slice_are_refused_and_whole_slices_convert() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // `y[:, 1:3, i] = b` writes `y` through a view the trace does not relate to `y`: refused
    // when `y` is read again (never the value from before the write). `y[:, :, i] = b`
    // slices nothing away and converts.
    let script = r#"
import sys, torch
class Part(torch.nn.Module):
    def forward(self, a, b, i):
        y = a * 1
        y[:, 1:3, i] = b
        return y
class Whole(torch.nn.Module):
    def forward(self, a, b, i):
        y = a * 1
        y[:, :, i] = b
        return y
i = torch.tensor([4, 1])
torch.jit.trace(Part(), (torch.randn(2, 4, 6), torch.randn(2, 2, 2), i)).save(sys.argv[1] + "/part.pt")
torch.jit.trace(Whole(), (torch.randn(2, 4, 6), torch.randn(2, 4, 2), i)).save(sys.argv[1] + "/whole.pt")
import numpy as np
np.savez(sys.argv[1] + "/whole.npz", a=np.random.randn(2, 4, 6).astype(np.float32), b=np.random.randn(2, 4, 2).astype(np.float32), i=np.array([5, 0], dtype=np.int32))
"#;
    let py = Command::new(root().join(".venv/bin/python")).arg("-c").arg(script).arg(d).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = bad_dir.path().join("part.mlpackage");
    let inputs = ["--input", "a:2x4x6", "--input", "b:2x2x2", "--input", "i:2:int64"];
    assert_refused(&convert(&d.join("part.pt"), &bad, &inputs), &bad, &["`y` is read after `torch.index_put_` wrote into", "a view (slice) of it"]);
    let whole = d.join("whole.mlpackage");
    let c = convert(&d.join("whole.pt"), &whole, &["--input", "a:2x4x6", "--input", "b:2x4x2", "--input", "i:2:int64"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let v = run(&["validate".as_ref(), whole.as_os_str(), "--reference".as_ref(), d.join("whole.pt").as_os_str(), "--inputs".as_ref(), d.join("whole.npz").as_os_str()]);
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
}

/// A `w`×`h` RGB PNG of colored stripes, written with miniz_oxide's deflate (no image crate in
/// the tests' hands, so the file is made independently of the decoder under test).
fn stripes_png(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0u8);
        for x in 0..w {
            raw.extend([(x * 6) as u8, (y * 10) as u8, ((x + y) * 4) as u8]);
        }
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6));
    chunk(&mut out, b"IEND", &[]);
    out
}
