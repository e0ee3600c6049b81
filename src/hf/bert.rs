//! BERT-family text encoders (BERT, DistilBERT, RoBERTa, and sentence-transformers folders such as
//! all-MiniLM-L6-v2 built on them) from `config.json` + safetensors, written straight into the
//! ANE layout: activations (B, C, 1, S), every Linear a 1×1 `conv`, LayerNorm over axis 1, and
//! attention split per head (`matmul(q_h, k_h, transpose_x)` → softmax on the last axis →
//! `matmul(v_h, probs, transpose_y)`, padded keys masked by `select`), so no rewrite pass is
//! needed. The layers come from the shared kit `hf::nn`; this file holds what is BERT's own:
//! config keys per flavor, module paths, post-norm wiring, RoBERTa positions and pooling.
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

use std::path::Path;

use super::nn::{Net, R};
pub use super::nn::{Activation, ACTIVATIONS};
use super::{Built, Family, Folder, HfError, Options, Output, Scope, MAX_DIM, MAX_HEADS, MAX_LAYERS, MAX_ROWS};
use crate::files::shown;
use crate::mil::builder::Var;
use crate::mil::ops::{elementwise as ew, reduce, shape};
use crate::mil::{DType, Function, Model, Program, Tensor};

/// The family entry for `hf::FAMILIES`.
pub const FAMILY: Family = Family { name: "bert", model_types: &["bert", "distilbert", "roberta"], build };

/// Sequence length S of the inputs when `--seq-len` is not given (common BERT serving length).
pub const DEFAULT_SEQ_LEN: usize = 128;

/// Added to masked tokens before max pooling: below any hidden value a LayerNorm output reaches,
/// and unlike sentence-transformers' −1e9 it stays finite in fp16 (max 65504).
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
        let flavor = Flavor::of(model_type).ok_or_else(|| folder.config_error(format!("model_type `{}` is not a BERT flavor", shown(model_type))))?;
        let (act_key, c) = match flavor {
            Flavor::DistilBert => (
                "activation",
                Config {
                    flavor,
                    hidden: folder.usize("dim", MAX_DIM)?,
                    heads: folder.usize("n_heads", MAX_HEADS)?,
                    layers: folder.usize("n_layers", MAX_LAYERS)?,
                    intermediate: folder.usize("hidden_dim", MAX_DIM)?,
                    vocab: folder.usize("vocab_size", MAX_ROWS)?,
                    max_positions: folder.usize("max_position_embeddings", MAX_ROWS)?,
                    type_vocab: 0,
                    eps: DISTILBERT_LAYER_NORM_EPS,
                    activation: Activation::GeluExact,
                    padding_idx: None,
                },
            ),
            Flavor::Bert | Flavor::Roberta => {
                if let Some(p) = folder.str("position_embedding_type").filter(|p| *p != "absolute") {
                    return Err(folder.config_error(format!("position_embedding_type `{}` is not supported (only `absolute`)", shown(p))));
                }
                (
                    "hidden_act",
                    Config {
                        flavor,
                        hidden: folder.usize("hidden_size", MAX_DIM)?,
                        heads: folder.usize("num_attention_heads", MAX_HEADS)?,
                        layers: folder.usize("num_hidden_layers", MAX_LAYERS)?,
                        intermediate: folder.usize("intermediate_size", MAX_DIM)?,
                        vocab: folder.usize("vocab_size", MAX_ROWS)?,
                        max_positions: folder.usize("max_position_embeddings", MAX_ROWS)?,
                        type_vocab: folder.usize("type_vocab_size", MAX_ROWS)?,
                        eps: folder.f64("layer_norm_eps")?,
                        activation: Activation::GeluExact,
                        padding_idx: if flavor == Flavor::Roberta { Some(folder.usize("pad_token_id", MAX_ROWS)?) } else { None },
                    },
                )
            }
        };
        let act = folder.str(act_key).ok_or_else(|| folder.config_error(format!("`{act_key}` is missing or not a string")))?;
        let activation = Activation::named(act).ok_or_else(|| {
            folder.config_error(format!("`{act_key}` `{}` is not supported ({})", shown(act), Activation::names().join(", ")))
        })?;
        let (hidden_key, heads_key) = match flavor {
            Flavor::DistilBert => ("dim", "n_heads"),
            Flavor::Bert | Flavor::Roberta => ("hidden_size", "num_attention_heads"),
        };
        if c.heads == 0 || c.hidden == 0 || c.hidden % c.heads != 0 {
            return Err(folder.config_error(format!("`{hidden_key}` {} is not a positive multiple of `{heads_key}` {}", c.hidden, c.heads)));
        }
        // The LayerNorm epsilon is a compute-dtype const: it must be a positive, finite f32.
        if !(c.eps > 0.0 && (c.eps as f32).is_finite()) {
            return Err(folder.config_error(format!("`layer_norm_eps` {} is not a positive finite number", c.eps)));
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

/// An `nn.Linear`: weight (C_out, C_in), bias (C_out,), as stored.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// An `nn.LayerNorm`: gamma (`weight`) and beta (`bias`), each (C,).
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// `BertEmbeddings` / `RobertaEmbeddings` / DistilBERT `Embeddings` (module `embeddings`):
/// word, position and (BERT, RoBERTa) token-type tables, then a LayerNorm.
pub struct Embeddings {
    pub word: Tensor,
    pub position: Tensor,
    pub token_type: Option<Tensor>,
    pub norm: LayerNorm,
}

/// `BertLayer` (DistilBERT `TransformerBlock`), post-norm: `BertAttention` (`BertSelfAttention`
/// q/k/v + `BertSelfOutput` dense, residual, LayerNorm), then `BertIntermediate` (dense,
/// activation) and `BertOutput` (dense, residual, LayerNorm).
pub struct Layer {
    /// `attention.self.query` (`attention.q_lin`).
    pub query: Linear,
    /// `attention.self.key` (`attention.k_lin`).
    pub key: Linear,
    /// `attention.self.value` (`attention.v_lin`).
    pub value: Linear,
    /// `attention.output.dense` (`attention.out_lin`).
    pub attention_out: Linear,
    /// `attention.output.LayerNorm` (`sa_layer_norm`).
    pub attention_norm: LayerNorm,
    /// `intermediate.dense` (`ffn.lin1`).
    pub ffn_in: Linear,
    /// `output.dense` (`ffn.lin2`).
    pub ffn_out: Linear,
    /// `output.LayerNorm` (`output_layer_norm`).
    pub output_norm: LayerNorm,
}

/// `BertModel` without its pooler (DistilBERT `DistilBertModel`): config, embeddings and the
/// encoder layers (views of the mapped safetensors).
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

    /// This layer as a 1×1 `conv` on (1, C_in, 1, S).
    fn build(&self, net: &mut Net, hint: &str, x: &Var) -> R<Var> {
        net.linear_of(hint, x, &self.weight, Some(&self.bias), 1.0, hint)
    }
}

