//! `split-heads`: batched multi-head attention → one attention per head. A traced transformer
//! reshapes a (B, S, C) projection to (B, S, H, D) and transposes it to (B, H, S, D), runs the
//! attention on all heads at once, then transposes and reshapes back to (B, S, C). Here each head
//! h reads its own channel slice [h·D, (h+1)·D) of the projection, the ops between run on
//! (B, S, D) / (B, S, S) tensors per head, and the heads are concatenated on the channel axis:
//! no big reshapes or transposes, and per-head tensors that `ane-layout` then puts in the ANE's
//! (B, C, 1, S) layout (Apple's ml-ane-transformers does the same by hand).
//!
//! Per-head values stand for the batched ones with the head axis (axis 1) removed. An op is
//! split when a head-batched value feeds it and it is pointwise, `softmax`, `matmul`,
//! `slice_by_index`, `concat` or a reduction that leaves the head axis alone; other operands are
//! sliced per head or have their size-1 head axis dropped. Grouped-query attention's `repeat_kv`
//! (expand_dims + add of zeros + reshape) maps each query head to its key/value head. Every
//! batched op is kept too, so a consumer that is not split still reads a correct value;
//! whatever ends up unread is removed by dead code.

use foldhash::HashMap;

use super::rewrite::{type_error, Arg, Rewriter};
use super::simplify::{self, arg_name, const_ints};
use super::{dead_code, Changes, Pass, PassError};
use crate::mil::builder::Var;
use crate::mil::ops::{self, elementwise, TypeError};
use crate::mil::{Argument, Function, Operation, Tensor};

/// The pass, for `PIPELINE`.
pub const PASS: Pass = Pass { name: "split-heads", ane: true, run };

const NAME: &str = "split-heads";

/// Axis of the heads in a (B, H, S, D) tensor.
const HEAD_AXIS: usize = 1;
/// Rank of head-batched tensors.
const BATCHED_RANK: usize = 4;
/// `transpose` perm from (B, S, H, D) to (B, H, S, D) and back.
const TO_HEADS: [usize; 4] = [0, 2, 1, 3];
/// `transpose` perm from (B, S, H, D) to (B, H, D, S): keys pre-transposed for q·kᵀ.
const TO_HEADS_KT: [usize; 4] = [0, 2, 3, 1];
/// `slice_by_index` parameters holding one entry per axis.
const SLICE_ARRAYS: [&str; 6] = ["begin", "end", "stride", "begin_mask", "end_mask", "squeeze_mask"];

