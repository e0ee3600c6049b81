//! `convert --compress SPEC`: large weights stored in Core ML's compressed forms, which Core ML
//! decompresses when it loads the model. `int8` is per-output-channel symmetric linear
//! quantization (`constexpr_affine_dequantize`, as coremltools' `linear_quantize_weights`
//! default); `palettize:N` is an N-bit look-up table per tensor found by k-means (iOS16
//! `constexpr_lut_to_dense`, as `palettize_weights` in `kmeans` mode). From iOS18:
//! `int4[:block=B]` is symmetric int4 with one scale per block of B input channels of each
//! output channel (`constexpr_blockwise_shift_scale`), and `palettize:N[:group=G]` writes the
//! iOS18 `constexpr_lut_to_dense` (uint-N indices, a table per group of G output channels, 3
//! bits allowed). Runs after the passes and the precision decisions, on the `main` function
//! `pipeline::finish` is about to return; `package::read` (through `mil::constexpr::fold`)
//! reads the result back as dense weights, so `validate` and `inspect` see what Core ML will
//! compute with.
//!
//! `auto` picks a table size per weight under an accuracy gate ([`auto`]).
//!
//! Which weights: finite float constants of rank ≥ 2 with at least [`MIN_ELEMENTS`] elements
//! (the weights of linear, convolution, matmul and embedding layers). Biases, norm parameters
//! and small tensors stay as they are, as coremltools' `weight_threshold` default leaves them,
//! and so do constants holding ±inf or NaN (attention masks).

use half::f16;

use crate::interp::Array;
use crate::mil::{DType, Function, Operation, Opset, Tensor};

/// Fewest elements a compressed weight has: coremltools' default `weight_threshold` (2048);
/// below it the bytes saved are few and the table or scales cost a larger share.
pub const MIN_ELEMENTS: usize = 2048;
/// Index widths `constexpr_lut_to_dense` accepts in iOS16 (its lut has 2, 4, 16, 64 or 256
/// entries); 3-bit tables and grouped channels are iOS18 forms.
pub const IOS16_LUT_BITS: &[u32] = &[1, 2, 4, 6, 8];
/// Largest magnitude of symmetric int8 codes: ±127, so that 0 is exact and the range is symmetric.
const INT8_MAX_CODE: f32 = 127.0;
/// Rounds of Lloyd's iteration in the 1-D k-means; it stops earlier when no centroid moves.
const KMEANS_ROUNDS: usize = 100;

/// Index widths the iOS18 `constexpr_lut_to_dense` adds (uint3 indices).
pub const IOS18_LUT_BITS: &[u32] = &[1, 2, 3, 4, 6, 8];
/// Input channels per int4 scale by default: coremltools' `per_block` default block size.
pub const DEFAULT_INT4_BLOCK: usize = 32;
/// Largest magnitude of symmetric int4 codes: ±7, as coremltools' `linear_symmetric` int4.
const INT4_MAX_CODE: f32 = 7.0;

/// A compression asked for with `--compress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spec {
    /// Per-output-channel symmetric int8.
    Int8,
    /// iOS18 symmetric int4, one scale per `block` input channels of each output channel.
    Int4 { block: usize },
    /// A look-up table of 2^bits values per tensor (`group` 0), or per `group` output channels
    /// (iOS18).
    Palettize { bits: u32, group: usize },
    /// Tables of [`AUTO_BITS`] bits chosen per weight by [`auto`] under a [`Gate`].
    Auto,
}

