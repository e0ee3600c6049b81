//! fp16 emulation: values are computed and stored as f32, then rounded to the nearest IEEE
//! binary16 (ties to even) after every op whose output is fp16, so the interpreter shows the
//! drift a device computing in fp16 would show. Called by `interp::run` after each op.
//!
//! The rounding works on the f32 bits (no conversion to a u16 and back), branch-free so the
//! compiler vectorizes [`round_slice`]: it runs over every fp16 op output, millions of values
//! per decoder step.

/// f32 mantissa bits that fp16 drops (23 − 10).
const DROPPED_BITS: u32 = 13;
/// Mask of the dropped mantissa bits.
const DROPPED_MASK: u32 = (1 << DROPPED_BITS) - 1;
/// Bits of |x| at and above which fp16 rounds to infinity: 65520 = 65504 + half an fp16 step.
const OVERFLOW_BITS: u32 = 0x477f_f000;
/// Bits of |x| below which fp16 is subnormal: 2^-14, the smallest normal fp16.
const MIN_NORMAL_BITS: u32 = 0x3880_0000;
/// Adding then subtracting 0.5 rounds |x| < 2^-14 to a multiple of 2^-24 (the fp16 subnormal
/// step), because f32 values in [0.5, 1) are exactly 2^-24 apart.
const SUBNORMAL_SHIFTER: f32 = 0.5;
/// Bits of f32 +infinity.
const INF_BITS: u32 = 0x7f80_0000;

/// `v` rounded to the nearest fp16 value, returned as f32 (overflow gives ±inf, as on device;
/// NaN stays NaN).
#[inline]
pub fn round(v: f32) -> f32 {
    let bits = v.to_bits();
    let sign = bits & 0x8000_0000;
    let abs = bits & 0x7fff_ffff;
    // Normal range: add just under half an fp16 step (plus the kept lowest bit, for ties to
    // even) and truncate; a carry into the exponent is the correct round-up.
    let normal = (abs + (DROPPED_MASK >> 1) + ((abs >> DROPPED_BITS) & 1)) & !DROPPED_MASK;
    let subnormal = ((f32::from_bits(abs) + SUBNORMAL_SHIFTER) - SUBNORMAL_SHIFTER).to_bits();
    let rounded = if abs < MIN_NORMAL_BITS { subnormal } else { normal };
    let out = if abs > INF_BITS {
        bits & 0x7fff_ffff | 0x0040_0000 // NaN: keep it quiet NaN
    } else if abs >= OVERFLOW_BITS {
        INF_BITS
    } else {
        rounded
    };
    f32::from_bits(out | sign)
}

/// Rounds every element in place (large slices split over the cores, `numeric::par`).
pub fn round_slice(values: &mut [f32]) {
    let n = values.len();
    super::par::for_rows(values, 1, n, |_, part| part.iter_mut().for_each(|v| *v = round(*v)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// The conversion `half` does (F16C on x86), the definition we must match.
    fn reference(v: f32) -> f32 {
        f16::from_f32(v).to_f32()
    }

    #[test]
    fn rounds_to_nearest_even_and_overflows_to_inf() {
        assert_eq!(round(1.0 + 1.0 / 4096.0), 1.0); // halfway between 1 and 1+2^-10: even wins
        assert_eq!(round(65504.0), 65504.0);
        assert_eq!(round(70000.0), f32::INFINITY);
        assert_eq!(round(-70000.0), f32::NEG_INFINITY);
        assert!(round(f32::NAN).is_nan());
    }

    #[test]
    fn matches_half_over_a_sweep_of_bit_patterns() {
        // Every 65537th f32 bit pattern, plus the neighbourhood of each boundary.
        let mut patterns: Vec<u32> = (0..=u32::MAX / 65_537).map(|i| i * 65_537).collect();
        for b in [OVERFLOW_BITS, MIN_NORMAL_BITS, INF_BITS, 0x3380_0000, 0x3300_0000, 0x3f80_1000, 0] {
            for d in 0..64u32 {
                patterns.extend([b.wrapping_add(d), b.wrapping_sub(d), (b | 0x8000_0000).wrapping_add(d)]);
            }
        }
        for p in patterns {
            let v = f32::from_bits(p);
            let (got, want) = (round(v), reference(v));
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{p:#x} ({v:e}): {got:e} vs {want:e}");
        }
    }
}
