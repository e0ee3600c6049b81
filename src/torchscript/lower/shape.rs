//! Lowerings of shape ops: `size` (folds to ints), reshapes, transposes, squeezes, `cat`,
//! `chunk`, `slice`, `select`; padding in every torch mode (circular and edge pads outside the
//! last two axes decomposed); stacking and splitting variants; constructors, which become
//! constants (shapes are static); `repeat`, `flip`, `roll` and other shape utilities;
//! `index_select` and `scatter`.

use super::{const_elements, dim, dims_i32, dims_shown, float, i32_of, int, ints, ints_shown, Lower, Value};
use crate::mil::ops::{elementwise as ew, reduce, shape};
use crate::mil::builder::Var;
use crate::mil::{DType, Tensor};

fn built(r: Result<crate::mil::builder::Var, crate::mil::ops::TypeError>) -> Result<Value, String> {
    r.map(Value::Tensor).map_err(|e| e.to_string())
}

/// `aten::size(self, dim)`: the static size as an int (or all sizes as a list).
pub fn size(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    match &a[1] {
        Value::None => Ok(Value::List(s.iter().map(|&d| Value::Int(d as i64)).collect())),
        d => Ok(Value::Int(s.get(dim(int(d)?, s.len())?).copied().unwrap_or(0) as i64)),
    }
}

/// `prim::NumToTensor`, `aten::Int`: with static shapes a scalar stays a constant.
pub fn scalar_passthrough(_: &mut Lower, a: &[Value]) -> Result<Value, String> {
    Ok(a[0].clone())
}

/// `aten::view`, `aten::reshape`.
pub fn reshape(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let target: Vec<i32> = ints(&a[1])?.into_iter().map(i32_of).collect::<Result<_, _>>()?;
    built(l.op(&shape::RESHAPE).arg("x", &x).konst("shape", Tensor::i32_vec(&target)).build1())
}

/// `aten::flatten(self, start_dim, end_dim)` as a reshape.
pub fn flatten(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    if s.is_empty() {
        return built(l.op(&shape::RESHAPE).arg("x", &x).konst("shape", Tensor::i32_vec(&[1])).build1());
    }
    let (b, e) = (dim(int(&a[1])?, s.len())?, dim(int(&a[2])?, s.len())?);
    if b > e {
        return Err(format!("flatten start_dim {b} is after end_dim {e}"));
    }
    let mut target = dims_i32(&s[..b])?;
    let merged = s[b..=e].iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or("flattened size overflows")?;
    target.extend(dims_i32(&[merged])?);
    target.extend(dims_i32(&s[e + 1..])?);
    built(l.op(&shape::RESHAPE).arg("x", &x).konst("shape", Tensor::i32_vec(&target)).build1())
}

fn permute_by(l: &mut Lower, x: &crate::mil::builder::Var, perm: &[i32]) -> Result<Value, String> {
    built(l.op(&shape::TRANSPOSE).arg("x", x).konst("perm", Tensor::i32_vec(perm)).build1())
}

/// `aten::transpose(self, dim0, dim1)`.
pub fn transpose(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let r = l.shape(&x)?.len();
    let (d0, d1) = (dim(int(&a[1])?, r)?, dim(int(&a[2])?, r)?);
    let mut perm: Vec<i32> = (0..r as i32).collect();
    perm.swap(d0, d1);
    permute_by(l, &x, &perm)
}

/// `aten::permute(self, dims)`.
pub fn permute(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let r = l.shape(&x)?.len();
    let perm: Vec<i32> = ints(&a[1])?.into_iter().map(|d| dim(d, r).map(|d| d as i32)).collect::<Result<_, _>>()?;
    permute_by(l, &x, &perm)
}

/// `aten::unsqueeze(self, dim)`.
pub fn unsqueeze(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let r = l.shape(&x)?.len();
    let d = dim(int(&a[1])?, r + 1)? as i32;
    built(l.op(&shape::EXPAND_DIMS).arg("x", &x).konst("axes", Tensor::i32_vec(&[d])).build1())
}

/// `aten::squeeze(self, dim?)`; squeezing a non-1 axis is a no-op as in torch.
pub fn squeeze(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let op = l.op(&shape::SQUEEZE).arg("x", &x);
    match &a[1] {
        Value::None => built(op.build1()),
        d => {
            let d = dim(int(d)?, s.len())?;
            if s[d] != 1 {
                return Ok(a[0].clone());
            }
            built(op.konst("axes", Tensor::i32_vec(&[d as i32])).build1())
        }
    }
}

/// `aten::cat(tensors, dim)` → `concat`. Like torch, it skips empty 1-D tensors (shape `[0]`)
/// whatever the other ranks (the legacy rule: a decoder traced with an empty KV cache
/// concatenates one); one remaining tensor is returned as is.
pub fn cat(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (Value::List(items) | Value::Tuple(items)) = &a[0] else { return Err("cat needs a list of tensors".into()) };
    let mut vs = Vec::with_capacity(items.len());
    for v in items {
        let t = l.tensor(v)?;
        if l.shape(&t)? != [0] {
            vs.push(t);
        }
    }
    if let [one] = vs.as_slice() {
        return Ok(Value::Tensor(one.clone()));
    }
    let first = vs.first().ok_or("cat of no non-empty tensors")?;
    let r = l.shape(first)?.len();
    let axis = dim(int(&a[1])?, r)? as i32;
    built(l.op(&shape::CONCAT).args("values", &vs).konst("axis", Tensor::i32_scalar(axis)).konst("interleave", Tensor::bool_scalar(false)).build1())
}

/// `aten::chunk(self, chunks, dim)` → `split` with torch's sizes (ceil(n/chunks), last smaller).
pub fn chunk(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let d = dim(int(&a[2])?, s.len())?;
    let chunks = int(&a[1])?;
    if chunks <= 0 {
        return Err(format!("chunk count {chunks}"));
    }
    let n = i64::try_from(s[d]).map_err(|_| format!("axis size {} is too large", s[d]))?;
    // ⌈n / chunks⌉ without overflow: `chunks` is any positive int the file holds.
    let each = (n / chunks + i64::from(n % chunks != 0)).max(1);
    let sizes = pieces(n, each)?.into_iter().map(i32_of).collect::<Result<Vec<_>, _>>()?;
    let op = l.op(&shape::SPLIT).arg("x", &x).konst("split_sizes", Tensor::i32_vec(&sizes)).konst("axis", Tensor::i32_scalar(d as i32));
    let parts = op.build().map_err(|e| e.to_string())?;
    Ok(Value::Tuple(parts.into_iter().map(Value::Tensor).collect()))
}

fn slice_axis(l: &mut Lower, x: &crate::mil::builder::Var, d: usize, begin: i64, end: i64, step: i64, squeeze: bool) -> Result<Value, String> {
    let r = l.shape(x)?.len();
    let mut b = vec![0; r];
    let mut e = vec![0; r];
    let mut st = vec![1; r];
    let mut mask = vec![true; r];
    let mut sq = vec![false; r];
    b[d] = i32_of(begin)?;
    e[d] = i32_of(end)?;
    st[d] = i32_of(step)?;
    mask[d] = false;
    sq[d] = squeeze;
    let op = l
        .op(&shape::SLICE_BY_INDEX)
        .arg("x", x)
        .konst("begin", Tensor::i32_vec(&b))
        .konst("end", Tensor::i32_vec(&e))
        .konst("stride", Tensor::i32_vec(&st))
        .konst("begin_mask", Tensor::from_bools(&[r], &mask))
        .konst("end_mask", Tensor::from_bools(&[r], &mask))
        .konst("squeeze_mask", Tensor::from_bools(&[r], &sq));
    built(op.build1())
}

/// `aten::slice(self, dim, start, end, step)`; ends past the axis (torch prints i64::MAX) clamp.
pub fn slice(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let d = dim(int(&a[1])?, s.len())?;
    let n = i64::try_from(s[d]).map_err(|_| format!("axis size {} is too large", s[d]))?;
    let clamp = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
    let start = if a[2] == Value::None { 0 } else { clamp(int(&a[2])?) };
    let end = if a[3] == Value::None { n } else { clamp(int(&a[3])?) };
    let step = int(&a[4])?;
    if step <= 0 {
        return Err(format!("slice step {step} is not supported"));
    }
    if start == 0 && end == n && step == 1 {
        return Ok(a[0].clone());
    }
    slice_axis(l, &x, d, start, end, step, false)
}

/// `aten::select(self, dim, index)`: one index, axis removed.
pub fn select(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let d = dim(int(&a[1])?, s.len())?;
    let n = i64::try_from(s[d]).map_err(|_| format!("axis size {} is too large", s[d]))?;
    let i = int(&a[2])?;
    let i = if i < 0 { i + n } else { i };
    if !(0..n).contains(&i) {
        return Err(format!("select index {i} out of range for size {n}"));
    }
    slice_axis(l, &x, d, i, i + 1, 1, true)
}

/// c10 ScalarType code for bool, as TorchScript prints `dtype=11`.
const SCALAR_TYPE_BOOL: i64 = 11;

/// A const of `shape` filled with `x`, as bool (dtype 11), int32 (integer fill, no dtype) or the
/// compute float dtype.
fn filled(l: &mut Lower, shape: &[usize], x: f64, dtype: &Value, integer: bool) -> Result<Value, String> {
    let n = const_elements(shape)?;
    let t = match dtype {
        Value::Int(SCALAR_TYPE_BOOL) => Tensor::from_bools(shape, &vec![x != 0.0; n]),
        Value::Int(3 | 4) => Tensor::from_i32(shape, &vec![x as i32; n]),
        Value::None if integer => Tensor::from_i32(shape, &vec![x as i32; n]),
        _ => l.cast_const(&Tensor::from_f32(shape, &vec![x as f32; n]))?,
    };
    let hint = l.hint.clone();
    Ok(Value::Tensor(l.b.konst(&hint, t)))
}

