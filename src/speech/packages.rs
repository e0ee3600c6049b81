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
//!   A TextDecoder converted for iOS18+ declares `key_cache`/`value_cache` as states instead and
//!   returns only `logits`; here the states are kept between steps as Core ML's `MLState` would
//!   keep them (zeros at the start of each window). The form is read from the signature.
//!
//! Outputs are matched by name, else by position in the order listed above (as `validate`
//! matches arrays), so packages whose outputs kept generic names (a traced module converted by
//! `convert MODEL.pt` names them `output_0`, …) run too. Inputs must carry the names above.
//!
//! Called by `cli::validate_speech`; uses `package::read` and `interp::Prepared` (constants converted once per package).

use std::path::{Path, PathBuf};

use super::greedy::Backend;
use super::Error;
use crate::interp::{Array, Prepared};
use crate::mil::{DType, ValueType, MAIN_FUNCTION};
use crate::package;

/// Package of the log-mel front end.
pub const MEL_PACKAGE: &str = "MelSpectrogram.mlpackage";
/// Package of the audio encoder.
pub const ENCODER_PACKAGE: &str = "AudioEncoder.mlpackage";
/// Package of one decoder step.
pub const DECODER_PACKAGE: &str = "TextDecoder.mlpackage";

/// The three packages of one converted Whisper model, and the decoder's caches.
pub struct Packages {
    mel: (PathBuf, Prepared),
    encoder: (PathBuf, Prepared),
    decoder: (PathBuf, Prepared),
    /// Shape of `key_cache` / `value_cache`: (layers, d, 1, positions).
    cache_shape: Vec<usize>,
    /// Cache columns: the last axis of `cache_shape`, the decoder's position limit.
    positions: usize,
    cache: DecoderCache,
    /// The encoder has run: the decoder holds this window's cross-attention caches as fixed
    /// inputs (`interp::Prepared::fix_inputs`), so per-head slicing of them happens once.
    encoded: bool,
}

/// How the TextDecoder's self-attention cache lives between steps, as its signature says.
enum DecoderCache {
    /// `key_cache`/`value_cache` inputs (targets before iOS18): our copies, which the step's
    /// `*_cache_updates` outputs are written into, column t = position t.
    Inputs { key: Vec<f32>, value: Vec<f32> },
    /// `key_cache`/`value_cache` states (iOS18+): their values by name, updated by each step.
    States(Vec<(String, Array)>),
}

/// True when `dir` holds the three Whisper packages: how `validate` tells a Whisper output
/// folder from a single package.
pub fn is_whisper_dir(dir: &Path) -> bool {
    [MEL_PACKAGE, ENCODER_PACKAGE, DECODER_PACKAGE].iter().all(|p| dir.join(p).is_dir())
}

/// Runs a package on `inputs` (and `states`, updated in place; empty for stateless packages)
/// and returns its outputs in the order of `names` (matched by name, else by position when the
/// package names none of them).
fn run<const N: usize>(
    package: &(PathBuf, Prepared),
    inputs: &[(String, Array)],
    states: &mut [(String, Array)],
    names: [&str; N],
) -> Result<[Array; N], Error> {
    let outputs = package.1.run_stateful(inputs, states).map_err(|source| Error::Run { path: package.0.clone(), error: Box::new(source) })?;
    if outputs.len() != N {
        return Err(Error::file(&package.0, format!("the package has {} outputs, expected {N}: {}", outputs.len(), names.join(", "))));
    }
    let by_name = names.iter().all(|n| outputs.iter().any(|(o, _)| o == n));
    let mut found = Vec::with_capacity(N);
    for (i, name) in names.iter().enumerate() {
        let a = if by_name { outputs.iter().find(|(o, _)| o == name) } else { outputs.get(i) };
        let Some((_, a)) = a else { return Err(Error::file(&package.0, format!("the package has no output `{name}`"))) };
        if a.floats().is_none() {
            return Err(Error::file(&package.0, format!("output `{name}` is {}, not a float tensor", a.dtype)));
        }
        found.push(a.clone());
    }
    found.try_into().map_err(|_| Error::file(&package.0, "output count changed"))
}

impl Packages {
    /// Loads the three packages from `dir` (written by `convert WHISPER_DIR`).
    pub fn open(dir: &Path) -> Result<Packages, Error> {
        let load = |name: &str| -> Result<(PathBuf, crate::mil::Function), Error> {
            let path = dir.join(name);
            let mut model = package::read(&path).map_err(|source| Error::Package { path: path.clone(), error: Box::new(source) })?;
            let main = model.program.functions.remove(MAIN_FUNCTION).ok_or_else(|| Error::file(&path, "the package has no main function"))?;
            Ok((path, main))
        };
        // The decoder first: its cache inputs decide the rest, and a broken folder names it.
        let decoder = load(DECODER_PACKAGE)?;
        Packages::new(load(MEL_PACKAGE)?, load(ENCODER_PACKAGE)?, decoder)
    }

