//! f32 `exp` and `erfc` written to vectorize (no libm calls, no branches in the loop body), for
//! the kernels that spend most of a transformer's non-GEMM time: softmax over long rows and the
//! exact GELU. Both stay within a few f32 ulps of the true value (tests below check against f64
//! libm: exp ≤ 3 ulp, erfc ≤ 5e-7 relative), far inside the fp16 rounding the interpreter applies after them. Called by
//! `numeric::reduce::softmax` and the `gelu` kernel in `mil::ops::elementwise`.

/// log2(e): exp(x) = 2^(x·log2 e).
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a high part with few mantissa bits and the rest (Cody–Waite reduction), so
/// x − n·ln2 is exact for the n we see.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding then subtracting 1.5·2^23 rounds an f32 of magnitude < 2^22 to an integer (ties to
/// even) without a `round` call, which needs SSE4.1 to vectorize.
const ROUNDER: f32 = 12_582_912.0;
/// Below this exp(x) is under f32's smallest normal (2^-126); the result is flushed to 0.
const EXP_MIN: f32 = -87.336_55;
/// Above this 2^n overflows the exponent field; the result is clamped to exp(EXP_MAX).
const EXP_MAX: f32 = 88.0;
/// Minimax polynomial for e^r on [−ln2/2, ln2/2] (Cephes `expf`), highest degree first.
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
/// f32 exponent bias.
const EXP_BIAS: i32 = 127;
/// f32 mantissa width: where the exponent field starts.
const MANTISSA_BITS: u32 = 23;

/// e^x for finite and infinite x (−inf gives 0, NaN gives NaN); relative error about 2 ulp for
/// x in [−87.3, 88], 0 below, e^88 above.
#[inline]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    let n = (xc * LOG2E + ROUNDER) - ROUNDER;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + EXP_BIAS) as u32) << MANTISSA_BITS);
    let out = y * scale;
    if x < EXP_MIN {
        0.0
    } else {
        out
    }
}

/// Coefficients of the Chebyshev fit of Numerical Recipes' `erfcc` (fractional error below
/// 1.2e-7 everywhere), lowest degree first: erfc(z) = t·exp(−z² + poly(t)), t = 1/(1 + z/2).
const ERFC_POLY: [f32; 10] = [
    -1.265_512_2,
    1.000_023_7,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_204,
    1.488_515_9,
    -0.822_152_23,
    0.170_872_77,
];

/// Clears the 12 low mantissa bits: a float with 12 significant bits squares exactly in f32.
const SPLIT_MASK: u32 = 0xffff_f000;

/// The complementary error function 1 − erf(x), with small relative error also deep in the
/// tails (where 1 − erf would cancel): the exact GELU is 0.5·x·erfc(−x/√2).
#[inline]
pub fn erfc(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = ERFC_POLY[9];
    for c in ERFC_POLY[..9].iter().rev() {
        p = p * t + c;
    }
    // z² would lose ~z²·2^-24 absolutely, a large relative error after exp(−z²) in the tail;
    // split z = hi + (z − hi) with hi's low mantissa bits cleared so hi² is exact.
    let hi = f32::from_bits(z.to_bits() & SPLIT_MASK);
    let e = t * exp(-hi * hi) * exp((hi - z) * (hi + z) + p);
    if x >= 0.0 {
        e
    } else {
        2.0 - e
    }
}

/// The error function, as 1 − erfc(x).
#[inline]
pub fn erf(x: f32) -> f32 {
    1.0 - erfc(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(got: f32, want: f64) -> f64 {
        if want == 0.0 {
            f64::from(got).abs()
        } else {
            ((f64::from(got) - want) / want).abs()
        }
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst: f64 = 0.0;
        for i in -870_000..=880_000 {
            let x = i as f32 / 10_000.0;
            worst = worst.max(rel(exp(x), f64::from(x).exp()));
        }
        assert!(worst < 3.0 * f64::from(f32::EPSILON), "worst relative error {worst:e}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erfc_keeps_relative_accuracy_in_both_tails() {
        let mut worst: f64 = 0.0;
        for i in -60_000..=90_000 {
            let x = i as f32 / 10_000.0;
            worst = worst.max(rel(erfc(x), libm::erfc(f64::from(x))));
        }
        assert!(worst < 5e-7, "worst relative error {worst:e}");
        let mut worst_abs: f64 = 0.0;
        for i in -60_000..=60_000 {
            let x = i as f32 / 10_000.0;
            worst_abs = worst_abs.max((f64::from(erf(x)) - libm::erf(f64::from(x))).abs());
        }
        assert!(worst_abs < 5e-7, "worst absolute erf error {worst_abs:e}");
    }
}
