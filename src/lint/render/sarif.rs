//! SARIF 2.1.0 (OASIS, docs.oasis-open.org/sarif/sarif/v2.1.0/os/sarif-v2.1.0-os.html) for
//! code-scanning tools such as GitHub's. One run; the driver lists every rule in `RULES` with its
//! explanation as help; each finding is a result whose physical location is the model file and
//! whose logical location is the MIL op. Called by `cli/lint.rs` for `--format sarif`.

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
            let mut physical = json!({ "artifactLocation": { "uri": uri(&f.location.file) } });
            if let Some((path, line)) = f.location.source.as_deref().and_then(|s| s.rsplit_once(':')) {
                if let Ok(line) = line.parse::<u64>() {
                    physical = json!({
                        "artifactLocation": { "uri": uri(&format!("{}/{path}", f.location.file)) },
                        "region": { "startLine": line },
                    });
                }
            }
            json!({
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
            })
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

/// A relative URI reference for a path: forward slashes, spaces and `%` escaped (RFC 3986).
fn uri(path: &str) -> String {
    path.replace('\\', "/").replace('%', "%25").replace(' ', "%20")
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
        assert_eq!(results[1]["locations"][0]["physicalLocation"]["region"]["startLine"], 12);
        assert_eq!(results[1]["level"], "error");
    }
}
