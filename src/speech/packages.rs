//! The converted Whisper packages, run by our MIL interpreter, as a greedy-decoding
//! [`Backend`]. `convert WHISPER_DIR -o OUT_DIR` writes three packages with this interface
//! (Core ML's (B, C, 1, S) layout throughout):
//!
//! - `MelSpectrogram.mlpackage`: `audio` (480000,) fp32 → `melspectrogram_features` (1, 80, 1, 3000);
//! - `AudioEncoder.mlpackage`: `melspectrogram_features` → `encoder_output_embeds` (1, d, 1, 1500),
//!   `cross_key_cache`, `cross_value_cache` (layers, d, 1, 1500);
//! - `TextDecoder.mlpackage`: `input_ids` (1,) int32, `cache_length` (1,) int32 (the position of
//!   this token), `key_cache`, `value_cache` (layers, d, 1, positions), `cross_key_cache`,
//!   `cross_value_cache` → `logits` (1, vocab), `key_cache_updates`, `value_cache_updates`
//!   (layers, d, 1, 1), which the caller (here) writes into column `cache_length` of its caches.
//!
//! Called by `cli::validate_speech`; uses `package::read` and `interp::run`.

use std::path::{Path, PathBuf};

use super::greedy::Backend;
use super::Error;
use crate::interp::{self, Array};
use crate::mil::{DType, Function, Model, ValueType};
use crate::package;

/// Package of the log-mel front end.
pub const MEL_PACKAGE: &str = "MelSpectrogram.mlpackage";
/// Package of the audio encoder.
pub const ENCODER_PACKAGE: &str = "AudioEncoder.mlpackage";
/// Package of one decoder step.
pub const DECODER_PACKAGE: &str = "TextDecoder.mlpackage";

/// The three packages of one converted Whisper model, and the decoder's caches.
pub struct Packages {
    mel: (PathBuf, Model),
    encoder: (PathBuf, Model),
    decoder: (PathBuf, Model),
    /// Shape of `key_cache` / `value_cache`: (layers, d, 1, positions).
    cache_shape: Vec<usize>,
    key_cache: Vec<f32>,
    value_cache: Vec<f32>,
    cross_key: Option<Array>,
    cross_value: Option<Array>,
}

/// True when `dir` holds the three Whisper packages: how `validate` tells a Whisper output
/// folder from a single package.
pub fn is_whisper_dir(dir: &Path) -> bool {
    [MEL_PACKAGE, ENCODER_PACKAGE, DECODER_PACKAGE].iter().all(|p| dir.join(p).is_dir())
}

/// The `main` function of a loaded package.
fn main_of<'a>((path, model): &'a (PathBuf, Model)) -> Result<&'a Function, Error> {
    model.program.main().ok_or_else(|| Error::file(path, "the package has no main function"))
}

/// Runs a package on `inputs` and returns its outputs by name.
fn run(package: &(PathBuf, Model), inputs: &[(String, Array)]) -> Result<Vec<(String, Array)>, Error> {
    interp::run(main_of(package)?, inputs).map_err(|source| Error::Run { path: package.0.clone(), source })
}

/// Takes output `name` out of `outputs`, as f32 values.
fn output(package: &(PathBuf, Model), outputs: &mut Vec<(String, Array)>, name: &str) -> Result<Array, Error> {
    let i = outputs.iter().position(|(n, _)| n == name).ok_or_else(|| Error::file(&package.0, format!("the package has no output `{name}`")))?;
    let (_, a) = outputs.swap_remove(i);
    if a.floats().is_none() {
        return Err(Error::file(&package.0, format!("output `{name}` is {}, not a float tensor", a.dtype)));
    }
    Ok(a)
}