impl Spec {
    /// Parses `--compress SPEC` for a package of `opset`; the error names what is accepted.
    pub fn parse(s: &str, opset: Opset) -> Result<Spec, String> {
        let number = |v: &str, what: &str| v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| format!("`{s}`: {what} takes a positive number"));
        let ios18 = |what: &str| if opset < Opset::Ios18 { Err(format!("`{s}`: {what} is an iOS18 form; it needs --target iOS18 or later")) } else { Ok(()) };
        let spec = match s.split(':').collect::<Vec<_>>()[..] {
            ["int8"] => Spec::Int8,
            ["int4"] => {
                ios18("int4")?;
                Spec::Int4 { block: DEFAULT_INT4_BLOCK }
            }
            ["int4", b] if b.starts_with("block=") => {
                ios18("int4")?;
                Spec::Int4 { block: number(&b["block=".len()..], "block=")? }
            }
            ["palettize", n] | ["palettize", n, _] => {
                let bits: u32 = n.parse().map_err(|_| format!("`{s}`: palettize:N takes a number of bits"))?;
                if !IOS18_LUT_BITS.contains(&bits) {
                    return Err(format!("`{s}`: palettize takes 1, 2, 3, 4, 6 or 8 bits"));
                }
                let group = match s.split(':').nth(2) {
                    None => 0,
                    Some(g) if g.starts_with("group=") => number(&g["group=".len()..], "group=")?,
                    Some(other) => return Err(format!("`{s}`: `{other}` is not group=G")),
                };
                if bits == 3 {
                    ios18("a 3-bit table")?;
                }
                if group > 0 {
                    ios18("a table per group of channels")?;
                }
                Spec::Palettize { bits, group }
            }
            ["auto"] => Spec::Auto,
            _ => return Err(format!("`{}`: unknown compression; use int8, int4[:block=B], palettize:N[:group=G] (N = 1, 2, 3, 4, 6, 8) or auto", crate::files::shown(s))),
        };
        if opset < Opset::Ios16 {
            return Err(format!("`{s}`: compressed weights need --target iOS16 or later"));
        }
        Ok(spec)
    }

    /// How the spec is named in reports (`int8`, `int4:block=32`, `palettize:4`, `palettize:4:group=16`).
    pub fn name(self) -> String {
        match self {
            Spec::Int8 => "int8".into(),
            Spec::Int4 { block } => format!("int4:block={block}"),
            Spec::Palettize { bits, group: 0 } => format!("palettize:{bits}"),
            Spec::Palettize { bits, group } => format!("palettize:{bits}:group={group}"),
            Spec::Auto => "auto".into(),
        }
    }
}

/// One weight stored compressed, for `convert`'s report.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Compressed {
    /// The weight's name in the program.
    pub name: String,
    /// `int8` or `palettize:N`.
    pub how: String,
    /// Bytes stored (codes plus scales or table).
    pub stored_bytes: usize,
    /// Bytes of the dense weight it replaces.
    pub dense_bytes: usize,
}

/// Whether `op` is a weight `--compress` compresses (see the module doc).
fn eligible(op: &Operation) -> bool {
    op.const_val().is_some_and(|t| matches!(t.dtype(), DType::F16 | DType::F32) && t.shape().len() >= 2 && t.len() >= MIN_ELEMENTS)
}

/// The compressed forms of the consts at `picked` (op indices of `f`'s top block), each at each
/// of `specs`, computed on all cores: `out[w][s]` is weight `w` at `specs[s]`. A constant
/// holding ±inf or NaN (an attention mask, not a weight) has no forms and is dropped from
/// `picked`.
fn compress_all(f: &Function, picked: &mut Vec<usize>, specs: &[Spec]) -> Result<Vec<Vec<Form>>, String> {
    let ops = &f.block.operations;
    let jobs: Vec<(usize, Spec)> = picked.iter().flat_map(|&i| specs.iter().map(move |&s| (i, s))).collect();
    let mut done: Vec<Option<Result<Option<Form>, String>>> = vec![None; jobs.len()];
    let work = jobs.iter().map(|&(i, _)| ops[i].const_val().map_or(0, Tensor::len) * 16).sum();
    crate::numeric::par::for_rows(&mut done, 1, work, |first, part| {
        for (k, slot) in part.iter_mut().enumerate() {
            let (i, spec) = jobs[first + k];
            let t = ops[i].const_val().expect("picked consts");
            let r = match spec {
                Spec::Int8 => int8(t),
                Spec::Int4 { block } => int4(t, block),
                Spec::Palettize { bits, group } => palettize(t, bits, group, f.opset >= Opset::Ios18),
                Spec::Auto => Err("auto is not one compression".into()),
            };
            let r = r.map(|form| form.map(|mut form| {
                if form.how.is_empty() {
                    form.how = spec.name();
                }
                form
            }));
            *slot = Some(r.map_err(|e| format!("weight `{}`: {e}", ops[i].name)));
        }
    });
    let mut flat = done.into_iter().map(|r| r.expect("every slot is filled"));
    let mut forms = Vec::with_capacity(picked.len());
    let mut kept = Vec::with_capacity(picked.len());
    for &i in picked.iter() {
        let each: Vec<Option<Form>> = specs.iter().map(|_| flat.next().expect("one per job")).collect::<Result<_, _>>()?;
        if let Some(each) = each.into_iter().collect::<Option<Vec<Form>>>() {
            forms.push(each);
            kept.push(i);
        }
    }
    *picked = kept;
    Ok(forms)
}

