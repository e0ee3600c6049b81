//! fp16 never silently loses a constant: every fp16 constant of a converted program is checked
//! against its fp32 source (`Tensor::fp16_loss`), and each op that reads one that would overflow
//! to ±inf or become all zeros computes in fp32 instead: the constant stays fp32, the op's other
//! float inputs are cast (constants re-made) to fp32, and its outputs are cast back to fp16, so
//! the rest of the program is unchanged. Each such op is reported, one line each, in `convert`'s
//! summary and JSON (`precision_notes`). Called by `pipeline` before the other passes, whatever
//! the front end; a no-op on programs with no fp16 constant at risk.
//!
//! Front ends handle the cases they can fold exactly first (BatchNorm statistics are rescaled
//! into an fp16 scale and shift in `torchscript::lower::nn`); this pass is the net under all of
//! them. It cannot help a value computed at run time from in-range inputs: that is `validate
//! --per-op`'s job to find.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::rewrite::{type_error, Arg, Rewriter};
use super::PassError;
use crate::mil::builder::Var;
use crate::mil::{Argument, DType, Fp16Loss, Function, Operation, Tensor};

/// Name in errors.
const NAME: &str = "fp16-range";

/// Largest constant [`run`] checks before writing: scalars, biases, norms and BatchNorm
/// statistics, where values beyond fp16 (a 1e6 normalizer) or below it (an epsilon of 1e-12)
/// live. Larger weights are checked for free while `package::write` casts them, and written
/// again through [`run`] with their names when one overflows: reading every weight twice would
/// cost a third of a large model's convert time.
pub const EAGER_CHECK_ELEMENTS: usize = 1 << 16;

/// Keeps every op that reads an fp16 constant fp16 cannot hold in fp32 (see the module doc);
/// returns one line per op kept in fp32. Checks the constants named in `only`, or with `None`
/// every constant of up to [`EAGER_CHECK_ELEMENTS`] elements.
pub fn run(f: &mut Function, only: Option<&[String]>) -> Result<Vec<String>, PassError> {
    let mut lost: HashMap<String, (Fp16Loss, Tensor)> = HashMap::new();
    for op in f.block.operations.iter().filter(|o| o.op_type == "const") {
        let Some(t) = op.attributes.get("val") else { continue };
        let checked = match only {
            Some(names) => names.contains(&op.name),
            None => t.len() <= EAGER_CHECK_ELEMENTS,
        };
        if !checked {
            continue;
        }
        if let (Some(loss), Some(src)) = (t.fp16_loss(), t.f16_source()) {
            lost.insert(op.name.clone(), (loss, src));
        }
    }
    if lost.is_empty() {
        return Ok(Vec::new());
    }
    let mut keep = HashSet::new();
    let mut notes = Vec::new();
    for op in f.block.operations.iter().filter(|o| o.op_type != "const" && o.blocks.is_empty()) {
        let why: Vec<String> = reads(op)
            .filter_map(|n| lost.get(n).map(|(loss, _)| (n, loss)))
            .map(|(n, loss)| match loss {
                Fp16Loss::Overflow { peak } => format!("constant `{n}` reaches {peak:.3e}, beyond fp16's 65504"),
                Fp16Loss::AllZero { peak } => format!("constant `{n}` (at most {peak:.3e}) would be all zeros in fp16"),
            })
            .collect();
        if !why.is_empty() {
            notes.push(format!("`{}` ({}) computes in fp32: {}", op.name, op.op_type, why.join("; ")));
            keep.insert(op.name.clone());
        }
    }
    let exact = lost.into_iter().map(|(name, (_, src))| (name, src)).collect();
    keep_in_fp32(f, &keep, &exact)?;
    Ok(notes)
}

