//! One function out of the same model built at several input sizes ("samples"): the shape
//! arithmetic a front end folded to constants at each size is recovered and emitted as MIL
//! shape ops, so the merged function runs at sizes it was not built at. Called by `pipeline`
//! for a `.pt2`'s dynamic dimensions (a Core ML range) and for buckets (enumerated shapes).
//!
//! The functions must be the same program but for values sized by the varying input
//! dimensions ("symbols": each distinct column of input dims across the samples). Where they
//! differ:
//! - a value's type: the dims that differ become unknown;
//! - an int constant of one shape (a reshape target, a slice end): each differing entry must be
//!   `a·s + b` of one symbol `s` at every sample; it becomes `shape(input)` sliced at the
//!   symbol's axis, times `a`, plus `b`, concatenated with the entries that do not differ;
//! - a constant whose shape differs (positions `arange(s)`, a mask, an embedding of constant
//!   ids): each differing dim must be `a·s + b`, and every sample's value the leading corner of
//!   the largest sample's value; it becomes that largest value sliced to the computed sizes.
//!
//! The fits are checked at every sample; for a range, the samples include a middle size of
//! each parity and the maximum, and a fit two symbols both satisfy is refused as ambiguous.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::ops::{self, shape as shape_ops};
use super::{Argument, Dim, Function, NamedType, Operation, ShapeSet, Tensor, TensorType, ValueType};
use crate::mil::DType;

/// What the merged function must cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Exactly the sample shapes (Core ML enumerated shapes): fits need only hold there.
    /// `computed`: whether sizes may be computed at run time (shape ops, sliced constants);
    /// without, only dims and a reshape's one inferred entry may differ, so every op keeps
    /// the static sizes of its bucket.
    Samples { computed: bool },
    /// Every size between the samples' smallest and largest, where `bounded` says the largest
    /// is the range's maximum (a constant sized by a symbol needs one).
    Range { bounded: bool },
}

/// The merged function and, for each input whose shape varies, its sample shapes.
pub struct Merged {
    pub function: Function,
    pub flexible: BTreeMap<String, ShapeSet>,
}

/// A varying input dimension: where it is read, and its size at each sample.
struct Symbol {
    input: String,
    axis: usize,
    sizes: Vec<i64>,
}

/// `a·s + b` of symbol `sym`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Affine {
    sym: usize,
    a: i64,
    b: i64,
}

/// One entry of a constant vector (or one dim of a constant's shape) across the samples.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Entry {
    Fixed(i64),
    Sized(Affine),
}