/// `aten::arange(end)` / `(start, end)` / `(start, end, step)`: a const (int32 for integer ranges).
pub fn arange(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let nums: Vec<&Value> = a[..3].iter().filter(|v| !matches!(v, Value::None)).collect();
    let all_int = nums.iter().all(|v| matches!(v, Value::Int(_)));
    let f: Vec<f64> = nums.iter().map(|v| float(v)).collect::<Result<_, _>>()?;
    let (start, end, step) = match f.as_slice() {
        [e] => (0.0, *e, 1.0),
        [s, e] => (*s, *e, 1.0),
        [s, e, st] => (*s, *e, *st),
        _ => return Err("arange needs 1 to 3 numbers".into()),
    };
    if step == 0.0 {
        return Err("arange step is 0".into());
    }
    if ![start, end, step].iter().all(|v| v.is_finite()) {
        return Err(format!("arange({start:?}, {end:?}, {step:?}) has a bound that is not a finite number"));
    }
    // numpy's length ⌈(end − start)/step⌉, checked in floating point before any allocation
    // (the quotient of two finite numbers may still be infinite).
    let len = ((end - start) / step).ceil().max(0.0);
    if !(len <= super::MAX_CONST_ELEMENTS as f64) {
        return Err(format!("arange({start:?}, {end:?}, {step:?}) would have {len:?} elements, more than the {} allowed", super::MAX_CONST_ELEMENTS));
    }
    let n = len as usize;
    let hint = l.hint.clone();
    let integer = all_int && !matches!(a[3], Value::Int(5 | 6 | 7));
    let t = if integer {
        Tensor::from_i32(&[n], &(0..n).map(|i| (start + i as f64 * step) as i32).collect::<Vec<_>>())
    } else {
        l.cast_const(&Tensor::from_f32(&[n], &(0..n).map(|i| (start + i as f64 * step) as f32).collect::<Vec<_>>()))?
    };
    Ok(Value::Tensor(l.b.konst(&hint, t)))
}

/// `aten::new_ones(self, size, dtype…)`: a const of ones.
pub fn new_ones(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let shape: Vec<usize> = ints(&a[1])?.into_iter().map(|d| usize::try_from(d).map_err(|_| format!("negative size {d}"))).collect::<Result<_, _>>()?;
    let integer = match &a[0] {
        Value::Tensor(t) => !l.ty(t)?.dtype.is_float(),
        _ => false,
    };
    filled(l, &shape, 1.0, &a[2], integer)
}

/// `aten::full_like(self, fill_value, dtype…)`: a const shaped like `self`.
pub fn full_like(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let ty = l.ty(&x)?;
    let shape = l.shape(&x)?;
    let dtype = match (&a[2], ty.dtype) {
        (Value::None, DType::Bool) => Value::Int(SCALAR_TYPE_BOOL),
        (d, _) => d.clone(),
    };
    filled(l, &shape, float(&a[1])?, &dtype, !ty.dtype.is_float())
}

/// `aten::expand(self, size)`: broadcasts by combining with a const of the target shape
/// (add of zeros for numbers, select for bools); `-1` keeps a dimension.
pub fn expand(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let ty = l.ty(&x)?;
    let s = l.shape(&x)?;
    let size = ints(&a[1])?;
    if size.len() < s.len() {
        return Err(format!("cannot expand {} to {}", dims_shown(&s), ints_shown(&size)));
    }
    let off = size.len() - s.len();
    let target: Vec<usize> = size
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            -1 => i.checked_sub(off).and_then(|j| s.get(j).copied()).ok_or_else(|| format!("-1 in a new dimension of {}", ints_shown(&size))),
            d => usize::try_from(d).map_err(|_| format!("negative size {d}")),
        })
        .collect::<Result<_, _>>()?;
    if target == s {
        return Ok(a[0].clone());
    }
    let n = const_elements(&target)?;
    let hint = format!("{}_expand", l.hint);
    if ty.dtype == DType::Bool {
        let (t, f) = (l.b.konst(&format!("{hint}_true"), Tensor::from_bools(&target, &vec![true; n])), l.b.konst(&format!("{hint}_false"), Tensor::bool_scalar(false)));
        return built(l.op(&ew::SELECT).arg("cond", &x).arg("a", &t).arg("b", &f).build1());
    }
    let zeros = match ty.dtype {
        DType::I32 => Tensor::from_i32(&target, &vec![0; n]),
        DType::F16 => Tensor::from_f32_as_f16(&target, &vec![0.0; n]),
        _ => Tensor::from_f32(&target, &vec![0.0; n]),
    };
    let z = l.b.konst(&hint, zeros);
    built(l.op(&ew::ADD).arg("x", &x).arg("y", &z).build1())
}

/// Constant integer index tensors over the leading axes of a tensor of shape `s`, broadcast
/// together (numpy rules): the broadcast shape, and for each indexed axis its index (made
/// non-negative, checked in range) at every broadcast position. Shared by `aten::index` and
/// `aten::index_put`.
fn broadcast_indices(l: &Lower, s: &[usize], items: &[Value]) -> Result<(Vec<usize>, Vec<Vec<i64>>), String> {
    if items.is_empty() || items.len() > s.len() {
        return Err(format!("{} indices for a rank-{} tensor", items.len(), s.len()));
    }
    let mut idx = Vec::with_capacity(items.len());
    for (d, it) in items.iter().enumerate() {
        let Value::Tensor(v) = it else { return Err("index with None (slices) is not supported yet".into()) };
        let c = l.b.value(v).ok_or("indexing with computed indices is not supported yet")?;
        let vals = c.to_i64_vec().filter(|_| c.dtype() != DType::Bool).ok_or("boolean-mask indexing is not supported here")?;
        let n = i64::try_from(s[d]).map_err(|_| format!("axis size {} is too large", s[d]))?;
        let vals: Vec<i64> = vals.iter().map(|&i| if i < 0 { i + n } else { i }).collect();
        if vals.iter().any(|&i| !(0..n).contains(&i)) {
            return Err(format!("index out of range for axis {d} of size {n}"));
        }
        idx.push((c.shape().to_vec(), vals));
    }
    // Broadcast the index shapes (numpy rules).
    let rank = idx.iter().map(|(sh, _)| sh.len()).max().unwrap_or(0);
    let mut shape = vec![1usize; rank];
    for (sh, _) in &idx {
        for (i, &d) in sh.iter().enumerate() {
            let o = &mut shape[rank - sh.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err("index tensors do not broadcast".into());
            }
        }
    }
    let total = const_elements(&shape)?;
    let mut per_axis = Vec::with_capacity(idx.len());
    for (sh, vals) in &idx {
        let mut at = vec![0i64; total];
        for (o, f) in at.iter_mut().enumerate() {
            // Map output position `o` to this index tensor's broadcast position.
            let (mut rem, mut pos, mut mul) = (o, 0usize, 1usize);
            for i in (0..rank).rev() {
                let coord = rem % shape[i];
                rem /= shape[i];
                if let Some(j) = (i + sh.len()).checked_sub(rank) {
                    if sh[j] != 1 {
                        pos += coord * mul;
                    }
                    mul *= sh[j];
                }
            }
            *f = vals.get(pos).copied().unwrap_or(0);
        }
        per_axis.push(at);
    }
    Ok((shape, per_axis))
}

/// [`broadcast_indices`] combined on the host into row numbers of the indexed axes flattened:
/// the broadcast index shape, the row numbers in its order, and the row count (which fits int32).
fn flat_rows(l: &Lower, s: &[usize], items: &[Value]) -> Result<(Vec<usize>, Vec<i64>, usize), String> {
    let (shape, per_axis) = broadcast_indices(l, s, items)?;
    let k = items.len();
    let too_large = || format!("indexed axes {} are too large to number their rows", dims_shown(&s[..k]));
    let rows = crate::mil::types::checked_elements(&s[..k]).filter(|&r| i32::try_from(r).is_ok()).ok_or_else(too_large)?;
    let mut flat = vec![0i64; per_axis.first().map_or(0, Vec::len)];
    for (d, at) in per_axis.iter().enumerate() {
        // Below `rows`, which fits in int32, so the row numbers below cannot overflow.
        let stride = s.get(d + 1..k).map_or(1, |t| t.iter().product::<usize>()) as i64;
        for (f, &i) in flat.iter_mut().zip(at) {
            *f += i * stride;
        }
    }
    Ok((shape, flat, rows))
}

/// `x` reshaped to (rows, the axes after the first `k`…): the indexed leading axes flattened.
fn rows_view(l: &mut Lower, x: &Var, s: &[usize], k: usize, rows: usize) -> Result<Var, String> {
    let mut flat_shape = dims_i32(&[rows])?;
    flat_shape.extend(dims_i32(&s[k..])?);
    let hint = format!("{}_rows", l.hint);
    l.b.op(&shape::RESHAPE, &hint).arg("x", x).konst("shape", Tensor::i32_vec(&flat_shape)).build1().map_err(|e| e.to_string())
}

/// `aten::index(self, indices)` with constant integer index tensors (what tracing leaves for
/// mask building): one index tensor is a `gather` along the first axis; several broadcast
/// together into index tuples (negative ones counted from the end) for one `gather_nd` over
/// the indexed leading axes. The tuples hold positions, not flat row numbers, so they do not
/// depend on the axes' sizes (a dynamic sequence keeps them a corner of the largest).
pub fn index(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let (Value::List(items) | Value::Tuple(items)) = &a[1] else { return Err("index needs a list of index tensors".into()) };
    if let Some(v) = index_as_layout(l, &x, &s, items)? {
        return Ok(v);
    }
    let (shape, tuples) = index_tuples(l, &s, items)?;
    let hint = l.hint.clone();
    // Core ML's gather takes no bool data: gather the mask as int32 and compare back.
    let is_bool = l.ty(&x)?.dtype == DType::Bool;
    let src = if is_bool { int32(l, &Value::Tensor(x))? } else { x };
    let gathered = if let [_] = items[..] {
        let ids = l.b.konst(&format!("{hint}_ids"), Tensor::from_i32(&shape, &tuples));
        l.b.op(&shape::GATHER, &format!("{hint}_gathered")).arg("x", &src).arg("indices", &ids).konst("axis", Tensor::i32_scalar(0)).build1()
    } else {
        let mut ids_shape = shape.clone();
        ids_shape.push(items.len());
        let ids = l.b.konst(&format!("{hint}_ids"), Tensor::from_i32(&ids_shape, &tuples));
        l.b.op(&shape::GATHER_ND, &format!("{hint}_gathered")).arg("x", &src).arg("indices", &ids).build1()
    };
    let gathered = gathered.map_err(|e| e.to_string())?;
    if !is_bool {
        return Ok(Value::Tensor(gathered));
    }
    built(l.op(&ew::NOT_EQUAL).arg("x", &gathered).konst("y", Tensor::i32_scalar(0)).build1())
}

