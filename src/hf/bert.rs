//! BERT-family text encoders (BERT, DistilBERT, RoBERTa, and sentence-transformers folders such as
//! all-MiniLM-L6-v2 built on them) from `config.json` + safetensors, written straight into the
//! ANE layout: activations (B, C, 1, S), every Linear a 1×1 `conv`, LayerNorm over axis 1, and
//! attention split per head (`matmul(q_h, k_h, transpose_x)` → softmax on the last axis →
//! `matmul(v_h, probs, transpose_y)`), so no rewrite pass is needed.
//!
//! The package takes `input_ids` and `attention_mask`, int32 (1, S), and returns
//! `last_hidden_state` as (1, C, 1, S) — channels on axis 1, tokens last, NOT transformers'
//! (1, S, C) — plus, for sentence-transformers folders, `sentence_embedding` (1, C), pooled as
//! `1_Pooling/config.json` says and L2-normalized when `modules.json` lists a Normalize module.
//! Token type ids are all zero.
//!
//! Upstream (mirrored module by module; weights are found by the same module paths):
//! transformers v5.23.0 `models/bert/modeling_bert.py`, `models/distilbert/modeling_distilbert.py`,
//! `models/roberta/modeling_roberta.py`; sentence-transformers `models/Pooling.py`,
//! `models/Normalize.py`. Called through [`FAMILY`] (one line of `hf::FAMILIES`) by `hf::build`;
//! `reference::bert` (feature `torch`) runs the same [`Encoder`] and [`SentenceHead`] in tch.

use std::path::{Path, PathBuf};

use super::{Built, Family, Folder, HfError, Options, Output, Scope};
use crate::mil::builder::{Builder, Var};
use crate::mil::ops::{elementwise as ew, linear, reduce, shape};
use crate::mil::{DType, Model, Opset, Program, Tensor, TensorType};

/// The family entry for `hf::FAMILIES`.
pub const FAMILY: Family = Family { name: "bert", model_types: &["bert", "distilbert", "roberta"], build };

/// Sequence length S of the inputs when `--seq-len` is not given (common BERT serving length).
pub const DEFAULT_SEQ_LEN: usize = 128;

/// Added to attention scores of masked keys: e^-10000 is 0 after softmax, and unlike
/// transformers' `finfo.min` it stays finite when added to a score in fp16 (max 65504).
pub const MASK_NEG: f32 = -1e4;

/// DistilBERT builds every LayerNorm with this eps (`nn.LayerNorm(dim, eps=1e-12)`); its config
/// has no `layer_norm_eps`.
pub const DISTILBERT_LAYER_NORM_EPS: f64 = 1e-12;

/// Lower bound of the normalizer's max-abs prescale: the smallest normal fp16, so an all-zero
/// embedding divides by a positive number.
const FP16_MIN_NORMAL: f32 = 6.103_515_6e-5;

/// Modules of task-head checkpoints (`BertForMaskedLM`, `RobertaForSequenceClassification`, …)
/// and saved buffers that the encoder does not use; their tensors may be present and are ignored.
/// Any other tensor no lookup asked for is an error.
pub const IGNORED_PREFIXES: &[&str] = &[
    "pooler.",
    "cls.",
    "lm_head.",
    "classifier.",
    "qa_outputs.",
    "pre_classifier.",
    "vocab_transform.",
    "vocab_layer_norm.",
    "vocab_projector.",
    "embeddings.position_ids",
    "embeddings.token_type_ids",
];

/// Files copied beside the package when `-o` is a directory, so an app can tokenize.
const SIDE_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

/// Which upstream model the folder holds; decides module names and position ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Bert,
    DistilBert,
    Roberta,
}

impl Flavor {
    /// The flavor of a `model_type`.
    pub fn of(model_type: &str) -> Option<Flavor> {
        match model_type {
            "bert" => Some(Flavor::Bert),
            "distilbert" => Some(Flavor::DistilBert),
            "roberta" => Some(Flavor::Roberta),
            _ => None,
        }
    }

    /// The module task-head checkpoints put the encoder under (`bert.encoder.layer.0…`).
    pub fn base_prefix(self) -> &'static str {
        match self {
            Flavor::Bert => "bert",
            Flavor::DistilBert => "distilbert",
            Flavor::Roberta => "roberta",
        }
    }

    /// File stem of the package when `-o` is a directory.
    fn package_name(self) -> &'static str {
        match self {
            Flavor::Bert => "Bert",
            Flavor::DistilBert => "DistilBert",
            Flavor::Roberta => "Roberta",
        }
    }
}

/// The feed-forward activation (`hidden_act`, DistilBERT `activation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact, erf form.
    GeluExact,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
    Silu,
}

/// transformers `ACT2FN` names we build, and what each is.
pub const ACTIVATIONS: &[(&str, Activation)] = &[
    ("gelu", Activation::GeluExact),
    ("gelu_new", Activation::GeluTanh),
    ("gelu_pytorch_tanh", Activation::GeluTanh),
    ("relu", Activation::Relu),
    ("silu", Activation::Silu),
    ("swish", Activation::Silu),
];

