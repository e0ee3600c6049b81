//! N-d sliding windows: convolution as im2col + GEMM, transposed convolution as GEMM + col2im,
//! and the output-size and padding rules they share with pooling. Layout is channels-first,
//! `x [N, C, *spatial]`. Called by the `conv`, `conv_transpose` and pooling kernels in
//! `mil::ops::linear`; the GEMM is [`super::gemm::sgemm`].

use super::gemm::{sgemm, Mat};
use super::{numel, strides};

/// One sliding-window geometry over the spatial axes (all vectors have one entry per axis);
/// padding is already resolved to explicit before/after counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pad_before: Vec<usize>,
    pub pad_after: Vec<usize>,
}

/// A convolution's learned parameters: `weight` of shape `shape` (`[C_out, C_in/groups, *K]`
/// for `conv`, `[C_in, C_out/groups, *K]` for `conv_transpose`), optional `bias [C_out]`.
#[derive(Clone, Copy, Debug)]
pub struct Filter<'a> {
    pub weight: &'a [f32],
    pub shape: &'a [usize],
    pub bias: Option<&'a [f32]>,
    pub groups: usize,
}

/// Total padding `same`/`same_lower` need on one axis, exactly coremltools'
/// `aggregated_pad`: `max(0, s·⌈i/s⌉ − i + k_eff − s)`.
pub fn same_pad_total(input: usize, kernel: usize, stride: usize, dilation: usize) -> usize {
    let k = (kernel.max(1) - 1) * dilation + 1;
    let s = stride.max(1);
    (s * input.div_ceil(s) + k).saturating_sub(input + s)
}

/// Output length of one axis: `⌊(i + p − k_eff)/s⌋ + 1`, or with `ceil_mode` the ceiling, minus
/// one when the last window would start inside the end padding (torch's and coremltools' rule).
/// `None` when the window does not fit.
pub fn out_size(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_total: usize,
    ceil_mode: bool,
) -> Option<usize> {
    let k = (kernel.checked_sub(1)?) * dilation + 1;
    let span = (input + pad_total).checked_sub(k)?;
    let s = stride.max(1);
    let mut o = if ceil_mode { span.div_ceil(s) + 1 } else { span / s + 1 };
    if ceil_mode && pad_total > 0 && 2 * (o - 1) * s >= 2 * input + pad_total {
        o -= 1;
    }
    Some(o)
}

/// For every kernel position `kk` (row) and output position `oo` (column), the flat spatial
/// index read from the input, or −1 where the window falls into padding or past the end.
/// Also serves col2im (inputs and outputs swap roles) and pooling.
fn window_table(input: &[usize], output: &[usize], w: &Window) -> Vec<isize> {
    let is = strides(input);
    // Built axis by axis: each step makes every (kernel, output) pair of the axes so far one
    // finer, adding this axis's offset (or −1 when it falls outside the input).
    let mut table = vec![0isize];
    let (mut pk, mut po) = (1, 1);
    for r in 0..input.len() {
        let (kr, or, step) = (w.kernel[r], output[r], is[r] as isize);
        let along: Vec<isize> = (0..kr)
            .flat_map(|k| {
                (0..or).map(move |o| {
                    let p = (o * w.strides[r] + k * w.dilations[r]) as isize - w.pad_before[r] as isize;
                    if p < 0 || p >= input[r] as isize {
                        -1
                    } else {
                        p * step
                    }
                })
            })
            .collect();
        let mut next = Vec::with_capacity(pk * kr * po * or);
        for kk in 0..pk {
            for k in 0..kr {
                for oo in 0..po {
                    let base = table[kk * po + oo];
                    next.extend(along[k * or..(k + 1) * or].iter().map(|&a| if base < 0 || a < 0 { -1 } else { base + a }));
                }
            }
        }
        table = next;
        (pk, po) = (pk * kr, po * or);
    }
    table
}

