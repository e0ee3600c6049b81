//! Recurrent ops: `rnn`, `lstm` and `gru` over a whole sequence `x: [S, B, I]`. Our own
//! converter unrolls torch's recurrent layers (`torchscript::lower::recurrent`), but packages
//! coremltools writes use these ops (its torch `LSTM` and `RNN` become `lstm` and `rnn`; MIL
//! programs may use `gru`), so the interpreter runs them. Semantics: coremltools
//! `defs/iOS15/recurrent.py`, `iOS17` (fp16 allowed) and `iOS18` (`gru.reset_after`,
//! `gru.input_bias`), with the gate orders and numpy references of its op tests
//! (`ops/tests/iOS14/test_recurrent.py`): a `reverse` layer emits its states in processing
//! order, a bidirectional `lstm` aligns the backward half with input time, peepholes see the old
//! cell state for the input and forget gates and the new one for the output gate, and `clip`
//! bounds the cell state.

use super::{Array, EvalArgs, EvalError, OpArgs, OpDef, Param, TypeError, BOOL, FLOAT, STRING};
use crate::mil::types::{DType, Dim, TensorType};
use crate::mil::Opset;
use crate::numeric::gemm;

type Eval = Result<Vec<Array>, EvalError>;

/// fp32 only: the iOS15/16 recurrent ops' type domain (fp16 arrived with iOS17).
const FP32: &[DType] = &[DType::F32];
/// Gate blocks of `rnn` weights: the single hidden update.
const RNN_GATES: usize = 1;
/// Gate blocks of `gru` weights, in MIL's order: reset, output (torch's "new"), update.
const GRU_GATES: usize = 3;
/// Gate blocks of `lstm` weights, in MIL's `ifoz` order: input, forget, output, cell.
const LSTM_GATES: usize = 4;
/// Peephole blocks of `lstm`: input, forget, output (`ifo`).
const LSTM_PEEPHOLES: usize = 3;
/// `hard_sigmoid`'s slope and offset when an activation name carries no parameters (Core ML's
/// defaults, those of coremltools' reference implementation).
const HARD_SIGMOID: (f32, f32) = (0.2, 0.5);

const fn rnn_params(t: &'static [DType]) -> [Param; 8] {
    [
        Param::t("x", t),
        Param::t("initial_h", t),
        Param::t("weight_ih", t).konst(),
        Param::t("weight_hh", t).konst(),
        Param::t("bias", t).konst().optional(),
        Param::new("direction", STRING).konst().optional(),
        Param::new("output_sequence", BOOL).konst().optional(),
        Param::new("activation", STRING).konst().optional(),
    ]
}

/// `gru`'s parameters; the last two (`reset_after`, `input_bias`) arrived with iOS18.
const fn gru_params(t: &'static [DType]) -> [Param; 11] {
    [
        Param::t("x", t),
        Param::t("initial_h", t),
        Param::t("weight_ih", t).konst(),
        Param::t("weight_hh", t).konst(),
        Param::t("bias", t).konst().optional(),
        Param::new("direction", STRING).konst().optional(),
        Param::new("output_sequence", BOOL).konst().optional(),
        Param::new("recurrent_activation", STRING).konst().optional(),
        Param::new("activation", STRING).konst().optional(),
        Param::new("reset_after", BOOL).konst().optional(),
        Param::t("input_bias", t).konst().optional(),
    ]
}

/// How many of [`gru_params`] exist before iOS18.
const GRU_PARAMS_BEFORE_IOS18: usize = 9;
const GRU_IOS15_PARAMS: [Param; 11] = gru_params(FP32);
const GRU_IOS17_PARAMS: [Param; 11] = gru_params(FLOAT);

const fn lstm_params(t: &'static [DType]) -> [Param; 17] {
    [
        Param::t("x", t),
        Param::t("initial_h", t),
        Param::t("initial_c", t),
        Param::t("weight_ih", t).konst(),
        Param::t("weight_hh", t).konst(),
        Param::t("bias", t).konst().optional(),
        Param::t("peephole", t).konst().optional(),
        Param::t("weight_ih_back", t).konst().optional(),
        Param::t("weight_hh_back", t).konst().optional(),
        Param::t("bias_back", t).konst().optional(),
        Param::t("peephole_back", t).konst().optional(),
        Param::new("direction", STRING).konst().optional(),
        Param::new("output_sequence", BOOL).konst().optional(),
        Param::new("recurrent_activation", STRING).konst().optional(),
        Param::new("cell_activation", STRING).konst().optional(),
        Param::new("activation", STRING).konst().optional(),
        Param::t("clip", t).konst().optional(),
    ]
}

