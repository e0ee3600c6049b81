//! `ane-layout`: moves transformer activations from PyTorch's (B, S, C) to the ANE's
//! (B, C, 1, S) and every `linear` (and `matmul` against a constant weight) to a 1×1 `conv` on it
//! (Apple, "Deploying Transformers on the Apple Neural Engine": the channel axis must not be the
//! last, 64-byte-padded one). A rank-3 value (B, S, X) is stood for by its ANE form (B, X, 1, S);
//! the layout spreads through pointwise ops, `layer_norm` over the channel axis, `softmax`,
//! reductions, slices, concats, splits and activation-by-activation `matmul`s (per-head attention
//! after `split-heads`). Any other consumer reads the value converted back, and so do the
//! model outputs; `simplify` then cancels the conversions that meet, so the layout changes only
//! where the model starts and ends (or at an op the ANE layout cannot express).

use foldhash::{HashMap, HashMapExt};

use super::rewrite::{type_error, Arg, Rewriter};
use super::simplify::{self, arg_name, const_ints};
use super::{dead_code, Changes, Pass, PassError};
use crate::mil::builder::Var;
use crate::mil::ops::{self, elementwise, TypeError};
use crate::mil::{Argument, Function, Operation, Tensor, TensorType};

/// The pass, for `PIPELINE`.
pub const PASS: Pass = Pass { name: "ane-layout", ane: true, run };

const NAME: &str = "ane-layout";

/// Rank of the activations this pass moves: (B, S, X).
const SEQ_RANK: usize = 3;

/// Where axis `a` of a (B, S, X) value lands in its (B, X, 1, S) form.
fn ane_axis(a: i64) -> Option<usize> {
    let a = if a < 0 { a + SEQ_RANK as i64 } else { a };
    match a {
        0 => Some(0),
        1 => Some(3),
        2 => Some(1),
        _ => None,
    }
}

fn run(f: &mut Function) -> Result<Changes, PassError> {
    let before = f.block.operations.len();
    let transposes = |f: &Function| f.block.operations.iter().filter(|o| o.op_type == "transpose").count();
    let transposes_before = transposes(f);
    let err = type_error(NAME);
    let types = f.inputs.iter().chain(f.block.operations.iter().flat_map(|o| &o.outputs)).map(|v| (v.name.clone(), v.ty.tensor().clone())).collect();
    let (r, ops) = Rewriter::new(f);
    let mut l = Layout { r, types, ane: HashMap::new(), to_memo: HashMap::new(), linears: 0, moved: 0 };
    for owned in ops {
        let op = &owned;
        l.r.at(op);
        if op.op_type != "const" && l.convert(op).map_err(&err)? {
            continue;
        }
        // Not moved: it reads its inputs in PyTorch's layout.
        for name in op.inputs.iter().flat_map(|(_, a)| a).filter_map(|a| match a {
            Argument::Name(n) => Some(n.clone()),
            Argument::Value(_) => None,
        }) {
            l.materialize(&name).map_err(&err)?;
        }
        l.r.keep(owned);
    }
    l.r.b.set_source(None);
    for o in f.block.outputs.clone() {
        l.materialize(&o).map_err(&err)?;
    }
    let Layout { r, linears, moved, .. } = l;
    r.finish(f);
    let simplified = simplify::apply(f)?;
    dead_code::sweep(f);
    let transposes_after = transposes(f);
    Ok(Changes::new(before, f.block.operations.len()).with(
        [
            ("linears_rewritten", linears),
            ("ops_in_ane_layout", moved),
            ("transposes_before", transposes_before),
            ("transposes_after", transposes_after),
            ("transposes_removed", transposes_before.saturating_sub(transposes_after)),
        ]
        .into_iter()
        .chain(simplified.into_iter().filter(|(k, _)| *k == "chains_merged")),
    ))
}

struct Layout {
    r: Rewriter,
    /// Types of the function's values as they were (moved values are never emitted).
    types: HashMap<String, TensorType>,
    /// (B, S, X) value (old name) → its (B, X, 1, S) form.
    ane: HashMap<String, Var>,
    /// Values converted on demand for a moved op (masks, constants), by old name.
    to_memo: HashMap<String, Var>,
    linears: usize,
    moved: usize,
}