impl Packages {
    /// Loads the three packages from `dir` (written by `convert WHISPER_DIR`).
    pub fn open(dir: &Path) -> Result<Packages, Error> {
        let load = |name: &str| -> Result<(PathBuf, Model), Error> {
            let path = dir.join(name);
            let model = package::read(&path).map_err(|source| Error::Package { path: path.clone(), source })?;
            Ok((path, model))
        };
        let decoder = load(DECODER_PACKAGE)?;
        let cache_shape = main_of(&decoder)?
            .inputs
            .iter()
            .find(|i| i.name == "key_cache")
            .and_then(|i| match &i.ty {
                ValueType::Tensor(t) => t.fixed_shape(),
                ValueType::State(_) => None,
            })
            .filter(|s| s.len() == 4)
            .ok_or_else(|| Error::file(&decoder.0, "no `key_cache` input of fixed shape (layers, d, 1, positions)"))?;
        let n: usize = cache_shape.iter().product();
        Ok(Packages {
            mel: load(MEL_PACKAGE)?,
            encoder: load(ENCODER_PACKAGE)?,
            decoder,
            cache_shape,
            key_cache: vec![0.0; n],
            value_cache: vec![0.0; n],
            cross_key: None,
            cross_value: None,
        })
    }
}

impl Backend for Packages {
    type Error = Error;

    fn features(&mut self, window: &[f32]) -> Result<Vec<f32>, Error> {
        let input = Array::float(DType::F32, vec![window.len()], window.to_vec());
        let mut out = run(&self.mel, &[("audio".to_string(), input)])?;
        Ok(output(&self.mel, &mut out, "melspectrogram_features")?.to_f32_vec().unwrap_or_default())
    }

    fn encode(&mut self, features: &[f32]) -> Result<Vec<f32>, Error> {
        let mels = features.len() / super::mel::N_FRAMES;
        let input = Array::float(DType::F32, vec![1, mels, 1, super::mel::N_FRAMES], features.to_vec());
        let mut out = run(&self.encoder, &[("melspectrogram_features".to_string(), input)])?;
        self.cross_key = Some(output(&self.encoder, &mut out, "cross_key_cache")?);
        self.cross_value = Some(output(&self.encoder, &mut out, "cross_value_cache")?);
        Ok(output(&self.encoder, &mut out, "encoder_output_embeds")?.to_f32_vec().unwrap_or_default())
    }

    fn logits(&mut self, token: u32, position: usize) -> Result<Vec<f32>, Error> {
        let (Some(cross_key), Some(cross_value)) = (&self.cross_key, &self.cross_value) else {
            return Err(Error::file(&self.decoder.0, "decoder step before the encoder ran"));
        };
        let positions = self.cache_shape[3];
        if position >= positions {
            return Err(Error::file(&self.decoder.0, format!("position {position} is past the decoder's {positions} cache columns")));
        }
        if position == 0 {
            self.key_cache.fill(0.0);
            self.value_cache.fill(0.0);
        }
        let inputs = vec![
            ("input_ids".to_string(), Array::int(vec![1], vec![token as i32])),
            ("cache_length".to_string(), Array::int(vec![1], vec![position as i32])),
            ("key_cache".to_string(), Array::float(DType::F32, self.cache_shape.clone(), self.key_cache.clone())),
            ("value_cache".to_string(), Array::float(DType::F32, self.cache_shape.clone(), self.value_cache.clone())),
            ("cross_key_cache".to_string(), cross_key.clone()),
            ("cross_value_cache".to_string(), cross_value.clone()),
        ];
        let mut out = run(&self.decoder, &inputs)?;
        for (name, cache) in [("key_cache_updates", &mut self.key_cache), ("value_cache_updates", &mut self.value_cache)] {
            let update = output(&self.decoder, &mut out, name)?;
            let values = update.floats().unwrap_or_default();
            if values.len() * positions != cache.len() {
                return Err(Error::file(&self.decoder.0, format!("output `{name}` has shape {:?}, not (layers, d, 1, 1)", update.shape)));
            }
            for (row, &v) in values.iter().enumerate() {
                cache[row * positions + position] = v;
            }
        }
        Ok(output(&self.decoder, &mut out, "logits")?.to_f32_vec().unwrap_or_default())
    }
}
