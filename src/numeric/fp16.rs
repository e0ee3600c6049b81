//! fp16 emulation: values are computed and stored as f32, then rounded to the nearest IEEE
//! binary16 (ties to even) after every op whose output is fp16, so the interpreter shows the
//! drift a device computing in fp16 would show. Called by `interp::run` after each op.

use half::f16;

/// `v` rounded to the nearest fp16 value, returned as f32 (overflow gives ±inf, as on device).
pub fn round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Rounds every element in place.
pub fn round_slice(values: &mut [f32]) {
    for v in values {
        *v = round(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_overflows_to_inf() {
        assert_eq!(round(1.0 + 1.0 / 4096.0), 1.0); // halfway between 1 and 1+2^-10: even wins
        assert_eq!(round(65504.0), 65504.0);
        assert_eq!(round(70000.0), f32::INFINITY);
    }
}
