//! The one IR: Core ML's MIL (Model Intermediate Language). A [`Model`] holds a [`Program`] of
//! [`Function`]s, each a [`Block`] of [`Operation`]s over named, typed values. Operations are
//! generic data (type, named inputs, outputs, attributes), the same shape as MIL.proto's
//! `Operation`, so packages with ops we do not know still round-trip. What we know about an op
//! lives once in [`ops`]. This module does no I/O and never sees protobuf types.
//!
//! Made by loaders through [`builder::Builder`] and by `package::read`; consumed by
//! `package::write`, `inspect`, and (later) passes, interpreter and linter.

pub mod builder;
pub mod constexpr;
pub mod merge;
pub mod ops;
pub mod tensor;
pub mod text;
pub mod types;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

pub use tensor::{Fp16Loss, Tensor};
pub use types::{DType, Dim, TensorType, ValueType};

/// A MIL op-set version. Each one pairs with one Core ML `specificationVersion` and one opset
/// string (coremltools `_OPSET`; coreml-format.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Opset {
    Ios15,
    Ios16,
    Ios17,
    Ios18,
    Ios26,
}

impl Opset {
    /// All op sets, oldest first.
    pub const ALL: [Opset; 5] = [Opset::Ios15, Opset::Ios16, Opset::Ios17, Opset::Ios18, Opset::Ios26];

    /// `Model.specificationVersion` for this op set (6 = first ML Program version).
    pub fn spec_version(self) -> i32 {
        match self {
            Opset::Ios15 => 6,
            Opset::Ios16 => 7,
            Opset::Ios17 => 8,
            Opset::Ios18 => 9,
            Opset::Ios26 => 10,
        }
    }

    /// `Function.opset` string, also the only `block_specializations` key.
    pub fn opset_name(self) -> &'static str {
        match self {
            Opset::Ios15 => "CoreML5",
            Opset::Ios16 => "CoreML6",
            Opset::Ios17 => "CoreML7",
            Opset::Ios18 => "CoreML8",
            Opset::Ios26 => "CoreML9",
        }
    }

    /// The op set whose opset string is `name`.
    pub fn from_opset_name(name: &str) -> Option<Opset> {
        Opset::ALL.into_iter().find(|o| o.opset_name() == name)
    }

    /// The op set of a specificationVersion.
    pub fn from_spec_version(v: i32) -> Option<Opset> {
        Opset::ALL.into_iter().find(|o| o.spec_version() == v)
    }

    /// Parses a deployment target as users write it: `iOS15`–`iOS18`, `macOS12`–`macOS15`
    /// (also `iOS26`/`macOS26`), case-insensitive. Used by `convert --target`.
    pub fn from_target(target: &str) -> Option<Opset> {
        Some(match target.to_ascii_lowercase().as_str() {
            "ios15" | "macos12" | "tvos15" | "watchos8" => Opset::Ios15,
            "ios16" | "macos13" | "tvos16" | "watchos9" => Opset::Ios16,
            "ios17" | "macos14" | "tvos17" | "watchos10" => Opset::Ios17,
            "ios18" | "macos15" | "tvos18" | "watchos11" => Opset::Ios18,
            "ios26" | "macos26" | "tvos26" | "watchos26" | "visionos26" => Opset::Ios26,
            _ => return None,
        })
    }

    /// The iOS target this op set was introduced with, as users write it.
    pub fn target_name(self) -> &'static str {
        match self {
            Opset::Ios15 => "iOS15",
            Opset::Ios16 => "iOS16",
            Opset::Ios17 => "iOS17",
            Opset::Ios18 => "iOS18",
            Opset::Ios26 => "iOS26",
        }
    }
}

impl fmt::Display for Opset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.opset_name())
    }
}

/// A named, typed value: a function input, an op output, or a block input.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedType {
    pub name: String,
    pub ty: ValueType,
}

