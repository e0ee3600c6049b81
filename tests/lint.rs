//! CLI tests of `torch2coreml lint-ane`: on packages coremltools wrote (third-party to us) the
//! layout and attention rules fire; the JSON report has the documented shape; the SARIF log has
//! the structure the SARIF 2.1.0 schema requires; exit codes follow `--deny`, `--allow` turns
//! rules off, and bad input exits 2 with one line. The zoo test (ignored by default) converts the
//! transformer models and checks ANE002/ANE003 fire on each.

mod zoo_dir;
use zoo_dir::zoo;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use torch2coreml::lint::RULES;

fn lint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torch2coreml")).arg("lint-ane").args(args).output().unwrap()
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/coremltools/out").join(name).display().to_string()
}

/// The codes in a JSON report, in order.
fn codes(report: &Value) -> Vec<String> {
    report["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap().to_string()).collect()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn layout_and_attention_rules_fire_on_coremltools_attention() {
    let out = lint(&[&fixture("attention_ios16_fp16.mlpackage"), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "warnings pass the default --deny error: {}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    let codes = codes(&report);
    assert_eq!(codes.iter().filter(|c| *c == "ANE002").count(), 4, "q, k, v, out projections: {codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "ANE003").count(), 2, "scores and context matmuls: {codes:?}");
    let f = &report["findings"][0];
    for key in ["code", "severity", "op", "location", "message", "fix"] {
        assert!(!f[key].is_null(), "finding lacks {key}: {f}");
    }
    assert_eq!(f["op"], "linear");
    assert_eq!(f["location"]["function"], "main");
    assert_eq!(report["counts"]["warning"], codes.len());
    assert_eq!(report["counts"]["total"], codes.len());
}

#[test]
fn deny_warning_exits_1_and_allow_turns_rules_off() {
    let pkg = fixture("attention_ios16_fp16.mlpackage");
    assert_eq!(lint(&[&pkg, "--deny", "warning"]).status.code(), Some(1));
    let out = lint(&[&pkg, "--deny", "warning", "--allow", "ANE002", "--allow", "batched-attention", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(codes(&json(&out)).is_empty());
}

#[test]
fn text_output_is_rustc_style_with_a_summary() {
    let out = lint(&[&fixture("attention_ios16_fp16.mlpackage")]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("warning[ANE002]: `linear` on a (B, S, C) activation (1, 8, 32, fp16)\n  --> "), "{text}");
    assert!(text.contains("   = help: keep activations as (B, C, 1, S)"), "{text}");
    assert!(text.ends_with("6 findings: 6 warnings\n"), "{text}");
}

#[test]
fn every_coremltools_fixture_lints() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/coremltools/out");
    let mut pkgs: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "mlpackage")).collect();
    pkgs.sort();
    assert!(pkgs.len() >= 9, "{pkgs:?}");
    for p in pkgs {
        let out = lint(&[p.to_str().unwrap(), "--format", "json", "--deny", "error"]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
        let report = json(&out);
        // iOS16's lstm and rnn take fp32 only, so coremltools computes them in fp32 there.
        let fp32 = p.to_string_lossy().contains("fp32") || p.ends_with("recurrent_ios16_fp16.mlpackage");
        assert_eq!(codes(&report).contains(&"ANE005".to_string()), fp32, "{}: fp32 compute flagged iff fp32", p.display());
    }
}

#[test]
fn explain_prints_every_rule_and_rejects_unknown_codes() {
    for r in RULES {
        let out = lint(&["--explain", r.code]);
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.starts_with(&format!("{} {} ({})", r.code, r.name, r.severity)), "{text}");
        assert!(text.contains("## Fix"), "{text}");
    }
    let out = lint(&["--explain", "ANE999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such rule"));
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let (pkg, npz) = (fixture("mlp_ios16_fp16.mlpackage"), fixture("mlp.inputs.npz"));
    for (args, needle) in [
        (vec!["/nonexistent/Model.mlpackage"], "no such file"),
        (vec![pkg.as_str(), "--allow", "ANE999"], "--allow `ANE999`"),
        (vec![npz.as_str()], "--input NAME:DIMS:DTYPE"),
        (vec![pkg.as_str(), "--input", "x:1x16"], "apply to TorchScript files and dynamic .pt2 programs only"),
    ] {
        let out = lint(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(out.stdout.is_empty());
    }
}

/// Properties the SARIF 2.1.0 schema allows on a `result` (it sets `additionalProperties: false`).
const RESULT_PROPERTIES: &[&str] = &[
    "guid",
    "correlationGuid",
    "ruleId",
    "ruleIndex",
    "rule",
    "kind",
    "level",
    "message",
    "analysisTarget",
    "locations",
    "webRequest",
    "webResponse",
    "fingerprints",
    "partialFingerprints",
    "codeFlows",
    "graphs",
    "graphTraversals",
    "stacks",
    "relatedLocations",
    "suppressions",
    "baselineState",
    "rank",
    "attachments",
    "hostedViewerUri",
    "workItemUris",
    "provenance",
    "fixes",
    "taxa",
    "occurrenceCount",
    "properties",
];

/// Properties the schema allows on a `reportingDescriptor` (a rule).
const RULE_PROPERTIES: &[&str] = &[
    "id",
    "deprecatedIds",
    "guid",
    "deprecatedGuids",
    "name",
    "deprecatedNames",
    "shortDescription",
    "fullDescription",
    "messageStrings",
    "defaultConfiguration",
    "helpUri",
    "help",
    "relationships",
    "properties",
];

/// Properties the schema allows on the top-level `sarifLog`.
const LOG_PROPERTIES: &[&str] = &["$schema", "version", "runs", "inlineExternalProperties", "properties"];

/// SARIF `level` values (§3.27.10).
const LEVELS: &[&str] = &["none", "note", "warning", "error"];

fn require(v: &mut Vec<String>, ok: bool, what: String) {
    if !ok {
        v.push(what);
    }
}

fn only(v: &mut Vec<String>, at: &str, obj: &Value, allowed: &[&str]) {
    match obj.as_object() {
        Some(o) => v.extend(o.keys().filter(|k| !allowed.contains(&k.as_str())).map(|k| format!("{at}: unknown property {k}"))),
        None => v.push(format!("{at}: not an object")),
    }
}

fn array(x: &Value) -> Vec<Value> {
    x.as_array().cloned().unwrap_or_default()
}

/// Checks `log` against what the SARIF 2.1.0 schema
/// (docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json) requires:
/// required properties, `const`/`enum` values, `minimum`s, the ruleIndex/ruleId link, and no
/// properties where the schema sets `additionalProperties: false`. Returns every violation.
fn sarif_violations(log: &Value) -> Vec<String> {
    let mut v = Vec::new();
    only(&mut v, "sarifLog", log, LOG_PROPERTIES);
    require(&mut v, log["version"] == "2.1.0", "sarifLog.version must be \"2.1.0\"".into());
    require(&mut v, log["$schema"].as_str().is_some_and(|s| s.starts_with("https://")), "sarifLog.$schema must be a URI".into());
    require(&mut v, log["runs"].is_array(), "sarifLog.runs must be an array".into());
    for (i, run) in array(&log["runs"]).iter().enumerate() {
        let driver = &run["tool"]["driver"];
        require(&mut v, driver["name"].is_string(), format!("runs[{i}].tool.driver.name is required"));
        let rules = array(&driver["rules"]);
        for (j, r) in rules.iter().enumerate() {
            let at = format!("runs[{i}].tool.driver.rules[{j}]");
            only(&mut v, &at, r, RULE_PROPERTIES);
            require(&mut v, r["id"].is_string(), format!("{at}.id is required"));
            for m in ["shortDescription", "fullDescription", "help"] {
                require(&mut v, r[m].is_null() || r[m]["text"].is_string(), format!("{at}.{m}.text is required"));
            }
            let level = r["defaultConfiguration"]["level"].as_str();
            require(&mut v, level.is_none_or(|l| LEVELS.contains(&l)), format!("{at}.defaultConfiguration.level"));
        }
        for (j, res) in array(&run["results"]).iter().enumerate() {
            let at = format!("runs[{i}].results[{j}]");
            only(&mut v, &at, res, RESULT_PROPERTIES);
            require(
                &mut v,
                res["message"]["text"].is_string() || res["message"]["id"].is_string(),
                format!("{at}.message needs text or id"),
            );
            require(&mut v, res["level"].as_str().is_some_and(|l| LEVELS.contains(&l)), format!("{at}.level"));
            let rule = res["ruleIndex"].as_u64().and_then(|k| rules.get(usize::try_from(k).ok()?));
            require(&mut v, rule.is_some_and(|r| r["id"] == res["ruleId"]), format!("{at}.ruleIndex must point at ruleId"));
            for (k, loc) in array(&res["locations"]).iter().enumerate() {
                let (at, p) = (format!("{at}.locations[{k}]"), &loc["physicalLocation"]);
                let anchored = p["artifactLocation"]["uri"].is_string() || !p["address"].is_null();
                require(&mut v, p.is_null() || anchored, format!("{at}.physicalLocation needs artifactLocation or address"));
                let line = p["region"]["startLine"].as_u64();
                require(&mut v, p["region"].is_null() || line.is_some_and(|l| l >= 1), format!("{at}.region.startLine must be ≥ 1"));
                require(&mut v, loc["logicalLocations"].is_null() || loc["logicalLocations"].is_array(), format!("{at}.logicalLocations"));
            }
        }
    }
    v
}

#[test]
fn sarif_is_valid_sarif_2_1_0() {
    let out = lint(&[&fixture("attention_ios15_fp32.mlpackage"), "--format", "sarif"]);
    assert_eq!(out.status.code(), Some(0));
    let log = json(&out);
    let violations = sarif_violations(&log);
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(log["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap().len(), RULES.len());
    assert!(!log["runs"][0]["results"].as_array().unwrap().is_empty());
    // The checker itself catches what the schema forbids.
    let mut bad = log.clone();
    bad["version"] = "2.0.0".into();
    bad["runs"][0]["results"][0]["ruleIndex"] = 99.into();
    bad["runs"][0]["results"][0]["bogus"] = 1.into();
    assert_eq!(sarif_violations(&bad).len(), 3, "{:#?}", sarif_violations(&bad));
}


#[test]
#[ignore = "needs the zoo from `make setup`; `make test` runs it"]
fn layout_and_attention_rules_fire_as_traced_and_are_quiet_after_the_ane_passes() {
    let zoo = zoo();
    let out = tempfile::tempdir().unwrap();
    for m in ["bert", "distilbert", "minilm", "roberta", "gpt2", "whisper_encoder", "vit_hf", "t5_encoder", "llama"] {
        let (traced, ane) = (out.path().join(format!("{m}_traced.mlpackage")), out.path().join(format!("{m}.mlpackage")));
        zoo_dir::convert(m, &traced, &["--no-ane"]);
        zoo_dir::convert(m, &ane, &[]);
        let from_traced = codes(&json(&lint(&[traced.to_str().unwrap(), "--format", "json"])));
        let inputs = zoo.join(format!("{m}.inputs.npz"));
        let from_pt = codes(&json(&lint(&[zoo.join(format!("{m}.pt")).to_str().unwrap(), "--example", inputs.to_str().unwrap(), "--format", "json"])));
        assert_eq!(from_traced, from_pt, "{m}: a .pt lints like the package `convert --no-ane` writes from it");
        for code in ["ANE002", "ANE003"] {
            assert!(from_traced.iter().any(|c| c == code), "{m}: {code} does not fire as traced: {from_traced:?}");
        }
        let from_ane = codes(&json(&lint(&[ane.to_str().unwrap(), "--format", "json"])));
        for code in ["ANE001", "ANE002", "ANE003"] {
            assert!(!from_ane.iter().any(|c| c == code), "{m}: {code} still fires after the ANE passes: {from_ane:?}");
        }
    }
}

/// For each MIL op type a rule may flag: a torch call its TorchScript code line may make, and
/// what the original Python line then holds. `MODULE_CALL` means a call `self.<name>(` of the
/// submodule that ran it, whose name is part of the MIL op's name (torch's own `nn.Linear` frame
/// is skipped for its caller's).
const CALLS: &[(&str, &str, &str)] = &[
    ("linear", "torch.linear(", MODULE_CALL),
    ("linear", "torch.addmm(", "addmm("),
    ("gelu", "torch.gelu(", MODULE_CALL),
    ("matmul", "torch.matmul(", "matmul"),
    ("matmul", "torch.scaled_dot_product_attention(", "scaled_dot_product_attention("),
];

/// See [`CALLS`].
const MODULE_CALL: &str = "self.<module>(";

/// Line `n` (1-based) of `text`.
fn nth_line(text: &str, n: u64) -> &str {
    text.lines().nth(usize::try_from(n).unwrap() - 1).unwrap_or_else(|| panic!("no line {n}"))
}

/// A file the trace named, found on this machine: the path itself, or the same path under this
/// checkout (`…/fixtures/torchscript/make.py`) or under its `.venv` (`…/site-packages/…`),
/// where the machine that traced the fixture kept them.
fn traced_file(path: &str) -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = vec![PathBuf::from(path)];
    if let Some(i) = path.find("/fixtures/") {
        candidates.push(root.join(&path[i + 1..]));
    }
    if let Some((_, rest)) = path.split_once("/site-packages/") {
        for lib in std::fs::read_dir(root.join(".venv/lib")).into_iter().flatten().flatten() {
            candidates.push(lib.path().join("site-packages").join(rest));
        }
    }
    candidates.into_iter().find_map(|p| std::fs::read_to_string(p).ok())
}

/// Checks every finding of a `.pt` lint against the archive itself: its `source` names a code file
/// of the archive, `line` is the line holding the torch call that made the op, `text` is that
/// line; `original`, when the archive has debug info, names a Python line that makes the call
/// (checked when that file is on this machine). Also checks the text and SARIF renderings name
/// the same line. Returns how many original lines were read and checked.
fn check_sources(pt: &Path, args: &[&str]) -> usize {
    let archive = torch2coreml::torchscript::read(pt).unwrap();
    let pt_arg = pt.to_str().unwrap();
    let run = |format: &str| lint(&[&[pt_arg], args, &["--format", format]].concat());
    let report = json(&run("json"));
    let findings = report["findings"].as_array().unwrap();
    let text = String::from_utf8(run("text").stdout).unwrap();
    let sarif = json(&run("sarif"));
    let violations = sarif_violations(&sarif);
    assert!(violations.is_empty(), "{violations:#?}");
    let mut checked = 0;
    let mut originals = 0;
    for (i, f) in findings.iter().enumerate() {
        if !CALLS.iter().any(|(op, _, _)| f["op"] == *op) {
            continue;
        }
        let src = &f["location"]["source"];
        let file = src["file"].as_str().unwrap_or_else(|| panic!("finding on a lowered op has no source: {f}"));
        let line = src["line"].as_u64().unwrap();
        let code = archive.code.get(file).unwrap_or_else(|| panic!("{file} is not a code file of {}", pt.display()));
        let at = nth_line(code, line);
        let call = CALLS.iter().find(|(op, call, _)| f["op"] == *op && at.contains(call));
        let (_, _, original_call) = call.unwrap_or_else(|| panic!("{file}:{line} is `{at}`, which makes no {}: {f}", f["op"]));
        assert_eq!(src["text"], at.trim());
        assert!(text.contains(&format!("--> {pt_arg}:{file}:{line}\n")), "text lacks the line of {f}:\n{text}");
        let region = &sarif["runs"][0]["results"][i]["locations"][0]["physicalLocation"]["region"];
        assert_eq!(region["startLine"], line);
        checked += 1;
        let original = &src["original"];
        if original.is_null() {
            continue;
        }
        let (ofile, oline) = (original["file"].as_str().unwrap(), original["line"].as_u64().unwrap());
        assert!(text.contains(&format!("= note: traced from {ofile}:{oline}\n")), "{text}");
        let Some(python) = traced_file(ofile) else { continue };
        let at = nth_line(&python, oline);
        let op = f["location"]["op"].as_str().unwrap();
        let makes_call = match *original_call {
            MODULE_CALL => at.split("self.").skip(1).filter_map(|rest| rest.split_once('(')).any(|(name, _)| op.contains(name)),
            call => at.contains(call),
        };
        assert!(makes_call, "{ofile}:{oline} is `{at}`, which does not make {op} ({original_call})");
        originals += 1;
    }
    assert!(checked > 0, "no finding on a lowered op to check: {report}");
    originals
}

#[test]
fn issue_6_findings_on_a_traced_pt_name_its_torchscript_and_python_lines() {
    let pt = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torchscript/mlp.pt");
    // (1, 64, 8): the linears see a (B, S, C) activation with a 16-wide last axis, so ANE001 fires.
    let originals = check_sources(&pt, &["--input", "x:1x64x8:fp32"]);
    assert!(originals > 0, "mlp.pt has debug info naming fixtures/torchscript/make.py, which is in this checkout");
}

#[test]
#[ignore = "needs the zoo from `make setup`; `make test` runs it"]
fn issue_6_findings_on_traced_transformers_name_their_torchscript_and_python_lines() {
    let zoo = zoo();
    for m in ["bert", "gpt2", "whisper_encoder"] {
        let inputs = zoo.join(format!("{m}.inputs.npz"));
        let originals = check_sources(&zoo.join(format!("{m}.pt")), &["--example", inputs.to_str().unwrap()]);
        // The zoo was traced with the project venv's transformers; with it here, lines are read.
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
        assert!(originals > 0 || !venv.is_dir(), "{m}: no original Python line was checked");
    }
}

/// Size of a zip local file header before its name (PKWARE APPNOTE 4.3.7).
const LOCAL_HEADER_LEN: usize = 30;

#[test]
fn issue_6_a_corrupt_debug_pkl_only_loses_the_original_lines() {
    let pt = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torchscript/mlp.pt");
    let mut bytes = std::fs::read(&pt).unwrap();
    // Overwrite the start of linear.py.debug_pkl's data (found through its local header) with
    // bytes that are no pickle opcode and no deflate stream.
    let name = b"mlp/code/__torch__/torch/nn/modules/linear.py.debug_pkl";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() - LOCAL_HEADER_LEN;
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([bytes[at + i], bytes[at + i + 1]]));
    let data = at + LOCAL_HEADER_LEN + u16_at(26) + u16_at(28);
    bytes[data..data + 16].fill(0xff);
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("mlp.pt");
    std::fs::write(&broken, bytes).unwrap();
    let run = |p: &Path| {
        let out = lint(&[p.to_str().unwrap(), "--input", "x:1x64x8:fp32", "--format", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        json(&out)
    };
    let (intact, report) = (run(&pt), run(&broken));
    let linear = "code/__torch__/torch/nn/modules/linear.py";
    let mut expected = intact.clone();
    let mut lost = 0;
    for f in expected["findings"].as_array_mut().unwrap() {
        f["location"]["file"] = broken.to_str().unwrap().into();
        let source = &mut f["location"]["source"];
        if source["file"] == linear && !source["original"].is_null() {
            source["original"] = Value::Null;
            lost += 1;
        }
    }
    assert!(lost > 0, "the intact file has original lines for {linear}: {intact}");
    assert_eq!(report, expected, "the same findings and code lines; only {linear}'s original lines are gone");
}
