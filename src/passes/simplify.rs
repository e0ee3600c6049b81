//! `simplify`: local cleanups that leave the math unchanged. Removes identities (`identity`,
//! same-shape `reshape`, identity `transpose`, same-dtype `cast`), merges chains (reshape∘reshape
//! → one reshape, transpose∘transpose → one transpose, a transpose that only moves size-1 axes →
//! a reshape), so transposes that meet cancel; folds a last-two-axes transpose into the `matmul`
//! that reads it; turns GPT-2's `linear` on a (B·S, C) flattening of a (B, S, C) activation into
//! a `linear` on the activation itself; and folds ops whose inputs are all consts. Runs first
//! (cleanup, so the ANE rewrites see canonical graphs) and at the end of `ane-layout` (to cancel
//! the layout changes that meet).

use foldhash::{HashMap, HashMapExt};

use super::rewrite::{type_error, Arg, Rewriter};
use super::{Changes, Pass, PassError};
use crate::mil::builder::Var;
use crate::mil::ops;
use crate::mil::{Argument, Function, Operation, Tensor};

/// The pass, for `PIPELINE`.
pub const PASS: Pass = Pass { name: "simplify", ane: false, run };

const NAME: &str = "simplify";

fn run(f: &mut Function) -> Result<Changes, PassError> {
    let before = f.block.operations.len();
    let counts = apply(f)?;
    super::dead_code::sweep(f);
    Ok(Changes::new(before, f.block.operations.len()).with(counts))
}

/// How a value was made, for the chain rules.
#[derive(Clone)]
enum Made {
    Reshape(Var),
    Transpose(Var, Vec<usize>),
}

/// Counts of what [`apply`] did.
#[derive(Default)]
struct Simplified {
    identities_removed: usize,
    chains_merged: usize,
    transposes_folded_into_matmul: usize,
    linears_unflattened: usize,
    ops_folded: usize,
}

impl Simplified {
    fn into_counts(self) -> Vec<(&'static str, usize)> {
        vec![
            ("identities_removed", self.identities_removed),
            ("chains_merged", self.chains_merged),
            ("transposes_folded_into_matmul", self.transposes_folded_into_matmul),
            ("linears_unflattened", self.linears_unflattened),
            ("ops_folded", self.ops_folded),
        ]
    }
}

