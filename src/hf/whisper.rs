//! Whisper (`model_type` "whisper", `WhisperForConditionalGeneration`) → three packages in the
//! ANE layout, the set an app chains to transcribe 30 s of 16 kHz audio:
//!
//! - `MelSpectrogram`: `audio` (480000,) → `melspectrogram_features` (1, n_mels, 1, 3000), the
//!   log-mel features of transformers' `WhisperFeatureExtractor` (STFT as a strided 1-D `conv`
//!   over a windowed DFT basis, power, slaney mel filterbank, log10, clamp to max − 8, (x + 4)/4).
//! - `AudioEncoder`: features → `encoder_output_embeds` (1, d_model, 1, 1500) plus every decoder
//!   layer's cross-attention keys/values (`cross_key_cache`, `cross_value_cache`, (L, d_model, 1,
//!   1500)), computed once per window instead of once per decoding step.
//! - `TextDecoder`: one greedy step with the self-attention KV cache `key_cache`, `value_cache`
//!   (L, d_model, 1, 448), column t = position t. Before iOS18 the cache is plain I/O:
//!   (`input_ids`, `cache_length`, `key_cache`, `value_cache`, the cross caches) → `logits`
//!   (1, vocab) and this step's `key_cache_updates`/`value_cache_updates` (L, d_model, 1, 1),
//!   which the caller writes into column `cache_length`. From iOS18 the cache is two fp16 Core ML
//!   states that the step updates itself (`read_state`, `slice_update` at column
//!   `cache_length`, `write_state`): inputs `input_ids`, `cache_length` and the cross caches,
//!   output `logits` only (see [`text_decoder`]).
//!
//! Mirrors transformers' `modeling_whisper.py` (`WhisperEncoderLayer`, `WhisperDecoderLayer`:
//! pre-LN layers, q scaled by head_dim^-0.5, k projections without bias, exact GELU, tied output
//! projection), built from the shared layer kit `hf::nn`, and `audio_utils.py`
//! (`mel_filter_bank`, `window_function`, `spectrogram`), transformers 5.23. Listed in
//! `hf::FAMILIES`; called by `hf::build` for `convert WHISPER_DIR -o OUT_DIR`.

use std::f64::consts::PI;
use std::path::Path;

use super::nn::{float_values, Activation, Net, BATCH, R, STATE_DTYPE};
use super::{Built, Family, Folder, HfError, Options, Output, Scope, MAX_DIM, MAX_HEADS, MAX_LAYERS, MAX_ROWS};
use crate::files::shown;
use crate::mil::builder::Var;
use crate::mil::ops::{elementwise as ew, reduce, shape, state};
use crate::mil::{DType, Function, Model, Opset, Program, Tensor, TensorType};

/// `config.json` `model_type` values this family builds.
pub const MODEL_TYPES: &[&str] = &["whisper"];

/// The family entry for `hf::FAMILIES`.
pub const FAMILY: Family = Family { name: "whisper", model_types: MODEL_TYPES, build };

/// Package names (file stems) the set is written under.
pub const MEL_PACKAGE: &str = "MelSpectrogram";
/// See [`MEL_PACKAGE`].
pub const ENCODER_PACKAGE: &str = "AudioEncoder";
/// See [`MEL_PACKAGE`].
pub const DECODER_PACKAGE: &str = "TextDecoder";

/// Feature names shared by the three packages (the interface transcription code relies on).
pub const AUDIO: &str = "audio";
/// MelSpectrogram output, AudioEncoder input.
pub const MEL_FEATURES: &str = "melspectrogram_features";
/// AudioEncoder output: the final encoder layer_norm.
pub const ENCODER_OUTPUT: &str = "encoder_output_embeds";
/// AudioEncoder outputs, TextDecoder inputs: per decoder layer, cross-attention k and v.
pub const CROSS_KEY_CACHE: &str = "cross_key_cache";
/// See [`CROSS_KEY_CACHE`].
pub const CROSS_VALUE_CACHE: &str = "cross_value_cache";
/// TextDecoder input: this step's token id.
pub const INPUT_IDS: &str = "input_ids";
/// TextDecoder input: tokens already in the cache, = this token's position.
pub const CACHE_LENGTH: &str = "cache_length";
/// TextDecoder inputs (states from iOS18): self-attention keys/values of earlier positions,
/// column t = position t.
pub const KEY_CACHE: &str = "key_cache";
/// See [`KEY_CACHE`].
pub const VALUE_CACHE: &str = "value_cache";
/// TextDecoder output: next-token logits.
pub const LOGITS: &str = "logits";
/// TextDecoder outputs before iOS18: this step's keys/values, to be written into column
/// `cache_length`.
pub const KEY_CACHE_UPDATES: &str = "key_cache_updates";
/// See [`KEY_CACHE_UPDATES`].
pub const VALUE_CACHE_UPDATES: &str = "value_cache_updates";