/// `rnn`: h_t = activation(W_ih·x_t + W_hh·h_{t−1} + bias); outputs (states `[S or 1, B, H]`, last `[B, H]`).
pub const RNN: OpDef = OpDef { name: "rnn", since: Opset::Ios15, params: &rnn_params(FP32), infer: infer_rnn, eval: eval_rnn };
/// `rnn` from iOS17: fp16 too.
pub const RNN_IOS17: OpDef = OpDef { name: "rnn", since: Opset::Ios17, params: &rnn_params(FLOAT), infer: infer_rnn, eval: eval_rnn };
/// `gru`: reset gate applied to h before its product (weights `[r|o|z]`); outputs as `rnn`'s.
pub const GRU: OpDef = OpDef { name: "gru", since: Opset::Ios15, params: GRU_IOS15_PARAMS.split_at(GRU_PARAMS_BEFORE_IOS18).0, infer: infer_gru, eval: eval_gru };
/// `gru` from iOS17: fp16 too.
pub const GRU_IOS17: OpDef = OpDef { name: "gru", since: Opset::Ios17, params: GRU_IOS17_PARAMS.split_at(GRU_PARAMS_BEFORE_IOS18).0, infer: infer_gru, eval: eval_gru };
/// `gru` from iOS18: `reset_after` (torch's placement: r·(W_ho·h + bias_o)) and `input_bias`.
pub const GRU_IOS18: OpDef = OpDef { name: "gru", since: Opset::Ios18, params: &gru_params(FLOAT), infer: infer_gru, eval: eval_gru };
/// `lstm`: one layer, forward, reverse or bidirectional, optional peepholes and cell clip;
/// outputs (states `[S or 1, B, D·H]`, last h `[B, D·H]`, last c `[B, D·H]`).
pub const LSTM: OpDef = OpDef { name: "lstm", since: Opset::Ios15, params: &lstm_params(FP32), infer: infer_lstm, eval: eval_lstm };
/// `lstm` from iOS17: fp16 too.
pub const LSTM_IOS17: OpDef = OpDef { name: "lstm", since: Opset::Ios17, params: &lstm_params(FLOAT), infer: infer_lstm, eval: eval_lstm };

/// An activation a recurrent op names by string.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Sigmoid,
    Tanh,
    Relu,
    HardSigmoid,
    Linear,
}

impl Act {
    /// Core ML's names; `scaled_tanh` with its default parameters (1, 1) is `tanh`.
    fn parse(name: &str) -> Option<Act> {
        Some(match name {
            "sigmoid" => Act::Sigmoid,
            "tanh" | "scaled_tanh" => Act::Tanh,
            "relu" => Act::Relu,
            "hard_sigmoid" => Act::HardSigmoid,
            "linear" => Act::Linear,
            _ => return None,
        })
    }

    fn apply(self, x: f32) -> f32 {
        match self {
            Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Act::Tanh => x.tanh(),
            Act::Relu => x.max(0.0),
            Act::HardSigmoid => (HARD_SIGMOID.0 * x + HARD_SIGMOID.1).clamp(0.0, 1.0),
            Act::Linear => x,
        }
    }
}

/// The activation a string parameter names, or its default.
fn activation(name: Option<&str>, default: Act) -> Result<Act, String> {
    match name {
        None => Ok(default),
        Some(n) => Act::parse(n).ok_or_else(|| {
            format!("unknown activation `{n}` (sigmoid, tanh, scaled_tanh, relu, hard_sigmoid, linear)")
        }),
    }
}

/// The directions an op accepts, checked and parsed: (reverse, bidirectional).
fn direction(name: Option<&str>, bidirectional_ok: bool) -> Result<(bool, bool), String> {
    match name.unwrap_or("forward") {
        "forward" => Ok((false, false)),
        "reverse" => Ok((true, false)),
        "bidirectional" if bidirectional_ok => Ok((false, true)),
        d => Err(format!("direction `{d}` is not supported (forward, reverse{})", if bidirectional_ok { ", bidirectional" } else { "" })),
    }
}

