//! Matrix products through a real GEMM (`matrixmultiply::sgemm`, blocked and vectorized, any
//! strides, so transposes cost nothing). Accumulates in f32. Called by the `linear`, `matmul`,
//! `conv` and attention kernels (`mil::ops::linear`, `mil::ops::attention`) and by
//! [`super::conv`]. int32 products (rare: shape arithmetic) use a plain loop.

use super::{broadcast, numel, par};

/// A row-major-or-strided matrix view: `data[r·row + c·col]` is element (r, c).
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major `rows × cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The same data read transposed (no copy).
    pub fn t(self) -> Mat<'a> {
        Mat { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// `c = a · b + beta·c` with `c` contiguous row-major `a.rows × b.cols`. `None` when the inner
/// dimensions differ or a view reaches past its buffer (so the unsafe call below stays in bounds).
/// Large products are split by rows of `c` over the cores (`numeric::par`).
pub fn sgemm(a: Mat, b: Mat, beta: f32, c: &mut [f32]) -> Option<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.len() != m * n || !a.fits() || !b.fits() {
        return None;
    }
    if m == 0 || n == 0 {
        return Some(());
    }
    if k == 0 {
        c.iter_mut().for_each(|v| *v *= beta);
        return Some(());
    }
    if m == 1 && b.col_stride == 1 {
        vecmat(a, b, beta, c);
        return Some(());
    }
    par::for_rows(c, n, m * n * k / MACS_PER_ELEMENT_OP, |first, part| {
        let rows = part.len() / n;
        let a = Mat { data: &a.data[first * a.row_stride..], rows, ..a };
        if n == 1 && a.col_stride == 1 {
            gemv(a, b, beta, part);
        } else {
            packed(a, b, beta, part);
        }
    });
    Some(())
}

/// Multiply-adds a GEMM does in the time of one cheap element operation (a vectorized kernel
/// does many per cycle): scales a product's size to `par::for_rows`' work units, so only
/// products of about a million multiply-adds or more are split over threads.
const MACS_PER_ELEMENT_OP: usize = 16;

/// `c = a · b + beta·c` for a single row `a` and row-contiguous `b` (checked by [`sgemm`]): the
/// query-times-keys product of a decoder step. Adds `a[i]·b[i, :]` row by row, contiguous and
/// vectorized, where packing `b` would cost more than the product.
fn vecmat(a: Mat, b: Mat, beta: f32, c: &mut [f32]) {
    if beta == 0.0 {
        c.fill(0.0);
    } else {
        c.iter_mut().for_each(|v| *v *= beta);
    }
    let n = b.cols;
    for i in 0..a.cols {
        let w = a.data[i * a.col_stride];
        let row = &b.data[i * b.row_stride..i * b.row_stride + n];
        for (o, &v) in c.iter_mut().zip(row) {
            *o += w * v;
        }
    }
}

/// [`sgemm`] on one block of rows through `matrixmultiply` (views checked by the caller).
fn packed(a: Mat, b: Mat, beta: f32, c: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    debug_assert!(a.fits() && b.fits() && c.len() == m * n);
    // SAFETY: `sgemm` checked that every (r, c) element of the full a and b is inside its
    // slice; this a is a suffix of rows of that a with the same strides, and c holds exactly
    // m·n contiguous elements with row stride n.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// Accumulator lanes of [`gemv`]: independent partial sums the compiler can vectorize.
const GEMV_LANES: usize = 8;

/// `c = a · b + beta·c` for a single column `b` and row-contiguous `a` (checked by [`sgemm`]): a
/// matrix-vector product (a decoder step's 1×1 convs, the logits projection), where packing `a`
/// as `matrixmultiply` does would cost more than the product.
fn gemv(a: Mat, b: Mat, beta: f32, c: &mut [f32]) {
    let k = a.cols;
    let x: Vec<f32> = (0..k).map(|i| b.data[i * b.row_stride]).collect();
    for (r, out) in c.iter_mut().enumerate() {
        let row = &a.data[r * a.row_stride..r * a.row_stride + k];
        let mut lanes = [0f32; GEMV_LANES];
        let (head, tail) = (row.chunks_exact(GEMV_LANES), row.len() - row.len() % GEMV_LANES);
        for (w, v) in head.zip(x.chunks_exact(GEMV_LANES)) {
            for l in 0..GEMV_LANES {
                lanes[l] += w[l] * v[l];
            }
        }
        let mut acc: f32 = lanes.iter().sum();
        for i in tail..k {
            acc += row[i] * x[i];
        }
        *out = acc + if beta == 0.0 { 0.0 } else { beta * *out };
    }
}

/// The geometry of one batched matrix product.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    /// Broadcast batch axes.
    pub batch: Vec<usize>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Result shape (batch, then m and n unless the operand was rank 1).
    pub out: Vec<usize>,
}

/// The shapes numpy's `matmul` gives: rank-1 operands promoted (x to `[1, K]`, y to `[K, 1]`),
/// optional transposes of the last two axes, batch axes broadcast.
pub fn matmul_shape(x: &[usize], y: &[usize], transpose_x: bool, transpose_y: bool) -> Option<MatmulShape> {
    if x.is_empty() || y.is_empty() {
        return None;
    }
    let (mut xs, mut ys) = (x.to_vec(), y.to_vec());
    if x.len() == 1 {
        xs.insert(0, 1);
    }
    if y.len() == 1 {
        ys.push(1);
    }
    let (nx, ny) = (xs.len(), ys.len());
    if transpose_x {
        xs.swap(nx - 2, nx - 1);
    }
    if transpose_y {
        ys.swap(ny - 2, ny - 1);
    }
    let (m, k, k2, n) = (xs[nx - 2], xs[nx - 1], ys[ny - 2], ys[ny - 1]);
    if k != k2 {
        return None;
    }
    let batch = broadcast::shape(&xs[..nx - 2], &ys[..ny - 2])?;
    let mut out = batch.clone();
    if x.len() != 1 {
        out.push(m);
    }
    if y.len() != 1 {
        out.push(n);
    }
    Some(MatmulShape { batch, m, k, n, out })
}

/// Batch offsets (in matrices) of each operand for every output batch index.
/// Shapes and per-batch matrix offsets of a batched matmul, shared by the f32 and i32 versions;
/// `None` when the shapes do not fit or the buffers are not as long as their shapes say.
fn plan(
    x_len: usize,
    x_shape: &[usize],
    y_len: usize,
    y_shape: &[usize],
    tx: bool,
    ty: bool,
) -> Option<(MatmulShape, Vec<usize>, Vec<usize>)> {
    let shape = matmul_shape(x_shape, y_shape, tx, ty)?;
    if x_len != numel(x_shape) || y_len != numel(y_shape) {
        return None;
    }
    let xb = &x_shape[..x_shape.len().saturating_sub(2)];
    let yb = &y_shape[..y_shape.len().saturating_sub(2)];
    let (ox, oy) = batch_offsets(&shape.batch, xb, yb)?;
    Some((shape, ox, oy))
}

fn batch_offsets(batch: &[usize], x_batch: &[usize], y_batch: &[usize]) -> Option<(Vec<usize>, Vec<usize>)> {
    let sx = broadcast::strides_to(x_batch, batch)?;
    let sy = broadcast::strides_to(y_batch, batch)?;
    Some((super::offsets(batch, &sx, 0), super::offsets(batch, &sy, 0)))
}

/// numpy `matmul(x, y)` in f32 with optional transposes of the last two axes (MIL `matmul`).
/// Returns values and output shape; `None` when shapes do not fit.
pub fn matmul(
    x: &[f32],
    x_shape: &[usize],
    y: &[f32],
    y_shape: &[usize],
    tx: bool,
    ty: bool,
) -> Option<(Vec<f32>, Vec<usize>)> {
    let (MatmulShape { batch, m, k, n, out: out_shape }, ox, oy) = plan(x.len(), x_shape, y.len(), y_shape, tx, ty)?;
    let mut out = vec![0.0; numel(&batch) * m * n];
    for (i, (bx, by)) in ox.into_iter().zip(oy).enumerate() {
        let xm = &x[bx * m * k..(bx + 1) * m * k];
        let ym = &y[by * k * n..(by + 1) * k * n];
        let a = if tx { Mat::rows(xm, k, m).t() } else { Mat::rows(xm, m, k) };
        let b = if ty { Mat::rows(ym, n, k).t() } else { Mat::rows(ym, k, n) };
        sgemm(a, b, 0.0, &mut out[i * m * n..(i + 1) * m * n])?;
    }
    Some((out, out_shape))
}

/// The same product on int32 with wrapping arithmetic (plain loop: int matmuls are small).
pub fn matmul_i32(
    x: &[i32],
    x_shape: &[usize],
    y: &[i32],
    y_shape: &[usize],
    tx: bool,
    ty: bool,
) -> Option<(Vec<i32>, Vec<usize>)> {
    let (MatmulShape { batch, m, k, n, out: out_shape }, ox, oy) = plan(x.len(), x_shape, y.len(), y_shape, tx, ty)?;
    let mut out = Vec::with_capacity(numel(&batch) * m * n);
    for (bx, by) in ox.into_iter().zip(oy) {
        let xa = |r: usize, c: usize| if tx { x[bx * m * k + c * m + r] } else { x[bx * m * k + r * k + c] };
        let ya = |r: usize, c: usize| if ty { y[by * k * n + c * k + r] } else { y[by * k * n + r * n + c] };
        for r in 0..m {
            for c in 0..n {
                out.push((0..k).fold(0i32, |acc, j| acc.wrapping_add(xa(r, j).wrapping_mul(ya(j, c)))));
            }
        }
    }
    Some((out, out_shape))
}

/// `x · wᵀ + bias` over the last axis of `x` (MIL `linear`); `w` is `[d_out, d_in]`.
pub fn linear(
    x: &[f32],
    x_shape: &[usize],
    w: &[f32],
    d_out: usize,
    bias: Option<&[f32]>,
) -> Option<(Vec<f32>, Vec<usize>)> {
    let d_in = *x_shape.last()?;
    if w.len() != d_out * d_in || x.len() != numel(x_shape) || bias.is_some_and(|b| b.len() != d_out) {
        return None;
    }
    let rows = x.len().checked_div(d_in).unwrap_or(0);
    let mut out = vec![0.0; rows * d_out];
    if let Some(b) = bias {
        for row in out.chunks_mut(d_out.max(1)) {
            row.copy_from_slice(b);
        }
    }
    let beta = if bias.is_some() { 1.0 } else { 0.0 };
    sgemm(Mat::rows(x, rows, d_in), Mat::rows(w, d_out, d_in).t(), beta, &mut out)?;
    let mut shape = x_shape.to_vec();
    *shape.last_mut()? = d_out;
    Some((out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_broadcasts_batches_and_transposes() {
        // [2,1,2] x [2,2]: two batches against one matrix
        let (v, s) = matmul(&[1., 2., 3., 4.], &[2, 1, 2], &[1., 0., 0., 2.], &[2, 2], false, false).unwrap();
        assert_eq!((v, s), (vec![1., 4., 3., 8.], vec![2, 1, 2]));
        let (v, s) = matmul(&[1., 2.], &[2], &[1., 2., 3., 4.], &[2, 2], false, true).unwrap();
        assert_eq!((v, s), (vec![5., 11.], vec![2]));
        assert!(matmul(&[1., 2.], &[2], &[1., 2., 3.], &[3], false, false).is_none());
        let (v, _) = matmul_i32(&[1, 2], &[1, 2], &[3, 4], &[2, 1], false, false).unwrap();
        assert_eq!(v, vec![11]);
    }

    #[test]
    fn matrix_vector_products_match_the_packed_gemm() {
        // 5 × 19 (19 = two full lanes of 8 plus a tail of 3) times a strided column.
        let a: Vec<f32> = (0..95).map(|i| ((i * 37 % 11) as f32 - 5.0) / 4.0).collect();
        let b: Vec<f32> = (0..38).map(|i| (i % 7) as f32 - 3.0).collect();
        let column = Mat { data: &b, rows: 19, cols: 1, row_stride: 2, col_stride: 1 };
        let mut fast = vec![1.0; 5];
        sgemm(Mat::rows(&a, 5, 19), column, 0.5, &mut fast).unwrap();
        // The same product through matrixmultiply: b as a 19 × 2 matrix, first column kept.
        let mut packed = vec![0.0; 10];
        sgemm(Mat::rows(&a, 5, 19), Mat::rows(&b, 19, 2), 0.0, &mut packed).unwrap();
        let want: Vec<f32> = packed.chunks(2).map(|r| r[0] + 0.5).collect();
        assert_eq!(fast, want);
    }

    #[test]
    fn row_times_matrix_matches_the_packed_gemm() {
        // A strided 1 × 13 row times a 13 × 21 matrix, against the same row stacked twice.
        let a: Vec<f32> = (0..26).map(|i| ((i * 5 % 9) as f32 - 4.0) / 2.0).collect();
        let row = Mat { data: &a, rows: 1, cols: 13, row_stride: 26, col_stride: 2 };
        let b: Vec<f32> = (0..273).map(|i| (i * 7 % 13) as f32 - 6.0).collect(); // sums stay exact
        let mut fast = vec![2.0; 21];
        sgemm(row, Mat::rows(&b, 13, 21), 0.5, &mut fast).unwrap();
        let twice = Mat { data: &a, rows: 2, cols: 13, row_stride: 0, col_stride: 2 };
        let mut packed = vec![0.0; 42];
        self::packed(twice, Mat::rows(&b, 13, 21), 0.0, &mut packed);
        let want: Vec<f32> = packed[..21].iter().map(|v| v + 1.0).collect();
        assert_eq!(fast, want);
    }

    #[test]
    fn products_split_over_threads_match_one_block() {
        let (m, k, n) = (301, 64, 97); // large enough for `par::for_rows` to split the rows
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 11 % 19) as f32 - 9.0) / 8.0).collect();
        let mut split = vec![1.0; m * n];
        sgemm(Mat::rows(&a, m, k), Mat::rows(&b, k, n), 1.0, &mut split).unwrap();
        let mut whole = vec![1.0; m * n];
        packed(Mat::rows(&a, m, k), Mat::rows(&b, k, n), 1.0, &mut whole);
        assert_eq!(split, whole);
    }

    #[test]
    fn linear_adds_bias() {
        let (v, s) = linear(&[1., 2.], &[1, 2], &[1., 1., 0., 1.], 2, Some(&[10., 20.])).unwrap();
        assert_eq!((v, s), (vec![13., 22.], vec![1, 2]));
    }
}