impl LayerNorm {
    fn load(s: &Scope, c: usize) -> Result<LayerNorm, HfError> {
        Ok(LayerNorm { weight: float(s, "weight", &[c])?, bias: float(s, "bias", &[c])? })
    }

    /// This norm over the channel axis of (1, C, 1, S).
    fn build(&self, net: &mut Net, hint: &str, x: &Var, eps: f64) -> R<Var> {
        net.layer_norm_of(hint, x, &self.weight, &self.bias, eps as f32, hint)
    }
}

impl Embeddings {
    /// Module `e` (`embeddings`).
    fn load(e: &Scope, c: &Config) -> Result<Embeddings, HfError> {
        let h = c.hidden;
        Ok(Embeddings {
            word: float(&e.at("word_embeddings"), "weight", &[c.vocab, h])?,
            position: float(&e.at("position_embeddings"), "weight", &[c.max_positions, h])?,
            token_type: if c.type_vocab > 0 { Some(float(&e.at("token_type_embeddings"), "weight", &[c.type_vocab, h])?) } else { None },
            norm: LayerNorm::load(&e.at("LayerNorm"), h)?,
        })
    }

    /// The forward pass on `ids` (1, S): word + position + token type 0 as (S, C) rows
    /// (gathered from the flat ids, so no rank-3 activation has channels last), transposed to
    /// (C, S), viewed as (1, C, 1, S), then LayerNorm.
    fn build(&self, net: &mut Net, c: &Config, ids: &Var, seq: usize) -> R<Var> {
        let ids = net.reshape("input_ids_flat", ids, &[seq])?;
        let word = net.weight("word_embeddings", self.word.clone(), "word_embeddings")?;
        let mut x = net.embedding("word_embedded", &word, &ids)?;
        let table = net.weight("position_embeddings", self.position.clone(), "position_embeddings")?;
        let position_ids = match c.padding_idx {
            // RoBERTa `create_position_ids_from_input_ids`: cumsum of non-pad tokens, times the
            // non-pad mask, plus padding_idx (pads get padding_idx itself).
            Some(pad) => {
                let real = net.with_const(&ew::NOT_EQUAL, "not_pad", &ids, Tensor::i32_scalar(pad as i32))?;
                let real = net.cast_as("not_pad_i32", &real, DType::I32)?;
                let count = net.b.op(&shape::CUMSUM, "pad_cumsum").arg("x", &real).konst("axis", Tensor::i32_scalar(0)).build1()?;
                let count = net.binary(&ew::MUL, "pad_cumsum_masked", &count, &real)?;
                net.with_const(&ew::ADD, "position_ids", &count, Tensor::i32_scalar(pad as i32))?
            }
            None => net.b.konst("position_ids", Tensor::i32_vec(&(0..seq as i32).collect::<Vec<_>>())),
        };
        let positions = net.embedding("position_embedded", &table, &position_ids)?;
        x = net.binary(&ew::ADD, "word_position", &x, &positions)?;
        if let Some(tt) = &self.token_type {
            let table = net.weight("token_type_embeddings", tt.clone(), "token_type_embeddings")?;
            let zero = net.b.konst("token_type_ids", Tensor::i32_vec(&[0]));
            let row = net.embedding("token_type_embedded", &table, &zero)?;
            x = net.binary(&ew::ADD, "embedded", &x, &row)?;
        }
        let x = net.b.op(&shape::TRANSPOSE, "embedded_cs").arg("x", &x).konst("perm", Tensor::i32_vec(&[1, 0])).build1()?;
        let x = net.reshape("embedded_bc1s", &x, &[1, c.hidden, 1, seq])?;
        self.norm.build(net, "embeddings_norm", &x, c.eps)
    }
}

