//! Recurrent layers: `aten::lstm`, `aten::gru`, `aten::rnn_tanh` and `aten::rnn_relu` (the
//! `.input` overloads `nn.LSTM`/`nn.GRU`/`nn.RNN` trace to), any number of layers, one or two
//! directions, `batch_first` or not, with or without biases, from given initial states.
//!
//! Lowered by unrolling over time with ops every target has and our interpreter runs: the input
//! projection of every step at once (one `linear` over the sequence), then per step a `linear`
//! of the hidden state, the gates (`sigmoid`/`tanh`) and the state update, exactly torch's
//! equations. MIL's fused `lstm` would serve LSTM too, but its `gru` applies the reset gate
//! before the hidden projection where torch applies it after (`r * (W_hn h + b_hn)`), so it is
//! not torch's GRU; one unrolled form keeps all four exact. Sequences are short in the models
//! that use them (frames of a speaker embedding, columns of an OCR line), so the op count stays
//! in the thousands.

use super::{dims_shown, int, Lower, Value};
use crate::mil::builder::Var;
use crate::mil::ops::{elementwise as ew, linear as lin, shape};
use crate::mil::Tensor;

/// Most unrolled steps (sequence length × layers × directions): each step is about ten ops, so
/// this bounds a program at about a million ops, beyond any real recurrent model.
const MAX_STEPS: usize = 1 << 17;

/// Which cell.
#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Lstm,
    Gru,
    RnnTanh,
    RnnRelu,
}

impl Cell {
    /// Gate blocks stacked in each weight (torch's order: LSTM i, f, g, o; GRU r, z, n).
    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
            Cell::RnnTanh | Cell::RnnRelu => 1,
        }
    }
}

fn built(r: Result<Var, crate::mil::ops::TypeError>) -> Result<Var, String> {
    r.map_err(|e| e.to_string())
}

/// `aten::lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)`.
pub fn lstm(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    recurrent(l, a, Cell::Lstm)
}

/// `aten::gru(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)`.
pub fn gru(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    recurrent(l, a, Cell::Gru)
}

/// `aten::rnn_tanh(…)`, arguments as [`gru`].
pub fn rnn_tanh(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    recurrent(l, a, Cell::RnnTanh)
}

/// `aten::rnn_relu(…)`, arguments as [`gru`].
pub fn rnn_relu(l: &mut Lower, a: &[Value]) -> Result<Value, String> {
    recurrent(l, a, Cell::RnnRelu)
}