    /// The three packages' `main` functions (weights dense: compressed forms folded), each with
    /// the path errors name; used by [`Packages::open`] and by `convert --compress auto
    /// --max-wer`, which transcribes with packages before they are written.
    pub fn new(mel: (PathBuf, crate::mil::Function), encoder: (PathBuf, crate::mil::Function), decoder: (PathBuf, crate::mil::Function)) -> Result<Packages, Error> {
        let prepare = |(path, main): (PathBuf, crate::mil::Function)| -> Result<(PathBuf, Prepared), Error> {
            let prepared = Prepared::new(main).map_err(|source| Error::Run { path: path.clone(), error: Box::new(source) })?;
            Ok((path, prepared))
        };
        let decoder = prepare(decoder)?;
        let key_cache = decoder.1.function().inputs.iter().find(|i| i.name == "key_cache");
        let cache_shape = key_cache
            .and_then(|i| i.ty.tensor().fixed_shape())
            .filter(|s| s.len() == 4)
            .ok_or_else(|| Error::file(&decoder.0, "no `key_cache` input or state of fixed shape (layers, d, 1, positions)"))?;
        // `Prepared::new` held the declared input sizes to the interpreter's memory budget.
        let n = key_cache
            .and_then(|i| i.ty.tensor().num_elements())
            .ok_or_else(|| Error::file(&decoder.0, "`key_cache` has more elements than memory can address"))?;
        let positions = cache_shape.last().copied().unwrap_or(0);
        let cache = match key_cache.map(|i| &i.ty) {
            Some(ValueType::State(t)) => {
                let zeros = Array::float(t.dtype, cache_shape.clone(), vec![0.0; n]);
                DecoderCache::States(vec![("key_cache".to_string(), zeros.clone()), ("value_cache".to_string(), zeros)])
            }
            _ => DecoderCache::Inputs { key: vec![0.0; n], value: vec![0.0; n] },
        };
        Ok(Packages {
            mel: prepare(mel)?,
            encoder: prepare(encoder)?,
            decoder,
            cache_shape,
            positions,
            cache,
            encoded: false,
        })
    }
}

impl Backend for Packages {
    type Error = Error;

    fn features(&mut self, window: &[f32]) -> Result<Vec<f32>, Error> {
        let input = Array::float(DType::F32, vec![window.len()], window.to_vec());
        let [features] = run(&self.mel, &[("audio".to_string(), input)], &mut [], ["melspectrogram_features"])?;
        Ok(features.to_f32_vec().unwrap_or_default())
    }

    fn encode(&mut self, features: &[f32]) -> Result<Vec<f32>, Error> {
        let mels = features.len() / super::mel::N_FRAMES;
        let input = Array::float(DType::F32, vec![1, mels, 1, super::mel::N_FRAMES], features.to_vec());
        let names = ["encoder_output_embeds", "cross_key_cache", "cross_value_cache"];
        let [embeds, cross_key, cross_value] = run(&self.encoder, &[("melspectrogram_features".to_string(), input)], &mut [], names)?;
        let fixed = vec![("cross_key_cache".to_string(), cross_key), ("cross_value_cache".to_string(), cross_value)];
        self.decoder.1.fix_inputs(fixed).map_err(|source| Error::Run { path: self.decoder.0.clone(), error: Box::new(source) })?;
        self.encoded = true;
        Ok(embeds.to_f32_vec().unwrap_or_default())
    }

    fn logits(&mut self, token: u32, position: usize) -> Result<Vec<f32>, Error> {
        if !self.encoded {
            return Err(Error::file(&self.decoder.0, "decoder step before the encoder ran"));
        }
        let positions = self.positions;
        if position >= positions {
            return Err(Error::file(&self.decoder.0, format!("position {position} is past the decoder's {positions} cache columns")));
        }
        if position == 0 {
            match &mut self.cache {
                DecoderCache::Inputs { key, value } => {
                    key.fill(0.0);
                    value.fill(0.0);
                }
                DecoderCache::States(states) => states.iter_mut().for_each(|(_, a)| *a = Array::float(a.dtype, a.shape.clone(), vec![0.0; a.len()])),
            }
        }
        let mut inputs = vec![
            ("input_ids".to_string(), Array::int(vec![1], vec![token as i32])),
            ("cache_length".to_string(), Array::int(vec![1], vec![position as i32])),
        ];
        let (key, value) = match &mut self.cache {
            DecoderCache::States(states) => {
                let [logits] = run(&self.decoder, &inputs, states, ["logits"])?;
                return self.non_empty(logits);
            }
            DecoderCache::Inputs { key, value } => (key, value),
        };
        inputs.push(("key_cache".to_string(), Array::float(DType::F32, self.cache_shape.clone(), key.clone())));
        inputs.push(("value_cache".to_string(), Array::float(DType::F32, self.cache_shape.clone(), value.clone())));
        let names = ["logits", "key_cache_updates", "value_cache_updates"];
        let [logits, key_update, value_update] = run(&self.decoder, &inputs, &mut [], names)?;
        for (name, update, cache) in [(names[1], key_update, key), (names[2], value_update, value)] {
            let values = update.floats().unwrap_or_default();
            if values.len() * positions != cache.len() {
                return Err(Error::file(&self.decoder.0, format!("output `{name}` has shape {:?}, not (layers, d, 1, 1)", update.shape)));
            }
            for (row, &v) in values.iter().enumerate() {
                if let Some(slot) = cache.get_mut(row * positions + position) {
                    *slot = v;
                }
            }
        }
        self.non_empty(logits)
    }
}

impl Packages {
    /// The values of a `logits` output, which must hold at least one token's score (greedy
    /// decoding would otherwise pick token 0 from nothing).
    fn non_empty(&self, logits: Array) -> Result<Vec<f32>, Error> {
        match logits.to_f32_vec() {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Error::file(&self.decoder.0, format!("output `logits` has shape {:?}: no token scores", logits.shape))),
        }
    }
}