/// Files copied beside the packages when the folder has them (tokenizer and configs).
pub const SIDE_FILES: &[&str] =
    &["tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json", "preprocessor_config.json"];

/// The feature extractor's own config file, checked against the constants below when present.
const PREPROCESSOR_FILE: &str = "preprocessor_config.json";
/// Whisper audio is 16 kHz mono (`WhisperFeatureExtractor.sampling_rate`).
pub const SAMPLING_RATE: usize = 16_000;
/// STFT frame length and FFT size (`n_fft`): 25 ms at 16 kHz.
pub const N_FFT: usize = 400;
/// STFT hop (`hop_length`): 10 ms at 16 kHz, so one feature frame per 160 samples.
pub const HOP_LENGTH: usize = 160;
/// Kernel width of the encoder's two stem convolutions.
const CONV_KERNEL: usize = 3;
/// Frames per encoder position: conv2 has stride 2 (3000 frames → 1500 positions).
const FRAMES_PER_POSITION: usize = 2;
/// Lowest mel filter edge in Hz (`mel_filter_bank(min_frequency=0.0)`).
const MEL_MIN_HZ: f64 = 0.0;
/// Highest mel filter edge in Hz (`mel_filter_bank(max_frequency=8000.0)`, the Nyquist rate).
const MEL_MAX_HZ: f64 = 8000.0;
/// Power floor before log10 (`spectrogram(mel_floor=1e-10)`); below fp16's range, one reason the
/// MelSpectrogram package computes in fp32.
const MEL_FLOOR: f32 = 1e-10;
/// Log-mel values are clamped to (max − 8) (`np.maximum(log_spec, log_spec.max() - 8.0)`).
const LOG_MEL_RANGE: f32 = 8.0;
/// Final scaling `(x + 4) / 4` of the feature extractor, as x · 0.25 + 1.
const LOG_MEL_SCALE: f32 = 0.25;
/// See [`LOG_MEL_SCALE`]: 4 / 4.
const LOG_MEL_SHIFT: f32 = 1.0;
/// `nn.LayerNorm` default epsilon, used by every Whisper layer norm.
const LAYER_NORM_EPS: f32 = 1e-5;
/// First op set whose TextDecoder keeps its KV cache in Core ML states (states, `read_state`,
/// `write_state` and `slice_update` are iOS18 MIL).
const STATES_SINCE: Opset = Opset::Ios18;
/// Most mel bins a config may declare (`num_mel_bins`; Whisper uses 80 or 128): the bound keeps
/// the filterbank (201 × bins values) small before any weight is checked.
pub const MAX_MEL_BINS: usize = 1024;
/// Most encoder or decoder positions (`max_source_positions` 1500, `max_target_positions` 448):
/// the audio input has positions × 320 samples, which must stay inside MIL's i32 shapes.
pub const MAX_POSITIONS: usize = 1 << 16;

/// The hyper-parameters read from `config.json`.
struct Config {
    d_model: usize,
    encoder_layers: usize,
    decoder_layers: usize,
    encoder_heads: usize,
    decoder_heads: usize,
    encoder_ffn: usize,
    decoder_ffn: usize,
    n_mels: usize,
    vocab: usize,
    /// Encoder positions (1500 for 30 s).
    source_positions: usize,
    /// Decoder positions = KV cache columns (448).
    target_positions: usize,
}

impl Config {
    /// Reads and bounds the sizes; a missing, out-of-range or inconsistent one is a
    /// [`HfError::Config`] naming the key.
    fn read(f: &Folder) -> Result<Config, HfError> {
        let c = Config {
            d_model: f.usize("d_model", MAX_DIM)?,
            encoder_layers: f.usize("encoder_layers", MAX_LAYERS)?,
            decoder_layers: f.usize("decoder_layers", MAX_LAYERS)?,
            encoder_heads: f.usize("encoder_attention_heads", MAX_HEADS)?,
            decoder_heads: f.usize("decoder_attention_heads", MAX_HEADS)?,
            encoder_ffn: f.usize("encoder_ffn_dim", MAX_DIM)?,
            decoder_ffn: f.usize("decoder_ffn_dim", MAX_DIM)?,
            n_mels: f.usize("num_mel_bins", MAX_MEL_BINS)?,
            vocab: f.usize("vocab_size", MAX_ROWS)?,
            source_positions: f.usize("max_source_positions", MAX_POSITIONS)?,
            target_positions: f.usize("max_target_positions", MAX_POSITIONS)?,
        };
        let positive = [
            ("d_model", c.d_model),
            ("decoder_layers", c.decoder_layers),
            ("encoder_attention_heads", c.encoder_heads),
            ("decoder_attention_heads", c.decoder_heads),
            ("num_mel_bins", c.n_mels),
            ("vocab_size", c.vocab),
            ("max_source_positions", c.source_positions),
            ("max_target_positions", c.target_positions),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(f.config_error(format!("`{key}` is 0; it must be positive")));
        }
        for (key, heads) in [("encoder_attention_heads", c.encoder_heads), ("decoder_attention_heads", c.decoder_heads)] {
            if heads == 0 || c.d_model % heads != 0 {
                return Err(f.config_error(format!("`d_model` {} is not a multiple of `{key}` {heads}", c.d_model)));
            }
        }
        if let Some(act) = f.str("activation_function") {
            if act != "gelu" {
                return Err(f.config_error(format!("activation_function `{}` is not supported (Whisper uses `gelu`)", shown(act))));
            }
        }
        Ok(c)
    }