/// One binding of an op parameter: a reference to an earlier value, or an inline literal
/// (iOS18 constexpr inputs and a few others; coreml-format.md §2.3 `Argument.Binding`).
#[derive(Clone, Debug, PartialEq)]
pub enum Argument {
    Name(String),
    Value(Tensor),
}

/// One MIL operation. `inputs` keeps parameter order as built (the wire form is a map);
/// a parameter has several arguments only when variadic (`concat.values`).
/// `attributes` holds literal attributes other than `name` (`const.val`, iOS16 constexpr params).
#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    pub op_type: String,
    pub name: String,
    pub inputs: Vec<(String, Vec<Argument>)>,
    pub outputs: Vec<NamedType>,
    pub attributes: BTreeMap<String, Tensor>,
    pub blocks: Vec<Block>,
    /// Where the op came from in the model's source, when the loader knew it (set through
    /// [`builder::Builder::set_source`]). In memory only: MIL.proto's `Operation` has no field
    /// for it (coreml-format.md §2.3), so `package::write` does not write it and ops read from a
    /// package have none. Read by `lint` for finding locations.
    pub source: Option<Arc<Source>>,
}

/// One line of one file, 1-based, as diagnostics print it (`file:line`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceLine {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for SourceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Where an op came from. Made by `torchscript::graph` once per TorchScript statement and shared
/// (`Arc`) by every op that statement lowers to; passes copy it to the ops they rewrite it into.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    /// The serialized code line inside the model file (`code/__torch__/….py`, line).
    pub code: SourceLine,
    /// That line's text, trimmed, for snippets in diagnostics.
    pub text: String,
    /// The line of the original Python file the statement was traced from, when the archive's
    /// `.debug_pkl` says so (`…/transformers/models/bert/modeling_bert.py`, line).
    pub original: Option<SourceLine>,
}

impl Operation {
    /// The arguments bound to parameter `param`, if any.
    pub fn input(&self, param: &str) -> Option<&[Argument]> {
        self.inputs.iter().find(|(p, _)| p == param).map(|(_, a)| a.as_slice())
    }

    /// The literal of a `const` op.
    pub fn const_val(&self) -> Option<&Tensor> {
        if self.op_type == "const" {
            self.attributes.get("val")
        } else {
            None
        }
    }
}

/// A straight-line list of operations in topological order, with the names it returns.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Block {
    pub inputs: Vec<NamedType>,
    pub operations: Vec<Operation>,
    pub outputs: Vec<String>,
}

impl Block {
    /// Renames value `old` to `new` everywhere in this block (its definition, every use, the
    /// block outputs). The caller makes sure `new` is not already defined. Used by loaders to
    /// give model outputs stable names.
    pub fn rename(&mut self, old: &str, new: &str) {
        for op in &mut self.operations {
            for o in op.outputs.iter_mut().filter(|o| o.name == old) {
                o.name = new.to_string();
            }
            for (_, args) in &mut op.inputs {
                for a in args.iter_mut() {
                    if matches!(a, Argument::Name(n) if n == old) {
                        *a = Argument::Name(new.to_string());
                    }
                }
            }
            for b in &mut op.blocks {
                b.rename(old, new);
            }
        }
        for o in self.outputs.iter_mut().filter(|o| *o == old) {
            *o = new.to_string();
        }
    }

    /// Renames every value named by a key of `names` to its value, everywhere in this block (as
    /// [`Block::rename`] does for one), in one walk whatever the number of names. The caller
    /// makes sure the new names are not already defined. Used by loaders to name many outputs.
    pub fn rename_all(&mut self, names: &HashMap<String, String>) {
        if names.is_empty() {
            return;
        }
        let renamed = |n: &mut String| {
            if let Some(new) = names.get(n.as_str()) {
                new.clone_into(n);
            }
        };
        for op in &mut self.operations {
            op.outputs.iter_mut().for_each(|o| renamed(&mut o.name));
            for (_, args) in &mut op.inputs {
                for a in args.iter_mut() {
                    if let Argument::Name(n) = a {
                        renamed(n);
                    }
                }
            }
            for b in &mut op.blocks {
                b.rename_all(names);
            }
        }
        self.outputs.iter_mut().for_each(renamed);
    }

