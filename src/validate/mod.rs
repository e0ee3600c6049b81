//! Proves a converted package computes what the source model computes: reads inputs and
//! expected outputs (`.npz`), and measures drift per output ([`metrics`]). The CLI's
//! `validate` runs the package in `interp` and reports through this module.

pub mod image;
pub mod metrics;

pub use metrics::Criterion;
pub mod npz;

use crate::interp::{self, Array, Data};
use crate::mil::{DType, Function, Tensor, ValueType};

/// Largest token id drawn for random integer inputs: inside any real vocabulary, so embedding
/// lookups stay in range.
pub const RANDOM_TOKEN_ID_LIMIT: u64 = 100;

/// Why validation could not run (as opposed to running and finding drift).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Interp(interp::Error),
    #[error("input `{name}`: {reason}")]
    Input { name: String, reason: String },
    #[error("output `{name}`: {reason}")]
    Output { name: String, reason: String },
}

// The interpreter's message is this error's message, not a chained `source`, so `{:#}` prints it once.
impl From<interp::Error> for Error {
    fn from(e: interp::Error) -> Error {
        Error::Interp(e)
    }
}

/// One output's comparison, as reported.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OutputReport {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(flatten)]
    pub drift: metrics::Drift,
}

/// Arrays for `function`'s inputs from named tensors: matched by name, else by position; dtypes
/// converted to what the package takes (int64 → int32, fp32 → fp16 rounding happens in `interp`).
pub fn inputs_from(function: &Function, given: Vec<(String, Tensor)>) -> Result<Vec<(String, Array)>, Error> {
    let wanted: Vec<(&str, &crate::mil::TensorType)> = function
        .inputs
        .iter()
        .filter_map(|i| match &i.ty {
            ValueType::Tensor(t) => Some((i.name.as_str(), t)),
            ValueType::State(_) => None,
        })
        .collect();
    if given.len() != wanted.len() {
        let names: Vec<&str> = wanted.iter().map(|w| w.0).collect();
        return Err(Error::Input { name: names.join(", "), reason: format!("the package takes {} inputs, {} given", wanted.len(), given.len()) });
    }
    let by_name = wanted.iter().all(|(n, _)| given.iter().any(|(g, _)| g == n));
    let mut out = Vec::with_capacity(wanted.len());
    for (i, (name, ty)) in wanted.iter().enumerate() {
        let t = if by_name { &given.iter().find(|(g, _)| g == name).map(|g| &g.1) } else { &given.get(i).map(|g| &g.1) };
        let t = t.ok_or_else(|| Error::Input { name: name.to_string(), reason: "missing".into() })?;
        let mut a = Array::from_tensor(t).map_err(|reason| Error::Input { name: name.to_string(), reason })?;
        if ty.dtype == DType::F16 && a.dtype == DType::F32 {
            a.dtype = DType::F16;
        }
        if let Data::I32(_) = a.data {
            if ty.dtype.is_float() {
                return Err(Error::Input { name: name.to_string(), reason: format!("integer data for a {} input", ty.dtype) });
            }
        }
        out.push((name.to_string(), a));
    }
    Ok(out)
}

/// Random inputs drawn from the signature with `seed`: floats uniform in [-1, 1), integers
/// (token ids) in [0, RANDOM_TOKEN_ID_LIMIT), except inputs named like a mask, which are all 1.
pub fn random_inputs(function: &Function, seed: u64) -> Result<Vec<(String, Array)>, Error> {
    random_inputs_at(function, seed, &[])
}

/// [`random_inputs`] with the shapes of some inputs given (a flexible package's inputs, whose
/// declared dimensions are unknown), checked against the interpreter's memory budget.
pub fn random_inputs_at(function: &Function, seed: u64, shapes: &[(String, Vec<usize>)]) -> Result<Vec<(String, Array)>, Error> {
    // Declared sizes (of the given shapes, for a flexible function's inputs) are checked
    // against the interpreter's budget before any is drawn.
    let block = crate::mil::Block { inputs: Vec::new(), operations: Vec::new(), outputs: Vec::new() };
    let mut concrete = Function { inputs: function.inputs.clone(), opset: function.opset, block };
    for i in &mut concrete.inputs {
        if let (ValueType::Tensor(t), Some((_, s))) = (&mut i.ty, shapes.iter().find(|(n, _)| *n == i.name)) {
            *t = crate::mil::TensorType::new(t.dtype, s);
        }
    }
    interp::memory_needed(if shapes.is_empty() { function } else { &concrete })?;
    let function = &concrete;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::new();
    for i in &function.inputs {
        let ValueType::Tensor(t) = &i.ty else { continue };
        let shape = t.fixed_shape().ok_or_else(|| Error::Input { name: i.name.clone(), reason: "flexible shape: give --inputs".into() })?;
        let n = t.num_elements().ok_or_else(|| Error::Input { name: i.name.clone(), reason: format!("declared {t}: too many elements") })?;
        let data = match t.dtype {
            d if d.is_float() => Data::F32((0..n).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect()),
            DType::Bool => Data::Bool((0..n).map(|_| next() & 1 == 1).collect()),
            _ if i.name.contains("mask") => Data::I32(vec![1; n]),
            _ => Data::I32((0..n).map(|_| (next() % RANDOM_TOKEN_ID_LIMIT) as i32).collect()),
        };
        out.push((i.name.clone(), Array { dtype: t.dtype, shape, data }));
    }
    Ok(out)
}