/// Merges `fs` (named samples of one program, in sample order) into one function. Errors say
/// what differs in a way that cannot be recovered.
pub fn merge(fs: &[(String, Function)], coverage: Coverage) -> Result<Merged, String> {
    let (_, base) = fs.first().ok_or("no functions to merge")?;
    for (name, f) in &fs[1..] {
        if f.inputs.len() != base.inputs.len() || f.block.operations.len() != base.block.operations.len() || f.block.outputs != base.block.outputs {
            return Err(format!("the program built for {name} has other ops than the first"));
        }
    }
    let symbols = symbols(fs)?;
    if symbols.is_empty() {
        return Err("the buckets build the same shapes".into());
    }
    let mut inputs = base.inputs.clone();
    for (k, m) in inputs.iter_mut().enumerate() {
        for (name, f) in &fs[1..] {
            let i = &f.inputs[k];
            if m.name != i.name {
                return Err(format!("the program built for {name} has input `{}` where the first has `{}`", i.name, m.name));
            }
            widen_value(&mut m.ty, &i.ty, &format!("input `{}`", m.name))?;
        }
    }
    let readers = readers(base);
    let mut e = Emitter { names: all_names(base), ops: Vec::new(), symbol_vars: HashMap::new(), shape_vars: HashMap::new(), symbols: &symbols, inputs: &inputs, opset: base.opset };
    for (i, op) in base.block.operations.iter().enumerate() {
        let others: Vec<&Operation> = fs[1..].iter().map(|(_, f)| &f.block.operations[i]).collect();
        let mut outputs = op.outputs.clone();
        for o in &others {
            if o.op_type != op.op_type || o.name != op.name || o.inputs != op.inputs || o.blocks != op.blocks || o.outputs.len() != op.outputs.len() {
                return Err(format!("{} `{}` differs between the shapes", op.op_type, op.name));
            }
            for (mo, oo) in outputs.iter_mut().zip(&o.outputs) {
                widen_value(&mut mo.ty, &oo.ty, &format!("`{}`", mo.name))?;
            }
        }
        let vals: Vec<&Tensor> = std::iter::once(op).chain(others.iter().copied()).filter_map(Operation::const_val).collect();
        if others.iter().all(|o| o.attributes == op.attributes) {
            e.ops.push(Operation { outputs, ..op.clone() });
            continue;
        }
        if op.op_type != "const" || vals.len() != fs.len() {
            return Err(format!("{} `{}` differs between the shapes", op.op_type, op.name));
        }
        let computed = !matches!(coverage, Coverage::Samples { computed: false });
        let out = &outputs[0];
        let why = |m: &str| format!("const `{}` differs between the shapes: {m}", op.name);
        if vals.iter().all(|v| v.shape() == vals[0].shape()) {
            e.computed_ints(op, out, &vals, &readers, coverage, computed).map_err(|m| why(&m))?;
        } else if computed {
            e.sized_const(out, &vals, &readers, coverage).map_err(|m| why(&m))?;
        } else {
            return Err(why("its shape follows the input's"));
        }
    }
    // Shape ops are placed where first needed: they read only function inputs.
    let operations = e.ops;
    let function = Function { inputs, opset: base.opset, block: super::Block { inputs: base.block.inputs.clone(), operations, outputs: base.block.outputs.clone() } };
    let mut flexible = BTreeMap::new();
    for (k, input) in function.inputs.iter().enumerate() {
        if input.ty.tensor().fixed_shape().is_none() {
            let shapes = fs.iter().filter_map(|(_, f)| f.inputs[k].ty.tensor().fixed_shape()).collect();
            flexible.insert(input.name.clone(), ShapeSet::Enumerated(shapes));
        }
    }
    super::builder::check_function(&function).map_err(|e| format!("with unknown dimensions it does not type-check: {e}"))?;
    Ok(Merged { function, flexible })
}

/// [`widen`] for tensors; a state (an iOS18 KV cache) must be the same in every sample.
fn widen_value(into: &mut ValueType, other: &ValueType, what: &str) -> Result<(), String> {
    match (into, other) {
        (ValueType::Tensor(a), ValueType::Tensor(b)) => widen(a, b, what),
        (ValueType::State(a), ValueType::State(b)) if a == b => Ok(()),
        _ => Err(format!("{what} is a state whose type differs between the shapes")),
    }
}

/// `into` with every dim that differs from `other` unknown; an error when dtype or rank differ.
fn widen(into: &mut TensorType, other: &TensorType, what: &str) -> Result<(), String> {
    if into.dtype != other.dtype || into.rank() != other.rank() {
        return Err(format!("{what} is {into} in one bucket and {other} in another"));
    }
    for (a, b) in into.shape.iter_mut().zip(&other.shape) {
        if a != b {
            *a = Dim::Unknown;
        }
    }
    Ok(())
}

/// The distinct columns of input dims that vary across the samples, each read at its first
/// input and axis.
fn symbols(fs: &[(String, Function)]) -> Result<Vec<Symbol>, String> {
    let mut out: Vec<Symbol> = Vec::new();
    for (k, input) in fs[0].1.inputs.iter().enumerate() {
        let shapes: Vec<Vec<usize>> = fs.iter().map(|(_, f)| f.inputs[k].ty.tensor().fixed_shape().ok_or_else(|| format!("input `{}` has no fixed shape", input.name))).collect::<Result<_, _>>()?;
        for axis in 0..shapes[0].len() {
            let sizes: Vec<i64> = shapes.iter().map(|s| s.get(axis).map_or(0, |&d| i64::try_from(d).unwrap_or(i64::MAX))).collect();
            if sizes.iter().any(|&s| s != sizes[0]) && !out.iter().any(|s| s.sizes == sizes) {
                out.push(Symbol { input: input.name.clone(), axis, sizes });
            }
        }
    }
    Ok(out)
}

