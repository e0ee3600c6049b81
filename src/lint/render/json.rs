//! JSON: `{"findings": [{"code", "name", "severity", "op", "location", "message", "fix"}],
//! "counts": {"error", "warning", "note", "total"}}`, for scripts and CI. Called by
//! `cli/lint.rs` for `--format json`.

use serde_json::{json, Map, Value};

use crate::lint::{counts, Finding};

/// The JSON document for `findings`. `location` is an object: `file`, `function`, `op` (the MIL
/// op name) and `source` (TorchScript `file:line`, or null).
pub fn render(findings: &[Finding]) -> Value {
    let items: Vec<Value> = findings
        .iter()
        .map(|f| {
            json!({
                "code": f.code,
                "name": f.name,
                "severity": f.severity.name(),
                "op": f.op,
                "location": {
                    "file": f.location.file,
                    "function": f.location.function,
                    "op": f.location.op,
                    "source": f.location.source,
                },
                "message": f.message,
                "fix": f.fix,
            })
        })
        .collect();
    let mut c = Map::new();
    for (sev, n) in counts(findings) {
        c.insert(sev.name().to_string(), json!(n));
    }
    c.insert("total".into(), json!(findings.len()));
    json!({ "findings": items, "counts": c })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lint::{Location, Severity};

    /// Two findings for the renderers' snapshot tests, one with a TorchScript source line.
    pub(crate) fn sample() -> Vec<Finding> {
        vec![
            Finding {
                code: "ANE002",
                name: "linear-on-bsc",
                severity: Severity::Warning,
                op: "linear".into(),
                location: Location { file: "attention.mlpackage".into(), function: "main".into(), op: "linear_0".into(), source: None },
                message: "`linear` on a (B, S, C) activation (1, 8, 32, fp16)".into(),
                fix: "keep activations as (B, C, 1, S) and use a 1×1 `conv` with weight (32, 32, 1, 1)".into(),
            },
            Finding {
                code: "ANE012",
                name: "training-op",
                severity: Severity::Error,
                op: "random_bernoulli".into(),
                location: Location {
                    file: "model.pt".into(),
                    function: "main".into(),
                    op: "mask".into(),
                    source: Some("code/__torch__/model.py:12".into()),
                },
                message: "`random_bernoulli` in an inference model".into(),
                fix: "call model.eval() before torch.jit.trace and convert again".into(),
            },
        ]
    }

    #[test]
    fn json_has_findings_and_counts() {
        insta::assert_json_snapshot!("json_sample", render(&sample()));
    }
}
