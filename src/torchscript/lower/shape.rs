//! Lowerings of shape ops: `size` (folds to ints), reshapes, transposes, squeezes, `cat`,
//! `chunk`, `slice`, `select`.

use super::{dim, i32_of, int, ints, Lower, Value};
use crate::mil::ops::shape;
use crate::mil::Tensor;

fn built(r: Result<crate::mil::builder::Var, crate::mil::ops::TypeError>) -> Result<Value, String> {
    r.map(Value::Tensor).map_err(|e| e.to_string())
}

/// `aten::size(self, dim)`: the static size as an int (or all sizes as a list).
pub fn size(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    let x = l.tensor(&a[0])?;
    let s = l.shape(&x)?;
    match &a[1] {
        Value::None => Ok(Value::List(s.iter().map(|&d| Value::Int(d as i64)).collect())),
        d => Ok(Value::Int(s[dim(int(d)?, s.len())?] as i64)),
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
    let mut target: Vec<i32> = s[..b].iter().map(|&d| d as i32).collect();
    target.push(s[b..=e].iter().product::<usize>() as i32);
    target.extend(s[e + 1..].iter().map(|&d| d as i32));
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
    let n = s[d] as i64;
    let each = (n + chunks - 1) / chunks;
    let mut sizes = Vec::new();
    let mut left = n;
    while left > 0 {
        sizes.push(i32_of(each.min(left))?);
        left -= each;
    }
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
    let n = s[d] as i64;
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
    let n = s[d] as i64;
    let i = int(&a[2])?;
    let i = if i < 0 { i + n } else { i };
    if !(0..n).contains(&i) {
        return Err(format!("select index {i} out of range for size {n}"));
    }
    slice_axis(l, &x, d, i, i + 1, 1, true)
}
