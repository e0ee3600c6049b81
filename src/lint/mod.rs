//! ANE lint: checks a MIL program for patterns that keep Core ML from running it (well) on the
//! Apple Neural Engine, and reports them as [`Finding`]s. One file per rule in `rules/`, listed
//! once in [`RULES`]; one renderer per output format in `render/`. Called by
//! `torch2coreml lint-ane` (`cli/lint.rs`), which reads the model, calls [`check`], renders the
//! findings and turns the worst severity into an exit code. Works on any program: ours, or one
//! `package::read` got from a third-party `.mlpackage`.
//!
//! The ANE facts behind the rules come from Apple's "Deploying Transformers on the Apple Neural
//! Engine" (machinelearning.apple.com/research/neural-engine-transformers, 2022) and its
//! reference code (github.com/apple/ml-ane-transformers). Apple publishes no list of ANE ops or
//! size limits; rules that rely on community measurements (ANE004, ANE009) cite them in their
//! `--explain` text and say which facts are documented and which measured.

pub mod render;
pub mod rules;

use std::collections::HashMap;
use std::fmt;

use crate::mil::{Argument, Function, Operation, Source, Tensor, TensorType};

/// How bad a finding is. Ordered: `Note < Warning < Error`; `--deny LEVEL` fails on findings at
/// or above `LEVEL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth knowing; the model still runs on the ANE.
    Note,
    /// Costs speed or moves work off the ANE.
    Warning,
    /// The ANE cannot run the model as written.
    Error,
}

impl Severity {
    /// Every severity, lowest first (for counts).
    pub const ALL: [Severity; 3] = [Severity::Note, Severity::Warning, Severity::Error];

    /// The lowercase name used in text, JSON and SARIF (`note`, `warning`, `error`).
    pub fn name(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One lint rule. Each `rules/aneNNN_<name>.rs` defines one `pub const RULE: Rule`.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Stable code, `ANE001`…; never reused once published.
    pub code: &'static str,
    /// Kebab-case name of the flagged pattern (`short-last-axis`); accepted by `--allow`.
    pub name: &'static str,
    /// Severity of every finding of this rule.
    pub severity: Severity,
    /// One line saying what the rule flags (SARIF `shortDescription`, `--explain` title).
    pub summary: &'static str,
    /// Markdown with What it finds / Why it matters / Example / Fix, shown by `--explain`.
    pub explanation: &'static str,
    /// Looks at one function and returns a [`Hit`] per flagged op.
    pub check: fn(&Graph) -> Vec<Hit>,
}

/// What a rule's `check` returns for one flagged op; [`check`] adds the rule and the location.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// MIL name of the flagged op (its `name`), or of the function input.
    pub op_name: String,
    /// MIL op type (`linear`), or `input` for a function input.
    pub op_type: String,
    /// One line: what is wrong, with the types involved.
    pub message: String,
    /// One line: the concrete change that makes it go away.
    pub fix: String,
}

impl Hit {
    /// A hit on op `op`.
    pub fn on(op: &Operation, message: String, fix: String) -> Hit {
        Hit { op_name: op.name.clone(), op_type: op.op_type.clone(), message, fix }
    }
}

/// Where a finding is: the model file, the MIL function and op, and the source line the op came
/// from when known.
#[derive(Clone, Debug, PartialEq)]
pub struct Location {
    /// The model path as the user gave it.
    pub file: String,
    /// MIL function name (`main`).
    pub function: String,
    /// MIL op name (or function input name).
    pub op: String,
    /// The op's [`Operation::source`]: the `code/__torch__/….py` line inside a `.pt` (and the
    /// original Python line when the archive has debug info). `None` for packages and inputs.
    pub source: Option<Source>,
}

/// One finding: a rule that fired on one op. Renderers turn a slice of these into bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// The rule's code (`ANE002`).
    pub code: &'static str,
    /// The rule's name (`linear-on-bsc`).
    pub name: &'static str,
    /// The rule's severity.
    pub severity: Severity,
    /// MIL op type of the flagged op.
    pub op: String,
    /// Where the op is.
    pub location: Location,
    /// One-line message.
    pub message: String,
    /// One-line fix.
    pub fix: String,
}