/// Shared type inference: `x` `[S, B, I]`, weights `[G·H, I]` and `[G·H, H]`, biases `[G·H]`,
/// states `[B, D·H]`; returns (S, B, H).
fn infer_common(a: &OpArgs, gates: usize, dirs: usize) -> Result<(Dim, Dim, usize), TypeError> {
    let x = a.tensor("x")?;
    if x.rank() != 3 {
        return Err(a.invalid(format!("x must be [seq, batch, input], got {x}")));
    }
    let (wi, wh) = (a.fixed("weight_ih")?, a.fixed("weight_hh")?);
    let (rows, hidden) = match wh.as_slice() {
        [r, h] => (*r, *h),
        _ => return Err(a.invalid(format!("weight_hh must be rank 2, got {:?}", wh))),
    };
    if hidden == 0 || rows != gates * hidden {
        return Err(a.invalid(format!("weight_hh {:?} must be [{gates}·H, H]", wh)));
    }
    let input_ok = |w: &[usize]| w.len() == 2 && w[0] == rows && (x.shape[2] == Dim::Fixed(w[1]) || x.shape[2] == Dim::Unknown);
    if !input_ok(&wi) {
        return Err(a.invalid(format!("weight_ih {:?} must be [{rows}, {}]", wi, x.shape[2])));
    }
    for p in ["bias", "input_bias", "bias_back"] {
        if let Some(b) = a.opt_tensor(p) {
            if b.shape != [Dim::Fixed(rows)] {
                return Err(a.invalid(format!("{p} {b} must be [{rows}]")));
            }
        }
    }
    for p in ["initial_h", "initial_c"] {
        if let Some(s) = a.opt_tensor(p) {
            let batch_ok = s.rank() == 2 && (s.shape[0] == x.shape[1] || s.shape[0] == Dim::Unknown || x.shape[1] == Dim::Unknown);
            if !batch_ok || s.shape[1] != Dim::Fixed(dirs * hidden) {
                return Err(a.invalid(format!("{p} {s} must be [batch, {}]", dirs * hidden)));
            }
        }
    }
    Ok((x.shape[0], x.shape[1], hidden))
}

/// Output types: all states (or the last one) and the final state(s).
fn outputs(a: &OpArgs, (seq, batch, width): (Dim, Dim, usize), finals: usize) -> Result<Vec<TensorType>, TypeError> {
    let dtype = a.tensor("x")?.dtype;
    let steps = if a.bool_or("output_sequence", false)? { seq } else { Dim::Fixed(1) };
    let mut out = vec![TensorType { dtype, shape: vec![steps, batch, Dim::Fixed(width)] }];
    out.extend((0..finals).map(|_| TensorType { dtype, shape: vec![batch, Dim::Fixed(width)] }));
    Ok(out)
}

fn infer_rnn(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    direction(a.string("direction"), false).map_err(|m| a.invalid(m))?;
    activation(a.string("activation"), Act::Tanh).map_err(|m| a.invalid(m))?;
    let (s, b, h) = infer_common(a, RNN_GATES, 1)?;
    outputs(a, (s, b, h), 1)
}

fn infer_gru(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    direction(a.string("direction"), false).map_err(|m| a.invalid(m))?;
    for (p, d) in [("recurrent_activation", Act::Sigmoid), ("activation", Act::Tanh)] {
        activation(a.string(p), d).map_err(|m| a.invalid(m))?;
    }
    let (s, b, h) = infer_common(a, GRU_GATES, 1)?;
    outputs(a, (s, b, h), 1)
}

fn infer_lstm(a: &OpArgs) -> Result<Vec<TensorType>, TypeError> {
    let (_, bidirectional) = direction(a.string("direction"), true).map_err(|m| a.invalid(m))?;
    for (p, d) in [("recurrent_activation", Act::Sigmoid), ("cell_activation", Act::Tanh), ("activation", Act::Tanh)] {
        activation(a.string(p), d).map_err(|m| a.invalid(m))?;
    }
    let dirs = if bidirectional { 2 } else { 1 };
    let (s, b, h) = infer_common(a, LSTM_GATES, dirs)?;
    if bidirectional {
        let (wi, wh) = (a.fixed("weight_ih")?, a.fixed("weight_hh")?);
        for (p, want) in [("weight_ih_back", &wi), ("weight_hh_back", &wh)] {
            if a.fixed(p)? != *want {
                return Err(a.invalid(format!("{p} must have the shape of its forward twin {want:?}")));
            }
        }
    }
    for p in ["peephole", "peephole_back"] {
        if let Some(t) = a.opt_tensor(p) {
            if t.shape != [Dim::Fixed(LSTM_PEEPHOLES * h)] {
                return Err(a.invalid(format!("{p} {t} must be [{}]", LSTM_PEEPHOLES * h)));
            }
        }
    }
    outputs(a, (s, b, dirs * h), 2)
}