/// For each value name, the `(op type, param)` pairs that read it (nested blocks included).
fn readers(f: &Function) -> HashMap<String, Vec<(String, String)>> {
    let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for op in f.block.walk_ops() {
        for (param, args) in &op.inputs {
            for a in args {
                if let Argument::Name(n) = a {
                    out.entry(n.clone()).or_default().push((op.op_type.clone(), param.clone()));
                }
            }
        }
    }
    out
}

/// Every name the function defines, so new ops get names of their own.
fn all_names(f: &Function) -> HashSet<String> {
    let mut names: HashSet<String> = f.inputs.iter().map(|i| i.name.clone()).collect();
    for op in f.block.walk_ops() {
        names.insert(op.name.clone());
        names.extend(op.outputs.iter().map(|o| o.name.clone()));
    }
    names
}

/// The `Affine` of one symbol that gives `values` (one per sample) at every sample; several
/// symbols fitting is ambiguous over a range, and the first is taken for enumerated shapes.
fn fit(values: &[i64], symbols: &[Symbol], coverage: Coverage) -> Result<Entry, String> {
    if values.iter().all(|&v| v == values[0]) {
        return Ok(Entry::Fixed(values[0]));
    }
    let mut fits = Vec::new();
    for (sym, s) in symbols.iter().enumerate() {
        let Some(j) = (1..values.len()).find(|&j| s.sizes[j] != s.sizes[0]) else { continue };
        // Checked: a constant may hold any int64.
        let (Some(dv), Some(ds)) = (values[j].checked_sub(values[0]), s.sizes[j].checked_sub(s.sizes[0])) else { continue };
        let Some(a) = dv.checked_div(ds).filter(|_| dv.checked_rem(ds) == Some(0)) else { continue };
        let Some(b) = a.checked_mul(s.sizes[0]).and_then(|x| values[0].checked_sub(x)) else { continue };
        if values.iter().zip(&s.sizes).all(|(&v, &n)| a.checked_mul(n).and_then(|x| x.checked_add(b)) == Some(v)) {
            fits.push(Affine { sym, a, b });
        }
    }
    match (&fits[..], coverage) {
        ([], _) => Err(format!("{} is no a·s + b of an input dimension s", crate::torchscript::lower::ints_shown(values))),
        ([f], _) | ([f, ..], Coverage::Samples { .. }) => Ok(Entry::Sized(*f)),
        ([f, g, ..], Coverage::Range { .. }) => Err(format!(
            "{} fits both `{}` dim {} and `{}` dim {}; export with sizes that vary apart",
            crate::torchscript::lower::ints_shown(values),
            symbols[f.sym].input,
            symbols[f.sym].axis,
            symbols[g.sym].input,
            symbols[g.sym].axis
        )),
    }
}

/// Builds the ops of the merged function, and the shape ops that read each symbol.
struct Emitter<'a> {
    names: HashSet<String>,
    ops: Vec<Operation>,
    /// Symbol index → the int32 `[1]` value holding its size.
    symbol_vars: HashMap<usize, String>,
    /// Input name → its `shape` value.
    shape_vars: HashMap<String, String>,
    symbols: &'a [Symbol],
    inputs: &'a [NamedType],
    opset: crate::mil::Opset,
}