/// `convert --fp32-ops`: keeps in fp32 every op whose type or name matches one of `patterns`
/// (shell globs: `layer_norm`, `*attn*`); returns one line per op kept. Ops without float
/// values and `const`s are left alone. Called by `pipeline` after the other passes, so the names
/// are those `inspect` and `validate --per-op` show.
pub fn by_patterns(f: &mut Function, patterns: &[glob::Pattern]) -> Result<Vec<String>, PassError> {
    let mut keep = HashSet::new();
    let mut notes = Vec::new();
    for op in f.block.operations.iter().filter(|o| o.op_type != "const" && o.blocks.is_empty() && computes_floats(o)) {
        if let Some(p) = patterns.iter().find(|p| p.matches(&op.op_type) || p.matches(&op.name)) {
            notes.push(format!("`{}` ({}) computes in fp32: --fp32-ops `{}`", op.name, op.op_type, p.as_str()));
            keep.insert(op.name.clone());
        }
    }
    keep_in_fp32(f, &keep, &HashMap::new())?;
    Ok(notes)
}

/// Whether `op` has an fp16 output (what keeping it in fp32 changes).
fn computes_floats(op: &Operation) -> bool {
    op.outputs.iter().any(|o| o.ty.tensor().dtype == DType::F16)
}

/// The value names `op` reads.
fn reads(op: &Operation) -> impl Iterator<Item = &str> {
    op.inputs.iter().flat_map(|(_, args)| args).filter_map(|a| match a {
        Argument::Name(n) => Some(n.as_str()),
        Argument::Value(_) => None,
    })
}

/// Recomputes each op named in `keep` in fp32: its fp16 inputs are cast to fp32 (fp16
/// constants re-made from their exact values, those in `exact` from the fp32 value given), and
/// its outputs are cast back to fp16 under their old names, so every other op and the function's
/// signature see what they saw before. Consecutive kept ops pass fp32 values to each other (an
/// fp32 island), not fp16 round trips. The constants in `exact` are dropped unless the function
/// returns them; casts nothing reads are swept. The shared rewrite of [`run`], [`by_patterns`]
/// and `convert --precision auto` (`pipeline`).
pub fn keep_in_fp32(f: &mut Function, keep: &HashSet<String>, exact: &HashMap<String, Tensor>) -> Result<(), PassError> {
    if keep.is_empty() {
        return Ok(());
    }
    let outputs = f.block.outputs.clone();
    // Values that are an fp32 value cast down to fp16 (an island's exit): a kept op reads the
    // fp32 value itself rather than the fp16 round trip.
    let narrowed = narrowing_casts(f);
    let (mut r, ops) = Rewriter::new(f);
    let err = type_error(NAME);
    // The fp32 value standing for an exact constant or a kept op's output, made once.
    let mut fp32: HashMap<String, Var> = HashMap::new();
    let fp32_var = |r: &Rewriter, fp32: &HashMap<String, Var>, n: &str| fp32.get(n).cloned().or_else(|| narrowed.get(n).map(|from| r.var(from)));
    for op in ops {
        r.at(&op);
        if op.op_type == "const" && exact.contains_key(&op.name) {
            fp32.insert(op.name.clone(), r.b.konst(&format!("{}_fp32", op.name), exact[&op.name].clone()));
            // Every op reading it computes in fp32 now; its fp16 form stays only as an output
            // of the function (whose type must not change).
            if outputs.contains(&op.name) {
                r.keep(op);
            }
            continue;
        }
        if !keep.contains(&op.name) || !op.blocks.is_empty() {
            r.keep(op);
            continue;
        }
        let def = crate::mil::ops::lookup(&op.op_type, r.b.opset())
            .ok_or_else(|| PassError { pass: NAME, message: format!("`{}`: unknown op {}", op.name, op.op_type) })?;
        // A cast up to fp32 inside an island passes the fp32 value on as it is.
        if let (Some(x), Some(out)) = (widening(&op), op.outputs.first()) {
            if let Some(v) = fp32_var(&r, &fp32, x) {
                r.replace(&out.name, &v);
                continue;
            }
        }
        let mut args: Vec<(String, Arg)> = Vec::new();
        for (param, bound) in &op.inputs {
            let mut vars = Vec::new();
            for a in bound {
                vars.push(match a {
                    Argument::Name(n) => match fp32_var(&r, &fp32, n) {
                        Some(v) => v,
                        None => to_fp32(&mut r, n)?,
                    },
                    Argument::Value(t) => r.b.konst(&format!("{}_{param}", op.name), fp32_of(t)),
                });
            }
            let variadic = def.params.iter().any(|p| p.name == param && p.variadic);
            let arg = if variadic { Arg::Vars(vars) } else { Arg::Var(vars.remove(0)) };
            args.push((param.clone(), arg));
        }
        let args: Vec<(&str, Arg)> = args.into_iter().map(|(p, a)| (param_name(def, &p), a)).collect();
        let outs = r.op(&op.op_type, &format!("{}_fp32", op.name), &args).map_err(&err)?;
        for (out, decl) in outs.iter().zip(&op.outputs) {
            let want = decl.ty.tensor().dtype;
            let got = r.b.ty(out).map(|t| t.dtype);
            let v = if got == Some(DType::F32) && want == DType::F16 {
                fp32.insert(decl.name.clone(), out.clone());
                r.op1("cast", &decl.name, &[("x", Arg::Var(out.clone())), ("dtype", Arg::Const(Tensor::string("fp16")))]).map_err(&err)?
            } else {
                out.clone()
            };
            r.replace(&decl.name, &v);
        }
    }
    r.finish(f);
    super::dead_code::sweep(f);
    Ok(())
}

