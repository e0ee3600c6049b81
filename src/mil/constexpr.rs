//! Compressed weights as coremltools writes them (iOS16 `constexpr_*` ops: palettized, linearly
//! quantized, sparse, cast), decompressed once when a package is read: each such op becomes a
//! `const` holding its dense value, so the type checker, the interpreter, `validate` and
//! `lint-ane` see ordinary weights, and nothing is decompressed per run. What was stored is
//! kept in [`Compressed`] for `inspect`. Semantics and bit order: coremltools 9.0
//! `ops/defs/iOS16/constexpr_ops.py` (`decompress`) and `optimize/_utils.py`
//! (`restore_elements_from_packed_bits`: LSB first). Called by `package::read`.
//!
//! The iOS18 forms (`constexpr_blockwise_shift_scale`, grouped-channel `constexpr_lut_to_dense`,
//! `constexpr_sparse_to_dense` with `mask`) are refused by name: not read yet.

use half::f16;

use super::{Argument, DType, Function, Operation, Tensor};

/// One weight a package stores compressed.
#[derive(Clone, Debug, PartialEq)]
pub struct Compressed {
    /// The constexpr op's output name (what the program reads).
    pub name: String,
    /// `palettized`, `quantized`, `sparse` or `cast`.
    pub kind: &'static str,
    /// Bytes the package stores for it (its inputs).
    pub stored_bytes: usize,
    /// Bytes of the dense value.
    pub dense_bytes: usize,
}

/// Replaces every iOS16 `constexpr_*` op in `f`'s top block by a `const` of its dense value;
/// returns what was compressed. An error names the op and what is wrong with its inputs.
pub fn fold(f: &mut Function) -> Result<Vec<Compressed>, String> {
    let mut consts: std::collections::HashMap<String, Tensor> = std::collections::HashMap::new();
    let mut found = Vec::new();
    for op in &mut f.block.operations {
        if let (Some(v), [out]) = (op.const_val(), op.outputs.as_slice()) {
            consts.insert(out.name.clone(), v.clone());
            continue;
        }
        if !op.op_type.starts_with("constexpr_") {
            continue;
        }
        // iOS16 constexpr ops carry their values as attributes; later forms as inputs.
        let arg = |p: &str| -> Result<&Tensor, String> {
            if let Some(t) = op.attributes.get(p) {
                return Ok(t);
            }
            match op.inputs.iter().find(|(n, _)| n == p).and_then(|(_, a)| a.first()) {
                Some(Argument::Value(t)) => Ok(t),
                Some(Argument::Name(n)) => consts.get(n).ok_or_else(|| format!("`{p}` is not a constant")),
                None => Err(format!("missing `{p}`")),
            }
        };
        let fail = |m: String| format!("op `{}` ({}): {m}", op.name, op.op_type);
        let has = |p: &str| op.attributes.contains_key(p) || op.inputs.iter().any(|(n, _)| n == p);
        let (dense, kind, stored) = match op.op_type.as_str() {
            "constexpr_affine_dequantize" => {
                let (q, zp, scale) = (arg("quantized_data").map_err(fail)?, arg("zero_point").map_err(fail)?, arg("scale").map_err(fail)?);
                let axis = arg("axis").map_err(fail)?.as_i64().ok_or_else(|| fail("`axis` is not an integer".into()))?;
                (dequantize(q, zp, scale, axis).map_err(fail)?, "quantized", q.byte_len() + zp.byte_len() + scale.byte_len())
            }
            "constexpr_lut_to_dense" if has("shape") => {
                let (lut, indices, shape) = (arg("lut").map_err(fail)?, arg("indices").map_err(fail)?, arg("shape").map_err(fail)?);
                (lut_to_dense(lut, indices, shape).map_err(fail)?, "palettized", lut.byte_len() + indices.byte_len())
            }
            "constexpr_sparse_to_dense" if has("shape") => {
                let (data, mask, shape) = (arg("nonzero_data").map_err(fail)?, arg("mask").map_err(fail)?, arg("shape").map_err(fail)?);
                (sparse_to_dense(data, mask, shape).map_err(fail)?, "sparse", data.byte_len() + mask.byte_len())
            }
            "constexpr_cast" => {
                let src = arg("source_val").map_err(fail)?;
                let to = arg("output_dtype").map_err(fail)?.as_str().unwrap_or_default().to_string();
                (cast(src, &to).map_err(fail)?, "cast", src.byte_len())
            }
            other => return Err(fail(format!("{other} in this form (iOS18 compression) is not supported yet; iOS16 palettized, quantized and sparse weights are"))),
        };
        let [out] = op.outputs.as_slice() else { return Err(fail("must have one output".into())) };
        if dense.tensor_type() != *out.ty.tensor() {
            return Err(fail(format!("decompresses to {}, declared {}", dense.tensor_type(), out.ty.tensor())));
        }
        found.push(Compressed { name: out.name.clone(), kind, stored_bytes: stored, dense_bytes: dense.byte_len() });
        consts.insert(out.name.clone(), dense.clone());
        *op = Operation {
            op_type: "const".into(),
            name: op.name.clone(),
            inputs: Vec::new(),
            outputs: op.outputs.clone(),
            attributes: [("val".to_string(), dense)].into(),
            blocks: Vec::new(),
            source: op.source.clone(),
        };
    }
    // Inputs only the constexpr ops read (kept as consts by some writers) are dropped.
    if !found.is_empty() {
        crate::passes::dead_code::sweep(f);
    }
    Ok(found)
}