/// Every rule, in code order. One line per rule; codes are never reused.
pub const RULES: &[Rule] = &[
    rules::ane001_short_last_axis::RULE,
    rules::ane002_linear_on_bsc::RULE,
    rules::ane003_batched_attention::RULE,
    rules::ane004_cpu_gpu_only_op::RULE,
    rules::ane005_fp32_compute::RULE,
    rules::ane006_fp32_weights::RULE,
    rules::ane007_int64_tensor::RULE,
    rules::ane008_dynamic_shape::RULE,
    rules::ane009_oversized_tensor::RULE,
    rules::ane010_large_gather::RULE,
    rules::ane011_reshape_transpose_chain::RULE,
    rules::ane012_training_op::RULE,
    rules::ane013_small_palette_groups::RULE,
    rules::ane014_blockwise_quantized::RULE,
];

/// The rule with this code (case-insensitive) or name, for `--explain` and `--allow`.
pub fn find_rule(code_or_name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.code.eq_ignore_ascii_case(code_or_name) || r.name == code_or_name)
}

/// Runs every rule not in `allowed` (rules looked up with [`find_rule`]) on every function of
/// `model`'s program (each knowing the package's compressed weights and flexible inputs) and returns the findings, by function, then rule, then op order. `file` is the model
/// path shown in locations. Called by `cli/lint.rs` and the tests.
pub fn check(model: &crate::mil::Model, file: &str, allowed: &[&Rule]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (fname, function) in &model.program.functions {
        let mut graph = Graph::new(function);
        graph.compressed = &model.compressed;
        graph.flexible = &model.flexible;
        let sources: HashMap<&str, &Source> =
            graph.ops.iter().filter_map(|op| Some((op.name.as_str(), op.source.as_deref()?))).collect();
        for rule in RULES.iter().filter(|r| !allowed.iter().any(|a| a.code == r.code)) {
            for hit in (rule.check)(&graph) {
                let source = sources.get(hit.op_name.as_str()).map(|s| (*s).clone());
                findings.push(Finding {
                    code: rule.code,
                    name: rule.name,
                    severity: rule.severity,
                    op: hit.op_type,
                    location: Location { file: file.to_string(), function: fname.clone(), op: hit.op_name, source },
                    message: hit.message,
                    fix: hit.fix,
                });
            }
        }
    }
    findings
}

/// Number of findings per severity, lowest first (for the summary line and JSON `counts`).
pub fn counts(findings: &[Finding]) -> [(Severity, usize); 3] {
    Severity::ALL.map(|s| (s, findings.iter().filter(|f| f.severity == s).count()))
}

/// One function indexed for rules: every op (nested blocks included), each value's type, the op
/// that produces it, and how many ops use it. Built once per function by [`check`].
pub struct Graph<'a> {
    /// The function itself (inputs, opset, body).
    pub function: &'a Function,
    /// Every op in order, nested blocks included.
    pub ops: Vec<&'a Operation>,
    types: HashMap<&'a str, &'a TensorType>,
    producers: HashMap<&'a str, &'a Operation>,
    uses: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<&'a Operation>>,
    /// How the package stored its compressed weights (read back dense; empty for a model
    /// loaded from a `.pt` or a folder).
    pub compressed: &'a [crate::mil::constexpr::Compressed],
    /// Inputs that accept several shapes, with the shapes (a package's `ShapeFlexibility`).
    pub flexible: &'a std::collections::BTreeMap<String, crate::mil::ShapeSet>,
}

/// A model without flexible inputs.
static NO_FLEXIBLE: std::collections::BTreeMap<String, crate::mil::ShapeSet> = std::collections::BTreeMap::new();

