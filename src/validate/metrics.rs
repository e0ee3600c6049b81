//! Drift metrics between a reference output and a converted model's output: what `validate`
//! reports per output (max abs/rel error, mean abs error, cosine similarity, PSNR), and the
//! [`Criterion`] that decides pass or fail: elementwise allclose, or error relative to the
//! output's scale (PSNR and peak-relative error, how fp16 packages are judged).

use serde::Serialize;

/// Denominator floor for relative error, so exact zeros in the reference do not divide by 0.
const REL_EPS: f64 = 1e-6;
/// PSNR reported when the outputs are identical (infinite in theory; JSON has no infinity).
pub const PSNR_IDENTICAL_DB: f64 = 200.0;

/// The comparison of one output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Drift {
    pub max_abs: f64,
    pub max_rel: f64,
    pub mean_abs: f64,
    pub cosine: f64,
    pub psnr_db: f64,
    /// Largest |reference| value: the scale PSNR and [`Criterion::Scaled`] measure against.
    pub peak: f64,
    /// Elements where the converted output is NaN or infinite but the reference is finite.
    pub non_finite: usize,
    /// Elements where the reference itself is NaN or infinite: nothing can be checked against
    /// them, so they fail too (an all-NaN reference must not pass everything).
    pub reference_non_finite: usize,
    /// The verdict of the criterion (for [`compare`]: numpy.allclose(actual, expected, rtol,
    /// atol)), except that every non-finite value fails (numpy lets equal infinities pass; a
    /// reference that overflowed proves nothing), and so do empty outputs and outputs of
    /// different lengths (nothing compared proves nothing).
    pub pass: bool,
}

/// How `validate` decides that an output matches its reference.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Criterion {
    /// numpy.allclose: every element within `atol + rtol × |expected|`. Right when values are
    /// near 1 or errors are summation-order noise (fp32); for fp16 packages with large
    /// activations it fails on rounding alone (an error of 0.4 on values up to 24 is 1.5 fp16
    /// steps there).
    Allclose { atol: f64, rtol: f64 },
    /// Relative to the output's scale: PSNR against the reference's peak at least
    /// `min_psnr_db`, and no element off by more than `max_error_of_peak × peak`.
    Scaled { min_psnr_db: f64, max_error_of_peak: f64 },
}

impl std::fmt::Display for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Criterion::Allclose { atol, rtol } => write!(f, "atol {atol}, rtol {rtol}"),
            Criterion::Scaled { min_psnr_db, max_error_of_peak } => {
                write!(f, "PSNR >= {min_psnr_db} dB, max error <= {}% of peak", max_error_of_peak * 100.0)
            }
        }
    }
}

/// Compares `actual` against `expected` and judges the pair by `criterion`; non-finite values,
/// empty outputs and unequal lengths fail under every criterion (see [`compare`]).
pub fn judge(expected: &[f64], actual: &[f64], criterion: Criterion) -> Drift {
    match criterion {
        Criterion::Allclose { atol, rtol } => compare(expected, actual, atol, rtol),
        Criterion::Scaled { min_psnr_db, max_error_of_peak } => {
            // No element bound from allclose: only the non-finite and length checks remain.
            let mut d = compare(expected, actual, f64::INFINITY, 0.0);
            d.pass = d.pass && d.psnr_db >= min_psnr_db && d.max_abs <= max_error_of_peak * d.peak;
            d
        }
    }
}

