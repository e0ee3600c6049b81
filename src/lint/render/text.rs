//! rustc-style text: one block per finding, then a summary count line. Called by
//! `cli/lint.rs` for `--format text`.
//!
//! ```text
//! warning[ANE002]: `linear` on a (B, S, C) activation (1, 8, 32, fp16)
//!   --> model.mlpackage: main/linear_0
//!    = help: keep activations as (B, C, 1, S) and use a 1×1 `conv` …
//! ```

use std::fmt::Write;

use crate::lint::{counts, Finding};

/// Renders `findings` and a summary line; "no ANE findings" when there are none.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let _ = writeln!(s, "{}[{}]: {}", f.severity, f.code, f.message);
        let l = &f.location;
        match &l.source {
            Some(src) => {
                let _ = writeln!(s, "  --> {}:{src}", l.file);
                let _ = writeln!(s, "   = note: MIL op {}/{} (`{}`)", l.function, l.op, f.op);
            }
            None => {
                let _ = writeln!(s, "  --> {}: {}/{} (`{}`)", l.file, l.function, l.op, f.op);
            }
        }
        let _ = writeln!(s, "   = help: {}", f.fix);
        let _ = writeln!(s, "   = note: `{}` is on; `--explain {}` says why, `--allow {}` turns it off", f.name, f.code, f.code);
        s.push('\n');
    }
    if findings.is_empty() {
        s.push_str("no ANE findings\n");
        return s;
    }
    let parts: Vec<String> = counts(findings)
        .iter()
        .rev()
        .filter(|(_, n)| *n > 0)
        .map(|(sev, n)| format!("{n} {sev}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    let _ = writeln!(s, "{} finding{}: {}", findings.len(), if findings.len() == 1 { "" } else { "s" }, parts.join(", "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::render::json::tests::sample;

    #[test]
    fn text_looks_like_rustc() {
        insta::assert_snapshot!("text_sample", render(&sample()));
    }

    #[test]
    fn empty_says_so() {
        assert_eq!(render(&[]), "no ANE findings\n");
    }
}