fn recurrent(l: &mut Lower, a: &[Value], cell: Cell) -> Result<Value, String> {
    // The `.data` overloads (packed sequences) put a batch-sizes tensor second.
    if !matches!(a[3], Value::Bool(_) | Value::Int(_)) {
        return Err("packed sequences (pack_padded_sequence) are not supported: pass the padded batch".into());
    }
    let x = l.tensor(&a[0])?;
    let params: Vec<Var> = match &a[2] {
        Value::List(v) | Value::Tuple(v) => v.iter().map(|p| l.tensor(p)).collect::<Result<_, _>>()?,
        other => return Err(format!("params must be a list of tensors, got {}", other.describe())),
    };
    let bias = a[3] == Value::Bool(true) || a[3] == Value::Int(1);
    let layers = usize::try_from(int(&a[4])?).map_err(|_| "negative num_layers".to_string())?;
    let dirs = if a[7] == Value::Bool(true) { 2 } else { 1 };
    let batch_first = a[8] == Value::Bool(true);
    let per = 2 + 2 * usize::from(bias);
    if layers == 0 || params.len() != layers * dirs * per {
        let proj = params.len() == layers * dirs * (per + 1);
        return Err(if proj { "LSTM with proj_size is not supported".into() } else { format!("{} weights for {layers} layer(s) × {dirs} direction(s) (expected {})", params.len(), layers * dirs * per) });
    }
    let s = l.shape(&x)?;
    let [d0, d1, _] = s[..] else { return Err(format!("input must be 3-D (unbatched sequences are not supported), got {}", dims_shown(&s))) };
    let (steps, batch) = if batch_first { (d1, d0) } else { (d0, d1) };
    if steps == 0 || steps.saturating_mul(layers * dirs) > MAX_STEPS {
        return Err(format!("{steps} steps × {layers} layer(s) × {dirs} direction(s) is outside 1..={MAX_STEPS} unrolled steps"));
    }
    let hint = l.hint.clone();
    let transpose = |l: &mut Lower, v: &Var, name: &str| built(l.b.op(&shape::TRANSPOSE, &format!("{hint}_{name}")).arg("x", v).konst("perm", Tensor::i32_vec(&[1, 0, 2])).build1());
    // Time-major [T, B, I].
    let mut seq = if batch_first { transpose(l, &x, "time_major")? } else { x };
    let hidden = l.shape(&params[1])?.get(1).copied().ok_or("weight_hh must be 2-D")?;
    let states = initial_states(l, &a[1], cell, layers * dirs, batch, hidden)?;
    let (mut h_n, mut c_n) = (Vec::new(), Vec::new());
    for layer in 0..layers {
        let mut outs = Vec::new();
        for dir in 0..dirs {
            let k = layer * dirs + dir;
            let w = &params[k * per..(k + 1) * per];
            let name = format!("{hint}_l{layer}{}", if dir == 1 { "_reverse" } else { "" });
            let (h0, c0) = (&states.0[k], states.1.get(k));
            let (out, h, c) = direction(l, &name, cell, &seq, w, bias, h0, c0, dir == 1, hidden)?;
            outs.push(out);
            h_n.push(h);
            c_n.extend(c);
        }
        seq = concat(l, &format!("{hint}_l{layer}_out"), &outs, 2)?;
    }
    let output = if batch_first { transpose(l, &seq, "batch_major")? } else { seq };
    let h_n = concat(l, &format!("{hint}_h_n"), &h_n, 0)?;
    let mut result = vec![Value::Tensor(output), Value::Tensor(h_n)];
    if cell == Cell::Lstm {
        result.push(Value::Tensor(concat(l, &format!("{hint}_c_n"), &c_n, 0)?));
    }
    Ok(Value::Tuple(result))
}

