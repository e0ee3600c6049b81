//! Pure math on flat row-major buffers (`&[f32]`, `&[i32]`, `&[bool]`) plus shapes, knowing
//! nothing of MIL: broadcasting, batched GEMM, im2col convolution, pooling, reductions over any
//! axes, permutes, fp16 rounding, vectorizable `exp`/`erfc` ([`approx`]), and splitting large
//! kernels over the cores ([`par`], scoped threads). The interpreter kernels in `mil::ops::*`
//! call it; it calls only `matrixmultiply`, `half`, `libm` and `std::thread`. Shapes are `&[usize]`, rank 0 is a one-element scalar.
//! Functions return `None` (never panic) when shapes do not fit; callers turn that into an error.

pub mod approx;
pub mod broadcast;
pub mod conv;
pub mod fp16;
pub mod gemm;
pub mod layout;
pub mod par;
pub mod reduce;

/// Element count of `shape` (1 for rank 0). Callers pass shapes of arrays that exist (or
/// types `mil::ops::check` bounded), so the product fits; it saturates instead of wrapping so
/// a mistake can never turn a huge shape into a small count.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)).unwrap_or(usize::MAX)
}

/// Row-major (C order) element strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// For every index of `shape` in row-major order, the offset `base + Σ index[i]·strides[i]`.
/// The one index walker behind broadcasting (stride 0), permutes (permuted strides), strided
/// slices (negative strides) and reductions (stride 0 on reduced axes). `strides.len()` must be
/// `shape.len()`.
pub fn offsets(shape: &[usize], strides: &[isize], base: isize) -> Vec<usize> {
    let n = numel(shape);
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let rank = shape.len();
    let mut idx = vec![0usize; rank];
    let mut off = base;
    let inner = if rank == 0 { 1 } else { shape[rank - 1] };
    let inner_stride = if rank == 0 { 0 } else { strides[rank - 1] };
    loop {
        let mut o = off;
        for _ in 0..inner {
            out.push(o as usize);
            o += inner_stride;
        }
        // advance the odometer over all but the last axis
        let mut axis = rank.saturating_sub(1);
        loop {
            if axis == 0 {
                return out;
            }
            axis -= 1;
            idx[axis] += 1;
            off += strides[axis];
            if idx[axis] < shape[axis] {
                break;
            }
            off -= strides[axis] * shape[axis] as isize;
            idx[axis] = 0;
        }
    }
}

/// Resolves a possibly negative `axis` against `rank` (Python style); `None` when out of range.
pub fn axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// Splits `shape` around `axis` into (outer, size, inner) element counts: the layout every
/// single-axis op (softmax, cumsum, concat, split, argmax) walks.
pub fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (numel(&shape[..axis]), shape[axis], numel(&shape[axis + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_walk_row_major_with_any_strides() {
        assert_eq!(offsets(&[2, 3], &[3, 1], 0), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(offsets(&[3, 2], &[1, 3], 0), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(offsets(&[2, 2], &[0, 1], 0), vec![0, 1, 0, 1]);
        assert_eq!(offsets(&[3], &[-2], 5), vec![5, 3, 1]);
        assert_eq!(offsets(&[], &[], 7), vec![7]);
        assert!(offsets(&[2, 0], &[0, 1], 0).is_empty());
    }
}
