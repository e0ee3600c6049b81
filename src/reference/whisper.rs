//! Whisper in PyTorch, through `tch`, from a Hugging Face folder (`config.json`,
//! `model.safetensors`): the reference the converted Whisper packages are validated against. It
//! implements [`Backend`] so the same greedy loop (`speech::greedy`) drives both.
//!
//! The ops mirror transformers 5.23 (`models/whisper/modeling_whisper.py`,
//! `feature_extraction_whisper.py` `_torch_extract_fbank_features`), in fp32 on CPU:
//! - log-mel: reflect-pad by n_fft/2, `stft` (periodic Hann, n_fft 400, hop 160), power,
//!   drop the last frame, Slaney mel filter bank (`speech::mel`), `log10(clamp(x, 1e-10))`,
//!   `max(x, max(x) - 8)`, `(x + 4) / 4`;
//! - encoder: conv1 + GELU, conv2 (stride 2) + GELU, + `embed_positions`, pre-LayerNorm layers
//!   (self-attention, then fc1/GELU/fc2), final `layer_norm`;
//! - decoder step: `embed_tokens` + `embed_positions[position]`, pre-LayerNorm layers (causal
//!   self-attention over a growing key/value cache, cross-attention on the encoder output,
//!   MLP), final `layer_norm`, logits through `proj_out` (tied to `embed_tokens`).
//!
//! Every tensor's shape is checked against `config.json` when the folder is loaded, so no op
//! can fail on file content afterwards. Called by `cli::validate_speech` and `tests/speech.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Kind, Tensor};

use crate::speech::greedy::Backend;
use crate::speech::mel;

/// The single safetensors file of the folder (sharded folders are not supported here).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// LayerNorm epsilon of every Whisper layer norm (`nn.LayerNorm` default).
const LAYER_NORM_EPS: f64 = 1e-5;
/// Width of Whisper's encoder convolutions (both `conv1` and `conv2`).
const CONV_KERNEL: i64 = 3;
/// `conv2` halves the 3000 mel frames to the 1500 encoder positions.
const CONV2_STRIDE: i64 = 2;

/// Why the reference could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `config.json` or `model.safetensors` missing, malformed, or not matching each other.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// libtorch refused to hand back a result.
    #[error("libtorch failed: {0}")]
    Torch(String),
    /// A call outside the contract of [`Backend`] (wrong feature length, token or position out of range).
    #[error("{0}")]
    Input(String),
}

fn file_error(path: &Path, message: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), message: message.into() }
}

/// Model sizes from `config.json`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    d_model: i64,
    encoder_layers: i64,
    decoder_layers: i64,
    encoder_heads: i64,
    decoder_heads: i64,
    encoder_ffn: i64,
    decoder_ffn: i64,
    n_mels: i64,
    vocab: i64,
    source_positions: i64,
    target_positions: i64,
}

/// A Whisper model loaded in libtorch, with the decoding state of the current window.
pub struct Whisper {
    dims: Dims,
    weights: HashMap<String, Tensor>,
    /// (n_mels, N_FREQS) filter bank, f32.
    mel_filters: Tensor,
    /// Periodic Hann window of N_FFT points.
    window: Tensor,
    /// Per decoder layer: cross-attention keys and values, (1, heads, 1500, head_dim).
    cross: Vec<(Tensor, Tensor)>,
    /// Per decoder layer: self-attention keys and values so far, (1, heads, t, head_dim).
    cache: Vec<(Tensor, Tensor)>,
}