/// Convolution (MIL `conv`, torch `convNd`): `x [N, C_in, *S]` with `filter`, output
/// `[N, C_out, *O]`. 1×1 stride-1 unpadded convolutions skip
/// im2col and multiply `x` directly. `None` when shapes do not fit.
pub fn conv(x: &[f32], x_shape: &[usize], filter: &Filter, win: &Window) -> Option<(Vec<f32>, Vec<usize>)> {
    let Filter { weight: w, shape: w_shape, bias, groups } = *filter;
    let r = x_shape.len().checked_sub(2)?;
    if w_shape.len() != r + 2
        || win.kernel != w_shape[2..]
        || groups == 0
        || x.len() != numel(x_shape)
        || w.len() != numel(w_shape)
    {
        return None;
    }
    let (n, c_in, c_out, cg) = (x_shape[0], x_shape[1], w_shape[0], w_shape[1]);
    if c_in != cg * groups || c_out % groups != 0 || bias.is_some_and(|b| b.len() != c_out) {
        return None;
    }
    let sp = &x_shape[2..];
    let out_sp = (0..r)
        .map(|i| {
            out_size(
                sp[i],
                win.kernel[i],
                win.strides[i],
                win.dilations[i],
                win.pad_before[i] + win.pad_after[i],
                false,
            )
        })
        .collect::<Option<Vec<_>>>()?;
    let (ps, po, pk, cog) = (numel(sp), numel(&out_sp), numel(&win.kernel), c_out / groups);
    let table = window_table(sp, &out_sp, win);
    let direct = pk == 1 && ps == po && table.iter().enumerate().all(|(i, &t)| t == i as isize);
    let mut out = vec![0.0; n * c_out * po];
    let mut col = if direct { Vec::new() } else { vec![0.0; cg * pk * po] };
    for b in 0..n {
        for g in 0..groups {
            let xg = &x[(b * c_in + g * cg) * ps..(b * c_in + (g + 1) * cg) * ps];
            if !direct {
                // im2col: row (c, kk) of `col` gathers channel c at kernel offset kk.
                super::par::for_rows(&mut col, po, cg * pk * po, |first, rows| {
                    for (i, row) in rows.chunks_mut(po.max(1)).enumerate() {
                        let (c, kk) = ((first + i) / pk, (first + i) % pk);
                        let xc = &xg[c * ps..(c + 1) * ps];
                        for (dst, &t) in row.iter_mut().zip(&table[kk * po..(kk + 1) * po]) {
                            *dst = if t >= 0 { xc[t as usize] } else { 0.0 };
                        }
                    }
                });
            }
            let cols = if direct { xg } else { &col[..] };
            let dst = &mut out[(b * c_out + g * cog) * po..(b * c_out + (g + 1) * cog) * po];
            let beta = match bias {
                Some(bv) => {
                    for (o, row) in dst.chunks_mut(po.max(1)).enumerate() {
                        row.fill(bv[g * cog + o]);
                    }
                    1.0
                }
                None => 0.0,
            };
            let wg = &w[g * cog * cg * pk..(g + 1) * cog * cg * pk];
            sgemm(Mat::rows(wg, cog, cg * pk), Mat::rows(cols, cg * pk, po), beta, dst)?;
        }
    }
    let mut shape = vec![n, c_out];
    shape.extend(out_sp);
    Some((out, shape))
}