/// The sizes of one call, read from the values and checked against each other.
struct Dims {
    seq: usize,
    batch: usize,
    input: usize,
    hidden: usize,
}

fn dims(a: &EvalArgs, gates: usize) -> Result<Dims, EvalError> {
    let x = a.array("x")?;
    let wh = a.array("weight_hh")?;
    let (seq, batch, input, hidden) = match (x.shape.as_slice(), wh.shape.as_slice()) {
        ([s, b, i], [_, h]) => (*s, *b, *i, *h),
        _ => return Err(a.shape_error("x must be rank 3 and weight_hh rank 2")),
    };
    let rows = gates * hidden;
    if wh.shape[0] != rows || a.array("weight_ih")?.shape != [rows, input] {
        return Err(a.shape_error("weights do not fit x and the hidden size"));
    }
    Ok(Dims { seq, batch, input, hidden })
}

/// A `[len]` optional parameter's floats, checked.
fn opt_vec<'a>(a: &EvalArgs<'a>, p: &str, len: usize) -> Result<Option<&'a [f32]>, EvalError> {
    match a.opt_floats(p)? {
        Some(v) if v.len() != len => Err(a.shape_error(&format!("{p} must hold {len} values"))),
        v => Ok(v),
    }
}

/// `v · wᵀ (+ bias)` for `rows` row vectors of `w`'s width.
fn project(a: &EvalArgs, v: &[f32], rows: usize, w: &[f32], out: usize, bias: Option<&[f32]>) -> Result<Vec<f32>, EvalError> {
    let width = v.len().checked_div(rows).unwrap_or(0);
    gemm::linear(v, &[rows, width], w, out, bias).map(|(p, _)| p).ok_or_else(|| a.shape_error("a weight does not fit"))
}

/// Each time step's `batch·width` slice of `xg` (the input projections) in processing order,
/// fed to `step`; returns every state it returns, in processing order.
fn sweep(
    xg: &[f32],
    d: &Dims,
    reverse: bool,
    mut step: impl FnMut(&[f32]) -> Result<Vec<f32>, EvalError>,
) -> Result<Vec<Vec<f32>>, EvalError> {
    let per = xg.len() / d.seq.max(1);
    (0..d.seq)
        .map(|k| {
            let t = if reverse { d.seq - 1 - k } else { k };
            step(&xg[t * per..(t + 1) * per])
        })
        .collect()
}

/// The op's outputs from per-direction states: `steps[dir][t]` (`[B, H]` each, in time order
/// for output), the final state per direction, and any extra finals (the lstm's cell).
fn assemble(a: &EvalArgs, d: &Dims, steps: &[Vec<Vec<f32>>], finals: &[Vec<Vec<f32>>]) -> Eval {
    let dtype = a.array("x")?.dtype;
    let (dirs, h) = (steps.len(), d.hidden);
    let width = dirs * h;
    let interleave = |parts: &[&Vec<f32>]| -> Vec<f32> {
        let mut out = vec![0.0; d.batch * width];
        for (k, part) in parts.iter().enumerate() {
            for b in 0..d.batch {
                out[b * width + k * h..b * width + (k + 1) * h].copy_from_slice(&part[b * h..(b + 1) * h]);
            }
        }
        out
    };
    let sequence = a.bool_or("output_sequence", false)?;
    let rows: Vec<Vec<f32>> = if sequence {
        (0..d.seq).map(|t| interleave(&steps.iter().map(|s| &s[t]).collect::<Vec<_>>())).collect()
    } else {
        vec![interleave(&finals[0].iter().collect::<Vec<_>>())]
    };
    let mut out = vec![Array::float(dtype, vec![rows.len(), d.batch, width], rows.concat())];
    for f in finals {
        out.push(Array::float(dtype, vec![d.batch, width], interleave(&f.iter().collect::<Vec<_>>())));
    }
    Ok(out)
}

