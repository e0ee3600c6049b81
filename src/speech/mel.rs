//! The numbers of Whisper's log-mel front end, as transformers' `WhisperFeatureExtractor` defines
//! them (transformers 5.23 `models/whisper/feature_extraction_whisper.py` and `audio_utils.py`
//! `mel_filter_bank`), and the Slaney mel filter bank it uses. The PyTorch reference
//! (`reference::whisper`) computes features with these; the filter bank is the one the
//! MelSpectrogram package is built with (`hf::whisper`). Pure Rust, checked against transformers in `tests/speech.rs`.

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
/// The (N_FREQS, n_mels) row-major Slaney filter bank of transformers' `mel_filter_bank`; one
/// definition, shared with the MelSpectrogram package the converter builds.
pub use crate::hf::whisper::mel_filter_bank as filter_bank;