impl Whisper {
    /// Loads `dir/config.json` and `dir/model.safetensors`; every tensor the forward pass uses
    /// must be present with the shape the config implies (fp16/bf16 weights are widened to fp32).
    pub fn open(dir: &Path) -> Result<Whisper, Error> {
        let config_path = dir.join(crate::speech::greedy::CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|e| file_error(&config_path, e.to_string()))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| file_error(&config_path, format!("not valid JSON: {e}")))?;
        let get = |key: &str| config.get(key).and_then(Value::as_i64).filter(|&v| v > 0).ok_or_else(|| file_error(&config_path, format!("`{key}` is missing or not a positive integer")));
        let dims = Dims {
            d_model: get("d_model")?,
            encoder_layers: get("encoder_layers")?,
            decoder_layers: get("decoder_layers")?,
            encoder_heads: get("encoder_attention_heads")?,
            decoder_heads: get("decoder_attention_heads")?,
            encoder_ffn: get("encoder_ffn_dim")?,
            decoder_ffn: get("decoder_ffn_dim")?,
            n_mels: get("num_mel_bins")?,
            vocab: get("vocab_size")?,
            source_positions: get("max_source_positions")?,
            target_positions: get("max_target_positions")?,
        };
        if dims.d_model % dims.encoder_heads != 0 || dims.d_model % dims.decoder_heads != 0 {
            return Err(file_error(&config_path, "`d_model` is not a multiple of the attention head count"));
        }
        let path = dir.join(WEIGHTS_FILE);
        if !path.is_file() {
            return Err(file_error(&path, "no such file (the reference needs the folder's single safetensors file)"));
        }
        let loaded = Tensor::read_safetensors(&path).map_err(|e| file_error(&path, format!("cannot load: {e}")))?;
        let mut weights: HashMap<String, Tensor> = loaded.into_iter().map(|(n, t)| (n, t.to_kind(Kind::Float))).collect();
        if !weights.contains_key("proj_out.weight") {
            if let Some(tied) = weights.get("model.decoder.embed_tokens.weight") {
                let tied = tied.shallow_clone();
                weights.insert("proj_out.weight".to_string(), tied);
            }
        }
        for (name, shape) in expected_shapes(&dims) {
            let t = weights.get(&name).ok_or_else(|| file_error(&path, format!("tensor `{name}` is missing")))?;
            if t.size() != shape {
                return Err(file_error(&path, format!("tensor `{name}` has shape {:?}, config.json implies {shape:?}", t.size())));
            }
        }
        let bank: Vec<f32> = mel::filter_bank(dims.n_mels as usize).into_iter().map(|x| x as f32).collect();
        let mel_filters = Tensor::from_slice(&bank).reshape([mel::N_FREQS as i64, dims.n_mels]).transpose(0, 1).contiguous();
        let window = Tensor::hann_window_periodic(mel::N_FFT as i64, true, (Kind::Float, tch::Device::Cpu));
        Ok(Whisper { dims, weights, mel_filters, window, cross: Vec::new(), cache: Vec::new() })
    }

    fn w(&self, name: &str) -> &Tensor {
        // Present: checked by `open` against `expected_shapes`, the list of every name used here.
        &self.weights[name]
    }

    /// `x · Wᵀ (+ b)` with the weights of `prefix`.
    fn linear(&self, x: &Tensor, prefix: &str, bias: bool) -> Tensor {
        let b = bias.then(|| self.w(&format!("{prefix}.bias")));
        x.linear(self.w(&format!("{prefix}.weight")), b)
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> Tensor {
        x.layer_norm([self.dims.d_model], Some(self.w(&format!("{prefix}.weight"))), Some(self.w(&format!("{prefix}.bias"))), LAYER_NORM_EPS, false)
    }

    /// (1, T, d) → (1, heads, T, head_dim).
    fn split_heads(&self, x: &Tensor, heads: i64) -> Tensor {
        let t = x.size()[1];
        x.reshape([1, t, heads, self.dims.d_model / heads]).transpose(1, 2)
    }

    /// Scaled dot-product attention of (1, heads, T, hd) queries on keys/values; (1, T, d) out.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, prefix: &str) -> Tensor {
        let (heads, t, hd) = (q.size()[1], q.size()[2], q.size()[3]);
        let scores = q.matmul(&k.transpose(-1, -2)) * (hd as f64).powf(-0.5);
        let out = scores.softmax(-1, Kind::Float).matmul(v).transpose(1, 2).reshape([1, t, heads * hd]);
        self.linear(&out, &format!("{prefix}.out_proj"), true)
    }

    fn mlp(&self, x: &Tensor, prefix: &str) -> Tensor {
        let h = self.layer_norm(x, &format!("{prefix}.final_layer_norm"));
        let h = self.linear(&h, &format!("{prefix}.fc1"), true).gelu("none");
        self.linear(&h, &format!("{prefix}.fc2"), true)
    }

    /// Log-mel features of one window as a (1, n_mels, 3000) tensor.
    fn log_mel(&self, window: &[f32]) -> Tensor {
        let pad = (mel::N_FFT / 2) as i64;
        let audio = Tensor::from_slice(window).reshape([1, 1, -1]).reflection_pad1d([pad, pad]).reshape([-1]);
        let stft = audio.stft(mel::N_FFT as i64, mel::HOP_LENGTH as i64, None, Some(&self.window), false, true, true, false);
        let frames = stft.size()[1] - 1;
        let power = stft.narrow(1, 0, frames).abs().pow_tensor_scalar(2);
        let log = self.mel_filters.matmul(&power).clamp_min(mel::LOG_FLOOR).log10();
        let floor = log.max() - mel::DYNAMIC_RANGE;
        ((log.maximum(&floor) + mel::SCALE) / mel::SCALE).unsqueeze(0)
    }

    /// Encoder output (1, 1500, d) for (1, n_mels, 3000) features.
    fn encoder(&self, features: &Tensor) -> Tensor {
        let p = "model.encoder";
        let pad = CONV_KERNEL / 2;
        let x = features.conv1d(self.w(&format!("{p}.conv1.weight")), Some(self.w(&format!("{p}.conv1.bias"))), [1], [pad], [1], 1).gelu("none");
        let x = x.conv1d(self.w(&format!("{p}.conv2.weight")), Some(self.w(&format!("{p}.conv2.bias"))), [CONV2_STRIDE], [pad], [1], 1).gelu("none");
        let mut x = x.transpose(1, 2) + self.w(&format!("{p}.embed_positions.weight"));
        for l in 0..self.dims.encoder_layers {
            let lp = format!("{p}.layers.{l}");
            let h = self.layer_norm(&x, &format!("{lp}.self_attn_layer_norm"));
            let heads = self.dims.encoder_heads;
            let q = self.split_heads(&self.linear(&h, &format!("{lp}.self_attn.q_proj"), true), heads);
            let k = self.split_heads(&self.linear(&h, &format!("{lp}.self_attn.k_proj"), false), heads);
            let v = self.split_heads(&self.linear(&h, &format!("{lp}.self_attn.v_proj"), true), heads);
            x = &x + self.attend(&q, &k, &v, &format!("{lp}.self_attn"));
            x = &x + self.mlp(&x, &lp);
        }
        self.layer_norm(&x, &format!("{p}.layer_norm"))
    }

    /// Copies a float tensor's values out, row-major.
    fn values(t: &Tensor) -> Result<Vec<f32>, Error> {
        let t = t.to_kind(Kind::Float).contiguous();
        let n = t.numel();
        let mut v = vec![0f32; n];
        t.f_copy_data(&mut v, n).map_err(|e| Error::Torch(e.to_string()))?;
        Ok(v)
    }
}

