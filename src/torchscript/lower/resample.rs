//! Lowerings of resampling ops: `upsample_nearest2d` (and `_upsample_nearest_exact2d`),
//! `upsample_bilinear2d`, `pixel_shuffle`, `pixel_unshuffle`. Output sizes and scales are
//! resolved at conversion (shapes are static); nearest resizes by a whole factor and bilinear
//! ones Core ML samples like torch become one MIL op, other nearest resizes a `gather` per axis
//! with torch's source indices.

use super::{dims_shown, float, int, Lower, Value};
use crate::mil::builder::Var;
use crate::mil::ops::shape;
use crate::mil::{DType, Tensor};

/// coremltools' margin on a scale recomputed from an output size (`(out + ε) / in` when `in`
/// does not divide `out`): Core ML sizes the output ⌊in·scale⌋, and the fp32 quotient alone
/// may land just below `out`.
const SCALE_EPSILON: f64 = 1e-4;

/// The spatial output sizes and, per axis, the scale torch samples with (`1/scale_factor`
/// when a factor is given, else `in/out`), from `(output_size, scale factors)`.
fn sizes_and_scales(l: &Lower, x: &Var, op: &str, size: &Value, factors: [Option<f64>; 2]) -> Result<([usize; 2], [Option<f64>; 2]), String> {
    let s = l.shape(x)?;
    if s.len() != 4 {
        return Err(format!("{op} needs a rank-4 input, got {}", dims_shown(&s)));
    }
    let (h, w) = (s[2], s[3]);
    match (size, factors) {
        (Value::List(v) | Value::Tuple(v), _) if v.len() == 2 => {
            let oh = usize::try_from(int(&v[0])?).map_err(|_| format!("{op}: negative output size"))?;
            let ow = usize::try_from(int(&v[1])?).map_err(|_| format!("{op}: negative output size"))?;
            // The non-`.vec` overload may give scales with the size: torch samples with them.
            Ok(([oh, ow], factors))
        }
        (Value::None, [Some(fh), Some(fw)]) if fh > 0.0 && fw > 0.0 => {
            Ok(([(h as f64 * fh).floor() as usize, (w as f64 * fw).floor() as usize], [Some(fh), Some(fw)]))
        }
        _ => Err(format!("{op} needs an output size or two positive scale factors")),
    }
}

/// The scale factors of an upsample call: `scale_factors` (a list, the `.vec` overload) or
/// `scales_h`/`scales_w` (floats).
fn factors(a: &Value, b: &Value) -> Result<[Option<f64>; 2], String> {
    match (a, b) {
        (Value::List(v) | Value::Tuple(v), _) if v.len() == 2 => Ok([Some(float(&v[0])?), Some(float(&v[1])?)]),
        (Value::None, Value::None) => Ok([None, None]),
        (h, w) => {
            let get = |v: &Value| if *v == Value::None { Ok(None) } else { float(v).map(Some) };
            Ok([get(h)?, get(w)?])
        }
    }
}

/// torch's nearest source index of output `i` on an axis of `n` (f32 math like its kernel):
/// ⌊i·scale⌋, or ⌊(i+½)·scale⌋ for `nearest-exact`, capped at `n − 1`.
fn nearest_index(i: usize, n: usize, out: usize, factor: Option<f64>, exact: bool) -> i64 {
    let scale = match factor {
        Some(f) => (1.0 / f) as f32,
        None => n as f32 / out as f32,
    };
    let src = if exact { ((i as f32 + 0.5) * scale).floor() } else { (i as f32 * scale).floor() };
    (src as i64).min(n as i64 - 1)
}