    /// Mel frames of one window (3000).
    fn frames(&self) -> usize {
        self.source_positions * FRAMES_PER_POSITION
    }

    /// Audio samples of one window (480000).
    fn samples(&self) -> usize {
        self.frames() * HOP_LENGTH
    }
}

/// Builds the three packages of a Whisper folder. Listed in `hf::FAMILIES`.
pub fn build(folder: &Folder, options: &Options) -> Result<Output, HfError> {
    let c = Config::read(folder)?;
    check_preprocessor(folder, &c)?;
    let model = folder.weights.at("model");
    // Layer counts against the weights before anything is built per layer (the decoder splits
    // its caches into layers × heads parts up front).
    folder.check_layer_count("encoder_layers", c.encoder_layers, &model.at("encoder").at("layers"), "fc1.weight")?;
    folder.check_layer_count("decoder_layers", c.decoder_layers, &model.at("decoder").at("layers"), "fc1.weight")?;
    let mel = mel_spectrogram(&c, options.opset)?;
    let encoder = audio_encoder(&c, &model, options)?;
    let decoder = text_decoder(&c, folder, &model, options)?;
    let unused = folder.weights.unused();
    if !unused.is_empty() {
        return Err(HfError::ExtraTensors { dir: folder.dir.clone(), names: unused });
    }
    let side_files = super::side_files(&folder.dir, SIDE_FILES)?;
    Ok(Output {
        packages: vec![
            package(MEL_PACKAGE, mel, "Whisper log-mel features of 30 s of 16 kHz mono audio"),
            package(ENCODER_PACKAGE, encoder, "Whisper audio encoder and per-layer cross-attention keys/values"),
            package(DECODER_PACKAGE, decoder, "Whisper text decoder: one greedy step with a KV cache"),
        ],
        side_files,
    })
}

fn package(name: &str, main: Function, description: &str) -> Built {
    let mut model = Model::new(Program::with_main(main));
    model.metadata.short_description = description.to_string();
    Built { name: name.to_string(), model }
}

/// Refuses a `preprocessor_config.json` whose STFT settings differ from the ones built in.
fn check_preprocessor(folder: &Folder, c: &Config) -> Result<(), HfError> {
    let path = folder.dir.join(PREPROCESSOR_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(());
    }
    let json = super::read_json(&crate::files::inside(&folder.dir, Path::new(PREPROCESSOR_FILE))?)?;
    for (key, want) in [("n_fft", N_FFT), ("hop_length", HOP_LENGTH), ("sampling_rate", SAMPLING_RATE), ("feature_size", c.n_mels)] {
        if let Some(got) = json.get(key).and_then(|v| v.as_u64()) {
            if got != want as u64 {
                return Err(HfError::file(&path, format!("`{key}` is {got}; this Whisper conversion supports {want}")));
            }
        }
    }
    Ok(())
}

/// `WhisperAttention`'s q/k/v projections after a layer's pre-norm (`self_attn_layer_norm`,
/// `self_attn.{q,k,v}_proj` of layer `m`; k has no bias, q is pre-scaled by `scale`). Shared by
/// [`encoder_layer`] and [`decoder_layer`].
fn self_attn_qkv(net: &mut Net, p: &str, h: &Var, m: &Scope, d: usize, scale: f32) -> R<(Var, Var, Var)> {
    let a = m.at("self_attn");
    let n = net.layer_norm(&format!("{p}_attn_ln"), h, &m.at("self_attn_layer_norm"), d, LAYER_NORM_EPS)?;
    let q = net.linear(&format!("{p}_q"), &n, &a.at("q_proj"), [d, d], true, scale)?;
    let k = net.linear(&format!("{p}_k"), &n, &a.at("k_proj"), [d, d], false, 1.0)?;
    let v = net.linear(&format!("{p}_v"), &n, &a.at("v_proj"), [d, d], true, 1.0)?;
    Ok((q, k, v))
}

/// The feed-forward block of a layer `m`: `fc2(gelu(fc1(x)))`.
fn mlp(net: &mut Net, hint: &str, x: &Var, m: &Scope, c: usize, ffn: usize) -> R<Var> {
    let h = net.linear(&format!("{hint}_fc1"), x, &m.at("fc1"), [ffn, c], true, 1.0)?;
    let h = net.activation(&format!("{hint}_gelu"), &h, Activation::GeluExact)?;
    net.linear(&format!("{hint}_fc2"), &h, &m.at("fc2"), [c, ffn], true, 1.0)
}

