//! The layer kit every Hugging Face family builds from: one [`Net`] (a [`Builder`] plus the
//! dtype policy) with the layers transformers models share, written once in the ANE layout —
//! activations (B, C, 1, S), every `nn.Linear` a 1×1 `conv`, LayerNorm over the channel axis,
//! attention split per head (`matmul(q_h, k_h, transpose_x)` → softmax on the last axis →
//! `matmul(v_h, probs, transpose_y)`) with boolean masks, the self-attention KV cache as inputs
//! or as iOS18 states, rotary position embeddings, activations and embedding lookups.
//!
//! Family files (`hf::bert`, `hf::whisper`, …) mirror the upstream module tree and call these
//! layers with weights found by module path ([`Scope`]); nothing here knows a family. Upstream
//! semantics followed: transformers v5.23.0 `activations.py` (`ACT2FN`), `modeling_llama.py`
//! (`LlamaRotaryEmbedding`, `rotate_half`, `apply_rotary_pos_emb`), `torch.nn.LayerNorm`,
//! `torch.nn.Linear`. Uses `mil` only.

use std::path::Path;

use super::{HfError, Scope};
use crate::mil::builder::{Builder, Var};
use crate::mil::ops::{elementwise as ew, linear, norm, shape, state, OpDef, TypeError};
use crate::mil::{DType, Function, Opset, Tensor, TensorType};

/// Results of the kit: a build error is a [`HfError`] (type errors convert into it).
pub type R<T> = Result<T, HfError>;

/// Score given to masked attention columns before softmax: exp(−10⁴ − max) is 0 in fp16 and
/// fp32, and the value stays finite in fp16 (whose largest magnitude is 65504), unlike
/// transformers' `finfo(dtype).min`.
pub const MASKED_SCORE: f32 = -1e4;

/// Batch size of every activation the kit builds (one sequence per prediction).
pub const BATCH: usize = 1;

pub use crate::mil::ops::state::STATE_DTYPE;

/// First op set with fp16 model inputs and outputs (coremltools casts float I/O to fp32 before it).
const FP16_IO_SINCE: Opset = Opset::Ios16;

/// A feed-forward activation, as transformers' `ACT2FN` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact, erf form.
    GeluExact,
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
    Silu,
}

/// transformers `ACT2FN` names the kit builds, and what each is.
pub const ACTIVATIONS: &[(&str, Activation)] = &[
    ("gelu", Activation::GeluExact),
    ("gelu_new", Activation::GeluTanh),
    ("gelu_pytorch_tanh", Activation::GeluTanh),
    ("relu", Activation::Relu),
    ("silu", Activation::Silu),
    ("swish", Activation::Silu),
];

impl Activation {
    /// The activation transformers calls `name` (`hidden_act`), if the kit builds it.
    pub fn named(name: &str) -> Option<Activation> {
        ACTIVATIONS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// Every name [`Activation::named`] accepts, for messages.
    pub fn names() -> Vec<&'static str> {
        ACTIVATIONS.iter().map(|(n, _)| *n).collect()
    }
}

/// One function under construction at one compute precision. The dtype policy: weights and
/// compute in `dtype` (fp16 or fp32); float model I/O in `io`, which is fp16 when computing in
/// fp16 on iOS16+ and fp32 otherwise (as `torchscript::graph` and coremltools choose), with
/// casts at the boundary ([`Net::input`], [`Net::finish`]).
pub struct Net {
    /// The builder; families use it directly for ops the kit has no layer for.
    pub b: Builder,
    /// Compute and weight dtype.
    pub dtype: DType,
    /// Float input/output dtype.
    pub io: DType,
}

impl Net {
    /// A net for `opset` computing in `dtype`.
    pub fn new(opset: Opset, dtype: DType) -> Net {
        let io = if dtype == DType::F16 && opset >= FP16_IO_SINCE { DType::F16 } else { DType::F32 };
        Net { b: Builder::new(opset), dtype, io }
    }

    /// A model input; float inputs are cast to the compute dtype when the I/O dtype differs.
    pub fn input(&mut self, name: &str, dtype: DType, shape: &[usize]) -> R<Var> {
        let io = if dtype.is_float() { self.io } else { dtype };
        let v = self.b.input(name, TensorType::new(io, shape));
        if io.is_float() && io != self.dtype {
            return self.cast(&v, self.dtype);
        }
        Ok(v)
    }

    /// `x` cast to `to`, named after `x`.
    pub fn cast(&mut self, x: &Var, to: DType) -> R<Var> {
        self.cast_as(&format!("{}_cast", x.0), x, to)
    }

