//! [`vq_core::Lfq`] against the `LFQ` of the `vector-quantize-pytorch` package (PyPI) with its
//! default options, on the same inputs: identical codes and indices; the same entropies, loss
//! and input gradient where no probability falls below the package's 1e-5 clamp; and at the
//! default β = 100, the same codebook entropy and a per-sample entropy at least the package's
//! (its clamp undercounts the improbable codes; see the `lfq` module docs). Runs wherever
//! `python3` imports `vector_quantize_pytorch`; skipped with a notice otherwise.

mod common;

use candle_core::{Device, Tensor, Var};
use vq_core::{Lfq, LfqConfig, RowQuantizer};

/// Reads blocks from stdin, each a line `d β`, rows of inputs and a line `end`; for each block
/// prints the package's codes (one row per line), the indices, the per-sample entropy, the
/// codebook entropy, the loss, the loss's gradient rows, and `end`.
const SCRIPT: &str = r#"
import torch
from vector_quantize_pytorch import LFQ
def handle(block):
    d, beta = block[0].split()
    x = torch.tensor([[float(v) for v in l.split()] for l in block[1:]]).unsqueeze(0)
    x.requires_grad_(True)
    lfq = LFQ(dim=int(d))  # defaults: entropy weight 0.1, γ 1, no commitment, scale 1
    lfq.train()
    (codes, idx, loss), parts = lfq(x, inv_temperature=float(beta), return_loss_breakdown=True)
    loss.backward()
    for row in codes[0].tolist():
        print(" ".join(repr(v) for v in row))
    print(" ".join(str(int(v)) for v in idx[0].tolist()))
    print(repr(parts.per_sample_entropy.item()))
    print(repr(parts.batch_entropy.item()))
    print(repr(loss.item()))
    for row in x.grad[0].tolist():
        print(" ".join(repr(v) for v in row))
"#;

struct Reference {
    codes: Vec<Vec<f32>>,
    indices: Vec<u32>,
    per_sample: f64,
    codebook: f64,
    loss: f64,
    grad: Vec<Vec<f64>>,
}

fn reference(cases: &[(usize, f64, Vec<Vec<f32>>)]) -> Vec<Reference> {
    let input: String = cases
        .iter()
        .map(|(d, beta, x)| common::block(&format!("{d} {beta:?}"), x))
        .collect();
    common::run_blocks(SCRIPT, &input)
        .iter()
        .zip(cases)
        .map(|(block, (_, _, x))| {
            let lines: Vec<&str> = block.lines().collect();
            let t = x.len();
            Reference {
                codes: lines[..t].iter().map(|l| common::parse_row(l)).collect(),
                indices: common::parse_row(lines[t]),
                per_sample: lines[t + 1].trim().parse().unwrap(),
                codebook: lines[t + 2].trim().parse().unwrap(),
                loss: lines[t + 3].trim().parse().unwrap(),
                grad: lines[t + 4..]
                    .iter()
                    .map(|l| common::parse_row(l))
                    .collect(),
            }
        })
        .collect()
}

fn inputs(state: &mut u64, t: usize, d: usize, scale: f32) -> Vec<Vec<f32>> {
    (0..t)
        .map(|_| {
            (0..d)
                .map(|_| {
                    *state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
                })
                .collect()
        })
        .collect()
}

#[test]
fn lfq_matches_vector_quantize_pytorch() {
    if !common::package_available("LFQ") {
        return;
    }
    let mut state = 0x1f0_u64;
    // β small enough that every probability stays above the package's 1e-5 clamp (d ≤ 5,
    // |u| = 4β|z| ≤ 2 gives p ≥ σ(−2)^5 ≈ 2.4e-5), then the package's default β = 100.
    let cases = vec![
        (4usize, 0.25f64, inputs(&mut state, 200, 4, 4.0)),
        (5, 0.25, inputs(&mut state, 300, 5, 4.0)),
        (8, 100.0, inputs(&mut state, 300, 8, 2.0)),
        (11, 100.0, inputs(&mut state, 200, 11, 0.05)),
    ];
    let want = reference(&cases);
    assert_eq!(want.len(), cases.len());
    for ((d, beta, x), r) in cases.iter().zip(want) {
        let mut c = LfqConfig::new(*d as u32);
        c.loss.inv_temperature = *beta;
        let q = Lfq::new(&c.validate().unwrap());
        let z = Var::from_tensor(&Tensor::new(x.clone(), &Device::Cpu).unwrap()).unwrap();
        let out = q.forward_rows(z.as_tensor(), true).unwrap();
        assert_eq!(
            out.quantized.to_vec2::<f32>().unwrap(),
            r.codes,
            "d {d}: codes"
        );
        assert_eq!(out.indices.to_vec1::<u32>().unwrap(), r.indices, "d {d}");
        let h = q.entropy(z.as_tensor()).unwrap();
        let hs = f64::from(h.per_sample.to_scalar::<f32>().unwrap());
        let hc = f64::from(h.codebook.to_scalar::<f32>().unwrap());
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 + 1e-4 * b.abs();
        assert!(
            close(hc, r.codebook),
            "d {d}: codebook entropy {hc} vs {}",
            r.codebook
        );
        if *beta < 1.0 {
            assert!(close(hs, r.per_sample), "d {d}: {hs} vs {}", r.per_sample);
            let loss = f64::from(out.loss.to_scalar::<f32>().unwrap());
            assert!(close(loss, r.loss), "d {d}: loss {loss} vs {}", r.loss);
            let grads = out.loss.backward().unwrap();
            let g = grads.get(z.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
            let worst = g
                .iter()
                .flatten()
                .zip(r.grad.iter().flatten())
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-6, "d {d}: gradients differ by up to {worst}");
        } else {
            // The package's clamp drops the improbable codes' −p·log p below 1e-5.
            assert!(hs >= r.per_sample - 1e-6, "d {d}: {hs} vs {}", r.per_sample);
        }
    }
}