/// `x[i_0, …, i_{k-1}]` when every index tensor is a whole `arange` of its axis laid along an
/// axis of its own (what transformers' vmapped mask builders index with: `mask[b, kv]` over
/// `b = arange(B)[:, None, None, None]`, `kv = arange(S)[None, None, None, :]`): no gather, only
/// the indexed axes put in that order (`transpose`) and spread over the broadcast shape
/// (`reshape`). `None` when the indices are anything else.
fn index_as_layout(l: &mut Lower, x: &Var, s: &[usize], items: &[Value]) -> Result<Option<Value>, String> {
    let k = items.len();
    if k == 0 || k > s.len() {
        return Ok(None);
    }
    let mut shapes = Vec::with_capacity(k);
    for it in items {
        let Value::Tensor(v) = it else { return Ok(None) };
        let Some(c) = l.b.value(v).filter(|c| c.dtype() != DType::Bool) else { return Ok(None) };
        let Some(vals) = c.to_i64_vec() else { return Ok(None) };
        shapes.push((c.shape().to_vec(), vals));
    }
    let rank = shapes.iter().map(|(sh, _)| sh.len()).max().unwrap_or(0);
    let mut target = vec![1usize; rank];
    // For each indexed axis, the broadcast axis its arange lies along (`None`: a size-1 axis).
    let mut at: Vec<Option<usize>> = Vec::with_capacity(k);
    for (d, (sh, vals)) in shapes.iter().enumerate() {
        let whole = vals.len() == s[d] && vals.iter().enumerate().all(|(i, &v)| v == i as i64);
        let spread: Vec<usize> = sh.iter().enumerate().filter(|(_, &n)| n != 1).map(|(j, _)| j + rank - sh.len()).collect();
        match spread[..] {
            _ if !whole => return Ok(None),
            [] => at.push(None),
            [j] if target[j] == 1 => {
                target[j] = s[d];
                at.push(Some(j));
            }
            _ => return Ok(None),
        }
    }
    // The indexed axes in broadcast order (size-1 ones last: they go anywhere), then the rest.
    let mut perm: Vec<usize> = (0..k).filter(|&d| at[d].is_some()).collect();
    perm.sort_by_key(|&d| at[d]);
    perm.extend((0..k).filter(|&d| at[d].is_none()));
    perm.extend(k..s.len());
    let mut v = x.clone();
    if perm.iter().enumerate().any(|(i, &p)| i != p) {
        let perm: Vec<i32> = perm.iter().map(|&p| i32_of(p as i64)).collect::<Result<_, _>>()?;
        let Value::Tensor(t) = permute_by(l, &v, &perm)? else { return Err("transpose produced no tensor".into()) };
        v = t;
    }
    target.extend_from_slice(&s[k..]);
    Ok(Some(built(l.op(&shape::RESHAPE).arg("x", &v).konst("shape", Tensor::i32_vec(&dims_i32(&target)?)).build1())?))
}

/// The index tensors `items` over the leading axes of shape `s`, broadcast together: their
/// shape, and for each position the tuple of indices (one per item, made non-negative), flat.
fn index_tuples(l: &Lower, s: &[usize], items: &[Value]) -> Result<(Vec<usize>, Vec<i32>), String> {
    let (shape, per_axis) = broadcast_indices(l, s, items)?;
    let total = const_elements(&shape)?.checked_mul(items.len()).ok_or("too many indices")?;
    let mut tuples = Vec::with_capacity(total);
    for o in 0..per_axis.first().map_or(0, Vec::len) {
        for axis in &per_axis {
            tuples.push(i32_of(axis[o])?);
        }
    }
    Ok((shape, tuples))
}

/// Sizes of the parts of an axis of `n` cut every `each` (> 0) elements, the last one shorter,
/// refused when there would be more than an op may output (`ops::MAX_OUTPUTS`).
fn pieces(n: i64, each: i64) -> Result<Vec<i64>, String> {
    let count = n / each + i64::from(n % each != 0);
    if usize::try_from(count).map_or(true, |c| c > crate::mil::ops::MAX_OUTPUTS) {
        return Err(format!("cutting {n} elements every {each} makes {count} parts, more than the {} an op may output", crate::mil::ops::MAX_OUTPUTS));
    }
    Ok((0..count).map(|i| each.min(n - i * each)).collect())
}

/// `aten::split(self, split_size | sizes, dim)`.
pub fn split(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let d = dim(int(&a[2])?, s.len())?;
    let n = i64::try_from(s[d]).map_err(|_| format!("axis size {} is too large", s[d]))?;
    let sizes: Vec<i64> = match &a[1] {
        Value::Int(each) if *each > 0 => pieces(n, *each)?,
        other => ints(other)?,
    };
    let sizes: Vec<i32> = sizes.into_iter().map(i32_of).collect::<Result<_, _>>()?;
    let op = l.op(&shape::SPLIT).arg("x", &x).konst("split_sizes", Tensor::i32_vec(&sizes)).konst("axis", Tensor::i32_scalar(d as i32));
    let parts = op.build().map_err(|e| e.to_string())?;
    Ok(Value::Tuple(parts.into_iter().map(Value::Tensor).collect()))
}

/// `aten::gather(self, dim, index)` → `gather_along_axis` (indices cast to int32).
pub fn gather(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let r = l.shape(&x)?.len();
    let axis = dim(int(&a[1])?, r)? as i32;
    let idx = int32(l, &a[2])?;
    built(l.op(&shape::GATHER_ALONG_AXIS).arg("x", &x).arg("indices", &idx).konst("axis", Tensor::i32_scalar(axis)).build1())
}

/// `aten::cumsum(self, dim, dtype)` → `cumsum` (bool and integer inputs count in int32).
pub fn cumsum(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = int32_if_not_float(l, &a[0])?;
    let r = l.shape(&x)?.len();
    let axis = dim(int(&a[1])?, r)? as i32;
    built(l.op(&shape::CUMSUM).arg("x", &x).konst("axis", Tensor::i32_scalar(axis)).konst("exclusive", Tensor::bool_scalar(false)).konst("reverse", Tensor::bool_scalar(false)).build1())
}

/// An integer tensor as int32 (casting bool or other integer dtypes).
fn int32(l: &mut Lower, v: &Value) -> Result<crate::mil::builder::Var, String> {
    let x = l.tensor(v)?;
    if l.ty(&x)?.dtype == DType::I32 {
        return Ok(x);
    }
    let hint = format!("{}_int32", l.hint);
    l.b.op(&ew::CAST, &hint).arg("x", &x).konst("dtype", Tensor::string("int32")).build1().map_err(|e| e.to_string())
}

fn int32_if_not_float(l: &mut Lower, v: &Value) -> Result<crate::mil::builder::Var, String> {
    let x = l.tensor(v)?;
    if l.ty(&x)?.dtype.is_float() {
        return Ok(x);
    }
    int32(l, v)
}

/// The tensor a `built` result holds.
fn var(v: Result<Value, String>) -> Result<Var, String> {
    match v? {
        Value::Tensor(t) => Ok(t),
        other => Err(format!("expected a tensor, got {}", other.describe())),
    }
}

/// `x` cast to MIL `dtype` (named after the current hint and `what`).
fn cast_to(l: &mut Lower, x: &Var, dtype: DType, what: &str) -> Result<Var, String> {
    if l.ty(x)?.dtype == dtype {
        return Ok(x.clone());
    }
    let hint = format!("{}_{what}", l.hint);
    l.b.op(&ew::CAST, &hint).arg("x", x).konst("dtype", Tensor::string(dtype.name())).build1().map_err(|e| e.to_string())
}

/// Axes whose non-`constant` padding the Core ML runtime accepts: only the last two ("Padding
/// for more than two dimensions only supports `constant` mode", apple/coremltools#2701).
const EDGE_PAD_AXES: usize = 2;

/// Torch's pad list (before/after pairs from the last dim backwards) as per-axis (before, after).
fn pad_pairs(pad: &[i64], rank: usize) -> Result<Vec<(i64, i64)>, String> {
    if !pad.len().is_multiple_of(2) || pad.len() / 2 > rank {
        return Err(format!("pad {} must hold before/after pairs for at most {rank} dims", ints_shown(pad)));
    }
    let mut pairs = vec![(0, 0); rank];
    for (i, p) in pad.chunks(2).enumerate() {
        pairs[rank - 1 - i] = (p[0], p[1]);
    }
    Ok(pairs)
}

/// One MIL `pad` of the last `pairs.len()` axes (all non-negative) in `mode`.
fn mil_pad(l: &mut Lower, x: &Var, pairs: &[(i64, i64)], mode: &str, value: f64) -> Result<Var, String> {
    let flat: Vec<i32> = pairs.iter().flat_map(|&(b, e)| [b, e]).map(i32_of).collect::<Result<_, _>>()?;
    let dtype = l.ty(x)?.dtype;
    let hint = l.hint.clone();
    let mut op = l.b.op(&shape::PAD, &hint).arg("x", x).konst("pad", Tensor::i32_vec(&flat)).konst("mode", Tensor::string(mode));
    if mode == "constant" {
        op = op.konst("constant_val", Tensor::float_scalar(dtype, value as f32));
    }
    op.build1().map_err(|e| e.to_string())
}

/// `x` padded on every axis by `pairs` (one per axis) in torch's `mode`; negative constant pads
/// crop. Non-float tensors pad in fp32 and are cast back (Core ML pads only floats).
fn pad_tensor(l: &mut Lower, x: &Var, pairs: &[(i64, i64)], mode: &str, value: f64) -> Result<Var, String> {
    let dtype = l.ty(x)?.dtype;
    if !dtype.is_float() {
        let xf = cast_to(l, x, DType::F32, "as_fp32")?;
        let padded = pad_tensor(l, &xf, pairs, mode, value)?;
        return cast_to(l, &padded, dtype, "padded");
    }
    let mut x = x.clone();
    let s = l.shape(&x)?;
    let r = s.len();
    if pairs.iter().any(|&(b, e)| b < 0 || e < 0) {
        if mode != "constant" {
            return Err(format!("pad: negative padding {:?} is only supported in constant mode, not `{mode}`", pairs));
        }
        for (d, &(b, e)) in pairs.iter().enumerate() {
            if b < 0 || e < 0 {
                let n = i64::try_from(s[d]).map_err(|_| "axis too large".to_string())?;
                let (start, end) = (b.min(0).abs(), n + e.min(0));
                if start >= end {
                    return Err(format!("pad: cropping {} and {} leaves nothing of axis {d} (size {n})", -b, -e));
                }
                x = var(slice_axis(l, &x, d, start, end, 1, false))?;
            }
        }
    }
    let pairs: Vec<(i64, i64)> = pairs.iter().map(|&(b, e)| (b.max(0), e.max(0))).collect();
    match mode {
        "constant" => {
            let Some(first) = pairs.iter().position(|&p| p != (0, 0)) else { return Ok(x) };
            mil_pad(l, &x, &pairs[first..], "constant", value)
        }
        "reflect" | "replicate" => {
            let tail = r.saturating_sub(EDGE_PAD_AXES);
            // Axes before the last two: moved last, padded, moved back (the runtime rule above).
            for (d, &pair) in pairs.iter().enumerate().take(tail) {
                if pair == (0, 0) {
                    continue;
                }
                let mut perm: Vec<i32> = (0..r as i32).collect();
                perm.swap(d, r - 1);
                let t = var(permute_by(l, &x, &perm))?;
                let p = edge_pad(l, &t, &[pair], mode)?;
                x = var(permute_by(l, &p, &perm))?;
            }
            if pairs[tail..].iter().any(|&p| p != (0, 0)) {
                x = edge_pad(l, &x, &pairs[tail..], mode)?;
            }
            Ok(x)
        }
        "circular" => {
            for (d, &(b, e)) in pairs.iter().enumerate() {
                if (b, e) == (0, 0) {
                    continue;
                }
                let n = i64::try_from(l.shape(&x)?[d]).map_err(|_| "axis too large".to_string())?;
                if b > n || e > n {
                    return Err(format!("pad: circular padding ({b}, {e}) is larger than axis {d} of size {n}"));
                }
                let mut parts = Vec::new();
                if b > 0 {
                    parts.push(var(slice_axis(l, &x, d, n - b, n, 1, false))?);
                }
                parts.push(x.clone());
                if e > 0 {
                    parts.push(var(slice_axis(l, &x, d, 0, e, 1, false))?);
                }
                x = concat(l, &parts, d)?;
            }
            Ok(x)
        }
        m => Err(format!("pad: mode `{}` is not supported (constant, reflect, replicate, circular)", crate::files::shown(m))),
    }
}