/// Transposed convolution (MIL `conv_transpose`, torch `conv_transposeNd`): `x [N, C_in, *S]`
/// with `filter` (weight `[C_in, C_out/groups, *K]`), output `[N, C_out, *out_spatial]`. Each input position
/// scatters `w` into the output at `s·stride − pad_before + k·dilation`; positions outside
/// `out_spatial` are dropped (that is how padding crops), extra output positions get only bias.
pub fn conv_transpose(
    x: &[f32],
    x_shape: &[usize],
    filter: &Filter,
    win: &Window,
    out_spatial: &[usize],
) -> Option<(Vec<f32>, Vec<usize>)> {
    let Filter { weight: w, shape: w_shape, bias, groups } = *filter;
    let r = x_shape.len().checked_sub(2)?;
    if w_shape.len() != r + 2 || win.kernel != w_shape[2..] || out_spatial.len() != r || groups == 0 {
        return None;
    }
    let (n, c_in, cog) = (x_shape[0], x_shape[1], w_shape[1]);
    let c_out = cog * groups;
    if w_shape[0] != c_in
        || c_in % groups != 0
        || x.len() != numel(x_shape)
        || w.len() != numel(w_shape)
        || bias.is_some_and(|b| b.len() != c_out)
    {
        return None;
    }
    let cig = c_in / groups;
    let sp = &x_shape[2..];
    let (ps, po, pk) = (numel(sp), numel(out_spatial), numel(&win.kernel));
    // Scatter table: for kernel position kk and input position s, the output index (or −1).
    let table = window_table(out_spatial, sp, win);
    let mut out = vec![0.0; n * c_out * po];
    if let Some(bv) = bias {
        for (i, row) in out.chunks_mut(po.max(1)).enumerate() {
            row.fill(bv[i % c_out]);
        }
    }
    let mut col = vec![0.0; cog * pk * ps];
    for b in 0..n {
        for g in 0..groups {
            let xg = &x[(b * c_in + g * cig) * ps..(b * c_in + (g + 1) * cig) * ps];
            let wg = &w[g * cig * cog * pk..(g + 1) * cig * cog * pk];
            sgemm(Mat::rows(wg, cig, cog * pk).t(), Mat::rows(xg, cig, ps), 0.0, &mut col)?;
            for co in 0..cog {
                let dst = &mut out[(b * c_out + g * cog + co) * po..(b * c_out + g * cog + co + 1) * po];
                for kk in 0..pk {
                    let src = &col[(co * pk + kk) * ps..(co * pk + kk + 1) * ps];
                    for (&v, &t) in src.iter().zip(&table[kk * ps..(kk + 1) * ps]) {
                        if t >= 0 {
                            dst[t as usize] += v;
                        }
                    }
                }
            }
        }
    }
    let mut shape = vec![n, c_out];
    shape.extend_from_slice(out_spatial);
    Some((out, shape))
}

/// What a pooling window computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Max,
    /// Mean; `exclude_padding` divides by the in-bounds count, otherwise by the window's extent
    /// clipped to the padded input (torch's `count_include_pad` rule, also under `ceil_mode`).
    Avg {
        exclude_padding: bool,
    },
}