    /// Every value name defined by an op of this block (nested blocks included).
    pub fn defined_names(&self) -> HashSet<&str> {
        self.walk_ops().into_iter().flat_map(|op| op.outputs.iter().map(|o| o.name.as_str())).collect()
    }

    /// True when some op in this block (or a nested one) defines `name`.
    pub fn defines(&self, name: &str) -> bool {
        self.walk_ops().iter().any(|op| op.outputs.iter().any(|o| o.name == name))
    }

    /// Every operation, nested blocks included, in order (for histograms and walks).
    pub fn walk_ops(&self) -> Vec<&Operation> {
        let mut out = Vec::new();
        for op in &self.operations {
            out.push(op);
            for b in &op.blocks {
                out.extend(b.walk_ops());
            }
        }
        out
    }
}

/// A MIL function: inputs (tensors, then states), its op set, and its body.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    pub inputs: Vec<NamedType>,
    pub opset: Opset,
    pub block: Block,
}

/// Name of the function every single-function Core ML model runs (coreml-format.md §3).
pub const MAIN_FUNCTION: &str = "main";

/// A MIL program: functions by name (single-function models have just `main`).
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub functions: BTreeMap<String, Function>,
}

impl Program {
    /// A program with only a `main` function.
    pub fn with_main(main: Function) -> Program {
        Program { functions: BTreeMap::from([(MAIN_FUNCTION.to_string(), main)]) }
    }

    /// The `main` function, if present.
    pub fn main(&self) -> Option<&Function> {
        self.functions.get(MAIN_FUNCTION)
    }
}

/// Model metadata shown by Xcode (Model.proto `Metadata`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Metadata {
    pub short_description: String,
    pub version: String,
    pub author: String,
    pub license: String,
    pub user_defined: BTreeMap<String, String>,
}

/// A whole Core ML model: the program plus what ModelDescription adds to it. Its
/// `specificationVersion` is derived from `main`'s op set; input/output features are derived
/// from `main`'s signature. `package::write` serializes it, `package::read` returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub program: Program,
    pub metadata: Metadata,
    /// Per-feature descriptions (Model.proto `FeatureDescription.shortDescription`), by name.
    pub feature_descriptions: BTreeMap<String, String>,
    /// Inputs and outputs Core ML passes as images (FeatureTypes.proto `ImageFeatureType`), by
    /// feature name: the program still takes or returns an fp32 `[1, C, H, W]` tensor of pixel
    /// values 0–255.
    pub images: BTreeMap<String, ColorSpace>,
    /// Weights the package stored compressed, decompressed when it was read (`constexpr`).
    pub compressed: Vec<constexpr::Compressed>,
    /// Inputs that accept more than one shape (a package written by coremltools with
    /// `RangeDim` or `EnumeratedShapes`), by name; `main` declares such dimensions unknown.
    pub flexible: BTreeMap<String, ShapeSet>,
    /// Set for a classifier package (coremltools' `ClassifierConfig`): the program returns the
    /// probabilities; the package adds Core ML's `classify` op after them (`package` writes and
    /// strips it), which returns the top label and a label → probability dictionary.
    pub classifier: Option<Classifier>,
    /// Set for a multifunction package (iOS18+, `ModelDescription.functions`): the function
    /// Core ML runs when the app names none (`defaultFunctionName`). Every function of the
    /// program is then described on its own; `None`: a single-function model running `main`.
    pub default_function: Option<String>,
}