impl Backend for Whisper {
    type Error = Error;

    fn features(&mut self, window: &[f32]) -> Result<Vec<f32>, Error> {
        Whisper::values(&tch::no_grad(|| self.log_mel(window)))
    }

    fn encode(&mut self, features: &[f32]) -> Result<Vec<f32>, Error> {
        let frames = features.len() as i64 / self.dims.n_mels;
        if frames != 2 * self.dims.source_positions {
            return Err(Error::Input(format!("features hold {frames} frames; the encoder takes {}", 2 * self.dims.source_positions)));
        }
        let out = tch::no_grad(|| {
            let x = self.encoder(&Tensor::from_slice(features).reshape([1, self.dims.n_mels, frames]));
            let heads = self.dims.decoder_heads;
            self.cross = (0..self.dims.decoder_layers)
                .map(|l| {
                    let lp = format!("model.decoder.layers.{l}.encoder_attn");
                    let k = self.split_heads(&self.linear(&x, &format!("{lp}.k_proj"), false), heads);
                    let v = self.split_heads(&self.linear(&x, &format!("{lp}.v_proj"), true), heads);
                    (k, v)
                })
                .collect();
            x.squeeze_dim(0).transpose(0, 1)
        });
        Whisper::values(&out)
    }

    fn logits(&mut self, token: u32, position: usize) -> Result<Vec<f32>, Error> {
        let (vocab, positions) = (self.dims.vocab, self.dims.target_positions);
        if i64::from(token) >= vocab || position as i64 >= positions {
            return Err(Error::Input(format!("token {token} at position {position} is outside the vocabulary ({vocab}) or positions ({positions})")));
        }
        if self.cross.is_empty() {
            return Err(Error::Input("decoder step before the encoder ran".into()));
        }
        if position == 0 {
            self.cache.clear();
        }
        let logits = tch::no_grad(|| {
            let p = "model.decoder";
            let embed = self.w(&format!("{p}.embed_tokens.weight")).get(i64::from(token));
            let mut x = (embed + self.w(&format!("{p}.embed_positions.weight")).get(position as i64)).reshape([1, 1, -1]);
            let heads = self.dims.decoder_heads;
            for l in 0..self.dims.decoder_layers as usize {
                let lp = format!("{p}.layers.{l}");
                let h = self.layer_norm(&x, &format!("{lp}.self_attn_layer_norm"));
                let q = self.split_heads(&self.linear(&h, &format!("{lp}.self_attn.q_proj"), true), heads);
                let k = self.split_heads(&self.linear(&h, &format!("{lp}.self_attn.k_proj"), false), heads);
                let v = self.split_heads(&self.linear(&h, &format!("{lp}.self_attn.v_proj"), true), heads);
                let (k, v) = match self.cache.get(l) {
                    Some((ck, cv)) => (Tensor::cat(&[ck, &k], 2), Tensor::cat(&[cv, &v], 2)),
                    None => (k, v),
                };
                x = &x + self.attend(&q, &k, &v, &format!("{lp}.self_attn"));
                if l < self.cache.len() {
                    self.cache[l] = (k, v);
                } else {
                    self.cache.push((k, v));
                }
                let h = self.layer_norm(&x, &format!("{lp}.encoder_attn_layer_norm"));
                let q = self.split_heads(&self.linear(&h, &format!("{lp}.encoder_attn.q_proj"), true), heads);
                let (ck, cv) = &self.cross[l];
                x = &x + self.attend(&q, ck, cv, &format!("{lp}.encoder_attn"));
                x = &x + self.mlp(&x, &lp);
            }
            let x = self.layer_norm(&x, &format!("{p}.layer_norm"));
            x.reshape([-1]).linear::<&Tensor>(self.w("proj_out.weight"), None)
        });
        Whisper::values(&logits)
    }
}

