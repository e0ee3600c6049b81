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
//! Mirrors transformers' `modeling_whisper.py` (pre-LN layers, q scaled by head_dim^-0.5, k
//! projections without bias, exact GELU, tied output projection) and `audio_utils.py`
//! (`mel_filter_bank`, `window_function`, `spectrogram`), transformers 5.23. Listed in
//! `hf::FAMILIES`; called by `hf::build` for `convert WHISPER_DIR -o OUT_DIR`.

use std::f64::consts::PI;
use std::path::Path;

use super::{Built, Folder, HfError, Options, Output, Scope};
use crate::mil::builder::{Builder, Var};
use crate::mil::ops::{elementwise as ew, linear, reduce, shape, state};
use crate::mil::{DType, Function, Model, Opset, Program, Tensor, TensorType};

/// `config.json` `model_type` values this family builds.
pub const MODEL_TYPES: &[&str] = &["whisper"];

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
/// Score given to masked cache columns before softmax: exp(−10⁴ − max) is 0 in fp16 and fp32,
/// and the value stays finite in fp16 (whose largest magnitude is 65504).
const MASKED_SCORE: f32 = -1e4;
/// Batch size of every package (one window, one sequence).
const BATCH: usize = 1;
/// First op set whose TextDecoder keeps its KV cache in Core ML states (states, `read_state`,
/// `write_state` and `slice_update` are iOS18 MIL).
const STATES_SINCE: Opset = Opset::Ios18;
/// The dtype of the cache states: coremltools accepts only fp16 states (coreml-format.md §7).
const STATE_DTYPE: DType = DType::F16;

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
    fn read(f: &Folder) -> Result<Config, HfError> {
        let c = Config {
            d_model: f.usize("d_model")?,
            encoder_layers: f.usize("encoder_layers")?,
            decoder_layers: f.usize("decoder_layers")?,
            encoder_heads: f.usize("encoder_attention_heads")?,
            decoder_heads: f.usize("decoder_attention_heads")?,
            encoder_ffn: f.usize("encoder_ffn_dim")?,
            decoder_ffn: f.usize("decoder_ffn_dim")?,
            n_mels: f.usize("num_mel_bins")?,
            vocab: f.usize("vocab_size")?,
            source_positions: f.usize("max_source_positions")?,
            target_positions: f.usize("max_target_positions")?,
        };
        let positive = [c.d_model, c.decoder_layers, c.encoder_heads, c.decoder_heads, c.n_mels, c.vocab, c.source_positions, c.target_positions];
        if positive.contains(&0) {
            return Err(f.config_error("sizes (d_model, layers, heads, num_mel_bins, vocab_size, positions) must be positive"));
        }
        for (key, heads) in [("encoder_attention_heads", c.encoder_heads), ("decoder_attention_heads", c.decoder_heads)] {
            if c.d_model % heads != 0 {
                return Err(f.config_error(format!("d_model {} is not a multiple of {key} {heads}", c.d_model)));
            }
        }
        if let Some(act) = f.str("activation_function") {
            if act != "gelu" {
                return Err(f.config_error(format!("activation_function `{act}` is not supported (Whisper uses `gelu`)")));
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
    let mel = mel_spectrogram(&c, options.opset)?;
    let encoder = audio_encoder(&c, &model, options)?;
    let decoder = text_decoder(&c, folder, &model, options)?;
    let unused = folder.weights.unused();
    if !unused.is_empty() {
        return Err(HfError::ExtraTensors { dir: folder.dir.clone(), names: unused });
    }
    let side_files = SIDE_FILES.iter().map(|n| folder.dir.join(n)).filter(|p| p.is_file()).collect();
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
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| HfError::io(&path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| HfError::file(&path, format!("not valid JSON: {e}")))?;
    for (key, want) in [("n_fft", N_FFT), ("hop_length", HOP_LENGTH), ("sampling_rate", SAMPLING_RATE), ("feature_size", c.n_mels)] {
        if let Some(got) = json.get(key).and_then(|v| v.as_u64()) {
            if got != want as u64 {
                return Err(HfError::file(&path, format!("`{key}` is {got}; this Whisper conversion supports {want}")));
            }
        }
    }
    Ok(())
}

/// A function under construction at one compute precision, with the float I/O dtype chosen as
/// `torchscript::graph` does: fp16 model I/O when computing in fp16 on iOS16+, else fp32 with
/// casts at the boundary.
struct Net {
    b: Builder,
    /// Compute and weight dtype.
    dtype: DType,
    /// Float input/output dtype.
    io: DType,
}

type R<T> = Result<T, HfError>;

impl Net {
    fn new(opset: Opset, dtype: DType) -> Net {
        let io = if dtype == DType::F16 && opset >= Opset::Ios16 { DType::F16 } else { DType::F32 };
        Net { b: Builder::new(opset), dtype, io }
    }

    /// A model input; float inputs are cast to the compute dtype when the I/O dtype differs.
    fn input(&mut self, name: &str, dtype: DType, shape: &[usize]) -> R<Var> {
        let io = if dtype.is_float() { self.io } else { dtype };
        let v = self.b.input(name, TensorType::new(io, shape));
        if io.is_float() && io != self.dtype {
            return self.cast(&v, self.dtype);
        }
        Ok(v)
    }

    fn cast(&mut self, x: &Var, to: DType) -> R<Var> {
        Ok(self.b.op(&ew::CAST, &format!("{}_cast", x.0)).arg("x", x).konst("dtype", Tensor::string(to.name())).build1()?)
    }

    /// Finishes with `outputs` named as given, cast to the I/O dtype.
    fn finish(mut self, outputs: &[(&str, Var)]) -> R<Function> {
        let mut vars = Vec::with_capacity(outputs.len());
        for (_, v) in outputs {
            let dtype = self.b.ty(v).map(|t| t.dtype);
            vars.push(match dtype {
                Some(d) if d.is_float() && d != self.io => self.cast(v, self.io)?,
                _ => v.clone(),
            });
        }
        let mut f = self.b.finish(&vars);
        for ((name, _), v) in outputs.iter().zip(&vars) {
            if v.0 != *name {
                f.block.rename(&v.0, name);
            }
        }
        Ok(f)
    }

    /// `t` as a const in the compute dtype (fp32 → fp16 lazily while the package is written).
    /// `source` names the tensor for errors.
    fn weight(&mut self, hint: &str, t: Tensor, source: &str) -> R<Var> {
        let t = match (t.dtype(), self.dtype) {
            (from, to) if from == to => t,
            (DType::F32, DType::F16) => Tensor::f16_of(&t),
            (_, to) => self.values(t.shape(), &float_values(&t, source)?, to),
        };
        Ok(self.b.konst(hint, t))
    }

    /// Tensor `name` of module `m`, checked to have `shape`, as a const viewed as `view`.
    fn param(&mut self, hint: &str, m: &Scope, name: &str, shape: &[usize], view: &[usize]) -> R<Var> {
        let t = m.get(name, shape)?;
        let t = t.reshaped(view).ok_or_else(|| HfError::file(Path::new(&m.path(name)), format!("cannot view {shape:?} as {view:?}")))?;
        self.weight(hint, t, &m.path(name))
    }

    /// Owned f32 values as a tensor of `dtype`.
    fn values(&self, shape: &[usize], values: &[f32], dtype: DType) -> Tensor {
        match dtype {
            DType::F16 => Tensor::from_f32_as_f16(shape, values),
            _ => Tensor::from_f32(shape, values),
        }
    }

    /// A float scalar const in the compute dtype.
    fn scalar(&self, v: f32) -> Tensor {
        Tensor::float_scalar(self.dtype, v)
    }

    /// 2-D `conv` on (B, C, 1, S): weight (C_out, C_in, 1, k), stride and symmetric padding on S.
    fn conv(&mut self, hint: &str, x: &Var, w: &Var, bias: Option<&Var>, stride: usize, pad: usize) -> R<Var> {
        let mut op = self
            .b
            .op(&linear::CONV, hint)
            .arg("x", x)
            .arg("weight", w)
            .konst("strides", Tensor::i32_vec(&[1, stride as i32]))
            .konst("pad_type", Tensor::string("custom"))
            .konst("pad", Tensor::i32_vec(&[0, 0, pad as i32, pad as i32]))
            .konst("dilations", Tensor::i32_vec(&[1, 1]))
            .konst("groups", Tensor::i32_scalar(1));
        if let Some(b) = bias {
            op = op.arg("bias", b);
        }
        Ok(op.build1()?)
    }

    /// An `nn.Linear` of module `m` as a 1×1 `conv` on (B, C_in, 1, S). `scale` multiplies weight
    /// and bias (the attention query scaling, folded in once here).
    fn linear(&mut self, hint: &str, x: &Var, m: &Scope, c_out: usize, c_in: usize, bias: bool, scale: f32) -> R<Var> {
        let (wh, bh) = (format!("{hint}_weight"), format!("{hint}_bias"));
        let (w, b) = if scale == 1.0 {
            let w = self.param(&wh, m, "weight", &[c_out, c_in], &[c_out, c_in, 1, 1])?;
            let b = if bias { Some(self.param(&bh, m, "bias", &[c_out], &[c_out])?) } else { None };
            (w, b)
        } else {
            let mut scaled = |hint: &str, name: &str, shape: &[usize], view: &[usize]| -> R<Var> {
                let v: Vec<f32> = float_values(&m.get(name, shape)?, &m.path(name))?.iter().map(|x| x * scale).collect();
                let t = Tensor::from_f32(view, &v);
                self.weight(hint, t, &m.path(name))
            };
            let w = scaled(&wh, "weight", &[c_out, c_in], &[c_out, c_in, 1, 1])?;
            let b = if bias { Some(scaled(&bh, "bias", &[c_out], &[c_out])?) } else { None };
            (w, b)
        };
        self.conv(hint, x, &w, b.as_ref(), 1, 0)
    }

    /// A decoder or encoder layer's pre-norm and q/k/v projections (`self_attn_layer_norm`,
    /// `self_attn.{q,k,v}_proj`; k has no bias, q is pre-scaled by `scale`).
    fn self_attn_qkv(&mut self, p: &str, h: &Var, m: &Scope, d: usize, scale: f32) -> R<(Var, Var, Var)> {
        let a = m.at("self_attn");
        let n = self.layer_norm(&format!("{p}_attn_ln"), h, &m.at("self_attn_layer_norm"), d)?;
        let q = self.linear(&format!("{p}_q"), &n, &a.at("q_proj"), d, d, true, scale)?;
        let k = self.linear(&format!("{p}_k"), &n, &a.at("k_proj"), d, d, false, 1.0)?;
        let v = self.linear(&format!("{p}_v"), &n, &a.at("v_proj"), d, d, true, 1.0)?;
        Ok((q, k, v))
    }

    /// `nn.LayerNorm` of module `m` over the channel axis of (B, C, 1, S).
    fn layer_norm(&mut self, hint: &str, x: &Var, m: &Scope, c: usize) -> R<Var> {
        let gamma = self.param(&format!("{hint}_gamma"), m, "weight", &[c], &[c])?;
        let beta = self.param(&format!("{hint}_beta"), m, "bias", &[c], &[c])?;
        let eps = self.scalar(LAYER_NORM_EPS);
        Ok(super::channel_layer_norm(&mut self.b, hint, x, &gamma, &beta, eps)?)
    }

    fn gelu(&mut self, hint: &str, x: &Var) -> R<Var> {
        Ok(self.b.op(&ew::GELU, hint).arg("x", x).konst("mode", Tensor::string("EXACT")).build1()?)
    }

    fn binary(&mut self, def: &'static crate::mil::ops::OpDef, hint: &str, x: &Var, y: &Var) -> R<Var> {
        Ok(self.b.op(def, hint).arg("x", x).arg("y", y).build1()?)
    }

    /// A binary op of `x` and a scalar const `y` in the compute dtype.
    fn with_scalar(&mut self, def: &'static crate::mil::ops::OpDef, hint: &str, x: &Var, y: f32) -> R<Var> {
        let y = self.scalar(y);
        Ok(self.b.op(def, hint).arg("x", x).konst("y", y).build1()?)
    }

    fn reshape(&mut self, hint: &str, x: &Var, shape: &[usize]) -> R<Var> {
        let s: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
        Ok(self.b.op(&shape::RESHAPE, hint).arg("x", x).konst("shape", Tensor::i32_vec(&s)).build1()?)
    }

    fn concat(&mut self, hint: &str, xs: &[Var], axis: i32) -> R<Var> {
        Ok(self.b.op(&shape::CONCAT, hint).args("values", xs).konst("axis", Tensor::i32_scalar(axis)).build1()?)
    }

    /// The heads of an activation x (1, C, 1, S): `split` on the channel axis into (1, d, 1, S),
    /// each reshaped to (1, d, S).
    fn split_heads(&mut self, hint: &str, x: &Var, heads: usize) -> R<Vec<Var>> {
        let shape = self.b.ty(x).and_then(|t| t.fixed_shape()).unwrap_or_default();
        let (Some(&c), Some(&s)) = (shape.get(1), shape.get(3)) else {
            return Err(crate::mil::ops::TypeError::Invalid { op: "split".into(), message: format!("{hint}: {shape:?} is not (1, C, 1, S)") }.into());
        };
        let parts = self
            .b
            .op(&shape::SPLIT, &format!("{hint}_heads"))
            .arg("x", x)
            .konst("num_splits", Tensor::i32_scalar(heads as i32))
            .konst("axis", Tensor::i32_scalar(1))
            .build()?;
        let mut out = Vec::with_capacity(heads);
        for (h, part) in parts.iter().enumerate() {
            out.push(self.reshape(&format!("{hint}{h}"), part, &[BATCH, c / heads, s])?);
        }
        Ok(out)
    }

    /// The per-layer, per-head slices of a cache (L, C, 1, S): one reshape to (L·H, d, S) (the
    /// channel axis is H blocks of d) and one `split` on axis 0, giving entry l·H + h =
    /// (1, d, S). Two ops for the whole cache instead of a slice per layer and a split per head,
    /// since the decoder does this on every step.
    fn cache_heads(&mut self, hint: &str, cache: &Var, layers: usize, c: usize, s: usize, heads: usize) -> R<Vec<Var>> {
        let x = self.reshape(&format!("{hint}_by_head"), cache, &[layers * heads, c / heads, s])?;
        Ok(self
            .b
            .op(&shape::SPLIT, &format!("{hint}_heads"))
            .arg("x", &x)
            .konst("num_splits", Tensor::i32_scalar((layers * heads) as i32))
            .konst("axis", Tensor::i32_scalar(0))
            .build()?)
    }

    /// Multi-head attention split per head: q (1, C, 1, Sq) and, per head, k_h and v_h
    /// (1, d, Sk). `scores = matmul(q_h, k_h, transpose_x)` (1, Sq, Sk), softmax on the last
    /// axis, `out_h = matmul(v_h, probs, transpose_y)` (1, d, Sq); heads are concatenated on the
    /// channel axis → (1, C, 1, Sq). `keep` (broadcastable to the scores; true = attend) masks
    /// columns. q must already carry the 1/√d scaling.
    fn attention(&mut self, hint: &str, q: &Var, ks: &[Var], vs: &[Var], keep: Option<&Var>) -> R<Var> {
        let heads = ks.len();
        let qs = self.split_heads(&format!("{hint}_q"), q, heads)?;
        let masked = self.scalar(MASKED_SCORE);
        let mut outs = Vec::with_capacity(heads);
        for (h, ((qh, kh), vh)) in qs.iter().zip(ks).zip(vs).enumerate() {
            let mut scores = self
                .b
                .op(&linear::MATMUL, &format!("{hint}_scores{h}"))
                .arg("x", qh)
                .arg("y", kh)
                .konst("transpose_x", Tensor::bool_scalar(true))
                .konst("transpose_y", Tensor::bool_scalar(false))
                .build1()?;
            if let Some(keep) = keep {
                scores = self
                    .b
                    .op(&ew::SELECT, &format!("{hint}_masked{h}"))
                    .arg("cond", keep)
                    .arg("a", &scores)
                    .konst("b", masked.clone())
                    .build1()?;
            }
            let probs = self.b.op(&ew::SOFTMAX, &format!("{hint}_probs{h}")).arg("x", &scores).konst("axis", Tensor::i32_scalar(-1)).build1()?;
            let out = self
                .b
                .op(&linear::MATMUL, &format!("{hint}_out{h}"))
                .arg("x", vh)
                .arg("y", &probs)
                .konst("transpose_x", Tensor::bool_scalar(false))
                .konst("transpose_y", Tensor::bool_scalar(true))
                .build1()?;
            let shape = self.b.ty(&out).and_then(|t| t.fixed_shape()).unwrap_or_default();
            outs.push(self.reshape(&format!("{hint}_out{h}_bc1s"), &out, &[BATCH, shape[1], 1, shape[2]])?);
        }
        self.concat(&format!("{hint}_heads"), &outs, 1)
    }

    /// `fc2(gelu(fc1(x)))` of a Whisper layer `m`.
    fn mlp(&mut self, hint: &str, x: &Var, m: &Scope, c: usize, ffn: usize) -> R<Var> {
        let h = self.linear(&format!("{hint}_fc1"), x, &m.at("fc1"), ffn, c, true, 1.0)?;
        let h = self.gelu(&format!("{hint}_gelu"), &h)?;
        self.linear(&format!("{hint}_fc2"), &h, &m.at("fc2"), c, ffn, true, 1.0)
    }
}

/// The values of a float tensor (fp32, fp16, bf16) as f32; `source` names it in the error.
fn float_values(t: &Tensor, source: &str) -> R<Vec<f32>> {
    match t.dtype() {
        DType::BF16 => Ok(t.bytes().chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        d => t.to_f32_vec().ok_or_else(|| HfError::file(Path::new(source), format!("has dtype {d}, expected a float tensor"))),
    }
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
        x = net.gelu(&format!("{name}_gelu"), &y)?;
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
    let scale = query_scale(d, c.encoder_heads);
    for l in 0..c.encoder_layers {
        let m = enc.at(&format!("layers.{l}"));
        let p = format!("layer{l}");
        let a = m.at("self_attn");
        let (q, k, v) = net.self_attn_qkv(&p, &h, &m, d, scale)?;
        let ks = net.split_heads(&format!("{p}_k"), &k, c.encoder_heads)?;
        let vs = net.split_heads(&format!("{p}_v"), &v, c.encoder_heads)?;
        let o = net.attention(&format!("{p}_attn"), &q, &ks, &vs, None)?;
        let o = net.linear(&format!("{p}_o"), &o, &a.at("out_proj"), d, d, true, 1.0)?;
        h = net.binary(&ew::ADD, &format!("{p}_attn_res"), &h, &o)?;
        let n = net.layer_norm(&format!("{p}_mlp_ln"), &h, &m.at("final_layer_norm"), d)?;
        let o = net.mlp(&format!("{p}_mlp"), &n, &m, d, c.encoder_ffn)?;
        h = net.binary(&ew::ADD, &format!("{p}_mlp_res"), &h, &o)?;
    }
    let out = net.layer_norm("encoder_ln", &h, &enc.at("layer_norm"), d)?;
    let dec = model.at("decoder");
    let (mut ks, mut vs) = (Vec::new(), Vec::new());
    for l in 0..c.decoder_layers {
        let a = dec.at(&format!("layers.{l}.encoder_attn"));
        ks.push(net.linear(&format!("cross{l}_k"), &out, &a.at("k_proj"), d, d, false, 1.0)?);
        vs.push(net.linear(&format!("cross{l}_v"), &out, &a.at("v_proj"), d, d, true, 1.0)?);
    }
    let ks = net.concat("cross_keys", &ks, 0)?;
    let vs = net.concat("cross_values", &vs, 0)?;
    net.finish(&[(ENCODER_OUTPUT, out), (CROSS_KEY_CACHE, ks), (CROSS_VALUE_CACHE, vs)])
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
    let mut caches = if stateful {
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
    let gather = |net: &mut Net, hint: &str, table: &Var, index: &Var| -> R<Var> {
        Ok(net.b.op(&shape::GATHER, hint).arg("x", table).arg("indices", index).konst("axis", Tensor::i32_scalar(0)).build1()?)
    };
    let tok = gather(&mut net, "token_embedding", &tokens, &ids)?;
    let pos = gather(&mut net, "position_embedding", &positions, &cache_length)?;
    let mut h = net.binary(&ew::ADD, "embedded", &tok, &pos)?;

    // Cache inputs: keep[0, 0, j] = j < cache_length for the cache columns, then true for the
    // current token. States: the current token is column cache_length, so j <= cache_length.
    let columns = Tensor::from_i32(&[BATCH, 1, t], &(0..t as i32).collect::<Vec<_>>());
    let keep = match &caches {
        Cache::Inputs { .. } => {
            let in_cache = net.b.op(&ew::LESS, "cache_columns_valid").konst("x", columns).arg("y", &cache_length).build1()?;
            let current = net.b.konst("current_column", Tensor::from_bools(&[BATCH, 1, 1], &[true]));
            net.concat("attend", &[in_cache, current], 2)?
        }
        Cache::States { .. } => net.b.op(&ew::LESS_EQUAL, "attend").konst("x", columns).arg("y", &cache_length).build1()?,
    };
    let cross_key_heads = net.cache_heads("cross_keys", &cross_keys, layers, d, s, c.decoder_heads)?;
    let cross_value_heads = net.cache_heads("cross_values", &cross_values, layers, d, s, c.decoder_heads)?;

    let heads = c.decoder_heads;
    let scale = query_scale(d, heads);
    let (mut new_keys, mut new_values) = (Vec::new(), Vec::new());
    for l in 0..layers {
        let m = dec.at(&format!("layers.{l}"));
        let p = format!("layer{l}");
        let a = m.at("self_attn");
        let (q, k, v) = net.self_attn_qkv(&p, &h, &m, d, scale)?;
        let (ks, vs) = match &mut caches {
            Cache::Inputs { key_heads, value_heads } => {
                // Per head: the cached columns, then this token's column (the mask's last column).
                let with_current = |net: &mut Net, name: &str, cache: &[Var], x: &Var| -> R<Vec<Var>> {
                    let current = net.split_heads(&format!("{p}_{name}_new"), x, heads)?;
                    let mut out = Vec::with_capacity(heads);
                    for (h, x) in current.iter().enumerate() {
                        out.push(net.concat(&format!("{p}_{name}{h}"), &[cache[l * heads + h].clone(), x.clone()], 2)?);
                    }
                    Ok(out)
                };
                let ks = with_current(&mut net, "keys", key_heads, &k)?;
                let vs = with_current(&mut net, "values", value_heads, &v)?;
                new_keys.push(k);
                new_values.push(v);
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
        let o = net.attention(&format!("{p}_self"), &q, &ks, &vs, Some(&keep))?;
        let o = net.linear(&format!("{p}_self_o"), &o, &a.at("out_proj"), d, d, true, 1.0)?;
        h = net.binary(&ew::ADD, &format!("{p}_self_res"), &h, &o)?;

        let a = m.at("encoder_attn");
        let n = net.layer_norm(&format!("{p}_cross_ln"), &h, &m.at("encoder_attn_layer_norm"), d)?;
        let q = net.linear(&format!("{p}_cross_q"), &n, &a.at("q_proj"), d, d, true, scale)?;
        // The encoder package computed these from the same weights; mark them used here too so
        // the decoder's own tensors are all accounted for (shape-checked, not read again).
        a.at("k_proj").get("weight", &[d, d])?;
        a.at("v_proj").get("weight", &[d, d])?;
        a.at("v_proj").get("bias", &[d])?;
        let range = l * heads..(l + 1) * heads;
        let o = net.attention(&format!("{p}_cross"), &q, &cross_key_heads[range.clone()], &cross_value_heads[range], None)?;
        let o = net.linear(&format!("{p}_cross_o"), &o, &a.at("out_proj"), d, d, true, 1.0)?;
        h = net.binary(&ew::ADD, &format!("{p}_cross_res"), &h, &o)?;

        let n = net.layer_norm(&format!("{p}_mlp_ln"), &h, &m.at("final_layer_norm"), d)?;
        let o = net.mlp(&format!("{p}_mlp"), &n, &m, d, c.decoder_ffn)?;
        h = net.binary(&ew::ADD, &format!("{p}_mlp_res"), &h, &o)?;
    }
    let h = net.layer_norm("decoder_ln", &h, &dec.at("layer_norm"), d)?;
    // proj_out is tied to embed_tokens; a folder that stores it anyway uses its own copy.
    let root = folder.weights.at("");
    let proj = if root.contains("proj_out.weight") {
        net.param("proj_out", &root.at("proj_out"), "weight", &[c.vocab, d], &[c.vocab, d, 1, 1])?
    } else {
        tokens
    };
    let logits = net.conv("logits_bc1s", &h, &proj, None, 1, 0)?;
    let logits = net.reshape("logits_flat", &logits, &[BATCH, c.vocab])?;
    if stateful {
        return net.finish(&[(LOGITS, logits)]);
    }
    let new_keys = net.concat("new_keys", &new_keys, 0)?;
    let new_values = net.concat("new_values", &new_values, 0)?;
    net.finish(&[(LOGITS, logits), (KEY_CACHE_UPDATES, new_keys), (VALUE_CACHE_UPDATES, new_values)])
}

/// How a TextDecoder holds its self-attention cache (see [`text_decoder`]).
enum Cache {
    /// Before iOS18: the cache inputs, already split per layer and head (entry l·H + h).
    Inputs { key_heads: Vec<Var>, value_heads: Vec<Var> },
    /// From iOS18: the two state inputs; `column_begin` = [0, 0, 0, cache_length] (the index of
    /// this token's column in layer 0); `key_now`/`value_now` the states' current values.
    States { key: Var, value: Var, column_begin: Var, key_now: Var, value_now: Var },
}

/// Where a stateful decoder layer writes its column in a cache (L, d, 1, t): `begin` =
/// [layer, 0, 0, cache_length] and `end` = [layer + 1, d, 1, cache_length + 1].
struct CacheColumn {
    layer: usize,
    d: usize,
    t: usize,
    begin: Var,
    end: Var,
}

impl Net {
    /// The [`CacheColumn`] of layer `layer`, from `column_begin` = [0, 0, 0, cache_length]; its
    /// keys and values share it.
    fn cache_column(&mut self, hint: &str, layer: usize, d: usize, t: usize, column_begin: &Var) -> R<CacheColumn> {
        let l = layer as i32;
        let begin = match l {
            0 => column_begin.clone(),
            _ => self.b.op(&ew::ADD, &format!("{hint}_column_begin")).arg("x", column_begin).konst("y", Tensor::i32_vec(&[l, 0, 0, 0])).build1()?,
        };
        let end = self
            .b
            .op(&ew::ADD, &format!("{hint}_column_end"))
            .arg("x", column_begin)
            .konst("y", Tensor::i32_vec(&[l + 1, d as i32, 1, 1]))
            .build1()?;
        Ok(CacheColumn { layer, d, t, begin, end })
    }

    /// Writes `x` (1, d, 1, 1), this token's keys or values of layer `at.layer`, into column
    /// `cache_length` of `cache` (the state's current value): `slice_update`, then `write_state`
    /// into `state` and `read_state` back, coremltools' on-disk `coreml_update_state`. Returns
    /// the updated value (the state's new current value).
    fn write_column(&mut self, hint: &str, state: &Var, cache: &Var, x: &Var, at: &CacheColumn) -> R<Var> {
        let x = if self.dtype == STATE_DTYPE { x.clone() } else { self.cast(x, STATE_DTYPE)? };
        let updated = self
            .b
            .op(&shape::SLICE_UPDATE, &format!("{hint}_updated"))
            .arg("x", cache)
            .arg("update", &x)
            .arg("begin", &at.begin)
            .arg("end", &at.end)
            .build1()?;
        self.b.op(&state::WRITE_STATE, &format!("{hint}_write_state")).arg("input", state).arg("data", &updated).build()?;
        Ok(self.b.op(&state::READ_STATE, hint).arg("input", state).build1()?)
    }

    /// The per-head slices (1, d/H, t) of layer `at.layer` of a cache value (layers, d, 1, t),
    /// in the compute dtype.
    fn layer_heads(&mut self, hint: &str, cache: &Var, at: &CacheColumn, heads: usize) -> R<Vec<Var>> {
        let l = at.layer as i32;
        let layer = self
            .b
            .op(&shape::SLICE_BY_INDEX, &format!("{hint}_layer"))
            .arg("x", cache)
            .konst("begin", Tensor::i32_vec(&[l, 0, 0, 0]))
            .konst("end", Tensor::i32_vec(&[l + 1, at.d as i32, 1, at.t as i32]))
            .build1()?;
        let layer = if self.dtype == STATE_DTYPE { layer } else { self.cast(&layer, self.dtype)? };
        self.cache_heads(hint, &layer, 1, at.d, at.t, heads)
    }
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