/// Each layer-direction's initial hidden (and LSTM cell) state as `[1, B, H]`: given (`hx`, a
/// tensor or LSTM's `[h0, c0]`), or zeros.
fn initial_states(l: &mut Lower, hx: &Value, cell: Cell, count: usize, batch: usize, hidden: usize) -> Result<(Vec<Var>, Vec<Var>), String> {
    let given: Vec<Var> = match hx {
        Value::Tensor(t) => vec![t.clone()],
        Value::List(v) | Value::Tuple(v) => v.iter().map(|t| l.tensor(t)).collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    let want = if cell == Cell::Lstm { 2 } else { 1 };
    if given.len() != want {
        return Err(format!("hx holds {} tensor(s), expected {want}", given.len()));
    }
    let hint = l.hint.clone();
    let mut per_state = Vec::new();
    for (i, s) in given.iter().enumerate() {
        let shape = l.shape(s)?;
        if shape != [count, batch, hidden] {
            return Err(format!("initial state {} has shape {}, expected {}", i, dims_shown(&shape), dims_shown(&[count, batch, hidden])));
        }
        let sizes = vec![1i32; count];
        let parts = if count == 1 {
            vec![s.clone()]
        } else {
            l.b.op(&shape::SPLIT, &format!("{hint}_state{i}")).arg("x", s).konst("split_sizes", Tensor::i32_vec(&sizes)).konst("axis", Tensor::i32_scalar(0)).build().map_err(|e| e.to_string())?
        };
        per_state.push(parts);
    }
    let c = if per_state.len() > 1 { per_state.pop().unwrap_or_default() } else { Vec::new() };
    Ok((per_state.pop().unwrap_or_default(), c))
}

/// One direction of one layer over `seq` (`[T, B, I]`); returns its outputs `[T, B, H]` and its
/// final hidden (and cell) state `[1, B, H]`.
#[allow(clippy::too_many_arguments)]
fn direction(l: &mut Lower, name: &str, cell: Cell, seq: &Var, w: &[Var], bias: bool, h0: &Var, c0: Option<&Var>, reverse: bool, hidden: usize) -> Result<(Var, Var, Option<Var>), String> {
    let (w_ih, w_hh) = (&w[0], &w[1]);
    let g = cell.gates();
    for (wt, what) in [(w_ih, "weight_ih"), (w_hh, "weight_hh")] {
        let s = l.shape(wt)?;
        if s.len() != 2 || s[0] != g * hidden || (what == "weight_hh" && s[1] != hidden) {
            return Err(format!("{what} has shape {}, expected [{}, …]", dims_shown(&s), g * hidden));
        }
        if l.b.value(wt).is_none() {
            return Err(format!("{what} must be a weight, not a computed tensor"));
        }
    }
    let (b_ih, b_hh) = if bias { (Some(w[2].clone()), Some(w[3].clone())) } else { (None, None) };
    // All steps' input projections at once: [T, B, G·H].
    // GRU keeps b_hn apart (it is scaled by r); the other cells fold both biases in here.
    let folded_bias = match (&b_ih, &b_hh, cell) {
        (Some(bi), Some(_), Cell::Gru) => Some(bi.clone()),
        (Some(bi), Some(bh), _) => Some(built(l.b.op(&ew::ADD, &format!("{name}_bias")).arg("x", bi).arg("y", bh).build1())?),
        _ => None,
    };
    let mut xp = l.b.op(&lin::LINEAR, &format!("{name}_input")).arg("x", seq).arg("weight", w_ih);
    if let Some(b) = &folded_bias {
        xp = xp.arg("bias", b);
    }
    let xp = built(xp.build1())?;
    let steps = l.shape(seq)?[0];
    let xs = if steps == 1 {
        vec![xp]
    } else {
        l.b.op(&shape::SPLIT, &format!("{name}_steps")).arg("x", &xp).konst("split_sizes", Tensor::i32_vec(&vec![1; steps])).konst("axis", Tensor::i32_scalar(0)).build().map_err(|e| e.to_string())?
    };
    let (mut h, mut c) = (h0.clone(), c0.cloned());
    let mut outs = vec![h0.clone(); steps];
    let order: Vec<usize> = if reverse { (0..steps).rev().collect() } else { (0..steps).collect() };
    for t in order {
        let at = format!("{name}_t{t}");
        let mut hp = l.b.op(&lin::LINEAR, &format!("{at}_hidden")).arg("x", &h).arg("weight", w_hh);
        if cell == Cell::Gru {
            if let Some(b) = &b_hh {
                hp = hp.arg("bias", b);
            }
        }
        let hp = built(hp.build1())?;
        match cell {
            Cell::Lstm => {
                let gates = add(l, &format!("{at}_gates"), &xs[t], &hp)?;
                let [i, f, gg, o] = split4(l, &at, &gates, hidden)?;
                let i = unary(l, &format!("{at}_i"), &ew::SIGMOID, &i)?;
                let f = unary(l, &format!("{at}_f"), &ew::SIGMOID, &f)?;
                let gg = unary(l, &format!("{at}_g"), &ew::TANH, &gg)?;
                let o = unary(l, &format!("{at}_o"), &ew::SIGMOID, &o)?;
                let prev = c.take().ok_or("LSTM without a cell state")?;
                let kept = mul(l, &format!("{at}_keep"), &f, &prev)?;
                let new = mul(l, &format!("{at}_write"), &i, &gg)?;
                let cn = add(l, &format!("{at}_c"), &kept, &new)?;
                let tc = unary(l, &format!("{at}_tanh_c"), &ew::TANH, &cn)?;
                h = mul(l, &format!("{at}_h"), &o, &tc)?;
                c = Some(cn);
            }
            Cell::Gru => {
                let xparts = split_n(l, &format!("{at}_x"), &xs[t], hidden, 3)?;
                let hparts = split_n(l, &format!("{at}_hp"), &hp, hidden, 3)?;
                let r = add(l, &format!("{at}_r_in"), &xparts[0], &hparts[0])?;
                let r = unary(l, &format!("{at}_r"), &ew::SIGMOID, &r)?;
                let z = add(l, &format!("{at}_z_in"), &xparts[1], &hparts[1])?;
                let z = unary(l, &format!("{at}_z"), &ew::SIGMOID, &z)?;
                let rh = mul(l, &format!("{at}_rh"), &r, &hparts[2])?;
                let n = add(l, &format!("{at}_n_in"), &xparts[2], &rh)?;
                let n = unary(l, &format!("{at}_n"), &ew::TANH, &n)?;
                // h' = n + z·(h − n) = (1 − z)·n + z·h.
                let d = built(l.b.op(&ew::SUB, &format!("{at}_h_minus_n")).arg("x", &h).arg("y", &n).build1())?;
                let zd = mul(l, &format!("{at}_zd"), &z, &d)?;
                h = add(l, &format!("{at}_h"), &n, &zd)?;
            }
            Cell::RnnTanh | Cell::RnnRelu => {
                let s = add(l, &format!("{at}_pre"), &xs[t], &hp)?;
                let act = if cell == Cell::RnnTanh { &ew::TANH } else { &ew::RELU };
                h = unary(l, &format!("{at}_h"), act, &s)?;
            }
        }
        outs[t] = h.clone();
    }
    let out = concat(l, &format!("{name}_seq"), &outs, 0)?;
    Ok((out, h, c))
}

fn add(l: &mut Lower, hint: &str, x: &Var, y: &Var) -> Result<Var, String> {
    built(l.b.op(&ew::ADD, hint).arg("x", x).arg("y", y).build1())
}

fn mul(l: &mut Lower, hint: &str, x: &Var, y: &Var) -> Result<Var, String> {
    built(l.b.op(&ew::MUL, hint).arg("x", x).arg("y", y).build1())
}

fn unary(l: &mut Lower, hint: &str, def: &'static crate::mil::ops::OpDef, x: &Var) -> Result<Var, String> {
    built(l.b.op(def, hint).arg("x", x).build1())
}

/// `x` split on its last axis into `n` blocks of `hidden`.
fn split_n(l: &mut Lower, hint: &str, x: &Var, hidden: usize, n: usize) -> Result<Vec<Var>, String> {
    let h = i32::try_from(hidden).map_err(|_| format!("hidden size {hidden} does not fit int32"))?;
    l.b.op(&shape::SPLIT, hint).arg("x", x).konst("split_sizes", Tensor::i32_vec(&vec![h; n])).konst("axis", Tensor::i32_scalar(-1)).build().map_err(|e| e.to_string())
}

fn split4(l: &mut Lower, at: &str, x: &Var, hidden: usize) -> Result<[Var; 4], String> {
    let v = split_n(l, &format!("{at}_gate"), x, hidden, 4)?;
    v.try_into().map_err(|_| "LSTM gates did not split in four".to_string())
}

fn concat(l: &mut Lower, hint: &str, parts: &[Var], axis: i32) -> Result<Var, String> {
    if let [one] = parts {
        return Ok(one.clone());
    }
    built(l.b.op(&shape::CONCAT, hint).args("values", parts).konst("axis", Tensor::i32_scalar(axis)).konst("interleave", Tensor::bool_scalar(false)).build1())
}
