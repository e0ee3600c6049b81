//! Data movement without arithmetic: permutes, strided slices, concatenation and splitting along
//! one axis, tiling and padding. Generic over the element type so fp/int/bool tensors share it.
//! Called by the shape kernels in `mil::ops::shape`.

use super::{around, numel, offsets, strides};

/// `x` with its axes permuted: output axis `i` is input axis `perm[i]` (numpy `transpose`).
/// `None` when `perm` is not a permutation of the rank.
pub fn transpose<T: Copy>(x: &[T], shape: &[usize], perm: &[usize]) -> Option<(Vec<T>, Vec<usize>)> {
    let mut seen = perm.to_vec();
    seen.sort_unstable();
    if seen != (0..shape.len()).collect::<Vec<_>>() || x.len() != numel(shape) {
        return None;
    }
    let st = strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let out_strides: Vec<isize> = perm.iter().map(|&p| st[p] as isize).collect();
    Some((offsets(&out_shape, &out_strides, 0).into_iter().map(|o| x[o]).collect(), out_shape))
}

/// A strided view copied out: per axis `start`, `step` (may be negative) and output length.
/// The caller has resolved Python slice rules so every index is in range.
pub fn slice<T: Copy>(x: &[T], shape: &[usize], start: &[usize], step: &[isize], len: &[usize]) -> Vec<T> {
    let st = strides(shape);
    let base: isize = start.iter().zip(&st).map(|(&s, &t)| (s * t) as isize).sum();
    let ss: Vec<isize> = step.iter().zip(&st).map(|(&s, &t)| s * t as isize).collect();
    offsets(len, &ss, base).into_iter().map(|o| x[o]).collect()
}

/// Joins `parts` (each `(data, shape)`, equal except on `axis`) along `axis`; with `interleave`,
/// takes one slice of each part in turn (every part must then have the same size on `axis`).
pub fn concat<T: Copy>(parts: &[(&[T], &[usize])], axis: usize, interleave: bool) -> Option<(Vec<T>, Vec<usize>)> {
    let (_, first) = parts.first()?;
    if axis >= first.len() {
        return None;
    }
    let mut out_shape = first.to_vec();
    out_shape[axis] = parts.iter().map(|(_, s)| s.get(axis).copied().unwrap_or(0)).sum();
    for (d, s) in parts {
        if s.len() != first.len() || d.len() != numel(s) || (0..s.len()).any(|i| i != axis && s[i] != first[i]) {
            return None;
        }
    }
    let (outer, _, inner) = around(first, axis);
    let mut out = Vec::with_capacity(numel(&out_shape));
    if interleave {
        let n = first[axis];
        if parts.iter().any(|(_, s)| s[axis] != n) {
            return None;
        }
        for o in 0..outer {
            for j in 0..n {
                for (d, _) in parts {
                    let at = (o * n + j) * inner;
                    out.extend_from_slice(&d[at..at + inner]);
                }
            }
        }
    } else {
        for o in 0..outer {
            for (d, s) in parts {
                let chunk = s[axis] * inner;
                out.extend_from_slice(&d[o * chunk..(o + 1) * chunk]);
            }
        }
    }
    Some((out, out_shape))
}

/// Cuts `x` along `axis` into pieces of `sizes` (which must add up to the axis length).
pub fn split<T: Copy>(x: &[T], shape: &[usize], axis: usize, sizes: &[usize]) -> Option<Vec<(Vec<T>, Vec<usize>)>> {
    if axis >= shape.len() || sizes.iter().sum::<usize>() != shape[axis] || x.len() != numel(shape) {
        return None;
    }
    let (outer, n, inner) = around(shape, axis);
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let mut data = Vec::with_capacity(outer * size * inner);
        for o in 0..outer {
            let at = (o * n + start) * inner;
            data.extend_from_slice(&x[at..at + size * inner]);
        }
        let mut s = shape.to_vec();
        s[axis] = size;
        out.push((data, s));
        start += size;
    }
    Some(out)
}

/// Joins `parts` (data, shape) along `axis` by copying contiguous runs (the inverse of
/// [`split`]); `None` unless the shapes agree off `axis`.
pub fn join<T: Copy>(parts: &[(&[T], &[usize])], axis: usize) -> Option<(Vec<T>, Vec<usize>)> {
    let (_, first) = parts.first()?;
    let fits = |s: &[usize]| s.len() == first.len() && (0..s.len()).all(|i| i == axis || s[i] == first[i]);
    if axis >= first.len() || !parts.iter().all(|(x, s)| fits(s) && x.len() == numel(s)) {
        return None;
    }
    let mut shape = first.to_vec();
    shape[axis] = parts.iter().map(|(_, s)| s[axis]).sum();
    let (outer, _, inner) = around(&shape, axis);
    let mut out = Vec::with_capacity(numel(&shape));
    for o in 0..outer {
        for (x, s) in parts {
            let run = s[axis] * inner;
            out.extend_from_slice(&x[o * run..(o + 1) * run]);
        }
    }
    Some((out, shape))
}