impl Emitter<'_> {
    /// A name not yet used, after `hint`.
    fn fresh(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut k = 0;
        while self.names.contains(&name) {
            k += 1;
            name = format!("{hint}_{k}");
        }
        self.names.insert(name.clone());
        name
    }

    /// Appends an op of `op_type` with `inputs` and one output of `ty`, named `name`.
    fn push(&mut self, op_type: &str, name: String, inputs: Vec<(&str, Vec<String>)>, ty: TensorType) -> String {
        self.ops.push(Operation {
            op_type: op_type.into(),
            name: name.clone(),
            inputs: inputs.into_iter().map(|(p, v)| (p.to_string(), v.into_iter().map(Argument::Name).collect())).collect(),
            outputs: vec![NamedType { name: name.clone(), ty: ValueType::Tensor(ty) }],
            attributes: BTreeMap::new(),
            blocks: Vec::new(),
            source: None,
        });
        name
    }

    /// A new const holding `t`.
    fn konst(&mut self, hint: &str, t: Tensor) -> String {
        let name = self.fresh(hint);
        self.ops.push(Operation {
            op_type: "const".into(),
            name: name.clone(),
            inputs: Vec::new(),
            outputs: vec![NamedType { name: name.clone(), ty: ValueType::Tensor(t.tensor_type()) }],
            attributes: BTreeMap::from([("val".to_string(), t)]),
            blocks: Vec::new(),
            source: None,
        });
        name
    }

    /// The int32 `[1]` value holding symbol `sym`'s size, built the first time it is asked:
    /// `shape(input)` sliced at the symbol's axis.
    fn symbol(&mut self, sym: usize) -> String {
        if let Some(v) = self.symbol_vars.get(&sym) {
            return v.clone();
        }
        let Symbol { input, axis, .. } = &self.symbols[sym];
        let (input, axis) = (input.clone(), *axis);
        let shape = match self.shape_vars.get(&input) {
            Some(v) => v.clone(),
            None => {
                let rank = self.inputs.iter().find(|i| i.name == input).map_or(0, |i| i.ty.tensor().rank());
                let name = self.fresh(&format!("{input}_shape"));
                let v = self.push(shape_ops::SHAPE.name, name, vec![("x", vec![input.clone()])], TensorType::new(DType::I32, &[rank]));
                self.shape_vars.insert(input.clone(), v.clone());
                v
            }
        };
        let at = axis as i32;
        let begin = self.konst(&format!("{shape}_{axis}_begin"), Tensor::i32_vec(&[at]));
        let end = self.konst(&format!("{shape}_{axis}_end"), Tensor::i32_vec(&[at + 1]));
        let name = self.fresh(&format!("{input}_dim{axis}"));
        let v = self.push(shape_ops::SLICE_BY_INDEX.name, name, vec![("x", vec![shape]), ("begin", vec![begin]), ("end", vec![end])], TensorType::new(DType::I32, &[1]));
        self.symbol_vars.insert(sym, v.clone());
        v
    }

    /// An int32 `[1]` value holding `f` at run time.
    fn affine(&mut self, f: Affine, hint: &str) -> Result<String, String> {
        let mut v = self.symbol(f.sym);
        if f.a != 1 {
            let a = self.konst(&format!("{hint}_scale"), Tensor::i32_vec(&[i32_of(f.a)?]));
            let name = self.fresh(&format!("{hint}_scaled"));
            v = self.push(ops::elementwise::MUL.name, name, vec![("x", vec![v]), ("y", vec![a])], TensorType::new(DType::I32, &[1]));
        }
        if f.b != 0 {
            let b = self.konst(&format!("{hint}_offset"), Tensor::i32_vec(&[i32_of(f.b)?]));
            let name = self.fresh(&format!("{hint}_shifted"));
            v = self.push(ops::elementwise::ADD.name, name, vec![("x", vec![v]), ("y", vec![b])], TensorType::new(DType::I32, &[1]));
        }
        Ok(v)
    }

    /// An int32 vector of `entries` named `name`: runs of fixed entries as consts, sized ones
    /// computed, joined by `concat`.
    fn vector(&mut self, entries: &[Entry], name: String) -> Result<String, String> {
        let mut pieces = Vec::new();
        let mut run: Vec<i32> = Vec::new();
        for (k, e) in entries.iter().enumerate() {
            match e {
                Entry::Fixed(v) => run.push(i32_of(*v)?),
                Entry::Sized(f) => {
                    if !run.is_empty() {
                        pieces.push(self.konst(&format!("{name}_part"), Tensor::i32_vec(&std::mem::take(&mut run))));
                    }
                    pieces.push(self.affine(*f, &format!("{name}_{k}"))?);
                }
            }
        }
        if !run.is_empty() {
            pieces.push(self.konst(&format!("{name}_part"), Tensor::i32_vec(&run)));
        }
        let ty = TensorType::new(DType::I32, &[entries.len()]);
        if let [one] = &pieces[..] {
            return Ok(self.push(shape_ops::IDENTITY.name, name, vec![("x", vec![one.clone()])], ty));
        }
        let axis = self.konst(&format!("{name}_axis"), Tensor::i32_scalar(0));
        let interleave = self.konst(&format!("{name}_interleave"), Tensor::bool_scalar(false));
        Ok(self.push(shape_ops::CONCAT.name, name, vec![("values", pieces), ("axis", vec![axis]), ("interleave", vec![interleave])], ty))
    }

    /// Replaces the int const `op` whose value (one shape at every sample) differs: a reshape
    /// target differing in one entry takes `-1` there; otherwise, when `computed`, each entry
    /// is fitted and the vector computed. Its readers must accept a computed value.
    fn computed_ints(&mut self, op: &Operation, out: &NamedType, vals: &[&Tensor], readers: &HashMap<String, Vec<(String, String)>>, coverage: Coverage, computed: bool) -> Result<(), String> {
        let columns: Vec<Vec<i64>> = vals
            .iter()
            .map(|v| {
                sizes_in(v).ok_or_else(|| {
                    let shown: Vec<String> = v.to_f32_vec().unwrap_or_default().iter().take(crate::torchscript::lower::MAX_ITEMS_SHOWN).map(|x| x.to_string()).collect();
                    format!("its {} values [{}] are not sizes (whole numbers the dtype holds exactly)", v.dtype(), shown.join(", "))
                })
            })
            .collect::<Result<_, _>>()?;
        let read_by = readers.get(&out.name).map(Vec::as_slice).unwrap_or_default();
        let shape = vals[0].shape().to_vec();
        let n = columns[0].len();
        let differing: Vec<usize> = (0..n).filter(|&k| columns.iter().any(|c| c[k] != columns[0][k])).collect();
        let only_reshape = read_by.iter().all(|(t, p)| t == "reshape" && p == "shape");
        if let ([at], true, 1) = (&differing[..], only_reshape, shape.len()) {
            if !columns[0].iter().enumerate().any(|(k, &v)| v == -1 && k != *at) {
                let mut v = columns[0].clone();
                v[*at] = -1;
                let t = Tensor::from_ints(vals[0].dtype(), &shape, &v).ok_or("a -1 does not fit its dtype")?;
                self.ops.push(Operation { attributes: BTreeMap::from([("val".to_string(), t)]), ..op.clone() });
                return Ok(());
            }
        }
        if !computed {
            return Err("its values follow the input's shape".into());
        }
        let float = vals[0].dtype().is_float();
        if !(vals[0].dtype() == DType::I32 || float) || shape.len() > 1 {
            return Err(format!("a {} tensor of shape {:?} computed from sizes is not lowered to shape ops", vals[0].dtype(), shape));
        }
        self.computable(&out.name, read_by)?;
        let entries: Vec<Entry> = (0..n).map(|k| fit(&columns.iter().map(|c| c[k]).collect::<Vec<_>>(), self.symbols, coverage)).collect::<Result<_, _>>()?;
        // A float (a size used as a value: `x.sum(1) / x.shape[1]`) is the int size cast.
        let int_name = if float { self.fresh(&format!("{}_int", out.name)) } else { out.name.clone() };
        match entries[..] {
            [Entry::Sized(f)] if shape.is_empty() => {
                let v = self.affine(f, &out.name)?;
                let axes = self.konst(&format!("{}_axes", out.name), Tensor::i32_vec(&[0]));
                self.push(shape_ops::SQUEEZE.name, int_name.clone(), vec![("x", vec![v]), ("axes", vec![axes])], TensorType::scalar(DType::I32));
            }
            _ => {
                self.vector(&entries, int_name.clone())?;
            }
        }
        if float {
            let dtype = self.konst(&format!("{}_dtype", out.name), Tensor::string(vals[0].dtype().name()));
            self.push(ops::elementwise::CAST.name, out.name.clone(), vec![("x", vec![int_name]), ("dtype", vec![dtype])], out.ty.tensor().clone());
        }
        Ok(())
    }

    /// Replaces the const `out` whose shape differs between samples by the largest sample's
    /// value sliced to sizes computed from the symbols; every sample's value must be the
    /// leading corner of the largest.
    fn sized_const(&mut self, out: &NamedType, vals: &[&Tensor], readers: &HashMap<String, Vec<(String, String)>>, coverage: Coverage) -> Result<(), String> {
        if coverage == (Coverage::Range { bounded: false }) {
            return Err("a constant sized by a dimension without an upper bound: export it with torch.export.Dim(max=…)".into());
        }
        let rank = vals[0].shape().len();
        if vals.iter().any(|v| v.shape().len() != rank || v.dtype() != vals[0].dtype()) {
            return Err("its rank or dtype differs".into());
        }
        let big = (0..vals.len()).max_by_key(|&k| vals[k].len()).unwrap_or(0);
        if vals.iter().any(|v| v.shape().iter().zip(vals[big].shape()).any(|(a, b)| a > b)) {
            return Err("no sample holds all the others".into());
        }
        for v in vals {
            if !is_corner(v, vals[big]) {
                return Err("a smaller sample's value is not the leading corner of the largest".into());
            }
        }
        let read_by = readers.get(&out.name).map(Vec::as_slice).unwrap_or_default();
        self.computable(&out.name, read_by)?;
        let entries: Vec<Entry> = (0..rank).map(|d| fit(&vals.iter().map(|v| v.shape()[d] as i64).collect::<Vec<_>>(), self.symbols, coverage)).collect::<Result<_, _>>()?;
        let full = self.konst(&format!("{}_full", out.name), vals[big].clone());
        let begin = self.konst(&format!("{}_begin", out.name), Tensor::i32_vec(&vec![0; rank]));
        let end_name = self.fresh(&format!("{}_end", out.name));
        let end = self.vector(&entries, end_name)?;
        // Masks keep the dims that do not vary whole, so that type inference (ours and
        // coremltools') knows them although `end` is computed.
        let begin_mask = self.konst(&format!("{}_begin_mask", out.name), Tensor::from_bools(&[rank], &vec![true; rank]));
        let fixed: Vec<bool> = entries.iter().map(|e| matches!(e, Entry::Fixed(_))).collect();
        let end_mask = self.konst(&format!("{}_end_mask", out.name), Tensor::from_bools(&[rank], &fixed));
        let inputs = vec![("x", vec![full]), ("begin", vec![begin]), ("end", vec![end]), ("begin_mask", vec![begin_mask]), ("end_mask", vec![end_mask])];
        self.push(shape_ops::SLICE_BY_INDEX.name, out.name.clone(), inputs, out.ty.tensor().clone());
        Ok(())
    }

    /// An error when a reader of `name` needs a const there (Core ML rejects a computed value).
    fn computable(&self, name: &str, read_by: &[(String, String)]) -> Result<(), String> {
        for (op_type, param) in read_by {
            let konst = ops::lookup(op_type, self.opset).and_then(|d| d.params.iter().find(|p| p.name == param)).is_some_and(|p| p.konst);
            if konst {
                return Err(format!("`{name}` is read as {op_type}'s `{param}`, which must be a constant"));
            }
        }
        Ok(())
    }
}

