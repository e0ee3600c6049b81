//! The numbers of Whisper's log-mel front end, as transformers' `WhisperFeatureExtractor` defines
//! them (transformers 5.23 `models/whisper/feature_extraction_whisper.py` and `audio_utils.py`
//! `mel_filter_bank`), and the Slaney mel filter bank it uses. The PyTorch reference
//! (`reference::whisper`) computes features with these; the MelSpectrogram package carries its
//! own copy of the same rules. Pure Rust, checked against transformers in `tests/speech.rs`.

/// FFT size and (periodic Hann) window length: 25 ms at 16 kHz.
pub const N_FFT: usize = 400;
/// Hop between frames: 10 ms at 16 kHz, so 30 s gives 3000 frames.
pub const HOP_LENGTH: usize = 160;
/// Frequency bins of a one-sided FFT of [`N_FFT`] points.
pub const N_FREQS: usize = N_FFT / 2 + 1;
/// Frames per 30 s window after the last STFT frame is dropped (`log_spec[:, :-1]`).
pub const N_FRAMES: usize = 3000;
/// Floor of the mel power before log10 (`clamp(min=1e-10)`).
pub const LOG_FLOOR: f64 = 1e-10;
/// Dynamic range kept below the window's maximum, in log10 units (`max(x, x.max() - 8)`): 80 dB.
pub const DYNAMIC_RANGE: f64 = 8.0;
/// Offset and divisor of the final scaling `(x + 4) / 4`, which maps features to about [-1, 1].
pub const SCALE: f64 = 4.0;
/// Highest mel filter frequency: Nyquist at 16 kHz (`max_frequency = sampling_rate / 2`).
const MAX_FREQUENCY: f64 = 8000.0;
/// Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz)...
const SLANEY_MIN_LOG_HERTZ: f64 = 1000.0;
/// ...where the scale reaches 15 mels...
const SLANEY_MIN_LOG_MEL: f64 = 15.0;
/// ...and logarithmic above, 27 mels per factor 6.4 in frequency.
fn slaney_log_step() -> f64 {
    27.0 / 6.4f64.ln()
}

fn hertz_to_mel(f: f64) -> f64 {
    if f >= SLANEY_MIN_LOG_HERTZ {
        SLANEY_MIN_LOG_MEL + (f / SLANEY_MIN_LOG_HERTZ).ln() * slaney_log_step()
    } else {
        3.0 * f / 200.0
    }
}

fn mel_to_hertz(m: f64) -> f64 {
    if m >= SLANEY_MIN_LOG_MEL {
        SLANEY_MIN_LOG_HERTZ * ((m - SLANEY_MIN_LOG_MEL) / slaney_log_step()).exp()
    } else {
        200.0 * m / 3.0
    }
}

/// The (N_FREQS, n_mels) row-major Slaney-normalized triangular filter bank of
/// `mel_filter_bank(1 + n_fft // 2, n_mels, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")`,
/// computed in f64 as numpy does.
pub fn filter_bank(n_mels: usize) -> Vec<f64> {
    let (mel_min, mel_max) = (hertz_to_mel(0.0), hertz_to_mel(MAX_FREQUENCY));
    let filter_freqs: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hertz(mel_min + (mel_max - mel_min) * i as f64 / (n_mels + 1) as f64)).collect();
    let fft_freqs: Vec<f64> = (0..N_FREQS).map(|i| MAX_FREQUENCY * i as f64 / (N_FREQS - 1) as f64).collect();
    let mut bank = vec![0.0; N_FREQS * n_mels];
    for (f, &freq) in fft_freqs.iter().enumerate() {
        for m in 0..n_mels {
            let down = -(filter_freqs[m] - freq) / (filter_freqs[m + 1] - filter_freqs[m]);
            let up = (filter_freqs[m + 2] - freq) / (filter_freqs[m + 2] - filter_freqs[m + 1]);
            let enorm = 2.0 / (filter_freqs[m + 2] - filter_freqs[m]);
            bank[f * n_mels + m] = down.min(up).max(0.0) * enorm;
        }
    }
    bank
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips_and_filters_are_triangles() {
        for f in [0.0, 500.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hertz(hertz_to_mel(f)) - f).abs() < 1e-9);
        }
        let bank = filter_bank(80);
        // Each filter is non-negative with a single peak and covers at least one FFT bin.
        for m in 0..80 {
            let column: Vec<f64> = (0..N_FREQS).map(|f| bank[f * 80 + m]).collect();
            assert!(column.iter().all(|&x| x >= 0.0) && column.iter().any(|&x| x > 0.0), "filter {m}");
        }
    }
}