/// The dimensions of a `shape` argument, checked against `elements` available.
fn dims(shape: &Tensor) -> Result<Vec<usize>, String> {
    let v = shape.to_i64_vec().ok_or("`shape` is not integer")?;
    let dims: Vec<usize> = v.iter().map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}"))).collect::<Result<_, _>>()?;
    super::types::TensorType::new(DType::F32, &dims).size_problem().map_or(Ok(dims), Err)
}

/// A float tensor of `dtype` (fp16 rounded to nearest even, or fp32) from f32 values.
fn floats(dtype: DType, shape: &[usize], v: &[f32]) -> Result<Tensor, String> {
    let bytes: Vec<u8> = match dtype {
        DType::F16 => v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        d => return Err(format!("values of dtype {d}, expected fp16 or fp32")),
    };
    Tensor::from_bytes(dtype, shape, bytes).map_err(|e| e.to_string())
}

/// `(q − zero_point) · scale`, both broadcast along `axis` when vectors; computed in f32 and
/// rounded to `scale`'s dtype, as coremltools' `dequantize_by_scale_and_zp` does.
fn dequantize(q: &Tensor, zp: &Tensor, scale: &Tensor, axis: i64) -> Result<Tensor, String> {
    let qv = q.to_i64_vec().filter(|_| matches!(q.dtype(), DType::U8 | DType::I8)).ok_or("`quantized_data` is not uint8/int8")?;
    let zv: Vec<f32> = match zp.dtype() {
        DType::U8 | DType::I8 => zp.to_i64_vec().unwrap_or_default().iter().map(|&z| z as f32).collect(),
        _ => zp.to_f32_vec().ok_or("`zero_point` is not numeric")?,
    };
    let sv = scale.to_f32_vec().ok_or("`scale` is not float")?;
    let shape = q.shape();
    let rank = shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    let axis = usize::try_from(axis).ok().filter(|&a| a < shape.len()).ok_or(format!("axis out of range for rank {rank}"))?;
    let (along, inner) = (shape[axis], shape[axis + 1..].iter().product::<usize>());
    for (what, n) in [("zero_point", zv.len()), ("scale", sv.len())] {
        if n != 1 && n != along {
            return Err(format!("`{what}` has {n} values for an axis of {along}"));
        }
    }
    let pick = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[(i / inner.max(1)) % along] };
    let out: Vec<f32> = qv.iter().enumerate().map(|(i, &x)| (x as f32 - pick(&zv, i)) * pick(&sv, i)).collect();
    floats(scale.dtype(), shape, &out)
}

