//! Builds MIL functions op by op, typing each op through its `OpDef` as it is added, and
//! re-checks whole functions read from packages. Loaders (`torchscript::lower`, `hf`) and
//! tests build with [`Builder`]; `package::read` calls [`check_function`].

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::ops::{self, Arg, OpArgs, OpDef, TypeError};
use crate::files::shown;
use std::sync::Arc;

use super::{Argument, Block, Function, NamedType, Opset, Operation, Source, Tensor, TensorType, ValueType};

/// Names MIL reserves; values may not use them (coreml-format.md §7). coremltools appends
/// `_workaround`; we append a counter like for any other clash.
pub const RESERVED_NAMES: &[&str] = &[
    "any", "bool", "program", "func", "tensor", "list", "dict", "tuple", "true", "false", "string", "bf16", "fp16",
    "fp32", "fp64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "state",
];

/// Most output types a type-mismatch message lists per side.
const MAX_TYPES_SHOWN: usize = 8;

/// A value in a function being built: its SSA name. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub String);

/// Why a function does not type-check: the op (by name) and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CheckError {
    #[error("op `{op}`: {source}")]
    Type { op: String, source: TypeError },
    #[error("op `{op}` uses `{value}`, which is not defined before it")]
    Undefined { op: String, value: String },
    #[error("value `{0}` is defined twice")]
    Redefined(String),
    #[error("value name `{0}` is not a valid MIL identifier")]
    BadName(String),
    #[error("op `{op}` declares {declared} but its inputs give {inferred}")]
    Mismatch { op: String, declared: String, inferred: String },
    #[error("block output `{0}` is not defined")]
    UndefinedOutput(String),
    #[error("value `{value}`: {problem}")]
    TooLarge { value: String, problem: String },
}

/// Types and const values of the names defined so far in a function, which names are
/// states (typed by the tensor they wrap) and which are compressed weights (`constexpr_*`
/// outputs, constants whose values stay compressed: `convert --compress` writes them).
#[derive(Default)]
struct Env {
    types: HashMap<String, TensorType>,
    consts: HashMap<String, Tensor>,
    states: HashSet<String>,
    constexprs: HashSet<String>,
}

impl Env {
    /// Records a value read from a package: its name must be a fresh MIL identifier and its
    /// declared type within the size ceilings (`TensorType::size_problem`).
    fn define(&mut self, name: &str, ty: TensorType) -> Result<(), CheckError> {
        if !is_identifier(name) {
            return Err(CheckError::BadName(shown(name)));
        }
        if let Some(problem) = ty.size_problem() {
            return Err(CheckError::TooLarge { value: shown(name), problem });
        }
        match self.types.insert(name.to_string(), ty) {
            Some(_) => Err(CheckError::Redefined(shown(name))),
            None => Ok(()),
        }
    }

    /// The typed arguments of `op`, as its `infer` sees them.
    fn args<'a>(&'a self, op: &'a Operation, opset: Opset) -> Result<OpArgs<'a>, CheckError> {
        let mut args = Vec::with_capacity(op.inputs.len());
        for (param, bound) in &op.inputs {
            let mut list = Vec::with_capacity(bound.len());
            for b in bound {
                list.push(match b {
                    Argument::Name(n) => {
                        let ty = self.types.get(n).ok_or_else(|| CheckError::Undefined { op: shown(&op.name), value: shown(n) })?;
                        Arg { ty: ty.clone(), value: self.consts.get(n), state: self.states.contains(n), constexpr: self.constexprs.contains(n) }
                    }
                    Argument::Value(t) => Arg { ty: t.tensor_type(), value: Some(t), state: false, constexpr: false },
                });
            }
            args.push((param.as_str(), list));
        }
        Ok(OpArgs { op: &op.op_type, opset, args, attributes: &op.attributes })
    }
}

/// True for names MIL accepts: `[A-Za-z_][A-Za-z0-9_@]*`, not reserved.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
        && !RESERVED_NAMES.contains(&name)
}