fn nearest(l: &mut Lower, a: &[Value], exact: bool) -> Result<Value, String> {
    let op = if exact { "_upsample_nearest_exact2d" } else { "upsample_nearest2d" };
    let x = l.tensor(&a[0])?;
    let f = factors(&a[2], &a[3])?;
    let (out, f) = sizes_and_scales(l, &x, op, &a[1], f)?;
    let s = l.shape(&x)?;
    let (h, w) = (s[2], s[3]);
    if out.contains(&0) || h == 0 || w == 0 {
        return Err(format!("{op} to or from an empty size is not supported"));
    }
    // A whole factor (given or implied by the sizes) is one `upsample_nearest_neighbor`.
    let whole = |n: usize, o: usize, f: Option<f64>| o.is_multiple_of(n) && f.is_none_or(|f| f == (o / n) as f64) && !(exact && o != n);
    if l.ty(&x)?.dtype.is_float() && whole(h, out[0], f[0]) && whole(w, out[1], f[1]) {
        let op = l
            .op(&shape::UPSAMPLE_NEAREST_NEIGHBOR)
            .arg("x", &x)
            .konst("scale_factor_height", Tensor::i32_scalar(super::i32_of((out[0] / h) as i64)?))
            .konst("scale_factor_width", Tensor::i32_scalar(super::i32_of((out[1] / w) as i64)?));
        return Ok(Value::Tensor(op.build1().map_err(|e| e.to_string())?));
    }
    let mut y = x;
    for (axis, (n, o, f)) in [(2, (h, out[0], f[0])), (3, (w, out[1], f[1]))] {
        if n == o && f.is_none_or(|f| f == 1.0) {
            continue;
        }
        let idx: Vec<i64> = (0..o).map(|i| nearest_index(i, n, o, f, exact)).collect();
        y = gather(l, &y, axis, &idx)?;
    }
    Ok(Value::Tensor(y))
}

/// `gather` of `x` along `axis` at the const `indices`.
fn gather(l: &mut Lower, x: &Var, axis: usize, indices: &[i64]) -> Result<Var, String> {
    let ids: Vec<i32> = indices.iter().map(|&i| super::i32_of(i)).collect::<Result<_, _>>()?;
    let hint = l.hint.clone();
    let ids = l.b.konst(&format!("{hint}_indices"), Tensor::from_i32(&[ids.len()], &ids));
    l.op(&shape::GATHER).arg("x", x).arg("indices", &ids).konst("axis", Tensor::i32_scalar(axis as i32)).build1().map_err(|e| e.to_string())
}

/// `aten::upsample_nearest2d(input, output_size, scale_factors | scales_h, scales_w)`.
pub fn upsample_nearest2d(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    nearest(l, a, false)
}

/// `aten::_upsample_nearest_exact2d(...)` (`mode="nearest-exact"`): half-pixel source indices.
pub fn upsample_nearest_exact2d(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    nearest(l, a, true)
}

/// The scale Core ML's `upsample_bilinear` needs for `n → out` (see [`SCALE_EPSILON`]).
fn core_ml_scale(n: usize, out: usize) -> f32 {
    if out.is_multiple_of(n) {
        (out / n) as f32
    } else {
        ((out as f64 + SCALE_EPSILON) / n as f64) as f32
    }
}

/// `aten::upsample_bilinear2d(input, output_size, align_corners, scale_factors | scales_h,
/// scales_w)` → `upsample_bilinear`. Core ML samples with `in/out`; torch with `1/scale_factor`
/// when a factor is given, so a factor whose output size is not exactly `in·factor` is refused
/// (as coremltools does) unless `align_corners`.
pub fn upsample_bilinear2d(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let name = "upsample_bilinear2d";
    let x = l.tensor(&a[0])?;
    let align = match &a[2] {
        Value::Bool(b) => *b,
        v => int(v)? != 0,
    };
    let f = factors(&a[3], &a[4])?;
    let (out, f) = sizes_and_scales(l, &x, name, &a[1], f)?;
    let s = l.shape(&x)?;
    let (h, w) = (s[2], s[3]);
    if out.contains(&0) || h == 0 || w == 0 {
        return Err(format!("{name} to or from an empty size is not supported"));
    }
    for (n, o, f) in [(h, out[0], f[0]), (w, out[1], f[1])] {
        if let Some(f) = f.filter(|_| !align) {
            if n as f64 * f != o as f64 {
                return Err(format!("{name}: scale factor {f} on size {n} gives a fractional size; Core ML samples with the recomputed scale (pass size= or recompute_scale_factor=True)"));
            }
        }
        if align && o == 1 && n > 1 {
            return Err(format!("{name}: align_corners=True to an output size of 1 is not supported"));
        }
    }
    let mut x = x;
    let dtype = l.ty(&x)?.dtype;
    if !dtype.is_float() {
        let hint = format!("{}_float", l.hint);
        x = l.b.op(&crate::mil::ops::elementwise::CAST, &hint).arg("x", &x).konst("dtype", Tensor::string(l.dtype.name())).build1().map_err(|e| e.to_string())?;
    }
    let op = l
        .op(&shape::UPSAMPLE_BILINEAR)
        .arg("x", &x)
        .konst("scale_factor_height", Tensor::from_f32(&[], &[core_ml_scale(h, out[0])]))
        .konst("scale_factor_width", Tensor::from_f32(&[], &[core_ml_scale(w, out[1])]))
        .konst("align_corners", Tensor::bool_scalar(align));
    let y = op.build1().map_err(|e| e.to_string())?;
    if l.shape(&y)?[2..] != out {
        return Err(format!("upsample_bilinear2d: Core ML's output size differs from torch's {out:?}"));
    }
    Ok(Value::Tensor(y))
}