/// One weight in one compressed form: iOS16 forms carry their values as attributes, iOS18
/// forms as inputs (made `const` ops by [`hoist_inputs`] before the package is written).
#[derive(Clone)]
struct Form {
    op_type: &'static str,
    attributes: BTreeAttrs,
    inputs: Vec<(&'static str, Tensor)>,
    stored_bytes: usize,
    how: String,
}

impl Form {
    /// An iOS16 form: values as attributes.
    fn attributes(op_type: &'static str, attributes: BTreeAttrs) -> Form {
        let stored_bytes = attributes.iter().filter(|(k, _)| !matches!(k.as_str(), "shape" | "axis")).map(|(_, t)| t.byte_len()).sum();
        Form { op_type, attributes, inputs: Vec::new(), stored_bytes, how: String::new() }
    }

    /// An iOS18 form: values as inputs.
    fn inputs(op_type: &'static str, inputs: Vec<(&'static str, Tensor)>) -> Form {
        let stored_bytes = inputs.iter().map(|(_, t)| t.byte_len()).sum();
        Form { op_type, attributes: BTreeAttrs::new(), inputs, stored_bytes, how: String::new() }
    }
}

/// Makes const op `i` of `f` the compressed `form`; returns its report line.
fn apply(f: &mut Function, i: usize, form: &Form) -> Compressed {
    let op = &mut f.block.operations[i];
    let dense_bytes = op.const_val().map_or(0, Tensor::byte_len);
    op.op_type = form.op_type.into();
    op.attributes = form.attributes.clone();
    op.inputs = form.inputs.iter().map(|(p, t)| (p.to_string(), vec![crate::mil::Argument::Value(t.clone())])).collect();
    Compressed { name: op.outputs[0].name.clone(), how: form.how.clone(), stored_bytes: form.stored_bytes, dense_bytes }
}

/// Gives each literal input of a compressed weight (iOS18 forms) a `const` op of its own right
/// before it, named after the weight and parameter, as coremltools writes them: the constexpr
/// ops take their inputs from constants.
fn hoist_inputs(f: &mut Function) {
    let mut taken: std::collections::HashSet<String> = f.block.defined_names().into_iter().map(String::from).collect();
    taken.extend(f.inputs.iter().map(|i| i.name.clone()));
    let mut ops = Vec::with_capacity(f.block.operations.len());
    for mut op in std::mem::take(&mut f.block.operations) {
        if op.op_type.starts_with("constexpr_") {
            let base = op.outputs.first().map_or_else(|| op.name.clone(), |o| o.name.clone());
            for (param, args) in &mut op.inputs {
                for a in args.iter_mut() {
                    let crate::mil::Argument::Value(t) = a else { continue };
                    let mut name = format!("{base}_{param}");
                    while !taken.insert(name.clone()) {
                        name.push('_');
                    }
                    ops.push(Operation {
                        op_type: "const".into(),
                        name: name.clone(),
                        inputs: Vec::new(),
                        outputs: vec![crate::mil::NamedType { name: name.clone(), ty: crate::mil::ValueType::Tensor(t.tensor_type()) }],
                        attributes: BTreeAttrs::from([("val".to_string(), t.clone())]),
                        blocks: Vec::new(),
                        source: None,
                    });
                    *a = crate::mil::Argument::Name(name);
                }
            }
        }
        ops.push(op);
    }
    f.block.operations = ops;
}

/// Replaces every eligible constant of `f`'s top block by its compressed form (weights in
/// parallel), returning what was compressed. `Spec::Auto` goes through [`auto`] instead.
pub fn run(f: &mut Function, spec: Spec) -> Result<Vec<Compressed>, String> {
    let mut picked: Vec<usize> = (0..f.block.operations.len()).filter(|&i| eligible(&f.block.operations[i])).collect();
    let forms = compress_all(f, &mut picked, &[spec])?;
    let done = picked.iter().zip(&forms).map(|(&i, w)| apply(f, i, &w[0])).collect();
    hoist_inputs(f);
    Ok(done)
}

/// Output channels per table of `--compress auto` from iOS18 (coremltools' per-grouped-channel
/// default group size): 16 tables of 2^bits fp16 entries per 16 rows add under 1 % to a
/// 384-wide 4-bit weight.
pub const AUTO_GROUP: usize = 16;