/// Every tensor the forward pass reads, with its shape from the config.
fn expected_shapes(d: &Dims) -> Vec<(String, Vec<i64>)> {
    let m = d.d_model;
    let mut out = vec![
        ("model.encoder.conv1.weight".to_string(), vec![m, d.n_mels, CONV_KERNEL]),
        ("model.encoder.conv1.bias".to_string(), vec![m]),
        ("model.encoder.conv2.weight".to_string(), vec![m, m, CONV_KERNEL]),
        ("model.encoder.conv2.bias".to_string(), vec![m]),
        ("model.encoder.embed_positions.weight".to_string(), vec![d.source_positions, m]),
        ("model.encoder.layer_norm.weight".to_string(), vec![m]),
        ("model.encoder.layer_norm.bias".to_string(), vec![m]),
        ("model.decoder.embed_tokens.weight".to_string(), vec![d.vocab, m]),
        ("model.decoder.embed_positions.weight".to_string(), vec![d.target_positions, m]),
        ("model.decoder.layer_norm.weight".to_string(), vec![m]),
        ("model.decoder.layer_norm.bias".to_string(), vec![m]),
        ("proj_out.weight".to_string(), vec![d.vocab, m]),
    ];
    let mut layer = |prefix: String, attentions: &[&str], ffn: i64| {
        for a in attentions {
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                out.push((format!("{prefix}.{a}.{proj}.weight"), vec![m, m]));
                if proj != "k_proj" {
                    out.push((format!("{prefix}.{a}.{proj}.bias"), vec![m]));
                }
            }
            for part in ["weight", "bias"] {
                out.push((format!("{prefix}.{a}_layer_norm.{part}"), vec![m]));
            }
        }
        out.extend([
            (format!("{prefix}.fc1.weight"), vec![ffn, m]),
            (format!("{prefix}.fc1.bias"), vec![ffn]),
            (format!("{prefix}.fc2.weight"), vec![m, ffn]),
            (format!("{prefix}.fc2.bias"), vec![m]),
            (format!("{prefix}.final_layer_norm.weight"), vec![m]),
            (format!("{prefix}.final_layer_norm.bias"), vec![m]),
        ]);
    };
    for l in 0..d.encoder_layers {
        layer(format!("model.encoder.layers.{l}"), &["self_attn"], d.encoder_ffn);
    }
    for l in 0..d.decoder_layers {
        layer(format!("model.decoder.layers.{l}"), &["self_attn", "encoder_attn"], d.decoder_ffn);
    }
    out
}
