//! IR → IR rewrites, run in a fixed order by [`run`]. Each pass is one [`Pass`] in its own file
//! and reports what it changed, so `convert --format json` can list them. Called by `convert`
//! after lowering and before `package::write`.

pub mod ane_layout;
pub mod compress;
pub mod dead_code;
pub mod fp16_range;
pub mod rewrite;
pub mod simplify;
pub mod split_heads;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::mil::Function;

/// What one pass did to a function: op counts around it, and the pass's own counts
/// (`linears_rewritten`, `transposes_removed`, …), flattened into one JSON object.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Changes {
    /// Top-level ops in the function before and after the pass (consts included).
    pub ops_before: usize,
    pub ops_after: usize,
    #[serde(flatten)]
    pub counts: BTreeMap<&'static str, usize>,
}

impl Changes {
    /// Changes with op counts only.
    pub fn new(ops_before: usize, ops_after: usize) -> Changes {
        Changes { ops_before, ops_after, counts: BTreeMap::new() }
    }

    /// Adds the pass's own counts.
    pub fn with(mut self, counts: impl IntoIterator<Item = (&'static str, usize)>) -> Changes {
        self.counts.extend(counts);
        self
    }

    /// One of the pass's counts (0 when it has none by that name).
    pub fn count(&self, key: &str) -> usize {
        self.counts.get(key).copied().unwrap_or(0)
    }
}

/// Why a pass could not run (the function is left unchanged).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("pass `{pass}`: {message}")]
pub struct PassError {
    pub pass: &'static str,
    pub message: String,
}

/// One rewrite: a name (kebab-case, stable) and the function that applies it.
pub struct Pass {
    pub name: &'static str,
    /// An ANE layout rewrite (skipped by `convert --no-ane`), as opposed to cleanup.
    pub ane: bool,
    pub run: fn(&mut Function) -> Result<Changes, PassError>,
}

/// Every pass, in the order they run. Cleanup first so later rewrites see canonical graphs.
pub const PIPELINE: &[Pass] = &[
    // Cleanup first so the ANE rewrites see canonical graphs: identities gone, chains merged.
    simplify::PASS,
    // Attention per head while the graph is still in PyTorch's layout, so `ane-layout` sees
    // per-head (B, S, D) tensors it can move to (B, D, 1, S) like any other activation.
    split_heads::PASS,
    // (B, S, C) → (B, C, 1, S) with 1×1 convs; ends with `simplify` so conversions that meet cancel.
    ane_layout::PASS,
    // Drops ops nothing reads: parameter consts of folded ops, unused traced values.
    dead_code::PASS,
];

/// Runs [`PIPELINE`] on `f` (without the ANE rewrites when `ane` is false), returning each
/// pass's name and changes in order.
pub fn run(f: &mut Function, ane: bool) -> Result<Vec<(&'static str, Changes)>, PassError> {
    PIPELINE.iter().filter(|p| ane || !p.ane).map(|p| (p.run)(f).map(|c| (p.name, c))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_names_are_unique_kebab_case() {
        for (i, p) in PIPELINE.iter().enumerate() {
            assert!(p.name.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{}", p.name);
            assert!(PIPELINE[i + 1..].iter().all(|q| q.name != p.name), "{} twice", p.name);
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;