/// The parts of `config.json` the forward pass depends on.
#[derive(Clone, Debug)]
pub struct Config {
    pub flavor: Flavor,
    /// C: `hidden_size` (DistilBERT `dim`).
    pub hidden: usize,
    /// `num_attention_heads` (`n_heads`).
    pub heads: usize,
    /// `num_hidden_layers` (`n_layers`).
    pub layers: usize,
    /// Feed-forward width: `intermediate_size` (`hidden_dim`).
    pub intermediate: usize,
    /// `vocab_size`: rows of the word-embedding table.
    pub vocab: usize,
    /// `max_position_embeddings`: rows of the position table.
    pub max_positions: usize,
    /// `type_vocab_size`; 0 for DistilBERT, which has no token types.
    pub type_vocab: usize,
    /// `layer_norm_eps` of every LayerNorm.
    pub eps: f64,
    /// `hidden_act` (`activation`).
    pub activation: Activation,
    /// RoBERTa only: `pad_token_id`; positions count from it + 1 and pads get it.
    pub padding_idx: Option<usize>,
}

impl Config {
    /// Reads the config of `folder` (`model_type` must be a BERT flavor). A missing or
    /// unsupported setting is a [`HfError::Config`] naming the key.
    pub fn read(folder: &Folder) -> Result<Config, HfError> {
        let model_type = folder.str("model_type").unwrap_or_default();
        let flavor = Flavor::of(model_type).ok_or_else(|| folder.config_error(format!("model_type `{model_type}` is not a BERT flavor")))?;
        let (act_key, c) = match flavor {
            Flavor::DistilBert => (
                "activation",
                Config {
                    flavor,
                    hidden: folder.usize("dim")?,
                    heads: folder.usize("n_heads")?,
                    layers: folder.usize("n_layers")?,
                    intermediate: folder.usize("hidden_dim")?,
                    vocab: folder.usize("vocab_size")?,
                    max_positions: folder.usize("max_position_embeddings")?,
                    type_vocab: 0,
                    eps: DISTILBERT_LAYER_NORM_EPS,
                    activation: Activation::GeluExact,
                    padding_idx: None,
                },
            ),
            Flavor::Bert | Flavor::Roberta => {
                if let Some(p) = folder.str("position_embedding_type").filter(|p| *p != "absolute") {
                    return Err(folder.config_error(format!("position_embedding_type `{p}` is not supported (only `absolute`)")));
                }
                (
                    "hidden_act",
                    Config {
                        flavor,
                        hidden: folder.usize("hidden_size")?,
                        heads: folder.usize("num_attention_heads")?,
                        layers: folder.usize("num_hidden_layers")?,
                        intermediate: folder.usize("intermediate_size")?,
                        vocab: folder.usize("vocab_size")?,
                        max_positions: folder.usize("max_position_embeddings")?,
                        type_vocab: folder.usize("type_vocab_size")?,
                        eps: folder.f64("layer_norm_eps")?,
                        activation: Activation::GeluExact,
                        padding_idx: if flavor == Flavor::Roberta { Some(folder.usize("pad_token_id")?) } else { None },
                    },
                )
            }
        };
        let act = folder.str(act_key).ok_or_else(|| folder.config_error(format!("`{act_key}` is missing or not a string")))?;
        let activation = ACTIVATIONS.iter().find(|(n, _)| *n == act).map(|(_, a)| *a).ok_or_else(|| {
            let known: Vec<&str> = ACTIVATIONS.iter().map(|(n, _)| *n).collect();
            folder.config_error(format!("`{act_key}` `{act}` is not supported ({})", known.join(", ")))
        })?;
        if c.heads == 0 || c.hidden == 0 || c.hidden % c.heads != 0 {
            return Err(folder.config_error(format!("hidden size {} is not a positive multiple of {} attention heads", c.hidden, c.heads)));
        }
        Ok(Config { activation, ..c })
    }

    /// Channels per attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// The longest sequence the position table covers (RoBERTa's starts at padding_idx + 1).
    pub fn max_seq_len(&self) -> usize {
        self.max_positions.saturating_sub(self.padding_idx.map_or(0, |p| p + 1))
    }
}

/// A Linear layer: weight (C_out, C_in), bias (C_out,), as stored.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// A LayerNorm's gamma (`weight`) and beta (`bias`), each (C,).
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// `embeddings`: word, position and (BERT, RoBERTa) token-type tables, then a LayerNorm.
pub struct Embeddings {
    pub word: Tensor,
    pub position: Tensor,
    pub token_type: Option<Tensor>,
    pub norm: LayerNorm,
}

/// One encoder layer (post-norm): self-attention + residual + norm, feed-forward + residual + norm.
pub struct Layer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attention_out: Linear,
    pub attention_norm: LayerNorm,
    pub ffn_in: Linear,
    pub ffn_out: Linear,
    pub output_norm: LayerNorm,
}

/// The whole encoder: config and weights (views of the mapped safetensors).
pub struct Encoder {
    pub config: Config,
    pub embeddings: Embeddings,
    /// `encoder.layer.N` (DistilBERT `transformer.layer.N`), in order.
    pub layers: Vec<Layer>,
}

/// A float tensor `name` of `scope` with `shape` (an integer tensor there is an error naming
/// the folder and the tensor).
fn float(scope: &Scope, name: &str, shape: &[usize]) -> Result<Tensor, HfError> {
    let t = scope.get(name, shape)?;
    if !t.dtype().is_float() {
        return Err(HfError::file(&scope.dir(), format!("tensor `{}` has dtype {}, expected a float type", scope.path(name), t.dtype())));
    }
    Ok(t)
}

