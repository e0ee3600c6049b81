//! JSON: `{"findings": [{"code", "name", "severity", "op", "location", "message", "fix"}],
//! "counts": {"error", "warning", "note", "total"}}`, for scripts and CI. Called by
//! `cli/lint.rs` for `--format json`.

use serde_json::{json, Map, Value};

use crate::lint::{counts, Finding};
use crate::mil::SourceLine;

fn line(l: &SourceLine) -> Value {
    json!({ "file": l.file, "line": l.line })
}

/// The JSON document for `findings`. `location` is an object: `file` (the model), `function`,
/// `op` (the MIL op name) and `source`: null, or `{"file", "line", "text", "original"}` with the
/// TorchScript code file inside the `.pt`, its 1-based line and text, and `original` = null or
/// `{"file", "line"}` of the Python the line was traced from.
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
                    "source": f.location.source.as_ref().map(|s| json!({
                        "file": s.code.file,
                        "line": s.code.line,
                        "text": s.text,
                        "original": s.original.as_ref().map(line),
                    })),
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
    use crate::mil::Source;

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
                    source: Some(Source {
                        code: SourceLine { file: "code/__torch__/model.py".into(), line: 12 },
                        text: "mask = torch.bernoulli(p)".into(),
                        original: Some(SourceLine { file: "/src/model.py".into(), line: 40 }),
                    }),
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