impl<'a> Graph<'a> {
    /// Indexes `function`.
    pub fn new(function: &'a Function) -> Graph<'a> {
        let ops = function.block.walk_ops();
        let mut types = HashMap::new();
        let mut producers = HashMap::new();
        let mut uses: HashMap<&str, usize> = HashMap::new();
        let mut consumers: HashMap<&str, Vec<&Operation>> = HashMap::new();
        for i in &function.inputs {
            types.insert(i.name.as_str(), i.ty.tensor());
        }
        for op in &ops {
            for o in &op.outputs {
                types.insert(o.name.as_str(), o.ty.tensor());
                producers.insert(o.name.as_str(), *op);
            }
            for (_, args) in &op.inputs {
                for a in args {
                    if let Argument::Name(n) = a {
                        *uses.entry(n.as_str()).or_default() += 1;
                        consumers.entry(n.as_str()).or_default().push(*op);
                    }
                }
            }
        }
        for o in &function.block.outputs {
            *uses.entry(o.as_str()).or_default() += 1;
        }
        Graph { function, ops, types, producers, uses, consumers, compressed: &[], flexible: &NO_FLEXIBLE }
    }

    /// The type of value `name`.
    pub fn ty(&self, name: &str) -> Option<&'a TensorType> {
        self.types.get(name).copied()
    }

    /// The op that defines value `name` (None for function inputs).
    pub fn producer(&self, name: &str) -> Option<&'a Operation> {
        self.producers.get(name).copied()
    }

    /// How many op arguments and block outputs refer to value `name`.
    pub fn uses(&self, name: &str) -> usize {
        self.uses.get(name).copied().unwrap_or(0)
    }

    /// The ops that read value `name` (once per argument naming it).
    pub fn consumers(&self, name: &str) -> &[&'a Operation] {
        self.consumers.get(name).map_or(&[], Vec::as_slice)
    }

    /// The value name bound to single-argument parameter `param` of `op`.
    pub fn arg_name<'o>(&self, op: &'o Operation, param: &str) -> Option<&'o str> {
        match op.input(param)? {
            [Argument::Name(n)] => Some(n.as_str()),
            _ => None,
        }
    }

    /// The type of parameter `param` of `op` (named value or inline literal).
    pub fn arg_ty(&self, op: &'a Operation, param: &str) -> Option<TensorType> {
        match op.input(param)? {
            [Argument::Name(n)] => self.ty(n).cloned(),
            [Argument::Value(t)] => Some(t.tensor_type()),
            _ => None,
        }
    }

    /// The constant bound to `param` of `op`: an inline literal or the value of a `const` op.
    /// `constexpr_*` ops (compressed weights) count as constants of their output type but have
    /// no value here; use [`Graph::is_const`] to ask only whether it is constant.
    pub fn const_arg(&self, op: &'a Operation, param: &str) -> Option<&'a Tensor> {
        match op.input(param)? {
            [Argument::Name(n)] => self.producer(n)?.const_val(),
            [Argument::Value(t)] => Some(t),
            _ => None,
        }
    }

    /// True when `param` of `op` is a literal, a `const` or a `constexpr_*` output (a weight).
    pub fn is_const(&self, op: &Operation, param: &str) -> bool {
        match op.input(param) {
            Some([Argument::Value(_)]) => true,
            Some([Argument::Name(n)]) => self.producer(n).is_some_and(is_const_op),
            _ => false,
        }
    }
}

/// True for `const` and the iOS16+ `constexpr_*` ops (compressed weights): weights, not compute.
pub fn is_const_op(op: &Operation) -> bool {
    op.op_type == "const" || op.op_type.starts_with("constexpr_")
}

/// `(1, 8, 32, fp16)`-style text of an optional type, for messages.
pub fn show(ty: Option<&TensorType>) -> String {
    ty.map(|t| t.to_string()).unwrap_or_else(|| "(?)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_table_has_unique_ordered_codes_and_names() {
        for (i, r) in RULES.iter().enumerate() {
            assert!(r.code.len() == 6 && r.code.starts_with("ANE"), "{}", r.code);
            assert!(RULES.get(i + 1).is_none_or(|next| next.code > r.code), "codes in increasing order");
            assert!(r.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{}", r.name);
            assert_eq!(RULES.iter().filter(|o| o.name == r.name).count(), 1, "{}", r.name);
            for section in ["## What it finds", "## Why it matters", "## Example", "## Fix"] {
                assert!(r.explanation.contains(section), "{} lacks {section}", r.code);
            }
            assert!(!r.summary.contains('\n'));
        }
    }

    #[test]
    fn find_rule_takes_code_or_name() {
        assert_eq!(find_rule("ane002").map(|r| r.code), Some("ANE002"));
        assert_eq!(find_rule("batched-attention").map(|r| r.code), Some("ANE003"));
        assert!(find_rule("ANE999").is_none());
    }
}