/// The query scaling of Whisper attention, head_dim^-0.5 (exact in fp16 for head_dim 64).
fn query_scale(d_model: usize, heads: usize) -> f32 {
    ((d_model / heads) as f32).powf(-0.5)
}



/// `MelSpectrogram`: always fp32 compute and I/O. The power spectrum of a frame reaches ~10⁵
/// (above fp16's 65504) and the 1e-10 floor is below fp16's smallest value, so fp16 would change
/// the features far beyond the extractor's tolerance.
fn mel_spectrogram(c: &Config, opset: Opset) -> R<Function> {
    let mut net = Net::new(opset, DType::F32);
    let samples = c.samples();
    let frames = c.frames();
    let bins = N_FFT / 2 + 1;
    let audio = net.input(AUDIO, DType::F32, &[samples])?;
    let x = net.reshape("audio_bc1s", &audio, &[BATCH, 1, 1, samples])?;
    // center=True reflect-pads n_fft/2 on both sides; the extractor then drops the last frame,
    // so the right pad only needs n_fft/2 − hop samples (the last kept frame ends there).
    let (left, right) = (N_FFT / 2, N_FFT / 2 - HOP_LENGTH);
    let x = net
        .b
        .op(&shape::PAD, "audio_padded")
        .arg("x", &x)
        .konst("pad", Tensor::i32_vec(&[left as i32, right as i32]))
        .konst("mode", Tensor::string("reflect"))
        .build1()?;
    let basis = net.weight("stft_basis", Tensor::from_f32(&[2 * bins, 1, 1, N_FFT], &stft_basis()), "stft_basis")?;
    let spec = net.conv("stft", &x, &basis, None, HOP_LENGTH, 0)?;
    let power = net.b.op(&ew::SQUARE, "power").arg("x", &spec).build1()?;
    // mel = F·re² + F·im² = [F F]·[re²; im²]: one 1×1 conv over the stacked real/imaginary power.
    let filters = mel_filter_bank(c.n_mels);
    let mut w = vec![0f32; c.n_mels * 2 * bins];
    for m in 0..c.n_mels {
        for k in 0..bins {
            let f = filters[k * c.n_mels + m] as f32;
            w[m * 2 * bins + k] = f;
            w[m * 2 * bins + bins + k] = f;
        }
    }
    let mel_w = net.weight("mel_filters", Tensor::from_f32(&[c.n_mels, 2 * bins, 1, 1], &w), "mel_filters")?;
    let mel = net.conv("mel", &power, &mel_w, None, 1, 0)?;
    let mel = net.with_scalar(&ew::MAXIMUM, "mel_floored", &mel, MEL_FLOOR)?;
    let ln = net.b.op(&ew::LOG, "mel_ln").arg("x", &mel).build1()?;
    let log10 = net.with_scalar(&ew::MUL, "log_mel", &ln, std::f32::consts::LOG10_E)?;
    let max = net
        .b
        .op(&reduce::REDUCE_MAX, "log_mel_max")
        .arg("x", &log10)
        .konst("axes", Tensor::i32_vec(&[0, 1, 2, 3]))
        .konst("keep_dims", Tensor::bool_scalar(true))
        .build1()?;
    let low = net.with_scalar(&ew::SUB, "log_mel_low", &max, LOG_MEL_RANGE)?;
    let clamped = net.binary(&ew::MAXIMUM, "log_mel_clamped", &log10, &low)?;
    let scaled = net.with_scalar(&ew::MUL, "log_mel_scaled", &clamped, LOG_MEL_SCALE)?;
    let out = net.with_scalar(&ew::ADD, "features", &scaled, LOG_MEL_SHIFT)?;
    debug_assert_eq!(net.b.ty(&out).and_then(|t| t.fixed_shape()), Some(vec![BATCH, c.n_mels, 1, frames]));
    net.finish(&[(MEL_FEATURES, out)])
}

/// The windowed DFT basis as conv weights (2·(n_fft/2+1), 1, 1, n_fft): rows k are
/// w[n]·cos(2πkn/N), rows bins + k are −w[n]·sin(2πkn/N), with the periodic Hann window
/// w[n] = 0.5 − 0.5·cos(2πn/N) (`window_function(400, "hann")`).
pub fn stft_basis() -> Vec<f32> {
    let bins = N_FFT / 2 + 1;
    let mut out = vec![0f32; 2 * bins * N_FFT];
    for k in 0..bins {
        for n in 0..N_FFT {
            let window = 0.5 - 0.5 * (2.0 * PI * n as f64 / N_FFT as f64).cos();
            // (k·n mod N) keeps the angle small, so cos/sin stay exact to f64 rounding.
            let angle = 2.0 * PI * ((k * n) % N_FFT) as f64 / N_FFT as f64;
            out[k * N_FFT + n] = (window * angle.cos()) as f32;
            out[(bins + k) * N_FFT + n] = (-window * angle.sin()) as f32;
        }
    }
    out
}