/// Compares `actual` against `expected`, element by element. Non-finite values on either side
/// are counted and fail; they are left out of the error statistics, which cover the finite pairs.
/// Empty or different-length inputs fail (the statistics then cover the common prefix).
pub fn compare(expected: &[f64], actual: &[f64], atol: f64, rtol: f64) -> Drift {
    let n = expected.len().min(actual.len()).max(1) as f64;
    let (mut max_abs, mut max_rel, mut sum_abs, mut sq_err) = (0f64, 0f64, 0f64, 0f64);
    let (mut dot, mut ne, mut na, mut peak) = (0f64, 0f64, 0f64, 0f64);
    let (mut non_finite, mut reference_non_finite) = (0usize, 0usize);
    let mut pass = !expected.is_empty() && expected.len() == actual.len();
    for (&e, &a) in expected.iter().zip(actual) {
        if !e.is_finite() {
            reference_non_finite += 1;
            pass = false;
            continue;
        }
        if !a.is_finite() {
            non_finite += 1;
            pass = false;
            continue;
        }
        let d = (a - e).abs();
        max_abs = max_abs.max(d);
        max_rel = max_rel.max(d / e.abs().max(REL_EPS));
        sum_abs += d;
        sq_err += d * d;
        dot += a * e;
        ne += e * e;
        na += a * a;
        peak = peak.max(e.abs());
        if d > atol + rtol * e.abs() {
            pass = false;
        }
    }
    let cosine = if ne == 0.0 && na == 0.0 { 1.0 } else { dot / (ne.sqrt() * na.sqrt()).max(f64::MIN_POSITIVE) };
    let mse = sq_err / n;
    let psnr_db = if mse == 0.0 { PSNR_IDENTICAL_DB } else { (20.0 * (peak.max(REL_EPS) / mse.sqrt()).log10()).min(PSNR_IDENTICAL_DB) };
    Drift { max_abs, max_rel, mean_abs: sum_abs / n, cosine, psnr_db, peak, non_finite, reference_non_finite, pass }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs_pass_with_perfect_scores() {
        let d = compare(&[1.0, -2.0, 0.0], &[1.0, -2.0, 0.0], 0.0, 0.0);
        assert_eq!((d.max_abs, d.psnr_db, d.pass), (0.0, PSNR_IDENTICAL_DB, true));
        assert!((d.cosine - 1.0).abs() < 1e-12);
    }

    #[test]
    fn allclose_follows_numpy_rule() {
        // |a - e| <= atol + rtol * |e|: 0.011 > 0.01 + 0.0 fails; with rtol 0.01 and |e| = 1 it passes.
        assert!(!compare(&[1.0], &[1.011], 0.01, 0.0).pass);
        assert!(compare(&[1.0], &[1.011], 0.01, 0.01).pass);
        let d = compare(&[2.0, 4.0], &[2.2, 4.0], 1.0, 0.0);
        assert!((d.max_rel - 0.1).abs() < 1e-9 && (d.mean_abs - 0.1).abs() < 1e-9);
    }

    #[test]
    fn nan_in_output_fails_and_is_counted() {
        let d = compare(&[1.0, 2.0], &[f64::NAN, 2.0], 1e9, 1e9);
        assert_eq!((d.non_finite, d.pass), (1, false));
    }

    #[test]
    fn issue_hostile_non_finite_references_fail() {
        // An all-NaN reference used to pass: NaN comparisons are never "greater than tolerance".
        let d = compare(&[f64::NAN; 3], &[1.0, 2.0, 3.0], 1e-3, 1e-3);
        assert_eq!((d.reference_non_finite, d.pass), (3, false));
        let d = compare(&[f64::NAN; 3], &[f64::NAN; 3], 1e-3, 1e-3);
        assert_eq!((d.reference_non_finite, d.non_finite, d.pass), (3, 0, false));
        // An infinite reference has an infinite tolerance under the allclose formula.
        let d = compare(&[f64::INFINITY, 1.0], &[0.0, 1.0], 1e-3, 1e-3);
        assert_eq!((d.reference_non_finite, d.pass), (1, false));
        let d = compare(&[f64::NEG_INFINITY], &[f64::NEG_INFINITY], 1e-3, 1e-3);
        assert!(!d.pass);
        let d = compare(&[1.0], &[f64::INFINITY], 1e9, 1e9);
        assert_eq!((d.non_finite, d.pass), (1, false));
        assert!(d.max_abs.is_finite() && d.psnr_db.is_finite(), "{d:?}");
    }

    #[test]
    fn scaled_criterion_judges_errors_against_the_output_peak() {
        let scaled = Criterion::Scaled { min_psnr_db: 35.0, max_error_of_peak: 0.05 };
        // Values up to 24 off by 0.37 at one element (Whisper-base's fp16 encoder): allclose
        // at 0.05 fails, the scaled criterion passes (PSNR ≈ 20·log10(24 / (0.37/√4)) ≈ 42 dB).
        let e = [24.0, -3.0, 0.5, 10.0];
        let a = [24.37, -3.0, 0.5, 10.0];
        assert!(!judge(&e, &a, Criterion::Allclose { atol: 0.05, rtol: 0.0 }).pass);
        let d = judge(&e, &a, scaled);
        assert!(d.pass && (d.peak - 24.0).abs() < 1e-12 && d.psnr_db > 35.0, "{d:?}");
        // One element off by more than 5 % of the peak fails, however good the PSNR of the rest.
        let mut e = vec![1.0; 10_000];
        e[0] = 20.0;
        let mut a = e.clone();
        a[1] = 2.5;
        let d = judge(&e, &a, scaled);
        assert!(!d.pass && d.psnr_db > 35.0, "{d:?}");
        // Noise at 10 % of the peak everywhere: PSNR 20 dB fails.
        let e: Vec<f64> = (0..100).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let a: Vec<f64> = e.iter().map(|v| v * 1.1).collect();
        assert!(!judge(&e, &a, Criterion::Scaled { min_psnr_db: 35.0, max_error_of_peak: 1.0 }).pass);
        // Non-finite values fail under the scaled criterion too.
        assert!(!judge(&[1.0, 2.0], &[f64::NAN, 2.0], scaled).pass);
        assert!(!judge(&[], &[], scaled).pass);
    }

    #[test]
    fn issue_hostile_empty_or_unequal_lengths_fail() {
        assert!(!compare(&[], &[], 1.0, 1.0).pass);
        assert!(!compare(&[1.0, 2.0], &[1.0], 1.0, 1.0).pass);
        assert!(!compare(&[1.0], &[1.0, 2.0], 1.0, 1.0).pass);
    }
}
