//! Speech validation for converted Whisper models (issue 8): audio in, tokens and text out, scored
//! by word error rate. [`wav`] reads any PCM/float WAV as mono f32 and [`resample`] brings it to
//! 16 kHz; [`greedy`] holds the one greedy decoder loop (transformers' `generate` rules for
//! Whisper: prompt, `suppress_tokens`, `begin_suppress_tokens`, EOT, max length) over a
//! [`greedy::Backend`], which [`packages::Packages`] implements by running the three converted
//! packages in our interpreter and `reference::whisper` implements in PyTorch; [`text`] turns
//! tokens into text with `tokenizer.json`; [`wer`] scores transcripts.
//!
//! Called by `cli::validate_speech` and by tests. Uses `interp`, `package` and `mil` only.

pub mod compress;
pub mod greedy;
pub mod mel;
pub mod packages;
pub mod resample;
pub mod text;
pub mod wav;
pub mod wer;

use std::path::{Path, PathBuf};

/// Sample rate Whisper's feature extractor and the MelSpectrogram package take
/// (`preprocessor_config.json` `sampling_rate`).
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples in one 30 s window (`n_samples` of WhisperFeatureExtractor): the fixed input length of
/// the MelSpectrogram package; shorter audio is zero-padded, longer audio cut into windows.
pub const WINDOW_SAMPLES: usize = 480_000;

/// Why speech validation could not run. Each message names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A WAV, JSON, tokenizer or package file that is missing or malformed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A package that `package::read` refuses (its error already names the file inside it).
    /// The cause is part of the message, not a `source`, so error chains print it once.
    #[error("{error}")]
    Package { path: PathBuf, error: Box<crate::package::Error> },
    /// A package that loads but fails in the interpreter.
    #[error("{}: {error}", path.display())]
    Run { path: PathBuf, error: Box<crate::interp::Error> },
    /// A file `crate::files` refused: not a regular file, too large, or unreadable (the message
    /// names it). The cause is part of the message, not a `source`.
    #[error("{0}")]
    Refused(crate::files::Error),
}

impl From<crate::files::Error> for Error {
    fn from(e: crate::files::Error) -> Error {
        Error::Refused(e)
    }
}

impl Error {
    /// An error about `path` (unreadable, corrupt, wrong content).
    pub fn file(path: &Path, message: impl Into<String>) -> Error {
        Error::File { path: path.to_path_buf(), message: message.into() }
    }
}

/// Cuts `audio` (16 kHz mono) into [`WINDOW_SAMPLES`]-long windows, the last one zero-padded, as
/// WhisperFeatureExtractor pads one window; empty audio gives one silent window. Called by
/// [`greedy::transcribe`].
pub fn windows(audio: &[f32]) -> Vec<Vec<f32>> {
    if audio.is_empty() {
        return vec![vec![0.0; WINDOW_SAMPLES]];
    }
    audio
        .chunks(WINDOW_SAMPLES)
        .map(|c| {
            let mut w = c.to_vec();
            w.resize(WINDOW_SAMPLES, 0.0);
            w
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_is_cut_into_padded_windows() {
        let audio: Vec<f32> = (0..WINDOW_SAMPLES + 10).map(|i| i as f32).collect();
        let w = windows(&audio);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0][WINDOW_SAMPLES - 1], (WINDOW_SAMPLES - 1) as f32);
        assert_eq!(w[1][9], (WINDOW_SAMPLES + 9) as f32);
        assert!(w[1][10..].iter().all(|&x| x == 0.0) && w[1].len() == WINDOW_SAMPLES);
        assert_eq!(windows(&[]).len(), 1);
    }
}