/// Runs the cleanups over `f` (used by this pass and by `ane-layout`), returning counts.
pub fn apply(f: &mut Function) -> Result<Vec<(&'static str, usize)>, PassError> {
    let (mut r, ops) = Rewriter::new(f);
    let mut made: HashMap<String, Made> = HashMap::new();
    let mut n = Simplified::default();
    let err = type_error(NAME);
    for owned in ops {
        let op = &owned;
        r.at(op);
        let out = op.outputs.first().map(|o| o.name.clone()).unwrap_or_default();
        let out = out.as_str();
        let x = arg_name(op, "x").map(|a| r.var(a));
        let out_shape = op.outputs.first().and_then(|o| o.ty.tensor().fixed_shape());
        let x_shape = x.as_ref().and_then(|x| r.b.ty(x)).and_then(|t| t.fixed_shape());
        match op.op_type.as_str() {
            "identity" if x.is_some() => {
                r.replace(out, &x.unwrap());
                n.identities_removed += 1;
                continue;
            }
            "cast" if x.as_ref().and_then(|x| r.b.ty(x)).map(|t| t.dtype) == op.outputs.first().map(|o| o.ty.tensor().dtype) => {
                r.replace(out, &x.unwrap());
                n.identities_removed += 1;
                continue;
            }
            "reshape" | "transpose" if x.is_some() && out_shape.is_some() && x_shape.is_some() => {
                let (x, out_shape, x_shape) = (x.unwrap(), out_shape.unwrap(), x_shape.unwrap());
                let perm = match op.op_type.as_str() {
                    "transpose" => match const_ints(&r, op, "perm") {
                        Some(p) => Some(p),
                        None => {
                            r.keep(owned);
                            continue;
                        }
                    },
                    _ => None,
                };
                // A transpose that keeps the order of the non-unit axes is a reshape.
                let (base, made_as) = match perm.filter(|p| !moves_only_unit_axes(p, &x_shape)) {
                    None => match made.get(&x.0) {
                        Some(Made::Reshape(src)) => (src.clone(), Made::Reshape(src.clone())),
                        _ => (x.clone(), Made::Reshape(x.clone())),
                    },
                    Some(p2) => match made.get(&x.0) {
                        Some(Made::Transpose(src, p1)) => {
                            let composed: Vec<usize> = p2.iter().map(|&i| p1[i]).collect();
                            (src.clone(), Made::Transpose(src.clone(), composed))
                        }
                        _ => (x.clone(), Made::Transpose(x.clone(), p2)),
                    },
                };
                let identity = match &made_as {
                    Made::Reshape(_) => r.b.ty(&base).and_then(|t| t.fixed_shape()).as_deref() == Some(&out_shape[..]),
                    Made::Transpose(_, p) => p.iter().enumerate().all(|(i, &a)| i == a),
                };
                if identity {
                    r.replace(out, &base);
                    n.identities_removed += 1;
                    continue;
                }
                let unchanged = base == x && matches!((&made_as, op.op_type.as_str()), (Made::Reshape(_), "reshape") | (Made::Transpose(..), "transpose"));
                let v = if unchanged {
                    r.keep(owned);
                    r.var(out)
                } else {
                    n.chains_merged += 1;
                    match &made_as {
                        Made::Reshape(_) => reshape(&mut r, &base, &out_shape, &op.name).map_err(&err)?,
                        Made::Transpose(_, p) => transpose(&mut r, &base, p, &op.name).map_err(&err)?,
                    }
                };
                made.insert(v.0.clone(), made_as);
                r.replace(out, &v);
                continue;
            }
            "matmul" => {
                if let Some(v) = fold_matmul_transposes(&mut r, op, &made).map_err(&err)? {
                    n.transposes_folded_into_matmul += 1;
                    r.replace(out, &v);
                    continue;
                }
            }
            "linear" if x.is_some() => {
                if let Some(Made::Reshape(src)) = made.get(&x.as_ref().unwrap().0).cloned() {
                    if let Some((v, l3)) = unflatten_linear(&mut r, op, &src, out_shape.as_deref()).map_err(&err)? {
                        made.insert(v.0.clone(), Made::Reshape(l3));
                        r.replace(out, &v);
                        n.linears_unflattened += 1;
                        continue;
                    }
                }
            }
            _ => {}
        }
        if let Some((outs, folded)) = fold(&mut r, op).map_err(&err)? {
            for (o, v) in op.outputs.iter().zip(outs) {
                r.replace(&o.name, &v);
            }
            n.ops_folded += usize::from(folded);
            continue;
        }
        r.keep(owned);
    }
    r.finish(f);
    Ok(n.into_counts())
}

/// Whether transposing `shape` by `perm` keeps the non-unit axes in order (so it is a reshape).
fn moves_only_unit_axes(perm: &[usize], shape: &[usize]) -> bool {
    let kept: Vec<usize> = perm.iter().copied().filter(|&a| shape.get(a).is_some_and(|&d| d != 1)).collect();
    kept.windows(2).all(|w| w[0] < w[1])
}

fn reshape(r: &mut Rewriter, x: &Var, shape: &[usize], hint: &str) -> Result<Var, ops::TypeError> {
    let dims: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
    r.op1("reshape", hint, &[("x", x.into()), ("shape", Arg::Const(Tensor::i32_vec(&dims)))])
}

fn transpose(r: &mut Rewriter, x: &Var, perm: &[usize], hint: &str) -> Result<Var, ops::TypeError> {
    let p: Vec<i32> = perm.iter().map(|&d| d as i32).collect();
    r.op1("transpose", hint, &[("x", x.into()), ("perm", Arg::Const(Tensor::i32_vec(&p)))])
}

/// The value name bound to `param` of `op`.
pub fn arg_name<'o>(op: &'o Operation, param: &str) -> Option<&'o str> {
    match op.input(param)?.first()? {
        Argument::Name(n) => Some(n),
        Argument::Value(_) => None,
    }
}