/// A classifier's labels and outputs (Model.proto `predictedFeatureName`,
/// `predictedProbabilitiesName`).
#[derive(Clone, Debug, PartialEq)]
pub struct Classifier {
    pub labels: Labels,
    /// The program output holding the class probabilities (fp32, one per label).
    pub probabilities: String,
    /// Name of the top-label output (`classLabel`); the dictionary is this plus `_probs`.
    pub predicted: String,
}

/// Class labels: names or integer ids (Core ML's string or int64 labels).
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    Names(Vec<String>),
    Ids(Vec<i64>),
}

impl Labels {
    /// Number of classes.
    pub fn len(&self) -> usize {
        match self {
            Labels::Names(v) => v.len(),
            Labels::Ids(v) => v.len(),
        }
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Label `i` as text.
    pub fn get(&self, i: usize) -> Option<String> {
        match self {
            Labels::Names(v) => v.get(i).cloned(),
            Labels::Ids(v) => v.get(i).map(|x| x.to_string()),
        }
    }
}

/// The shapes a flexible input accepts (FeatureTypes.proto `ArrayFeatureType.ShapeFlexibility`):
/// Core ML refuses any other, and so do `validate` and the interpreter's callers.
#[derive(Clone, Debug, PartialEq)]
pub enum ShapeSet {
    /// Each dimension within `lower..=upper` (`None`: unbounded).
    Range(Vec<(usize, Option<usize>)>),
    /// Exactly these shapes.
    Enumerated(Vec<Vec<usize>>),
}

impl ShapeSet {
    /// Whether `shape` is one the input accepts.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        match self {
            ShapeSet::Range(r) => r.len() == shape.len() && r.iter().zip(shape).all(|(&(lo, hi), &d)| d >= lo && hi.is_none_or(|h| d <= h)),
            ShapeSet::Enumerated(e) => e.iter().any(|s| s == shape),
        }
    }

    /// As `inspect` and errors show it: `[1, 2..64, 16]` or `1x4x16 | 1x8x16`.
    pub fn describe(&self) -> String {
        match self {
            ShapeSet::Range(r) => {
                let dims: Vec<String> = r
                    .iter()
                    .map(|&(lo, hi)| match hi {
                        Some(h) if h == lo => lo.to_string(),
                        Some(h) => format!("{lo}..{h}"),
                        None => format!("{lo}.."),
                    })
                    .collect();
                format!("[{}]", dims.join(", "))
            }
            ShapeSet::Enumerated(e) => e.iter().map(|s| s.iter().map(usize::to_string).collect::<Vec<_>>().join("x")).collect::<Vec<_>>().join(" | "),
        }
    }

    /// The shapes `validate` checks: every enumerated shape, or a range's minimum, middle and
    /// maximum (an unbounded dimension's maximum taken as `default`'s size, the shape the
    /// package declares, at least the minimum).
    pub fn samples(&self, default: &[usize]) -> Vec<Vec<usize>> {
        match self {
            ShapeSet::Enumerated(e) => e.clone(),
            ShapeSet::Range(r) => {
                let max: Vec<usize> = r.iter().enumerate().map(|(i, &(lo, hi))| hi.unwrap_or_else(|| default.get(i).copied().unwrap_or(lo).max(lo))).collect();
                let min: Vec<usize> = r.iter().map(|&(lo, _)| lo).collect();
                let mid: Vec<usize> = min.iter().zip(&max).map(|(a, b)| a + (b - a) / 2).collect();
                let mut out = vec![min, mid, max];
                out.dedup();
                out
            }
        }
    }
}

/// The channel layout of an image input (`ImageFeatureType.ColorSpace`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorSpace {
    Gray,
    Rgb,
    Bgr,
}

impl ColorSpace {
    /// Channels of the program's tensor.
    pub fn channels(self) -> usize {
        match self {
            ColorSpace::Gray => 1,
            ColorSpace::Rgb | ColorSpace::Bgr => 3,
        }
    }