/// Pooling over `x [N, C, *S]` into `[N, C, *out_spatial]` (sizes from [`out_size`]).
/// Dilations in `win` must be 1. `None` when shapes do not fit.
pub fn pool(
    x: &[f32],
    x_shape: &[usize],
    win: &Window,
    out_spatial: &[usize],
    kind: Pool,
) -> Option<(Vec<f32>, Vec<usize>)> {
    let r = x_shape.len().checked_sub(2)?;
    if win.kernel.len() != r || out_spatial.len() != r || x.len() != numel(x_shape) {
        return None;
    }
    let sp = &x_shape[2..];
    let (ps, po, pk) = (numel(sp), numel(out_spatial), numel(&win.kernel));
    let table = window_table(sp, out_spatial, win);
    let os = strides(out_spatial);
    let divisor: Vec<f32> = (0..po)
        .map(|oo| {
            (0..r)
                .map(|i| {
                    let start =
                        (((oo / os[i]) % out_spatial[i]) * win.strides[i]) as isize - win.pad_before[i] as isize;
                    let end = (start + win.kernel[i] as isize).min((sp[i] + win.pad_after[i]) as isize);
                    (end - start.max(-(win.pad_before[i] as isize))) as f32
                })
                .product()
        })
        .collect();
    let planes = x_shape[0] * x_shape[1];
    let mut out = Vec::with_capacity(planes * po);
    for p in 0..planes {
        let xp = &x[p * ps..(p + 1) * ps];
        for oo in 0..po {
            let taps = (0..pk).map(|kk| table[kk * po + oo]).filter(|&t| t >= 0).map(|t| xp[t as usize]);
            out.push(match kind {
                Pool::Max => taps.fold(f32::NEG_INFINITY, f32::max),
                Pool::Avg { exclude_padding } => {
                    let (sum, count) = taps.fold((0.0f32, 0usize), |(s, c), v| (s + v, c + 1));
                    if exclude_padding {
                        sum / count.max(1) as f32
                    } else {
                        sum / divisor[oo]
                    }
                }
            });
        }
    }
    let mut shape = x_shape[..2].to_vec();
    shape.extend_from_slice(out_spatial);
    Some((out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(k: usize, s: usize, d: usize, pb: usize, pa: usize) -> Window {
        Window { kernel: vec![k], strides: vec![s], dilations: vec![d], pad_before: vec![pb], pad_after: vec![pa] }
    }

    #[test]
    fn window_table_matches_the_per_element_definition() {
        // 3-D input 4×5×6, kernel 2×3×2, strides 1/2/3, dilations 2/1/1, padding on every side.
        let w = Window {
            kernel: vec![2, 3, 2],
            strides: vec![1, 2, 3],
            dilations: vec![2, 1, 1],
            pad_before: vec![1, 1, 0],
            pad_after: vec![0, 2, 1],
        };
        let input = [4, 5, 6];
        let output: Vec<usize> = (0..3)
            .map(|r| out_size(input[r], w.kernel[r], w.strides[r], w.dilations[r], w.pad_before[r] + w.pad_after[r], false).unwrap())
            .collect();
        let (ks, os, is) = (strides(&w.kernel), strides(&output), strides(&input));
        let mut want = Vec::new();
        for kk in 0..numel(&w.kernel) {
            for oo in 0..numel(&output) {
                let mut flat = 0isize;
                for r in 0..3 {
                    let (k, o) = ((kk / ks[r]) % w.kernel[r], (oo / os[r]) % output[r]);
                    let p = (o * w.strides[r] + k * w.dilations[r]) as isize - w.pad_before[r] as isize;
                    if p < 0 || p >= input[r] as isize {
                        flat = -1;
                        break;
                    }
                    flat += p * is[r] as isize;
                }
                want.push(flat);
            }
        }
        assert_eq!(window_table(&input, &output, &w), want);
    }

    #[test]
    fn sizes_follow_coremltools() {
        assert_eq!(same_pad_total(5, 3, 2, 1), 2);
        assert_eq!(same_pad_total(6, 3, 2, 1), 1);
        assert_eq!(out_size(5, 2, 2, 1, 0, true), Some(3));
        assert_eq!(out_size(5, 2, 2, 1, 0, false), Some(2));
        assert_eq!(out_size(1, 3, 1, 1, 0, false), None);
    }

    #[test]
    fn conv1d_and_its_transpose_by_hand() {
        let f = Filter { weight: &[1., 1.], shape: &[1, 1, 2], bias: None, groups: 1 };
        let (y, s) = conv(&[1., 2., 3.], &[1, 1, 3], &f, &win(2, 1, 1, 0, 0)).unwrap();
        assert_eq!((y, s), (vec![3., 5.], vec![1, 1, 2]));
        let (y, _) = conv_transpose(&[1., 2.], &[1, 1, 2], &f, &win(2, 1, 1, 0, 0), &[3]).unwrap();
        assert_eq!(y, vec![1., 3., 2.]);
        let (y, _) = pool(&[1., 5., 3.], &[1, 1, 3], &win(2, 2, 1, 0, 0), &[2], Pool::Max).unwrap();
        assert_eq!(y, vec![5., 3.]);
    }
}