/// The values of an array as f64 (bools as 0/1).
fn as_f64(a: &Array) -> Vec<f64> {
    match &a.data {
        Data::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Data::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Data::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
        Data::Str(_) => Vec::new(),
    }
}

/// Most reference names listed when an output is missing from the reference.
const NAMES_SHOWN: usize = 8;

/// Compares `actual` outputs with `expected` ones: matched by name when the reference uses the
/// package's output names (then every output must be there), else by position (a reference with
/// generic names, `output_0`, …). Each pair must have the same shape up to axes of size 1 (torch
/// may keep a unit axis the package drops; the element order is the same), and at least one
/// element. Float outputs are judged by `criterion` ([`metrics::judge`]), integer and bool
/// outputs (token ids, masks) must be equal; NaN or infinity on either side fails.
pub fn compare(actual: &[(String, Array)], expected: &[(String, Array)], criterion: Criterion) -> Result<Vec<OutputReport>, Error> {
    if actual.len() != expected.len() {
        return Err(Error::Output { name: "*".into(), reason: format!("the package has {} outputs, the reference {}", actual.len(), expected.len()) });
    }
    let by_name = actual.iter().any(|(n, _)| expected.iter().any(|(e, _)| e == n));
    actual
        .iter()
        .enumerate()
        .map(|(i, (name, a))| {
            let output = || crate::files::shown(name);
            let e = if by_name { expected.iter().find(|(n, _)| n == name) } else { expected.get(i) };
            let Some((_, e)) = e else {
                let names: Vec<String> = expected.iter().take(NAMES_SHOWN).map(|(n, _)| crate::files::shown(n)).collect();
                let more = if expected.len() > NAMES_SHOWN { ", …" } else { "" };
                return Err(Error::Output { name: output(), reason: format!("missing from the reference, which has: {}{more}", names.join(", ")) });
            };
            let squeezed = |s: &[usize]| -> Vec<usize> { s.iter().copied().filter(|&d| d != 1).collect() };
            if a.len() != e.len() || squeezed(&a.shape) != squeezed(&e.shape) {
                return Err(Error::Output { name: output(), reason: format!("shape {:?} but the reference has {:?}", a.shape, e.shape) });
            }
            if a.len() == 0 {
                return Err(Error::Output { name: output(), reason: format!("shape {:?} has no elements: there is nothing to compare", a.shape) });
            }
            if matches!(a.data, Data::Str(_)) || matches!(e.data, Data::Str(_)) {
                return Err(Error::Output { name: output(), reason: "string outputs cannot be compared numerically".into() });
            }
            let exact = !matches!(a.data, Data::F32(_)) || !matches!(e.data, Data::F32(_));
            let criterion = if exact { Criterion::Allclose { atol: 0.0, rtol: 0.0 } } else { criterion };
            Ok(OutputReport { name: name.clone(), shape: a.shape.clone(), drift: metrics::judge(&as_f64(e), &as_f64(a), criterion) })
        })
        .collect()
}

/// Whether any op of `function` computes in fp16 (then it drifts by fp16 rounding at every op).
fn computes_in_fp16(function: &Function) -> bool {
    function.block.walk_ops().iter().any(|op| op.outputs.iter().any(|o| o.ty.tensor().dtype == DType::F16))
}

/// Default allclose tolerances for a function (fp16 or fp32): what `--atol`/`--rtol` default
/// to, and what `validate --per-op` uses for each op's output.
pub fn default_tolerances(function: &Function) -> (f64, f64) {
    if computes_in_fp16(function) {
        (FP16_ATOL, FP16_RTOL)
    } else {
        (FP32_ATOL, FP32_RTOL)
    }
}

/// Default pass criterion of `validate`: fp16 packages are judged against each output's scale
/// ([`FP16_MIN_PSNR_DB`], [`FP16_MAX_ERROR_OF_PEAK`]), fp32 packages by allclose at
/// [`FP32_ATOL`]/[`FP32_RTOL`].
pub fn default_criterion(function: &Function) -> Criterion {
    if computes_in_fp16(function) {
        Criterion::Scaled { min_psnr_db: FP16_MIN_PSNR_DB, max_error_of_peak: FP16_MAX_ERROR_OF_PEAK }
    } else {
        Criterion::Allclose { atol: FP32_ATOL, rtol: FP32_RTOL }
    }
}