/// The const integers bound to `param` of `op` (axes, perms, shapes), non-negative.
pub fn const_ints(r: &Rewriter, op: &Operation, param: &str) -> Option<Vec<usize>> {
    let t = match op.input(param)?.first()? {
        Argument::Name(n) => r.value(n)?.clone(),
        Argument::Value(t) => t.clone(),
    };
    t.to_i64_vec()?.into_iter().map(|v| usize::try_from(v).ok()).collect()
}

/// `matmul(transpose(a), b)` where the transpose swaps the last two axes → `matmul(a, b)` with
/// the flag flipped (Core ML's matmul transposes for free).
fn fold_matmul_transposes(r: &mut Rewriter, op: &Operation, made: &HashMap<String, Made>) -> Result<Option<Var>, ops::TypeError> {
    let (Some(x), Some(y)) = (arg_name(op, "x"), arg_name(op, "y")) else { return Ok(None) };
    let flag = |p: &str| op.input(p).and_then(|a| a.first()).and_then(|a| match a {
        Argument::Name(n) => r.value(n).cloned(),
        Argument::Value(t) => Some(t.clone()),
    }).and_then(|t| t.as_i64()).is_some_and(|v| v != 0);
    let swaps_last_two = |v: &Var| match made.get(&v.0) {
        Some(Made::Transpose(src, p)) => {
            let n = p.len();
            let ok = n >= 2 && p[..n - 2].iter().enumerate().all(|(i, &a)| i == a) && p[n - 2] == n - 1 && p[n - 1] == n - 2;
            ok.then(|| src.clone())
        }
        _ => None,
    };
    let (xv, yv) = (r.var(x), r.var(y));
    let (sx, sy) = (swaps_last_two(&xv), swaps_last_two(&yv));
    if sx.is_none() && sy.is_none() {
        return Ok(None);
    }
    let (tx, ty) = (flag("transpose_x") ^ sx.is_some(), flag("transpose_y") ^ sy.is_some());
    let v = r.op1(
        "matmul",
        &op.name,
        &[
            ("x", Arg::Var(sx.unwrap_or(xv))),
            ("y", Arg::Var(sy.unwrap_or(yv))),
            ("transpose_x", Arg::Const(Tensor::bool_scalar(tx))),
            ("transpose_y", Arg::Const(Tensor::bool_scalar(ty))),
        ],
    )?;
    Ok(Some(v))
}

/// `linear` on `reshape(src: (B, S, C) → (B·S, C))` (GPT-2's `Conv1D`) → `reshape(linear(src))`,
/// so the reshape back to (B, S, C') that follows cancels. Returns the reshape and the new linear.
fn unflatten_linear(r: &mut Rewriter, op: &Operation, src: &Var, out_shape: Option<&[usize]>) -> Result<Option<(Var, Var)>, ops::TypeError> {
    let Some(src_shape) = r.b.ty(src).and_then(|t| t.fixed_shape()) else { return Ok(None) };
    let Some(out_shape) = out_shape else { return Ok(None) };
    if src_shape.len() != 3 || out_shape.len() != 2 || src_shape[0] * src_shape[1] != out_shape[0] {
        return Ok(None);
    }
    let mut args = vec![("x", Arg::Var(src.clone()))];
    for p in ["weight", "bias"] {
        if let Some(n) = arg_name(op, p) {
            args.push((p, Arg::Var(r.var(n))));
        }
    }
    let l3 = r.op1("linear", &op.name, &args)?;
    let v = reshape(r, &l3, out_shape, &format!("{}_flat", op.name))?;
    Ok(Some((v, l3)))
}