impl Layer {
    /// Layer `l` (`encoder.layer.N` or DistilBERT `transformer.layer.N`) of flavor `c.flavor`.
    fn load(l: &Scope, c: &Config) -> Result<Layer, HfError> {
        let (h, i) = (c.hidden, c.intermediate);
        let a = l.at("attention");
        Ok(match c.flavor {
            Flavor::Bert | Flavor::Roberta => Layer {
                query: Linear::load(&a.at("self").at("query"), h, h)?,
                key: Linear::load(&a.at("self").at("key"), h, h)?,
                value: Linear::load(&a.at("self").at("value"), h, h)?,
                attention_out: Linear::load(&a.at("output").at("dense"), h, h)?,
                attention_norm: LayerNorm::load(&a.at("output").at("LayerNorm"), h)?,
                ffn_in: Linear::load(&l.at("intermediate").at("dense"), i, h)?,
                ffn_out: Linear::load(&l.at("output").at("dense"), h, i)?,
                output_norm: LayerNorm::load(&l.at("output").at("LayerNorm"), h)?,
            },
            Flavor::DistilBert => Layer {
                query: Linear::load(&a.at("q_lin"), h, h)?,
                key: Linear::load(&a.at("k_lin"), h, h)?,
                value: Linear::load(&a.at("v_lin"), h, h)?,
                attention_out: Linear::load(&a.at("out_lin"), h, h)?,
                attention_norm: LayerNorm::load(&l.at("sa_layer_norm"), h)?,
                ffn_in: Linear::load(&l.at("ffn").at("lin1"), i, h)?,
                ffn_out: Linear::load(&l.at("ffn").at("lin2"), h, i)?,
                output_norm: LayerNorm::load(&l.at("output_layer_norm"), h)?,
            },
        })
    }

    /// `BertSelfAttention` on (1, C, 1, S), split per head; `keep` (1, 1, S) masks padded keys.
    /// Returns the context (1, C, 1, S) before `BertSelfOutput`.
    fn self_attention(&self, net: &mut Net, c: &Config, p: &str, x: &Var, keep: &Var) -> R<Var> {
        let q = self.query.build(net, &format!("{p}_query"), x)?;
        let q = net.with_scalar(&ew::MUL, &format!("{p}_query_scaled"), &q, 1.0 / (c.head_dim() as f32).sqrt())?;
        let k = self.key.build(net, &format!("{p}_key"), x)?;
        let v = self.value.build(net, &format!("{p}_value"), x)?;
        let ks = net.split_heads(&format!("{p}_k"), &k, c.heads)?;
        let vs = net.split_heads(&format!("{p}_v"), &v, c.heads)?;
        net.attention(&format!("{p}_attention"), &q, &ks, &vs, Some(keep))
    }

