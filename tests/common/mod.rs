//! Small MIL programs built with the Builder, shared by the package and CLI tests: an MLP
//! (linear + gelu + softmax), a conv net (conv + batch_norm + relu + pools), a tiny attention
//! block, and a program that uses every other op in the table. Weights are pseudo-random with a
//! fixed seed so packages are reproducible.

use torch2coreml::mil::builder::{Builder, Var};
use torch2coreml::mil::ops::{elementwise as ew, linear, norm, reduce, shape};
use torch2coreml::mil::{DType, Model, Opset, Program, Tensor, TensorType};

/// Deterministic values in [-0.5, 0.5) (xorshift), so weights differ but tests stay reproducible.
pub fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn weight(dt: DType, shape: &[usize], seed: u64) -> Tensor {
    let v = rand(shape.iter().product(), seed);
    match dt {
        DType::F16 => Tensor::from_f32_as_f16(shape, &v),
        _ => Tensor::from_f32(shape, &v),
    }
}

fn scalar(dt: DType, v: f32) -> Tensor {
    Tensor::float_scalar(dt, v)
}

fn model(b: Builder, outs: &[Var]) -> Model {
    Model::new(Program::with_main(b.finish(outs)))
}

/// The compute dtype for a target: fp16 from iOS16 (fp16 I/O allowed), fp32 before.
pub fn compute_dtype(opset: Opset) -> DType {
    if opset >= Opset::Ios16 { DType::F16 } else { DType::F32 }
}

/// x[2,16] → linear → gelu → linear → softmax.
pub fn mlp(opset: Opset) -> Model {
    let dt = compute_dtype(opset);
    let mut b = Builder::new(opset);
    let x = b.input("x", TensorType::new(dt, &[2, 16]));
    let h = b.op(&linear::LINEAR, "fc1").arg("x", &x).konst("weight", weight(dt, &[32, 16], 1)).konst("bias", weight(dt, &[32], 2)).build1().unwrap();
    let h = b.op(&ew::GELU, "act").arg("x", &h).konst("mode", Tensor::string("EXACT")).build1().unwrap();
    let h = b.op(&linear::LINEAR, "fc2").arg("x", &h).konst("weight", weight(dt, &[8, 32], 3)).konst("bias", weight(dt, &[8], 4)).build1().unwrap();
    let y = b.op(&ew::SOFTMAX, "probs").arg("x", &h).konst("axis", Tensor::i32_scalar(-1)).build1().unwrap();
    model(b, &[y])
}

/// x[1,3,16,16] → conv → batch_norm → relu → max_pool → conv(strided) → avg_pool → reshape.
pub fn convnet(opset: Opset) -> Model {
    let dt = compute_dtype(opset);
    let mut b = Builder::new(opset);
    let x = b.input("image", TensorType::new(dt, &[1, 3, 16, 16]));
    let h = b
        .op(&linear::CONV, "conv1")
        .arg("x", &x)
        .konst("weight", weight(dt, &[8, 3, 3, 3], 5))
        .konst("bias", weight(dt, &[8], 6))
        .konst("strides", Tensor::i32_vec(&[1, 1]))
        .konst("pad_type", Tensor::string("custom"))
        .konst("pad", Tensor::i32_vec(&[1, 1, 1, 1]))
        .konst("dilations", Tensor::i32_vec(&[1, 1]))
        .konst("groups", Tensor::i32_scalar(1))
        .build1()
        .unwrap();
    let var: Vec<f32> = rand(8, 8).iter().map(|v| v + 1.0).collect();
    let var = if dt == DType::F16 { Tensor::from_f32_as_f16(&[8], &var) } else { Tensor::from_f32(&[8], &var) };
    let h = b
        .op(&norm::BATCH_NORM, "bn1")
        .arg("x", &h)
        .konst("mean", weight(dt, &[8], 7))
        .konst("variance", var)
        .konst("gamma", weight(dt, &[8], 9))
        .konst("beta", weight(dt, &[8], 10))
        .konst("epsilon", scalar(dt, 1e-5))
        .build1()
        .unwrap();
    let h = b.op(&ew::RELU, "relu1").arg("x", &h).build1().unwrap();
    let h = b
        .op(&linear::MAX_POOL, "pool1")
        .arg("x", &h)
        .konst("kernel_sizes", Tensor::i32_vec(&[2, 2]))
        .konst("strides", Tensor::i32_vec(&[2, 2]))
        .konst("pad_type", Tensor::string("valid"))
        .konst("pad", Tensor::i32_vec(&[0, 0, 0, 0]))
        .konst("ceil_mode", Tensor::bool_scalar(false))
        .build1()
        .unwrap();
    let h = b
        .op(&linear::CONV, "conv2")
        .arg("x", &h)
        .konst("weight", weight(dt, &[4, 4, 3, 3], 11))
        .konst("strides", Tensor::i32_vec(&[2, 2]))
        .konst("pad_type", Tensor::string("same"))
        .konst("groups", Tensor::i32_scalar(2))
        .build1()
        .unwrap();
    let h = b
        .op(&linear::AVG_POOL, "pool2")
        .arg("x", &h)
        .konst("kernel_sizes", Tensor::i32_vec(&[3, 3]))
        .konst("strides", Tensor::i32_vec(&[2, 2]))
        .konst("pad_type", Tensor::string("custom"))
        .konst("pad", Tensor::i32_vec(&[1, 1, 1, 1]))
        .konst("exclude_padding_from_average", Tensor::bool_scalar(true))
        .konst("ceil_mode", Tensor::bool_scalar(true))
        .build1()
        .unwrap();
    let y = b.op(&shape::RESHAPE, "features").arg("x", &h).konst("shape", Tensor::i32_vec(&[1, -1])).build1().unwrap();
    model(b, &[y])
}