/// Rebuilds `op` through its `OpDef` when every argument is a const, so the Builder folds it.
fn fold(r: &mut Rewriter, op: &Operation) -> Result<Option<(Vec<Var>, bool)>, ops::TypeError> {
    if op.op_type == "const" || !op.blocks.is_empty() || op.inputs.is_empty() {
        return Ok(None);
    }
    let all_const = op.inputs.iter().flat_map(|(_, a)| a).all(|a| match a {
        Argument::Name(n) => r.value(n).is_some(),
        Argument::Value(_) => true,
    });
    if !all_const {
        return Ok(None);
    }
    let args: Vec<(&str, Arg)> = op
        .inputs
        .iter()
        .map(|(p, a)| {
            let vals: Vec<Var> = a.iter().filter_map(|a| match a {
                Argument::Name(n) => Some(r.var(n)),
                Argument::Value(_) => None,
            }).collect();
            let arg = match (a.len(), a.first()) {
                (1, Some(Argument::Value(t))) => Arg::Const(t.clone()),
                (1, _) => Arg::Var(vals[0].clone()),
                _ => Arg::Vars(vals),
            };
            (p.as_str(), arg)
        })
        .collect();
    if ops::lookup(&op.op_type, r.b.opset()).is_none() {
        return Ok(None);
    }
    let outs = r.op(&op.op_type, &op.name, &args)?;
    // Rebuilt either way; a fold only if every output became a const.
    let folded = outs.iter().all(|v| r.b.value(v).is_some());
    Ok(Some((outs, folded)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::builder::Builder;
    use crate::mil::ops::{elementwise as ew, linear, shape};
    use crate::mil::{DType, Opset, TensorType};
    use crate::passes::testing::{check_pass, histogram, values};

    fn reshape(b: &mut Builder, x: &Var, dims: &[i32], name: &str) -> Var {
        b.op(&shape::RESHAPE, name).arg("x", x).konst("shape", Tensor::i32_vec(dims)).build1().unwrap()
    }

    fn transpose(b: &mut Builder, x: &Var, perm: &[i32], name: &str) -> Var {
        b.op(&shape::TRANSPOSE, name).arg("x", x).konst("perm", Tensor::i32_vec(perm)).build1().unwrap()
    }

    #[test]
    fn chains_merge_and_identities_go() {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F32, &[2, 3, 4]));
        let r1 = reshape(&mut b, &x, &[6, 4], "r1");
        let r2 = reshape(&mut b, &r1, &[2, 12], "r2");
        let t1 = transpose(&mut b, &r2, &[1, 0], "t1");
        let t2 = transpose(&mut b, &t1, &[1, 0], "t2");
        let i = b.op(&shape::IDENTITY, "i").arg("x", &t2).build1().unwrap();
        let y = b.op(&ew::RELU, "y").arg("x", &i).build1().unwrap();
        let (f, c) = check_pass(b.finish(&[y]), PASS.run, 0.0);
        assert_eq!(histogram(&f), [("relu".to_string(), 1), ("reshape".to_string(), 1)].into());
        assert!(c.count("chains_merged") >= 1 && c.count("identities_removed") >= 2, "{c:?}");
    }

    #[test]
    fn transposes_fold_into_matmul_and_flattened_linears_unflatten() {
        let mut b = Builder::new(Opset::Ios16);
        let a = b.input("a", TensorType::new(DType::F32, &[2, 4, 3]));
        let x = b.input("x", TensorType::new(DType::F32, &[2, 4, 3]));
        let at = transpose(&mut b, &a, &[0, 2, 1], "at");
        let m = b.op(&linear::MATMUL, "m").arg("x", &at).arg("y", &x).build1().unwrap();
        let flat = reshape(&mut b, &m, &[6, 3], "flat");
        let w = b.konst("w", Tensor::from_f32(&[5, 3], &values(15, 7)));
        let l = b.op(&linear::LINEAR, "l").arg("x", &flat).arg("weight", &w).build1().unwrap();
        let y = reshape(&mut b, &l, &[2, 3, 5], "y");
        let (f, c) = check_pass(b.finish(&[y]), PASS.run, 1e-6);
        assert_eq!(histogram(&f), [("linear".to_string(), 1), ("matmul".to_string(), 1)].into());
        assert_eq!((c.count("transposes_folded_into_matmul"), c.count("linears_unflattened")), (1, 1));
        let lin = f.block.operations.iter().find(|o| o.op_type == "linear").unwrap();
        assert_eq!(lin.outputs[0].ty.tensor().rank(), 3);
    }
}