    /// The forward pass of this post-norm layer on (1, C, 1, S).
    fn build(&self, net: &mut Net, c: &Config, p: &str, x: &Var, keep: &Var) -> R<Var> {
        // BertAttention: self-attention, then BertSelfOutput.
        let ctx = self.self_attention(net, c, p, x, keep)?;
        let a = self.attention_out.build(net, &format!("{p}_attention_out"), &ctx)?;
        let a = net.binary(&ew::ADD, &format!("{p}_attention_residual"), &a, x)?;
        let x = self.attention_norm.build(net, &format!("{p}_attention_norm"), &a, c.eps)?;
        // BertIntermediate.
        let f = self.ffn_in.build(net, &format!("{p}_ffn_in"), &x)?;
        let f = net.activation(&format!("{p}_ffn_act"), &f, c.activation)?;
        // BertOutput.
        let f = self.ffn_out.build(net, &format!("{p}_ffn_out"), &f)?;
        let f = net.binary(&ew::ADD, &format!("{p}_ffn_residual"), &f, &x)?;
        self.output_norm.build(net, &format!("{p}_output_norm"), &f, c.eps)
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
        let probe = |root: &Scope| root.at("embeddings").at("word_embeddings").contains("weight");
        let root = if !probe(&w.at("")) && probe(&w.at(base)) { w.at(base) } else { w.at("") };
        let embeddings = Embeddings::load(&root.at("embeddings"), &c)?;
        let (layers_scope, layers_key) = match c.flavor {
            Flavor::Bert | Flavor::Roberta => (root.at("encoder").at("layer"), "num_hidden_layers"),
            Flavor::DistilBert => (root.at("transformer").at("layer"), "n_layers"),
        };
        let probe = match c.flavor {
            Flavor::Bert | Flavor::Roberta => "output.dense.weight",
            Flavor::DistilBert => "ffn.lin2.weight",
        };
        folder.check_layer_count(layers_key, c.layers, &layers_scope, probe)?;
        let mut layers = Vec::with_capacity(c.layers);
        for n in 0..c.layers {
            layers.push(Layer::load(&layers_scope.at(&n.to_string()), &c)?);
        }
        let extra: Vec<String> = w
            .unused()
            .into_iter()
            .filter(|n| {
                let local = n.strip_prefix(base).and_then(|n| n.strip_prefix('.')).unwrap_or(n);
                !IGNORED_PREFIXES.iter().any(|p| local.starts_with(p))
            })
            .collect();
        if !extra.is_empty() {
            return Err(HfError::ExtraTensors { dir: folder.dir.clone(), names: extra });
        }
        Ok(Encoder { config: c, embeddings, layers })
    }