/// x[1,8,32] → layer_norm → q/k/v linear → 4 heads → softmax(q·kᵀ·scale)·v → out linear → residual.
pub fn attention(opset: Opset) -> Model {
    let dt = compute_dtype(opset);
    let (s, c, h, d) = (8, 32, 4, 8);
    let mut b = Builder::new(opset);
    let x = b.input("hidden", TensorType::new(dt, &[1, s, c]));
    let n = b
        .op(&norm::LAYER_NORM, "ln")
        .arg("x", &x)
        .konst("axes", Tensor::i32_vec(&[-1]))
        .konst("gamma", weight(dt, &[c], 20))
        .konst("beta", weight(dt, &[c], 21))
        .konst("epsilon", scalar(dt, 1e-5))
        .build1()
        .unwrap();
    let mut heads = Vec::new();
    for (i, name) in ["q", "k", "v"].iter().enumerate() {
        let p = b.op(&linear::LINEAR, name).arg("x", &n).konst("weight", weight(dt, &[c, c], 22 + i as u64)).konst("bias", weight(dt, &[c], 30 + i as u64)).build1().unwrap();
        let p = b.op(&shape::RESHAPE, &format!("{name}_heads")).arg("x", &p).konst("shape", Tensor::i32_vec(&[1, s as i32, h, d as i32])).build1().unwrap();
        let p = b.op(&shape::TRANSPOSE, &format!("{name}_t")).arg("x", &p).konst("perm", Tensor::i32_vec(&[0, 2, 1, 3])).build1().unwrap();
        heads.push(p);
    }
    let scores = b.op(&linear::MATMUL, "scores").arg("x", &heads[0]).arg("y", &heads[1]).konst("transpose_x", Tensor::bool_scalar(false)).konst("transpose_y", Tensor::bool_scalar(true)).build1().unwrap();
    let scores = b.op(&ew::MUL, "scaled").arg("x", &scores).konst("y", scalar(dt, 1.0 / (d as f32).sqrt())).build1().unwrap();
    let probs = b.op(&ew::SOFTMAX, "attn").arg("x", &scores).konst("axis", Tensor::i32_scalar(-1)).build1().unwrap();
    let ctx = b.op(&linear::MATMUL, "ctx").arg("x", &probs).arg("y", &heads[2]).build1().unwrap();
    let ctx = b.op(&shape::TRANSPOSE, "ctx_t").arg("x", &ctx).konst("perm", Tensor::i32_vec(&[0, 2, 1, 3])).build1().unwrap();
    let ctx = b.op(&shape::RESHAPE, "ctx_merged").arg("x", &ctx).konst("shape", Tensor::i32_vec(&[1, s as i32, c as i32])).build1().unwrap();
    let o = b.op(&linear::LINEAR, "out_proj").arg("x", &ctx).konst("weight", weight(dt, &[c, c], 40)).build1().unwrap();
    let y = b.op(&ew::ADD, "residual").arg("x", &x).arg("y", &o).build1().unwrap();
    model(b, &[y])
}