/// Table sizes `--compress auto` chooses from, most accurate first.
pub const AUTO_BITS: &[u32] = &[8, 6, 4, 2];

/// What `--compress auto` must keep, measured on every output against the uncompressed
/// program on calibration inputs: the worst output's PSNR (against its peak) and cosine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gate {
    /// Least PSNR in dB (`--max-drift psnr:DB`); −∞ when only a cosine is asked for.
    pub min_psnr_db: f64,
    /// Least cosine (`--min-cosine`); −1 checks nothing.
    pub min_cosine: f64,
}

impl Default for Gate {
    /// PSNR ≥ 35 dB, whisperkittools' gate for compressed Whisper layers; cosine unchecked.
    fn default() -> Gate {
        Gate { min_psnr_db: 35.0, min_cosine: -1.0 }
    }
}

/// The worst output's PSNR and cosine of `f` (compressed forms folded) on `inputs` against
/// `reference`.
fn measure(f: &Function, inputs: &[(String, Array)], reference: &[(String, Array)]) -> Result<(f64, f64), String> {
    let mut g = f.clone();
    crate::mil::constexpr::fold(&mut g)?;
    let out = crate::interp::run_from_zero_states(&g, inputs).map_err(|e| e.to_string())?;
    let criterion = crate::validate::metrics::Criterion::Scaled { min_psnr_db: 0.0, max_error_of_peak: 1.0 };
    let reports = crate::validate::compare(&out, reference, criterion).map_err(|e| e.to_string())?;
    Ok(reports.iter().fold((f64::INFINITY, f64::INFINITY), |(p, c), r| (p.min(r.drift.psnr_db), c.min(r.drift.cosine))))
}

/// Each eligible weight of a function at every [`AUTO_BITS`] table size, with its sensitivity:
/// the worst output PSNR (dB) of the program with only that weight at 4 bits, on calibration
/// inputs. What `--compress auto` chooses from, here and in `speech::compress`.
pub struct Ladder {
    /// Op indices of the weights in the function's top block.
    picked: Vec<usize>,
    /// `forms[w][level]`: weight `w` at `AUTO_BITS[level]` bits.
    forms: Vec<Vec<Form>>,
    /// Worst output PSNR with weight `w` alone at 4 bits (higher: less sensitive).
    pub sensitivity: Vec<f64>,
}

impl Ladder {
    /// Measures the ladder of `f` on `inputs` against `reference` (`f`'s outputs on them).
    pub fn measure(f: &Function, inputs: &[(String, Array)], reference: &[(String, Array)]) -> Result<Ladder, String> {
        let mut picked: Vec<usize> = (0..f.block.operations.len()).filter(|&i| eligible(&f.block.operations[i])).collect();
        // From iOS18 a table per group of output channels costs little and keeps more.
        let group = if f.opset >= Opset::Ios18 { AUTO_GROUP } else { 0 };
        let specs: Vec<Spec> = AUTO_BITS.iter().map(|&bits| Spec::Palettize { bits, group }).collect();
        let forms = compress_all(f, &mut picked, &specs)?;
        let mut ladder = Ladder { picked, forms, sensitivity: Vec::new() };
        let probe = AUTO_BITS.iter().position(|&b| b == 4).unwrap_or(0);
        for w in 0..ladder.picked.len() {
            let mut alone = vec![None; ladder.picked.len()];
            alone[w] = Some(probe);
            ladder.sensitivity.push(measure(&ladder.with(f, &alone), inputs, reference)?.0);
        }
        Ok(ladder)
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.picked.len()
    }

    /// True when no weight is eligible.
    pub fn is_empty(&self) -> bool {
        self.picked.is_empty()
    }

    /// A copy of `f` with weight `w` at level `choice[w]` (an index into [`AUTO_BITS`]; `None`
    /// leaves it dense), in the form the package stores.
    pub fn with(&self, f: &Function, choice: &[Option<usize>]) -> Function {
        let mut g = f.clone();
        self.apply(&mut g, choice);
        g
    }

    /// Puts each weight of `f` at its level in `choice`; returns the report lines.
    pub fn apply(&self, f: &mut Function, choice: &[Option<usize>]) -> Vec<Compressed> {
        let done = self.picked.iter().zip(choice).enumerate().filter_map(|(w, (&i, c))| c.map(|level| apply(f, i, &self.forms[w][level]))).collect();
        hoist_inputs(f);
        done
    }
}

