//! SARIF 2.1.0 (OASIS, docs.oasis-open.org/sarif/sarif/v2.1.0/os/sarif-v2.1.0-os.html) for
//! code-scanning tools such as GitHub's. One run; the driver lists every rule in `RULES` with its
//! explanation as help; each finding is a result whose logical location is the MIL op and whose
//! physical location is the model file, or, for an op lowered from TorchScript, the code line
//! inside it (`model.pt/code/__torch__/….py`, `region.startLine` and snippet), with the original
//! Python line as a related location. Called by `cli/lint.rs` for `--format sarif`.

use serde_json::{json, Value};

use crate::lint::{Finding, Severity, RULES};

/// The `$schema` URI the log declares (the OASIS 2.1.0 errata-01 schema).
pub const SARIF_SCHEMA: &str = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json";

/// The SARIF version this renderer writes (sarifLog.version is a const in the schema).
pub const SARIF_VERSION: &str = "2.1.0";

/// SARIF `level` for a severity (§3.27.10: none, note, warning, error).
fn level(s: Severity) -> &'static str {
    match s {
        Severity::Note => "note",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

/// The SARIF log for `findings`, as produced by tool version `version`.
pub fn render(findings: &[Finding], version: &str) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.code,
                "name": r.name,
                "shortDescription": { "text": r.summary },
                "fullDescription": { "text": r.summary },
                "help": { "text": r.explanation, "markdown": r.explanation },
                "defaultConfiguration": { "level": level(r.severity) },
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let (physical, related) = match &f.location.source {
                None => (json!({ "artifactLocation": { "uri": uri(&f.location.file) } }), vec![]),
                Some(s) => (
                    json!({
                        "artifactLocation": { "uri": uri(&format!("{}/{}", f.location.file, s.code.file)) },
                        "region": { "startLine": s.code.line, "snippet": { "text": s.text } },
                    }),
                    s.original
                        .iter()
                        .map(|o| {
                            json!({
                                "id": 0,
                                "physicalLocation": { "artifactLocation": { "uri": uri(&o.file) }, "region": { "startLine": o.line } },
                                "message": { "text": "traced from this line" },
                            })
                        })
                        .collect(),
                ),
            };
            let mut result = json!({
                "ruleId": f.code,
                "ruleIndex": RULES.iter().position(|r| r.code == f.code),
                "level": level(f.severity),
                "message": { "text": format!("{} Fix: {}", f.message, f.fix) },
                "locations": [{
                    "physicalLocation": physical,
                    "logicalLocations": [{
                        "name": f.location.op,
                        "fullyQualifiedName": format!("{}/{}", f.location.function, f.location.op),
                        "kind": "member",
                    }],
                }],
                "properties": { "op": f.op, "fix": f.fix },
            });
            if !related.is_empty() {
                result["relatedLocations"] = Value::Array(related);
            }
            result
        })
        .collect();
    json!({
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": { "driver": {
                "name": "torch2coreml",
                "version": version,
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

/// A URI reference for a path (RFC 3986): forward slashes, spaces and `%` escaped; an absolute
/// path (`/…`, `C:\…`) becomes a `file://` URI, a relative one stays relative.
fn uri(path: &str) -> String {
    let p = path.replace('\\', "/").replace('%', "%25").replace(' ', "%20");
    let drive = matches!(p.as_bytes(), [d, b':', b'/', ..] if d.is_ascii_alphabetic());
    if p.starts_with('/') {
        format!("file://{p}")
    } else if drive {
        format!("file:///{p}")
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::render::json::tests::sample;

    #[test]
    fn sarif_results_point_at_file_and_op() {
        let log = render(&sample(), "0.0.0");
        assert_eq!(log["version"], "2.1.0");
        let results = log["runs"][0]["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["ruleIndex"], 1);
        assert_eq!(results[0]["locations"][0]["logicalLocations"][0]["fullyQualifiedName"], "main/linear_0");
        let physical = &results[1]["locations"][0]["physicalLocation"];
        assert_eq!(physical["artifactLocation"]["uri"], "model.pt/code/__torch__/model.py");
        assert_eq!(physical["region"]["startLine"], 12);
        assert_eq!(physical["region"]["snippet"]["text"], "mask = torch.bernoulli(p)");
        let related = &results[1]["relatedLocations"][0]["physicalLocation"];
        assert_eq!(related["artifactLocation"]["uri"], "file:///src/model.py");
        assert_eq!(related["region"]["startLine"], 40);
        assert!(results[0].get("relatedLocations").is_none());
        assert_eq!(results[1]["level"], "error");
    }

    #[test]
    fn uris_are_relative_or_file_uris() {
        assert_eq!(uri("out/My Model.mlpackage"), "out/My%20Model.mlpackage");
        assert_eq!(uri("/venv/lib/a.py"), "file:///venv/lib/a.py");
        assert_eq!(uri(r"C:\src\m.py"), "file:///C:/src/m.py");
    }
}