/// True when two types agree wherever both know a dimension (coremltools may leave dims unknown).
fn compatible(declared: &TensorType, inferred: &TensorType) -> bool {
    declared.dtype == inferred.dtype
        && declared.rank() == inferred.rank()
        && declared.shape.iter().zip(&inferred.shape).all(|(a, b)| {
            !matches!((a, b), (super::Dim::Fixed(x), super::Dim::Fixed(y)) if x != y)
        })
}

/// Re-checks a function read from a package: SSA names, definitions before use, and for every op
/// in our table, its signature and that the declared output types match what `infer` gives.
/// Ops we do not know are accepted with their declared types. Called by `package::read`.
pub fn check_function(f: &Function) -> Result<(), CheckError> {
    let mut env = Env::default();
    for i in &f.inputs {
        env.define(&i.name, i.ty.tensor().clone())?;
        if matches!(i.ty, ValueType::State(_)) {
            env.states.insert(i.name.clone());
        }
    }
    check_block(&mut env, &f.block, f.opset)
}

fn check_block(env: &mut Env, block: &Block, opset: Opset) -> Result<(), CheckError> {
    for i in &block.inputs {
        env.define(&i.name, i.ty.tensor().clone())?;
    }
    for op in &block.operations {
        if let Some(def) = ops::lookup(&op.op_type, opset) {
            let inferred = {
                let args = env.args(op, opset)?;
                ops::check(def, &args).map_err(|source| CheckError::Type { op: shown(&op.name), source })?
            };
            let declared: Vec<&TensorType> = op.outputs.iter().map(|o| o.ty.tensor()).collect();
            if declared.len() != inferred.len() || declared.iter().zip(&inferred).any(|(d, i)| !compatible(d, i)) {
                // A package op may declare any number of outputs; the message names a few.
                let show = |v: Vec<String>| {
                    let more = v.len().saturating_sub(MAX_TYPES_SHOWN);
                    let mut s = v.into_iter().take(MAX_TYPES_SHOWN).collect::<Vec<_>>().join(", ");
                    if more > 0 {
                        s += &format!(", … ({more} more)");
                    }
                    s
                };
                return Err(CheckError::Mismatch {
                    op: shown(&op.name),
                    declared: show(declared.iter().map(|t| t.to_string()).collect()),
                    inferred: show(inferred.iter().map(|t| t.to_string()).collect()),
                });
            }
        } else {
            for (_, bound) in &op.inputs {
                for b in bound {
                    if let Argument::Name(n) = b {
                        if !env.types.contains_key(n) {
                            return Err(CheckError::Undefined { op: shown(&op.name), value: shown(n) });
                        }
                    }
                }
            }
        }
        for b in &op.blocks {
            check_block(env, b, opset)?;
        }
        for o in &op.outputs {
            env.define(&o.name, o.ty.tensor().clone())?;
        }
        if let (Some(val), [out]) = (op.const_val(), op.outputs.as_slice()) {
            env.consts.insert(out.name.clone(), val.clone());
        }
        if let (true, [out]) = (op.op_type.starts_with("constexpr_"), op.outputs.as_slice()) {
            env.constexprs.insert(out.name.clone());
        }
    }
    match block.outputs.iter().find(|o| !env.types.contains_key(*o)) {
        Some(o) => Err(CheckError::UndefinedOutput(shown(o))),
        None => Ok(()),
    }
}

/// Builds one MIL function. Every op is typed by its `OpDef` when added, so a Builder never holds
/// an ill-typed program. Names are made unique and valid (`name`, `name_1`, …). Every op it
/// creates (consts and folded results included) records the current [`Source`], if one is set.
pub struct Builder {
    opset: Opset,
    inputs: Vec<NamedType>,
    ops: Vec<Operation>,
    env: Env,
    used: HashSet<String>,
    /// Per sanitized hint, the last suffix `unique` handed out: a hint used k times (a traced
    /// `x = f(x)` repeated) then costs one probe, not k, so naming stays linear in the ops.
    suffixes: HashMap<String, usize>,
    fold: bool,
    source: Option<Arc<Source>>,
}