impl Linear {
    fn load(s: &Scope, c_out: usize, c_in: usize) -> Result<Linear, HfError> {
        Ok(Linear { weight: float(s, "weight", &[c_out, c_in])?, bias: float(s, "bias", &[c_out])? })
    }
}

impl LayerNorm {
    fn load(s: &Scope, c: usize) -> Result<LayerNorm, HfError> {
        Ok(LayerNorm { weight: float(s, "weight", &[c])?, bias: float(s, "bias", &[c])? })
    }
}

impl Encoder {
    /// Reads the config and looks up every weight by its upstream module path (under the
    /// `bert.`/`distilbert.`/`roberta.` prefix when the checkpoint has a task head). Missing,
    /// mis-shaped or non-finite tensors, and tensors nobody uses outside [`IGNORED_PREFIXES`],
    /// are errors naming them.
    pub fn load(folder: &Folder) -> Result<Encoder, HfError> {
        let c = Config::read(folder)?;
        let w = &folder.weights;
        let base = c.flavor.base_prefix();
        let root = if !w.contains("embeddings.word_embeddings.weight") && w.contains(&format!("{base}.embeddings.word_embeddings.weight")) {
            w.at(base)
        } else {
            w.at("")
        };
        let (h, i) = (c.hidden, c.intermediate);
        let e = root.at("embeddings");
        let embeddings = Embeddings {
            word: float(&e.at("word_embeddings"), "weight", &[c.vocab, h])?,
            position: float(&e.at("position_embeddings"), "weight", &[c.max_positions, h])?,
            token_type: if c.type_vocab > 0 { Some(float(&e.at("token_type_embeddings"), "weight", &[c.type_vocab, h])?) } else { None },
            norm: LayerNorm::load(&e.at("LayerNorm"), h)?,
        };
        let mut layers = Vec::with_capacity(c.layers);
        for n in 0..c.layers {
            layers.push(match c.flavor {
                Flavor::Bert | Flavor::Roberta => {
                    let l = root.at("encoder.layer").at(&n.to_string());
                    let a = l.at("attention");
                    Layer {
                        query: Linear::load(&a.at("self.query"), h, h)?,
                        key: Linear::load(&a.at("self.key"), h, h)?,
                        value: Linear::load(&a.at("self.value"), h, h)?,
                        attention_out: Linear::load(&a.at("output.dense"), h, h)?,
                        attention_norm: LayerNorm::load(&a.at("output.LayerNorm"), h)?,
                        ffn_in: Linear::load(&l.at("intermediate.dense"), i, h)?,
                        ffn_out: Linear::load(&l.at("output.dense"), h, i)?,
                        output_norm: LayerNorm::load(&l.at("output.LayerNorm"), h)?,
                    }
                }
                Flavor::DistilBert => {
                    let l = root.at("transformer.layer").at(&n.to_string());
                    let a = l.at("attention");
                    Layer {
                        query: Linear::load(&a.at("q_lin"), h, h)?,
                        key: Linear::load(&a.at("k_lin"), h, h)?,
                        value: Linear::load(&a.at("v_lin"), h, h)?,
                        attention_out: Linear::load(&a.at("out_lin"), h, h)?,
                        attention_norm: LayerNorm::load(&l.at("sa_layer_norm"), h)?,
                        ffn_in: Linear::load(&l.at("ffn.lin1"), i, h)?,
                        ffn_out: Linear::load(&l.at("ffn.lin2"), h, i)?,
                        output_norm: LayerNorm::load(&l.at("output_layer_norm"), h)?,
                    }
                }
            });
        }
        let base_dot = format!("{base}.");
        let extra: Vec<String> = w
            .unused()
            .into_iter()
            .filter(|n| {
                let local = n.strip_prefix(&base_dot).unwrap_or(n);
                !IGNORED_PREFIXES.iter().any(|p| local.starts_with(p))
            })
            .collect();
        if !extra.is_empty() {
            return Err(HfError::ExtraTensors { dir: folder.dir.clone(), names: extra });
        }
        Ok(Encoder { config: c, embeddings, layers })
    }
}

/// How sentence-transformers' Pooling module reduces the tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The first token (`pooling_mode_cls_token`).
    Cls,
    /// Mean over tokens with attention_mask 1 (`pooling_mode_mean_tokens`).
    Mean,
    /// Max over tokens with attention_mask 1 (`pooling_mode_max_tokens`).
    Max,
}

/// `1_Pooling/config.json` keys and the mode each turns on; exactly one must be true.
const POOLING_MODES: &[(&str, Option<Pooling>)] = &[
    ("pooling_mode_cls_token", Some(Pooling::Cls)),
    ("pooling_mode_mean_tokens", Some(Pooling::Mean)),
    ("pooling_mode_max_tokens", Some(Pooling::Max)),
    ("pooling_mode_mean_sqrt_len_tokens", None),
    ("pooling_mode_weightedmean_tokens", None),
    ("pooling_mode_lasttoken", None),
];

/// The sentence-transformers modules after the transformer: pooling, then optional L2 norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentenceHead {
    /// How `1_Pooling/config.json` reduces the tokens.
    pub pooling: Pooling,
    /// Whether `modules.json` lists a Normalize module (L2 norm of the pooled vector).
    pub normalize: bool,
}

/// sentence-transformers' list of modules, in order.
pub const MODULES_FILE: &str = "modules.json";