/// Least PSNR (against the reference's peak) of an fp16 package's output: whisperkittools'
/// gate for its fp16 Whisper packages (35 dB: rms error under 1.8 % of the peak).
pub const FP16_MIN_PSNR_DB: f64 = 35.0;
/// Largest error of any one element of an fp16 package's output, as a fraction of the output's
/// peak: a few fp16 steps at the top of the range (2^-10 relative each), accumulated over a
/// deep network, while a wrong element (a sign, a swapped channel) fails.
pub const FP16_MAX_ERROR_OF_PEAK: f64 = 0.05;

/// allclose tolerances for fp16 packages: a few fp16 ulps (2^-10 relative) accumulated over a deep network.
pub const FP16_ATOL: f64 = 5e-2;
/// See [`FP16_ATOL`].
pub const FP16_RTOL: f64 = 5e-2;
/// allclose tolerances for fp32 packages: summation-order differences only.
pub const FP32_ATOL: f64 = 1e-3;
/// See [`FP32_ATOL`].
pub const FP32_RTOL: f64 = 1e-3;

/// One op whose output, computed at the package's precision from the fp32 values of its inputs,
/// departs from the fp32 result: where fp16 drift starts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpDrift {
    /// MIL op name (for ops we converted: the TorchScript value or module path it came from).
    pub op: String,
    pub op_type: String,
    pub output: String,
    pub max_abs: f64,
    pub max_rel: f64,
    /// Largest magnitude in the fp32 result; above fp16's range means overflow on device.
    pub fp32_peak: f64,
    /// Elements that became inf or NaN at package precision while finite in fp32.
    pub non_finite: usize,
    /// Elements already inf or NaN in the fp32 result (the program overflows even in fp32).
    pub fp32_non_finite: usize,
}

/// `validate --per-op --reference MODEL`: gives each fp16 constant of `function` the exact fp32
/// values of the constant of the same name and shape in `reference` (MODEL converted at fp32),
/// so the fp32 baseline run does not start from values fp16 already lost (a variance beyond
/// 65504 stored as inf). Returns how many constants matched, of how many fp16 constants.
pub fn use_fp32_constants(function: &mut Function, reference: &Function) -> (usize, usize) {
    let exact: std::collections::HashMap<&str, &Tensor> = reference
        .block
        .operations
        .iter()
        .filter(|o| o.op_type == "const")
        .filter_map(|o| Some((o.name.as_str(), o.attributes.get("val")?)))
        .filter(|(_, t)| t.dtype() == DType::F32)
        .collect();
    let (mut matched, mut total) = (0, 0);
    for op in function.block.operations.iter_mut().filter(|o| o.op_type == "const") {
        let Some(val) = op.attributes.get_mut("val") else { continue };
        if val.dtype() != DType::F16 {
            continue;
        }
        total += 1;
        if let Some(src) = exact.get(op.name.as_str()).filter(|t| t.shape() == val.shape()) {
            *val = Tensor::f16_of(src);
            matched += 1;
        }
    }
    (matched, total)
}

/// Largest finite fp16 value; fp32 intermediates beyond it overflow to inf on an fp16 device.
pub const FP16_MAX: f64 = 65504.0;

