//! The BERT-family forward pass in libtorch (tch) from the same safetensors `convert` reads, so
//! `validate PACKAGE --reference FOLDER` compares a package built from a Hugging Face folder with
//! what torch computes from that folder. Weights and config come from `hf::bert` ([`Encoder`],
//! [`SentenceHead`]): the same lookups and checks as the converter, but the math here is written
//! in transformers' own layout ((1, S, C) activations, `linear`, batched heads), following
//! transformers v5.23.0 `modeling_bert.py` / `modeling_distilbert.py` / `modeling_roberta.py` and
//! sentence-transformers `Pooling.py` / `Normalize.py` — so a layout mistake in the converter
//! cannot hide in both. `tests/hf_bert.rs` checks this forward against the outputs transformers
//! saved. Called by `cli::validate` when `--reference` is a folder.

use std::path::Path;

use tch::{Kind, Tensor};

use super::Error;
use crate::hf::bert::{self, Activation, Encoder, LayerNorm, Linear, Pooling, SentenceHead};
use crate::interp::Array;

/// Runs the encoder of the folder `dir` on `inputs` (`input_ids`, `attention_mask`, (1, S)) and
/// returns what the package returns: `last_hidden_state` as (1, C, 1, S) and, for
/// sentence-transformers folders, `sentence_embedding` (1, C); float32.
pub fn run(dir: &Path, inputs: &[(String, Array)]) -> Result<Vec<(String, Array)>, Error> {
    let folder = crate::hf::open(dir)?;
    let enc = Encoder::load(&folder)?;
    let head = SentenceHead::read(dir, enc.config.hidden)?;
    let input = |name: &str| {
        let (_, a) = inputs
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| Error::Input { name: name.to_string(), reason: "not given; a BERT-family folder takes input_ids and attention_mask".into() })?;
        super::to_tensor(name, a)
    };
    let (ids, mask) = (input(bert::INPUT_IDS)?, input(bert::ATTENTION_MASK)?);
    let forward_error = |e: tch::TchError| Error::Forward { path: dir.to_path_buf(), message: super::torch_message(&e) };
    let outputs = tch::no_grad(|| forward(&enc, head, &ids, &mask)).map_err(forward_error)?;
    outputs
        .into_iter()
        .enumerate()
        .map(|(index, (name, t))| {
            let a = super::to_array(&t).map_err(|reason| Error::Output { path: dir.to_path_buf(), index, reason })?;
            Ok((name.to_string(), a))
        })
        .collect()
}

/// sentence-transformers Pooling sets masked tokens to this before a max.
const POOL_MAX_MASKED: f64 = -1e9;
/// sentence-transformers Pooling clamps the token count at this before a mean.
const POOL_MIN_COUNT: f64 = 1e-9;
/// `torch.nn.functional.normalize`'s default eps, which sentence-transformers' Normalize uses.
const NORMALIZE_EPS: f64 = 1e-12;

/// A weight as a float32 tch tensor of the same shape.
fn t(w: &crate::mil::Tensor) -> Result<Tensor, tch::TchError> {
    let v = w.to_f32_vec().ok_or_else(|| tch::TchError::Kind(format!("weight of dtype {} is not float", w.dtype())))?;
    let shape: Vec<i64> = w.shape().iter().map(|&d| d as i64).collect();
    Tensor::f_from_slice(&v)?.f_reshape(shape.as_slice())
}

fn linear(x: &Tensor, l: &Linear) -> Result<Tensor, tch::TchError> {
    x.f_linear(&t(&l.weight)?, Some(&t(&l.bias)?))
}

fn layer_norm(x: &Tensor, n: &LayerNorm, c: i64, eps: f64) -> Result<Tensor, tch::TchError> {
    x.f_layer_norm([c], Some(&t(&n.weight)?), Some(&t(&n.bias)?), eps, false)
}