/// `--compress auto`: one table per weight of [`AUTO_BITS`] bits, as few as `gate` allows on
/// `inputs`. Each weight's sensitivity is its drift alone at 4 bits ([`Ladder`]); from all at 8
/// bits, the least sensitive weights step down first, one level at a time, each step kept only
/// when the whole program still passes the gate. A weight that fails the gate even at 8 bits
/// stays dense. Returns what was compressed and a line with the final worst PSNR and cosine.
pub fn auto(f: &mut Function, inputs: &[(String, Array)], gate: Gate) -> Result<(Vec<Compressed>, String), String> {
    let reference = crate::interp::run_from_zero_states(f, inputs).map_err(|e| e.to_string())?;
    let passes = |m: (f64, f64)| m.0 >= gate.min_psnr_db && m.1 >= gate.min_cosine;
    let ladder = Ladder::measure(f, inputs, &reference)?;
    let sensitivity = &ladder.sensitivity;
    let mut order: Vec<usize> = (0..ladder.len()).collect();
    order.sort_by(|&a, &b| sensitivity[b].total_cmp(&sensitivity[a]));
    let mut choice: Vec<Option<usize>> = vec![Some(0); ladder.len()];
    let mut metric = measure(&ladder.with(f, &choice), inputs, &reference)?;
    if !passes(metric) {
        // Even 8 bits everywhere fails: add weights at 8 bits, least sensitive first, while it passes.
        choice = vec![None; ladder.len()];
        metric = measure(&ladder.with(f, &choice), inputs, &reference)?;
        for &w in &order {
            choice[w] = Some(0);
            let m = measure(&ladder.with(f, &choice), inputs, &reference)?;
            if passes(m) {
                metric = m;
            } else {
                choice[w] = None;
            }
        }
    }
    let mut stuck = vec![false; ladder.len()];
    for level in 1..AUTO_BITS.len() {
        for &w in &order {
            if stuck[w] || choice[w] != Some(level - 1) {
                continue;
            }
            choice[w] = Some(level);
            let m = measure(&ladder.with(f, &choice), inputs, &reference)?;
            if passes(m) {
                metric = m;
            } else {
                choice[w] = Some(level - 1);
                stuck[w] = true;
            }
        }
    }
    let report = ladder.apply(f, &choice);
    let mut limits = Vec::new();
    if gate.min_psnr_db > f64::NEG_INFINITY {
        limits.push(format!("PSNR >= {} dB", gate.min_psnr_db));
    }
    if gate.min_cosine > -1.0 {
        limits.push(format!("cosine >= {}", gate.min_cosine));
    }
    let summary = format!("worst output on the calibration inputs: PSNR {:.1} dB, cosine {:.6} (gate: {})", metric.0, metric.1, limits.join(", "));
    Ok((report, summary))
}

type BTreeAttrs = std::collections::BTreeMap<String, Tensor>;

/// A float tensor of `dtype` (fp16 or fp32) from f32 values.
fn floats(dtype: DType, shape: &[usize], v: &[f32]) -> Result<Tensor, String> {
    Ok(match dtype {
        DType::F16 => Tensor::from_f32_as_f16(shape, v),
        _ => Tensor::from_f32(shape, v),
    })
}

/// Symmetric int8 along axis 0: per output channel, scale = max |w| / 127 (in the weight's
/// dtype, so the dequantized weight has it), codes round(w / scale).
fn int8(t: &Tensor) -> Result<Option<Form>, String> {
    let v = t.to_f32_vec().ok_or("not a float tensor")?;
    let channels = t.shape()[0];
    let inner = v.len() / channels.max(1);
    let mut scales = Vec::with_capacity(channels);
    for row in v.chunks(inner.max(1)) {
        let peak = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        if !peak.is_finite() {
            return Ok(None);
        }
        let mut s = peak / INT8_MAX_CODE;
        if t.dtype() == DType::F16 {
            // The scale the package stores is fp16: quantize against that value.
            s = f16::from_f32(s).to_f32();
            if s == 0.0 && peak > 0.0 {
                return Err(format!("its channel peak {peak:e} gives an int8 scale below fp16's range"));
            }
        }
        scales.push(if s == 0.0 { 1.0 } else { s });
    }
    let codes: Vec<u8> = v
        .iter()
        .enumerate()
        .map(|(k, &x)| (x / scales[k / inner.max(1)]).round().clamp(-INT8_MAX_CODE, INT8_MAX_CODE) as i8 as u8)
        .collect();
    let q = Tensor::from_bytes(DType::I8, t.shape(), codes).map_err(|e| e.to_string())?;
    let zp = Tensor::from_bytes(DType::I8, &[channels], vec![0; channels]).map_err(|e| e.to_string())?;
    let scale = floats(t.dtype(), &[channels], &scales)?;
    let attrs = BTreeAttrs::from([
        ("quantized_data".into(), q),
        ("zero_point".into(), zp),
        ("scale".into(), scale),
        ("axis".into(), Tensor::i32_scalar(0)),
    ]);
    Ok(Some(Form::attributes("constexpr_affine_dequantize", attrs)))
}

