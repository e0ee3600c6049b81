//! rustc-style text: one block per finding, then a summary count line. Called by
//! `cli/lint.rs` for `--format text`. A finding on an op lowered from TorchScript points at its
//! code line inside the `.pt` and shows it, then the original Python line when known:
//!
//! ```text
//! warning[ANE002]: `linear` on a (B, S, C) activation (1, 128, 768, fp16)
//!   --> bert.pt:code/__torch__/torch/nn/modules/linear.py:12
//!    |
//! 12 | _0 = torch.linear(argument_1, weight, bias)
//!    |
//!    = note: MIL op main/encoder_layer_0_attention_self_query__0 (`linear`)
//!    = note: traced from …/transformers/models/bert/modeling_bert.py:175
//!    = help: keep activations as (B, C, 1, S) and use a 1×1 `conv` …
//! ```

use std::fmt::Write;

use crate::lint::{counts, Finding};

/// Narrowest gutter (before `-->` and `|`), so findings without a source line stay aligned with
/// those whose line numbers have one or two digits.
const MIN_GUTTER: usize = 2;

/// Renders `findings` and a summary line; "no ANE findings" when there are none.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let _ = writeln!(s, "{}[{}]: {}", f.severity, f.code, f.message);
        let l = &f.location;
        // rustc indents the gutter by the width of the line number it shows.
        let width = l.source.as_ref().map_or(MIN_GUTTER, |src| src.code.line.to_string().len().max(MIN_GUTTER));
        let (pad, bar) = (" ".repeat(width), " ".repeat(width + 1));
        match &l.source {
            Some(src) => {
                let _ = writeln!(s, "{pad}--> {}:{}", l.file, src.code);
                let _ = writeln!(s, "{bar}|");
                let _ = writeln!(s, "{:>width$} | {}", src.code.line, src.text);
                let _ = writeln!(s, "{bar}|");
                let _ = writeln!(s, "{bar}= note: MIL op {}/{} (`{}`)", l.function, l.op, f.op);
                if let Some(original) = &src.original {
                    let _ = writeln!(s, "{bar}= note: traced from {original}");
                }
            }
            None => {
                let _ = writeln!(s, "{pad}--> {}: {}/{} (`{}`)", l.file, l.function, l.op, f.op);
            }
        }
        let _ = writeln!(s, "{bar}= help: {}", f.fix);
        let _ = writeln!(s, "{bar}= note: `{}` is on; `--explain {}` says why, `--allow {}` turns it off", f.name, f.code, f.code);
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