/// The `[B, H]` slice of direction `k` of a `[B, D·H]` state.
fn state_part(s: &[f32], d: &Dims, dirs: usize, k: usize) -> Vec<f32> {
    let (h, width) = (d.hidden, dirs * d.hidden);
    (0..d.batch).flat_map(|b| s[b * width + k * h..b * width + (k + 1) * h].iter().copied()).collect()
}

/// The initial state `p`, checked to be `[B, D·H]`.
fn initial<'a>(a: &EvalArgs<'a>, p: &str, d: &Dims, dirs: usize) -> Result<&'a [f32], EvalError> {
    let v = a.floats(p)?;
    if v.len() != d.batch * dirs * d.hidden {
        return Err(a.shape_error(&format!("{p} must be [batch, {}]", dirs * d.hidden)));
    }
    Ok(v)
}

/// Time order of one direction's states: a lone `reverse` layer keeps processing order (as
/// Core ML does); the backward half of a bidirectional layer is aligned with input time.
fn in_time_order(mut states: Vec<Vec<f32>>, flip: bool) -> Vec<Vec<f32>> {
    if flip {
        states.reverse();
    }
    states
}

fn eval_rnn(a: &EvalArgs) -> Eval {
    let d = dims(a, RNN_GATES)?;
    let (reverse, _) = direction(a.string("direction"), false).map_err(|m| a.invalid(m))?;
    let act = activation(a.string("activation"), Act::Tanh).map_err(|m| a.invalid(m))?;
    let (w_ih, w_hh, h) = (a.floats("weight_ih")?, a.floats("weight_hh")?, d.hidden);
    let xg = project(a, a.floats("x")?, d.seq * d.batch, w_ih, h, opt_vec(a, "bias", h)?)?;
    let mut state = initial(a, "initial_h", &d, 1)?.to_vec();
    let states = sweep(&xg, &d, reverse, |xt| {
        let hg = project(a, &state, d.batch, w_hh, h, None)?;
        state = xt.iter().zip(&hg).map(|(x, r)| act.apply(x + r)).collect();
        Ok(state.clone())
    })?;
    assemble(a, &d, &[states], &[vec![state]])
}

fn eval_gru(a: &EvalArgs) -> Eval {
    let d = dims(a, GRU_GATES)?;
    let (reverse, _) = direction(a.string("direction"), false).map_err(|m| a.invalid(m))?;
    let rec = activation(a.string("recurrent_activation"), Act::Sigmoid).map_err(|m| a.invalid(m))?;
    let act = activation(a.string("activation"), Act::Tanh).map_err(|m| a.invalid(m))?;
    let reset_after = a.bool_or("reset_after", false)?;
    let (w_ih, w_hh, h) = (a.floats("weight_ih")?, a.floats("weight_hh")?, d.hidden);
    let rows = GRU_GATES * h;
    let (bias, input_bias) = (opt_vec(a, "bias", rows)?, opt_vec(a, "input_bias", rows)?);
    // Before the reset: every bias joins the input side. After it: the hidden bias stays with
    // the hidden product, inside the reset gate for the output block (torch's form).
    let in_bias: Option<Vec<f32>> = match (input_bias, bias, reset_after) {
        (Some(i), Some(b), false) => Some(i.iter().zip(b).map(|(x, y)| x + y).collect()),
        (Some(i), _, true) | (Some(i), None, false) => Some(i.to_vec()),
        (None, b, false) => b.map(<[f32]>::to_vec),
        (None, _, true) => None,
    };
    let hid_bias = if reset_after { bias } else { None };
    let xg = project(a, a.floats("x")?, d.seq * d.batch, w_ih, rows, in_bias.as_deref())?;
    let w_ho = &w_hh[h * h..2 * h * h];
    let mut state = initial(a, "initial_h", &d, 1)?.to_vec();
    let states = sweep(&xg, &d, reverse, |xt| {
        let hg = project(a, &state, d.batch, w_hh, rows, hid_bias)?;
        let (mut r, mut z) = (vec![0.0; d.batch * h], vec![0.0; d.batch * h]);
        for b in 0..d.batch {
            for j in 0..h {
                let (g, i) = (b * rows + j, b * h + j);
                r[i] = rec.apply(xt[g] + hg[g]);
                z[i] = rec.apply(xt[g + 2 * h] + hg[g + 2 * h]);
            }
        }
        let reset_product = if reset_after {
            None
        } else {
            let gated: Vec<f32> = state.iter().zip(&r).map(|(s, r)| s * r).collect();
            Some(project(a, &gated, d.batch, w_ho, h, None)?)
        };
        for b in 0..d.batch {
            for j in 0..h {
                let (g, i) = (b * rows + h + j, b * h + j);
                let recurrent = match &reset_product {
                    Some(p) => p[i],
                    None => r[i] * hg[g],
                };
                let o = act.apply(xt[g] + recurrent);
                state[i] = (1.0 - z[i]) * o + z[i] * state[i];
            }
        }
        Ok(state.clone())
    })?;
    assemble(a, &d, &[states], &[vec![state]])
}

