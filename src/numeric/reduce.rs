//! Reductions over any set of axes (sum, max, min, product, mean, argmax) and the single-axis
//! scans built on the (outer, axis, inner) layout (softmax, cumsum). Called by the kernels in
//! `mil::ops::reduce`, `mil::ops::norm` (means and variances) and `mil::ops::elementwise`
//! (`softmax`).

use super::{approx, around, numel, offsets, par, strides};

/// The shape left after reducing `axes` (kept as size 1 when `keep_dims`).
pub fn reduced_shape(shape: &[usize], axes: &[usize], keep_dims: bool) -> Vec<usize> {
    (0..shape.len())
        .filter_map(|i| match (axes.contains(&i), keep_dims) {
            (false, _) => Some(shape[i]),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

/// For every element of `x` (shape `shape`), the flat index of its output cell when `axes`
/// are reduced. Output cells are in row-major order of the kept axes.
pub fn cell_of(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    let kept = reduced_shape(shape, axes, true);
    let ks = strides(&kept);
    let s: Vec<isize> = (0..shape.len()).map(|i| if axes.contains(&i) { 0 } else { ks[i] as isize }).collect();
    offsets(shape, &s, 0)
}

/// Folds `x` over `axes` with `f`, starting each cell at `init`. Returns one value per cell
/// (row-major over the kept axes).
pub fn fold<T: Copy>(x: &[T], shape: &[usize], axes: &[usize], init: T, f: impl Fn(T, T) -> T) -> Vec<T> {
    let cells = numel(&reduced_shape(shape, axes, true));
    let mut out = vec![init; cells];
    for (&v, c) in x.iter().zip(cell_of(shape, axes)) {
        out[c] = f(out[c], v);
    }
    out
}

/// Mean over `axes`, one value per cell (sums in f64 so long axes stay exact to f32).
pub fn mean(x: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f32> {
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let cells = numel(&reduced_shape(shape, axes, true));
    let mut acc = vec![0.0f64; cells];
    for (&v, c) in x.iter().zip(cell_of(shape, axes)) {
        acc[c] += f64::from(v);
    }
    acc.into_iter().map(|s| (s / count.max(1) as f64) as f32).collect()
}

/// Index of the first maximum along `axis` (numpy `argmax`; NaN counts as the maximum).
/// The output has `axis` removed.
pub fn argmax<T: Copy + PartialOrd>(x: &[T], shape: &[usize], axis: usize, want_min: bool) -> Vec<i32> {
    let (outer, n, inner) = around(shape, axis);
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| x[(o * n + j) * inner + i];
            let mut best = 0;
            for j in 1..n {
                let better = if want_min { at(j) < at(best) } else { at(j) > at(best) };
                if better {
                    best = j;
                }
            }
            out.push(best as i32);
        }
    }
    out
}

/// Softmax along `axis` in place, max-subtracted for stability. Rows along the last axis (the
/// attention case) are contiguous and run in parallel (`numeric::par`).
pub fn softmax(x: &mut [f32], shape: &[usize], axis: usize) {
    let (outer, n, inner) = around(shape, axis);
    if x.is_empty() {
        return;
    }
    if inner == 1 {
        let work = x.len() * SOFTMAX_COST;
        par::for_rows(x, n, work, |_, rows| rows.chunks_mut(n.max(1)).for_each(softmax_row));
        return;
    }
    // Along a middle axis: rows j of `inner` contiguous elements; every column i is one softmax.
    // Maxima in one sweep, then exp and column sums by row blocks in parallel, then the scaling.
    for block in x.chunks_mut(n * inner).take(outer) {
        let mut max = vec![f32::NEG_INFINITY; inner];
        for row in block.chunks(inner) {
            for (m, &v) in max.iter_mut().zip(row) {
                *m = if v > *m { v } else { *m };
            }
        }
        // Partial column sums per block of rows, added in row order so the result does not
        // depend on which thread finishes first.
        let parts = std::sync::Mutex::new(Vec::new());
        par::for_rows(block, inner, n * inner * SOFTMAX_COST, |first, rows| {
            let mut part = vec![0.0f32; inner];
            for row in rows.chunks_mut(inner) {
                for ((v, &m), s) in row.iter_mut().zip(&max).zip(&mut part) {
                    *v = approx::exp(*v - m);
                    *s += *v;
                }
            }
            parts.lock().unwrap_or_else(|e| e.into_inner()).push((first, part));
        });
        let mut parts = parts.into_inner().unwrap_or_else(|e| e.into_inner());
        parts.sort_by_key(|(first, _)| *first);
        let mut sums = vec![0.0f32; inner];
        for (_, part) in &parts {
            sums.iter_mut().zip(part).for_each(|(s, p)| *s += p);
        }
        let inv: Vec<f32> = sums.iter().map(|s| 1.0 / s).collect();
        par::for_rows(block, inner, n * inner, |_, rows| {
            for row in rows.chunks_mut(inner) {
                row.iter_mut().zip(&inv).for_each(|(v, i)| *v *= i);
            }
        });
    }
}

/// Cost of one softmax element in cheap element operations (an exp and a division's worth),
/// for [`par::for_rows`]' threshold.
const SOFTMAX_COST: usize = 8;
/// Independent partial sums in [`softmax_row`], so the sum vectorizes.
const SUM_LANES: usize = 8;

/// Softmax of one contiguous row in place.
fn softmax_row(row: &mut [f32]) {
    let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut lanes = [0.0f32; SUM_LANES];
    let mut chunks = row.chunks_exact_mut(SUM_LANES);
    for chunk in &mut chunks {
        for (l, v) in chunk.iter_mut().enumerate() {
            *v = approx::exp(*v - m);
            lanes[l] += *v;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for v in chunks.into_remainder() {
        *v = approx::exp(*v - m);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Running sum along `axis` in place; `exclusive` shifts by one (first is 0), `reverse` runs
/// from the end (MIL `cumsum`).
pub fn cumsum<T: Copy + Default + std::ops::Add<Output = T>>(
    x: &mut [T],
    shape: &[usize],
    axis: usize,
    exclusive: bool,
    reverse: bool,
) {
    let (outer, n, inner) = around(shape, axis);
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = T::default();
            for step in 0..n {
                let j = if reverse { n - 1 - step } else { step };
                let at = (o * n + j) * inner + i;
                let v = x[at];
                if exclusive {
                    x[at] = acc;
                    acc = acc + v;
                } else {
                    acc = acc + v;
                    x[at] = acc;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_along_every_axis_matches_the_definition() {
        let shape = [2, 3, 70]; // 70: rows of full vector lanes plus a tail
        let x: Vec<f32> = (0..2 * 3 * 70).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for axis in 0..3 {
            let mut got = x.clone();
            softmax(&mut got, &shape, axis);
            let (outer, n, inner) = around(&shape, axis);
            for o in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| (o * n + j) * inner + i;
                    let m = (0..n).map(|j| f64::from(x[at(j)])).fold(f64::MIN, f64::max);
                    let sum: f64 = (0..n).map(|j| (f64::from(x[at(j)]) - m).exp()).sum();
                    for j in 0..n {
                        let want = (f64::from(x[at(j)]) - m).exp() / sum;
                        assert!((f64::from(got[at(j)]) - want).abs() <= 1e-6 * want.max(1e-3), "axis {axis}: {} vs {want}", got[at(j)]);
                    }
                }
            }
        }
    }

    #[test]
    fn folds_over_any_axes() {
        let x = [1., 2., 3., 4., 5., 6.];
        assert_eq!(fold(&x, &[2, 3], &[1], 0.0, |a, b| a + b), vec![6., 15.]);
        assert_eq!(fold(&x, &[2, 3], &[0], 0.0, |a, b| a + b), vec![5., 7., 9.]);
        assert_eq!(mean(&x, &[2, 3], &[0, 1]), vec![3.5]);
        assert_eq!(argmax(&[1, 3, 3, 0], &[4], 0, false), vec![1]);
        let mut c = [1, 2, 3];
        cumsum(&mut c, &[3], 0, true, true);
        assert_eq!(c, [5, 3, 0]);
    }
}