    /// As `convert --image …:layout=` and `inspect` spell it.
    pub fn name(self) -> &'static str {
        match self {
            ColorSpace::Gray => "GRAY",
            ColorSpace::Rgb => "RGB",
            ColorSpace::Bgr => "BGR",
        }
    }
}

impl Model {
    /// A model around `program` with empty metadata.
    pub fn new(program: Program) -> Model {
        Model {
            program,
            metadata: Metadata::default(),
            feature_descriptions: BTreeMap::new(),
            images: BTreeMap::new(),
            compressed: Vec::new(),
            flexible: BTreeMap::new(),
            classifier: None,
            default_function: None,
        }
    }

    /// The functions `validate`, `inspect` and `lint-ane` cover: `only` (their `--function`),
    /// which must exist, or else every function, the default one first. Errors name the
    /// functions there are.
    pub fn functions_to_check(&self, only: Option<&str>) -> Result<Vec<String>, String> {
        let names: Vec<String> = self.program.functions.keys().cloned().collect();
        match only {
            Some(n) if names.iter().any(|x| x == n) => Ok(vec![n.to_string()]),
            Some(n) => Err(format!("no function `{n}` (the package has: {})", names.join(", "))),
            None => {
                let first = self.default_function.clone().filter(|d| names.contains(d)).or_else(|| self.program.main().map(|_| MAIN_FUNCTION.to_string()));
                Ok(first.iter().cloned().chain(names.into_iter().filter(|n| Some(n) != first.as_ref())).collect())
            }
        }
    }

    /// This model with only function `name`, as a single-function model whose `main` it is
    /// (what the interpreter, `validate` and `inspect` run). Weights are shared, not copied.
    /// `None` when there is no such function.
    pub fn select(&self, name: &str) -> Option<Model> {
        let mut model = self.clone();
        let f = model.program.functions.remove(name)?;
        model.program = Program::with_main(f);
        model.default_function = None;
        Some(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_all_renames_definitions_uses_and_outputs_in_one_walk() {
        let mut b = builder::Builder::new(Opset::Ios15);
        let x = b.input("x", TensorType::new(DType::F32, &[2]));
        let y = b.op(&ops::elementwise::RELU, "y").arg("x", &x).build1().unwrap();
        let z = b.op(&ops::elementwise::RELU, "z").arg("x", &y).build1().unwrap();
        let mut f = b.finish(&[y.clone(), z.clone(), y]);
        let names = HashMap::from([("y".to_string(), "output_0".to_string()), ("z".to_string(), "output_1".to_string())]);
        f.block.rename_all(&names);
        assert_eq!(f.block.outputs, ["output_0", "output_1", "output_0"]);
        assert!(f.block.defines("output_0") && f.block.defines("output_1") && !f.block.defines("y"));
        assert_eq!(f.block.operations[1].input("x"), Some(&[Argument::Name("output_0".into())][..]));
        builder::check_function(&f).unwrap();
    }

    #[test]
    fn targets_map_to_spec_version_and_opset_like_coremltools() {
        // coremltools `_SPECIFICATION_VERSION_IOS_*` and `_OPSET` (coreml-format.md §3).
        for (target, spec, opset) in [
            ("iOS15", 6, "CoreML5"),
            ("macOS12", 6, "CoreML5"),
            ("iOS16", 7, "CoreML6"),
            ("macOS13", 7, "CoreML6"),
            ("iOS17", 8, "CoreML7"),
            ("macOS14", 8, "CoreML7"),
            ("iOS18", 9, "CoreML8"),
            ("macOS15", 9, "CoreML8"),
        ] {
            let o = Opset::from_target(target).unwrap();
            assert_eq!((o.spec_version(), o.opset_name()), (spec, opset), "{target}");
            assert_eq!(Opset::from_spec_version(spec), Some(o));
            assert_eq!(Opset::from_opset_name(opset), Some(o));
        }
        assert_eq!(Opset::from_target("iOS14"), None);
    }
}