/// The scale, in the weight's dtype, that maps `peak` to `max_code`; `None` when the peak is
/// not finite; an error when fp16 cannot hold it.
fn symmetric_scale(peak: f32, max_code: f32, dtype: DType) -> Result<Option<f32>, String> {
    if !peak.is_finite() {
        return Ok(None);
    }
    let mut s = peak / max_code;
    if dtype == DType::F16 {
        s = f16::from_f32(s).to_f32();
        if s == 0.0 && peak > 0.0 {
            return Err(format!("a block peak {peak:e} gives a scale below fp16's range"));
        }
    }
    Ok(Some(if s == 0.0 { 1.0 } else { s }))
}

/// iOS18 symmetric int4 (`constexpr_blockwise_shift_scale`): per output channel (axis 0) and
/// block of `block` input channels (axis 1; the whole axis when `block` does not divide it),
/// scale = max |w| / 7 in the weight's dtype, codes round(w / scale) in int4.
fn int4(t: &Tensor, block: usize) -> Result<Option<Form>, String> {
    let v = t.to_f32_vec().ok_or("not a float tensor")?;
    let shape = t.shape();
    let (out, inp) = (shape[0], shape[1]);
    let rest: usize = shape[2..].iter().product();
    let block = if block > 0 && inp % block == 0 { block } else { inp };
    let blocks = inp / block.max(1);
    let mut scales = Vec::with_capacity(out * blocks);
    for o in 0..out {
        for b in 0..blocks {
            let start = (o * inp + b * block) * rest;
            let peak = v[start..start + block * rest].iter().fold(0f32, |m, x| m.max(x.abs()));
            match symmetric_scale(peak, INT4_MAX_CODE, t.dtype())? {
                Some(s) => scales.push(s),
                None => return Ok(None),
            }
        }
    }
    let codes: Vec<i64> = v
        .iter()
        .enumerate()
        .map(|(k, &x)| {
            let (o, i) = (k / (inp * rest), (k / rest) % inp);
            (x / scales[o * blocks + i / block]).round().clamp(-INT4_MAX_CODE, INT4_MAX_CODE) as i64
        })
        .collect();
    let data = Tensor::from_ints(DType::I4, shape, &codes).ok_or("int4 codes out of range")?;
    let mut scale_shape = vec![1; shape.len()];
    scale_shape[0] = out;
    scale_shape[1] = blocks;
    let scale = floats(t.dtype(), &scale_shape, &scales)?;
    Ok(Some(Form::inputs("constexpr_blockwise_shift_scale", vec![("data", data), ("scale", scale)])))
}