impl Layout {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.types.get(name).and_then(|t| t.fixed_shape())
    }

    /// From now on, uses of `name` by ops kept in PyTorch's layout read it converted back.
    fn materialize(&mut self, name: &str) -> Result<(), TypeError> {
        let Some(v) = self.ane.get(name).cloned() else { return Ok(()) };
        if self.r.var(name).0 != name {
            return Ok(()); // already converted back
        }
        let Some([b, x, _, s]) = self.r.b.ty(&v).and_then(|t| t.fixed_shape()).and_then(|s| <[usize; 4]>::try_from(s).ok()) else {
            return Ok(());
        };
        let flat = self.reshape(&v, &[b, x, s], &format!("{name}_bcs"))?;
        let back = self.r.op1("transpose", &format!("{name}_bsc"), &[("x", (&flat).into()), ("perm", Arg::Const(Tensor::i32_vec(&[0, 2, 1])))])?;
        self.r.replace(name, &back);
        Ok(())
    }

    /// The (B, X, 1, S) form of operand `name` (rank ≤ 3; lower ranks broadcast as (1, …)).
    /// Scalars are returned as they are.
    fn to_ane(&mut self, name: &str) -> Result<Option<Var>, TypeError> {
        if let Some(v) = self.ane.get(name).or_else(|| self.to_memo.get(name)) {
            return Ok(Some(v.clone()));
        }
        let Some(shape) = self.shape(name) else { return Ok(None) };
        if shape.is_empty() || shape.iter().product::<usize>() == 1 && shape.len() <= 1 {
            return Ok(Some(self.r.var(name)));
        }
        if shape.len() > SEQ_RANK {
            return Ok(None);
        }
        let mut s3 = vec![1; SEQ_RANK - shape.len()];
        s3.extend(&shape);
        let mut v = self.r.var(name);
        if shape.len() < SEQ_RANK {
            v = self.reshape(&v, &s3, &format!("{name}_3d"))?;
        }
        let t = self.r.op1("transpose", &format!("{name}_bxs"), &[("x", (&v).into()), ("perm", Arg::Const(Tensor::i32_vec(&[0, 2, 1])))])?;
        let v = self.reshape(&t, &[s3[0], s3[2], 1, s3[1]], &format!("{name}_ane"))?;
        self.to_memo.insert(name.to_string(), v.clone());
        Ok(Some(v))
    }

    fn reshape(&mut self, x: &Var, shape: &[usize], hint: &str) -> Result<Var, TypeError> {
        let dims: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
        self.r.op1("reshape", hint, &[("x", x.into()), ("shape", Arg::Const(Tensor::i32_vec(&dims)))])
    }

    /// Records `op`'s single output as having ANE form `v`.
    fn moved(&mut self, op: &Operation, v: Var) -> bool {
        self.ane.insert(op.outputs[0].name.clone(), v);
        self.moved += 1;
        true
    }

    /// Builds `op` in the ANE layout when it can be; false leaves it to be kept as it is.
    fn convert(&mut self, op: &Operation) -> Result<bool, TypeError> {
        let out_rank = op.outputs.first().map(|o| o.ty.tensor().rank());
        let x = arg_name(op, "x").map(str::to_string);
        let x_in_ane = x.as_ref().is_some_and(|x| self.ane.contains_key(x));
        let x_rank3 = x.as_ref().and_then(|x| self.shape(x)).is_some_and(|s| s.len() == SEQ_RANK);
        let hint = op.name.clone();
        match op.op_type.as_str() {
            "linear" if x_rank3 => {
                let Some(w) = arg_name(op, "weight").and_then(|w| self.r.value(w)).cloned() else { return Ok(false) };
                let bias = arg_name(op, "bias").map(|b| self.r.var(b));
                let Some(xv) = self.to_ane(x.as_deref().unwrap())? else { return Ok(false) };
                let v = self.conv(&xv, &w, bias, &hint)?;
                self.linears += 1;
                Ok(self.moved(op, v))
            }
            "matmul" if x_rank3 => {
                let y = arg_name(op, "y").unwrap_or_default().to_string();
                let (tx, ty) = (self.flag(op, "transpose_x"), self.flag(op, "transpose_y"));
                if let Some(w) = self.r.value(&y).filter(|w| w.shape().len() == 2).cloned() {
                    // x · W with W (K, N) (or (N, K) transposed): a 1×1 conv with weight Wᵀ.
                    if tx {
                        return Ok(false);
                    }
                    let w = if ty {
                        w
                    } else {
                        let t = self.r.op1("transpose", &format!("{hint}_w"), &[("x", Arg::Const(w)), ("perm", Arg::Const(Tensor::i32_vec(&[1, 0])))])?;
                        match self.r.b.value(&t) {
                            Some(t) => t.clone(),
                            None => return Ok(false),
                        }
                    };
                    let Some(xv) = self.to_ane(x.as_deref().unwrap())? else { return Ok(false) };
                    let v = self.conv(&xv, &w, None, &hint)?;
                    self.linears += 1;
                    return Ok(self.moved(op, v));
                }
                let y_rank3 = self.shape(&y).is_some_and(|s| s.len() == SEQ_RANK);
                if !y_rank3 || !(x_in_ane || self.ane.contains_key(&y)) || self.r.value(&y).is_some() {
                    return Ok(false);
                }
                // out (B, A, N) = x (B, A, K) · y (B, K, N); in ANE forms x′ = (B, K, A),
                // y′ = (B, N, K) (each transposed when its flag is set), out′ (B, N, A) = y′ · x′.
                let (Some(xa), Some(ya)) = (self.to_ane(x.as_deref().unwrap())?, self.to_ane(&y)?) else { return Ok(false) };
                let (x3, y3) = (self.squeeze_ane(&xa, &hint)?, self.squeeze_ane(&ya, &hint)?);
                let m = self.r.op1(
                    "matmul",
                    &hint,
                    &[
                        ("x", (&y3).into()),
                        ("y", (&x3).into()),
                        ("transpose_x", Arg::Const(Tensor::bool_scalar(ty))),
                        ("transpose_y", Arg::Const(Tensor::bool_scalar(tx))),
                    ],
                )?;
                let Some([b, n, a]) = self.r.b.ty(&m).and_then(|t| t.fixed_shape()).and_then(|s| <[usize; 3]>::try_from(s).ok()) else {
                    return Ok(false);
                };
                let v = self.reshape(&m, &[b, n, 1, a], &format!("{hint}_ane"))?;
                Ok(self.moved(op, v))
            }
            "layer_norm" if x_in_ane && x_rank3 => {
                let axes = const_ints(&self.r, op, "axes").or_else(|| self.neg_axes(op));
                if axes.as_deref() != Some(&[2]) {
                    return Ok(false);
                }
                self.rebuild(op, |p| (p == "axes").then(|| Tensor::i32_vec(&[1])))
            }
            "softmax" | "reduce_mean" | "reduce_sum" | "reduce_max" | "reduce_min" | "reduce_prod" if x_in_ane && x_rank3 && out_rank == Some(SEQ_RANK) => {
                let param = if op.op_type == "softmax" { "axis" } else { "axes" };
                let Some(axes) = self.ints(op, param) else { return Ok(false) };
                let Some(mapped) = axes.iter().map(|&a| ane_axis(a).map(|a| a as i32)).collect::<Option<Vec<_>>>() else { return Ok(false) };
                let t = if param == "axis" { Tensor::i32_scalar(mapped[0]) } else { Tensor::i32_vec(&mapped) };
                self.rebuild(op, move |p| (p == param).then(|| t.clone()))
            }
            "slice_by_index" if x_in_ane && x_rank3 && out_rank == Some(SEQ_RANK) => {
                let mut arrays = Vec::new();
                for (p, fill) in [("begin", 0), ("end", 1), ("stride", 1), ("begin_mask", 1), ("end_mask", 1), ("squeeze_mask", 0)] {
                    match op.input(p) {
                        None => {}
                        Some(_) => {
                            let Some(v) = self.ints(op, p) else { return Ok(false) };
                            if v.len() != SEQ_RANK || (p == "squeeze_mask" && v.iter().any(|&s| s != 0)) {
                                return Ok(false);
                            }
                            let moved = [v[0], v[2], fill, v[1]];
                            let t = if p.ends_with("_mask") {
                                Tensor::from_bools(&[4], &moved.map(|m| m != 0))
                            } else {
                                Tensor::i32_vec(&moved.map(|m| m as i32))
                            };
                            arrays.push((p, t));
                        }
                    }
                }
                self.rebuild(op, move |p| arrays.iter().find(|(q, _)| *q == p).map(|(_, t)| t.clone()))
            }
            "concat" | "split" if out_rank == Some(SEQ_RANK) => {
                let Some(axis) = self.ints(op, "axis").and_then(|a| ane_axis(a[0])) else { return Ok(false) };
                let values: Vec<String> = op.input(if op.op_type == "concat" { "values" } else { "x" }).unwrap_or_default().iter().filter_map(|a| match a {
                    Argument::Name(n) => Some(n.clone()),
                    Argument::Value(_) => None,
                }).collect();
                if !values.iter().any(|v| self.ane.contains_key(v)) || values.iter().any(|v| self.shape(v).is_none_or(|s| s.len() != SEQ_RANK)) {
                    return Ok(false);
                }
                self.rebuild(op, move |p| (p == "axis").then(|| Tensor::i32_scalar(axis as i32)))
            }
            t if elementwise::is_pointwise(t) && out_rank == Some(SEQ_RANK) => {
                let tensor_args: Vec<String> = self.tensor_args(op);
                if !tensor_args.iter().any(|n| self.ane.contains_key(n)) || tensor_args.iter().any(|n| self.shape(n).is_none_or(|s| s.len() > SEQ_RANK)) {
                    return Ok(false);
                }
                self.rebuild(op, |_| None)
            }
            _ => Ok(false),
        }
    }

    /// A 1×1 `conv` computing `linear(x, w, bias)` on the ANE form `x`.
    fn conv(&mut self, x: &Var, w: &Tensor, bias: Option<Var>, hint: &str) -> Result<Var, TypeError> {
        let &[n, k] = w.shape() else {
            return Err(TypeError::Invalid { op: "linear".into(), message: format!("weight {:?} is not rank 2", w.shape()) });
        };
        let weight = self.r.b.konst(&format!("{hint}_weight_1x1"), w.reshaped(&[n, k, 1, 1]).expect("same element count"));
        let mut args = vec![
            ("x", Arg::Var(x.clone())),
            ("weight", Arg::Var(weight)),
            ("strides", Arg::Const(Tensor::i32_vec(&[1, 1]))),
            ("pad_type", Arg::Const(Tensor::string("valid"))),
            ("dilations", Arg::Const(Tensor::i32_vec(&[1, 1]))),
            ("groups", Arg::Const(Tensor::i32_scalar(1))),
        ];
        if let Some(b) = bias {
            args.insert(2, ("bias", Arg::Var(b)));
        }
        self.r.op1("conv", hint, &args)
    }

    /// (B, X, 1, S) → (B, X, S) for `matmul`.
    fn squeeze_ane(&mut self, v: &Var, hint: &str) -> Result<Var, TypeError> {
        let s = self.r.b.ty(v).and_then(|t| t.fixed_shape()).unwrap_or_default();
        self.reshape(v, &[s[0], s[1], s[3]], &format!("{hint}_3d"))
    }

    /// Rebuilds `op` with its tensor operands in ANE form and its const params replaced where
    /// `param_value` gives one.
    fn rebuild(&mut self, op: &Operation, param_value: impl Fn(&str) -> Option<Tensor>) -> Result<bool, TypeError> {
        let Some(def) = ops::lookup(&op.op_type, self.r.b.opset()) else { return Ok(false) };
        let mut args: Vec<(&str, Arg)> = Vec::new();
        for (param, bound) in &op.inputs {
            if let Some(t) = param_value(param) {
                args.push((param, Arg::Const(t)));
                continue;
            }
            let spec = def.params.iter().find(|p| p.name == param);
            let is_const_param = spec.is_some_and(|p| p.konst) || matches!(param.as_str(), "gamma" | "beta" | "epsilon" | "split_sizes" | "num_splits" | "interleave" | "axis");
            let mut vs = Vec::new();
            for a in bound {
                match a {
                    Argument::Name(n) if is_const_param => vs.push(self.r.var(n)),
                    Argument::Name(n) => match self.to_ane(n)? {
                        Some(v) => vs.push(v),
                        None => return Ok(false),
                    },
                    Argument::Value(t) if is_const_param || t.shape().is_empty() => vs.push(self.r.b.konst("lit", t.clone())),
                    Argument::Value(_) => return Ok(false),
                }
            }
            args.push((param, if spec.is_some_and(|p| p.variadic) { Arg::Vars(vs) } else { Arg::Var(vs.remove(0)) }));
        }
        let outs = self.r.op(&op.op_type, &op.name, &args)?;
        self.moved += 1;
        for (o, v) in op.outputs.iter().zip(outs) {
            self.ane.insert(o.name.clone(), v);
        }
        Ok(true)
    }

    fn tensor_args(&self, op: &Operation) -> Vec<String> {
        let def = ops::lookup(&op.op_type, self.r.b.opset());
        op.inputs
            .iter()
            .filter(|(p, _)| def.is_some_and(|d| d.params.iter().any(|q| q.name == p && !q.konst)))
            .flat_map(|(_, a)| a)
            .filter_map(|a| match a {
                Argument::Name(n) => Some(n.clone()),
                Argument::Value(_) => None,
            })
            .collect()
    }

    fn ints(&self, op: &Operation, param: &str) -> Option<Vec<i64>> {
        match op.input(param)?.first()? {
            Argument::Name(n) => self.r.value(n)?.to_i64_vec(),
            Argument::Value(t) => t.to_i64_vec(),
        }
    }

    /// `layer_norm` axes given as negative numbers, normalized for a rank-3 input.
    fn neg_axes(&self, op: &Operation) -> Option<Vec<usize>> {
        self.ints(op, "axes")?.into_iter().map(|a| usize::try_from(if a < 0 { a + SEQ_RANK as i64 } else { a }).ok()).collect()
    }

    fn flag(&self, op: &Operation, param: &str) -> bool {
        self.ints(op, param).and_then(|v| v.first().copied()).is_some_and(|v| v != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::split_heads;
    use crate::passes::testing::{check_pass, encoder_block, histogram};

    #[test]
    fn encoder_block_moves_to_the_ane_layout_with_the_same_result() {
        let mut f = encoder_block(8, 2, 8);
        (split_heads::PASS.run)(&mut f).unwrap();
        let (f, c) = check_pass(f, PASS.run, 1e-4);
        let h = histogram(&f);
        assert_eq!((h.get("linear"), h.get("conv")), (None, Some(&6)), "{h:?}");
        // One layout change where the model starts and one where it ends.
        assert_eq!(h.get("transpose"), Some(&2), "{h:?}");
        assert_eq!(c.count("linears_rewritten"), 6);
        for op in &f.block.operations {
            let ty = op.outputs[0].ty.tensor();
            match op.op_type.as_str() {
                "layer_norm" => assert_eq!(ty.fixed_shape().unwrap(), [1, 16, 1, 8], "layer_norm on (B, C, 1, S)"),
                "softmax" => assert_eq!(ty.fixed_shape().unwrap(), [1, 8, 1, 8], "per-head softmax on (B, S_k, 1, S_q)"),
                "conv" | "gelu" | "add" => assert_eq!(ty.fixed_shape().unwrap()[2..], [1, 8], "{} not in (B, C, 1, S)", op.name),
                _ => {}
            }
        }
    }
}