/// `validate --per-op`: runs `function` once in fp32 and, as each op finishes, re-evaluates it
/// at the declared precision on the fp32 values of its inputs (rounded to fp16 where the input
/// is fp16); returns the ops whose outputs fail allclose(atol, rtol), overflow fp16, or hold
/// inf/NaN, in program order. Isolating each op this way names where drift starts, not where it
/// shows. Memory: what one run holds (values are freed after their last use) plus one op's
/// inputs again; outputs with no elements are skipped (nothing to compare).
pub fn per_op(function: &Function, inputs: &[(String, Array)], atol: f64, rtol: f64) -> Result<Vec<OpDrift>, Error> {
    use std::collections::HashMap;
    let mut found = Vec::new();
    let visit: &mut interp::Visit = &mut |op, fp32, outputs| {
        let float_out = op.outputs.iter().any(|o| o.ty.tensor().dtype.is_float());
        if op.op_type == "const" {
            // An fp16 constant whose exact values (see `use_fp32_constants`) leave fp16's range.
            if let (Some(out), Some(decl)) = (outputs.first(), op.outputs.first()) {
                let peak = as_f64(out).iter().filter(|x| x.is_finite()).fold(0f64, |m, x| m.max(x.abs()));
                if out.dtype == DType::F16 && peak > FP16_MAX {
                    let over = as_f64(out).iter().filter(|x| x.abs() > FP16_MAX).count();
                    found.push(OpDrift { op: op.name.clone(), op_type: op.op_type.clone(), output: decl.name.clone(), max_abs: f64::INFINITY, max_rel: f64::INFINITY, fp32_peak: peak, non_finite: over, fp32_non_finite: 0 });
                }
            }
            return Ok(());
        }
        if !float_out {
            return Ok(());
        }
        let mut local: HashMap<String, Array> = HashMap::new();
        for (_, args) in &op.inputs {
            for a in args {
                let crate::mil::Argument::Name(n) = a else { continue };
                let Some(v) = fp32(n) else { continue };
                let mut v = v.clone();
                if let (DType::F16, Data::F32(x)) = (v.dtype, &mut v.data) {
                    crate::numeric::fp16::round_slice(x);
                }
                local.insert(n.clone(), v);
            }
        }
        let outs = interp::eval_op(op, function.opset, &local, interp::Compute::AsDeclared)?;
        for ((got, want), decl) in outs.iter().zip(outputs).zip(&op.outputs) {
            if want.len() == 0 {
                continue;
            }
            let (e, a) = (as_f64(want), as_f64(got));
            let d = metrics::compare(&e, &a, atol, rtol);
            let peak = e.iter().filter(|x| x.is_finite()).fold(0f64, |m, x| m.max(x.abs()));
            if !d.pass || (got.dtype == DType::F16 && peak > FP16_MAX) {
                found.push(OpDrift {
                    op: op.name.clone(),
                    op_type: op.op_type.clone(),
                    output: decl.name.clone(),
                    max_abs: d.max_abs,
                    max_rel: d.max_rel,
                    fp32_peak: peak,
                    non_finite: d.non_finite,
                    fp32_non_finite: d.reference_non_finite,
                });
            }
        }
        Ok(())
    };
    interp::run_visiting(function, inputs, interp::Compute::Fp32, visit)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(name: &str, shape: &[usize], values: &[f32]) -> (String, Array) {
        (name.to_string(), Array::float(DType::F32, shape.to_vec(), values.to_vec()))
    }

    #[test]
    fn issue_hostile_nan_or_inf_references_fail() {
        let actual = [out("y", &[2], &[1.0, 2.0])];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let r = compare(&actual, &[out("y", &[2], &[bad, 2.0])], Criterion::Allclose { atol: FP32_ATOL, rtol: FP32_RTOL }).unwrap();
            assert_eq!((r[0].drift.pass, r[0].drift.reference_non_finite), (false, 1), "{bad}");
        }
        let r = compare(&[out("y", &[2], &[f32::NAN, f32::INFINITY])], &[out("y", &[2], &[1.0, 2.0])], Criterion::Allclose { atol: 1.0, rtol: 1.0 }).unwrap();
        assert_eq!((r[0].drift.pass, r[0].drift.non_finite), (false, 2));
    }

    #[test]
    fn issue_hostile_shapes_must_agree_and_hold_elements() {
        let actual = [out("y", &[2, 3], &[0.0; 6])];
        let e = compare(&actual, &[out("y", &[3, 2], &[0.0; 6])], Criterion::Allclose { atol: 1.0, rtol: 1.0 }).unwrap_err().to_string();
        assert!(e.contains("shape [2, 3] but the reference has [3, 2]"), "{e}");
        // Unit axes may differ (same element order).
        assert!(compare(&actual, &[out("y", &[1, 2, 1, 3], &[0.0; 6])], Criterion::Allclose { atol: 1.0, rtol: 1.0 }).unwrap()[0].drift.pass);
        let e = compare(&[out("y", &[0, 4], &[])], &[out("y", &[0, 4], &[])], Criterion::Allclose { atol: 1.0, rtol: 1.0 }).unwrap_err().to_string();
        assert!(e.contains("no elements"), "{e}");
    }

    #[test]
    fn issue_hostile_an_output_missing_from_the_reference_is_an_error() {
        let actual = [out("a", &[1], &[1.0]), out("b", &[1], &[1.0])];
        let e = compare(&actual, &[out("a", &[1], &[1.0]), out("c", &[1], &[1.0])], Criterion::Allclose { atol: 1.0, rtol: 1.0 }).unwrap_err().to_string();
        assert!(e.starts_with("output `b`: missing from the reference, which has: a, c"), "{e}");
        // Generic reference names match by position.
        let r = compare(&actual, &[out("output_0", &[1], &[1.0]), out("output_1", &[1], &[1.0])], Criterion::Allclose { atol: 1.0, rtol: 1.0 }).unwrap();
        assert!(r.iter().all(|r| r.drift.pass));
    }
}
