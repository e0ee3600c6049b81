//! Ops that move data without arithmetic: `const`, `reshape`, `transpose`, `expand_dims`,
//! `squeeze`, `concat`, `split`, `slice_by_index`, `gather`. Semantics: coremltools
//! `defs/iOS15/tensor_transformation.py`, `tensor_operation.py`, `scatter_gather.py`,
//! and their iOS16/iOS17 revisions.

use super::{OpArgs, OpDef, Param, TypeError, ANY_TENSOR, BOOL, INT, INT32};
use crate::mil::types::{DType, Dim, TensorType};
use crate::mil::Opset;

/// `const`: a literal; its value and type are the `val` attribute. Has no inputs.
pub const CONST: OpDef = OpDef { name: "const", since: Opset::Ios15, params: &[], infer: infer_const };

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
};

fn infer_reshape(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let Some(target) = a.ints("shape")? else {
        let st = a.tensor("shape")?;
        let [Dim::Fixed(n)] = st.shape[..] else { return Err(a.invalid("`shape` must be rank 1 with a static length")) };
        return Ok(vec![TensorType { dtype: x.dtype, shape: vec![Dim::Unknown; n] }]);
    };
    let rank = x.rank();
    let mut dims: Vec<Option<usize>> = Vec::with_capacity(target.len());
    for (j, &t) in target.iter().enumerate() {
        dims.push(match t {
            -1 => None,
            0 if a.opset >= Opset::Ios17 => {
                let from_right = (rank + j).checked_sub(target.len());
                match from_right.map(|i| x.shape[i]) {
                    Some(Dim::Fixed(n)) => Some(n),
                    Some(Dim::Unknown) => return Ok(vec![TensorType { dtype: x.dtype, shape: vec![Dim::Unknown; target.len()] }]),
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
        return Ok(vec![TensorType { dtype: x.dtype, shape: dims.iter().map(|d| d.map_or(Dim::Unknown, Dim::Fixed)).collect() }]);
    };
    let known: usize = dims.iter().flatten().product();
    let shape: Vec<usize> = if unknowns == 1 {
        if known == 0 || total % known != 0 {
            return Err(a.invalid(format!("cannot reshape {x} to {target:?}")));
        }
        dims.iter().map(|d| d.unwrap_or(total / known)).collect()
    } else {
        dims.iter().flatten().copied().collect()
    };
    if shape.iter().product::<usize>() != total {
        return Err(a.invalid(format!("cannot reshape {x} to {target:?}")));
    }
    Ok(vec![TensorType::new(x.dtype, &shape)])
}

/// `transpose`: permutes axes by `perm`.
pub const TRANSPOSE: OpDef = OpDef {
    name: "transpose",
    since: Opset::Ios15,
    params: &[Param::new("x", ANY_TENSOR), Param::new("perm", INT32).konst()],
    infer: infer_transpose,
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
    let shape = (0..out_rank).map(|i| if at.contains(&i) { Dim::Fixed(1) } else { *rest.next().unwrap_or(&Dim::Fixed(1)) });
    Ok(vec![TensorType { dtype: x.dtype, shape: shape.collect() }])
}

/// `squeeze`: removes size-1 axes (`axes`, or every size-1 axis when absent).
pub const SQUEEZE: OpDef = OpDef {
    name: "squeeze",
    since: Opset::Ios15,
    params: &[Param::new("x", ANY_TENSOR), Param::new("axes", INT32).konst().optional()],
    infer: infer_squeeze,
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
                (true, Dim::Fixed(x), Dim::Fixed(y)) => Dim::Fixed(x + y),
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
};

fn infer_split(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let x = a.tensor("x")?;
    let axis = a.axis(a.int_or("axis", 0)?, x.rank())?;
    let Dim::Fixed(n) = x.shape[axis] else { return Err(a.invalid("split axis must be static")) };
    let sizes: Vec<usize> = match (a.ints("split_sizes")?, a.ints("num_splits")?) {
        (Some(s), _) => s.iter().map(|&v| usize::try_from(v).map_err(|_| a.invalid("negative split size"))).collect::<Result<_, _>>()?,
        (None, Some(k)) => match k.as_slice() {
            [k] if *k > 0 && n % (*k as usize) == 0 => vec![n / *k as usize; *k as usize],
            _ => return Err(a.invalid(format!("cannot split {n} into {k:?} equal parts"))),
        },
        (None, None) => return Err(a.invalid("give num_splits or split_sizes")),
    };
    if sizes.iter().sum::<usize>() != n {
        return Err(a.invalid(format!("split sizes {sizes:?} do not add up to {n}")));
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
};

/// Length of the Python slice `begin:end:stride` over `n` elements, masks applied.
pub fn slice_len(n: i64, begin: i64, end: i64, stride: i64, begin_mask: bool, end_mask: bool) -> i64 {
    let clamp = |v: i64| {
        let v = if v < 0 { v + n } else { v };
        if stride > 0 {
            v.clamp(0, n)
        } else {
            v.clamp(-1, n - 1)
        }
    };
    let b = if begin_mask { if stride > 0 { 0 } else { n - 1 } } else { clamp(begin) };
    let e = if end_mask { if stride > 0 { n } else { -1 } } else { clamp(end) };
    let span = if stride > 0 { e - b } else { b - e };
    let s = stride.abs();
    ((span + s - 1) / s).max(0)
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
                Dim::Fixed(slice_len(n as i64, b[i], e[i], stride[i], bm[i], em[i]) as usize)
            }
            (Dim::Fixed(n), _, _) if bm[i] && em[i] => Dim::Fixed(slice_len(n as i64, 0, 0, stride[i], true, true) as usize),
            _ => Dim::Unknown,
        });
    }
    Ok(vec![TensorType { dtype: x.dtype, shape }])
}

const GATHER_X: &[DType] = &[DType::F16, DType::F32, DType::I32, DType::Bool, DType::I8, DType::U8, DType::I16, DType::U16];

/// `gather` (iOS15): rows of `x` along `axis` picked by `indices`.
pub const GATHER: OpDef = OpDef {
    name: "gather",
    since: Opset::Ios15,
    params: &[Param::new("x", GATHER_X), Param::new("indices", INT), Param::new("axis", INT32).konst().optional()],
    infer: infer_gather,
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
