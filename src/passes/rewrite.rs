//! The one way passes change a function: walk its ops in order and re-emit them into a
//! [`Builder`] — kept ops copied as they are, rewritten ops built anew (typed by their `OpDef`,
//! all-const results folded) — while a substitution map sends later uses of a replaced value to
//! its replacement. No index surgery; what becomes unused is left for `dead-code`. Used by every
//! pass except `dead-code`.

use foldhash::{HashMap, HashMapExt};

use crate::mil::builder::{Builder, Var};
use crate::mil::ops::{self, TypeError};
use crate::mil::{Argument, Function, Operation, Tensor, TensorType};

use super::PassError;

/// A function being rewritten.
pub struct Rewriter {
    /// Where new and kept ops go.
    pub b: Builder,
    /// Old value name → the value that now stands for it.
    subst: HashMap<String, String>,
    outputs: Vec<String>,
}

impl Rewriter {
    /// Starts rewriting `f`: returns the rewriter and `f`'s ops, taken out of `f` (never
    /// copied), which the pass walks in order and either keeps ([`Rewriter::keep`] moves them
    /// over) or replaces.
    pub fn new(f: &mut Function) -> (Rewriter, Vec<Operation>) {
        let r = Rewriter { b: Builder::rewriting(f), subst: HashMap::new(), outputs: f.block.outputs.clone() };
        (r, std::mem::take(&mut f.block.operations))
    }

    /// Ops built from now on record `op`'s source: call it before rewriting or keeping `op`, so
    /// what replaces an op points at the same model line as the op did.
    pub fn at(&mut self, op: &Operation) {
        self.b.set_source(op.source.clone());
    }

    /// The current value standing for the old name `name`.
    pub fn var(&self, name: &str) -> Var {
        Var(self.subst.get(name).cloned().unwrap_or_else(|| name.to_string()))
    }

    /// The type of the value standing for `name`.
    pub fn ty(&self, name: &str) -> Option<TensorType> {
        self.b.ty(&self.var(name)).cloned()
    }

    /// The const value standing for `name`, if it is a const.
    pub fn value(&self, name: &str) -> Option<&Tensor> {
        self.b.value(&self.var(name))
    }

    /// From now on, uses of the old name `old` read `new`.
    pub fn replace(&mut self, old: &str, new: &Var) {
        if old != new.0 {
            self.subst.insert(old.to_string(), new.0.clone());
        }
    }

    /// Moves `op` over unchanged except that its arguments follow the substitutions.
    pub fn keep(&mut self, mut op: Operation) {
        for (_, args) in &mut op.inputs {
            for a in args.iter_mut() {
                if let Argument::Name(n) = a {
                    if let Some(new) = self.subst.get(n) {
                        *n = new.clone();
                    }
                }
            }
        }
        self.b.push(op);
    }

    /// Builds `op_type` (looked up in the op table) named after `hint` with `args`: each a
    /// parameter and either a value or a literal const.
    pub fn op(&mut self, op_type: &str, hint: &str, args: &[(&str, Arg)]) -> Result<Vec<Var>, TypeError> {
        let def = ops::lookup(op_type, self.b.opset()).ok_or_else(|| TypeError::Invalid {
            op: op_type.to_string(),
            message: format!("not available in {}", self.b.opset()),
        })?;
        let mut ob = self.b.op(def, hint);
        for (param, arg) in args {
            ob = match arg {
                Arg::Var(v) => ob.arg(param, v),
                Arg::Vars(vs) => ob.args(param, vs),
                Arg::Const(t) => ob.konst(param, t.clone()),
            };
        }
        ob.build()
    }

    /// [`Rewriter::op`] for single-output ops.
    pub fn op1(&mut self, op_type: &str, hint: &str, args: &[(&str, Arg)]) -> Result<Var, TypeError> {
        let mut outs = self.op(op_type, hint, args)?;
        match outs.len() {
            1 => Ok(outs.remove(0)),
            n => Err(TypeError::Invalid { op: op_type.into(), message: format!("has {n} outputs, expected 1") }),
        }
    }

    /// Finishes: the function's outputs keep their names (a replaced output's new value is
    /// renamed to it), so the model's signature never changes.
    pub fn finish(self, f: &mut Function) {
        let Rewriter { b, subst, outputs } = self;
        let inputs = std::mem::take(&mut f.inputs);
        let new_outputs: Vec<Var> = outputs.iter().map(|o| Var(subst.get(o).cloned().unwrap_or_else(|| o.clone()))).collect();
        let mut g = b.finish(&new_outputs);
        for (old, new) in outputs.iter().zip(&new_outputs) {
            if *old != new.0 && !g.block.defines(old) && !g.inputs.iter().any(|i| i.name == new.0) {
                g.block.rename(&new.0, old);
            }
        }
        g.inputs = inputs;
        *f = g;
    }
}

/// One argument of a built op.
pub enum Arg {
    Var(Var),
    Vars(Vec<Var>),
    Const(Tensor),
}

impl From<&Var> for Arg {
    fn from(v: &Var) -> Arg {
        Arg::Var(v.clone())
    }
}

/// A [`PassError`] for `pass` from a type error while rewriting: a pass built an op that does not
/// type-check, which is a bug in the pass, reported instead of writing a broken package.
pub fn type_error(pass: &'static str) -> impl Fn(TypeError) -> PassError {
    move |e| PassError { pass, message: e.to_string() }
}