/// Reflect or replicate padding of the last `pairs.len()` (≤ 2) axes. MIL allows reflect pads
/// below the size and replicate pads up to it; a larger replicate pad is applied in steps (the
/// edge of a replicated border is the same edge).
fn edge_pad(l: &mut Lower, x: &Var, pairs: &[(i64, i64)], mode: &str) -> Result<Var, String> {
    let mut x = x.clone();
    let mut left: Vec<(i64, i64)> = pairs.to_vec();
    while left.iter().any(|&p| p != (0, 0)) {
        let s = l.shape(&x)?;
        let first = s.len() - pairs.len();
        let mut step = Vec::with_capacity(pairs.len());
        for (j, p) in left.iter_mut().enumerate() {
            let n = i64::try_from(s[first + j]).map_err(|_| "axis too large".to_string())?;
            if mode == "reflect" && (p.0 >= n || p.1 >= n) {
                return Err(format!("pad: reflect padding ({}, {}) must be below the size {n} of axis {}", p.0, p.1, first + j));
            }
            if n == 0 {
                return Err(format!("pad: cannot {mode}-pad the empty axis {}", first + j));
            }
            let now = (p.0.min(n), p.1.min(n));
            *p = (p.0 - now.0, p.1 - now.1);
            step.push(now);
        }
        x = mil_pad(l, &x, &step, mode, 0.0)?;
    }
    Ok(x)
}

/// `concat` of `parts` along `axis` (one part is returned as is).
fn concat(l: &mut Lower, parts: &[Var], axis: usize) -> Result<Var, String> {
    if let [one] = parts {
        return Ok(one.clone());
    }
    let op = l.op(&shape::CONCAT).args("values", parts).konst("axis", Tensor::i32_scalar(axis as i32)).konst("interleave", Tensor::bool_scalar(false));
    op.build1().map_err(|e| e.to_string())
}

/// `aten::pad(self, pad, mode, value)`: constant, reflect, replicate or circular padding.
pub fn pad(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let r = l.shape(&x)?.len();
    let pairs = pad_pairs(&ints(&a[1])?, r)?;
    let mode = match &a[2] {
        Value::Str(s) => s.clone(),
        Value::None => "constant".into(),
        other => return Err(format!("pad: mode must be a string, got {}", other.describe())),
    };
    let value = if a[3] == Value::None { 0.0 } else { float(&a[3])? };
    Ok(Value::Tensor(pad_tensor(l, &x, &pairs, &mode, value)?))
}

/// `aten::constant_pad_nd(self, pad, value)`.
pub fn constant_pad_nd(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    pad(l, &[a[0].clone(), a[1].clone(), Value::Str("constant".into()), a[2].clone()])
}

/// `aten::reflection_pad{1,2,3}d(self, padding)`.
pub fn reflection_pad(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    pad(l, &[a[0].clone(), a[1].clone(), Value::Str("reflect".into()), Value::None])
}

/// `aten::replication_pad{1,2,3}d(self, padding)`.
pub fn replication_pad(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    pad(l, &[a[0].clone(), a[1].clone(), Value::Str("replicate".into()), Value::None])
}

/// `aten::_pad_circular(self, pad)`.
pub fn circular_pad(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    pad(l, &[a[0].clone(), a[1].clone(), Value::Str("circular".into()), Value::None])
}

/// The tensors of a list argument.
fn tensors(l: &Lower, v: &Value, what: &str) -> Result<Vec<Var>, String> {
    let (Value::List(items) | Value::Tuple(items)) = v else { return Err(format!("{what} needs a list of tensors")) };
    let vs = items.iter().map(|v| l.tensor(v)).collect::<Result<Vec<_>, _>>()?;
    if vs.is_empty() {
        return Err(format!("{what} of an empty list"));
    }
    Ok(vs)
}

/// `aten::stack(tensors, dim)` → `stack` (a new axis `dim`).
pub fn stack(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let vs = tensors(l, &a[0], "stack")?;
    let r = l.shape(&vs[0])?.len();
    let axis = dim(int(&a[1])?, r + 1)? as i32;
    built(l.op(&shape::STACK).args("values", &vs).konst("axis", Tensor::i32_scalar(axis)).build1())
}

/// `x` with `1`s put in front of its shape up to rank `rank` (torch's `atleast_{1,2}d`).
fn at_least(l: &mut Lower, x: &Var, rank: usize) -> Result<Var, String> {
    let s = l.shape(x)?;
    if s.len() >= rank {
        return Ok(x.clone());
    }
    let mut target = vec![1; rank - s.len()];
    target.extend(dims_i32(&s)?);
    var(built(l.op(&shape::RESHAPE).arg("x", x).konst("shape", Tensor::i32_vec(&target)).build1()))
}

/// `aten::hstack(tensors)`: `cat` along dim 1, or dim 0 for 1-D tensors.
pub fn hstack(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let vs = tensors(l, &a[0], "hstack")?;
    let vs = vs.iter().map(|v| at_least(l, v, 1)).collect::<Result<Vec<_>, _>>()?;
    let axis = usize::from(l.shape(&vs[0])?.len() > 1);
    Ok(Value::Tensor(concat(l, &vs, axis)?))
}

/// `aten::vstack(tensors)`: `cat` along dim 0 of the tensors made at least 2-D.
pub fn vstack(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let vs = tensors(l, &a[0], "vstack")?;
    let vs = vs.iter().map(|v| at_least(l, v, 2)).collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Tensor(concat(l, &vs, 0)?))
}

/// `split` of `x` along `d` into parts of `sizes` (all > 0), as a tuple.
fn split_sizes(l: &mut Lower, x: &Var, d: usize, sizes: &[i64]) -> Result<Vec<Var>, String> {
    if let Some(z) = sizes.iter().find(|&&s| s <= 0) {
        return Err(format!("split into a part of size {z} is not supported (Core ML has no empty tensors)"));
    }
    if sizes.len() == 1 {
        return Ok(vec![x.clone()]);
    }
    let sizes: Vec<i32> = sizes.iter().map(|&s| i32_of(s)).collect::<Result<_, _>>()?;
    let op = l.op(&shape::SPLIT).arg("x", x).konst("split_sizes", Tensor::i32_vec(&sizes)).konst("axis", Tensor::i32_scalar(d as i32));
    op.build().map_err(|e| e.to_string())
}

/// `aten::unbind(self, dim)`: the slices along `dim`, that axis removed.
pub fn unbind(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let d = dim(int(&a[1])?, s.len())?;
    let n = i64::try_from(s[d]).map_err(|_| format!("axis size {} is too large", s[d]))?;
    let parts = split_sizes(l, &x, d, &vec![1; usize::try_from(n).unwrap_or(0)])?;
    let hint = l.hint.clone();
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let q = l.b.op(&shape::SQUEEZE, &format!("{hint}_item")).arg("x", &p).konst("axes", Tensor::i32_vec(&[d as i32]));
        out.push(Value::Tensor(q.build1().map_err(|e| e.to_string())?));
    }
    Ok(Value::Tuple(out))
}

/// `aten::tensor_split(self, sections | indices, dim)`: `sections` parts (the first `n %
/// sections` one longer) or cuts at `indices`.
pub fn tensor_split(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let d = dim(int(&a[2])?, s.len())?;
    let n = i64::try_from(s[d]).map_err(|_| format!("axis size {} is too large", s[d]))?;
    let sizes: Vec<i64> = match &a[1] {
        Value::Int(k) if *k > 0 && usize::try_from(*k).is_ok_and(|k| k <= crate::mil::ops::MAX_OUTPUTS) => {
            (0..*k).map(|i| n / k + i64::from(i < n % k)).collect()
        }
        Value::Int(k) => return Err(format!("tensor_split into {k} sections")),
        other => {
            let mut cuts: Vec<i64> = ints(other)?.into_iter().map(|c| if c < 0 { (c + n).max(0) } else { c.min(n) }).collect();
            cuts.push(n);
            let mut prev = 0;
            cuts.into_iter().map(|c| {
                let size = (c - prev).max(0);
                prev = prev.max(c);
                size
            }).collect()
        }
    };
    Ok(Value::Tuple(split_sizes(l, &x, d, &sizes)?.into_iter().map(Value::Tensor).collect()))
}

/// c10 ScalarType codes of the integer dtypes (uint8, int8, int16, int32, int64): int32 in MIL.
const SCALAR_TYPES_INT: std::ops::RangeInclusive<i64> = 0..=4;
/// c10 ScalarType codes of fp16, fp32 and fp64: the compute float dtype in MIL.
const SCALAR_TYPES_FLOAT: std::ops::RangeInclusive<i64> = 5..=7;

/// The MIL dtype of a constructor's `dtype` argument (a c10 ScalarType code), `default` when None.
fn scalar_type(l: &Lower, code: &Value, default: DType) -> Result<DType, String> {
    match code {
        Value::None => Ok(default),
        Value::Int(SCALAR_TYPE_BOOL) => Ok(DType::Bool),
        Value::Int(c) if SCALAR_TYPES_INT.contains(c) => Ok(DType::I32),
        Value::Int(c) if SCALAR_TYPES_FLOAT.contains(c) => Ok(l.dtype),
        other => Err(format!("a tensor of ScalarType {} is not supported", other.describe())),
    }
}