/// A 2^bits-entry table by 1-D k-means and each value's nearest entry: one table per tensor,
/// or (`group` > 0) per `group` output channels. iOS16 form (`ios18` false): the table, the
/// indices packed LSB first in uint8 and the shape as attributes. iOS18 form: uint-`bits`
/// indices of the weight's shape and a `[groups, 1…, 2^bits, 1]` table as inputs.
fn palettize(t: &Tensor, bits: u32, group: usize, ios18: bool) -> Result<Option<Form>, String> {
    let v = t.to_f32_vec().ok_or("not a float tensor")?;
    if v.iter().any(|x| !x.is_finite()) {
        return Ok(None);
    }
    let k = 1usize << bits;
    let channels = t.shape()[0];
    // Groups must split the channels evenly (the iOS18 table blocks divide the axis): the
    // largest divisor of the channel count up to the asked size; when that is below both the
    // size asked and lint rule ANE013's minimum (tables for so few channels cost speed), one
    // table per tensor. Reported when it differs from the size asked.
    let asked = group;
    let group = match (1..=group.min(channels)).rev().find(|g| channels % g == 0) {
        _ if group == 0 || group >= channels => channels,
        Some(g) if g >= group.min(crate::lint::rules::ane013_small_palette_groups::MIN_ROWS_PER_TABLE) => g,
        _ => channels,
    };
    let per_group = v.len() / channels * group;
    let mut luts = Vec::with_capacity(channels / group * k);
    let mut idx = vec![0i64; v.len()];
    for (values, idx) in v.chunks(per_group).zip(idx.chunks_mut(per_group)) {
        let mut lut = kmeans_1d(values, k);
        if t.dtype() == DType::F16 {
            // The table is stored in fp16: assign against the rounded entries.
            for c in &mut lut {
                *c = f16::from_f32(*c).to_f32();
            }
            lut.sort_by(f32::total_cmp);
        }
        let bounds: Vec<f32> = lut.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        for (i, &x) in idx.iter_mut().zip(values) {
            *i = bounds.partition_point(|&b| b < x) as i64;
        }
        luts.extend(lut);
    }
    if ios18 {
        let dtype = match bits {
            1 => DType::U1,
            2 => DType::U2,
            3 => DType::U3,
            4 => DType::U4,
            6 => DType::U6,
            _ => DType::U8,
        };
        let indices = Tensor::from_ints(dtype, t.shape(), &idx).ok_or("indices out of range")?;
        let mut lut_shape = vec![1; t.shape().len() + 2];
        lut_shape[0] = channels / group;
        lut_shape[t.shape().len()] = k;
        let lut = floats(t.dtype(), &lut_shape, &luts)?;
        let mut form = Form::inputs("constexpr_lut_to_dense", vec![("indices", indices), ("lut", lut)]);
        if asked > 0 && asked < channels && group != asked {
            form.how = if group == channels { format!("palettize:{bits}") } else { format!("palettize:{bits}:group={group}") };
        }
        return Ok(Some(form));
    }
    if group != channels {
        return Err("a table per group of channels is an iOS18 form".into());
    }
    let mut packed = vec![0u8; (v.len() * bits as usize).div_ceil(8)];
    for (i, &x) in idx.iter().enumerate() {
        for b in 0..bits as usize {
            let bit = i * bits as usize + b;
            packed[bit / 8] |= (((x >> b) & 1) as u8) << (bit % 8);
        }
    }
    let lut = floats(t.dtype(), &[k], &luts)?;
    let indices = Tensor::from_bytes(DType::U8, &[packed.len()], packed).map_err(|e| e.to_string())?;
    let shape: Vec<u8> = t.shape().iter().flat_map(|&d| (d as u32).to_le_bytes()).collect();
    let shape = Tensor::from_bytes(DType::U32, &[t.shape().len()], shape).map_err(|e| e.to_string())?;
    Ok(Some(Form::attributes("constexpr_lut_to_dense", BTreeAttrs::from([("lut".into(), lut), ("indices".into(), indices), ("shape".into(), shape)]))))
}

/// `k` centroids of `values` (finite), ascending: Lloyd's iteration in one dimension, started
/// from [`companded_start`]. On sorted values each cluster is a run between midpoints of neighbouring
/// centroids, so a round is k binary searches and prefix-sum means. Deterministic. Fewer
/// distinct values than `k` are the table themselves (padded with the largest).
pub fn kmeans_1d(values: &[f32], k: usize) -> Vec<f32> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f32::total_cmp);
    let mut distinct = sorted.clone();
    distinct.dedup();
    if distinct.len() <= k {
        let last = *distinct.last().unwrap_or(&0.0);
        distinct.resize(k, last);
        return distinct;
    }
    let n = sorted.len();
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0f64);
    for &x in &sorted {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + f64::from(x));
    }
    let mut c = companded_start(&sorted, k);
    for _ in 0..KMEANS_ROUNDS {
        let mut next = c.clone();
        let mut start = 0;
        for j in 0..k {
            let end = if j + 1 == k { n } else { sorted.partition_point(|&x| x <= (c[j] + c[j + 1]) / 2.0) };
            if end > start {
                next[j] = ((prefix[end] - prefix[start]) / (end - start) as f64) as f32;
            }
            start = end.max(start);
        }
        next.sort_by(f32::total_cmp);
        if next == c {
            break;
        }
        c = next;
    }
    c
}

/// Bins of the histogram [`companded_start`] places its starting centroids with.
const START_BINS: usize = 4096;