/// Every remaining op in the table, on an int32 token input and its embedding.
pub fn kitchen_sink(opset: Opset) -> Model {
    let dt = compute_dtype(opset);
    let mut b = Builder::new(opset);
    let ids = b.input("input_ids", TensorType::new(DType::I32, &[1, 6]));
    let table = b.konst("embeddings", weight(dt, &[20, 16], 50));
    let e = b.op(&shape::GATHER, "embed").arg("x", &table).arg("indices", &ids).konst("axis", Tensor::i32_scalar(0)).build1().unwrap(); // [1,6,16]
    let e4 = b.op(&shape::EXPAND_DIMS, "e4").arg("x", &e).konst("axes", Tensor::i32_vec(&[1])).build1().unwrap(); // [1,1,6,16]
    let e3 = b.op(&shape::SQUEEZE, "e3").arg("x", &e4).konst("axes", Tensor::i32_vec(&[1])).build1().unwrap();
    let parts = b.op(&shape::SPLIT, "halves").arg("x", &e3).konst("num_splits", Tensor::i32_scalar(2)).konst("axis", Tensor::i32_scalar(-1)).build().unwrap();
    let sl = b
        .op(&shape::SLICE_BY_INDEX, "tail")
        .arg("x", &parts[1])
        .konst("begin", Tensor::i32_vec(&[0, 1, 0]))
        .konst("end", Tensor::i32_vec(&[1, 6, 8]))
        .konst("stride", Tensor::i32_vec(&[1, 1, 1]))
        .konst("begin_mask", Tensor::from_bools(&[3], &[true, false, true]))
        .konst("end_mask", Tensor::from_bools(&[3], &[true, false, true]))
        .konst("squeeze_mask", Tensor::from_bools(&[3], &[false, false, false]))
        .build1()
        .unwrap(); // [1,5,8]
    let head = b.op(&shape::SLICE_BY_INDEX, "head").arg("x", &parts[0]).konst("begin", Tensor::i32_vec(&[0, 0, 0])).konst("end", Tensor::i32_vec(&[1, 5, 8])).build1().unwrap();
    let cat = b.op(&shape::CONCAT, "cat").args("values", &[head.clone(), sl.clone()]).konst("axis", Tensor::i32_scalar(-1)).konst("interleave", Tensor::bool_scalar(false)).build1().unwrap(); // [1,5,16]
    let sq = b.op(&ew::MUL, "sq").arg("x", &cat).arg("y", &cat).build1().unwrap();
    let mean = b.op(&reduce::REDUCE_MEAN, "mean_sq").arg("x", &sq).konst("axes", Tensor::i32_vec(&[-1])).konst("keep_dims", Tensor::bool_scalar(true)).build1().unwrap();
    let inv = b.op(&ew::RSQRT, "inv_rms").arg("x", &mean).konst("epsilon", scalar(dt, 1e-6)).build1().unwrap();
    let normed = b.op(&ew::MUL, "rms_normed").arg("x", &cat).arg("y", &inv).build1().unwrap();
    let shifted = b.op(&ew::SUB, "shifted").arg("x", &normed).konst("y", scalar(dt, 0.1)).build1().unwrap();
    let halved = b.op(&ew::REAL_DIV, "halved").arg("x", &shifted).konst("y", scalar(dt, 2.0)).build1().unwrap();
    let act1 = b.op(&ew::SILU, "silu").arg("x", &halved).build1().unwrap();
    let act2 = b.op(&ew::TANH, "tanh").arg("x", &act1).build1().unwrap();
    let act3 = b.op(&ew::SIGMOID, "sigmoid").arg("x", &act2).build1().unwrap();
    let p2 = b.op(&ew::POW, "squared").arg("x", &act3).konst("y", scalar(dt, 2.0)).build1().unwrap();
    let rt = b.op(&ew::SQRT, "root").arg("x", &p2).build1().unwrap();
    let ex = b.op(&ew::EXP, "expo").arg("x", &rt).build1().unwrap();
    let cl = b.op(&ew::CLIP, "clipped").arg("x", &ex).konst("alpha", scalar(dt, 0.0)).konst("beta", scalar(dt, 2.0)).build1().unwrap();
    let mask = b.op(&ew::GREATER, "big").arg("x", &cl).konst("y", scalar(dt, 1.5)).build1().unwrap();
    let sel = b.op(&ew::SELECT, "capped").arg("cond", &mask).konst("a", scalar(dt, 1.5)).arg("b", &cl).build1().unwrap();
    let y = b.op(&ew::CAST, "features").arg("x", &sel).konst("dtype", Tensor::string("fp32")).build1().unwrap();
    model(b, &[y])
}

/// Every test program at every target we emit for, named `<program>_<target>`.
pub fn all() -> Vec<(String, Model)> {
    let mut out = Vec::new();
    for opset in [Opset::Ios15, Opset::Ios16, Opset::Ios17, Opset::Ios18] {
        let t = opset.target_name().to_lowercase();
        out.push((format!("mlp_{t}"), mlp(opset)));
        out.push((format!("convnet_{t}"), convnet(opset)));
        out.push((format!("attention_{t}"), attention(opset)));
        out.push((format!("kitchen_sink_{t}"), kitchen_sink(opset)));
    }
    out
}
