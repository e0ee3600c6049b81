//! Compressed weights as coremltools writes them, decompressed once when a package is read:
//! each `constexpr_*` op becomes a `const` holding its dense value, so the type checker, the
//! interpreter, `validate` and `lint-ane` see ordinary weights, and nothing is decompressed per
//! run. What was stored is kept in [`Compressed`] for `inspect`. Called by `package::read`.
//!
//! - iOS16 forms (values as attributes): `constexpr_affine_dequantize` (per tensor or channel),
//!   `constexpr_lut_to_dense` (one table, `shape` given), `constexpr_sparse_to_dense` (bit mask,
//!   `shape` given), `constexpr_cast`.
//! - iOS18 forms (values as inputs, sub-byte dtypes): `constexpr_blockwise_shift_scale` (int4/
//!   int8 per block: `scale · (data − offset)`), `constexpr_lut_to_dense` (a table per block of
//!   grouped channels, vector tables along `vector_axis`), `constexpr_sparse_to_dense` (uint1
//!   mask of the dense shape), and the joint forms `constexpr_lut_to_sparse` and
//!   `constexpr_sparse_blockwise_shift_scale` (two outputs: mask and non-zero values) that feed
//!   a `constexpr_sparse_to_dense`.
//!
//! Semantics, bit order and rounding follow coremltools 9.0 (`ops/defs/iOS16/constexpr_ops.py`,
//! `ops/defs/iOS18/compression.py` `decompress`, `optimize/_utils.py`: sub-byte values LSB
//! first; fp16 arithmetic rounded after each step as numpy does), so the dense weights equal
//! coremltools' own decompression bit for bit.

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
    /// For a table per group of output channels (iOS18 `constexpr_lut_to_dense` with blocks
    /// along axis 0): the channels sharing one table. Read by lint rule ANE013.
    pub rows_per_table: Option<usize>,
    /// For scales per block of input channels (iOS18 `constexpr_blockwise_shift_scale` with
    /// more than one block along axis 1): the blocks per output channel. Read by ANE014.
    pub blocks_per_row: Option<usize>,
}

