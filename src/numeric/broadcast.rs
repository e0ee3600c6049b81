//! Numpy broadcasting on flat buffers: the result shape of two or three shapes, expanding a
//! buffer to a larger shape, and elementwise binary maps. Called by the elementwise kernels in
//! `mil::ops::elementwise` (`add`, `less`, `select`, …) and by norms that broadcast gamma/beta.

use super::{numel, offsets, strides};

/// The numpy broadcast of two shapes, or `None` when some axis pair is neither equal nor 1.
pub fn shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let at = |s: &[usize], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { 1 };
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Strides that read a buffer of shape `from` as if it had the (broadcast) shape `to`:
/// 0 on axes `from` lacks or has as 1. `None` when `from` does not broadcast to `to`.
pub fn strides_to(from: &[usize], to: &[usize]) -> Option<Vec<isize>> {
    if from.len() > to.len() {
        return None;
    }
    let pad = to.len() - from.len();
    let own = strides(from);
    (0..to.len())
        .map(|i| {
            if i < pad {
                return Some(0);
            }
            match (from[i - pad], to[i]) {
                (f, t) if f == t && f != 1 => Some(own[i - pad] as isize),
                (1, _) => Some(0),
                _ => None,
            }
        })
        .collect()
}

/// `x` (shape `from`) repeated out to shape `to`; `None` when it does not broadcast.
pub fn expand<T: Copy>(x: &[T], from: &[usize], to: &[usize]) -> Option<Vec<T>> {
    if from == to {
        return Some(x.to_vec());
    }
    let s = strides_to(from, to)?;
    Some(offsets(to, &s, 0).into_iter().map(|o| x[o]).collect())
}

/// `f(a, b)` elementwise over the broadcast of the two shapes; returns values and shape. Equal
/// shapes (residual adds, gates) run split over the cores (`numeric::par`).
pub fn binary<A: Copy + Sync, B: Copy + Sync, O: Copy + Default + Send>(
    a: &[A],
    a_shape: &[usize],
    b: &[B],
    b_shape: &[usize],
    f: impl Fn(A, B) -> O + Sync,
) -> Option<(Vec<O>, Vec<usize>)> {
    let out = shape(a_shape, b_shape)?;
    if a.len() != numel(a_shape) || b.len() != numel(b_shape) {
        return None;
    }
    if a_shape == b_shape {
        let mut values = vec![O::default(); a.len()];
        super::par::for_rows(&mut values, 1, a.len(), |first, part| {
            for ((o, &x), &y) in part.iter_mut().zip(&a[first..]).zip(&b[first..]) {
                *o = f(x, y);
            }
        });
        return Some((values, out));
    }
    if b.len() == 1 && a_shape == out.as_slice() {
        let y = b[0];
        return Some((a.iter().map(|&x| f(x, y)).collect(), out));
    }
    if a.len() == 1 && b_shape == out.as_slice() {
        let x = a[0];
        return Some((b.iter().map(|&y| f(x, y)).collect(), out));
    }
    let oa = offsets(&out, &strides_to(a_shape, &out)?, 0);
    let ob = offsets(&out, &strides_to(b_shape, &out)?, 0);
    Some((oa.into_iter().zip(ob).map(|(i, j)| f(a[i], b[j])).collect(), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts_like_numpy() {
        assert_eq!(shape(&[2, 1, 3], &[4, 1]), Some(vec![2, 4, 3]));
        assert_eq!(shape(&[], &[2]), Some(vec![2]));
        assert_eq!(shape(&[2], &[3]), None);
        let (v, s) = binary(&[1, 2], &[2, 1], &[10, 20, 30], &[3], |a, b| a + b).unwrap();
        assert_eq!((v, s), (vec![11, 21, 31, 12, 22, 32], vec![2, 3]));
        assert_eq!(expand(&[1, 2], &[2], &[2, 2]), Some(vec![1, 2, 1, 2]));
        assert_eq!(expand(&[1, 2], &[2], &[3]), None);
    }
}