    /// The whole `main` function over sequences of `seq` tokens; outputs named
    /// [`LAST_HIDDEN_STATE`] (and [`SENTENCE_EMBEDDING`] with a sentence-transformers head).
    fn build(&self, options: &Options, seq: usize, head: Option<SentenceHead>) -> R<Function> {
        let dtype = if options.precision == DType::F16 { DType::F16 } else { DType::F32 };
        let mut net = Net::new(options.opset, dtype);
        // Position ids, the token-type row and mask arithmetic on consts resolve at build time.
        net.b.fold_constants(true);
        let ids = net.input(INPUT_IDS, DType::I32, &[1, seq])?;
        let mask = net.input(ATTENTION_MASK, DType::I32, &[1, seq])?;
        let mut x = self.embeddings.build(&mut net, &self.config, &ids, seq)?;
        // Keys with attention_mask 0 are not attended (transformers' extended attention mask).
        let keep = net.with_const(&ew::NOT_EQUAL, "attention_keep_flat", &mask, Tensor::i32_scalar(0))?;
        let keep = net.reshape("attention_keep", &keep, &[1, 1, seq])?;
        for (n, layer) in self.layers.iter().enumerate() {
            x = layer.build(&mut net, &self.config, &format!("layer{n}"), &x, &keep)?;
        }
        let mut outputs = vec![(LAST_HIDDEN_STATE, x.clone())];
        if let Some(head) = head {
            outputs.push((SENTENCE_EMBEDDING, head.build(&mut net, self.config.hidden, seq, &x, &mask)?));
        }
        net.finish(&outputs)
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
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        let bad = |m: String| HfError::file(&path, m);
        let json = super::read_json(&crate::files::inside(dir, Path::new(MODULES_FILE))?)?;
        let modules = json.as_array().ok_or_else(|| bad("is not a list of modules".into()))?;
        let (mut pooling, mut normalize) = (None, false);
        for m in modules {
            let kind = m.get("type").and_then(|v| v.as_str()).unwrap_or_default();
            let sub = m.get("path").and_then(|v| v.as_str()).unwrap_or_default();
            match kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" if sub.is_empty() => {}
                "Transformer" => return Err(bad(format!("the Transformer module is in `{}`; only one at the folder root is supported", shown(sub)))),
                "Pooling" => pooling = Some(read_pooling(&crate::files::inside(dir, &Path::new(sub).join(super::CONFIG_FILE))?, hidden)?),
                "Normalize" => normalize = true,
                _ => return Err(bad(format!("module type `{}` is not supported (Transformer, Pooling, Normalize)", shown(kind)))),
            }
        }
        let pooling = pooling.ok_or_else(|| bad("lists no Pooling module".into()))?;
        Ok(Some(SentenceHead { pooling, normalize }))
    }

    /// sentence-transformers `Pooling` (+ `Normalize`) of the encoder output h (1, C, 1, S)
    /// into (1, C); `mask` is the int32 (1, S) attention mask.
    fn build(self, net: &mut Net, c: usize, seq: usize, h: &Var, mask: &Var) -> R<Var> {
        let dt = net.dtype;
        let m = net.cast_as("pool_mask", mask, dt)?;
        let m = net.reshape("pool_mask_bc1s", &m, &[1, 1, 1, seq])?;
        let token_axes = Tensor::i32_vec(&[2, 3]);
        let pooled = match self.pooling {
            Pooling::Cls => {
                let first = net
                    .b
                    .op(&shape::SLICE_BY_INDEX, "pool_first_token")
                    .arg("x", h)
                    .konst("begin", Tensor::i32_vec(&[0, 0, 0, 0]))
                    .konst("end", Tensor::i32_vec(&[1, c as i32, 1, 1]))
                    .build1()?;
                net.reshape("pooled", &first, &[1, c])?
            }
            Pooling::Mean => {
                let masked = net.binary(&ew::MUL, "pool_masked", h, &m)?;
                let sum = net.b.op(&reduce::REDUCE_SUM, "pool_sum").arg("x", &masked).konst("axes", token_axes.clone()).konst("keep_dims", Tensor::bool_scalar(false)).build1()?;
                let count = net.b.op(&reduce::REDUCE_SUM, "pool_count").arg("x", &m).konst("axes", token_axes).konst("keep_dims", Tensor::bool_scalar(false)).build1()?;
                // sentence-transformers clamps the count at 1e-9, which fp16 cannot hold; the
                // count is a whole number, so clamping at 1 agrees whenever a token is unmasked.
                let count = net.with_scalar(&ew::MAXIMUM, "pool_count_clamped", &count, 1.0)?;
                net.binary(&ew::REAL_DIV, "pooled", &sum, &count)?
            }
            Pooling::Max => {
                let one = net.b.konst("pool_one", net.scalar(1.0));
                let inv = net.binary(&ew::SUB, "pool_mask_inverted", &one, &m)?;
                let bias = net.with_scalar(&ew::MUL, "pool_mask_bias", &inv, MASK_NEG)?;
                let masked = net.binary(&ew::ADD, "pool_masked", h, &bias)?;
                net.b.op(&reduce::REDUCE_MAX, "pooled").arg("x", &masked).konst("axes", token_axes).konst("keep_dims", Tensor::bool_scalar(false)).build1()?
            }
        };
        if !self.normalize {
            return Ok(pooled);
        }
        // x / ‖x‖, computed as y / ‖y‖ with y = x / max|x| so the sum of squares stays ≤ C and
        // cannot overflow fp16.
        let abs = net.b.op(&ew::ABS, "norm_abs").arg("x", &pooled).build1()?;
        let peak = net.b.op(&reduce::REDUCE_MAX, "norm_peak").arg("x", &abs).konst("axes", Tensor::i32_vec(&[1])).konst("keep_dims", Tensor::bool_scalar(true)).build1()?;
        let peak = net.with_scalar(&ew::MAXIMUM, "norm_peak_clamped", &peak, FP16_MIN_NORMAL)?;
        let y = net.binary(&ew::REAL_DIV, "norm_scaled", &pooled, &peak)?;
        let sq = net.binary(&ew::MUL, "norm_square", &y, &y)?;
        let sum = net.b.op(&reduce::REDUCE_SUM, "norm_sum").arg("x", &sq).konst("axes", Tensor::i32_vec(&[1])).konst("keep_dims", Tensor::bool_scalar(true)).build1()?;
        let len = net.b.op(&ew::SQRT, "norm_length").arg("x", &sum).build1()?;
        net.binary(&ew::REAL_DIV, "normalized", &y, &len)
    }
}