fn run(f: &mut Function) -> Result<Changes, PassError> {
    let before = f.block.operations.len();
    let err = type_error(NAME);
    let (mut r, ops) = Rewriter::new(f);
    let mut s = State::default();
    for owned in ops {
        let op = &owned;
        r.at(op);
        let out = op.outputs.first().map(|o| o.name.clone()).unwrap_or_default();
        let out_shape = op.outputs.first().and_then(|o| o.ty.tensor().fixed_shape()).unwrap_or_default();
        let x = arg_name(op, "x").map(str::to_string);
        match (op.op_type.as_str(), x) {
            ("reshape", Some(x)) => {
                if let Some(per) = s.exits.get(&x).cloned() {
                    // (B, S, H, D) → (B, S, C): concatenate the heads on the channel axis (then
                    // flatten to (B·S, C) when that is what the model asked for, as GPT-2 does).
                    if out_shape.len() == 3 || out_shape.len() == 2 {
                        let mut v = r.op1("concat", &op.name, &[("values", Arg::Vars(per)), ("axis", Arg::Const(Tensor::i32_scalar(2)))]).map_err(&err)?;
                        if out_shape.len() == 2 {
                            let dims: Vec<i32> = out_shape.iter().map(|&d| d as i32).collect();
                            v = r.op1("reshape", &format!("{}_flat", op.name), &[("x", (&v).into()), ("shape", Arg::Const(Tensor::i32_vec(&dims)))]).map_err(&err)?;
                        }
                        r.replace(&out, &v);
                        s.regions += 1;
                        continue;
                    }
                }
                if let Some((kv, rep)) = s.repeated.get(&x).cloned() {
                    if out_shape.len() == BATCHED_RANK && out_shape[HEAD_AXIS] == kv.len() * rep {
                        s.heads.insert(out.clone(), (0..kv.len() * rep).map(|h| kv[h / rep].clone()).collect());
                    }
                }
                s.reshaped_from.insert(out.clone(), x);
            }
            ("transpose", Some(x)) => {
                let perm = const_ints(&r, op, "perm").unwrap_or_default();
                if perm == TO_HEADS && s.heads.contains_key(&x) {
                    s.exits.insert(out.clone(), s.heads[&x].clone());
                } else if perm == TO_HEADS || perm == TO_HEADS_KT {
                    if let Some(per) = entry(&mut r, &s, &x, perm == TO_HEADS_KT, &op.name).map_err(&err)? {
                        s.heads.insert(out.clone(), per);
                    }
                }
            }
            ("expand_dims", Some(x)) if s.heads.contains_key(&x) && const_ints(&r, op, "axes").as_deref() == Some(&[2]) => {
                s.expanded.insert(out.clone(), s.heads[&x].clone());
            }
            ("add", Some(x)) if out_shape.len() == BATCHED_RANK + 1 => {
                let y = arg_name(op, "y").unwrap_or_default();
                let zeros = |n: &str| r.value(n).and_then(|t| t.to_f32_vec()).is_some_and(|v| v.iter().all(|&e| e == 0.0));
                let kv = s.expanded.get(&x).filter(|_| zeros(y)).or_else(|| s.expanded.get(y).filter(|_| zeros(&x)));
                if let Some(kv) = kv.cloned() {
                    s.repeated.insert(out.clone(), (kv, out_shape[2]));
                }
            }
            _ => {
                if splittable(op) && op.inputs.iter().flat_map(|(_, a)| a).any(|a| matches!(a, Argument::Name(n) if s.heads.contains_key(n))) {
                    if let Some(per) = split_op(&mut r, &mut s, op, &out_shape).map_err(&err)? {
                        s.heads.insert(out.clone(), per);
                        s.split_ops += 1;
                    }
                }
            }
        }
        r.keep(owned);
    }
    r.finish(f);
    // Merge what the split leaves behind (a flattening before GPT-2's projection) so
    // `ane-layout` sees plain (B, S, C) values.
    simplify::apply(f)?;
    dead_code::sweep(f);
    Ok(Changes::new(before, f.block.operations.len()).with([("attention_blocks_split", s.regions), ("ops_split_per_head", s.split_ops)]))
}

#[derive(Default)]
struct State {
    /// Head-batched value → its per-head values (head axis removed).
    heads: HashMap<String, Vec<Var>>,
    /// `transpose(heads value, TO_HEADS)` outputs: (B, S, H, D) → per-head (B, S, D).
    exits: HashMap<String, Vec<Var>>,
    /// `reshape` outputs → their input.
    reshaped_from: HashMap<String, String>,
    /// `expand_dims(kv heads, axes=[2])` outputs → the per-head kv values.
    expanded: HashMap<String, Vec<Var>>,
    /// `repeat_kv` broadcasts → (per-head kv values, repeats per kv head).
    repeated: HashMap<String, (Vec<Var>, usize)>,
    /// Operands with their head axis dropped (and sliced to one head when it has H).
    operands: HashMap<(String, Option<usize>), Var>,
    regions: usize,
    split_ops: usize,
}

/// Per-head values of `transpose(reshape(X: (B, S, C) → (B, S, H, D)), perm)`: head h is
/// X[:, :, h·D..(h+1)·D] (transposed to (B, D, S) for pre-transposed keys).
fn entry(r: &mut Rewriter, s: &State, x: &str, keys_t: bool, hint: &str) -> Result<Option<Vec<Var>>, TypeError> {
    let Some(src) = s.reshaped_from.get(x) else { return Ok(None) };
    let (Some(src_shape), Some(x_shape)) = (r.ty(src).and_then(|t| t.fixed_shape()), r.ty(x).and_then(|t| t.fixed_shape())) else {
        return Ok(None);
    };
    let [b, seq, c] = src_shape[..] else { return Ok(None) };
    let [xb, xs, h, d] = x_shape[..] else { return Ok(None) };
    if (xb, xs) != (b, seq) || h * d != c || h < 2 {
        return Ok(None);
    }
    let src = r.var(src);
    let mut per = Vec::with_capacity(h);
    for i in 0..h {
        let begin = Tensor::i32_vec(&[0, 0, (i * d) as i32]);
        let end = Tensor::i32_vec(&[b as i32, seq as i32, ((i + 1) * d) as i32]);
        let mut v = r.op1("slice_by_index", &format!("{hint}_h{i}"), &[("x", (&src).into()), ("begin", Arg::Const(begin)), ("end", Arg::Const(end))])?;
        if keys_t {
            v = r.op1("transpose", &format!("{hint}_h{i}_t"), &[("x", (&v).into()), ("perm", Arg::Const(Tensor::i32_vec(&[0, 2, 1])))])?;
        }
        per.push(v);
    }
    Ok(Some(per))
}

