//! Ops that move data without arithmetic: `const`, `reshape`, `transpose`, `expand_dims`,
//! `squeeze`, `concat`, `stack`, `split`, `slice_by_index`, `slice_by_size`, `gather`,
//! `gather_along_axis`, `tile`, `pad`, `identity`, `fill`, `range_1d`, `band_part`, `cumsum`,
//! `upsample_nearest_neighbor`, `upsample_bilinear`, `pixel_shuffle`, `pixel_unshuffle`, `scatter_along_axis`. Semantics: coremltools `defs/iOS15/tensor_transformation.py`,
//! `tensor_operation.py`, `scatter_gather.py`, `image_resizing.py`, and their iOS16/iOS17
//! revisions. Movement kernels compute an index map (numeric's layout functions applied to
//! `0..n`) and then [`take`] it from whatever storage the tensor has.

use super::{
    Array, Data, EvalArgs, EvalError, OpArgs, OpDef, Param, TypeError, ANY_TENSOR, BOOL, INT, INT32, NUMERIC, STRING,
};
use crate::mil::types::{checked_elements, DType, Dim, TensorType, MAX_RANK};
use crate::mil::Opset;
use crate::numeric;

type Eval = Result<Vec<Array>, EvalError>;

/// `0..n`: the identity index map that layout functions permute.
fn iota(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Elements of `d` at `idx` (every index in range), same storage kind.
pub fn take(d: &Data, idx: &[usize]) -> Data {
    match d {
        Data::F32(v) => Data::F32(idx.iter().map(|&i| v[i]).collect()),
        Data::I32(v) => Data::I32(idx.iter().map(|&i| v[i]).collect()),
        Data::Bool(v) => Data::Bool(idx.iter().map(|&i| v[i]).collect()),
        Data::Str(v) => Data::Str(idx.iter().map(|&i| v[i].clone()).collect()),
    }
}

/// `x` rearranged by the index map `idx` into `shape`.
fn moved(x: &Array, shape: Vec<usize>, idx: &[usize]) -> Array {
    Array { dtype: x.dtype, shape, data: take(&x.data, idx) }
}

/// `x` with a new shape and the same elements.
fn reshaped(x: &Array, shape: Vec<usize>) -> Array {
    Array { dtype: x.dtype, shape, data: x.data.clone() }
}

/// The elements of several arrays of one storage kind, end to end.
fn concat_data(a: &EvalArgs, parts: &[&Array]) -> Result<Data, EvalError> {
    let mut out = match parts.first().map(|p| &p.data) {
        Some(Data::F32(_)) => Data::F32(Vec::new()),
        Some(Data::I32(_)) => Data::I32(Vec::new()),
        Some(Data::Bool(_)) => Data::Bool(Vec::new()),
        Some(Data::Str(_)) => Data::Str(Vec::new()),
        None => return Err(a.invalid("no values")),
    };
    for p in parts {
        match (&mut out, &p.data) {
            (Data::F32(o), Data::F32(v)) => o.extend_from_slice(v),
            (Data::I32(o), Data::I32(v)) => o.extend_from_slice(v),
            (Data::Bool(o), Data::Bool(v)) => o.extend_from_slice(v),
            (Data::Str(o), Data::Str(v)) => o.extend_from_slice(v),
            _ => return Err(a.invalid("values have different dtypes")),
        }
    }
    Ok(out)
}

/// `const`: a literal; its value and type are the `val` attribute. Has no inputs.
pub const CONST: OpDef =
    OpDef { name: "const", since: Opset::Ios15, params: &[], infer: infer_const, eval: eval_const };

fn eval_const(a: &EvalArgs) -> Eval {
    let val = a.attributes.get("val").ok_or_else(|| a.invalid("missing attribute `val`"))?;
    Ok(vec![Array::from_tensor(val).map_err(|m| a.invalid(m))?])
}

fn infer_const(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let val = a.attributes.get("val").ok_or_else(|| a.invalid("missing attribute `val`"))?;
    Ok(vec![val.tensor_type()])
}

/// `reshape`: same elements, new shape; `-1` is inferred, `0` copies an input dim
/// (iOS15/16: the same index; iOS17+: counted from the right, or 1 when out of range).
pub const RESHAPE: OpDef = OpDef {
    name: "reshape",
    since: Opset::Ios15,
    params: &[Param::new("x", ANY_TENSOR), Param::new("shape", INT)],
    infer: infer_reshape,
    eval: eval_reshape,
};

/// `n` as the rank of an output whose shape comes from a value's length (a `shape` vector),
/// refused past [`MAX_RANK`] before a shape of that many dims is allocated.
fn out_rank(a: &OpArgs, n: usize) -> Result<usize, TypeError> {
    if n > MAX_RANK {
        return Err(a.invalid(format!("a shape of {n} dims is more than the {MAX_RANK} allowed")));
    }
    Ok(n)
}

fn infer_reshape(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let Some(target) = a.ints("shape")? else {
        let st = a.tensor("shape")?;
        let [Dim::Fixed(n)] = st.shape[..] else {
            return Err(a.invalid("`shape` must be rank 1 with a static length"));
        };
        return Ok(vec![TensorType { dtype: x.dtype, shape: vec![Dim::Unknown; out_rank(a, n)?] }]);
    };
    out_rank(a, target.len())?;
    let rank = x.rank();
    if a.opset < Opset::Ios17 && target.contains(&0) && rank != target.len() {
        return Err(a.invalid(format!(
            "a 0 in shape needs x's rank {rank} to equal the target length {} (before iOS17)",
            target.len()
        )));
    }
    let mut dims: Vec<Option<usize>> = Vec::with_capacity(target.len());
    for (j, &t) in target.iter().enumerate() {
        dims.push(match t {
            -1 => None,
            0 if a.opset >= Opset::Ios17 => {
                let from_right = (rank + j).checked_sub(target.len());
                match from_right.map(|i| x.shape[i]) {
                    Some(Dim::Fixed(n)) => Some(n),
                    Some(Dim::Unknown) => {
                        return Ok(vec![TensorType { dtype: x.dtype, shape: vec![Dim::Unknown; target.len()] }])
                    }
                    None => Some(1),
                }
            }
            0 => match x.shape.get(j) {
                Some(Dim::Fixed(n)) => Some(*n),
                _ => return Err(a.invalid("`0` in shape needs a matching static input dim")),
            },
            t if t > 0 => Some(t as usize),
            t => return Err(a.invalid(format!("invalid target dim {t}"))),
        });
    }
    let unknowns = dims.iter().filter(|d| d.is_none()).count();
    if unknowns > 1 {
        return Err(a.invalid("more than one -1 in shape"));
    }
    let Some(total) = x.num_elements() else {
        return Ok(vec![TensorType {
            dtype: x.dtype,
            shape: dims.iter().map(|d| d.map_or(Dim::Unknown, Dim::Fixed)).collect(),
        }]);
    };
    let bad = || a.invalid(format!("cannot reshape {x} to {target:?}"));
    let known = checked_elements(&dims.iter().flatten().copied().collect::<Vec<_>>()).ok_or_else(bad)?;
    let shape: Vec<usize> = if unknowns == 1 {
        if known == 0 || total % known != 0 {
            return Err(bad());
        }
        dims.iter().map(|d| d.unwrap_or(total / known)).collect()
    } else {
        dims.iter().flatten().copied().collect()
    };
    if checked_elements(&shape) != Some(total) {
        return Err(bad());
    }
    Ok(vec![TensorType::new(x.dtype, &shape)])
}

/// `transpose`: permutes axes by `perm`.
pub const TRANSPOSE: OpDef = OpDef {
    name: "transpose",
    since: Opset::Ios15,
    params: &[Param::new("x", ANY_TENSOR), Param::new("perm", INT32).konst()],
    infer: infer_transpose,
    eval: eval_transpose,
};

fn infer_transpose(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let perm = a.ints("perm")?.unwrap_or_default();
    let axes = perm.iter().map(|&p| a.axis(p, x.rank())).collect::<Result<Vec<_>, _>>()?;
    let mut seen = axes.clone();
    seen.sort_unstable();
    if seen != (0..x.rank()).collect::<Vec<_>>() {
        return Err(a.invalid(format!("perm {perm:?} is not a permutation of rank {}", x.rank())));
    }
    Ok(vec![TensorType { dtype: x.dtype, shape: axes.iter().map(|&i| x.shape[i]).collect() }])
}

/// `expand_dims`: inserts size-1 axes at `axes` (indices into the output).
pub const EXPAND_DIMS: OpDef = OpDef {
    name: "expand_dims",
    since: Opset::Ios15,
    params: &[Param::new("x", ANY_TENSOR), Param::new("axes", INT32).konst()],
    infer: infer_expand_dims,
    eval: eval_expand_dims,
};

fn infer_expand_dims(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let axes = a.ints("axes")?.unwrap_or_default();
    let out_rank = x.rank() + axes.len();
    let mut at = axes.iter().map(|&ax| a.axis(ax, out_rank)).collect::<Result<Vec<_>, _>>()?;
    at.sort_unstable();
    at.dedup();
    if at.len() != axes.len() {
        return Err(a.invalid(format!("repeated axes {axes:?}")));
    }
    let mut rest = x.shape.iter();
    let shape =
        (0..out_rank).map(|i| if at.contains(&i) { Dim::Fixed(1) } else { *rest.next().unwrap_or(&Dim::Fixed(1)) });
    Ok(vec![TensorType { dtype: x.dtype, shape: shape.collect() }])
}

/// `squeeze`: removes size-1 axes (`axes`, or every size-1 axis when absent).
pub const SQUEEZE: OpDef = OpDef {
    name: "squeeze",
    since: Opset::Ios15,
    params: &[Param::new("x", ANY_TENSOR), Param::new("axes", INT32).konst().optional()],
    infer: infer_squeeze,
    eval: eval_squeeze,
};

fn infer_squeeze(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let drop: Vec<usize> = match a.ints("axes")? {
        Some(v) => v.iter().map(|&ax| a.axis(ax, x.rank())).collect::<Result<_, _>>()?,
        None => (0..x.rank()).filter(|&i| x.shape[i] == Dim::Fixed(1)).collect(),
    };
    if let Some(&i) = drop.iter().find(|&&i| !matches!(x.shape[i], Dim::Fixed(1) | Dim::Unknown)) {
        return Err(a.invalid(format!("axis {i} of {x} is not size 1")));
    }
    let shape = (0..x.rank()).filter(|i| !drop.contains(i)).map(|i| x.shape[i]).collect();
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

/// `concat`: joins `values` (a tuple) along `axis`; `interleave` alternates slices.
pub const CONCAT: OpDef = OpDef {
    name: "concat",
    since: Opset::Ios15,
    params: &[
        Param::t("values", ANY_TENSOR).variadic(),
        Param::new("axis", INT32).konst(),
        Param::new("interleave", BOOL).konst().optional(),
    ],
    infer: infer_concat,
    eval: eval_concat,
};

fn infer_concat(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let values = a.variadic("values");
    let Some(first) = values.first() else { return Err(a.invalid("no values")) };
    let rank = first.ty.rank();
    let axis = a.axis(a.int_or("axis", 0)?, rank)?;
    let mut shape = first.ty.shape.clone();
    shape[axis] = Dim::Fixed(0);
    for v in values {
        if v.ty.rank() != rank {
            return Err(a.invalid("values have different ranks"));
        }
        for (i, (s, d)) in shape.iter_mut().zip(&v.ty.shape).enumerate() {
            *s = match (i == axis, *s, *d) {
                (true, Dim::Fixed(x), Dim::Fixed(y)) => Dim::Fixed(x.saturating_add(y)),
                (true, _, _) => Dim::Unknown,
                (false, Dim::Fixed(x), Dim::Fixed(y)) if x != y => {
                    return Err(a.invalid(format!("values differ on axis {i} ({x} vs {y})")))
                }
                (false, s, _) => s,
            };
        }
    }
    Ok(vec![TensorType { dtype: first.ty.dtype, shape }])
}

/// `split`: cuts `x` along `axis` into `num_splits` equal parts or parts of `split_sizes`.
pub const SPLIT: OpDef = OpDef {
    name: "split",
    since: Opset::Ios15,
    params: &[
        Param::new("x", ANY_TENSOR),
        Param::new("num_splits", INT32).konst().optional(),
        Param::new("split_sizes", INT32).konst().optional(),
        Param::new("axis", INT32).konst(),
    ],
    infer: infer_split,
    eval: eval_split,
};

fn infer_split(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let axis = a.axis(a.int_or("axis", 0)?, x.rank())?;
    let Dim::Fixed(n) = x.shape[axis] else { return Err(a.invalid("split axis must be static")) };
    let too_many = |k: usize| a.invalid(format!("{k} parts are more than the {} an op may output", super::MAX_OUTPUTS));
    let sizes: Vec<usize> = match (a.ints("split_sizes")?, a.ints("num_splits")?) {
        (Some(s), _) if s.len() > super::MAX_OUTPUTS => return Err(too_many(s.len())),
        (Some(s), _) => s
            .iter()
            .map(|&v| usize::try_from(v).map_err(|_| a.invalid("negative split size")))
            .collect::<Result<_, _>>()?,
        (None, Some(k)) => match usize::try_from(k.first().copied().unwrap_or(0)) {
            Ok(k) if k > super::MAX_OUTPUTS => return Err(too_many(k)),
            Ok(k) if k > 0 && n % k == 0 => vec![n / k; k],
            _ => return Err(a.invalid(format!("cannot split {n} into {k:?} equal parts"))),
        },
        (None, None) => return Err(a.invalid("give num_splits or split_sizes")),
    };
    if sizes.iter().try_fold(0usize, |acc, &s| acc.checked_add(s)) != Some(n) {
        return Err(a.invalid(format!("split sizes do not add up to {n}")));
    }
    Ok(sizes
        .iter()
        .map(|&s| {
            let mut t = x.clone();
            t.shape[axis] = Dim::Fixed(s);
            t
        })
        .collect())
}

/// `slice_by_index`: Python-style strided slice per axis with begin/end/squeeze masks.
pub const SLICE_BY_INDEX: OpDef = OpDef {
    name: "slice_by_index",
    since: Opset::Ios15,
    params: &[
        Param::new("x", ANY_TENSOR),
        Param::new("begin", INT),
        Param::new("end", INT),
        Param::new("stride", INT).konst().optional(),
        Param::new("begin_mask", BOOL).konst().optional(),
        Param::new("end_mask", BOOL).konst().optional(),
        Param::new("squeeze_mask", BOOL).konst().optional(),
    ],
    infer: infer_slice_by_index,
    eval: eval_slice_by_index,
};

/// A dim as i64 (dims are at most `MAX_DIM`, so this never saturates in a checked program).
fn dim_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Length of the Python slice `begin:end:stride` over `n` elements, masks applied.
pub fn slice_len(n: i64, begin: i64, end: i64, stride: i64, begin_mask: bool, end_mask: bool) -> i64 {
    // In i128: `begin`, `end` and `stride` are any int64 a file holds (i64::MIN included), and
    // none of the sums below may wrap. The result is at most `n`, so it fits back.
    let (n, begin, end, stride) = (i128::from(n), i128::from(begin), i128::from(end), i128::from(stride));
    let clamp = |v: i128| {
        let v = if v < 0 { v + n } else { v };
        if stride > 0 {
            v.clamp(0, n)
        } else {
            v.clamp(-1, n - 1)
        }
    };
    let b = if begin_mask {
        if stride > 0 {
            0
        } else {
            n - 1
        }
    } else {
        clamp(begin)
    };
    let e = if end_mask {
        if stride > 0 {
            n
        } else {
            -1
        }
    } else {
        clamp(end)
    };
    let span = if stride > 0 { e - b } else { b - e };
    let s = stride.abs().max(1);
    i64::try_from(((span + s - 1) / s).max(0)).unwrap_or(i64::MAX)
}

fn infer_slice_by_index(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let r = x.rank();
    let mask = |p: &str| -> Result<Vec<bool>, TypeError> {
        Ok(a.ints(p)?.map(|v| v.iter().map(|&b| b != 0).collect()).unwrap_or_else(|| vec![false; r]))
    };
    let (bm, em, sm) = (mask("begin_mask")?, mask("end_mask")?, mask("squeeze_mask")?);
    let stride = a.ints("stride")?.unwrap_or_else(|| vec![1; r]);
    let (begin, end) = (a.ints("begin")?, a.ints("end")?);
    if [bm.len(), em.len(), sm.len(), stride.len()].iter().any(|&l| l != r) || stride.contains(&0) {
        return Err(a.invalid(format!("begin/end/stride/masks must have {r} entries and non-zero strides")));
    }
    let mut shape = Vec::with_capacity(r);
    for i in 0..r {
        if sm[i] {
            continue;
        }
        shape.push(match (x.shape[i], &begin, &end) {
            (Dim::Fixed(n), Some(b), Some(e)) if b.len() == r && e.len() == r => {
                Dim::Fixed(slice_len(dim_i64(n), b[i], e[i], stride[i], bm[i], em[i]).unsigned_abs() as usize)
            }
            (Dim::Fixed(n), _, _) if bm[i] && em[i] => {
                Dim::Fixed(slice_len(dim_i64(n), 0, 0, stride[i], true, true).unsigned_abs() as usize)
            }
            _ => Dim::Unknown,
        });
    }
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

/// Index dtypes of `slice_update`'s `begin`/`end`/`stride` (its type domain `U`).
const SLICE_UPDATE_INDEX: &[DType] = &[DType::I32, DType::I16, DType::I8];

/// `slice_update` (iOS18): `x` with the slice `slice_by_index` would read (same `begin`, `end`,
/// `stride` and masks) overwritten by `update`, which must have the slice's shape (rank ≥ 1).
/// `begin`/`end` may be computed (a KV cache written at a runtime position). Semantics:
/// coremltools `defs/iOS18/tensor_transformation.py`. Made by `hf::whisper`'s stateful decoder.
pub const SLICE_UPDATE: OpDef = OpDef {
    name: "slice_update",
    since: Opset::Ios18,
    params: &[
        Param::t("x", ANY_TENSOR),
        Param::t("update", ANY_TENSOR),
        Param { same_as: b'U', ..Param::new("begin", SLICE_UPDATE_INDEX) },
        Param { same_as: b'U', ..Param::new("end", SLICE_UPDATE_INDEX) },
        Param { same_as: b'U', ..Param::new("stride", SLICE_UPDATE_INDEX).konst().optional() },
        Param::new("begin_mask", BOOL).konst().optional(),
        Param::new("end_mask", BOOL).konst().optional(),
        Param::new("squeeze_mask", BOOL).konst().optional(),
    ],
    infer: infer_slice_update,
    eval: eval_slice_update,
};

fn infer_slice_update(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (x, update) = (a.tensor("x")?, a.tensor("update")?);
    let [slice] = infer_slice_by_index(a)?.try_into().map_err(|_| a.invalid("slice has no single type"))?;
    let fits = slice.rank() == update.rank()
        && slice.shape.iter().zip(&update.shape).all(|(s, u)| !matches!((s, u), (Dim::Fixed(p), Dim::Fixed(q)) if p != q));
    if !fits {
        return Err(a.invalid(format!("update {update} does not have the slice's shape {slice}")));
    }
    if update.rank() == 0 {
        return Err(a.invalid("a rank-0 update is not supported (coremltools rejects it)"));
    }
    Ok(vec![x.clone()])
}

const GATHER_X: &[DType] =
    &[DType::F16, DType::F32, DType::I32, DType::Bool, DType::I8, DType::U8, DType::I16, DType::U16];

/// `gather` (iOS15): rows of `x` along `axis` picked by `indices`.
pub const GATHER: OpDef = OpDef {
    name: "gather",
    since: Opset::Ios15,
    params: &[Param::new("x", GATHER_X), Param::new("indices", INT), Param::new("axis", INT32).konst().optional()],
    infer: infer_gather,
    eval: eval_gather,
};

/// `gather` (iOS16): adds `batch_dims`.
pub const GATHER_IOS16: OpDef = OpDef {
    name: "gather",
    since: Opset::Ios16,
    params: &[
        Param::new("x", GATHER_X),
        Param::new("indices", INT),
        Param::new("axis", INT32).konst().optional(),
        Param::new("batch_dims", INT32).konst().optional(),
    ],
    infer: infer_gather,
    eval: eval_gather,
};

/// `gather` (iOS17): adds `validate_indices`.
pub const GATHER_IOS17: OpDef = OpDef {
    name: "gather",
    since: Opset::Ios17,
    params: &[
        Param::new("x", GATHER_X),
        Param::new("indices", INT),
        Param::new("axis", INT32).konst().optional(),
        Param::new("batch_dims", INT32).konst().optional(),
        Param::new("validate_indices", BOOL).konst().optional(),
    ],
    infer: infer_gather,
    eval: eval_gather,
};

fn infer_gather(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (x, idx) = (a.tensor("x")?, a.tensor("indices")?);
    let axis = a.axis(a.int_or("axis", 0)?, x.rank())?;
    let batch = usize::try_from(a.int_or("batch_dims", 0)?).map_err(|_| a.invalid("negative batch_dims"))?;
    if batch > axis || batch > idx.rank() {
        return Err(a.invalid(format!("batch_dims {batch} exceeds axis {axis} or indices rank")));
    }
    let mut shape = x.shape[..axis].to_vec();
    shape.extend_from_slice(&idx.shape[batch..]);
    shape.extend_from_slice(&x.shape[axis + 1..]);
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

/// The concrete target of `reshape`: `-1` inferred, `0` copies an input dim (iOS15/16: same
/// index; iOS17+: counted from the right, 1 when out of range).
fn reshape_target(a: &EvalArgs, x: &[usize], target: &[i64]) -> Result<Vec<usize>, EvalError> {
    let total = numeric::numel(x);
    if a.opset < Opset::Ios17 && target.contains(&0) && x.len() != target.len() {
        return Err(a.invalid(format!(
            "a 0 in shape needs x's rank {} to equal the target length {} (before iOS17)",
            x.len(),
            target.len()
        )));
    }
    let mut dims: Vec<Option<usize>> = Vec::with_capacity(target.len());
    for (j, &t) in target.iter().enumerate() {
        dims.push(match t {
            -1 => None,
            0 if a.opset >= Opset::Ios17 => Some((x.len() + j).checked_sub(target.len()).map_or(1, |i| x[i])),
            0 => Some(*x.get(j).ok_or_else(|| a.invalid("`0` in shape has no matching input dim"))?),
            t if t > 0 => Some(t as usize),
            t => return Err(a.invalid(format!("invalid target dim {t}"))),
        });
    }
    let bad = || a.invalid(format!("cannot reshape {x:?} to {target:?}"));
    let known = checked_elements(&dims.iter().flatten().copied().collect::<Vec<_>>()).ok_or_else(bad)?;
    let shape: Vec<usize> = match dims.iter().filter(|d| d.is_none()).count() {
        0 => dims.iter().flatten().copied().collect(),
        1 if known > 0 && total % known == 0 => dims.iter().map(|d| d.unwrap_or(total / known)).collect(),
        _ => return Err(bad()),
    };
    if numeric::numel(&shape) != total {
        return Err(bad());
    }
    Ok(shape)
}

fn eval_reshape(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let target = a.ints("shape")?.ok_or_else(|| a.invalid("missing shape"))?;
    Ok(vec![reshaped(x, reshape_target(a, &x.shape, &target)?)])
}

fn eval_transpose(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let perm = a.ints("perm")?.unwrap_or_default();
    let perm = perm.iter().map(|&p| a.axis(p, x.shape.len())).collect::<Result<Vec<_>, _>>()?;
    let (idx, shape) =
        numeric::layout::transpose(&iota(x.len()), &x.shape, &perm).ok_or_else(|| a.shape_error("bad perm"))?;
    Ok(vec![moved(x, shape, &idx)])
}

fn eval_expand_dims(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let axes = a.ints("axes")?.unwrap_or_default();
    let out_rank = x.shape.len() + axes.len();
    let at = a.axes(Some(axes), out_rank)?;
    let mut rest = x.shape.iter();
    let shape = (0..out_rank).map(|i| if at.contains(&i) { 1 } else { rest.next().copied().unwrap_or(1) }).collect();
    Ok(vec![reshaped(x, shape)])
}

fn eval_squeeze(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let drop = match a.ints("axes")? {
        Some(v) => a.axes(Some(v), x.shape.len())?,
        None => (0..x.shape.len()).filter(|&i| x.shape[i] == 1).collect(),
    };
    let shape = (0..x.shape.len()).filter(|i| !drop.contains(i)).map(|i| x.shape[i]).collect();
    Ok(vec![reshaped(x, shape)])
}

/// Joins `parts` along `axis` through an index map over their end-to-end data.
fn join(a: &EvalArgs, parts: &[&Array], axis: usize, interleave: bool) -> Result<Array, EvalError> {
    let mut start = 0;
    let maps: Vec<Vec<usize>> = parts
        .iter()
        .map(|p| {
            let m: Vec<usize> = (start..start + p.len()).collect();
            start += p.len();
            m
        })
        .collect();
    let views: Vec<(&[usize], &[usize])> =
        maps.iter().zip(parts).map(|(m, p)| (m.as_slice(), p.shape.as_slice())).collect();
    let (idx, shape) =
        numeric::layout::concat(&views, axis, interleave).ok_or_else(|| a.shape_error("values do not fit together"))?;
    let all = concat_data(a, parts)?;
    Ok(Array { dtype: parts[0].dtype, shape, data: take(&all, &idx) })
}

fn eval_concat(a: &EvalArgs) -> Eval {
    let parts = a.variadic("values");
    let first = parts.first().ok_or_else(|| a.invalid("no values"))?;
    let axis = a.axis(a.int_or("axis", 0)?, first.shape.len())?;
    let interleave = a.bool_or("interleave", false)?;
    // Float data is joined by contiguous runs, not through an index array (attention heads and
    // KV caches are concatenated on every decoder step).
    let floats: Option<Vec<(&[f32], &[usize])>> = parts.iter().map(|p| Some((p.floats()?, p.shape.as_slice()))).collect();
    if let (Some(floats), false) = (floats, interleave) {
        let (data, shape) = numeric::layout::join(&floats, axis).ok_or_else(|| a.shape_error("values do not fit together"))?;
        return Ok(vec![Array::float(first.dtype, shape, data)]);
    }
    Ok(vec![join(a, parts, axis, interleave)?])
}

fn eval_split(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let axis = a.axis(a.int_or("axis", 0)?, x.shape.len())?;
    let n = x.shape[axis];
    let sizes: Vec<usize> = match (a.ints("split_sizes")?, a.int_or("num_splits", 0)?) {
        (Some(s), _) => s
            .iter()
            .map(|&v| usize::try_from(v).map_err(|_| a.invalid("negative split size")))
            .collect::<Result<_, _>>()?,
        (None, k) if k > 0 && n % k as usize == 0 => vec![n / k as usize; k as usize],
        _ => return Err(a.invalid(format!("cannot split {n} into the requested parts"))),
    };
    // Float data is split directly (contiguous runs copied), not through an index array: the
    // Whisper decoder splits its multi-megabyte caches on every step.
    if let Data::F32(v) = &x.data {
        let parts = numeric::layout::split(v, &x.shape, axis, &sizes).ok_or_else(|| a.shape_error("split sizes do not add up"))?;
        return Ok(parts.into_iter().map(|(data, shape)| Array::float(x.dtype, shape, data)).collect());
    }
    let parts = numeric::layout::split(&iota(x.len()), &x.shape, axis, &sizes)
        .ok_or_else(|| a.shape_error("split sizes do not add up"))?;
    Ok(parts.into_iter().map(|(idx, shape)| moved(x, shape, &idx)).collect())
}

/// Python's `slice(begin, end, step).indices(n)` (None = masked): returns (start, len).
fn py_slice(n: usize, begin: Option<i64>, end: Option<i64>, step: i64) -> (i64, usize) {
    let n = dim_i64(n);
    // i64::MIN has no negation; a step that large selects one element either way.
    let step = step.max(-i64::MAX);
    let fix = |v: i64, lo: i64, hi: i64| {
        let v = if v < 0 { v + n } else { v };
        v.clamp(lo, hi)
    };
    let (start, stop) = if step > 0 {
        (begin.map_or(0, |b| fix(b, 0, n)), end.map_or(n, |e| fix(e, 0, n)))
    } else {
        (begin.map_or(n - 1, |b| fix(b, -1, n - 1)), end.map_or(-1, |e| fix(e, -1, n - 1)))
    };
    // start and stop are clamped to [-1, n], so these differences cannot overflow.
    let len = if step > 0 && stop > start {
        (stop - start - 1) / step + 1
    } else if step < 0 && start > stop {
        (start - stop - 1) / (-step) + 1
    } else {
        0
    };
    (start, len as usize)
}

/// Exactly coremltools' `solve_slice_by_index_slice`: masked begin/end become `None`, a
/// squeezed axis is `slice(begin, None, INT32_MAX)` (one element) and is then dropped.
fn eval_slice_by_index(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let (idx, shape) = slice_index_map(a, &x.shape)?;
    Ok(vec![moved(x, shape, &idx)])
}

/// The flat indices into a tensor of `shape` that `slice_by_index`'s arguments select (in the
/// slice's row-major order) and the slice's shape; shared by `slice_by_index` and `slice_update`.
fn slice_index_map(a: &EvalArgs, shape: &[usize]) -> Result<(Vec<usize>, Vec<usize>), EvalError> {
    let r = shape.len();
    let begin = a.ints("begin")?.ok_or_else(|| a.invalid("missing begin"))?;
    let end = a.ints("end")?.ok_or_else(|| a.invalid("missing end"))?;
    let stride = a.ints("stride")?.unwrap_or_else(|| vec![1; r]);
    let mask = |p: &str| -> Result<Vec<bool>, EvalError> {
        Ok(a.ints(p)?.map(|v| v.iter().map(|&b| b != 0).collect()).unwrap_or_else(|| vec![false; r]))
    };
    let (bm, em, sm) = (mask("begin_mask")?, mask("end_mask")?, mask("squeeze_mask")?);
    if [begin.len(), end.len(), stride.len(), bm.len(), em.len(), sm.len()].iter().any(|&l| l != r)
        || stride.contains(&0)
    {
        return Err(a.invalid(format!("begin/end/stride/masks must have {r} entries and non-zero strides")));
    }
    let (mut start, mut step, mut len) = (Vec::with_capacity(r), Vec::with_capacity(r), Vec::with_capacity(r));
    for i in 0..r {
        let b = (!bm[i]).then_some(begin[i]);
        let (e, st) = if sm[i] { (None, i64::from(i32::MAX)) } else { ((!em[i]).then_some(end[i]), stride[i]) };
        let (s0, l) = py_slice(shape[i], b, e, st);
        if sm[i] && l != 1 {
            return Err(a.invalid(format!("squeezed axis {i} selects {l} elements")));
        }
        start.push(s0.max(0) as usize);
        step.push(st as isize);
        len.push(l);
    }
    let idx = numeric::layout::slice(&iota(numeric::numel(shape)), shape, &start, &step, &len);
    Ok((idx, (0..r).filter(|&i| !sm[i]).map(|i| len[i]).collect()))
}

/// `x` with the elements `slice_by_index` would select replaced by `update`, in order: the
/// numpy/torch assignment `x[begin:end:stride] = update` on a copy.
fn eval_slice_update(a: &EvalArgs) -> Eval {
    let (x, update) = (a.array("x")?, a.array("update")?);
    let (idx, shape) = slice_index_map(a, &x.shape)?;
    if update.shape != shape {
        return Err(a.shape_error(&format!("update must have the slice's shape {shape:?}")));
    }
    let mut out = x.clone();
    match (&mut out.data, &update.data) {
        (Data::F32(o), Data::F32(u)) => idx.iter().zip(u).for_each(|(&i, &v)| o[i] = v),
        (Data::I32(o), Data::I32(u)) => idx.iter().zip(u).for_each(|(&i, &v)| o[i] = v),
        (Data::Bool(o), Data::Bool(u)) => idx.iter().zip(u).for_each(|(&i, &v)| o[i] = v),
        _ => return Err(a.invalid("x and update hold different kinds of values")),
    }
    Ok(vec![out])
}

fn eval_gather(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let ind = a.array("indices")?;
    let indices = ind.to_i64_vec().ok_or_else(|| a.invalid("indices must be integers"))?;
    let axis = a.axis(a.int_or("axis", 0)?, x.shape.len())?;
    let batch = usize::try_from(a.int_or("batch_dims", 0)?).map_err(|_| a.invalid("negative batch_dims"))?;
    if batch > axis || batch > ind.shape.len() || x.shape[..batch] != ind.shape[..batch] {
        return Err(a.shape_error("batch_dims do not fit"));
    }
    let (nb, outer, n, inner) = (
        numeric::numel(&x.shape[..batch]),
        numeric::numel(&x.shape[batch..axis]),
        x.shape[axis],
        numeric::numel(&x.shape[axis + 1..]),
    );
    let per_batch = numeric::numel(&ind.shape[batch..]);
    let mut idx = Vec::with_capacity(nb * outer * per_batch * inner);
    for b in 0..nb {
        for o in 0..outer {
            for j in 0..per_batch {
                let k = indices[b * per_batch + j];
                let k = if k < 0 { k + n as i64 } else { k };
                if !(0..n as i64).contains(&k) {
                    return Err(
                        a.invalid(format!("index {} out of range for axis of size {n}", indices[b * per_batch + j]))
                    );
                }
                let base = ((b * outer + o) * n + k as usize) * inner;
                idx.extend(base..base + inner);
            }
        }
    }
    let mut shape = x.shape[..axis].to_vec();
    shape.extend_from_slice(&ind.shape[batch..]);
    shape.extend_from_slice(&x.shape[axis + 1..]);
    Ok(vec![moved(x, shape, &idx)])
}

/// `gather_nd` (iOS15): the last axis of `indices` (length k) indexes the first k axes of
/// `x`; the output is `indices.shape[:-1] + x.shape[k:]`. Made by `aten::index` with several
/// index tensors, whose index values do not depend on the sizes of `x` (flat row numbers would).
pub const GATHER_ND: OpDef = OpDef { name: "gather_nd", since: Opset::Ios15, params: &[Param::new("x", GATHER_X), Param::new("indices", INT)], infer: infer_gather_nd, eval: eval_gather_nd };

fn infer_gather_nd(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (x, idx) = (a.tensor("x")?, a.tensor("indices")?);
    let k = match idx.shape.last() {
        Some(Dim::Fixed(k)) if (1..=x.rank()).contains(k) => *k,
        _ => return Err(a.invalid(format!("indices {idx} must end in a static axis of 1 to x's rank {}", x.rank()))),
    };
    let mut shape = idx.shape[..idx.rank() - 1].to_vec();
    shape.extend_from_slice(&x.shape[k..]);
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

fn eval_gather_nd(a: &EvalArgs) -> Eval {
    let (x, ind) = (a.array("x")?, a.array("indices")?);
    let indices = ind.to_i64_vec().ok_or_else(|| a.invalid("indices must be integers"))?;
    let k = *ind.shape.last().ok_or_else(|| a.invalid("indices must have rank 1 or more"))?;
    if k == 0 || k > x.shape.len() {
        return Err(a.invalid(format!("{k} indices per element for a rank-{} x", x.shape.len())));
    }
    let inner = numeric::numel(&x.shape[k..]);
    let mut idx = Vec::with_capacity(indices.len() / k * inner);
    for tuple in indices.chunks(k) {
        let mut row = 0usize;
        for (d, &i) in tuple.iter().enumerate() {
            let n = x.shape[d];
            let j = if i < 0 { i + n as i64 } else { i };
            if !(0..n as i64).contains(&j) {
                return Err(a.invalid(format!("index {i} out of range for axis {d} of size {n}")));
            }
            row = row * n + j as usize;
        }
        idx.extend(row * inner..(row + 1) * inner);
    }
    let mut shape = ind.shape[..ind.shape.len() - 1].to_vec();
    shape.extend_from_slice(&x.shape[k..]);
    Ok(vec![moved(x, shape, &idx)])
}

fn infer_same(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    Ok(vec![a.tensor("x")?.clone()])
}

/// `identity`: x unchanged.
pub const IDENTITY: OpDef = OpDef {
    name: "identity",
    since: Opset::Ios15,
    params: &[Param::new("x", ANY_TENSOR)],
    infer: infer_same,
    eval: eval_identity,
};

fn eval_identity(a: &EvalArgs) -> Eval {
    Ok(vec![a.array("x")?.clone()])
}

/// `shape`: the dims of `x` as an int32 vector (rank 1, `x`'s rank long). With `gather`,
/// `mul`, `add` and `concat` it computes a size the program needs from an input whose dims
/// vary (`mil::merge` builds these for flexible inputs).
pub const SHAPE: OpDef = OpDef { name: "shape", since: Opset::Ios15, params: &[Param::new("x", ANY_TENSOR)], infer: infer_shape, eval: eval_shape };

fn infer_shape(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    Ok(vec![TensorType::new(DType::I32, &[a.tensor("x")?.rank()])])
}

fn eval_shape(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let dims = x.shape.iter().map(|&d| i32::try_from(d).map_err(|_| a.invalid(format!("dim {d} does not fit in int32")))).collect::<Result<Vec<_>, _>>()?;
    Ok(vec![Array::int(vec![dims.len()], dims)])
}

/// `stack`: joins equal-shaped `values` along a new axis `axis` (in `[−rank−1, rank]`).
pub const STACK: OpDef = OpDef {
    name: "stack",
    since: Opset::Ios15,
    params: &[Param::t("values", ANY_TENSOR).variadic(), Param::new("axis", INT32).konst()],
    infer: infer_stack,
    eval: eval_stack,
};

fn infer_stack(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let values = a.variadic("values");
    let Some(first) = values.first() else { return Err(a.invalid("no values")) };
    if values.iter().any(|v| v.ty.shape != first.ty.shape) {
        return Err(a.invalid("values must all have the same shape"));
    }
    let axis = a.axis(a.int_or("axis", 0)?, first.ty.rank() + 1)?;
    let mut shape = first.ty.shape.clone();
    shape.insert(axis, Dim::Fixed(values.len()));
    Ok(vec![TensorType { dtype: first.ty.dtype, shape }])
}

fn eval_stack(a: &EvalArgs) -> Eval {
    let parts = a.variadic("values");
    let first = parts.first().ok_or_else(|| a.invalid("no values"))?;
    let axis = a.axis(a.int_or("axis", 0)?, first.shape.len() + 1)?;
    let expanded: Vec<Array> = parts
        .iter()
        .map(|p| {
            let mut s = p.shape.clone();
            s.insert(axis.min(s.len()), 1);
            reshaped(p, s)
        })
        .collect();
    let refs: Vec<&Array> = expanded.iter().collect();
    Ok(vec![join(a, &refs, axis, false)?])
}

/// `slice_by_size`: the block starting at `begin` of extent `size` (`-1` = to the end).
pub const SLICE_BY_SIZE: OpDef = OpDef {
    name: "slice_by_size",
    since: Opset::Ios15,
    params: &[Param::new("x", ANY_TENSOR), Param::new("begin", INT32), Param::new("size", INT32)],
    infer: infer_slice_by_size,
    eval: eval_slice_by_size,
};

fn infer_slice_by_size(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let (Some(begin), Some(size)) = (a.ints("begin")?, a.ints("size")?) else {
        return Ok(vec![TensorType { dtype: x.dtype, shape: vec![Dim::Unknown; x.rank()] }]);
    };
    if begin.len() != x.rank() || size.len() != x.rank() {
        return Err(a.invalid(format!("begin and size need {} entries", x.rank())));
    }
    let shape = (0..x.rank())
        .map(|i| match (size[i], x.shape[i]) {
            (-1, Dim::Fixed(n)) => Ok(Dim::Fixed(n.saturating_sub(begin[i].max(0) as usize))),
            (-1, Dim::Unknown) => Ok(Dim::Unknown),
            (s, _) if s >= 0 => Ok(Dim::Fixed(s as usize)),
            (s, _) => Err(a.invalid(format!("invalid size {s}"))),
        })
        .collect::<Result<_, _>>()?;
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

fn eval_slice_by_size(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let r = x.shape.len();
    let begin = a.ints("begin")?.unwrap_or_default();
    let size = a.ints("size")?.unwrap_or_default();
    if begin.len() != r || size.len() != r {
        return Err(a.invalid(format!("begin and size need {r} entries")));
    }
    let mut len = Vec::with_capacity(r);
    let mut start = Vec::with_capacity(r);
    for i in 0..r {
        let b = usize::try_from(begin[i]).map_err(|_| a.invalid("negative begin"))?;
        let l = if size[i] == -1 { x.shape[i].saturating_sub(b) } else { size[i].max(0) as usize };
        if b + l > x.shape[i] {
            return Err(a.shape_error(&format!("slice {b}+{l} past the end of axis {i}")));
        }
        start.push(b);
        len.push(l);
    }
    let idx = numeric::layout::slice(&iota(x.len()), &x.shape, &start, &vec![1; r], &len);
    Ok(vec![moved(x, len, &idx)])
}

/// `tile`: repeats x `reps[i]` times along each axis (`reps` has one entry per axis).
pub const TILE: OpDef = OpDef {
    name: "tile",
    since: Opset::Ios15,
    params: &[Param::new("x", ANY_TENSOR), Param::new("reps", INT32)],
    infer: infer_tile,
    eval: eval_tile,
};

fn infer_tile(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let Some(reps) = a.ints("reps")? else {
        return Ok(vec![TensorType { dtype: x.dtype, shape: vec![Dim::Unknown; x.rank()] }]);
    };
    if reps.len() != x.rank() || reps.iter().any(|&r| r < 0) {
        return Err(a.invalid(format!("reps {reps:?} must have {} non-negative entries", x.rank())));
    }
    let shape = x
        .shape
        .iter()
        .zip(&reps)
        .map(|(d, &r)| match d {
            Dim::Fixed(n) => usize::try_from(r).ok().and_then(|r| n.checked_mul(r)).map(Dim::Fixed).ok_or_else(|| a.invalid(format!("tiling {n} by {r} overflows"))),
            Dim::Unknown => Ok(Dim::Unknown),
        })
        .collect::<Result<_, _>>()?;
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

fn eval_tile(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let reps = a.ints("reps")?.unwrap_or_default();
    let reps = reps
        .iter()
        .map(|&r| usize::try_from(r).map_err(|_| a.invalid("negative reps")))
        .collect::<Result<Vec<_>, _>>()?;
    let (idx, shape) =
        numeric::layout::tile(&iota(x.len()), &x.shape, &reps).ok_or_else(|| a.shape_error("reps do not fit x"))?;
    Ok(vec![moved(x, shape, &idx)])
}

/// Values `pad.mode` accepts.
pub const PAD_MODES: &[&str] = &["constant", "reflect", "replicate"];

/// `pad`: pads the last `len(pad)/2` axes by before/after pairs; `mode` constant (with
/// `constant_val`, default 0), reflect or replicate.
pub const PAD: OpDef = OpDef {
    name: "pad",
    since: Opset::Ios15,
    params: &[
        Param::t("x", &[DType::F16, DType::F32, DType::I32]),
        Param::new("pad", INT32),
        Param::new("mode", STRING).konst().optional(),
        Param::t("constant_val", &[DType::F16, DType::F32, DType::I32]).konst().optional(),
    ],
    infer: infer_pad,
    eval: eval_pad,
};

fn infer_pad(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    if let Some(mode) = a.string("mode") {
        if !PAD_MODES.contains(&mode) {
            return Err(a.invalid(format!("unknown mode `{mode}`")));
        }
    }
    let Some(pad) = a.ints("pad")? else {
        return Ok(vec![TensorType { dtype: x.dtype, shape: vec![Dim::Unknown; x.rank()] }]);
    };
    if pad.len() % 2 != 0 || pad.len() / 2 > x.rank() || pad.iter().any(|&p| p < 0) {
        return Err(
            a.invalid(format!("pad {pad:?} must be non-negative before/after pairs for at most {} axes", x.rank()))
        );
    }
    let first = x.rank() - pad.len() / 2;
    let mut shape = x.shape.clone();
    for (j, d) in shape.iter_mut().enumerate().skip(first) {
        if let Dim::Fixed(n) = d {
            let (before, after) = (pad[2 * (j - first)], pad[2 * (j - first) + 1]);
            let grown = before.checked_add(after).and_then(|p| usize::try_from(p).ok()).and_then(|p| n.checked_add(p));
            *n = grown.ok_or_else(|| a.invalid(format!("padding {n} by {before} and {after} overflows")))?;
        }
    }
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

fn eval_pad(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let r = x.shape.len();
    let pad = a.ints("pad")?.unwrap_or_default();
    if pad.len() % 2 != 0 || pad.len() / 2 > r || pad.iter().any(|&p| p < 0) {
        return Err(a.invalid(format!("bad pad {pad:?}")));
    }
    let first = r - pad.len() / 2;
    let (mut before, mut after) = (vec![0; r], vec![0; r]);
    for j in first..r {
        (before[j], after[j]) = (pad[2 * (j - first)] as usize, pad[2 * (j - first) + 1] as usize);
    }
    let mode = match a.string("mode").unwrap_or("constant") {
        "constant" => numeric::layout::PadMode::Constant,
        "reflect" => numeric::layout::PadMode::Reflect,
        "replicate" => numeric::layout::PadMode::Replicate,
        m => return Err(a.invalid(format!("unknown mode `{m}`"))),
    };
    let (idx, shape) = numeric::layout::pad(&iota(x.len()), &x.shape, &before, &after, mode, usize::MAX)
        .ok_or_else(|| a.shape_error("pad does not fit x (reflect needs pad < size)"))?;
    let value = a.get("constant_val").and_then(|v| v.to_f32_vec()).and_then(|v| v.first().copied()).unwrap_or(0.0);
    let data = match &x.data {
        Data::F32(v) => Data::F32(idx.iter().map(|&i| if i == usize::MAX { value } else { v[i] }).collect()),
        Data::I32(v) => Data::I32(idx.iter().map(|&i| if i == usize::MAX { value as i32 } else { v[i] }).collect()),
        _ => return Err(a.invalid(format!("cannot pad {} values", x.dtype))),
    };
    Ok(vec![Array { dtype: x.dtype, shape, data }])
}

/// `fill`: a tensor of shape `shape` (an int32 vector) filled with `value` (default 0.0 fp32).
pub const FILL: OpDef = OpDef {
    name: "fill",
    since: Opset::Ios15,
    params: &[
        Param::new("shape", INT32),
        Param::new("value", &[DType::F16, DType::F32, DType::I32, DType::Bool]).konst().optional(),
    ],
    infer: infer_fill,
    eval: eval_fill,
};

fn infer_fill(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let dtype = a.opt_tensor("value").map_or(DType::F32, |t| t.dtype);
    match a.ints("shape")? {
        Some(s) => {
            out_rank(a, s.len())?;
            let dims = s.iter().map(|&d| usize::try_from(d).map(Dim::Fixed)).collect::<Result<Vec<_>, _>>();
            Ok(vec![TensorType { dtype, shape: dims.map_err(|_| a.invalid("negative dim in shape"))? }])
        }
        None => match a.tensor("shape")?.shape[..] {
            [Dim::Fixed(n)] => Ok(vec![TensorType { dtype, shape: vec![Dim::Unknown; out_rank(a, n)?] }]),
            _ => Err(a.invalid("`shape` must be rank 1 with a static length")),
        },
    }
}

fn eval_fill(a: &EvalArgs) -> Eval {
    let shape = a.ints("shape")?.unwrap_or_default();
    let shape = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| a.invalid("negative dim in shape")))
        .collect::<Result<Vec<_>, _>>()?;
    let n = checked_elements(&shape).ok_or_else(|| a.invalid("shape has too many elements"))?;
    Ok(vec![match a.get("value") {
        None => Array::float(DType::F32, shape, vec![0.0; n]),
        Some(v) => {
            let data = match &v.data {
                Data::F32(e) => Data::F32(vec![e.first().copied().unwrap_or(0.0); n]),
                Data::I32(e) => Data::I32(vec![e.first().copied().unwrap_or(0); n]),
                Data::Bool(e) => Data::Bool(vec![e.first().copied().unwrap_or(false); n]),
                Data::Str(_) => return Err(a.invalid("cannot fill with strings")),
            };
            Array { dtype: v.dtype, shape, data }
        }
    }])
}

/// `range_1d`: `start, start+step, …` up to but excluding `end` (numpy `arange`).
pub const RANGE_1D: OpDef = OpDef {
    name: "range_1d",
    since: Opset::Ios15,
    params: &[Param::t("end", NUMERIC), Param::t("start", NUMERIC), Param::t("step", NUMERIC)],
    infer: infer_range_1d,
    eval: eval_range_1d,
};

/// numpy `arange` length: ⌈(end − start)/step⌉, at least 0.
fn range_len(start: f64, end: f64, step: f64) -> usize {
    ((end - start) / step).ceil().max(0.0) as usize
}

fn infer_range_1d(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let dtype = a.tensor("start")?.dtype;
    let scalar = |p: &str| {
        a.value(p).and_then(|t| {
            t.to_f32_vec()
                .map(|v| v.first().map(|&x| f64::from(x)))
                .or_else(|| t.to_i64_vec().map(|v| v.first().map(|&x| x as f64)))
                .flatten()
        })
    };
    match (scalar("start"), scalar("end"), scalar("step")) {
        (Some(_), Some(_), Some(0.0)) => Err(a.invalid("step must be non-zero")),
        (Some(s), Some(e), Some(st)) => Ok(vec![TensorType::new(dtype, &[range_len(s, e, st)])]),
        _ => Ok(vec![TensorType { dtype, shape: vec![Dim::Unknown] }]),
    }
}

fn eval_range_1d(a: &EvalArgs) -> Eval {
    let get = |p: &str| -> Result<f64, EvalError> {
        a.array(p)?
            .to_f32_vec()
            .and_then(|v| v.first().map(|&x| f64::from(x)))
            .ok_or_else(|| a.invalid(format!("`{p}` must be a number")))
    };
    let start = a.array("start")?;
    let (s, e, st) = (get("start")?, get("end")?, get("step")?);
    if st == 0.0 {
        return Err(a.invalid("step must be non-zero"));
    }
    let n = range_len(s, e, st);
    Ok(vec![match &start.data {
        Data::I32(v) => {
            let (s0, step) = (v.first().copied().unwrap_or(0), st as i32);
            Array::int(vec![n], (0..n).map(|i| s0.wrapping_add(step.wrapping_mul(i as i32))).collect())
        }
        _ => Array::float(start.dtype, vec![n], (0..n).map(|i| (s + st * i as f64) as f32).collect()),
    }])
}

/// `band_part`: keeps the band of the last two axes with `i − j ≤ lower` and `j − i ≤ upper`
/// (negative = unbounded), zeroes the rest (`torch.triu`/`tril` lower to it).
pub const BAND_PART: OpDef = OpDef {
    name: "band_part",
    since: Opset::Ios15,
    params: &[
        Param::new("x", &[DType::F16, DType::F32, DType::I32, DType::Bool]),
        Param::new("lower", INT32).konst().optional(),
        Param::new("upper", INT32).konst().optional(),
    ],
    infer: infer_same,
    eval: eval_band_part,
};

fn eval_band_part(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let (lower, upper) = (a.int_or("lower", -1)?, a.int_or("upper", -1)?);
    let r = x.shape.len();
    if r < 2 {
        return Err(a.shape_error("x must be rank ≥ 2"));
    }
    let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
    let keep: Vec<bool> = (0..x.len())
        .map(|k| {
            let (i, j) = (((k / cols.max(1)) % rows.max(1)) as i64, (k % cols.max(1)) as i64);
            (lower < 0 || i - j <= lower) && (upper < 0 || j - i <= upper)
        })
        .collect();
    let data = match &x.data {
        Data::F32(v) => Data::F32(v.iter().zip(&keep).map(|(&e, &k)| if k { e } else { 0.0 }).collect()),
        Data::I32(v) => Data::I32(v.iter().zip(&keep).map(|(&e, &k)| if k { e } else { 0 }).collect()),
        Data::Bool(v) => Data::Bool(v.iter().zip(&keep).map(|(&e, &k)| e && k).collect()),
        Data::Str(_) => return Err(a.invalid("cannot band strings")),
    };
    Ok(vec![Array { dtype: x.dtype, shape: x.shape.clone(), data }])
}

/// `cumsum`: running sum along `axis` (default 0); `exclusive` starts at 0, `reverse` runs
/// from the end.
pub const CUMSUM: OpDef = OpDef {
    name: "cumsum",
    since: Opset::Ios15,
    params: &[
        Param::new("x", NUMERIC),
        Param::new("axis", INT32).konst().optional(),
        Param::new("exclusive", BOOL).konst().optional(),
        Param::new("reverse", BOOL).konst().optional(),
    ],
    infer: infer_same,
    eval: eval_cumsum,
};

fn eval_cumsum(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let axis = a.axis(a.int_or("axis", 0)?, x.shape.len())?;
    let (ex, rev) = (a.bool_or("exclusive", false)?, a.bool_or("reverse", false)?);
    let mut out = x.clone();
    match &mut out.data {
        Data::F32(v) => numeric::reduce::cumsum(v, &x.shape, axis, ex, rev),
        Data::I32(v) => numeric::reduce::cumsum(v, &x.shape, axis, ex, rev),
        _ => return Err(a.invalid(format!("cannot sum {} values", x.dtype))),
    }
    Ok(vec![out])
}

/// `gather_along_axis`: `out[…, i, …] = x[…, indices[…, i, …], …]` along `axis` (torch
/// `gather`); `indices` has x's rank and the output its shape.
pub const GATHER_ALONG_AXIS: OpDef = OpDef {
    name: "gather_along_axis",
    since: Opset::Ios15,
    params: &[Param::new("x", GATHER_X), Param::new("indices", INT), Param::new("axis", INT32).konst().optional()],
    infer: infer_gather_along_axis,
    eval: eval_gather_along_axis,
};

fn infer_gather_along_axis(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (x, idx) = (a.tensor("x")?, a.tensor("indices")?);
    let axis = a.axis(a.int_or("axis", 0)?, x.rank())?;
    if idx.rank() != x.rank() {
        return Err(a.invalid("indices must have the rank of x"));
    }
    for i in 0..x.rank() {
        if let (Dim::Fixed(p), Dim::Fixed(q)) = (x.shape[i], idx.shape[i]) {
            if i != axis && p != q {
                return Err(a.invalid(format!("indices differ from x on axis {i}")));
            }
        }
    }
    Ok(vec![TensorType { dtype: x.dtype, shape: idx.shape.clone() }])
}

fn eval_gather_along_axis(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let ind = a.array("indices")?;
    let indices = ind.to_i64_vec().ok_or_else(|| a.invalid("indices must be integers"))?;
    let axis = a.axis(a.int_or("axis", 0)?, x.shape.len())?;
    if ind.shape.len() != x.shape.len() || (0..x.shape.len()).any(|i| i != axis && ind.shape[i] != x.shape[i]) {
        return Err(a.shape_error("indices do not fit x"));
    }
    let xs = numeric::strides(&x.shape);
    let is = numeric::strides(&ind.shape);
    let n = x.shape[axis] as i64;
    let mut idx = Vec::with_capacity(indices.len());
    for (flat, &k) in indices.iter().enumerate() {
        let k = if k < 0 { k + n } else { k };
        if !(0..n).contains(&k) {
            return Err(a.invalid(format!("index {k} out of range for axis of size {n}")));
        }
        let at: usize = (0..x.shape.len())
            .map(|i| if i == axis { k as usize * xs[i] } else { (flat / is[i]) % ind.shape[i] * xs[i] })
            .sum();
        idx.push(at);
    }
    Ok(vec![moved(x, ind.shape.clone(), &idx)])
}

/// `upsample_nearest_neighbor`: repeats the last two axes by `scale_factor_height` /
/// `scale_factor_width` (default 1); output size ⌊size·scale⌋, source index ⌊dst/scale⌋.
pub const UPSAMPLE_NEAREST_NEIGHBOR: OpDef = OpDef {
    name: "upsample_nearest_neighbor",
    since: Opset::Ios15,
    params: &[
        Param::new("x", super::FLOAT),
        Param::t("scale_factor_height", &[DType::I32, DType::F32]).konst().optional(),
        Param::t("scale_factor_width", &[DType::I32, DType::F32]).konst().optional(),
    ],
    infer: infer_upsample,
    eval: eval_upsample,
};

fn scales(a: &OpArgs) -> (f64, f64) {
    let get = |p: &str| {
        a.value(p)
            .and_then(|t| t.to_f32_vec().or_else(|| t.to_i64_vec().map(|v| v.iter().map(|&x| x as f32).collect())))
            .and_then(|v| v.first().map(|&x| f64::from(x)))
            .unwrap_or(1.0)
    };
    (get("scale_factor_height"), get("scale_factor_width"))
}

fn infer_upsample(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    if x.rank() < 3 {
        return Err(a.invalid(format!("x must be rank ≥ 3, got {x}")));
    }
    let (sh, sw) = scales(a);
    let mut shape = x.shape.clone();
    let r = shape.len();
    for (i, s) in [(r - 2, sh), (r - 1, sw)] {
        if let Dim::Fixed(n) = shape[i] {
            shape[i] = Dim::Fixed((n as f64 * s).floor() as usize);
        }
    }
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

fn eval_upsample(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let r = x.shape.len();
    if r < 3 {
        return Err(a.shape_error("x must be rank ≥ 3"));
    }
    let (sh, sw) =
        (f64::from(a.number_or("scale_factor_height", 1.0)?), f64::from(a.number_or("scale_factor_width", 1.0)?));
    let (h, w) = (x.shape[r - 2], x.shape[r - 1]);
    let (oh, ow) = ((h as f64 * sh).floor() as usize, (w as f64 * sw).floor() as usize);
    let planes = numeric::numel(&x.shape[..r - 2]);
    let mut idx = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        for i in 0..oh {
            let si = ((i as f64 / sh).floor() as usize).min(h.saturating_sub(1));
            for j in 0..ow {
                let sj = ((j as f64 / sw).floor() as usize).min(w.saturating_sub(1));
                idx.push((p * h + si) * w + sj);
            }
        }
    }
    let mut shape = x.shape.clone();
    (shape[r - 2], shape[r - 1]) = (oh, ow);
    Ok(vec![moved(x, shape, &idx)])
}

/// The ops of this family whose outputs only hold values copied from their inputs (or from
/// const parameters of the same dtype, like `pad`'s `constant_val` and `band_part`'s zeros):
/// an fp16 output of one of them is already fp16, so `interp::run` skips rounding it.
pub const MOVES_VALUES: &[&OpDef] = &[
    &CONST, &IDENTITY, &RESHAPE, &TRANSPOSE, &EXPAND_DIMS, &SQUEEZE, &CONCAT, &STACK, &SPLIT, &SLICE_BY_INDEX,
    &SLICE_BY_SIZE, &GATHER, &GATHER_IOS16, &GATHER_IOS17, &GATHER_ALONG_AXIS, &TILE, &PAD, &BAND_PART, &PIXEL_SHUFFLE,
    &PIXEL_UNSHUFFLE,
];

/// Whether `op_type` is in [`MOVES_VALUES`].
pub fn moves_values(op_type: &str) -> bool {
    MOVES_VALUES.iter().any(|d| d.name == op_type)
}

/// The ops of this family whose output holds exactly their input's elements in the same order,
/// under a new shape: `interp::run` hands such an op its input array itself, reshaped, when
/// nothing else reads the input afterwards.
pub const RESHAPES: &[&OpDef] = &[&RESHAPE, &EXPAND_DIMS, &SQUEEZE, &IDENTITY];

/// Whether `op_type` is in [`RESHAPES`].
pub fn is_reshape(op_type: &str) -> bool {
    RESHAPES.iter().any(|d| d.name == op_type)
}

/// `upsample_bilinear` (iOS15): bilinear resize of the last two axes by `scale_factor_height`
/// / `scale_factor_width` (default 1; output ⌊size·scale⌋). `align_corners` (default true)
/// samples `i·(in−1)/(out−1)`; false samples half-pixel centers `(i+½)·in/out − ½`, clamped
/// to `[0, in−1]` (torch's `align_corners=False` with a recomputed scale).
pub const UPSAMPLE_BILINEAR: OpDef = OpDef {
    name: "upsample_bilinear",
    since: Opset::Ios15,
    params: &[
        Param::new("x", super::FLOAT),
        Param::t("scale_factor_height", &[DType::I32, DType::F32]).konst().optional(),
        Param::t("scale_factor_width", &[DType::I32, DType::F32]).konst().optional(),
        Param::new("align_corners", BOOL).konst().optional(),
    ],
    infer: infer_upsample_bilinear,
    eval: eval_upsample_bilinear,
};

/// `upsample_bilinear` (iOS16): adds fp16 scales and `half_pixel_centers` (default
/// `!align_corners`); both false samples `i·in/out` (TensorFlow's legacy mode).
pub const UPSAMPLE_BILINEAR_IOS16: OpDef = OpDef {
    name: "upsample_bilinear",
    since: Opset::Ios16,
    params: &[
        Param::new("x", super::FLOAT),
        Param::t("scale_factor_height", &[DType::I32, DType::F16, DType::F32]).konst().optional(),
        Param::t("scale_factor_width", &[DType::I32, DType::F16, DType::F32]).konst().optional(),
        Param::new("align_corners", BOOL).konst().optional(),
        Param::new("half_pixel_centers", BOOL).konst().optional(),
    ],
    infer: infer_upsample_bilinear,
    eval: eval_upsample_bilinear,
};

fn infer_upsample_bilinear(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let align = a.bool_or("align_corners", true)?;
    if align && a.bool_or("half_pixel_centers", !align)? {
        return Err(a.invalid("align_corners and half_pixel_centers cannot both be true"));
    }
    infer_upsample(a)
}

/// Where output `i` of `out` samples an axis of `n`: the two source indices and the weight of
/// the second, computed in f32 like torch's `upsample_bilinear2d` kernel.
fn bilinear_taps(n: usize, out: usize, align: bool, half_pixel: bool) -> Vec<(usize, usize, f32)> {
    (0..out)
        .map(|i| {
            let src = if align {
                if out > 1 {
                    (n as f32 - 1.0) / (out as f32 - 1.0) * i as f32
                } else {
                    0.0
                }
            } else {
                let scale = n as f32 / out as f32;
                if half_pixel {
                    (scale * (i as f32 + 0.5) - 0.5).max(0.0)
                } else {
                    scale * i as f32
                }
            };
            let src = src.min(n.saturating_sub(1) as f32);
            let i0 = src.floor() as usize;
            let i1 = (i0 + 1).min(n.saturating_sub(1));
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

fn eval_upsample_bilinear(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let v = x.floats().ok_or_else(|| a.invalid("x must be float"))?;
    let r = x.shape.len();
    if r < 3 {
        return Err(a.shape_error("x must be rank ≥ 3"));
    }
    let (sh, sw) =
        (f64::from(a.number_or("scale_factor_height", 1.0)?), f64::from(a.number_or("scale_factor_width", 1.0)?));
    let align = a.bool_or("align_corners", true)?;
    let half = a.bool_or("half_pixel_centers", !align)?;
    let (h, w) = (x.shape[r - 2], x.shape[r - 1]);
    let (oh, ow) = ((h as f64 * sh).floor() as usize, (w as f64 * sw).floor() as usize);
    if h == 0 || w == 0 {
        return Err(a.shape_error("x has an empty spatial axis"));
    }
    let (th, tw) = (bilinear_taps(h, oh, align, half), bilinear_taps(w, ow, align, half));
    let planes = numeric::numel(&x.shape[..r - 2]);
    let mut out = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        let plane = &v[p * h * w..(p + 1) * h * w];
        for &(y0, y1, ly) in &th {
            for &(x0, x1, lx) in &tw {
                let top = plane[y0 * w + x0] * (1.0 - lx) + plane[y0 * w + x1] * lx;
                let bottom = plane[y1 * w + x0] * (1.0 - lx) + plane[y1 * w + x1] * lx;
                out.push(top * (1.0 - ly) + bottom * ly);
            }
        }
    }
    let mut shape = x.shape.clone();
    (shape[r - 2], shape[r - 1]) = (oh, ow);
    Ok(vec![Array::float(x.dtype, shape, out)])
}

/// `pixel_shuffle` (iOS15, torch `pixel_shuffle`): rank 4 `(N, C·f², H, W)` →
/// `(N, C, H·f, W·f)` with `out[n, c, h·f+i, w·f+j] = x[n, c·f²+i·f+j, h, w]`.
pub const PIXEL_SHUFFLE: OpDef = OpDef {
    name: "pixel_shuffle",
    since: Opset::Ios15,
    params: &[Param::new("x", super::FLOAT), Param::new("upscale_factor", INT32).konst()],
    infer: infer_pixel_shuffle,
    eval: eval_pixel_shuffle,
};

/// `pixel_unshuffle` (iOS16, torch `pixel_unshuffle`): the inverse, `(N, C, H·f, W·f)` →
/// `(N, C·f², H, W)`; `downscale_factor` is a uint32 const.
pub const PIXEL_UNSHUFFLE: OpDef = OpDef {
    name: "pixel_unshuffle",
    since: Opset::Ios16,
    params: &[Param::new("x", super::FLOAT), Param::new("downscale_factor", &[DType::U32]).konst()],
    infer: infer_pixel_shuffle,
    eval: eval_pixel_shuffle,
};

/// The factor of a pixel (un)shuffle and whether it is the unshuffle.
fn shuffle_factor(a: &OpArgs) -> Result<(usize, bool), TypeError> {
    let unshuffle = a.opt_tensor("downscale_factor").is_some();
    let p = if unshuffle { "downscale_factor" } else { "upscale_factor" };
    match usize::try_from(a.int_or(p, 0)?) {
        Ok(f) if f > 0 => Ok((f, unshuffle)),
        _ => Err(a.invalid(format!("`{p}` must be positive"))),
    }
}

/// The output shape of a pixel (un)shuffle of `s` by `f`, `None` when it does not divide.
fn shuffled(s: [usize; 4], f: usize, unshuffle: bool) -> Option<[usize; 4]> {
    let [n, c, h, w] = s;
    let ff = f.checked_mul(f)?;
    if unshuffle {
        (h.is_multiple_of(f) && w.is_multiple_of(f)).then_some([n, c.checked_mul(ff)?, h / f, w / f])
    } else {
        c.is_multiple_of(ff).then_some([n, c / ff, h.checked_mul(f)?, w.checked_mul(f)?])
    }
}

fn infer_pixel_shuffle(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let (f, unshuffle) = shuffle_factor(a)?;
    let s = a.fixed("x")?;
    let s: [usize; 4] = s.try_into().map_err(|_| a.invalid(format!("x must be rank 4, got {x}")))?;
    let out = shuffled(s, f, unshuffle).ok_or_else(|| a.invalid(format!("factor {f} does not divide {x}")))?;
    Ok(vec![TensorType::new(x.dtype, &out)])
}

fn eval_pixel_shuffle(a: &EvalArgs) -> Eval {
    let x = a.array("x")?;
    let unshuffle = a.get("downscale_factor").is_some();
    let f = a.int_or(if unshuffle { "downscale_factor" } else { "upscale_factor" }, 0)?;
    let f = usize::try_from(f).ok().filter(|&f| f > 0).ok_or_else(|| a.invalid("factor must be positive"))?;
    let s: [usize; 4] = x.shape.clone().try_into().map_err(|_| a.shape_error("x must be rank 4"))?;
    let out = shuffled(s, f, unshuffle).ok_or_else(|| a.shape_error("factor does not divide x"))?;
    // Index map over the shuffled (large-spatial) layout: (n, c, h·f+i, w·f+j) ↔ (n, c·f²+i·f+j, h, w).
    let ([n, c, h, w], big) = if unshuffle { (out, s) } else { (s, out) };
    let small = |nn: usize, ch: usize, y: usize, xx: usize| ((nn * c + ch) * h + y) * w + xx;
    let large = |nn: usize, ch: usize, y: usize, xx: usize| ((nn * big[1] + ch) * big[2] + y) * big[3] + xx;
    let mut idx = vec![0; x.len()];
    for nn in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let (k, i, j) = (ch / (f * f), ch % (f * f) / f, ch % f);
                    let (from_small, at_large) = (small(nn, ch, y, xx), large(nn, k, y * f + i, xx * f + j));
                    if unshuffle {
                        idx[from_small] = at_large;
                    } else {
                        idx[at_large] = from_small;
                    }
                }
            }
        }
    }
    Ok(vec![moved(x, out.to_vec(), &idx)])
}

/// Values `scatter_along_axis.mode` accepts.
pub const SCATTER_MODES: &[&str] = &["update", "add", "sub", "mul", "div", "max", "min"];

/// `scatter_along_axis` (iOS15; torch `scatter`/`scatter_add`): `data` with
/// `out[…, indices[…, i, …], …] ∘= updates[…, i, …]` along `axis` (default 0), `∘` set by
/// `mode` (default `add`); `indices` and `updates` share a shape that equals `data`'s off the
/// axis. Updates apply in row-major order of `indices` (the last write wins for `update`).
pub const SCATTER_ALONG_AXIS: OpDef = OpDef {
    name: "scatter_along_axis",
    since: Opset::Ios15,
    params: &[
        Param::t("data", NUMERIC),
        Param::new("indices", INT32),
        Param::t("updates", NUMERIC),
        Param::new("axis", INT32).konst().optional(),
        Param::new("mode", STRING).konst().optional(),
    ],
    infer: infer_scatter_along_axis,
    eval: eval_scatter_along_axis,
};

fn infer_scatter_along_axis(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (data, idx, upd) = (a.tensor("data")?, a.tensor("indices")?, a.tensor("updates")?);
    let axis = a.axis(a.int_or("axis", 0)?, data.rank())?;
    if let Some(m) = a.string("mode").filter(|m| !SCATTER_MODES.contains(m)) {
        return Err(a.invalid(format!("unknown mode `{m}`")));
    }
    if idx.shape != upd.shape || idx.rank() != data.rank() {
        return Err(a.invalid(format!("indices {idx} and updates {upd} must share a shape of data's rank")));
    }
    for i in (0..data.rank()).filter(|&i| i != axis) {
        if let (Dim::Fixed(p), Dim::Fixed(q)) = (data.shape[i], idx.shape[i]) {
            if p != q {
                return Err(a.invalid(format!("indices differ from data on axis {i}")));
            }
        }
    }
    Ok(vec![data.clone()])
}

fn eval_scatter_along_axis(a: &EvalArgs) -> Eval {
    let (data, ind, upd) = (a.array("data")?, a.array("indices")?, a.array("updates")?);
    let indices = ind.to_i64_vec().ok_or_else(|| a.invalid("indices must be integers"))?;
    let axis = a.axis(a.int_or("axis", 0)?, data.shape.len())?;
    let mode = a.string("mode").unwrap_or("add");
    let r = data.shape.len();
    if ind.shape != upd.shape || ind.shape.len() != r || (0..r).any(|i| i != axis && ind.shape[i] != data.shape[i]) {
        return Err(a.shape_error("indices and updates do not fit data"));
    }
    let (ds, is) = (numeric::strides(&data.shape), numeric::strides(&ind.shape));
    let n = data.shape[axis] as i64;
    let mut targets = Vec::with_capacity(indices.len());
    for (flat, &k) in indices.iter().enumerate() {
        let k = if k < 0 { k + n } else { k };
        if !(0..n).contains(&k) {
            return Err(a.invalid(format!("index {k} out of range for axis of size {n}")));
        }
        targets.push((0..r).map(|i| if i == axis { k as usize * ds[i] } else { (flat / is[i]) % ind.shape[i] * ds[i] }).sum::<usize>());
    }
    fn apply<T: Copy>(out: &mut [T], targets: &[usize], upd: &[T], f: impl Fn(T, T) -> T) {
        for (&t, &u) in targets.iter().zip(upd) {
            out[t] = f(out[t], u);
        }
    }
    let mut out = data.clone();
    let bad = || a.invalid(format!("unknown mode `{mode}`"));
    match (&mut out.data, &upd.data) {
        (Data::F32(o), Data::F32(u)) => match mode {
            "update" => apply(o, &targets, u, |_, u| u),
            "add" => apply(o, &targets, u, |x, u| x + u),
            "sub" => apply(o, &targets, u, |x, u| x - u),
            "mul" => apply(o, &targets, u, |x, u| x * u),
            "div" => apply(o, &targets, u, |x, u| x / u),
            "max" => apply(o, &targets, u, f32::max),
            "min" => apply(o, &targets, u, f32::min),
            _ => return Err(bad()),
        },
        (Data::I32(o), Data::I32(u)) => match mode {
            "update" => apply(o, &targets, u, |_, u| u),
            "add" => apply(o, &targets, u, i32::wrapping_add),
            "sub" => apply(o, &targets, u, i32::wrapping_sub),
            "mul" => apply(o, &targets, u, i32::wrapping_mul),
            "div" => apply(o, &targets, u, |x, u| x.checked_div(u).unwrap_or(0)),
            "max" => apply(o, &targets, u, i32::max),
            "min" => apply(o, &targets, u, i32::min),
            _ => return Err(bad()),
        },
        _ => return Err(a.invalid("data and updates hold different kinds of values")),
    }
    Ok(vec![out])
}