/// The casts of fp32 values down to fp16 in `f`'s top block: output name → the fp32 input.
fn narrowing_casts(f: &Function) -> HashMap<String, String> {
    let fp32: HashSet<&str> = f
        .inputs
        .iter()
        .filter(|i| matches!(&i.ty, crate::mil::ValueType::Tensor(t) if t.dtype == DType::F32))
        .map(|i| i.name.as_str())
        .chain(f.block.operations.iter().flat_map(|o| &o.outputs).filter(|o| o.ty.tensor().dtype == DType::F32).map(|o| o.name.as_str()))
        .collect();
    let mut out = HashMap::new();
    for op in &f.block.operations {
        if let (Some(x), Some(o)) = (cast_input(op, "fp16"), op.outputs.first()) {
            if fp32.contains(x) {
                out.insert(o.name.clone(), x.to_string());
            }
        }
    }
    out
}

/// The value `op` casts up to fp32, when it is such a cast.
fn widening(op: &Operation) -> Option<&str> {
    cast_input(op, "fp32")
}

/// The input of a `cast` to `dtype` (an inline or const-free literal `dtype`).
fn cast_input<'a>(op: &'a Operation, dtype: &str) -> Option<&'a str> {
    if op.op_type != "cast" {
        return None;
    }
    let to = op.inputs.iter().find(|(p, _)| p == "dtype")?.1.first()?;
    let named = match to {
        Argument::Value(t) => t.as_str() == Some(dtype),
        Argument::Name(_) => op.outputs.first().is_some_and(|o| o.ty.tensor().dtype.name() == dtype),
    };
    let x = op.inputs.iter().find(|(p, _)| p == "x")?.1.first()?;
    match (named, x) {
        (true, Argument::Name(n)) => Some(n.as_str()),
        _ => None,
    }
}

/// The op table's spelling of `param` (a `&'static str`, as `Rewriter::op` takes).
fn param_name(def: &crate::mil::ops::OpDef, param: &str) -> &'static str {
    def.params.iter().find(|p| p.name == param).map(|p| p.name).unwrap_or("x")
}