/// Largest output (in elements) that constant folding materializes; bigger results stay ops so a
/// conversion never allocates large temporaries for them.
pub const FOLD_MAX_ELEMENTS: usize = 1 << 22;

impl Builder {
    /// An empty function for `opset`.
    pub fn new(opset: Opset) -> Builder {
        Builder { opset, inputs: Vec::new(), ops: Vec::new(), env: Env::default(), used: HashSet::new(), suffixes: HashMap::new(), fold: false, source: None }
    }

    /// Sets the source location that ops created from now on record (`None`: no location).
    /// `torchscript::graph` sets it per TorchScript statement; passes set it to the source of the
    /// op they are rewriting (`passes::rewrite::Rewriter::at`).
    pub fn set_source(&mut self, source: Option<Arc<Source>>) {
        self.source = source;
    }

    /// Starts a rewrite of `f` (passes): a folding builder holding `f`'s inputs and no ops, with
    /// every name `f` uses reserved so new values never collide with ops copied over by
    /// [`Builder::push`].
    pub fn rewriting(f: &Function) -> Builder {
        let mut b = Builder::new(f.opset);
        b.fold = true;
        // Sized for the copy up front: growing tables rehash and reallocate many times over.
        let values = f.inputs.len() + 2 * f.block.operations.len();
        b.used.reserve(values);
        b.env.types.reserve(values);
        b.ops.reserve(f.block.operations.len());
        for i in &f.inputs {
            b.used.insert(i.name.clone());
            b.env.types.insert(i.name.clone(), i.ty.tensor().clone());
            if matches!(i.ty, ValueType::State(_)) {
                b.env.states.insert(i.name.clone());
            }
            b.inputs.push(i.clone());
        }
        for op in f.block.walk_ops() {
            b.used.insert(op.name.clone());
            b.used.extend(op.outputs.iter().map(|o| o.name.clone()));
        }
        b
    }

    /// Appends `op` as it is (a pass keeping an op): its declared output types are taken as given,
    /// a `const`'s value is recorded for folding, and its own source is kept.
    pub fn push(&mut self, op: Operation) {
        for o in &op.outputs {
            self.used.insert(o.name.clone());
            self.env.types.insert(o.name.clone(), o.ty.tensor().clone());
        }
        if let (Some(v), Some(o)) = (op.const_val(), op.outputs.first()) {
            self.env.consts.insert(o.name.clone(), v.clone());
        }
        self.used.insert(op.name.clone());
        self.ops.push(op);
    }

    /// Turns on constant folding: an op whose arguments are all consts is evaluated with its
    /// kernel when built and becomes a `const` (outputs up to [`FOLD_MAX_ELEMENTS`]). Loaders use
    /// it so traced shape and mask arithmetic resolves at conversion time.
    pub fn fold_constants(&mut self, on: bool) {
        self.fold = on;
    }

    /// The op set ops are typed against.
    pub fn opset(&self) -> Opset {
        self.opset
    }