/// Replaces every `constexpr_*` op in `f`'s top block by `const`s of its values (one per
/// output); returns what was compressed, one entry per weight the program reads (a joint form's
/// stored bytes counted in the weight it feeds). An error names the op and what is wrong with
/// its inputs.
pub fn fold(f: &mut Function) -> Result<Vec<Compressed>, String> {
    let mut consts: std::collections::HashMap<String, Tensor> = std::collections::HashMap::new();
    // Bytes stored behind each constexpr output (its own inputs plus those of constexpr inputs),
    // and its granularity (`Compressed::rows_per_table`, `blocks_per_row`).
    let mut stored_behind: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut detail_behind: std::collections::HashMap<String, (Option<usize>, Option<usize>)> = std::collections::HashMap::new();
    let mut found = Vec::new();
    let mut folded_ops = Vec::with_capacity(f.block.operations.len());
    for op in std::mem::take(&mut f.block.operations) {
        if let (Some(v), [out]) = (op.const_val(), op.outputs.as_slice()) {
            consts.insert(out.name.clone(), v.clone());
            folded_ops.push(op);
            continue;
        }
        if !op.op_type.starts_with("constexpr_") {
            folded_ops.push(op);
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
        let opt = |p: &str| if has(p) { arg(p).map(Some) } else { Ok(None) };
        // Bytes stored for the given parameters: a constant's own, or what stands behind a
        // constexpr output.
        let stored_of = |params: &[&str]| -> usize {
            params
                .iter()
                .map(|p| match op.inputs.iter().find(|(n, _)| n == p).and_then(|(_, a)| a.first()) {
                    Some(Argument::Name(n)) => stored_behind.get(n).copied().unwrap_or_else(|| consts.get(n).map_or(0, Tensor::byte_len)),
                    _ => op.attributes.get(*p).map_or(0, Tensor::byte_len),
                })
                .sum()
        };
        // Granularity: from this op's table or scales, else from a constexpr input's.
        let inherited = op.inputs.iter().flat_map(|(_, a)| a).find_map(|a| match a {
            Argument::Name(n) => detail_behind.get(n).copied(),
            Argument::Value(_) => None,
        });
        let own = |t: Result<&Tensor, String>, axis: usize| t.ok().and_then(|t| t.shape().get(axis).copied()).filter(|&n| n > 1);
        let detail = match op.op_type.as_str() {
            "constexpr_lut_to_dense" | "constexpr_lut_to_sparse" if !has("shape") => {
                let rows = if op.op_type == "constexpr_lut_to_dense" { arg("indices") } else { arg("indices_mask") }.ok().and_then(|t| t.shape().first().copied());
                let tables = own(arg("lut"), 0);
                (rows.zip(tables).map(|(r, t)| r / t), None)
            }
            "constexpr_blockwise_shift_scale" | "constexpr_sparse_blockwise_shift_scale" => (None, own(arg("scale"), 1)),
            _ => inherited.unwrap_or_default(),
        };
        let axis_of = |p: &str| -> Result<Option<i64>, String> { opt(p)?.map(|t| t.as_i64().ok_or(format!("`{p}` is not an integer"))).transpose() };
        let (values, kind, stored): (Vec<Tensor>, &'static str, usize) = match op.op_type.as_str() {
            "constexpr_blockwise_shift_scale" => {
                let (data, scale, offset) = (arg("data").map_err(fail)?, arg("scale").map_err(fail)?, opt("offset").map_err(fail)?);
                (vec![shift_scale(data, scale, offset).map_err(fail)?], "quantized", stored_of(&["data", "scale", "offset"]))
            }
            "constexpr_lut_to_dense" if !has("shape") => {
                let (indices, lut) = (arg("indices").map_err(fail)?, arg("lut").map_err(fail)?);
                let axis = axis_of("vector_axis").map_err(fail)?;
                (vec![lut_to_dense_blocks(indices, lut, axis).map_err(fail)?], "palettized", stored_of(&["indices", "lut"]))
            }
            "constexpr_sparse_to_dense" if !has("shape") => {
                let (data, mask) = (arg("nonzero_data").map_err(fail)?, arg("mask").map_err(fail)?);
                (vec![scatter(data, mask).map_err(fail)?], "sparse", stored_of(&["nonzero_data", "mask"]))
            }
            "constexpr_lut_to_sparse" => {
                let (mask, nonzero, lut) = (arg("indices_mask").map_err(fail)?, arg("indices_nonzero_data").map_err(fail)?, arg("lut").map_err(fail)?);
                let axis = axis_of("vector_axis").map_err(fail)?;
                let dense = lut_to_dense_blocks(&scatter(nonzero, mask).map_err(fail)?, lut, axis).map_err(fail)?;
                let mask = match (axis, lut.shape().last()) {
                    (Some(a), Some(&v)) if v > 1 => repeat_along(mask, a, v).map_err(fail)?,
                    _ => mask.clone(),
                };
                (vec![mask.clone(), gather_set(&dense, &mask).map_err(fail)?], "sparse palettized", stored_of(&["indices_mask", "indices_nonzero_data", "lut"]))
            }
            "constexpr_sparse_blockwise_shift_scale" => {
                let (mask, nonzero, scale, offset) = (arg("data_mask").map_err(fail)?, arg("nonzero_data").map_err(fail)?, arg("scale").map_err(fail)?, opt("offset").map_err(fail)?);
                let dense = shift_scale(&scatter(nonzero, mask).map_err(fail)?, scale, offset).map_err(fail)?;
                (vec![mask.clone(), gather_set(&dense, mask).map_err(fail)?], "sparse quantized", stored_of(&["data_mask", "nonzero_data", "scale", "offset"]))
            }
            "constexpr_affine_dequantize" => {
                let (q, zp, scale) = (arg("quantized_data").map_err(fail)?, arg("zero_point").map_err(fail)?, arg("scale").map_err(fail)?);
                let axis = arg("axis").map_err(fail)?.as_i64().ok_or_else(|| fail("`axis` is not an integer".into()))?;
                (vec![dequantize(q, zp, scale, axis).map_err(fail)?], "quantized", q.byte_len() + zp.byte_len() + scale.byte_len())
            }
            "constexpr_lut_to_dense" => {
                let (lut, indices, shape) = (arg("lut").map_err(fail)?, arg("indices").map_err(fail)?, arg("shape").map_err(fail)?);
                (vec![lut_to_dense(lut, indices, shape).map_err(fail)?], "palettized", lut.byte_len() + indices.byte_len())
            }
            "constexpr_sparse_to_dense" => {
                let (data, mask, shape) = (arg("nonzero_data").map_err(fail)?, arg("mask").map_err(fail)?, arg("shape").map_err(fail)?);
                (vec![sparse_to_dense(data, mask, shape).map_err(fail)?], "sparse", stored_of(&["nonzero_data", "mask"]))
            }
            "constexpr_cast" => {
                let src = arg("source_val").map_err(fail)?;
                let to = arg("output_dtype").map_err(fail)?.as_str().unwrap_or_default().to_string();
                (vec![cast(src, &to).map_err(fail)?], "cast", src.byte_len())
            }
            other => return Err(fail(format!("{other} is not a compression op we know (coremltools 9.0 writes constexpr_affine_dequantize, _lut_to_dense, _sparse_to_dense, _cast, _blockwise_shift_scale, _lut_to_sparse, _sparse_blockwise_shift_scale)"))),
        };
        if values.len() != op.outputs.len() {
            return Err(fail(format!("has {} outputs, expected {}", op.outputs.len(), values.len())));
        }
        for (v, out) in values.iter().zip(&op.outputs) {
            if v.tensor_type() != *out.ty.tensor() {
                return Err(fail(format!("decompresses to {}, declared {}", v.tensor_type(), out.ty.tensor())));
            }
        }
        for (v, out) in values.into_iter().zip(&op.outputs) {
            found.push(Compressed { name: out.name.clone(), kind, stored_bytes: stored, dense_bytes: v.byte_len(), rows_per_table: detail.0, blocks_per_row: detail.1 });
            stored_behind.insert(out.name.clone(), stored);
            detail_behind.insert(out.name.clone(), detail);
            consts.insert(out.name.clone(), v.clone());
            folded_ops.push(Operation {
                op_type: "const".into(),
                name: if op.outputs.len() == 1 { op.name.clone() } else { out.name.clone() },
                inputs: Vec::new(),
                outputs: vec![out.clone()],
                attributes: [("val".to_string(), v)].into(),
                blocks: Vec::new(),
                source: op.source.clone(),
            });
        }
    }
    f.block.operations = folded_ops;
    // Inputs only the constexpr ops read (kept as consts by some writers), and the parts of a
    // joint form once its dense weight is made, are dropped; what is left is what the program reads.
    if !found.is_empty() {
        crate::passes::dead_code::sweep(f);
        let left = f.block.defined_names();
        found.retain(|c| left.contains(c.name.as_str()));
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

/// A tensor of `dtype` and `shape` from values: float dtypes rounded from f64 through f32 (the
/// values are already representable), integer ones packed as [`Tensor::from_ints`] does.
fn tensor_of(dtype: DType, shape: &[usize], v: &[f64]) -> Result<Tensor, String> {
    if dtype.is_float() {
        return floats(dtype, shape, &v.iter().map(|&x| x as f32).collect::<Vec<_>>());
    }
    let ints: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    Tensor::from_ints(dtype, shape, &ints).ok_or_else(|| format!("values of dtype {dtype} out of range"))
}

/// The values of a numeric tensor (any float or integer dtype, sub-byte included) as f64.
fn numbers(t: &Tensor, what: &str) -> Result<Vec<f64>, String> {
    if let Some(v) = t.to_f32_vec() {
        return Ok(v.into_iter().map(f64::from).collect());
    }
    t.to_i64_vec().map(|v| v.into_iter().map(|x| x as f64).collect()).ok_or_else(|| format!("`{what}` of dtype {} is not numeric", t.dtype()))
}

/// For each element of a tensor of shape `dims` (row-major), the flat index of its block in a
/// grid of `blocks` blocks per dimension; each of `dims` must be a multiple of its block count.
fn block_map(dims: &[usize], blocks: &[usize]) -> Result<Vec<usize>, String> {
    if dims.len() != blocks.len() || dims.iter().zip(blocks).any(|(&d, &b)| b == 0 || d % b != 0) {
        return Err(format!("{blocks:?} blocks do not divide shape {dims:?}"));
    }
    let size: Vec<usize> = dims.iter().zip(blocks).map(|(&d, &b)| d / b).collect();
    let n: usize = dims.iter().product();
    let mut coord = vec![0usize; dims.len()];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(coord.iter().zip(&size).zip(blocks).fold(0, |acc, ((&c, &s), &b)| acc * b + c / s));
        for d in (0..dims.len()).rev() {
            coord[d] += 1;
            if coord[d] < dims[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    Ok(out)
}

/// iOS18 `constexpr_blockwise_shift_scale`: `scale · (data − offset)` with `scale` and `offset`
/// repeated over blocks of `data`. As coremltools computes it: `data` cast to `scale`'s dtype,
/// each step rounded to that dtype.
fn shift_scale(data: &Tensor, scale: &Tensor, offset: Option<&Tensor>) -> Result<Tensor, String> {
    let round: fn(f64) -> f64 = match scale.dtype() {
        DType::F16 => |x| f64::from(f16::from_f64(x).to_f32()),
        DType::F32 => |x| f64::from(x as f32),
        d => return Err(format!("`scale` of dtype {d}, expected fp16 or fp32")),
    };
    let map = block_map(data.shape(), scale.shape())?;
    let (d, s) = (numbers(data, "data")?, numbers(scale, "scale")?);
    let o = match offset {
        Some(o) if o.shape() != scale.shape() => return Err(format!("`offset` of shape {:?}, `scale` {:?}", o.shape(), scale.shape())),
        Some(o) => Some(numbers(o, "offset")?),
        None => None,
    };
    let out: Vec<f64> = d
        .iter()
        .zip(&map)
        .map(|(&x, &b)| {
            let x = round(x);
            let x = o.as_ref().map_or(x, |o| round(x - o[b]));
            round(s[b] * x)
        })
        .collect();
    tensor_of(scale.dtype(), data.shape(), &out)
}

/// iOS18 `constexpr_lut_to_dense`: `indices` (uint1…uint8, the dense shape but for the vector
/// axis) pick entries of `lut` (shape `[blocks…, 2^nbits, vector size]`), one table per block of
/// the indices; vectors of more than one value are laid along `vector_axis`.
fn lut_to_dense_blocks(indices: &Tensor, lut: &Tensor, vector_axis: Option<i64>) -> Result<Tensor, String> {
    let dims = indices.shape().to_vec();
    let r = dims.len();
    let (Some(&palettes), Some(&vector)) = (lut.shape().get(r), lut.shape().get(r + 1)) else {
        return Err(format!("`lut` of shape {:?} for indices of rank {r}: needs rank {}", lut.shape(), r + 2));
    };
    if lut.shape().len() != r + 2 || palettes == 0 || vector == 0 {
        return Err(format!("`lut` of shape {:?} for indices of shape {dims:?}", lut.shape()));
    }
    let map = block_map(&dims, &lut.shape()[..r])?;
    let idx = indices.to_i64_vec().filter(|_| !indices.dtype().is_float()).ok_or("`indices` are not integers")?;
    if let Some(bad) = idx.iter().find(|&&i| i < 0 || i as usize >= palettes) {
        return Err(format!("index {bad} past a table of {palettes} entries"));
    }
    let table = numbers(lut, "lut")?;
    let mut out_dims = dims.clone();
    let axis = if vector > 1 {
        let a = vector_axis.ok_or("`vector_axis` is needed for vectors of more than one value")?;
        let a = if a < 0 { a + r as i64 } else { a };
        let a = usize::try_from(a).ok().filter(|&a| a < r).ok_or(format!("`vector_axis` out of range for rank {r}"))?;
        out_dims[a] = out_dims[a].checked_mul(vector).ok_or("too many elements")?;
        a
    } else {
        0
    };
    super::types::TensorType::new(DType::F32, &out_dims).size_problem().map_or(Ok(()), Err)?;
    let n: usize = out_dims.iter().product();
    let mut out = vec![0f64; n];
    // Element k of the indices covers `vector` outputs along `axis`: k's coordinate there times
    // `vector`, plus v.
    let inner: usize = out_dims[axis + 1..].iter().product();
    let (along, outer_in) = (dims[axis], dims[axis + 1..].iter().product::<usize>());
    for (k, (&i, &b)) in idx.iter().zip(&map).enumerate() {
        let (head, rest) = (k / (along * outer_in), k % (along * outer_in));
        let (c, tail) = (rest / outer_in, rest % outer_in);
        let base = head * out_dims[axis] * inner + c * vector * inner + tail;
        for v in 0..vector {
            out[base + v * inner] = table[(b * palettes + i as usize) * vector + v];
        }
    }
    tensor_of(lut.dtype(), &out_dims, &out)
}

/// iOS18 `constexpr_sparse_to_dense`: zeros of `mask`'s shape with `nonzero_data` placed, in
/// order, where `mask` is non-zero; the result has `nonzero_data`'s dtype.
fn scatter(data: &Tensor, mask: &Tensor) -> Result<Tensor, String> {
    let set = mask.to_i64_vec().ok_or("`mask` is not an integer tensor")?;
    let values = numbers(data, "nonzero_data")?;
    if data.shape().len() != 1 || set.iter().filter(|&&m| m != 0).count() != values.len() {
        return Err(format!("`mask` sets {} elements for {} values", set.iter().filter(|&&m| m != 0).count(), values.len()));
    }
    let mut next = values.iter();
    let out: Vec<f64> = set.iter().map(|&m| if m != 0 { next.next().copied().unwrap_or(0.0) } else { 0.0 }).collect();
    tensor_of(data.dtype(), mask.shape(), &out)
}

/// The values of `dense` where `mask` is non-zero, in order (a joint form's non-zero output).
fn gather_set(dense: &Tensor, mask: &Tensor) -> Result<Tensor, String> {
    let set = mask.to_i64_vec().ok_or("`mask` is not an integer tensor")?;
    let values = numbers(dense, "values")?;
    if set.len() != values.len() {
        return Err(format!("mask of {} elements for {} values", set.len(), values.len()));
    }
    let kept: Vec<f64> = values.iter().zip(&set).filter(|(_, &m)| m != 0).map(|(&v, _)| v).collect();
    tensor_of(dense.dtype(), &[kept.len()], &kept)
}

/// `t` with each element repeated `times` along `axis` (numpy's `repeat`).
fn repeat_along(t: &Tensor, axis: i64, times: usize) -> Result<Tensor, String> {
    let dims = t.shape().to_vec();
    let r = dims.len() as i64;
    let a = usize::try_from(if axis < 0 { axis + r } else { axis }).ok().filter(|&a| a < dims.len()).ok_or(format!("`vector_axis` out of range for rank {r}"))?;
    let values = numbers(t, "mask")?;
    let inner: usize = dims[a + 1..].iter().product();
    let mut out = Vec::with_capacity(values.len() * times);
    for chunk in values.chunks(inner.max(1)) {
        for _ in 0..times {
            out.extend_from_slice(chunk);
        }
    }
    let mut out_dims = dims;
    out_dims[a] *= times;
    tensor_of(t.dtype(), &out_dims, &out)
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
