//! Splitting one kernel's output over the machine's cores with scoped threads: a GEMM's rows,
//! softmax rows, im2col rows, an element-wise map, fp16 rounding. No pool and no queue: each call spawns at most
//! [`threads`] − 1 workers and only when the work is large enough to repay the spawn (tens of
//! microseconds), so a decoder step's many tiny ops stay on one thread. Called by the kernels in
//! `numeric` (gemm, conv, reduce, broadcast, fp16) and `mil::ops::elementwise`.

use std::sync::OnceLock;

/// Environment variable that caps the threads kernels use (`1` = single-threaded).
pub const THREADS_ENV: &str = "T2C_THREADS";

/// Elements (or multiply-adds, for GEMMs) below which a kernel runs on the calling thread: a
/// thread spawn costs about as much as this many cheap element operations.
pub const MIN_PARALLEL_WORK: usize = 1 << 16;

/// Threads kernels may use: `T2C_THREADS` when set to a positive number, else the cores
/// available to this process.
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var(THREADS_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// Calls `f(first_unit, part)` on consecutive parts of `out`, each a whole number of `unit`
/// elements (a row), `first_unit` being the index of the part's first row. Parts run on
/// separate threads when `work` (the caller's estimate of the whole job, in element operations)
/// reaches [`MIN_PARALLEL_WORK`] and there are at least two rows.
pub fn for_rows<T: Send>(out: &mut [T], unit: usize, work: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let unit = unit.max(1);
    let rows = out.len() / unit;
    let n = threads().min(rows);
    if n < 2 || work < MIN_PARALLEL_WORK {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(n);
    std::thread::scope(|s| {
        let mut parts = out.chunks_mut(per * unit).enumerate();
        let first = parts.next();
        for (i, part) in parts {
            let f = &f;
            s.spawn(move || f(i * per, part));
        }
        if let Some((_, part)) = first {
            f(0, part);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_visited_once_with_its_index() {
        for rows in [1, 2, 3, 7, 64] {
            let mut out = vec![0usize; rows * 5];
            for_rows(&mut out, 5, usize::MAX, |first, part| {
                for (r, row) in part.chunks_mut(5).enumerate() {
                    row.iter_mut().for_each(|v| *v += first + r + 1);
                }
            });
            let want: Vec<usize> = (0..rows).flat_map(|r| [r + 1; 5]).collect();
            assert_eq!(out, want);
        }
    }
}