    /// A valid, unused value name from `hint`: `hint` itself if free, else `hint_N` for the
    /// smallest N above every suffix this hint was given before.
    fn unique(&mut self, hint: &str) -> String {
        let mut base: String = hint.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        if !base.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            base.insert_str(0, "var_");
        }
        if !self.used.contains(&base) && !RESERVED_NAMES.contains(&base.as_str()) {
            self.used.insert(base.clone());
            return base;
        }
        let mut n = self.suffixes.get(&base).copied().unwrap_or(0);
        let name = loop {
            n += 1;
            let name = format!("{base}_{n}");
            if !self.used.contains(&name) {
                break name;
            }
        };
        self.used.insert(name.clone());
        self.suffixes.insert(base, n);
        name
    }

    /// Adds a function input (a model input). The name is kept if valid and free.
    pub fn input(&mut self, name: &str, ty: TensorType) -> Var {
        let name = self.unique(name);
        self.env.types.insert(name.clone(), ty.clone());
        self.inputs.push(NamedType { name: name.clone(), ty: ValueType::Tensor(ty) });
        Var(name)
    }

    /// Adds an iOS18 state input (Core ML `StateType`; coremltools allows only fp16) wrapping
    /// `ty`; [`Builder::finish`] lists states after the tensor inputs, as coremltools orders
    /// function inputs. Only state params
    /// (`read_state`, `write_state`) accept it. The name is kept if valid and free.
    pub fn state_input(&mut self, name: &str, ty: TensorType) -> Var {
        let name = self.unique(name);
        self.env.types.insert(name.clone(), ty.clone());
        self.env.states.insert(name.clone());
        self.inputs.push(NamedType { name: name.clone(), ty: ValueType::State(ty) });
        Var(name)
    }

    /// Adds a `const` op holding `value`; its output is named after `hint`.
    pub fn konst(&mut self, hint: &str, value: Tensor) -> Var {
        let name = self.unique(hint);
        let ty = value.tensor_type();
        self.env.types.insert(name.clone(), ty.clone());
        self.env.consts.insert(name.clone(), value.clone());
        self.ops.push(Operation {
            op_type: "const".to_string(),
            name: name.clone(),
            inputs: Vec::new(),
            outputs: vec![NamedType { name: name.clone(), ty: ValueType::Tensor(ty) }],
            attributes: BTreeMap::from([("val".to_string(), value)]),
            blocks: Vec::new(),
            source: self.source.clone(),
        });
        Var(name)
    }

    /// Starts an op of kind `def` named after `hint`; bind arguments, then `build`.
    pub fn op<'b>(&'b mut self, def: &'static OpDef, hint: &str) -> OpBuilder<'b> {
        let name = self.unique(hint);
        OpBuilder { b: self, def, name, inputs: Vec::new() }
    }

    /// The type of a value built so far.
    pub fn ty(&self, v: &Var) -> Option<&TensorType> {
        self.env.types.get(&v.0)
    }

    /// The const value behind `v`, if it is a const.
    pub fn value(&self, v: &Var) -> Option<&Tensor> {
        self.env.consts.get(&v.0)
    }

    /// Evaluates `op` when folding is on and all its arguments are consts; the outputs become
    /// `const` ops named like the op would have named them.
    fn try_fold(&mut self, def: &'static OpDef, op: &Operation, inferred: &[TensorType]) -> Result<Option<Vec<Var>>, TypeError> {
        let small = inferred.iter().all(|t| t.num_elements().is_some_and(|n| n <= FOLD_MAX_ELEMENTS));
        let all_const = op.inputs.iter().flat_map(|(_, b)| b).all(|a| match a {
            Argument::Name(n) => self.env.consts.contains_key(n),
            Argument::Value(_) => true,
        });
        if !self.fold || !small || !all_const {
            return Ok(None);
        }
        let mut arrays: Vec<(&str, Vec<ops::Array>)> = Vec::with_capacity(op.inputs.len());
        for (param, bound) in &op.inputs {
            let mut list = Vec::with_capacity(bound.len());
            for a in bound {
                let t = match a {
                    Argument::Name(n) => match self.env.consts.get(n) {
                        Some(t) => t,
                        None => return Ok(None),
                    },
                    Argument::Value(t) => t,
                };
                match ops::Array::from_tensor(t) {
                    Ok(arr) => list.push(arr),
                    Err(_) => return Ok(None),
                }
            }
            arrays.push((param.as_str(), list));
        }
        let args = ops::EvalArgs {
            op: def.name,
            opset: self.opset,
            args: arrays.iter().map(|(p, l)| (*p, l.iter().collect())).collect(),
            attributes: &op.attributes,
        };
        let Ok(outs) = (def.eval)(&args) else { return Ok(None) };
        if outs.len() != inferred.len() {
            return Ok(None);
        }
        let single = outs.len() == 1;
        Ok(Some(
            outs.iter()
                .enumerate()
                .map(|(i, a)| {
                    let hint = if single { op.name.clone() } else { format!("{}_{i}", op.name) };
                    self.used.remove(&op.name);
                    self.konst(&hint, a.to_tensor())
                })
                .collect(),
        ))
    }

    /// Finishes the function; `outputs` become the block outputs (model outputs), in order.
    /// Inputs keep their order, except that states follow the tensor inputs.
    pub fn finish(mut self, outputs: &[Var]) -> Function {
        self.inputs.sort_by_key(|i| matches!(i.ty, ValueType::State(_)));
        Function {
            inputs: self.inputs,
            opset: self.opset,
            block: Block { inputs: Vec::new(), operations: self.ops, outputs: outputs.iter().map(|v| v.0.clone()).collect() },
        }
    }
}