    /// `x` cast to `to`, named `hint`.
    pub fn cast_as(&mut self, hint: &str, x: &Var, to: DType) -> R<Var> {
        Ok(self.b.op(&ew::CAST, hint).arg("x", x).konst("dtype", Tensor::string(to.name())).build1()?)
    }

    /// Finishes the function with `outputs` named as given, float ones cast to the I/O dtype.
    pub fn finish(mut self, outputs: &[(&str, Var)]) -> R<Function> {
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

    /// `t` as a const in the compute dtype (fp32 → fp16 stays a lazy view of the mapped file,
    /// cast while the package is written; other mixes are converted). `source` names the
    /// tensor for errors.
    pub fn weight(&mut self, hint: &str, t: Tensor, source: &str) -> R<Var> {
        let t = match (t.dtype(), self.dtype) {
            (from, to) if from == to => t,
            (DType::F32, DType::F16) => Tensor::f16_of(&t),
            (_, to) => in_dtype(t.shape(), &float_values(&t, source)?, to),
        };
        Ok(self.b.konst(hint, t))
    }

    /// Tensor `name` of module `m`, checked to have `shape`, as a const viewed as `view`.
    pub fn param(&mut self, hint: &str, m: &Scope, name: &str, shape: &[usize], view: &[usize]) -> R<Var> {
        let t = m.get(name, shape)?;
        self.viewed(hint, t, view, &m.path(name))
    }

    /// A loaded tensor viewed as `view` (same element count), as a const; `source` names it.
    pub fn viewed(&mut self, hint: &str, t: Tensor, view: &[usize], source: &str) -> R<Var> {
        let shape = t.shape().to_vec();
        let t = t.reshaped(view).ok_or_else(|| HfError::file(Path::new(source), format!("cannot view {shape:?} as {view:?}")))?;
        self.weight(hint, t, source)
    }

    /// A float scalar const in the compute dtype.
    pub fn scalar(&self, v: f32) -> Tensor {
        Tensor::float_scalar(self.dtype, v)
    }

    /// 2-D `conv` on (B, C, 1, S): weight (C_out, C_in, 1, k), stride and symmetric padding on S.
    pub fn conv(&mut self, hint: &str, x: &Var, w: &Var, bias: Option<&Var>, stride: usize, pad: usize) -> R<Var> {
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

    /// An `nn.Linear` of module `m` (`weight` [C_out, C_in], `bias` (C_out,) when `bias`) as a
    /// 1×1 `conv` on (B, C_in, 1, S). `scale` multiplies weight and bias (an attention query
    /// scaling folded in once here; 1.0 keeps the mapped weights as they are).
    pub fn linear(&mut self, hint: &str, x: &Var, m: &Scope, [c_out, c_in]: [usize; 2], bias: bool, scale: f32) -> R<Var> {
        let w = m.get("weight", &[c_out, c_in])?;
        let b = if bias { Some(m.get("bias", &[c_out])?) } else { None };
        self.linear_of(hint, x, &w, b.as_ref(), scale, &m.path("weight"))
    }

    /// [`Net::linear`] of already loaded tensors: `weight` (C_out, C_in), `bias` (C_out,).
    /// `source` names the weight for errors.
    pub fn linear_of(&mut self, hint: &str, x: &Var, weight: &Tensor, bias: Option<&Tensor>, scale: f32, source: &str) -> R<Var> {
        let &[c_out, c_in] = weight.shape() else {
            return Err(HfError::file(Path::new(source), format!("has shape {:?}, expected (C_out, C_in)", weight.shape())));
        };
        let (wh, bh) = (format!("{hint}_weight"), format!("{hint}_bias"));
        let view = [c_out, c_in, 1, 1];
        let scaled = |t: &Tensor, view: &[usize]| -> R<Tensor> {
            let v: Vec<f32> = float_values(t, source)?.iter().map(|x| x * scale).collect();
            Ok(Tensor::from_f32(view, &v))
        };
        let w = if scale == 1.0 { self.viewed(&wh, weight.clone(), &view, source)? } else { self.weight(&wh, scaled(weight, &view)?, source)? };
        let b = match bias {
            Some(b) if scale == 1.0 => Some(self.weight(&bh, b.clone(), source)?),
            Some(b) => Some(self.weight(&bh, scaled(b, &[c_out])?, source)?),
            None => None,
        };
        self.conv(hint, x, &w, b.as_ref(), 1, 0)
    }

    /// `nn.LayerNorm` of module `m` (`weight`, `bias`, each (C,)) over the channel axis of
    /// (B, C, 1, S), with `epsilon` as the module sets it.
    pub fn layer_norm(&mut self, hint: &str, x: &Var, m: &Scope, c: usize, epsilon: f32) -> R<Var> {
        let gamma = self.param(&format!("{hint}_gamma"), m, "weight", &[c], &[c])?;
        let beta = self.param(&format!("{hint}_beta"), m, "bias", &[c], &[c])?;
        self.channel_layer_norm(hint, x, &gamma, &beta, epsilon)
    }

    /// [`Net::layer_norm`] of already loaded `gamma`/`beta` tensors; `source` names them.
    pub fn layer_norm_of(&mut self, hint: &str, x: &Var, gamma: &Tensor, beta: &Tensor, epsilon: f32, source: &str) -> R<Var> {
        let gamma = self.weight(&format!("{hint}_gamma"), gamma.clone(), source)?;
        let beta = self.weight(&format!("{hint}_beta"), beta.clone(), source)?;
        self.channel_layer_norm(hint, x, &gamma, &beta, epsilon)
    }

    /// MIL `layer_norm` over axis 1 of (B, C, 1, S), `gamma`/`beta` already consts.
    fn channel_layer_norm(&mut self, hint: &str, x: &Var, gamma: &Var, beta: &Var, epsilon: f32) -> R<Var> {
        let epsilon = self.scalar(epsilon);
        Ok(self
            .b
            .op(&norm::LAYER_NORM, hint)
            .arg("x", x)
            .konst("axes", Tensor::i32_vec(&[1]))
            .arg("gamma", gamma)
            .arg("beta", beta)
            .konst("epsilon", epsilon)
            .build1()?)
    }

    /// `act(x)` elementwise.
    pub fn activation(&mut self, hint: &str, x: &Var, act: Activation) -> R<Var> {
        let op = match act {
            Activation::GeluExact => self.b.op(&ew::GELU, hint).arg("x", x).konst("mode", Tensor::string("EXACT")),
            Activation::GeluTanh => self.b.op(&ew::GELU, hint).arg("x", x).konst("mode", Tensor::string("TANH_APPROXIMATION")),
            Activation::Relu => self.b.op(&ew::RELU, hint).arg("x", x),
            Activation::Silu => self.b.op(&ew::SILU, hint).arg("x", x),
        };
        Ok(op.build1()?)
    }

    /// `nn.Embedding` lookup: rows `indices` of `table` (gather on axis 0). A table viewed as
    /// (N, C, 1, 1) gives (len, C, 1, 1) rows, the ANE layout of one token.
    pub fn embedding(&mut self, hint: &str, table: &Var, indices: &Var) -> R<Var> {
        Ok(self.b.op(&shape::GATHER, hint).arg("x", table).arg("indices", indices).konst("axis", Tensor::i32_scalar(0)).build1()?)
    }

    /// A binary elementwise op of two activations.
    pub fn binary(&mut self, def: &'static OpDef, hint: &str, x: &Var, y: &Var) -> R<Var> {
        Ok(self.b.op(def, hint).arg("x", x).arg("y", y).build1()?)
    }

    /// A binary op of `x` and a const `y`.
    pub fn with_const(&mut self, def: &'static OpDef, hint: &str, x: &Var, y: Tensor) -> R<Var> {
        Ok(self.b.op(def, hint).arg("x", x).konst("y", y).build1()?)
    }

    /// A binary op of `x` and a scalar const `y` in the compute dtype.
    pub fn with_scalar(&mut self, def: &'static OpDef, hint: &str, x: &Var, y: f32) -> R<Var> {
        let y = self.scalar(y);
        self.with_const(def, hint, x, y)
    }

    /// `x` reshaped to `shape`.
    pub fn reshape(&mut self, hint: &str, x: &Var, shape: &[usize]) -> R<Var> {
        let s: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
        Ok(self.b.op(&shape::RESHAPE, hint).arg("x", x).konst("shape", Tensor::i32_vec(&s)).build1()?)
    }

    /// `xs` concatenated on `axis`.
    pub fn concat(&mut self, hint: &str, xs: &[Var], axis: i32) -> R<Var> {
        Ok(self.b.op(&shape::CONCAT, hint).args("values", xs).konst("axis", Tensor::i32_scalar(axis)).build1()?)
    }

    /// The fixed shape of `x`, or a type error naming `hint` when it has none.
    fn shape_of(&self, hint: &str, x: &Var) -> R<Vec<usize>> {
        self.b
            .ty(x)
            .and_then(|t| t.fixed_shape())
            .ok_or_else(|| TypeError::Invalid { op: hint.into(), message: format!("`{}` has no fixed shape", x.0) }.into())
    }

    /// The heads of an activation x (1, C, 1, S): `split` on the channel axis into (1, d, 1, S),
    /// each reshaped to (1, d, S).
    pub fn split_heads(&mut self, hint: &str, x: &Var, heads: usize) -> R<Vec<Var>> {
        let shape = self.shape_of(hint, x)?;
        let (Some(&c), Some(&s)) = (shape.get(1), shape.get(3)) else {
            return Err(TypeError::Invalid { op: "split".into(), message: format!("{hint}: {shape:?} is not (1, C, 1, S)") }.into());
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

    /// Multi-head attention split per head: q (1, C, 1, Sq) and, per head, k_h and v_h
    /// (1, d, Sk). `scores = matmul(q_h, k_h, transpose_x)` (1, Sq, Sk), masked, softmax on the
    /// last axis, `out_h = matmul(v_h, probs, transpose_y)` (1, d, Sq); heads are concatenated on
    /// the channel axis → (1, C, 1, Sq). `keep` (bool, broadcastable to the scores; true =
    /// attend) sets the other columns to [`MASKED_SCORE`]. q must already carry the 1/√d
    /// scaling. Self-attention passes k/v split from the same input ([`Net::split_heads`]);
    /// cross-attention and cached attention pass heads of a cache ([`Net::cache_heads`]).
    pub fn attention(&mut self, hint: &str, q: &Var, ks: &[Var], vs: &[Var], keep: Option<&Var>) -> R<Var> {
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
            let shape = self.shape_of(hint, &out)?;
            let [_, d, sq] = shape[..] else {
                return Err(TypeError::Invalid { op: hint.into(), message: format!("head output {shape:?} is not (1, d, S)") }.into());
            };
            outs.push(self.reshape(&format!("{hint}_out{h}_bc1s"), &out, &[BATCH, d, 1, sq])?);
        }
        self.concat(&format!("{hint}_heads"), &outs, 1)
    }

    /// The per-layer, per-head slices of a cache (L, C, 1, S): one reshape to (L·H, d, S) (the
    /// channel axis is H blocks of d) and one `split` on axis 0, giving entry l·H + h =
    /// (1, d, S). Two ops for the whole cache instead of a slice per layer and a split per head,
    /// since a decoder does this on every step.
    pub fn cache_heads(&mut self, hint: &str, cache: &Var, layers: usize, c: usize, s: usize, heads: usize) -> R<Vec<Var>> {
        let x = self.reshape(&format!("{hint}_by_head"), cache, &[layers * heads, c / heads, s])?;
        Ok(self
            .b
            .op(&shape::SPLIT, &format!("{hint}_heads"))
            .arg("x", &x)
            .konst("num_splits", Tensor::i32_scalar((layers * heads) as i32))
            .konst("axis", Tensor::i32_scalar(0))
            .build()?)
    }

    /// The [`CacheColumn`] of layer `layer` in a cache (L, d, 1, t), from `column_begin` =
    /// [0, 0, 0, cache_length]; a layer's keys and values share it.
    pub fn cache_column(&mut self, hint: &str, layer: usize, d: usize, t: usize, column_begin: &Var) -> R<CacheColumn> {
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
    pub fn write_column(&mut self, hint: &str, state: &Var, cache: &Var, x: &Var, at: &CacheColumn) -> R<Var> {
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
    pub fn layer_heads(&mut self, hint: &str, cache: &Var, at: &CacheColumn, heads: usize) -> R<Vec<Var>> {
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

    /// Rotary position embedding of one head x_h (1, d, S) (transformers `apply_rotary_pos_emb`
    /// in the channels-first layout): `x·cos + rotate_half(x)·sin`, where `rotate_half` is
    /// (−x[d/2:], x[:d/2]) on the channel axis and `cos`/`sin` are (1, d, S) consts from
    /// [`rotary_tables`] (built once per function and shared by every head and layer).
    pub fn rotary(&mut self, hint: &str, x: &Var, cos: &Var, sin: &Var) -> R<Var> {
        let shape = self.shape_of(hint, x)?;
        let [_, d, s] = shape[..] else {
            return Err(TypeError::Invalid { op: hint.into(), message: format!("{shape:?} is not one head (1, d, S)") }.into());
        };
        let half = (d / 2) as i32;
        let mut part = |name: &str, from: i32, to: i32| -> R<Var> {
            Ok(self
                .b
                .op(&shape::SLICE_BY_INDEX, &format!("{hint}_{name}"))
                .arg("x", x)
                .konst("begin", Tensor::i32_vec(&[0, from, 0]))
                .konst("end", Tensor::i32_vec(&[1, to, s as i32]))
                .build1()?)
        };
        let (x1, x2) = (part("x1", 0, half)?, part("x2", half, d as i32)?);
        let minus_x2 = self.with_scalar(&ew::MUL, &format!("{hint}_x2_neg"), &x2, -1.0)?;
        let rotated = self.concat(&format!("{hint}_rotate_half"), &[minus_x2, x1], 1)?;
        let a = self.binary(&ew::MUL, &format!("{hint}_cos"), x, cos)?;
        let b = self.binary(&ew::MUL, &format!("{hint}_sin"), &rotated, sin)?;
        self.binary(&ew::ADD, hint, &a, &b)
    }
}

/// Where a stateful decoder layer writes its column in a cache (L, d, 1, t): `begin` =
/// [layer, 0, 0, cache_length] and `end` = [layer + 1, d, 1, cache_length + 1]. Made by
/// [`Net::cache_column`].
pub struct CacheColumn {
    /// The decoder layer (row block of the cache).
    pub layer: usize,
    /// Channels per layer.
    pub d: usize,
    /// Cache columns (positions).
    pub t: usize,
    begin: Var,
    end: Var,
}

/// The cos and sin tables of rotary embeddings for `head_dim` channels at `positions`, each
/// (head_dim, positions.len()) row-major, as transformers' `LlamaRotaryEmbedding` (default rope
/// type) computes them: inv_freq[i] = theta^(−2i/head_dim) for i < head_dim/2, angle =
/// position · inv_freq, and the half-table repeated (`cat((freqs, freqs))`). The angles are
/// computed in f64 and rounded once. Used with [`Net::rotary`] by a family with rotary
/// positions (LLaMA-style `rope_theta`).
pub fn rotary_tables(head_dim: usize, positions: &[usize], theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let s = positions.len();
    let (mut cos, mut sin) = (vec![0f32; head_dim * s], vec![0f32; head_dim * s]);
    for i in 0..head_dim {
        let inv_freq = theta.powf(-((2 * (i % half.max(1))) as f64) / head_dim as f64);
        for (j, &p) in positions.iter().enumerate() {
            let angle = p as f64 * inv_freq;
            cos[i * s + j] = angle.cos() as f32;
            sin[i * s + j] = angle.sin() as f32;
        }
    }
    (cos, sin)
}

/// The values of a float tensor (fp32, fp16, bf16) as f32; `source` names it in the error.
pub fn float_values(t: &Tensor, source: &str) -> R<Vec<f32>> {
    match t.dtype() {
        DType::BF16 => Ok(t.bytes().chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        d => t.to_f32_vec().ok_or_else(|| HfError::file(Path::new(source), format!("has dtype {d}, expected a float tensor"))),
    }
}

/// Owned f32 values as a tensor of `dtype` (fp16 rounds once; anything else stays fp32).
fn in_dtype(shape: &[usize], values: &[f32], dtype: DType) -> Tensor {
    match dtype {
        DType::F16 => Tensor::from_f32_as_f16(shape, values),
        _ => Tensor::from_f32(shape, values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{self, Array};
    use crate::passes::testing::values;

    /// Rotary embedding by its other definition, torch-free: channel pairs (i, i + d/2) are the
    /// real and imaginary parts of a complex number, multiplied by e^{i·p·θ^(−2i/d)}
    /// (RoFormer eq. 34; what LLaMA's `rotate_half` form computes).
    fn rotate_pairs(x: &[f32], d: usize, positions: &[usize], theta: f64) -> Vec<f32> {
        let s = positions.len();
        let mut y = vec![0f32; d * s];
        for i in 0..d / 2 {
            for (j, &p) in positions.iter().enumerate() {
                let angle = p as f64 * theta.powf(-2.0 * i as f64 / d as f64);
                let (re, im) = (f64::from(x[i * s + j]), f64::from(x[(i + d / 2) * s + j]));
                y[i * s + j] = (re * angle.cos() - im * angle.sin()) as f32;
                y[(i + d / 2) * s + j] = (re * angle.sin() + im * angle.cos()) as f32;
            }
        }
        y
    }

    #[test]
    fn rotary_matches_the_complex_rotation() {
        let (d, positions, theta) = (8usize, [0usize, 1, 5, 17, 300], 10_000.0);
        let s = positions.len();
        let (cos, sin) = rotary_tables(d, &positions, theta);
        let mut net = Net::new(Opset::Ios16, DType::F32);
        let x = net.input("x", DType::F32, &[1, d, s]).unwrap();
        let cos = net.b.konst("rope_cos", Tensor::from_f32(&[1, d, s], &cos));
        let sin = net.b.konst("rope_sin", Tensor::from_f32(&[1, d, s], &sin));
        let y = net.rotary("rope", &x, &cos, &sin).unwrap();
        let f = net.finish(&[("y", y)]).unwrap();
        let xs = values(d * s, 7);
        let out = interp::run(&f, &[("x".into(), Array::float(DType::F32, vec![1, d, s], xs.clone()))]).unwrap();
        let got = out[0].1.to_f32_vec().unwrap();
        let want = rotate_pairs(&xs, d, &positions, theta);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-5, "element {k}: {g} vs {w}");
        }
        // Position 0 is the identity.
        for i in 0..d {
            assert!((got[i * s] - xs[i * s]).abs() < 1e-6);
        }
    }

    #[test]
    fn attention_masks_columns_and_matches_softmax_attention() {
        // Two heads of d = 2 over 3 keys, the last key masked.
        let (heads, d, sk) = (2usize, 2usize, 3usize);
        let c = heads * d;
        let mut net = Net::new(Opset::Ios16, DType::F32);
        let q = net.input("q", DType::F32, &[1, c, 1, 1]).unwrap();
        let k = net.input("k", DType::F32, &[1, c, 1, sk]).unwrap();
        let v = net.input("v", DType::F32, &[1, c, 1, sk]).unwrap();
        let keep = net.b.konst("keep", Tensor::from_bools(&[1, 1, sk], &[true, true, false]));
        let ks = net.split_heads("k", &k, heads).unwrap();
        let vs = net.split_heads("v", &v, heads).unwrap();
        let o = net.attention("attn", &q, &ks, &vs, Some(&keep)).unwrap();
        let f = net.finish(&[("o", o)]).unwrap();
        let (qv, kv, vv) = (values(c, 1), values(c * sk, 2), values(c * sk, 3));
        let arr = |x: &[f32], s: usize| Array::float(DType::F32, vec![1, c, 1, s], x.to_vec());
        let out = interp::run(&f, &[("q".into(), arr(&qv, 1)), ("k".into(), arr(&kv, sk)), ("v".into(), arr(&vv, sk))]).unwrap();
        assert_eq!(out[0].1.shape, vec![1, c, 1, 1]);
        let got = out[0].1.to_f32_vec().unwrap();
        for h in 0..heads {
            let scores: Vec<f32> = (0..2).map(|j| (0..d).map(|i| qv[h * d + i] * kv[(h * d + i) * sk + j]).sum()).collect();
            let m = scores[0].max(scores[1]);
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f32 = e.iter().sum();
            for i in 0..d {
                let want: f32 = (0..2).map(|j| e[j] / z * vv[(h * d + i) * sk + j]).sum();
                assert!((got[h * d + i] - want).abs() < 1e-5, "head {h} channel {i}: {} vs {want}", got[h * d + i]);
            }
        }
    }

    #[test]
    fn fp16_compute_casts_at_the_boundary_before_ios16() {
        for (opset, io) in [(Opset::Ios15, DType::F32), (Opset::Ios16, DType::F16)] {
            let mut net = Net::new(opset, DType::F16);
            assert_eq!(net.io, io);
            let x = net.input("x", DType::F32, &[1, 2, 1, 1]).unwrap();
            let y = net.activation("y", &x, Activation::Relu).unwrap();
            let f = net.finish(&[("y", y)]).unwrap();
            let casts = f.block.operations.iter().filter(|o| o.op_type == "cast").count();
            assert_eq!(casts, if io == DType::F32 { 2 } else { 0 }, "{opset:?}");
            assert_eq!(f.block.outputs, vec!["y".to_string()]);
        }
    }

    #[test]
    fn activation_names_are_unique() {
        let mut names = Activation::names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ACTIVATIONS.len());
        assert_eq!(Activation::named("gelu_pytorch_tanh"), Some(Activation::GeluTanh));
        assert_eq!(Activation::named("quick_gelu"), None);
    }
}