/// Ops that can run per head when a head-batched value feeds them.
fn splittable(op: &Operation) -> bool {
    elementwise::is_pointwise(&op.op_type)
        || matches!(op.op_type.as_str(), "softmax" | "matmul" | "slice_by_index" | "concat")
        || op.op_type.starts_with("reduce_")
}

/// Maps an axis of a (B, H, …) tensor to the per-head tensor; `None` for the head axis.
fn per_head_axis(axis: i64) -> Option<i64> {
    let a = if axis < 0 { axis + BATCHED_RANK as i64 } else { axis };
    match a {
        0 => Some(0),
        a if a > HEAD_AXIS as i64 && a < BATCHED_RANK as i64 => Some(a - 1),
        _ => None,
    }
}

/// Builds `op` once per head; `None` (nothing usable built) when some argument cannot be split.
fn split_op(r: &mut Rewriter, s: &mut State, op: &Operation, out_shape: &[usize]) -> Result<Option<Vec<Var>>, TypeError> {
    let Some(def) = ops::lookup(&op.op_type, r.b.opset()) else { return Ok(None) };
    if out_shape.len() != BATCHED_RANK {
        return Ok(None);
    }
    let h = out_shape[HEAD_AXIS];
    let head_inputs = op.inputs.iter().flat_map(|(_, a)| a).filter_map(|a| match a {
        Argument::Name(n) => s.heads.get(n),
        Argument::Value(_) => None,
    });
    if head_inputs.into_iter().any(|per| per.len() != h) {
        return Ok(None);
    }
    let mut per = Vec::with_capacity(h);
    for head in 0..h {
        let mut args: Vec<(&str, Arg)> = Vec::new();
        for (param, bound) in &op.inputs {
            let konst = def.params.iter().find(|p| p.name == param).is_some_and(|p| p.konst);
            let arg = if op.op_type == "slice_by_index" && SLICE_ARRAYS.contains(&param.as_str()) {
                match slice_array(r, op, param, h)? {
                    Some(t) => Arg::Const(t),
                    None => return Ok(None),
                }
            } else if param == "axis" || param == "axes" {
                let Some(axes) = const_i64s(r, &bound[0]) else { return Ok(None) };
                let Some(mapped) = axes.iter().map(|&a| per_head_axis(a).map(|a| a as i32)).collect::<Option<Vec<_>>>() else { return Ok(None) };
                Arg::Const(if param == "axis" { Tensor::i32_scalar(mapped[0]) } else { Tensor::i32_vec(&mapped) })
            } else if konst {
                match &bound[0] {
                    Argument::Name(n) => Arg::Var(r.var(n)),
                    Argument::Value(t) => Arg::Const(t.clone()),
                }
            } else {
                let mut vs = Vec::with_capacity(bound.len());
                for a in bound {
                    match operand(r, s, a, head, h)? {
                        Some(v) => vs.push(v),
                        None => return Ok(None),
                    }
                }
                if def.params.iter().any(|p| p.name == param && p.variadic) {
                    Arg::Vars(vs)
                } else {
                    Arg::Var(vs.remove(0))
                }
            };
            args.push((param.as_str(), arg));
        }
        per.push(r.op1(&op.op_type, &format!("{}_h{head}", op.name), &args)?);
    }
    Ok(Some(per))
}