/// A const of `shape` and MIL dtype `dt` (bool, int32 or float) filled with `x`.
fn konst_filled(l: &mut Lower, shape: &[usize], x: f64, dt: DType) -> Result<Value, String> {
    let n = const_elements(shape)?;
    let t = match dt {
        DType::Bool => Tensor::from_bools(shape, &vec![x != 0.0; n]),
        DType::I32 => Tensor::from_i32(shape, &vec![x as i32; n]),
        _ => l.cast_const(&Tensor::from_f32(shape, &vec![x as f32; n]))?,
    };
    let hint = l.hint.clone();
    let v = l.b.konst(&hint, t);
    l.fresh.insert(v.clone());
    Ok(Value::Tensor(v))
}

/// The tensor an in-place `fill_`/`zero_` overwrites, refused unless a constructor just made
/// it (see `Lower::fresh`): a write into a view or a computed tensor would be lost silently.
fn overwritable(l: &Lower, v: &Value, op: &str) -> Result<Var, String> {
    let x = l.tensor(v)?;
    if !l.fresh.contains(&x) {
        return Err(format!("{op} of a view or computed tensor (like `x[:, 1] = 0` in the model) is not supported: only tensors fresh from zeros/empty/full… can be overwritten"));
    }
    Ok(x)
}

/// `aten::zero` (`zero_`) of a tensor a constructor just made: zeros like it.
pub fn zero(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    overwritable(l, &a[0], "zero_")?;
    zeros_like(l, a)
}

/// A size-list argument as a shape.
fn sizes(v: &Value) -> Result<Vec<usize>, String> {
    ints(v)?.into_iter().map(|d| usize::try_from(d).map_err(|_| format!("negative size {d}"))).collect()
}

/// The MIL dtype a tensor like `v` has in the program: its own, floats in the compute dtype.
fn like_dtype(l: &Lower, v: &Value) -> Result<DType, String> {
    let t = l.ty(&l.tensor(v)?)?.dtype;
    Ok(if t.is_float() { l.dtype } else { t })
}

/// The default dtype of `full`'s fill value: int64 for ints, bool for bools, else float.
fn fill_dtype(l: &Lower, v: &Value) -> DType {
    match v {
        Value::Int(_) => DType::I32,
        Value::Bool(_) => DType::Bool,
        _ => l.dtype,
    }
}

/// `aten::zeros(size, dtype…)`, `aten::empty` (zeros: the values are never read before written).
pub fn zeros(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let dt = scalar_type(l, &a[1], l.dtype)?;
    konst_filled(l, &sizes(&a[0])?, 0.0, dt)
}

/// `aten::ones(size, dtype…)`.
pub fn ones(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let dt = scalar_type(l, &a[1], l.dtype)?;
    konst_filled(l, &sizes(&a[0])?, 1.0, dt)
}

/// `aten::full(size, fill_value, dtype…)`.
pub fn full(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let dt = scalar_type(l, &a[2], fill_dtype(l, &a[1]))?;
    konst_filled(l, &sizes(&a[0])?, float(&a[1])?, dt)
}

/// `aten::zeros_like(self, dtype…)`, `aten::empty_like`.
pub fn zeros_like(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let default = like_dtype(l, &a[0])?;
    let dt = scalar_type(l, a.get(1).unwrap_or(&Value::None), default)?;
    let s = l.shape(&l.tensor(&a[0])?)?;
    konst_filled(l, &s, 0.0, dt)
}

/// `aten::ones_like(self, dtype…)`.
pub fn ones_like(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let dt = scalar_type(l, &a[1], like_dtype(l, &a[0])?)?;
    let s = l.shape(&l.tensor(&a[0])?)?;
    konst_filled(l, &s, 1.0, dt)
}

/// `aten::fill(self, value)` (`fill_`) of a tensor a constructor just made: a const shaped and
/// typed like it.
pub fn fill(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    overwritable(l, &a[0], "fill_")?;
    let dt = like_dtype(l, &a[0])?;
    let s = l.shape(&l.tensor(&a[0])?)?;
    let v = match &a[1] {
        Value::Tensor(t) => {
            let c = l.b.value(t).and_then(|c| c.to_f32_vec()).ok_or("fill_ with a computed value is not supported")?;
            f64::from(*c.first().ok_or("fill_ with an empty tensor")?)
        }
        v => float(v)?,
    };
    konst_filled(l, &s, v, dt)
}

/// `aten::new_zeros(self, size, dtype…)`, `aten::new_empty` (zeros).
pub fn new_zeros(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let dt = scalar_type(l, &a[2], like_dtype(l, &a[0])?)?;
    konst_filled(l, &sizes(&a[1])?, 0.0, dt)
}

/// `aten::new_full(self, size, fill_value, dtype…)`.
pub fn new_full(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let dt = scalar_type(l, &a[3], like_dtype(l, &a[0])?)?;
    konst_filled(l, &sizes(&a[1])?, float(&a[2])?, dt)
}

/// `aten::scalar_tensor(s, dtype…)`: a rank-0 const (float unless a dtype says otherwise).
pub fn scalar_tensor(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let dt = scalar_type(l, &a[1], l.dtype)?;
    konst_filled(l, &[], float(&a[0])?, dt)
}

/// `aten::expand_as(self, other)`.
pub fn expand_as(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let s = l.shape(&l.tensor(&a[1])?)?;
    let size = Value::List(s.iter().map(|&d| Value::Int(d as i64)).collect());
    expand(l, &[a[0].clone(), size, Value::Bool(false)])
}

/// `aten::repeat(self, repeats)` → `tile` (extra leading repeats add leading axes).
pub fn repeat(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let reps = ints(&a[1])?;
    let s = l.shape(&x)?;
    if reps.len() < s.len() {
        return Err(format!("repeat needs at least {} repeats, got {}", s.len(), ints_shown(&reps)));
    }
    if reps.iter().any(|&r| r <= 0) {
        return Err(format!("repeat by {} is not supported (Core ML has no empty tensors)", ints_shown(&reps)));
    }
    let x = at_least(l, &x, reps.len())?;
    if reps.iter().all(|&r| r == 1) {
        return Ok(Value::Tensor(x));
    }
    let reps: Vec<i32> = reps.into_iter().map(i32_of).collect::<Result<_, _>>()?;
    built(l.op(&shape::TILE).arg("x", &x).konst("reps", Tensor::i32_vec(&reps)).build1())
}

/// `gather` of `x` along `axis` at the const `indices` (a 1-D list).
fn gather_const(l: &mut Lower, x: &Var, axis: usize, indices: &[i64]) -> Result<Var, String> {
    let ids: Vec<i32> = indices.iter().map(|&i| i32_of(i)).collect::<Result<_, _>>()?;
    let hint = l.hint.clone();
    let ids = l.b.konst(&format!("{hint}_indices"), Tensor::from_i32(&[ids.len()], &ids));
    l.op(&shape::GATHER).arg("x", x).arg("indices", &ids).konst("axis", Tensor::i32_scalar(axis as i32)).build1().map_err(|e| e.to_string())
}

/// `aten::repeat_interleave(self, repeats, dim)` with int (or const tensor) repeats: a
/// `gather` of each index repeated; no `dim` flattens first.
pub fn repeat_interleave(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let mut x = l.tensor(&a[0])?;
    let d = match &a[2] {
        Value::None => {
            let n = const_elements(&l.shape(&x)?)?;
            x = var(built(l.op(&shape::RESHAPE).arg("x", &x).konst("shape", Tensor::i32_vec(&dims_i32(&[n])?)).build1()))?;
            0
        }
        v => dim(int(v)?, l.shape(&x)?.len())?,
    };
    let n = l.shape(&x)?[d];
    let reps: Vec<i64> = match &a[1] {
        Value::Int(r) => vec![*r; n],
        Value::Tensor(t) => {
            let c = l.b.value(t).and_then(|c| c.to_i64_vec()).ok_or("repeat_interleave with computed repeats is not supported")?;
            if c.len() == 1 { vec![c[0]; n] } else { c }
        }
        other => return Err(format!("repeat_interleave repeats must be an int or a tensor, got {}", other.describe())),
    };
    if reps.len() != n || reps.iter().any(|&r| r < 0) {
        return Err(format!("repeat_interleave: repeats {} do not fit an axis of {n}", ints_shown(&reps)));
    }
    let total = reps.iter().try_fold(0usize, |acc, &r| usize::try_from(r).ok().and_then(|r| acc.checked_add(r))).ok_or("repeat count overflows")?;
    const_elements(&[total])?;
    let idx: Vec<i64> = reps.iter().enumerate().flat_map(|(i, &r)| std::iter::repeat_n(i as i64, r as usize)).collect();
    if idx.is_empty() {
        return Err("repeat_interleave to an empty tensor is not supported".into());
    }
    Ok(Value::Tensor(gather_const(l, &x, d, &idx)?))
}

/// `aten::flip(self, dims)` → `slice_by_index` with stride −1 on the flipped axes.
pub fn flip(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let r = l.shape(&x)?.len();
    let dims = ints(&a[1])?.into_iter().map(|d| dim(d, r)).collect::<Result<Vec<_>, _>>()?;
    if dims.is_empty() {
        return Ok(a[0].clone());
    }
    let st: Vec<i32> = (0..r).map(|i| if dims.contains(&i) { -1 } else { 1 }).collect();
    let op = l
        .op(&shape::SLICE_BY_INDEX)
        .arg("x", &x)
        .konst("begin", Tensor::i32_vec(&vec![0; r]))
        .konst("end", Tensor::i32_vec(&vec![0; r]))
        .konst("stride", Tensor::i32_vec(&st))
        .konst("begin_mask", Tensor::from_bools(&[r], &vec![true; r]))
        .konst("end_mask", Tensor::from_bools(&[r], &vec![true; r]));
    built(op.build1())
}

