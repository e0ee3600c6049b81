//! Lowerings of shape ops: `size` (folds to ints), reshapes, transposes, squeezes, `cat`,
//! `chunk`, `slice`, `select`.

use super::{const_elements, dim, dims_i32, dims_shown, float, i32_of, int, ints, ints_shown, Lower, Value};
use crate::mil::ops::{elementwise as ew, shape};
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

/// `aten::cat(tensors, dim)` → `concat`.
pub fn cat(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let (Value::List(items) | Value::Tuple(items)) = &a[0] else { return Err("cat needs a list of tensors".into()) };
    let vs = items.iter().map(|v| l.tensor(v)).collect::<Result<Vec<_>, _>>()?;
    let first = vs.first().ok_or("cat of an empty list")?;
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

/// `aten::index(self, indices)` with constant integer index tensors (what tracing leaves for
/// mask building): the indices broadcast, combine into flat row numbers on the host, and become
/// one `gather` over the indexed leading axes flattened.
pub fn index(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    let (Value::List(items) | Value::Tuple(items)) = &a[1] else { return Err("index needs a list of index tensors".into()) };
    if items.is_empty() || items.len() > s.len() {
        return Err(format!("{} indices for a rank-{} tensor", items.len(), s.len()));
    }
    let mut idx = Vec::with_capacity(items.len());
    for (d, it) in items.iter().enumerate() {
        let Value::Tensor(v) = it else { return Err("index with None (slices) is not supported yet".into()) };
        let c = l.b.value(v).ok_or("indexing with computed indices is not supported yet")?;
        let vals = c.to_i64_vec().filter(|_| c.dtype() != DType::Bool).ok_or("boolean-mask indexing is not supported yet")?;
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
    let mut flat = vec![0i64; total];
    let k = items.len();
    let too_large = || format!("indexed axes {} are too large to number their rows", dims_shown(&s[..k]));
    let rows = crate::mil::types::checked_elements(&s[..k]).filter(|&r| i32::try_from(r).is_ok()).ok_or_else(too_large)?;
    for (d, (sh, vals)) in idx.iter().enumerate() {
        // Below `rows`, which fits in int32, so the row numbers below cannot overflow.
        let stride = s.get(d + 1..k).map_or(1, |t| t.iter().product::<usize>()) as i64;
        for (o, f) in flat.iter_mut().enumerate() {
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
            *f += vals.get(pos).copied().unwrap_or(0) * stride;
        }
    }
    let mut flat_shape = dims_i32(&[rows])?;
    flat_shape.extend(dims_i32(&s[k..])?);
    let hint = l.hint.clone();
    let flat_x = built(l.b.op(&shape::RESHAPE, &format!("{hint}_rows")).arg("x", &x).konst("shape", Tensor::i32_vec(&flat_shape)).build1())?;
    let Value::Tensor(flat_x) = flat_x else { unreachable!("built returns a tensor") };
    let ids: Vec<i32> = flat.into_iter().map(i32_of).collect::<Result<_, _>>()?;
    let ids = l.b.konst(&format!("{hint}_rows_ids"), Tensor::from_i32(&shape, &ids));
    // Core ML's gather takes no bool data: gather the mask as int32 and compare back.
    let is_bool = l.ty(&flat_x)?.dtype == DType::Bool;
    let src = if is_bool { int32(l, &Value::Tensor(flat_x))? } else { flat_x };
    let gathered = l.b.op(&shape::GATHER, &format!("{hint}_gathered")).arg("x", &src).arg("indices", &ids).konst("axis", Tensor::i32_scalar(0));
    let gathered = gathered.build1().map_err(|e| e.to_string())?;
    if !is_bool {
        return Ok(Value::Tensor(gathered));
    }
    built(l.op(&ew::NOT_EQUAL).arg("x", &gathered).konst("y", Tensor::i32_scalar(0)).build1())
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