/// Slaney mel scale (`hertz_to_mel(mel_scale="slaney")`): linear below 1 kHz, log above.
fn hertz_to_mel(hz: f64) -> f64 {
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = 15.0;
    let logstep = 27.0 / 6.4f64.ln();
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() * logstep
    } else {
        3.0 * hz / 200.0
    }
}

/// Inverse of [`hertz_to_mel`] (`mel_to_hertz(mel_scale="slaney")`).
fn mel_to_hertz(mel: f64) -> f64 {
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = 15.0;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (logstep * (mel - MIN_LOG_MEL)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// transformers' `mel_filter_bank(1 + n_fft // 2, n_mels, 0, 8000, 16000, norm="slaney",
/// mel_scale="slaney")` in f64, row-major (n_fft/2 + 1, n_mels).
pub fn mel_filter_bank(n_mels: usize) -> Vec<f64> {
    let bins = N_FFT / 2 + 1;
    let (lo, hi) = (hertz_to_mel(MEL_MIN_HZ), hertz_to_mel(MEL_MAX_HZ));
    // np.linspace(mel_min, mel_max, n_mels + 2) then back to Hz.
    let steps = (n_mels + 1) as f64;
    let filter_hz: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hertz(lo + (hi - lo) * i as f64 / steps)).collect();
    // np.linspace(0, sampling_rate // 2, bins).
    let nyquist = (SAMPLING_RATE / 2) as f64;
    let fft_hz: Vec<f64> = (0..bins).map(|k| nyquist * k as f64 / (bins - 1) as f64).collect();
    let mut out = vec![0f64; bins * n_mels];
    for (k, f) in fft_hz.iter().enumerate() {
        for m in 0..n_mels {
            let down = -(filter_hz[m] - f) / (filter_hz[m + 1] - filter_hz[m]);
            let up = (filter_hz[m + 2] - f) / (filter_hz[m + 2] - filter_hz[m + 1]);
            let enorm = 2.0 / (filter_hz[m + 2] - filter_hz[m]);
            out[k * n_mels + m] = down.min(up).max(0.0) * enorm;
        }
    }
    out
}

/// `AudioEncoder`: conv1 (k3, gelu), conv2 (k3, stride 2, gelu), + positions, pre-LN layers,
/// final layer_norm; then each decoder layer's cross-attention k/v of the result.
fn audio_encoder(c: &Config, model: &Scope, options: &Options) -> R<Function> {
    let mut net = Net::new(options.opset, options.precision);
    let enc = model.at("encoder");
    let (d, s) = (c.d_model, c.source_positions);
    let x = net.input(MEL_FEATURES, DType::F32, &[BATCH, c.n_mels, 1, c.frames()])?;
    let mut x = x;
    for (name, c_in, stride) in [("conv1", c.n_mels, 1), ("conv2", d, FRAMES_PER_POSITION)] {
        let m = enc.at(name);
        let w = net.param(&format!("{name}_weight"), &m, "weight", &[d, c_in, CONV_KERNEL], &[d, c_in, 1, CONV_KERNEL])?;
        let b = net.param(&format!("{name}_bias"), &m, "bias", &[d], &[d])?;
        let y = net.conv(name, &x, &w, Some(&b), stride, 1)?;
        x = net.activation(&format!("{name}_gelu"), &y, Activation::GeluExact)?;
    }
    // embed_positions is (S, C); the (1, C, 1, S) layout needs its transpose, made once here.
    let name = enc.path("embed_positions.weight");
    let pos = float_values(&enc.at("embed_positions").get("weight", &[s, d])?, &name)?;
    let mut t = vec![0f32; s * d];
    for (i, row) in pos.chunks_exact(d).enumerate() {
        for (j, v) in row.iter().enumerate() {
            t[j * s + i] = *v;
        }
    }
    let pos = net.weight("embed_positions", Tensor::from_f32(&[BATCH, d, 1, s], &t), &name)?;
    let mut h = net.binary(&ew::ADD, "embedded", &x, &pos)?;
    for l in 0..c.encoder_layers {
        h = encoder_layer(&mut net, &format!("layer{l}"), &h, &enc.at("layers").at(&l.to_string()), c)?;
    }
    let out = net.layer_norm("encoder_ln", &h, &enc.at("layer_norm"), d, LAYER_NORM_EPS)?;
    let dec = model.at("decoder");
    let (mut ks, mut vs) = (Vec::new(), Vec::new());
    for l in 0..c.decoder_layers {
        let a = dec.at("layers").at(&l.to_string()).at("encoder_attn");
        ks.push(net.linear(&format!("cross{l}_k"), &out, &a.at("k_proj"), [d, d], false, 1.0)?);
        vs.push(net.linear(&format!("cross{l}_v"), &out, &a.at("v_proj"), [d, d], true, 1.0)?);
    }
    let ks = net.concat("cross_keys", &ks, 0)?;
    let vs = net.concat("cross_values", &vs, 0)?;
    net.finish(&[(ENCODER_OUTPUT, out), (CROSS_KEY_CACHE, ks), (CROSS_VALUE_CACHE, vs)])
}

/// `WhisperEncoderLayer` `m` (pre-LN): `h + self_attn(self_attn_layer_norm(h))`, then
/// `+ mlp(final_layer_norm(·))`, on (1, d_model, 1, S).
fn encoder_layer(net: &mut Net, p: &str, h: &Var, m: &Scope, c: &Config) -> R<Var> {
    let (d, heads) = (c.d_model, c.encoder_heads);
    let a = m.at("self_attn");
    let (q, k, v) = self_attn_qkv(net, p, h, m, d, query_scale(d, heads))?;
    let ks = net.split_heads(&format!("{p}_k"), &k, heads)?;
    let vs = net.split_heads(&format!("{p}_v"), &v, heads)?;
    let o = net.attention(&format!("{p}_attn"), &q, &ks, &vs, None)?;
    let o = net.linear(&format!("{p}_o"), &o, &a.at("out_proj"), [d, d], true, 1.0)?;
    let h = net.binary(&ew::ADD, &format!("{p}_attn_res"), h, &o)?;
    let n = net.layer_norm(&format!("{p}_mlp_ln"), &h, &m.at("final_layer_norm"), d, LAYER_NORM_EPS)?;
    let o = mlp(net, &format!("{p}_mlp"), &n, m, d, c.encoder_ffn)?;
    net.binary(&ew::ADD, &format!("{p}_mlp_res"), &h, &o)
}

/// `TextDecoder`: one token through the decoder with the self-attention cache. The token and
/// its position come from `gather` on the (N, C, 1, 1) views of the embedding tables, which
/// give the (1, C, 1, 1) layout directly; the token table is also the logits' 1×1 conv weight
/// (tied), stored once.
///
/// Before iOS18 ([`STATES_SINCE`]) the cache is read from inputs and each layer attends over
/// the cached columns `< cache_length` plus this token's k/v, which go out as
/// `key_cache_updates`/`value_cache_updates`. From iOS18 `key_cache`/`value_cache` are fp16
/// states: each layer writes its k/v into column `cache_length` of its row block with
/// `slice_update`, stores the result with `write_state` and reads it back with `read_state`
/// (the on-disk form of coremltools' `coreml_update_state`, what it emits for an in-place
/// `cache[l, :, :, pos] = k` on a registered buffer), then attends over columns
/// `<= cache_length` of the updated cache. The caller keeps one `MLState` per transcription
/// window, starting at zeros (`MLModel.makeState()`).
///
/// The cross-attention keys/values stay inputs at every target. They are computed once per
/// window by another model (the AudioEncoder) and only read here, whereas a Core ML state is a
/// buffer the model itself updates across predictions (coremltools "Stateful Models": values
/// kept by "persisting and updating them across inference runs"). As states they would have
/// to be filled by host code through `MLState.withMultiArray(for:)` on every window, the
/// encoder→decoder interface would differ by target, and a step would no longer be a function
/// of its inputs. WhisperKit's decoders and Apple's stateful Mistral example likewise keep only
/// the self-attention cache as updated state.
fn text_decoder(c: &Config, folder: &Folder, model: &Scope, options: &Options) -> R<Function> {
    let mut net = Net::new(options.opset, options.precision);
    let stateful = options.opset >= STATES_SINCE;
    let dec = model.at("decoder");
    let (d, t, s, layers) = (c.d_model, c.target_positions, c.source_positions, c.decoder_layers);
    let ids = net.input(INPUT_IDS, DType::I32, &[BATCH])?;
    let cache_length = net.input(CACHE_LENGTH, DType::I32, &[BATCH])?;
    let cache_shape = [layers, d, 1, t];
    let cache = if stateful {
        let ty = TensorType::new(STATE_DTYPE, &cache_shape);
        let key = net.b.state_input(KEY_CACHE, ty.clone());
        let value = net.b.state_input(VALUE_CACHE, ty);
        let zeros = net.b.konst("column_begin_prefix", Tensor::i32_vec(&[0, 0, 0]));
        let column_begin = net.concat("column_begin", &[zeros, cache_length.clone()], 0)?;
        let key_now = net.b.op(&state::READ_STATE, "key_cache_read").arg("input", &key).build1()?;
        let value_now = net.b.op(&state::READ_STATE, "value_cache_read").arg("input", &value).build1()?;
        Cache::States { key, value, column_begin, key_now, value_now }
    } else {
        let key = net.input(KEY_CACHE, DType::F32, &cache_shape)?;
        let value = net.input(VALUE_CACHE, DType::F32, &cache_shape)?;
        let heads = c.decoder_heads;
        Cache::Inputs {
            key_heads: net.cache_heads("key_cache", &key, layers, d, t, heads)?,
            value_heads: net.cache_heads("value_cache", &value, layers, d, t, heads)?,
        }
    };
    let cross_keys = net.input(CROSS_KEY_CACHE, DType::F32, &[layers, d, 1, s])?;
    let cross_values = net.input(CROSS_VALUE_CACHE, DType::F32, &[layers, d, 1, s])?;

    let tokens = net.param("embed_tokens", &dec.at("embed_tokens"), "weight", &[c.vocab, d], &[c.vocab, d, 1, 1])?;
    let positions = net.param("embed_positions", &dec.at("embed_positions"), "weight", &[t, d], &[t, d, 1, 1])?;
    let tok = net.embedding("token_embedding", &tokens, &ids)?;
    let pos = net.embedding("position_embedding", &positions, &cache_length)?;
    let mut h = net.binary(&ew::ADD, "embedded", &tok, &pos)?;

    // Cache inputs: keep[0, 0, j] = j < cache_length for the cache columns, then true for the
    // current token. States: the current token is column cache_length, so j <= cache_length.
    let columns = Tensor::from_i32(&[BATCH, 1, t], &(0..t as i32).collect::<Vec<_>>());
    let keep = match &cache {
        Cache::Inputs { .. } => {
            let in_cache = net.b.op(&ew::LESS, "cache_columns_valid").konst("x", columns).arg("y", &cache_length).build1()?;
            let current = net.b.konst("current_column", Tensor::from_bools(&[BATCH, 1, 1], &[true]));
            net.concat("attend", &[in_cache, current], 2)?
        }
        Cache::States { .. } => net.b.op(&ew::LESS_EQUAL, "attend").konst("x", columns).arg("y", &cache_length).build1()?,
    };
    let cross_key_heads = net.cache_heads("cross_keys", &cross_keys, layers, d, s, c.decoder_heads)?;
    let cross_value_heads = net.cache_heads("cross_values", &cross_values, layers, d, s, c.decoder_heads)?;
    let mut step = Step { keep, cross_key_heads, cross_value_heads, cache, new_keys: Vec::new(), new_values: Vec::new() };
    for l in 0..layers {
        h = decoder_layer(&mut net, l, &h, &dec.at("layers").at(&l.to_string()), c, &mut step)?;
    }
    let h = net.layer_norm("decoder_ln", &h, &dec.at("layer_norm"), d, LAYER_NORM_EPS)?;
    // proj_out is tied to embed_tokens; a folder that stores it anyway uses its own copy.
    let root = folder.weights.at("");
    let proj = if root.at("proj_out").contains("weight") {
        net.param("proj_out", &root.at("proj_out"), "weight", &[c.vocab, d], &[c.vocab, d, 1, 1])?
    } else {
        tokens
    };
    let logits = net.conv("logits_bc1s", &h, &proj, None, 1, 0)?;
    let logits = net.reshape("logits_flat", &logits, &[BATCH, c.vocab])?;
    if stateful {
        return net.finish(&[(LOGITS, logits)]);
    }
    let new_keys = net.concat("new_keys", &step.new_keys, 0)?;
    let new_values = net.concat("new_values", &step.new_values, 0)?;
    net.finish(&[(LOGITS, logits), (KEY_CACHE_UPDATES, new_keys), (VALUE_CACHE_UPDATES, new_values)])
}

/// What every `WhisperDecoderLayer` of one [`text_decoder`] step shares.
struct Step {
    /// Self-attention mask over the cache columns (true = attend).
    keep: Var,
    /// Cross-attention keys/values split per layer and head (entry l·H + h, (1, d, S)).
    cross_key_heads: Vec<Var>,
    cross_value_heads: Vec<Var>,
    /// The self-attention cache.
    cache: Cache,
    /// Before iOS18: each layer's keys/values of this token, for `key_cache_updates`.
    new_keys: Vec<Var>,
    new_values: Vec<Var>,
}

/// `WhisperDecoderLayer` `l` (module `m`, pre-LN) on this token h (1, d_model, 1, 1): cached
/// self-attention, cross-attention over the encoder output's keys/values, feed-forward, each
/// added back to h.
fn decoder_layer(net: &mut Net, l: usize, h: &Var, m: &Scope, c: &Config, step: &mut Step) -> R<Var> {
    let (d, t, heads) = (c.d_model, c.target_positions, c.decoder_heads);
    let scale = query_scale(d, heads);
    let p = format!("layer{l}");
    let a = m.at("self_attn");
    let (q, k, v) = self_attn_qkv(net, &p, h, m, d, scale)?;
    let (ks, vs) = match &mut step.cache {
        Cache::Inputs { key_heads, value_heads } => {
            // Per head: the cached columns, then this token's column (the mask's last column).
            let with_current = |net: &mut Net, name: &str, cache: &[Var], x: &Var| -> R<Vec<Var>> {
                let current = net.split_heads(&format!("{p}_{name}_new"), x, heads)?;
                let mut out = Vec::with_capacity(heads);
                for (h, x) in current.iter().enumerate() {
                    let Some(cached) = cache.get(l * heads + h) else {
                        return Err(crate::mil::ops::TypeError::Invalid { op: p.clone(), message: format!("no cache head {h} of layer {l}") }.into());
                    };
                    out.push(net.concat(&format!("{p}_{name}{h}"), &[cached.clone(), x.clone()], 2)?);
                }
                Ok(out)
            };
            let ks = with_current(net, "keys", key_heads, &k)?;
            let vs = with_current(net, "values", value_heads, &v)?;
            step.new_keys.push(k);
            step.new_values.push(v);
            (ks, vs)
        }
        Cache::States { key, value, column_begin, key_now, value_now } => {
            let at = net.cache_column(&p, l, d, t, column_begin)?;
            *key_now = net.write_column(&format!("{p}_key_cache"), key, key_now, &k, &at)?;
            *value_now = net.write_column(&format!("{p}_value_cache"), value, value_now, &v, &at)?;
            let ks = net.layer_heads(&format!("{p}_keys"), key_now, &at, heads)?;
            let vs = net.layer_heads(&format!("{p}_values"), value_now, &at, heads)?;
            (ks, vs)
        }
    };
    let o = net.attention(&format!("{p}_self"), &q, &ks, &vs, Some(&step.keep))?;
    let o = net.linear(&format!("{p}_self_o"), &o, &a.at("out_proj"), [d, d], true, 1.0)?;
    let h = net.binary(&ew::ADD, &format!("{p}_self_res"), h, &o)?;

    let a = m.at("encoder_attn");
    let n = net.layer_norm(&format!("{p}_cross_ln"), &h, &m.at("encoder_attn_layer_norm"), d, LAYER_NORM_EPS)?;
    let q = net.linear(&format!("{p}_cross_q"), &n, &a.at("q_proj"), [d, d], true, scale)?;
    // The encoder package computed these from the same weights; mark them used here too so
    // the decoder's own tensors are all accounted for (shape-checked, not read again).
    a.at("k_proj").get("weight", &[d, d])?;
    a.at("v_proj").get("weight", &[d, d])?;
    a.at("v_proj").get("bias", &[d])?;
    let range = l * heads..(l + 1) * heads;
    let (Some(cross_ks), Some(cross_vs)) = (step.cross_key_heads.get(range.clone()), step.cross_value_heads.get(range)) else {
        return Err(crate::mil::ops::TypeError::Invalid { op: p, message: format!("no cross-attention heads of layer {l}") }.into());
    };
    let o = net.attention(&format!("{p}_cross"), &q, cross_ks, cross_vs, None)?;
    let o = net.linear(&format!("{p}_cross_o"), &o, &a.at("out_proj"), [d, d], true, 1.0)?;
    let h = net.binary(&ew::ADD, &format!("{p}_cross_res"), &h, &o)?;

    let n = net.layer_norm(&format!("{p}_mlp_ln"), &h, &m.at("final_layer_norm"), d, LAYER_NORM_EPS)?;
    let o = mlp(net, &format!("{p}_mlp"), &n, m, d, c.decoder_ffn)?;
    net.binary(&ew::ADD, &format!("{p}_mlp_res"), &h, &o)
}

/// How a TextDecoder holds its self-attention cache (see [`text_decoder`]).
enum Cache {
    /// Before iOS18: the cache inputs, already split per layer and head (entry l·H + h).
    Inputs { key_heads: Vec<Var>, value_heads: Vec<Var> },
    /// From iOS18: the two state inputs; `column_begin` = [0, 0, 0, cache_length] (the index of
    /// this token's column in layer 0); `key_now`/`value_now` the states' current values.
    States { key: Var, value: Var, column_begin: Var, key_now: Var, value_now: Var },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips_and_filters_are_area_normalized() {
        for hz in [0.0, 440.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hertz(hertz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
        let f = mel_filter_bank(80);
        // Each slaney filter is a triangle of height 2/(f[m+2] − f[m]) in Hz, so its area is 1;
        // sampled every 40 Hz, the column sums are ≈ 1/40.
        let bin_hz = (SAMPLING_RATE / 2) as f64 / (N_FFT / 2) as f64;
        for m in 0..80 {
            let sum: f64 = (0..N_FFT / 2 + 1).map(|k| f[k * 80 + m]).sum();
            assert!((sum * bin_hz - 1.0).abs() < 0.5, "filter {m}: area {}", sum * bin_hz);
        }
    }
}
