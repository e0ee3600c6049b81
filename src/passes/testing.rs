//! Test helpers shared by the passes' unit tests: small programs built with the Builder, and the
//! before/after check every pass test makes (same outputs in the interpreter).

use std::collections::BTreeMap;

use crate::interp;
use crate::mil::builder::{check_function, Builder, Var};
use crate::mil::ops::{elementwise as ew, linear, norm, shape};
use crate::mil::{DType, Function, Opset, Tensor, TensorType};

/// Deterministic values in [-1, 1) (a fixed LCG), so tests need no RNG crate.
pub fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Op type → count, consts left out.
pub fn histogram(f: &Function) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for op in f.block.operations.iter().filter(|o| o.op_type != "const") {
        *h.entry(op.op_type.clone()).or_default() += 1;
    }
    h
}

/// Runs `pass` on `f` and asserts the function still type-checks, keeps its signature, and gives
/// the same outputs (to `tol`, for reassociated sums) on deterministic inputs. Returns `f` after.
pub fn check_pass(mut f: Function, pass: fn(&mut Function) -> Result<super::Changes, super::PassError>, tol: f32) -> (Function, super::Changes) {
    let inputs: Vec<(String, interp::Array)> = f
        .inputs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let t = v.ty.tensor();
            let shape = t.fixed_shape().unwrap();
            (v.name.clone(), interp::Array::float(t.dtype, shape.clone(), values(shape.iter().product(), i as u32)))
        })
        .collect();
    let before = interp::run(&f, &inputs).unwrap();
    let outputs = f.block.outputs.clone();
    let changes = pass(&mut f).unwrap();
    check_function(&f).unwrap();
    assert_eq!(f.block.outputs, outputs, "the signature changed");
    let after = interp::run(&f, &inputs).unwrap();
    for ((n, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a.shape, b.shape, "{n}");
        let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst <= tol, "{n}: outputs differ by {worst} after the pass");
    }
    (f, changes)
}

fn konst(b: &mut Builder, hint: &str, shape: &[usize], seed: u32) -> Var {
    b.konst(hint, Tensor::from_f32(shape, &values(shape.iter().product(), seed)))
}

fn linear(b: &mut Builder, x: &Var, c_in: usize, c_out: usize, name: &str, seed: u32) -> Var {
    let w = konst(b, &format!("{name}_w"), &[c_out, c_in], seed);
    let bias = konst(b, &format!("{name}_b"), &[c_out], seed + 1);
    b.op(&linear::LINEAR, name).arg("x", x).arg("weight", &w).arg("bias", &bias).build1().unwrap()
}

/// A traced-style transformer encoder block in fp32 on x (1, `seq`, `heads`·`d`): q/k/v linears,
/// (B, S, H, D) reshape + transpose, batched scores, softmax, ·v, transpose + reshape back,
/// output linear, residual add, layer_norm over the last axis, gelu MLP, residual, layer_norm.
pub fn encoder_block(seq: usize, heads: usize, d: usize) -> Function {
    let c = heads * d;
    let mut b = Builder::new(Opset::Ios16);
    let x = b.input("x", TensorType::new(DType::F32, &[1, seq, c]));
    let split = |b: &mut Builder, v: &Var, name: &str| {
        let r = b.op(&shape::RESHAPE, &format!("{name}_r")).arg("x", v).konst("shape", Tensor::i32_vec(&[1, seq as i32, heads as i32, d as i32])).build1().unwrap();
        b.op(&shape::TRANSPOSE, name).arg("x", &r).konst("perm", Tensor::i32_vec(&[0, 2, 1, 3])).build1().unwrap()
    };
    let q = linear(&mut b, &x, c, c, "q_proj", 10);
    let k = linear(&mut b, &x, c, c, "k_proj", 20);
    let v = linear(&mut b, &x, c, c, "v_proj", 30);
    let (q, k, v) = (split(&mut b, &q, "q"), split(&mut b, &k, "k"), split(&mut b, &v, "v"));
    let scores = b
        .op(&linear::MATMUL, "scores")
        .arg("x", &q)
        .arg("y", &k)
        .konst("transpose_x", Tensor::bool_scalar(false))
        .konst("transpose_y", Tensor::bool_scalar(true))
        .build1()
        .unwrap();
    let scaled = b.op(&ew::MUL, "scaled").arg("x", &scores).konst("y", Tensor::from_f32(&[], &[1.0 / (d as f32).sqrt()])).build1().unwrap();
    let probs = b.op(&ew::SOFTMAX, "probs").arg("x", &scaled).konst("axis", Tensor::i32_scalar(-1)).build1().unwrap();
    let ctx = b.op(&linear::MATMUL, "ctx").arg("x", &probs).arg("y", &v).build1().unwrap();
    let ctx = b.op(&shape::TRANSPOSE, "ctx_t").arg("x", &ctx).konst("perm", Tensor::i32_vec(&[0, 2, 1, 3])).build1().unwrap();
    let ctx = b.op(&shape::RESHAPE, "ctx_r").arg("x", &ctx).konst("shape", Tensor::i32_vec(&[1, seq as i32, c as i32])).build1().unwrap();
    let o = linear(&mut b, &ctx, c, c, "o_proj", 40);
    let h = b.op(&ew::ADD, "res1").arg("x", &o).arg("y", &x).build1().unwrap();
    let norm = |b: &mut Builder, v: &Var, name: &str| {
        let g = konst(b, &format!("{name}_g"), &[c], 50);
        let beta = konst(b, &format!("{name}_beta"), &[c], 60);
        b.op(&norm::LAYER_NORM, name).arg("x", v).konst("axes", Tensor::i32_vec(&[-1])).arg("gamma", &g).arg("beta", &beta).konst("epsilon", Tensor::from_f32(&[], &[1e-5])).build1().unwrap()
    };
    let h = norm(&mut b, &h, "ln1");
    let up = linear(&mut b, &h, c, 2 * c, "fc1", 70);
    let act = b.op(&ew::GELU, "act").arg("x", &up).build1().unwrap();
    let down = linear(&mut b, &act, 2 * c, c, "fc2", 80);
    let h2 = b.op(&ew::ADD, "res2").arg("x", &down).arg("y", &h).build1().unwrap();
    let y = norm(&mut b, &h2, "ln2");
    b.finish(&[y])
}