/// `x` as an int32 entry of a MIL shape vector, or an error when it does not fit.
fn i32_of(x: i64) -> Result<i32, String> {
    i32::try_from(x).map_err(|_| format!("{x} does not fit in int32"))
}

/// Largest integer an fp16 holds exactly (2^11): a float constant above it is no size.
const F16_EXACT_INTS: f32 = 2048.0;

/// The values of `t` when they are sizes: an int tensor's, or a float tensor's when every one
/// is a whole number its dtype holds exactly.
fn sizes_in(t: &Tensor) -> Option<Vec<i64>> {
    if let Some(v) = t.to_i64_vec() {
        return Some(v);
    }
    let limit = if t.dtype() == DType::F16 { F16_EXACT_INTS } else { (1u32 << 24) as f32 };
    let v = t.to_f32_vec()?;
    v.iter().all(|x| x.fract() == 0.0 && x.abs() <= limit).then(|| v.iter().map(|&x| x as i64).collect())
}

/// Whether `small` equals the leading corner of `big` (same rank and dtype, each dim at most
/// big's), compared byte for byte.
fn is_corner(small: &Tensor, big: &Tensor) -> bool {
    let Some(bits) = small.dtype().bits().filter(|b| b % 8 == 0) else { return false };
    let el = bits / 8;
    let (s, b) = (small.bytes(), big.bytes());
    let (ss, bs) = (small.shape(), big.shape());
    if small.is_empty() {
        return true;
    }
    if ss.is_empty() {
        return ss == bs && s[..] == b[..];
    }
    // Rows along the last axis are contiguous: compare row by row.
    let row = ss[ss.len() - 1] * el;
    let rows = small.len() / ss[ss.len() - 1];
    let mut idx = vec![0usize; ss.len() - 1];
    for r in 0..rows {
        let mut off = 0usize;
        for (d, &i) in idx.iter().enumerate() {
            off = off * bs[d] + i;
        }
        let at = off * bs[bs.len() - 1] * el;
        if s[r * row..(r + 1) * row] != b[at..at + row] {
            return false;
        }
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < ss[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(sizes: &[i64]) -> Symbol {
        Symbol { input: "x".into(), axis: 1, sizes: sizes.to_vec() }
    }

    #[test]
    fn entries_fit_one_symbol_at_every_sample_or_not_at_all() {
        let seq = [sym(&[8, 68, 69, 128])];
        let range = Coverage::Range { bounded: true };
        assert_eq!(fit(&[2, 2, 2, 2], &seq, range), Ok(Entry::Fixed(2)));
        // 2·s + 1 (a head split's doubled length plus a token).
        assert_eq!(fit(&[17, 137, 139, 257], &seq, range), Ok(Entry::Sized(Affine { sym: 0, a: 2, b: 1 })));
        // s // 2: the odd sample breaks it.
        assert!(fit(&[4, 34, 34, 64], &seq, range).is_err());
        // Two symbols moving together: ambiguous over a range, either will do at the samples.
        let both = [sym(&[1, 2, 4]), sym(&[2, 4, 8])];
        assert!(fit(&[2, 4, 8], &both, range).is_err());
        assert_eq!(fit(&[2, 4, 8], &both, Coverage::Samples { computed: true }), Ok(Entry::Sized(Affine { sym: 0, a: 2, b: 0 })));
    }

    #[test]
    fn a_corner_is_the_leading_block_of_the_larger_tensor() {
        let big = Tensor::from_i32(&[3, 4], &(0..12).collect::<Vec<_>>());
        assert!(is_corner(&Tensor::from_i32(&[2, 3], &[0, 1, 2, 4, 5, 6]), &big));
        assert!(!is_corner(&Tensor::from_i32(&[2, 3], &[0, 1, 2, 3, 4, 5]), &big));
        assert!(is_corner(&big, &big));
        assert!(is_corner(&Tensor::from_i32(&[0, 4], &[]), &big));
    }
}