/// `aten::roll(self, shifts, dims)`: per axis, the last `shift` elements moved to the front
/// (two slices and a `concat`); no dims rolls the flattened tensor.
pub fn roll(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let shifts = ints(&a[1])?;
    let dims = ints(&a[2])?;
    if dims.is_empty() {
        let n = const_elements(&s)?;
        let flat = var(built(l.op(&shape::RESHAPE).arg("x", &x).konst("shape", Tensor::i32_vec(&dims_i32(&[n])?)).build1()))?;
        let rolled = roll(l, &[Value::Tensor(flat), a[1].clone(), Value::List(vec![Value::Int(0)])])?;
        let rolled = l.tensor(&rolled)?;
        return built(l.op(&shape::RESHAPE).arg("x", &rolled).konst("shape", Tensor::i32_vec(&dims_i32(&s)?)).build1());
    }
    if shifts.len() != dims.len() {
        return Err(format!("roll: {} shifts for {} dims", shifts.len(), dims.len()));
    }
    let mut x = x;
    for (&shift, &d) in shifts.iter().zip(&dims) {
        let d = dim(d, s.len())?;
        let n = i64::try_from(s[d]).map_err(|_| format!("axis size {} is too large", s[d]))?;
        if n == 0 || shift.rem_euclid(n) == 0 {
            continue;
        }
        let k = shift.rem_euclid(n);
        let tail = var(slice_axis(l, &x, d, n - k, n, 1, false))?;
        let head = var(slice_axis(l, &x, d, 0, n - k, 1, false))?;
        x = concat(l, &[tail, head], d)?;
    }
    Ok(Value::Tensor(x))
}

/// `aten::narrow(self, dim, start, length)` → a slice.
pub fn narrow(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let d = dim(int(&a[1])?, s.len())?;
    let n = i64::try_from(s[d]).map_err(|_| format!("axis size {} is too large", s[d]))?;
    let start = match &a[2] {
        Value::Tensor(t) => l.b.value(t).and_then(|c| c.as_i64()).ok_or("narrow with a computed start is not supported")?,
        v => int(v)?,
    };
    let start = if start < 0 { start + n } else { start };
    let len = int(&a[3])?;
    if start < 0 || len < 0 || start.checked_add(len).is_none_or(|e| e > n) {
        return Err(format!("narrow({start}, {len}) is out of range for size {n}"));
    }
    if start == 0 && len == n {
        return Ok(a[0].clone());
    }
    slice_axis(l, &x, d, start, start + len, 1, false)
}

/// `aten::diff(self, n, dim, prepend, append)`: `prepend` and `append` concatenated along `dim`
/// first (they must have self's dtype), then `n` times `x[1:] - x[:-1]` there (two slices and a
/// `sub`). Bool tensors, whose difference torch takes as xor, are refused.
pub fn diff(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    if l.ty(&x)?.dtype == DType::Bool {
        return Err("diff of a bool tensor (torch's xor) is not supported".into());
    }
    let n = int(&a[1])?;
    let d = dim(int(&a[2])?, l.shape(&x)?.len())?;
    let dtype = l.ty(&x)?.dtype;
    let mut parts = Vec::new();
    for v in [&a[3], &Value::Tensor(x.clone()), &a[4]] {
        if !matches!(v, Value::None) {
            let t = l.tensor(v)?;
            if l.ty(&t)?.dtype != dtype {
                return Err("diff with prepend or append of another dtype than self is not supported".into());
            }
            parts.push(t);
        }
    }
    let mut x = concat(l, &parts, d)?;
    for _ in 0..n.max(0) {
        let len = i64::try_from(l.shape(&x)?[d]).map_err(|_| "axis size is too large".to_string())?;
        if len == 0 {
            break;
        }
        let later = slice_axis(l, &x, d, 1, len, 1, false)?;
        let earlier = slice_axis(l, &x, d, 0, len - 1, 1, false)?;
        x = var(super::elementwise::binary(l, &later, &earlier, &ew::SUB, |p, q| p - q))?;
    }
    Ok(Value::Tensor(x))
}

/// `aten::unflatten(self, dim, sizes)` as a reshape (`-1` allowed in `sizes`).
pub fn unflatten(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let d = dim(int(&a[1])?, s.len())?;
    let mut target = dims_i32(&s[..d])?;
    target.extend(ints(&a[2])?.into_iter().map(i32_of).collect::<Result<Vec<_>, _>>()?);
    target.extend(dims_i32(&s[d + 1..])?);
    built(l.op(&shape::RESHAPE).arg("x", &x).konst("shape", Tensor::i32_vec(&target)).build1())
}

/// `aten::movedim(self, source, destination)` (ints or lists) as a transpose.
pub fn movedim(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let r = l.shape(&x)?.len();
    let src = ints(&a[1])?.into_iter().map(|d| dim(d, r)).collect::<Result<Vec<_>, _>>()?;
    let dst = ints(&a[2])?.into_iter().map(|d| dim(d, r)).collect::<Result<Vec<_>, _>>()?;
    if src.len() != dst.len() {
        return Err(format!("movedim: {} sources for {} destinations", src.len(), dst.len()));
    }
    let mut perm: Vec<Option<usize>> = vec![None; r];
    for (&s, &d) in src.iter().zip(&dst) {
        if perm[d].replace(s).is_some() {
            return Err("movedim: repeated destination".into());
        }
    }
    let mut rest = (0..r).filter(|i| !src.contains(i));
    let perm: Vec<i32> = perm.into_iter().map(|p| p.or_else(|| rest.next()).map(|p| p as i32).ok_or("movedim: repeated source")).collect::<Result<_, _>>()?;
    permute_by(l, &x, &perm)
}

/// `aten::t(self)`: transposes a 2-D tensor; 0-D and 1-D ones are unchanged.
pub fn t(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    match l.shape(&x)?.len() {
        0 | 1 => Ok(a[0].clone()),
        2 => permute_by(l, &x, &[1, 0]),
        r => Err(format!("t() needs a tensor of rank ≤ 2, got rank {r}")),
    }
}

/// `aten::mT(self)`: swaps the last two axes.
pub fn mt(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    transpose(l, &[a[0].clone(), Value::Int(-2), Value::Int(-1)])
}

/// `aten::numel(self)`: the static element count.
pub fn numel(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let s = l.shape(&l.tensor(&a[0])?)?;
    let n = crate::mil::types::checked_elements(&s).and_then(|n| i64::try_from(n).ok()).ok_or("element count overflows")?;
    Ok(Value::Int(n))
}

/// `aten::dim(self)`: the rank.
pub fn rank(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    Ok(Value::Int(l.shape(&l.tensor(&a[0])?)?.len() as i64))
}

/// `aten::index_put(self, indices, values, accumulate)` (and `x[i] = v`, `x[mask] = v`, which
/// trace to its in-place form). One boolean mask over the leading axes, computed or constant,
/// becomes `select` (values must broadcast over the masked rows, as a scalar or a row does: a
/// value per selected row depends on the data); constant integer indices become one
/// `scatter_along_axis` over the indexed axes flattened (`update`, or `add` when accumulating).
pub fn index_put(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let (Value::List(items) | Value::Tuple(items)) = &a[1] else { return Err("index_put needs a list of index tensors".into()) };
    let accumulate = a[3] == Value::Bool(true);
    let values = match &a[2] {
        Value::Tensor(v) => v.clone(),
        v => {
            let dt = l.ty(&x)?.dtype;
            let Value::Tensor(t) = konst_filled(l, &[], float(v)?, dt)? else { unreachable!("konst_filled returns a tensor") };
            t
        }
    };
    let vs = l.shape(&values)?;
    let mask = match items.as_slice() {
        [Value::Tensor(m)] if l.ty(m)?.dtype == DType::Bool => Some(m.clone()),
        _ => None,
    };
    if let Some(m) = mask {
        let ms = l.shape(&m)?;
        if ms.len() > s.len() || ms[..] != s[..ms.len()] {
            return Err(format!("mask of shape {} does not cover the leading axes of {}", dims_shown(&ms), dims_shown(&s)));
        }
        // torch puts values of shape (selected rows, …) or broadcastable to that; only the
        // broadcast forms are known before the mask is: a leading size-1 axis at most.
        let lead = vs.iter().take_while(|&&d| d == 1).count();
        let trailing = &vs[lead..];
        if trailing.len() > s.len() - ms.len() {
            return Err(format!("values of shape {} give one value per selected row, which depends on the data; only values that broadcast over the rows (a scalar or one row) are supported", dims_shown(&vs)));
        }
        let mut wide = dims_i32(&ms)?;
        wide.resize(s.len(), 1);
        let hint = format!("{}_mask", l.hint);
        let m = l.b.op(&shape::RESHAPE, &hint).arg("x", &m).konst("shape", Tensor::i32_vec(&wide)).build1().map_err(|e| e.to_string())?;
        let v = if lead > 0 {
            let hint = format!("{}_values", l.hint);
            l.b.op(&shape::RESHAPE, &hint).arg("x", &values).konst("shape", Tensor::i32_vec(&dims_i32(trailing)?)).build1().map_err(|e| e.to_string())?
        } else {
            values
        };
        if !accumulate {
            return super::elementwise::where_(l, &[Value::Tensor(m), Value::Tensor(v), Value::Tensor(x)]);
        }
        let dt = l.ty(&x)?.dtype;
        let zero = konst_filled(l, &[], 0.0, dt)?;
        let Value::Tensor(added) = super::elementwise::where_(l, &[Value::Tensor(m), Value::Tensor(v), zero])? else {
            return Err("select produced no tensor".into());
        };
        return built(l.op(&ew::ADD).arg("x", &x).arg("y", &added).build1());
    }
    // Slices before one index tensor (`x[:, :, pos] = v`, what `index_copy` decomposes to).
    if let Some((Value::Tensor(idx), before)) = items.split_last().filter(|(_, before)| before.iter().all(|v| *v == Value::None)) {
        if before.len() < s.len() && l.ty(idx)?.dtype != DType::Bool && l.shape(idx)?.len() <= 1 {
            let mode = if accumulate { "add" } else { "update" };
            return put_along(l, x, before.len(), &Value::Tensor(idx.clone()), values, mode).map_err(|m| format!("index_put: {m}"));
        }
    }
    let k = items.len();
    let (shape, flat, rows) = flat_rows(l, &s, items)?;
    // Updates: the values broadcast to (index shape, the axes after the indexed ones), one row each.
    let mut target = shape.clone();
    target.extend_from_slice(&s[k..]);
    let rest: usize = s[k..].iter().product();
    let n = const_elements(&target)?;
    let size: Vec<Value> = target.iter().map(|&d| Value::Int(d as i64)).collect();
    let Value::Tensor(wide) = expand(l, &[Value::Tensor(values), Value::List(size), Value::Bool(false)])? else {
        return Err("expand produced no tensor".into());
    };
    let mut rows_shape = vec![flat.len()];
    rows_shape.extend_from_slice(&s[k..]);
    let hint = l.hint.clone();
    let updates = l.b.op(&shape::RESHAPE, &format!("{hint}_updates")).arg("x", &wide).konst("shape", Tensor::i32_vec(&dims_i32(&rows_shape)?)).build1().map_err(|e| e.to_string())?;
    let mut ids = Vec::with_capacity(n);
    for &r in &flat {
        ids.extend(std::iter::repeat(i32_of(r)?).take(rest));
    }
    let ids = l.b.konst(&format!("{hint}_rows_ids"), Tensor::from_i32(&rows_shape, &ids));
    let data = rows_view(l, &x, &s, k, rows)?;
    let mode = if accumulate { "add" } else { "update" };
    let op = l.b.op(&shape::SCATTER_ALONG_AXIS, &format!("{hint}_put")).arg("data", &data).arg("indices", &ids).arg("updates", &updates);
    let put = op.konst("axis", Tensor::i32_scalar(0)).konst("mode", Tensor::string(mode)).build1().map_err(|e| e.to_string())?;
    built(l.op(&shape::RESHAPE).arg("x", &put).konst("shape", Tensor::i32_vec(&dims_i32(&s)?)).build1())
}