/// The forward pass on int64 (1, S) ids and mask; outputs named as the package names them.
fn forward(enc: &Encoder, head: Option<SentenceHead>, ids: &Tensor, mask: &Tensor) -> Result<Vec<(&'static str, Tensor)>, tch::TchError> {
    let c = &enc.config;
    let (hidden, heads, d) = (c.hidden as i64, c.heads as i64, c.head_dim() as i64);
    let seq = ids.size().last().copied().unwrap_or(0);
    let e = &enc.embeddings;
    let positions = match c.padding_idx {
        Some(pad) => {
            let real = ids.f_ne(pad as i64)?.f_to_kind(Kind::Int64)?;
            real.f_cumsum(1, Kind::Int64)?.f_mul(&real)?.f_add_scalar(pad as i64)?
        }
        None => Tensor::f_arange(seq, (Kind::Int64, tch::Device::Cpu))?.f_unsqueeze(0)?,
    };
    let mut x = Tensor::f_embedding(&t(&e.word)?, ids, -1, false, false)?.f_add(&Tensor::f_embedding(&t(&e.position)?, &positions, -1, false, false)?)?;
    if let Some(tt) = &e.token_type {
        x = x.f_add(&t(tt)?.f_get(0)?)?;
    }
    x = layer_norm(&x, &e.norm, hidden, c.eps)?;
    let mask_f = mask.f_to_kind(Kind::Float)?;
    // transformers' extended mask: (1 - mask) · finfo(float32).min, broadcast over heads and queries.
    let bias = mask_f.f_neg()?.f_add_scalar(1.0)?.f_mul_scalar(f64::from(f32::MIN))?.f_view([1, 1, 1, seq])?;
    let split = |y: Tensor| y.f_view([1, seq, heads, d])?.f_transpose(1, 2);
    for layer in &enc.layers {
        let q = split(linear(&x, &layer.query)?)?;
        let k = split(linear(&x, &layer.key)?)?;
        let v = split(linear(&x, &layer.value)?)?;
        let scores = q.f_matmul(&k.f_transpose(-1, -2)?)?.f_div_scalar((d as f64).sqrt())?.f_add(&bias)?;
        let ctx = scores.f_softmax(-1, Kind::Float)?.f_matmul(&v)?.f_transpose(1, 2)?.f_reshape([1, seq, hidden])?;
        let a = linear(&ctx, &layer.attention_out)?.f_add(&x)?;
        x = layer_norm(&a, &layer.attention_norm, hidden, c.eps)?;
        let f = linear(&x, &layer.ffn_in)?;
        let f = match c.activation {
            Activation::GeluExact => f.f_gelu("none")?,
            Activation::GeluTanh => f.f_gelu("tanh")?,
            Activation::Relu => f.f_relu()?,
            Activation::Silu => f.f_silu()?,
        };
        let f = linear(&f, &layer.ffn_out)?.f_add(&x)?;
        x = layer_norm(&f, &layer.output_norm, hidden, c.eps)?;
    }
    let mut outputs = vec![(bert::LAST_HIDDEN_STATE, x.f_permute([0, 2, 1])?.f_unsqueeze(2)?)];
    if let Some(head) = head {
        let m = mask_f.f_unsqueeze(-1)?;
        let pooled = match head.pooling {
            Pooling::Cls => x.f_select(1, 0)?,
            Pooling::Mean => x.f_mul(&m)?.f_sum_dim_intlist(1, false, Kind::Float)?.f_div(&m.f_sum_dim_intlist(1, false, Kind::Float)?.f_clamp_min(POOL_MIN_COUNT)?)?,
            Pooling::Max => x.f_masked_fill(&m.f_eq(0.0)?, POOL_MAX_MASKED)?.f_amax(1, false)?,
        };
        let pooled = if head.normalize {
            pooled.f_div(&pooled.f_norm_scalaropt_dim(2, 1, true)?.f_clamp_min(NORMALIZE_EPS)?)?
        } else {
            pooled
        };
        outputs.push((bert::SENTENCE_EMBEDDING, pooled));
    }
    Ok(outputs)
}
