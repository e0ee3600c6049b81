//! Renderers: each turns `&[Finding]` into the bytes of one output format (ruff's per-format
//! emitters). Called by `cli/lint.rs`; no renderer prints or decides exit codes.

pub mod json;
pub mod sarif;
pub mod text;