/// `aten::embedding_bag` / `aten::_embedding_bag(weight, indices, offsets, scale_grad_by_freq,
/// mode, sparse, per_sample_weights, include_last_offset, padding_idx)`: sums (mode 0), means
/// (1) or maxima (2) of the embedding rows of each bag. Bags are rows of 2-D indices, or runs of
/// 1-D indices starting at constant `offsets` (`nn.EmbeddingBag` on 2-D input traces to those).
/// Bags of different lengths are padded on the host to the longest with a constant validity
/// mask, so every form is one `gather` of (bags, length) rows and a masked reduction over the
/// length. Entries equal to `padding_idx` (≥ 0; −1 is none) are left out, and an empty bag is
/// zeros, as in torch. Only the first of torch's four results is lowered; the others (bag
/// bookkeeping for gradients) are `None`.
pub fn embedding_bag(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let w = l.tensor(&a[0])?;
    let ws = l.shape(&w)?;
    let [_, width] = ws[..] else { return Err(format!("weight must be 2-D, got {}", dims_shown(&ws))) };
    let idx = int32(l, &a[1])?;
    let is = l.shape(&idx)?;
    let mode = int(&a[4])?;
    if !(0..=2).contains(&mode) {
        return Err(format!("mode {mode} is not one of 0 (sum), 1 (mean), 2 (max)"));
    }
    let psw = match &a[6] {
        Value::None => None,
        v if mode == 0 => Some(l.tensor(v)?),
        _ => return Err("per_sample_weights are only defined for mode sum".into()),
    };
    let padding = match &a[8] {
        Value::None => None,
        v => Some(int(v)?).filter(|&p| p >= 0),
    };
    let dt = l.ty(&w)?.dtype;
    // Bag `b` covers positions bags[b] of the flattened indices.
    let bags: Vec<std::ops::Range<usize>> = match is[..] {
        [b, n] => (0..b).map(|i| i * n..(i + 1) * n).collect(),
        [n] => {
            let Value::Tensor(o) = &a[2] else { return Err("1-D indices need offsets".into()) };
            let offsets = l.b.value(o).and_then(|t| t.to_i64_vec()).ok_or("offsets computed at run time are not supported: bag boundaries must be known when converting")?;
            let last = a[7] == Value::Bool(true);
            let starts = if last { &offsets[..offsets.len().saturating_sub(1)] } else { &offsets[..] };
            let ends = offsets.iter().skip(1).copied().chain(std::iter::once(n as i64));
            let mut bags = Vec::with_capacity(starts.len());
            for (&s, e) in starts.iter().zip(ends) {
                let e = e.min(n as i64);
                if s < 0 || s > e {
                    return Err(format!("offsets {} must start at 0 and not decrease", ints_shown(&offsets)));
                }
                bags.push(s as usize..e as usize);
            }
            bags
        }
        _ => return Err(format!("indices must be 1-D or 2-D, got {}", dims_shown(&is))),
    };
    let count = bags.len();
    let longest = bags.iter().map(|r| r.len()).max().unwrap_or(0);
    let hint = l.hint.clone();
    if longest == 0 {
        return Ok(Value::Tuple(vec![konst_filled(l, &[count, width], 0.0, dt)?, Value::None, Value::None, Value::None]));
    }
    const_elements(&[count, longest, width])?;
    let ragged = bags.iter().any(|r| r.len() != longest);
    let flat_len: usize = is.iter().product();
    // (bags, longest) positions into the flattened indices; padded slots repeat position 0.
    let mut pos = Vec::with_capacity(count * longest);
    for r in &bags {
        pos.extend(r.clone().map(|p| p as i32));
        pos.extend(std::iter::repeat(0).take(longest - r.len()));
    }
    let grid = |l: &mut Lower, v: &Var, what: &str| -> Result<Var, String> {
        let flat = l.b.op(&shape::RESHAPE, &format!("{hint}_{what}_flat")).arg("x", v).konst("shape", Tensor::i32_vec(&[flat_len as i32])).build1().map_err(|e| e.to_string())?;
        let p = l.b.konst(&format!("{hint}_{what}_positions"), Tensor::from_i32(&[count, longest], &pos));
        l.b.op(&shape::GATHER, &format!("{hint}_{what}_bags")).arg("x", &flat).arg("indices", &p).konst("axis", Tensor::i32_scalar(0)).build1().map_err(|e| e.to_string())
    };
    let ids = if ragged || is.len() == 1 { grid(l, &idx, "ids")? } else { idx.clone() };
    let mut keep = ragged.then(|| {
        let valid: Vec<bool> = bags.iter().flat_map(|r| (0..longest).map(move |i| i < r.len())).collect();
        l.b.konst(&format!("{hint}_valid"), Tensor::from_bools(&[count, longest], &valid))
    });
    if let Some(p) = padding {
        let not_pad = l.b.op(&ew::NOT_EQUAL, &format!("{hint}_not_padding")).arg("x", &ids).konst("y", Tensor::i32_scalar(i32_of(p)?)).build1().map_err(|e| e.to_string())?;
        keep = Some(match keep {
            Some(k) => l.b.op(&ew::LOGICAL_AND, &format!("{hint}_kept")).arg("x", &k).arg("y", &not_pad).build1().map_err(|e| e.to_string())?,
            None => not_pad,
        });
    }
    let rows = l.b.op(&shape::GATHER, &format!("{hint}_rows")).arg("x", &w).arg("indices", &ids).konst("axis", Tensor::i32_scalar(0)).build1().map_err(|e| e.to_string())?;
    let column = |l: &mut Lower, v: &Var, what: &str| {
        l.b.op(&shape::EXPAND_DIMS, &format!("{hint}_{what}_column")).arg("x", v).konst("axes", Tensor::i32_vec(&[-1])).build1().map_err(|e| e.to_string())
    };
    let reduce = |l: &mut Lower, def: &'static crate::mil::ops::OpDef, v: &Var, keep_dims: bool| {
        let op = l.b.op(def, &format!("{hint}_{}", def.name)).arg("x", v).konst("axes", Tensor::i32_vec(&[1])).konst("keep_dims", Tensor::bool_scalar(keep_dims));
        op.build1().map_err(|e| e.to_string())
    };
    let keep_f = match &keep {
        Some(k) => Some(cast_to(l, k, dt, "kept_f")?),
        None => None,
    };
    let out = if mode == 2 {
        let Some(k) = keep else { return Ok(Value::Tuple(vec![Value::Tensor(reduce(l, &reduce::REDUCE_MAX, &rows, false)?), Value::None, Value::None, Value::None])) };
        // Left-out entries become −∞ before the maximum; a bag with none kept is zeros.
        let kc = column(l, &k, "kept")?;
        let low = l.b.konst(&format!("{hint}_low"), Tensor::float_scalar(dt, f32::NEG_INFINITY));
        let masked = l.b.op(&ew::SELECT, &format!("{hint}_masked")).arg("cond", &kc).arg("a", &rows).arg("b", &low).build1().map_err(|e| e.to_string())?;
        let m = reduce(l, &reduce::REDUCE_MAX, &masked, false)?;
        let n = reduce(l, &reduce::REDUCE_SUM, keep_f.as_ref().expect("keep_f follows keep"), true)?;
        let any = l.b.op(&ew::GREATER, &format!("{hint}_nonempty")).arg("x", &n).konst("y", Tensor::float_scalar(dt, 0.0)).build1().map_err(|e| e.to_string())?;
        let zero = l.b.konst(&format!("{hint}_zero"), Tensor::float_scalar(dt, 0.0));
        l.b.op(&ew::SELECT, &format!("{hint}_max")).arg("cond", &any).arg("a", &m).arg("b", &zero).build1().map_err(|e| e.to_string())?
    } else {
        let factor = match (psw, &keep_f) {
            (Some(p), k) => {
                let p = cast_to(l, &p, dt, "psw_f")?;
                let p = if ragged || is.len() == 1 { grid(l, &p, "psw")? } else { p };
                match k {
                    Some(k) => Some(l.b.op(&ew::MUL, &format!("{hint}_factor")).arg("x", &p).arg("y", k).build1().map_err(|e| e.to_string())?),
                    None => Some(p),
                }
            }
            (None, k) => k.clone(),
        };
        let weighted = match &factor {
            Some(f) => {
                let fc = column(l, f, "factor")?;
                l.b.op(&ew::MUL, &format!("{hint}_weighted")).arg("x", &rows).arg("y", &fc).build1().map_err(|e| e.to_string())?
            }
            None => rows,
        };
        match (mode, &keep_f) {
            (1, None) => reduce(l, &reduce::REDUCE_MEAN, &weighted, false)?,
            (1, Some(k)) => {
                let total = reduce(l, &reduce::REDUCE_SUM, &weighted, false)?;
                let n = reduce(l, &reduce::REDUCE_SUM, k, true)?;
                let n = l.b.op(&ew::MAXIMUM, &format!("{hint}_count")).arg("x", &n).konst("y", Tensor::float_scalar(dt, 1.0)).build1().map_err(|e| e.to_string())?;
                l.b.op(&ew::REAL_DIV, &format!("{hint}_mean")).arg("x", &total).arg("y", &n).build1().map_err(|e| e.to_string())?
            }
            _ => reduce(l, &reduce::REDUCE_SUM, &weighted, false)?,
        }
    };
    Ok(Value::Tuple(vec![Value::Tensor(out), Value::None, Value::None, Value::None]))
}

/// `aten::index_select(self, dim, index)` → `gather` (indices cast to int32).
pub fn index_select(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let r = l.shape(&x)?.len();
    let axis = dim(int(&a[1])?, r)? as i32;
    let idx = int32(l, &a[2])?;
    built(l.op(&shape::GATHER).arg("x", &x).arg("indices", &idx).konst("axis", Tensor::i32_scalar(axis)).build1())
}