/// The value standing for `name` as fp32: fp16 constants re-made from their exact values (ops
/// that need a const parameter keep one), other fp16 values cast; anything else unchanged.
fn to_fp32(r: &mut Rewriter, name: &str) -> Result<Var, PassError> {
    let v = r.var(name);
    if r.ty(name).map(|t| t.dtype) != Some(DType::F16) {
        return Ok(v);
    }
    if let Some(t) = r.value(name).cloned() {
        return Ok(r.b.konst(&format!("{name}_fp32"), fp32_of(&t)));
    }
    r.op1("cast", &format!("{name}_fp32"), &[("x", Arg::Var(v)), ("dtype", Arg::Const(Tensor::string("fp32")))]).map_err(type_error(NAME))
}

/// An fp16 tensor at fp32 (its exact source when it is a lazy cast); other tensors unchanged.
fn fp32_of(t: &Tensor) -> Tensor {
    if let Some(src) = t.f16_source() {
        return src;
    }
    match (t.dtype(), t.to_f32_vec()) {
        (DType::F16, Some(v)) => Tensor::from_f32(t.shape(), &v),
        _ => t.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::builder::Builder;
    use crate::mil::ops::elementwise as ew;
    use crate::mil::{Opset, TensorType};

    /// `y = x / c` in fp16 with `c` a lazy fp16 cast of `value`.
    fn divide_by(value: f32) -> Function {
        let mut b = Builder::new(Opset::Ios16);
        let x = b.input("x", TensorType::new(DType::F16, &[4]));
        let c = b.konst("c", Tensor::f16_of(&Tensor::from_f32(&[1], &[value])));
        let y = b.op(&ew::REAL_DIV, "y").arg("x", &x).arg("y", &c).build1().unwrap();
        b.finish(&[y])
    }

    #[test]
    fn in_range_constants_change_nothing() {
        let mut f = divide_by(1000.0);
        let before = f.block.operations.len();
        assert!(run(&mut f, None).unwrap().is_empty());
        assert_eq!(f.block.operations.len(), before);
    }

    #[test]
    fn an_op_reading_an_overflowing_constant_computes_in_fp32_between_casts() {
        let value = 1e6; // a normalizer beyond fp16
        let mut f = divide_by(value);
        let notes = run(&mut f, None).unwrap();
        assert!(notes.len() == 1 && notes[0].contains("`y` (real_div) computes in fp32") && notes[0].contains("beyond fp16's 65504"), "{notes:?}");
        let xs = [100.0f32, -200.0, 3000.0, 65504.0];
        let out = crate::interp::run(&f, &[("x".into(), crate::interp::Array::float(DType::F16, vec![4], xs.to_vec()))]).unwrap();
        assert_eq!(out[0].1.dtype, DType::F16, "the output keeps its type");
        let crate::mil::ops::Data::F32(got) = &out[0].1.data else { panic!("not float") };
        for (g, x) in got.iter().zip(xs) {
            let want = crate::numeric::fp16::round(x / value);
            assert!(want != 0.0 && (g - want).abs() <= want.abs() * 1e-3, "{x} / {value}: got {g}, want {want}");
        }
    }

    #[test]
    fn large_constants_are_checked_when_named() {
        let mut f = divide_by(1e6);
        let c = f.block.operations.iter().find(|o| o.op_type == "const").unwrap().name.clone();
        assert!(run(&mut f.clone(), Some(&[])).unwrap().is_empty(), "not named: not checked");
        assert_eq!(run(&mut f, Some(&[c])).unwrap().len(), 1);
    }

    #[test]
    fn a_constant_fp16_would_zero_is_kept_in_fp32_and_reported() {
        let mut f = divide_by(1e-9);
        let notes = run(&mut f, None).unwrap();
        assert!(notes.len() == 1 && notes[0].contains("all zeros in fp16"), "{notes:?}");
        let div = f.block.operations.iter().find(|o| o.op_type == "real_div").unwrap();
        let crate::mil::Argument::Name(c) = &div.inputs[1].1[0] else { panic!("divisor not a name") };
        assert_eq!(f.block.operations.iter().find(|o| &o.name == c).unwrap().attributes["val"].to_f32_vec().unwrap(), vec![1e-9]);
    }
}