/// `aten::pixel_shuffle(self, upscale_factor)` → `pixel_shuffle`.
pub fn pixel_shuffle(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let f = super::i32_of(int(&a[1])?)?;
    let op = l.op(&shape::PIXEL_SHUFFLE).arg("x", &x).konst("upscale_factor", Tensor::i32_scalar(f));
    Ok(Value::Tensor(op.build1().map_err(|e| e.to_string())?))
}

/// `aten::pixel_unshuffle(self, downscale_factor)` → `pixel_unshuffle` (iOS16+).
pub fn pixel_unshuffle(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let f = u32::try_from(int(&a[1])?).map_err(|_| "pixel_unshuffle: the factor must be a positive uint32".to_string())?;
    let factor = Tensor::from_bytes(DType::U32, &[], f.to_le_bytes().to_vec()).map_err(|e| e.to_string())?;
    let op = l.op(&shape::PIXEL_UNSHUFFLE).arg("x", &x).konst("downscale_factor", factor);
    Ok(Value::Tensor(op.build1().map_err(|e| e.to_string())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::builder::Builder;
    use crate::mil::{Opset, TensorType};

    fn lower(opset: Opset, shape: &[usize]) -> (Lower, Value) {
        let mut l = Lower { b: Builder::new(opset), dtype: DType::F32, hint: "out".into(), precision_notes: Vec::new(), fresh: Default::default() };
        let x = l.b.input("x", TensorType::new(DType::F32, shape));
        (l, Value::Tensor(x))
    }

    fn floats(v: &[f64]) -> Value {
        Value::List(v.iter().map(|&f| Value::Float(f)).collect())
    }

    #[test]
    fn bilinear_refuses_a_factor_core_ml_would_sample_differently() {
        let (mut l, x) = lower(Opset::Ios16, &[1, 2, 4, 5]);
        let e = upsample_bilinear2d(&mut l, &[x.clone(), Value::None, Value::Bool(false), floats(&[1.5, 1.5]), Value::None]).unwrap_err();
        assert!(e.contains("upsample_bilinear2d: scale factor 1.5 on size 5"), "{e}");
        // The same factor with align_corners samples like torch (spacing from the sizes).
        let y = upsample_bilinear2d(&mut l, &[x, Value::None, Value::Bool(true), floats(&[1.5, 1.5]), Value::None]).unwrap();
        assert_eq!(l.shape(&l.tensor(&y).unwrap()).unwrap(), [1, 2, 6, 7]);
    }

    #[test]
    fn pixel_unshuffle_names_the_op_set_it_needs() {
        let (mut l, x) = lower(Opset::Ios15, &[1, 2, 4, 4]);
        let e = pixel_unshuffle(&mut l, &[x, Value::Int(2)]).unwrap_err();
        assert!(e.contains("pixel_unshuffle") && e.contains("Ios16"), "{e}");
    }

    #[test]
    fn nearest_indices_follow_torch() {
        // torch: F.interpolate(size=6) of 4 → [0, 0, 1, 2, 2, 3]; nearest-exact of 4 → 7 samples
        // (i + ½)·4/7 → [0, 0, 1, 2, 2, 3, 3]; scale_factor 1.5 of 5 → ⌊i/1.5⌋.
        assert_eq!((0..6).map(|i| nearest_index(i, 4, 6, None, false)).collect::<Vec<_>>(), [0, 0, 1, 2, 2, 3]);
        assert_eq!((0..7).map(|i| nearest_index(i, 4, 7, None, true)).collect::<Vec<_>>(), [0, 0, 1, 2, 2, 3, 3]);
        assert_eq!((0..7).map(|i| nearest_index(i, 5, 7, Some(1.5), false)).collect::<Vec<_>>(), [0, 0, 1, 2, 2, 3, 4]);
    }
}