/// Head `head` of an operand: its per-head value, or the operand with its head axis dropped
/// (sliced to `head` when that axis has all `h` heads). Operands of rank ≤ 2 broadcast as is.
fn operand(r: &mut Rewriter, s: &mut State, a: &Argument, head: usize, h: usize) -> Result<Option<Var>, TypeError> {
    let name = match a {
        Argument::Name(n) => n,
        Argument::Value(t) if t.shape().len() <= 2 => return Ok(Some(r.b.konst("lit", t.clone()))),
        Argument::Value(_) => return Ok(None),
    };
    if let Some(per) = s.heads.get(name) {
        return Ok(Some(per[head].clone()));
    }
    let Some(shape) = r.ty(name).and_then(|t| t.fixed_shape()) else { return Ok(None) };
    if shape.len() <= 2 {
        return Ok(Some(r.var(name)));
    }
    if shape.len() > BATCHED_RANK {
        return Ok(None);
    }
    // The axis of `shape` that lines up with the head axis under broadcasting.
    let axis = HEAD_AXIS + shape.len() - BATCHED_RANK;
    let which = match shape[axis] {
        1 => None,
        n if n == h => Some(head),
        _ => return Ok(None),
    };
    let key = (name.clone(), which);
    if let Some(v) = s.operands.get(&key) {
        return Ok(Some(v.clone()));
    }
    let mut v = r.var(name);
    if let Some(i) = which {
        let begin: Vec<i32> = (0..shape.len()).map(|a| if a == axis { i as i32 } else { 0 }).collect();
        let end: Vec<i32> = (0..shape.len()).map(|a| if a == axis { i as i32 + 1 } else { shape[a] as i32 }).collect();
        v = r.op1("slice_by_index", &format!("{name}_h{i}"), &[("x", (&v).into()), ("begin", Arg::Const(Tensor::i32_vec(&begin))), ("end", Arg::Const(Tensor::i32_vec(&end)))])?;
    }
    let dropped: Vec<i32> = shape.iter().enumerate().filter(|(a, _)| *a != axis).map(|(_, &d)| d as i32).collect();
    v = r.op1("reshape", &format!("{name}_per_head"), &[("x", (&v).into()), ("shape", Arg::Const(Tensor::i32_vec(&dropped)))])?;
    s.operands.insert(key, v.clone());
    Ok(Some(v))
}

/// A `slice_by_index` array with the head axis entry removed, when the slice keeps all heads.
fn slice_array(r: &Rewriter, op: &Operation, param: &str, h: usize) -> Result<Option<Tensor>, TypeError> {
    let get = |p: &str| op.input(p).and_then(|a| a.first()).and_then(|a| const_i64s(r, a));
    let Some(values) = get(param) else { return Ok(None) };
    if values.len() != BATCHED_RANK {
        return Ok(None);
    }
    let flag = |p: &str| get(p).is_some_and(|v| v[HEAD_AXIS] != 0);
    let begin_ok = flag("begin_mask") || get("begin").is_some_and(|v| v[HEAD_AXIS] == 0);
    let end_ok = flag("end_mask") || get("end").is_some_and(|v| v[HEAD_AXIS] >= h as i64);
    let stride_ok = get("stride").is_none_or(|v| v[HEAD_AXIS] == 1);
    if !(begin_ok && end_ok && stride_ok && !flag("squeeze_mask")) {
        return Ok(None);
    }
    let kept: Vec<i64> = values.iter().enumerate().filter(|(a, _)| *a != HEAD_AXIS).map(|(_, &v)| v).collect();
    let is_mask = param.ends_with("_mask");
    Ok(Some(if is_mask {
        Tensor::from_bools(&[kept.len()], &kept.iter().map(|&v| v != 0).collect::<Vec<_>>())
    } else {
        Tensor::i32_vec(&kept.iter().map(|&v| v as i32).collect::<Vec<_>>())
    }))
}

/// The integers of a const argument.
fn const_i64s(r: &Rewriter, a: &Argument) -> Option<Vec<i64>> {
    match a {
        Argument::Name(n) => r.value(n)?.to_i64_vec(),
        Argument::Value(t) => t.to_i64_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::testing::{check_pass, encoder_block, histogram};

    #[test]
    fn attention_runs_per_head_and_gives_the_same_result() {
        let (f, c) = check_pass(encoder_block(8, 2, 8), PASS.run, 1e-5);
        let h = histogram(&f);
        // Two heads: two softmaxes, four matmuls, one concat; the batched reshapes and
        // transposes are gone.
        assert_eq!((h.get("softmax"), h.get("matmul"), h.get("concat"), h.get("transpose")), (Some(&2), Some(&4), Some(&1), None), "{h:?}");
        for op in f.block.operations.iter().filter(|o| o.op_type == "softmax") {
            assert_eq!(op.outputs[0].ty.tensor().rank(), 3, "softmax still batched over heads");
        }
        assert_eq!((c.count("attention_blocks_split"), c.count("ops_split_per_head")), (1, 4));
    }
}