impl SentenceHead {
    /// Reads `dir/modules.json` (absent: not a sentence-transformers folder, `None`): a
    /// Transformer at the folder root, a Pooling module (its `config.json`) and optionally a
    /// Normalize module. Other modules or pooling modes are an error naming the file.
    pub fn read(dir: &Path, hidden: usize) -> Result<Option<SentenceHead>, HfError> {
        let path = dir.join(MODULES_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let bad = |m: String| HfError::file(&path, m);
        let text = std::fs::read_to_string(&path).map_err(|e| HfError::io(&path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let modules = json.as_array().ok_or_else(|| bad("is not a list of modules".into()))?;
        let (mut pooling, mut normalize) = (None, false);
        for m in modules {
            let kind = m.get("type").and_then(|v| v.as_str()).unwrap_or_default();
            let sub = m.get("path").and_then(|v| v.as_str()).unwrap_or_default();
            match kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" if sub.is_empty() => {}
                "Transformer" => return Err(bad(format!("the Transformer module is in `{sub}`; only one at the folder root is supported"))),
                "Pooling" => pooling = Some(read_pooling(&dir.join(sub).join(super::CONFIG_FILE), hidden)?),
                "Normalize" => normalize = true,
                _ => return Err(bad(format!("module type `{kind}` is not supported (Transformer, Pooling, Normalize)"))),
            }
        }
        let pooling = pooling.ok_or_else(|| bad("lists no Pooling module".into()))?;
        Ok(Some(SentenceHead { pooling, normalize }))
    }
}

fn read_pooling(path: &Path, hidden: usize) -> Result<Pooling, HfError> {
    let text = std::fs::read_to_string(path).map_err(|e| HfError::io(path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| HfError::file(path, format!("not valid JSON: {e}")))?;
    if let Some(d) = json.get("word_embedding_dimension").and_then(|v| v.as_u64()) {
        if d != hidden as u64 {
            return Err(HfError::file(path, format!("word_embedding_dimension {d} differs from the model's hidden size {hidden}")));
        }
    }
    let on: Vec<&(&str, Option<Pooling>)> = POOLING_MODES.iter().filter(|(k, _)| json.get(*k).and_then(|v| v.as_bool()) == Some(true)).collect();
    match on.as_slice() {
        [(_, Some(p))] => Ok(*p),
        [(k, None)] => Err(HfError::file(path, format!("`{k}` is not supported (cls, mean or max pooling)"))),
        _ => Err(HfError::file(path, "exactly one pooling_mode_* must be true")),
    }
}

/// Builds the package of a BERT-family folder (see the module docs for its signature).
fn build(folder: &Folder, options: &Options) -> Result<Output, HfError> {
    let encoder = Encoder::load(folder)?;
    let head = SentenceHead::read(&folder.dir, encoder.config.hidden)?;
    let seq = options.seq_len.unwrap_or(DEFAULT_SEQ_LEN);
    let max = encoder.config.max_seq_len();
    if seq == 0 || seq > max {
        return Err(folder.config_error(format!("--seq-len {seq} is outside 1..={max}, the positions max_position_embeddings covers")));
    }
    let main = Net::new(&encoder, options, seq).build(head)?;
    let mut model = Model::new(Program::with_main(main));
    model.metadata.short_description =
        format!("{} encoder converted from {}", encoder.config.flavor.package_name(), folder.dir.display());
    for (name, what) in [
        (INPUT_IDS, format!("token ids, int32 (1, {seq})")),
        (ATTENTION_MASK, format!("1 for real tokens, 0 for padding, int32 (1, {seq})")),
        (LAST_HIDDEN_STATE, format!("hidden state per token in the ANE layout (1, C, 1, {seq}): channels on axis 1, tokens last; transformers' (1, S, C) is its transpose")),
        (SENTENCE_EMBEDDING, "pooled sentence embedding (1, C), as sentence-transformers computes it".to_string()),
    ] {
        model.feature_descriptions.insert(name.to_string(), what);
    }
    let side_files = SIDE_FILES.iter().map(|f| folder.dir.join(f)).filter(|p| p.is_file()).collect::<Vec<PathBuf>>();
    Ok(Output { packages: vec![Built { name: encoder.config.flavor.package_name().to_string(), model }], side_files })
}

/// Name of the token-id input.
pub const INPUT_IDS: &str = "input_ids";
/// Name of the attention-mask input.
pub const ATTENTION_MASK: &str = "attention_mask";
/// Name of the per-token output, (1, C, 1, S).
pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";
/// Name of the pooled output of sentence-transformers folders, (1, C).
pub const SENTENCE_EMBEDDING: &str = "sentence_embedding";

/// The MIL being built for one encoder.
struct Net<'e> {
    b: Builder,
    enc: &'e Encoder,
    /// Compute and weight dtype.
    dt: DType,
    seq: usize,
}

/// `w` in dtype `dt`: fp32 → fp16 stays a lazy view of the mapped file; other mixes are copied.
fn in_dtype(w: &Tensor, dt: DType) -> Tensor {
    match (w.dtype(), dt, w.to_f32_vec()) {
        (from, to, _) if from == to => w.clone(),
        (DType::F32, DType::F16, _) => Tensor::f16_of(w),
        (_, DType::F16, Some(v)) => Tensor::from_f32_as_f16(w.shape(), &v),
        (_, _, Some(v)) => Tensor::from_f32(w.shape(), &v),
        (_, _, None) => w.clone(),
    }
}

impl<'e> Net<'e> {
    fn new(enc: &'e Encoder, options: &Options, seq: usize) -> Net<'e> {
        let mut b = Builder::new(options.opset);
        b.fold_constants(true);
        let dt = if options.precision == DType::F16 { DType::F16 } else { DType::F32 };
        Net { b, enc, dt, seq }
    }

    fn scalar(&self, v: f32) -> Tensor {
        Tensor::float_scalar(self.dt, v)
    }

    /// A weight as a `const` in the compute dtype.
    fn weight(&mut self, hint: &str, w: &Tensor) -> Var {
        let t = in_dtype(w, self.dt);
        self.b.konst(hint, t)
    }

    /// A Linear on (1, C_in, 1, S) as a 1×1 `conv` whose weight views (C_out, C_in) as
    /// (C_out, C_in, 1, 1).
    fn conv(&mut self, hint: &str, x: &Var, l: &Linear) -> Result<Var, HfError> {
        let w = match l.weight.shape() {
            &[c_out, c_in] => l.weight.reshaped(&[c_out, c_in, 1, 1]).unwrap_or_else(|| l.weight.clone()),
            _ => l.weight.clone(),
        };
        let w = self.weight(&format!("{hint}_weight"), &w);
        let bias = self.weight(&format!("{hint}_bias"), &l.bias);
        Ok(self
            .b
            .op(&linear::CONV, hint)
            .arg("x", x)
            .arg("weight", &w)
            .arg("bias", &bias)
            .konst("strides", Tensor::i32_vec(&[1, 1]))
            .konst("pad_type", Tensor::string("valid"))
            .konst("dilations", Tensor::i32_vec(&[1, 1]))
            .konst("groups", Tensor::i32_scalar(1))
            .build1()?)
    }

    /// LayerNorm over the channel axis of (1, C, 1, S).
    fn layer_norm(&mut self, hint: &str, x: &Var, n: &LayerNorm) -> Result<Var, HfError> {
        let gamma = self.weight(&format!("{hint}_gamma"), &n.weight);
        let beta = self.weight(&format!("{hint}_beta"), &n.bias);
        let eps = self.scalar(self.enc.config.eps as f32);
        Ok(super::channel_layer_norm(&mut self.b, hint, x, &gamma, &beta, eps)?)
    }

    fn binary(&mut self, def: &'static crate::mil::ops::OpDef, hint: &str, x: &Var, y: &Var) -> Result<Var, HfError> {
        Ok(self.b.op(def, hint).arg("x", x).arg("y", y).build1()?)
    }

    fn with_const(&mut self, def: &'static crate::mil::ops::OpDef, hint: &str, x: &Var, y: Tensor) -> Result<Var, HfError> {
        Ok(self.b.op(def, hint).arg("x", x).konst("y", y).build1()?)
    }

    fn reshape(&mut self, hint: &str, x: &Var, dims: &[usize]) -> Result<Var, HfError> {
        let dims: Vec<i32> = dims.iter().map(|&d| d as i32).collect();
        Ok(self.b.op(&shape::RESHAPE, hint).arg("x", x).konst("shape", Tensor::i32_vec(&dims)).build1()?)
    }

    fn gather(&mut self, hint: &str, table: &Var, indices: &Var) -> Result<Var, HfError> {
        Ok(self.b.op(&shape::GATHER, hint).arg("x", table).arg("indices", indices).konst("axis", Tensor::i32_scalar(0)).build1()?)
    }

    fn cast(&mut self, hint: &str, x: &Var, to: DType) -> Result<Var, HfError> {
        Ok(self.b.op(&ew::CAST, hint).arg("x", x).konst("dtype", Tensor::string(to.name())).build1()?)
    }

    /// `embeddings`: word + position + token type 0 as (S, C) rows (gathered from the flat ids,
    /// so no rank-3 activation has channels last), transposed to (C, S), viewed as (1, C, 1, S),
    /// then LayerNorm.
    fn embeddings(&mut self, ids: &Var) -> Result<Var, HfError> {
        let (enc, seq) = (self.enc, self.seq);
        let e = &enc.embeddings;
        let ids = self.reshape("input_ids_flat", ids, &[seq])?;
        let word = self.weight("word_embeddings", &e.word);
        let mut x = self.gather("word_embedded", &word, &ids)?;
        let table = self.weight("position_embeddings", &e.position);
        let position_ids = match enc.config.padding_idx {
            // RoBERTa `create_position_ids_from_input_ids`: cumsum of non-pad tokens, times the
            // non-pad mask, plus padding_idx (pads get padding_idx itself).
            Some(pad) => {
                let real = self.b.op(&ew::NOT_EQUAL, "not_pad").arg("x", &ids).konst("y", Tensor::i32_scalar(pad as i32)).build1()?;
                let real = self.cast("not_pad_i32", &real, DType::I32)?;
                let count = self.b.op(&shape::CUMSUM, "pad_cumsum").arg("x", &real).konst("axis", Tensor::i32_scalar(0)).build1()?;
                let count = self.binary(&ew::MUL, "pad_cumsum_masked", &count, &real)?;
                self.with_const(&ew::ADD, "position_ids", &count, Tensor::i32_scalar(pad as i32))?
            }
            None => self.b.konst("position_ids", Tensor::i32_vec(&(0..seq as i32).collect::<Vec<_>>())),
        };
        let positions = self.gather("position_embedded", &table, &position_ids)?;
        x = self.binary(&ew::ADD, "word_position", &x, &positions)?;
        if let Some(tt) = &e.token_type {
            let table = self.weight("token_type_embeddings", tt);
            let zero = self.b.konst("token_type_ids", Tensor::i32_vec(&[0]));
            let row = self.gather("token_type_embedded", &table, &zero)?;
            x = self.binary(&ew::ADD, "embedded", &x, &row)?;
        }
        let x = self.b.op(&shape::TRANSPOSE, "embedded_cs").arg("x", &x).konst("perm", Tensor::i32_vec(&[1, 0])).build1()?;
        let x = self.reshape("embedded_bc1s", &x, &[1, enc.config.hidden, 1, seq])?;
        self.layer_norm("embeddings_norm", &x, &e.norm)
    }

    /// The additive attention mask (1, 1, S): 0 for real keys, [`MASK_NEG`] for padding;
    /// it broadcasts over the query axis of (1, S_q, S_k) scores.
    fn mask_bias(&mut self, mask: &Var) -> Result<Var, HfError> {
        let m = self.cast("mask_float", mask, self.dt)?;
        let one = self.b.konst("mask_one", self.scalar(1.0));
        let inv = self.binary(&ew::SUB, "mask_inverted", &one, &m)?;
        let bias = self.with_const(&ew::MUL, "mask_bias_flat", &inv, self.scalar(MASK_NEG))?;
        self.reshape("mask_bias", &bias, &[1, 1, self.seq])
    }

    /// Self-attention split per head on (1, C, 1, S); returns the context (1, C, 1, S) before
    /// the output projection.
    fn attention(&mut self, p: &str, x: &Var, layer: &Layer, mask: &Var) -> Result<Var, HfError> {
        let (heads, d, seq, c) = (self.enc.config.heads, self.enc.config.head_dim(), self.seq, self.enc.config.hidden);
        let q = self.conv(&format!("{p}_query"), x, &layer.query)?;
        let q = self.with_const(&ew::MUL, &format!("{p}_query_scaled"), &q, self.scalar(1.0 / (d as f32).sqrt()))?;
        let k = self.conv(&format!("{p}_key"), x, &layer.key)?;
        let v = self.conv(&format!("{p}_value"), x, &layer.value)?;
        let mut outs = Vec::with_capacity(heads);
        for h in 0..heads {
            let mut split = |name: &str, t: &Var| -> Result<Var, HfError> {
                let hint = format!("{p}_{name}_h{h}");
                let part = self
                    .b
                    .op(&shape::SLICE_BY_INDEX, &hint)
                    .arg("x", t)
                    .konst("begin", Tensor::i32_vec(&[0, (h * d) as i32, 0, 0]))
                    .konst("end", Tensor::i32_vec(&[1, ((h + 1) * d) as i32, 1, seq as i32]))
                    .build1()?;
                self.reshape(&format!("{hint}_bds"), &part, &[1, d, seq])
            };
            let (qh, kh, vh) = (split("q", &q)?, split("k", &k)?, split("v", &v)?);
            let scores = self
                .b
                .op(&linear::MATMUL, &format!("{p}_scores_h{h}"))
                .arg("x", &qh)
                .arg("y", &kh)
                .konst("transpose_x", Tensor::bool_scalar(true))
                .konst("transpose_y", Tensor::bool_scalar(false))
                .build1()?;
            let scores = self.binary(&ew::ADD, &format!("{p}_scores_masked_h{h}"), &scores, mask)?;
            let probs = self.b.op(&ew::SOFTMAX, &format!("{p}_probs_h{h}")).arg("x", &scores).konst("axis", Tensor::i32_scalar(-1)).build1()?;
            let out = self
                .b
                .op(&linear::MATMUL, &format!("{p}_context_h{h}"))
                .arg("x", &vh)
                .arg("y", &probs)
                .konst("transpose_x", Tensor::bool_scalar(false))
                .konst("transpose_y", Tensor::bool_scalar(true))
                .build1()?;
            outs.push(out);
        }
        let ctx = self.b.op(&shape::CONCAT, &format!("{p}_context")).args("values", &outs).konst("axis", Tensor::i32_scalar(1)).build1()?;
        self.reshape(&format!("{p}_context_bc1s"), &ctx, &[1, c, 1, seq])
    }

    fn activation(&mut self, hint: &str, x: &Var) -> Result<Var, HfError> {
        let op = match self.enc.config.activation {
            Activation::GeluExact => self.b.op(&ew::GELU, hint).arg("x", x).konst("mode", Tensor::string("EXACT")),
            Activation::GeluTanh => self.b.op(&ew::GELU, hint).arg("x", x).konst("mode", Tensor::string("TANH_APPROXIMATION")),
            Activation::Relu => self.b.op(&ew::RELU, hint).arg("x", x),
            Activation::Silu => self.b.op(&ew::SILU, hint).arg("x", x),
        };
        Ok(op.build1()?)
    }

    /// One post-norm encoder layer on (1, C, 1, S).
    fn layer(&mut self, n: usize, x: &Var, mask: &Var) -> Result<Var, HfError> {
        let enc = self.enc;
        let layer = &enc.layers[n];
        let p = format!("layer{n}");
        let ctx = self.attention(&p, x, layer, mask)?;
        let a = self.conv(&format!("{p}_attention_out"), &ctx, &layer.attention_out)?;
        let a = self.binary(&ew::ADD, &format!("{p}_attention_residual"), &a, x)?;
        let x = self.layer_norm(&format!("{p}_attention_norm"), &a, &layer.attention_norm)?;
        let f = self.conv(&format!("{p}_ffn_in"), &x, &layer.ffn_in)?;
        let f = self.activation(&format!("{p}_ffn_act"), &f)?;
        let f = self.conv(&format!("{p}_ffn_out"), &f, &layer.ffn_out)?;
        let f = self.binary(&ew::ADD, &format!("{p}_ffn_residual"), &f, &x)?;
        self.layer_norm(&format!("{p}_output_norm"), &f, &layer.output_norm)
    }

    /// sentence-transformers Pooling (+ Normalize) of (1, C, 1, S) into (1, C).
    fn sentence(&mut self, h: &Var, mask: &Var, head: SentenceHead) -> Result<Var, HfError> {
        let (c, seq) = (self.enc.config.hidden, self.seq);
        let m = self.cast("pool_mask", mask, self.dt)?;
        let m = self.reshape("pool_mask_bc1s", &m, &[1, 1, 1, seq])?;
        let token_axes = Tensor::i32_vec(&[2, 3]);
        let pooled = match head.pooling {
            Pooling::Cls => {
                let first = self
                    .b
                    .op(&shape::SLICE_BY_INDEX, "pool_first_token")
                    .arg("x", h)
                    .konst("begin", Tensor::i32_vec(&[0, 0, 0, 0]))
                    .konst("end", Tensor::i32_vec(&[1, c as i32, 1, 1]))
                    .build1()?;
                self.reshape("pooled", &first, &[1, c])?
            }
            Pooling::Mean => {
                let masked = self.binary(&ew::MUL, "pool_masked", h, &m)?;
                let sum = self.b.op(&reduce::REDUCE_SUM, "pool_sum").arg("x", &masked).konst("axes", token_axes.clone()).konst("keep_dims", Tensor::bool_scalar(false)).build1()?;
                let count = self.b.op(&reduce::REDUCE_SUM, "pool_count").arg("x", &m).konst("axes", token_axes).konst("keep_dims", Tensor::bool_scalar(false)).build1()?;
                // sentence-transformers clamps the count at 1e-9, which fp16 cannot hold; the
                // count is a whole number, so clamping at 1 agrees whenever a token is unmasked.
                let count = self.with_const(&ew::MAXIMUM, "pool_count_clamped", &count, self.scalar(1.0))?;
                self.binary(&ew::REAL_DIV, "pooled", &sum, &count)?
            }
            Pooling::Max => {
                let one = self.b.konst("pool_one", self.scalar(1.0));
                let inv = self.binary(&ew::SUB, "pool_mask_inverted", &one, &m)?;
                let bias = self.with_const(&ew::MUL, "pool_mask_bias", &inv, self.scalar(MASK_NEG))?;
                let masked = self.binary(&ew::ADD, "pool_masked", h, &bias)?;
                self.b.op(&reduce::REDUCE_MAX, "pooled").arg("x", &masked).konst("axes", token_axes).konst("keep_dims", Tensor::bool_scalar(false)).build1()?
            }
        };
        if !head.normalize {
            return Ok(pooled);
        }
        // x / ‖x‖, computed as y / ‖y‖ with y = x / max|x| so the sum of squares stays ≤ C and
        // cannot overflow fp16.
        let abs = self.b.op(&ew::ABS, "norm_abs").arg("x", &pooled).build1()?;
        let peak = self.b.op(&reduce::REDUCE_MAX, "norm_peak").arg("x", &abs).konst("axes", Tensor::i32_vec(&[1])).konst("keep_dims", Tensor::bool_scalar(true)).build1()?;
        let peak = self.with_const(&ew::MAXIMUM, "norm_peak_clamped", &peak, self.scalar(FP16_MIN_NORMAL))?;
        let y = self.binary(&ew::REAL_DIV, "norm_scaled", &pooled, &peak)?;
        let sq = self.binary(&ew::MUL, "norm_square", &y, &y)?;
        let sum = self.b.op(&reduce::REDUCE_SUM, "norm_sum").arg("x", &sq).konst("axes", Tensor::i32_vec(&[1])).konst("keep_dims", Tensor::bool_scalar(true)).build1()?;
        let len = self.b.op(&ew::SQRT, "norm_length").arg("x", &sum).build1()?;
        self.binary(&ew::REAL_DIV, "normalized", &y, &len)
    }

    /// The whole `main` function; outputs named [`LAST_HIDDEN_STATE`] (and [`SENTENCE_EMBEDDING`]).
    fn build(mut self, head: Option<SentenceHead>) -> Result<crate::mil::Function, HfError> {
        let ids = self.b.input(INPUT_IDS, TensorType::new(DType::I32, &[1, self.seq]));
        let mask = self.b.input(ATTENTION_MASK, TensorType::new(DType::I32, &[1, self.seq]));
        let mut x = self.embeddings(&ids)?;
        let bias = self.mask_bias(&mask)?;
        for n in 0..self.enc.layers.len() {
            x = self.layer(n, &x, &bias)?;
        }
        let mut outputs = vec![(LAST_HIDDEN_STATE, x.clone())];
        if let Some(head) = head {
            outputs.push((SENTENCE_EMBEDDING, self.sentence(&x, &mask, head)?));
        }
        // fp16 model I/O needs iOS16 (as coremltools does); before it, outputs are cast to fp32.
        let fp32_io = self.dt == DType::F16 && self.b.opset() < Opset::Ios16;
        let mut vars = Vec::with_capacity(outputs.len());
        for (name, v) in &outputs {
            vars.push(if fp32_io { self.cast(&format!("{name}_fp32"), v, DType::F32)? } else { v.clone() });
        }
        let mut f = self.b.finish(&vars);
        for ((name, _), v) in outputs.iter().zip(&vars) {
            if !f.block.defines(name) {
                f.block.rename(&v.0, name);
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::weights::SINGLE_FILE;
    use crate::interp::{self, Array};
    use crate::passes::testing::values;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    /// A tiny DistilBERT folder (C 8, 2 heads, 1 layer) with a task head, written by hand.
    fn tiny_distilbert(dir: &Path, extra: &[(&str, &[usize])]) {
        let (c, i, v, p) = (8usize, 16usize, 20usize, 6usize);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("distilbert.embeddings.word_embeddings.weight".into(), vec![v, c]),
            ("distilbert.embeddings.position_embeddings.weight".into(), vec![p, c]),
            ("distilbert.embeddings.LayerNorm.weight".into(), vec![c]),
            ("distilbert.embeddings.LayerNorm.bias".into(), vec![c]),
            ("pre_classifier.weight".into(), vec![c, c]),
        ];
        let l = "distilbert.transformer.layer.0";
        for m in ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"] {
            shapes.push((format!("{l}.{m}.weight"), vec![c, c]));
            shapes.push((format!("{l}.{m}.bias"), vec![c]));
        }
        shapes.extend([
            (format!("{l}.ffn.lin1.weight"), vec![i, c]),
            (format!("{l}.ffn.lin1.bias"), vec![i]),
            (format!("{l}.ffn.lin2.weight"), vec![c, i]),
            (format!("{l}.ffn.lin2.bias"), vec![c]),
        ]);
        for n in ["sa_layer_norm", "output_layer_norm"] {
            shapes.push((format!("{l}.{n}.weight"), vec![c]));
            shapes.push((format!("{l}.{n}.bias"), vec![c]));
        }
        shapes.extend(extra.iter().map(|(n, s)| (n.to_string(), s.to_vec())));
        let bytes: Vec<Vec<u8>> = shapes
            .iter()
            .enumerate()
            .map(|(k, (_, s))| values(s.iter().product(), k as u32 + 1).iter().flat_map(|v| (v / 2.0).to_le_bytes()).collect())
            .collect();
        let views = shapes.iter().zip(&bytes).map(|((n, s), b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()));
        safetensors::serialize_to_file(views, None, &dir.join(SINGLE_FILE)).unwrap();
        let config = serde_json::json!({"model_type": "distilbert", "dim": c, "n_heads": 2, "n_layers": 1,
            "hidden_dim": i, "vocab_size": v, "max_position_embeddings": p, "activation": "gelu"});
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    }

    fn options(seq: usize) -> Options {
        Options { opset: Opset::Ios16, precision: DType::F32, seq_len: Some(seq) }
    }

    #[test]
    fn builds_ane_layout_and_ignores_task_heads() {
        let dir = tempfile::tempdir().unwrap();
        tiny_distilbert(dir.path(), &[]);
        let out = crate::hf::build(dir.path(), &options(4)).unwrap();
        let f = out.packages[0].model.program.main().unwrap();
        assert_eq!(f.block.outputs, vec![LAST_HIDDEN_STATE.to_string()]);
        let ops: Vec<&str> = f.block.operations.iter().map(|o| o.op_type.as_str()).collect();
        assert!(!ops.contains(&"linear") && ops.iter().filter(|o| **o == "conv").count() == 6, "{ops:?}");
        let channels_last: Vec<&str> = f
            .block
            .operations
            .iter()
            .filter(|o| o.op_type != "const")
            .filter(|o| o.outputs.iter().any(|v| v.ty.tensor().rank() >= 3 && v.ty.tensor().shape.last() == Some(&crate::mil::Dim::Fixed(8))))
            .map(|o| o.name.as_str())
            .collect();
        assert!(channels_last.is_empty(), "rank ≥ 3 activations ending in the channel axis: {channels_last:?}");
        let ids = Array::int(vec![1, 4], vec![3, 7, 1, 0]);
        let mask = Array::int(vec![1, 4], vec![1, 1, 1, 0]);
        let y = interp::run(f, &[(INPUT_IDS.into(), ids), (ATTENTION_MASK.into(), mask)]).unwrap();
        assert_eq!(y[0].1.shape, vec![1, 8, 1, 4]);
    }

    #[test]
    fn refuses_extra_tensors_and_long_sequences() {
        let dir = tempfile::tempdir().unwrap();
        tiny_distilbert(dir.path(), &[("distilbert.transformer.layer.1.ffn.lin1.weight", &[2, 2])]);
        let err = crate::hf::build(dir.path(), &options(4)).err().unwrap().to_string();
        assert!(err.contains("unexpected") && err.contains("layer.1.ffn.lin1.weight"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        tiny_distilbert(dir.path(), &[]);
        let err = crate::hf::build(dir.path(), &options(7)).err().unwrap().to_string();
        assert!(err.contains("--seq-len 7") && err.contains("config.json"), "{err}");
    }
}
