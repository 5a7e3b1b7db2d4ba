//! The rotation trick of [`vq_core::VqGradient::Rotation`] against `vector-quantize-pytorch`'s
//! `rotate_to` (the estimator its `VectorQuantize` uses by default): on the same inputs, their
//! nearest codewords and an upstream gradient, the gradient reaching the inputs is the same.
//! Runs wherever `python3` imports `vector_quantize_pytorch`; skipped with a notice otherwise.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use vq_core::{CodebookConfig, VectorQuantizer, VqConfig, VqGradient};

/// Reads blocks of `T D`, then T input rows, T codeword rows and T upstream-gradient rows;
/// prints the gradient of `Σ g·rotate_to(x, e)` with respect to `x`, one row per line.
const SCRIPT: &str = r#"
import torch
from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to
def handle(block):
    t, d = (int(v) for v in block[0].split())
    rows = torch.tensor([[float(v) for v in l.split()] for l in block[1:]])
    x, e, g = rows[:t].clone().requires_grad_(True), rows[t:2 * t], rows[2 * t:]
    (rotate_to(x, e) * g).sum().backward()
    for row in x.grad.tolist():
        print(" ".join(repr(v) for v in row))
"#;

fn uniform(state: &mut u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

#[test]
fn rotation_gradient_matches_vector_quantize_pytorch() {
    if !common::package_available("the rotation trick") {
        return;
    }
    let dev = Device::Cpu;
    let mut state = 0xabc_u64;
    let mut input = String::new();
    let mut ours = Vec::new();
    for (t, d, n) in [(50usize, 4usize, 16usize), (40, 16, 64), (30, 2, 8)] {
        let cfg = VqConfig {
            num_embeddings: n,
            embedding_dim: d,
            codebook: CodebookConfig {
                gradient: VqGradient::Rotation,
                ..CodebookConfig::authors()
            },
        }
        .validate()
        .unwrap();
        let e = Tensor::from_vec(uniform(&mut state, n * d, 4.0), (n, d), &dev).unwrap();
        let mut ts = HashMap::new();
        ts.insert("embedding".to_string(), e.clone());
        ts.insert("ema_w".to_string(), e);
        ts.insert(
            "ema_cluster_size".to_string(),
            Tensor::ones(n, DType::F32, &dev).unwrap(),
        );
        let vq =
            VectorQuantizer::new(&cfg, VarBuilder::from_tensors(ts, DType::F32, &dev)).unwrap();
        let x = Var::from_vec(uniform(&mut state, t * d, 3.0), (t, d), &dev).unwrap();
        let g = Tensor::from_vec(uniform(&mut state, t * d, 2.0), (t, d), &dev).unwrap();
        let out = vq.forward(x.as_tensor(), false).unwrap();
        let grads = (&out.quantized * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let mut rows = x.as_tensor().to_vec2::<f32>().unwrap();
        rows.extend(out.quantized.to_vec2::<f32>().unwrap());
        rows.extend(g.to_vec2::<f32>().unwrap());
        input.push_str(&common::block(&format!("{t} {d}"), &rows));
        ours.push(grad);
    }
    let want = common::run_blocks(SCRIPT, &input);
    assert_eq!(want.len(), ours.len());
    for (ours, block) in ours.iter().zip(want) {
        let theirs: Vec<Vec<f64>> = block.lines().map(common::parse_row).collect();
        let worst = ours
            .iter()
            .flatten()
            .zip(theirs.iter().flatten())
            .map(|(a, b)| (f64::from(*a) - b).abs() / (1.0 + b.abs()))
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "gradients differ by up to {worst} (relative)");
    }
}
