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

use foldhash::{HashMap, HashMapExt};

use super::rewrite::{type_error, Arg, Rewriter};
use super::PassError;
use crate::mil::builder::Var;
use crate::mil::{Argument, DType, Fp16Loss, Function, Tensor};

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
    let mut notes = Vec::new();
    let outputs = f.block.outputs.clone();
    let (mut r, ops) = Rewriter::new(f);
    let err = type_error(NAME);
    // The fp32 const standing for each lost one, made once.
    let mut kept: HashMap<String, Var> = HashMap::new();
    for op in ops {
        r.at(&op);
        if op.op_type == "const" && lost.contains_key(&op.name) {
            let (_, src) = &lost[&op.name];
            kept.insert(op.name.clone(), r.b.konst(&format!("{}_fp32", op.name), src.clone()));
            // Every op reading it computes in fp32 now; its fp16 form stays only as an output
            // of the function (whose type must not change).
            if outputs.contains(&op.name) {
                r.keep(op);
            }
            continue;
        }
        let reads_lost: Vec<&str> = op
            .inputs
            .iter()
            .flat_map(|(_, args)| args)
            .filter_map(|a| match a {
                Argument::Name(n) if lost.contains_key(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        if reads_lost.is_empty() || !op.blocks.is_empty() {
            r.keep(op);
            continue;
        }
        let why: Vec<String> = reads_lost
            .iter()
            .map(|n| match lost[*n].0 {
                Fp16Loss::Overflow { peak } => format!("constant `{n}` reaches {peak:.3e}, beyond fp16's 65504"),
                Fp16Loss::AllZero { peak } => format!("constant `{n}` (at most {peak:.3e}) would be all zeros in fp16"),
            })
            .collect();
        notes.push(format!("`{}` ({}) computes in fp32: {}", op.name, op.op_type, why.join("; ")));
        let def = crate::mil::ops::lookup(&op.op_type, r.b.opset())
            .ok_or_else(|| PassError { pass: NAME, message: format!("`{}`: unknown op {}", op.name, op.op_type) })?;
        let mut args: Vec<(String, Arg)> = Vec::new();
        for (param, bound) in &op.inputs {
            let mut vars = Vec::new();
            for a in bound {
                vars.push(match a {
                    Argument::Name(n) => match kept.get(n) {
                        Some(v) => v.clone(),
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
                r.op1("cast", &decl.name, &[("x", Arg::Var(out.clone())), ("dtype", Arg::Const(Tensor::string("fp16")))]).map_err(&err)?
            } else {
                out.clone()
            };
            r.replace(&decl.name, &v);
        }
    }
    r.finish(f);
    Ok(notes)
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