/// `scatter_along_axis` of `updates` (a tensor, cut to the index's shape, or a scalar) into
/// `self` at `index` along `dim`, in MIL `mode`.
fn scatter_with(l: &mut Lower, a: &[Value], mode: &str) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let r = l.shape(&x)?.len();
    let axis = dim(int(&a[1])?, r)?;
    let idx = int32(l, &a[2])?;
    let is = l.shape(&idx)?;
    let dtype = l.ty(&x)?.dtype;
    let updates = match &a[3] {
        Value::Tensor(src) => {
            let ss = l.shape(src)?;
            if ss == is {
                src.clone()
            } else {
                // torch reads only the index-shaped corner of a larger `src`.
                let hint = format!("{}_src", l.hint);
                let op = l.b.op(&shape::SLICE_BY_SIZE, &hint).arg("x", src).konst("begin", Tensor::i32_vec(&vec![0; ss.len()])).konst("size", Tensor::i32_vec(&dims_i32(&is)?));
                op.build1().map_err(|e| e.to_string())?
            }
        }
        v => {
            let Value::Tensor(u) = konst_filled(l, &is, float(v)?, dtype)? else { unreachable!("konst_filled returns a tensor") };
            u
        }
    };
    let op = l
        .op(&shape::SCATTER_ALONG_AXIS)
        .arg("data", &x)
        .arg("indices", &idx)
        .arg("updates", &updates)
        .konst("axis", Tensor::i32_scalar(axis as i32))
        .konst("mode", Tensor::string(mode));
    built(op.build1())
}

/// `aten::scatter(self, dim, index, src | value, reduce)` → `scatter_along_axis` (reduce
/// none → `update`, `add`, `multiply` → `mul`).
pub fn scatter(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let mode = match &a[4] {
        Value::None => "update",
        Value::Str(s) if s == "add" => "add",
        Value::Str(s) if s == "multiply" => "mul",
        other => return Err(format!("scatter: reduce {} is not supported (add, multiply)", other.describe())),
    };
    scatter_with(l, a, mode)
}

/// `aten::index_copy(self, dim, index, source)`: `self` with the slices `index[j]` along `dim`
/// replaced by the slices `j` of `source` (a KV cache written at a position) →
/// `scatter_along_axis` in `update` mode, the 1-D index laid along `dim` and expanded to
/// `source`'s shape.
pub fn index_copy(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let r = l.shape(&x)?.len();
    let axis = dim(int(&a[1])?, r)?;
    let source = l.tensor(&a[3])?;
    put_along(l, x, axis, &a[2], source, "update").map_err(|m| format!("index_copy: {m}"))
}

/// `x` with its slices `index[j]` along `axis` set to (`mode` `update`) or increased by (`add`)
/// the slices `j` of `source`, broadcast to `x`'s shape with `len(index)` along `axis`.
fn put_along(l: &mut Lower, x: Var, axis: usize, index: &Value, source: Var, mode: &str) -> Result<Value, String> {
    let s = l.shape(&x)?;
    let r = s.len();
    let idx = int32(l, index)?;
    let k = match l.shape(&idx)?[..] {
        [] => 1,
        [k] => k,
        _ => return Err("the index must be 1-D".into()),
    };
    let mut want = s.clone();
    want[axis] = k;
    let source = match expand(l, &[Value::Tensor(source), Value::List(want.iter().map(|&d| Value::Int(d as i64)).collect()), Value::Bool(false)]) {
        Ok(Value::Tensor(t)) if l.shape(&t)? == want => t,
        _ => return Err(format!("the values do not broadcast to {} ({k} slice(s) along dim {axis})", dims_shown(&want))),
    };
    let ss = want;
    let mut along = vec![1i32; r];
    along[axis] = i32::try_from(k).map_err(|_| "index_copy: too many indices".to_string())?;
    let hint = format!("{}_index", l.hint);
    let laid = l.b.op(&shape::RESHAPE, &hint).arg("x", &idx).konst("shape", Tensor::i32_vec(&along)).build1().map_err(|e| e.to_string())?;
    let size = Value::List(ss.iter().map(|&d| Value::Int(d as i64)).collect());
    let indices = expand(l, &[Value::Tensor(laid), size, Value::Bool(false)])?;
    scatter_with(l, &[Value::Tensor(x), Value::Int(axis as i64), indices, Value::Tensor(source)], mode)
}

/// `aten::copy(self, src)` (the functional `copy_`): `src` broadcast to `self`'s shape, in
/// `self`'s dtype.
pub fn copy(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let (s, dtype) = (l.shape(&x)?, l.ty(&x)?.dtype);
    let src = match &a[1] {
        Value::Tensor(t) => t.clone(),
        v => {
            let Value::Tensor(t) = konst_filled(l, &[], float(v)?, dtype)? else { unreachable!("konst_filled returns a tensor") };
            t
        }
    };
    let src = if l.ty(&src)?.dtype == dtype {
        src
    } else {
        let hint = format!("{}_cast", l.hint);
        l.b.op(&ew::CAST, &hint).arg("x", &src).konst("dtype", Tensor::string(dtype.name())).build1().map_err(|e| e.to_string())?
    };
    expand(l, &[Value::Tensor(src), Value::List(s.iter().map(|&d| Value::Int(d as i64)).collect()), Value::Bool(false)])
}

/// `aten::scatter_add(self, dim, index, src)` → `scatter_along_axis` in `add` mode.
pub fn scatter_add(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    scatter_with(l, a, "add")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mil::builder::Builder;
    use crate::mil::{Opset, TensorType};

    fn lower(shape: &[usize]) -> (Lower, Value) {
        let mut l = Lower { b: Builder::new(Opset::Ios16), dtype: DType::F32, hint: "out".into(), precision_notes: Vec::new(), fresh: Default::default() };
        let x = l.b.input("x", TensorType::new(DType::F32, shape));
        (l, Value::Tensor(x))
    }

    fn pad_args(x: &Value, pad: &[i64], mode: &str) -> Vec<Value> {
        vec![x.clone(), Value::List(pad.iter().map(|&p| Value::Int(p)).collect()), Value::Str(mode.into()), Value::None]
    }

    #[test]
    fn pad_errors_name_the_mode_and_the_limit() {
        let (mut l, x) = lower(&[1, 2, 3, 4]);
        let e = pad(&mut l, &pad_args(&x, &[1, 1], "symmetric")).unwrap_err();
        assert!(e.contains("mode `symmetric` is not supported"), "{e}");
        let e = pad(&mut l, &pad_args(&x, &[4, 0], "reflect")).unwrap_err();
        assert!(e.contains("reflect padding (4, 0) must be below the size 4"), "{e}");
        let e = pad(&mut l, &pad_args(&x, &[-1, 0], "replicate")).unwrap_err();
        assert!(e.contains("only supported in constant mode"), "{e}");
        let e = pad(&mut l, &pad_args(&x, &[1, 1, 1], "constant")).unwrap_err();
        assert!(e.contains("before/after pairs"), "{e}");
    }

    #[test]
    fn fill_overwrites_only_fresh_constructor_results() {
        let (mut l, x) = lower(&[2, 3]);
        let e = fill(&mut l, &[x, Value::Float(0.0)]).unwrap_err();
        assert!(e.contains("fill_ of a view or computed tensor"), "{e}");
        let fresh = zeros(&mut l, &[Value::List(vec![Value::Int(2), Value::Int(3)]), Value::None]).unwrap();
        let filled = fill(&mut l, &[fresh.clone(), Value::Float(0.5)]).unwrap();
        assert_eq!(l.b.value(&l.tensor(&filled).unwrap()).unwrap().to_f32_vec().unwrap(), [0.5; 6]);
        // A slice of the fresh tensor is a view: writing into it is refused.
        let view = select(&mut l, &[fresh, Value::Int(1), Value::Int(0)]).unwrap();
        assert!(zero(&mut l, &[view]).is_err());
    }

    #[test]
    fn index_put_and_embedding_bag_refuse_what_depends_on_the_data() {
        // A value per selected row: how many rows the mask selects is known only at run time.
        let (mut l, x) = lower(&[2, 3]);
        let mask = l.b.input("m", TensorType::new(DType::Bool, &[2, 3]));
        let per_row = l.b.input("v", TensorType::new(DType::F32, &[4]));
        let e = index_put(&mut l, &[x, Value::List(vec![Value::Tensor(mask)]), Value::Tensor(per_row), Value::Bool(false)]).unwrap_err();
        assert!(e.contains("one value per selected row"), "{e}");
        // Bag boundaries given at run time.
        let w = l.b.input("w", TensorType::new(DType::F32, &[10, 4]));
        let ids = l.b.input("ids", TensorType::new(DType::I32, &[6]));
        let offsets = l.b.input("offsets", TensorType::new(DType::I32, &[3]));
        let args = |o: Value, mode: i64| vec![Value::Tensor(w.clone()), Value::Tensor(ids.clone()), o, Value::Bool(false), Value::Int(mode), Value::Bool(false), Value::None, Value::Bool(false), Value::None];
        let e = embedding_bag(&mut l, &args(Value::Tensor(offsets), 0)).unwrap_err();
        assert!(e.contains("offsets computed at run time"), "{e}");
        let decreasing = l.b.konst("dec", Tensor::from_i32(&[3], &[0, 4, 2]));
        let e = embedding_bag(&mut l, &args(Value::Tensor(decreasing), 1)).unwrap_err();
        assert!(e.contains("must start at 0 and not decrease"), "{e}");
        let ok = l.b.konst("ok", Tensor::from_i32(&[2], &[0, 2]));
        let e = embedding_bag(&mut l, &args(Value::Tensor(ok), 3)).unwrap_err();
        assert!(e.contains("mode 3"), "{e}");
    }

    #[test]
    fn edge_pads_outside_the_last_two_axes_are_moved_last() {
        // Core ML rejects reflect/replicate padding before the last two axes: axis 1 is
        // transposed last, padded, transposed back; every `pad` sees at most the last two.
        let (mut l, x) = lower(&[1, 3, 4, 5]);
        let y = pad(&mut l, &pad_args(&x, &[1, 1, 0, 0, 2, 1], "replicate")).unwrap();
        assert_eq!(l.shape(&l.tensor(&y).unwrap()).unwrap(), [1, 6, 4, 7]);
        let out = l.tensor(&y).unwrap();
        let f = l.b.finish(&[out]);
        let pads: Vec<_> = f.block.operations.iter().filter(|o| o.op_type == "pad").collect();
        assert_eq!(pads.len(), 2);
        assert_eq!(f.block.operations.iter().filter(|o| o.op_type == "transpose").count(), 2);
    }
}
