//! Sample-rate conversion by windowed-sinc interpolation (band-limited interpolation, J. O. Smith,
//! <https://ccrma.stanford.edu/~jos/resample/>): each output sample is the input convolved with a
//! Blackman-windowed sinc low-pass centred on the output instant. The cut-off sits just below the
//! lower of the two Nyquist frequencies, so downsampling does not alias. The kernel is read from
//! a table with linear interpolation ([`TABLE_DENSITY`] points per zero crossing) instead of
//! computing a sine and two cosines per tap. Called by [`wav::read_16k`](super::wav::read_16k)
//! for files not at 16 kHz, which bounds the rates and lengths it is given (the work is about
//! 70 taps per input sample when downsampling, 70 per output sample when upsampling).

use std::f64::consts::PI;

/// Zero crossings of the sinc kept on each side of the centre: the filter length. 32 gives a
/// transition band about 3 % of the cut-off wide; the Blackman window keeps side lobes ~58 dB down.
const ZERO_CROSSINGS: f64 = 32.0;
/// Cut-off as a fraction of the lower Nyquist frequency, leaving room for the transition band so
/// the stop band starts at Nyquist (speech energy near 8 kHz is negligible for Whisper).
const ROLLOFF: f64 = 0.95;

/// Kernel table points per zero crossing. Linear interpolation between them errs by at most
/// (1/512)² / 8 · π² ≈ 5e-6 of the kernel's peak, far below 16-bit audio's resolution.
const TABLE_DENSITY: usize = 512;

/// The kernel `sinc(u) · blackman(u / ZERO_CROSSINGS)` at u = i / TABLE_DENSITY for
/// i in 0..=ZERO_CROSSINGS · TABLE_DENSITY, plus one zero so interpolation may read past the end.
fn kernel_table() -> Vec<f64> {
    let points = ZERO_CROSSINGS as usize * TABLE_DENSITY;
    let mut table: Vec<f64> = (0..=points)
        .map(|i| {
            let u = i as f64 / TABLE_DENSITY as f64;
            sinc(u) * blackman(u / ZERO_CROSSINGS)
        })
        .collect();
    table.push(0.0);
    table
}

/// `input` sampled at `from` Hz, resampled to `to` Hz; the output has `ceil(len · to / from)`
/// samples. Samples outside the input count as zero. Rates of 0 give the input back unchanged
/// (callers refuse them first).
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    let table = kernel_table();
    let step = f64::from(from) / f64::from(to); // input samples per output sample
    let cutoff = (1.0 / step).min(1.0) * ROLLOFF; // in cycles per input sample, times 2
    let half_width = ZERO_CROSSINGS / cutoff; // in input samples
    let out_len = (input.len() as u64 * u64::from(to)).div_ceil(u64::from(from)) as usize;
    let last = input.len() as i64 - 1;
    (0..out_len)
        .map(|n| {
            let t = n as f64 * step;
            let first = ((t - half_width).ceil() as i64).max(0);
            let end = ((t + half_width).floor() as i64).min(last);
            let mut acc = 0.0f64;
            for (k, &x) in (first..=end).zip(input.iter().skip(first as usize)) {
                // Distance in zero crossings of the kernel, then its table position.
                let at = (t - k as f64).abs() * cutoff * TABLE_DENSITY as f64;
                let i = at as usize;
                let (Some(&a), Some(&b)) = (table.get(i), table.get(i + 1)) else { continue };
                acc += f64::from(x) * cutoff * (a + (b - a) * (at - i as f64));
            }
            acc as f32
        })
        .collect()
}

/// sin(πx)/(πx), 1 at 0.
fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        (PI * x).sin() / (PI * x)
    }
}

/// The Blackman window on u ∈ [-1, 1] (1 at the centre, 0 at the ends).
fn blackman(u: f64) -> f64 {
    if u.abs() >= 1.0 {
        0.0
    } else {
        0.42 + 0.5 * (PI * u).cos() + 0.08 * (2.0 * PI * u).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, seconds: f64) -> Vec<f32> {
        (0..(seconds * f64::from(rate)) as usize).map(|i| (2.0 * PI * freq * i as f64 / f64::from(rate)).sin() as f32 * 0.5).collect()
    }

    /// Largest error against the analytic sine, away from the edges (where the filter sees zeros).
    fn max_error(got: &[f32], freq: f64, rate: u32) -> f32 {
        let margin = rate as usize / 20;
        let want = sine(freq, rate, got.len() as f64 / f64::from(rate));
        got[margin..got.len() - margin].iter().zip(&want[margin..]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn down_and_up_sampling_keep_an_in_band_sine() {
        for (from, to) in [(44_100, 16_000), (48_000, 16_000), (22_050, 16_000), (8_000, 16_000), (16_000, 44_100)] {
            let out = resample(&sine(1000.0, from, 1.0), from, to);
            assert_eq!(out.len(), to as usize, "{from} -> {to}");
            let e = max_error(&out, 1000.0, to);
            assert!(e < 2e-3, "{from} -> {to}: max error {e}");
        }
    }

    #[test]
    fn a_tone_above_the_new_nyquist_is_removed() {
        // 12 kHz at 48 kHz would alias to 4 kHz at 16 kHz without the low-pass.
        let out = resample(&sine(12_000.0, 48_000, 1.0), 48_000, 16_000);
        let peak = out[800..15_200].iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(peak < 2e-3, "aliased energy {peak}");
    }

    #[test]
    fn the_table_kernel_matches_the_analytic_one() {
        // The direct form: cutoff · sinc(cutoff · d) · blackman(d / half_width) per tap.
        let (from, to) = (44_100u32, 16_000u32);
        let input = sine(1000.0, from, 0.05);
        let step = f64::from(from) / f64::from(to);
        let cutoff = (1.0 / step).min(1.0) * ROLLOFF;
        let half_width = ZERO_CROSSINGS / cutoff;
        let fast = resample(&input, from, to);
        for (n, &got) in fast.iter().enumerate() {
            let t = n as f64 * step;
            let want: f64 = input
                .iter()
                .enumerate()
                .map(|(k, &x)| {
                    let d = t - k as f64;
                    f64::from(x) * cutoff * sinc(cutoff * d) * blackman(d / half_width)
                })
                .sum();
            assert!((f64::from(got) - want).abs() < 1e-5, "sample {n}: {got} vs {want}");
        }
    }

    #[test]
    fn same_rate_is_the_identity() {
        let x = sine(440.0, 16_000, 0.1);
        assert_eq!(resample(&x, 16_000, 16_000), x);
    }
}