/// `k` starting centroids for sorted `values` whose range is not empty: quantiles of the
/// histogram density raised to 1/3, the point density of an optimal fine quantizer (Panter and
/// Dite). Plain quantiles leave the rare large weights to the bulk's clusters, and even spacing
/// leaves most centroids in empty tails, where Lloyd's iteration cannot move them.
fn companded_start(sorted: &[f32], k: usize) -> Vec<f32> {
    // In f64: the range of fp32 values may overflow fp32.
    let (lo, hi) = (f64::from(sorted[0]), f64::from(sorted[sorted.len() - 1]));
    let width = (hi - lo) / START_BINS as f64;
    let mut counts = vec![0usize; START_BINS];
    for &x in sorted {
        counts[(((f64::from(x) - lo) / width) as usize).min(START_BINS - 1)] += 1;
    }
    let density: Vec<f64> = counts.iter().map(|&c| (c as f64).cbrt()).collect();
    let total: f64 = density.iter().sum();
    let mut out = Vec::with_capacity(k);
    let (mut bin, mut below) = (0, 0.0);
    for j in 0..k {
        let target = total * (j as f64 + 0.5) / k as f64;
        while bin + 1 < START_BINS && below + density[bin] < target {
            below += density[bin];
            bin += 1;
        }
        let within = if density[bin] > 0.0 { ((target - below) / density[bin]).clamp(0.0, 1.0) } else { 0.5 };
        out.push((lo + width * (bin as f64 + within)) as f32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(Spec::parse("int8", Opset::Ios16), Ok(Spec::Int8));
        assert_eq!(Spec::parse("palettize:4", Opset::Ios17), Ok(Spec::Palettize { bits: 4, group: 0 }));
        assert_eq!(Spec::parse("palettize:3:group=16", Opset::Ios18), Ok(Spec::Palettize { bits: 3, group: 16 }));
        assert_eq!(Spec::parse("int4", Opset::Ios18), Ok(Spec::Int4 { block: DEFAULT_INT4_BLOCK }));
        assert_eq!(Spec::parse("int4:block=64", Opset::Ios18).map(Spec::name), Ok("int4:block=64".to_string()));
        assert_eq!(Spec::parse("auto", Opset::Ios16), Ok(Spec::Auto));
        for (bad, says) in [
            ("palettize:5", "1, 2, 3, 4, 6 or 8"),
            ("palettize:x", "number of bits"),
            ("palettize:3", "needs --target iOS18"),
            ("palettize:4:group=8", "needs --target iOS18"),
            ("int4", "needs --target iOS18"),
            ("int16", "unknown compression"),
        ] {
            let e = Spec::parse(bad, Opset::Ios16).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(Spec::parse("int8", Opset::Ios15).unwrap_err().contains("iOS16"));
    }

    #[test]
    fn masks_with_infinities_stay_dense_and_weights_are_compressed() {
        use crate::mil::builder::Builder;
        let mut b = Builder::new(Opset::Ios16);
        let n = 64 * 64;
        let mask: Vec<f32> = (0..n).map(|i| if i % 64 > i / 64 { f32::NEG_INFINITY } else { 0.0 }).collect();
        let weight: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let m = b.konst("mask", Tensor::from_f32(&[64, 64], &mask));
        let w = b.konst("weight", Tensor::from_f32(&[64, 64], &weight));
        let mut f = b.finish(&[m, w]);
        let done = run(&mut f, Spec::Int8).unwrap();
        assert_eq!(done.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["weight"]);
        assert!(done[0].stored_bytes < done[0].dense_bytes);
        let kinds: Vec<&str> = f.block.operations.iter().map(|o| o.op_type.as_str()).collect();
        assert_eq!(kinds, ["const", "constexpr_affine_dequantize"]);
    }

    #[test]
    fn kmeans_finds_well_separated_clusters_and_keeps_few_values_exact() {
        let v: Vec<f32> = (0..300).map(|i| [-2.0, 0.5, 3.0][i % 3] + (i as f32 * 0.001) % 0.01).collect();
        let c = kmeans_1d(&v, 4);
        for centre in [-2.0, 0.5, 3.0] {
            assert!(c.iter().any(|&x| (x - centre - 0.005).abs() < 0.01), "{c:?}");
        }
        assert_eq!(kmeans_1d(&[1.0, -1.0, 1.0], 4), [-1.0, 1.0, 1.0, 1.0]);
    }
}