/// One direction of an `lstm`: its weights, bias and peepholes.
struct LstmDirection<'a> {
    w_ih: &'a [f32],
    w_hh: &'a [f32],
    bias: Option<&'a [f32]>,
    peephole: Option<&'a [f32]>,
}

fn eval_lstm(a: &EvalArgs) -> Eval {
    let d = dims(a, LSTM_GATES)?;
    let (reverse, bidirectional) = direction(a.string("direction"), true).map_err(|m| a.invalid(m))?;
    let act = |p, default| activation(a.string(p), default).map_err(|m| a.invalid(m));
    let (rec, cell_act, out_act) =
        (act("recurrent_activation", Act::Sigmoid)?, act("cell_activation", Act::Tanh)?, act("activation", Act::Tanh)?);
    let clip = match a.opt_floats("clip")? {
        None => None,
        Some([c]) => Some(*c),
        Some(_) => return Err(a.invalid("`clip` must be a scalar")),
    };
    let (h, rows) = (d.hidden, LSTM_GATES * d.hidden);
    let direction_of = |suffix: &str| -> Result<LstmDirection, EvalError> {
        let w_ih = a.floats(&format!("weight_ih{suffix}"))?;
        let w_hh = a.floats(&format!("weight_hh{suffix}"))?;
        if w_ih.len() != rows * d.input || w_hh.len() != rows * h {
            return Err(a.shape_error("backward weights do not fit"));
        }
        Ok(LstmDirection {
            w_ih,
            w_hh,
            bias: opt_vec(a, &format!("bias{suffix}"), rows)?,
            peephole: opt_vec(a, &format!("peephole{suffix}"), LSTM_PEEPHOLES * h)?,
        })
    };
    let mut layers = vec![(direction_of("")?, reverse)];
    if bidirectional {
        layers.push((direction_of("_back")?, true));
    }
    let dirs = layers.len();
    let (h0, c0) = (initial(a, "initial_h", &d, dirs)?, initial(a, "initial_c", &d, dirs)?);
    let x = a.floats("x")?;
    let (mut all_states, mut last_h, mut last_c) = (Vec::new(), Vec::new(), Vec::new());
    for (k, (layer, backwards)) in layers.iter().enumerate() {
        let xg = project(a, x, d.seq * d.batch, layer.w_ih, rows, layer.bias)?;
        let (mut hs, mut cs) = (state_part(h0, &d, dirs, k), state_part(c0, &d, dirs, k));
        let states = sweep(&xg, &d, *backwards, |xt| {
            let hg = project(a, &hs, d.batch, layer.w_hh, rows, None)?;
            let peep = |gate: usize, j: usize, c: f32| layer.peephole.map_or(0.0, |p| p[gate * h + j] * c);
            for b in 0..d.batch {
                for j in 0..h {
                    let (g, s) = (b * rows + j, b * h + j);
                    let pre = |gate: usize| xt[g + gate * h] + hg[g + gate * h];
                    let input = rec.apply(pre(0) + peep(0, j, cs[s]));
                    let forget = rec.apply(pre(1) + peep(1, j, cs[s]));
                    let candidate = cell_act.apply(pre(3));
                    let mut c = forget * cs[s] + input * candidate;
                    if let Some(limit) = clip {
                        c = c.clamp(-limit, limit);
                    }
                    let output = rec.apply(pre(2) + peep(2, j, c));
                    cs[s] = c;
                    hs[s] = output * out_act.apply(c);
                }
            }
            Ok(hs.clone())
        })?;
        all_states.push(in_time_order(states, bidirectional && *backwards));
        last_h.push(hs);
        last_c.push(cs);
    }
    assemble(a, &d, &all_states, &[last_h, last_c])
}