/// `lut[index]` for each `nbits`-bit index packed LSB first in `indices` (nbits = log2 of the
/// lut size: 1, 2, 4, 6 or 8), shaped `shape`.
fn lut_to_dense(lut: &Tensor, indices: &Tensor, shape: &Tensor) -> Result<Tensor, String> {
    let dims = dims(shape)?;
    let n: usize = dims.iter().product();
    if !matches!(indices.dtype(), DType::U8 | DType::I8) || indices.shape().len() != 1 {
        return Err("`indices` must be a rank-1 uint8 tensor".into());
    }
    let entries = lut.len();
    if lut.shape().len() != 1 || !entries.is_power_of_two() || !(2..=256).contains(&entries) {
        return Err(format!("`lut` of shape {:?}: needs 2^nbits entries, nbits 1 to 8", lut.shape()));
    }
    let nbits = entries.trailing_zeros() as usize;
    let packed = indices.bytes();
    if packed.len() * 8 < n * nbits {
        return Err(format!("{} bytes of indices hold fewer than {n} {nbits}-bit indices", packed.len()));
    }
    let index = |k: usize| (0..nbits).fold(0usize, |acc, b| {
        let bit = k * nbits + b;
        acc | (usize::from(packed[bit / 8] >> (bit % 8) & 1) << b)
    });
    match lut.dtype() {
        DType::F16 | DType::F32 => {
            let table = lut.to_f32_vec().unwrap_or_default();
            let out: Vec<f32> = (0..n).map(|k| table[index(k)]).collect();
            floats(lut.dtype(), &dims, &out)
        }
        DType::U8 | DType::I8 => {
            let table = lut.bytes();
            Tensor::from_bytes(lut.dtype(), &dims, (0..n).map(|k| table[index(k)]).collect()).map_err(|e| e.to_string())
        }
        d => Err(format!("`lut` of dtype {d}")),
    }
}

/// Zeros of `shape` with `nonzero_data` placed, in order, where the LSB-first bit `mask` is set.
fn sparse_to_dense(data: &Tensor, mask: &Tensor, shape: &Tensor) -> Result<Tensor, String> {
    let dims = dims(shape)?;
    let n: usize = dims.iter().product();
    let bits = mask.bytes();
    if mask.dtype() != DType::U8 || bits.len() * 8 < n {
        return Err(format!("`mask` must be uint8 with at least {n} bits"));
    }
    let values = data.to_f32_vec().ok_or("`nonzero_data` is not float")?;
    let set = (0..n).filter(|&k| bits[k / 8] >> (k % 8) & 1 == 1).count();
    if set != values.len() {
        return Err(format!("`mask` sets {set} bits for {} values", values.len()));
    }
    let mut next = values.iter();
    let out: Vec<f32> = (0..n).map(|k| if bits[k / 8] >> (k % 8) & 1 == 1 { *next.next().unwrap_or(&0.0) } else { 0.0 }).collect();
    floats(data.dtype(), &dims, &out)
}

/// `source_val` (fp16) as `to` (`fp32`).
fn cast(src: &Tensor, to: &str) -> Result<Tensor, String> {
    match (src.dtype(), to) {
        (DType::F16, "fp32") => floats(DType::F32, src.shape(), &src.to_f32_vec().unwrap_or_default()),
        (d, t) => Err(format!("cast of {d} to `{t}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bit_indices_unpack_lsb_first() {
        let lut = Tensor::from_f32(&[16], &(0..16).map(|i| i as f32).collect::<Vec<_>>());
        // 0x21 → indices 1, 2; 0x43 → 3, 4 (low nibble first).
        let idx = Tensor::from_bytes(DType::U8, &[2], vec![0x21, 0x43]).unwrap();
        let dense = lut_to_dense(&lut, &idx, &Tensor::from_i32(&[2], &[2, 2])).unwrap();
        assert_eq!(dense.to_f32_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        let short = Tensor::from_bytes(DType::U8, &[1], vec![0x21]).unwrap();
        assert!(lut_to_dense(&lut, &short, &Tensor::from_i32(&[2], &[2, 2])).is_err());
    }

    #[test]
    fn per_channel_dequantization_and_bad_sizes() {
        let q = Tensor::from_bytes(DType::U8, &[2, 2], vec![10, 20, 30, 40]).unwrap();
        let zp = Tensor::from_bytes(DType::U8, &[2], vec![10, 20]).unwrap();
        let scale = Tensor::from_f32(&[2], &[0.5, 2.0]);
        assert_eq!(dequantize(&q, &zp, &scale, 0).unwrap().to_f32_vec().unwrap(), vec![0.0, 5.0, 20.0, 40.0]);
        assert!(dequantize(&q, &zp, &Tensor::from_f32(&[3], &[1.0; 3]), 0).is_err());
        assert!(dequantize(&q, &zp, &scale, 5).is_err());
    }
}