/// `x` repeated `reps[i]` times along each axis (numpy `tile` with `len(reps) == rank`).
pub fn tile<T: Copy>(x: &[T], shape: &[usize], reps: &[usize]) -> Option<(Vec<T>, Vec<usize>)> {
    if reps.len() != shape.len() || x.len() != numel(shape) {
        return None;
    }
    let out_shape: Vec<usize> = shape.iter().zip(reps).map(|(&s, &r)| s * r).collect();
    let st = strides(shape);
    let out_st = strides(&out_shape);
    let out = (0..numel(&out_shape))
        .map(|flat| {
            let src: usize = (0..shape.len()).map(|i| (flat / out_st[i] % out_shape[i]) % shape[i] * st[i]).sum();
            x[src]
        })
        .collect();
    Some((out, out_shape))
}

/// How `pad` fills the border (MIL `pad.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// A constant value.
    Constant,
    /// Mirror without repeating the edge (`[1,2,3]` → `3,2 | 1,2,3 | 2,1`).
    Reflect,
    /// Repeat the edge value.
    Replicate,
}

/// `x` padded by `before[i]`/`after[i]` on each axis. Reflect needs `pad < size` per axis, replicate a non-empty axis.
pub fn pad<T: Copy>(
    x: &[T],
    shape: &[usize],
    before: &[usize],
    after: &[usize],
    mode: PadMode,
    value: T,
) -> Option<(Vec<T>, Vec<usize>)> {
    let r = shape.len();
    if before.len() != r || after.len() != r || x.len() != numel(shape) {
        return None;
    }
    if mode == PadMode::Reflect && (0..r).any(|i| before[i] >= shape[i].max(1) || after[i] >= shape[i].max(1)) {
        return None;
    }
    // Replicating needs an edge to copy: an empty axis cannot grow.
    if mode == PadMode::Replicate && (0..r).any(|i| shape[i] == 0 && before[i] + after[i] > 0) {
        return None;
    }
    let out_shape: Vec<usize> = (0..r).map(|i| shape[i] + before[i] + after[i]).collect();
    let st = strides(shape);
    let out_st = strides(&out_shape);
    let mut out = Vec::with_capacity(numel(&out_shape));
    for flat in 0..numel(&out_shape) {
        let mut src = 0usize;
        let mut inside = true;
        for i in 0..r {
            let p = (flat / out_st[i] % out_shape[i]) as isize - before[i] as isize;
            let n = shape[i] as isize;
            let q = match mode {
                _ if (0..n).contains(&p) => p,
                PadMode::Constant => {
                    inside = false;
                    break;
                }
                PadMode::Replicate => p.clamp(0, n - 1),
                PadMode::Reflect if p < 0 => -p,
                PadMode::Reflect => 2 * (n - 1) - p,
            };
            src += q as usize * st[i];
        }
        out.push(if inside && !x.is_empty() { x[src] } else { value });
    }
    Some((out, out_shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_agrees_with_concat_and_undoes_split() {
        let x: Vec<i32> = (0..2 * 3 * 4).collect();
        let shape = [2, 3, 4];
        for axis in 0..3 {
            let sizes = [1, shape[axis] - 1];
            let parts = split(&x, &shape, axis, &sizes).unwrap();
            let views: Vec<(&[i32], &[usize])> = parts.iter().map(|(d, s)| (d.as_slice(), s.as_slice())).collect();
            let joined = join(&views, axis).unwrap();
            assert_eq!(joined, (x.clone(), shape.to_vec()), "axis {axis}");
            assert_eq!(Some(joined), concat(&views, axis, false), "axis {axis}");
        }
        assert!(join(&[(&[1, 2][..], &[2, 1][..]), (&[3][..], &[1, 1][..])], 1).is_none());
    }

    #[test]
    fn transpose_concat_split_tile_pad() {
        let (t, s) = transpose(&[1, 2, 3, 4, 5, 6], &[2, 3], &[1, 0]).unwrap();
        assert_eq!((t, s), (vec![1, 4, 2, 5, 3, 6], vec![3, 2]));
        let (c, s) = concat(&[(&[1, 2][..], &[2, 1][..]), (&[3, 4][..], &[2, 1][..])], 1, false).unwrap();
        assert_eq!((c, s), (vec![1, 3, 2, 4], vec![2, 2]));
        let (c, _) = concat(&[(&[1, 2][..], &[2][..]), (&[3, 4][..], &[2][..])], 0, true).unwrap();
        assert_eq!(c, vec![1, 3, 2, 4]);
        let parts = split(&[1, 2, 3, 4, 5, 6], &[2, 3], 1, &[1, 2]).unwrap();
        assert_eq!(parts[1], (vec![2, 3, 5, 6], vec![2, 2]));
        assert_eq!(tile(&[1, 2], &[2], &[2]).unwrap().0, vec![1, 2, 1, 2]);
        assert_eq!(pad(&[1, 2, 3], &[3], &[2], &[2], PadMode::Reflect, 0).unwrap().0, vec![3, 2, 1, 2, 3, 2, 1]);
        assert_eq!(pad(&[1, 2], &[2], &[1], &[0], PadMode::Constant, 9).unwrap().0, vec![9, 1, 2]);
        assert_eq!(slice(&[0, 1, 2, 3, 4], &[5], &[4], &[-2], &[3]), vec![4, 2, 0]);
    }
}