/// One op under construction; created by [`Builder::op`].
pub struct OpBuilder<'b> {
    b: &'b mut Builder,
    def: &'static OpDef,
    name: String,
    inputs: Vec<(String, Vec<Argument>)>,
}

impl OpBuilder<'_> {
    /// Binds parameter `param` to value `v`.
    pub fn arg(mut self, param: &str, v: &Var) -> Self {
        self.inputs.push((param.to_string(), vec![Argument::Name(v.0.clone())]));
        self
    }

    /// Binds a variadic parameter (`concat.values`) to several values.
    pub fn args(mut self, param: &str, vs: &[Var]) -> Self {
        self.inputs.push((param.to_string(), vs.iter().map(|v| Argument::Name(v.0.clone())).collect()));
        self
    }

    /// Binds `param` to a literal, emitted as its own `const` op named `<op>_<param>`
    /// (what coremltools writes for every literal parameter).
    pub fn konst(self, param: &str, value: Tensor) -> Self {
        let hint = format!("{}_{param}", self.name);
        let v = self.b.konst(&hint, value);
        self.arg(param, &v)
    }

    /// Types the op through its `OpDef`, appends it, and returns its outputs. Single-output ops
    /// name their output like the op; multi-output ops use `<op>_0`, `<op>_1`, ….
    pub fn build(self) -> Result<Vec<Var>, TypeError> {
        let OpBuilder { b, def, name, mut inputs } = self;
        ops::sort_params(def.name, b.opset, &mut inputs);
        let mut op = Operation {
            op_type: def.name.to_string(),
            name: name.clone(),
            inputs,
            outputs: Vec::new(),
            attributes: BTreeMap::new(),
            blocks: Vec::new(),
            source: b.source.clone(),
        };
        let inferred = {
            let args = b.env.args(&op, b.opset).map_err(|e| TypeError::Invalid { op: def.name.to_string(), message: e.to_string() })?;
            ops::check(def, &args)?
        };
        if let Some(outs) = b.try_fold(def, &op, &inferred)? {
            return Ok(outs);
        }
        let single = inferred.len() == 1;
        let mut outs = Vec::with_capacity(inferred.len());
        for (i, ty) in inferred.into_iter().enumerate() {
            let out = if single { name.clone() } else { b.unique(&format!("{name}_{i}")) };
            b.env.types.insert(out.clone(), ty.clone());
            op.outputs.push(NamedType { name: out.clone(), ty: ValueType::Tensor(ty) });
            outs.push(Var(out));
        }
        b.ops.push(op);
        Ok(outs)
    }

    /// `build` for single-output ops.
    pub fn build1(self) -> Result<Var, TypeError> {
        let op = self.def.name;
        let mut outs = self.build()?;
        match outs.len() {
            1 => Ok(outs.remove(0)),
            n => Err(TypeError::Invalid { op: op.to_string(), message: format!("has {n} outputs, expected 1") }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::ops::{elementwise, linear, shape};
    use crate::mil::DType;

    #[test]
    fn builder_types_ops_and_rejects_bad_shapes() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F32, &[2, 4]));
        let w = Tensor::from_f32(&[3, 4], &[0.5; 12]);
        let y = b.op(&linear::LINEAR, "fc").arg("x", &x).konst("weight", w).build1().unwrap();
        assert_eq!(b.ty(&y), Some(&TensorType::new(DType::F32, &[2, 3])));
        let bad = b.op(&linear::LINEAR, "fc2").arg("x", &y).konst("weight", Tensor::from_f32(&[3, 4], &[0.0; 12])).build1();
        assert!(matches!(bad, Err(TypeError::Invalid { .. })), "{bad:?}");
        let s = b.op(&shape::SPLIT, "s").arg("x", &x).konst("num_splits", Tensor::i32_scalar(2)).konst("axis", Tensor::i32_scalar(1));
        let parts = s.build().unwrap();
        assert_eq!(parts.len(), 2);
        let f = b.finish(&[y]);
        check_function(&f).unwrap();
    }

    #[test]
    fn outputs_beyond_the_size_ceilings_are_type_errors() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F32, &[1]));
        let huge = [1 << 20, 1 << 20, 1 << 20, 1 << 20];
        let r = b.op(&shape::TILE, "t").arg("x", &x).konst("reps", Tensor::i32_vec(&[i32::MAX])).build1().map(|_| ());
        assert_eq!(r, Ok(()), "2^31 − 1 elements is within the ceilings");
        let shape_of = |dims: &[i32]| Tensor::i32_vec(dims);
        let e = b.op(&shape::FILL, "f").konst("shape", shape_of(&huge)).build1().unwrap_err().to_string();
        assert!(e.contains("fill: output") && e.contains("elements"), "{e}");
        let e = b.op(&shape::FILL, "f").konst("shape", shape_of(&[1; 1000])).build1().unwrap_err().to_string();
        assert!(e.contains("1000 dims"), "{e}");
        let t = b.op(&shape::TILE, "t").arg("x", &x).konst("reps", Tensor::i32_vec(&[i32::MAX])).build1().unwrap();
        let e = b.op(&shape::TILE, "t2").arg("x", &t).konst("reps", Tensor::i32_vec(&[i32::MAX])).build1().unwrap_err();
        assert!(e.to_string().contains("int32 limit"), "{e}");
        let e = b.op(&shape::SPLIT, "s").arg("x", &x).konst("num_splits", Tensor::i32_scalar(i32::MAX)).konst("axis", Tensor::i32_scalar(0));
        assert!(e.build().unwrap_err().to_string().contains("more than the 65536"));
    }

    #[test]
    fn declared_types_beyond_the_ceilings_fail_the_package_check() {
        let mut b = Builder::new(Opset::Ios15);
        let x = b.input("x", TensorType::new(DType::F32, &[2]));
        let y = b.op(&elementwise::RELU, "r").arg("x", &x).build1().unwrap();
        let mut f = b.finish(&[y]);
        f.inputs[0].ty = ValueType::Tensor(TensorType::new(DType::F32, &[65536, 65536, 65536, 65536]));
        assert!(matches!(check_function(&f), Err(CheckError::TooLarge { .. })));
    }

    #[test]
    fn names_are_made_unique_and_valid() {
        let mut b = Builder::new(Opset::Ios15);
        let a = b.input("fp16", TensorType::new(DType::F32, &[1]));
        let c = b.input("1.x", TensorType::new(DType::F32, &[1]));
        let d = b.op(&elementwise::ADD, "fp16").arg("x", &a).arg("y", &c).build1().unwrap();
        assert_eq!((a.0.as_str(), c.0.as_str(), d.0.as_str()), ("fp16_1", "var_1_x", "fp16_2"));
    }

    #[test]
    fn check_function_catches_declared_type_mismatch() {
        let mut b = Builder::new(Opset::Ios15);
        let x = b.input("x", TensorType::new(DType::F32, &[2]));
        let y = b.op(&elementwise::RELU, "r").arg("x", &x).build1().unwrap();
        let mut f = b.finish(&[y]);
        f.block.operations[0].outputs[0].ty = ValueType::Tensor(TensorType::new(DType::F32, &[3]));
        assert!(matches!(check_function(&f), Err(CheckError::Mismatch { .. })));
    }
}