/// The pooling mode of a Pooling module's `config.json` at `path` (already resolved inside the
/// folder).
fn read_pooling(path: &Path, hidden: usize) -> Result<Pooling, HfError> {
    let json = super::read_json(path)?;
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
    let main = encoder.build(options, seq, head)?;
    let mut model = Model::new(Program::with_main(main));
    model.metadata.short_description =
        format!("{} encoder converted from {}", encoder.config.flavor.package_name(), folder.dir.display());
    for (name, what) in [
        // S, not the length: a bucketed package shares these over its functions.
        (INPUT_IDS, "token ids, int32 (1, S)"),
        (ATTENTION_MASK, "1 for real tokens, 0 for padding, int32 (1, S)"),
        (LAST_HIDDEN_STATE, "hidden state per token in the ANE layout (1, C, 1, S): channels on axis 1, tokens last; transformers' (1, S, C) is its transpose"),
        (SENTENCE_EMBEDDING, "pooled sentence embedding (1, C), as sentence-transformers computes it"),
    ] {
        model.feature_descriptions.insert(name.to_string(), what.to_string());
    }
    let side_files = super::side_files(&folder.dir, SIDE_FILES)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::weights::SINGLE_FILE;
    use crate::interp::{self, Array};
    use crate::mil::Opset;
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
    fn config_layers_beyond_the_weights_are_one_config_error() {
        let dir = tempfile::tempdir().unwrap();
        tiny_distilbert(dir.path(), &[]);
        let path = dir.path().join("config.json");
        let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["n_layers"] = serde_json::json!(1000);
        std::fs::write(&path, config.to_string()).unwrap();
        let err = crate::hf::build(dir.path(), &options(4)).err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, HfError::Config { .. }) && msg.contains("`n_layers` is 1000") && msg.contains("transformer.layer.999"), "{msg}");
    }

    #[test]
    fn side_files_are_resolved_inside_the_folder() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        tiny_distilbert(&dir, &[]);
        std::fs::write(dir.join("vocab.txt"), "[PAD]\n").unwrap();
        let out = crate::hf::build(&dir, &options(4)).unwrap();
        let real = dir.canonicalize().unwrap();
        assert_eq!(out.side_files, vec![real.join("config.json"), real.join("vocab.txt")]);
        std::fs::write(outer.path().join("passwd"), "root:x:0:0").unwrap();
        std::os::unix::fs::symlink(outer.path().join("passwd"), dir.join("tokenizer.json")).unwrap();
        let msg = crate::hf::build(&dir, &options(4)).err().unwrap().to_string();
        assert!(msg.contains("tokenizer.json") && msg.contains("outside the folder"), "{msg}");
    }

    #[test]
    fn pooling_config_must_stay_inside_the_folder() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("model");
        std::fs::create_dir(&dir).unwrap();
        tiny_distilbert(&dir, &[]);
        std::fs::create_dir(outer.path().join("pool")).unwrap();
        std::fs::write(outer.path().join("pool").join("config.json"), r#"{"pooling_mode_mean_tokens": true}"#).unwrap();
        let modules = r#"[{"type": "sentence_transformers.models.Transformer", "path": ""},
            {"type": "sentence_transformers.models.Pooling", "path": "../pool"}]"#;
        std::fs::write(dir.join(MODULES_FILE), modules).unwrap();
        let msg = crate::hf::build(&dir, &options(4)).err().unwrap().to_string();
        assert!(msg.contains("outside the folder"), "{msg}");
        std::fs::create_dir(dir.join("1_Pooling")).unwrap();
        std::fs::write(dir.join("1_Pooling").join("config.json"), r#"{"pooling_mode_mean_tokens": true}"#).unwrap();
        std::fs::write(dir.join(MODULES_FILE), modules.replace("../pool", "1_Pooling")).unwrap();
        let out = crate::hf::build(&dir, &options(4)).unwrap();
        assert_eq!(out.packages[0].model.program.main().unwrap().block.outputs, vec![LAST_HIDDEN_STATE.to_string(), SENTENCE_EMBEDDING.to_string()]);
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
