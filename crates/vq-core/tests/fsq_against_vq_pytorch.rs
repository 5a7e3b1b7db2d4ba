//! [`vq_core::Fsq`] against the `FSQ` of the `vector-quantize-pytorch` package (PyPI) with its
//! default options, on the same inputs: identical codes and indices. Runs wherever `python3`
//! imports `vector_quantize_pytorch` (`pip install vector-quantize-pytorch`); skipped with a
//! notice otherwise.

mod common;

use candle_core::{Device, Tensor};
use vq_core::{Fsq, FsqConfig, Quantizer, Step};

/// Reads blocks from stdin, each a line of levels, rows of inputs and a line `end`; for each
/// block prints the codes of the package's `FSQ(levels)` (one row per line), the indices, and
/// `end`. One process for every block: importing torch is the slow part.
const SCRIPT: &str = r#"
import torch
from vector_quantize_pytorch import FSQ
def handle(block):
    levels = [int(v) for v in block[0].split()]
    x = torch.tensor([[float(v) for v in l.split()] for l in block[1:]])
    codes, idx = FSQ(levels=levels)(x.unsqueeze(0))
    for row in codes[0].tolist():
        print(" ".join(repr(v) for v in row))
    print(" ".join(str(int(v)) for v in idx[0].tolist()))
"#;

/// Codes `[T, D]` and indices `[T]`.
type Quantized = (Vec<Vec<f32>>, Vec<u32>);

/// The package's codes and indices for each `(levels, x)`.
fn reference(cases: &[(&[u32], Vec<Vec<f32>>)]) -> Vec<Quantized> {
    let input: String = cases
        .iter()
        .map(|(levels, x)| {
            let lv: Vec<String> = levels.iter().map(u32::to_string).collect();
            common::block(&lv.join(" "), x)
        })
        .collect();
    common::run_blocks(SCRIPT, &input)
        .iter()
        .map(|block| {
            let mut lines: Vec<&str> = block.lines().collect();
            let idx = common::parse_row(lines.pop().unwrap());
            let codes = lines.iter().map(|l| common::parse_row(l)).collect();
            (codes, idx)
        })
        .collect()
}

#[test]
fn codes_and_indices_match_vector_quantize_pytorch() {
    if !common::package_available("FSQ") {
        return;
    }
    // The FSQ paper's recommended level sets for 2^8, 2^10, 2^12 and 2^16 codes, and one with
    // large odd and even levels.
    let sets: [&[u32]; 5] = [
        &[8, 6, 5],
        &[8, 5, 5, 5],
        &[7, 5, 5, 5, 5],
        &[8, 8, 8, 5, 5, 5],
        &[16, 15, 3],
    ];
    let mut state = 0x5eed_u64;
    // 300 rows per set of N(0, 1.5²)-like values (sums of uniforms), so every level of every
    // channel is reached and many values sit near rounding boundaries.
    let cases: Vec<(&[u32], Vec<Vec<f32>>)> = sets
        .iter()
        .map(|&levels| {
            let x = (0..300)
                .map(|_| {
                    (0..levels.len())
                        .map(|_| {
                            let s: f32 = (0..4)
                                .map(|_| {
                                    state = state
                                        .wrapping_mul(6364136223846793005)
                                        .wrapping_add(1442695040888963407);
                                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                                })
                                .sum();
                            s * 2.6
                        })
                        .collect()
                })
                .collect();
            (levels, x)
        })
        .collect();
    let want = reference(&cases);
    assert_eq!(want.len(), cases.len());
    for ((levels, x), (want_codes, want_idx)) in cases.iter().zip(want) {
        let q = Fsq::new(&FsqConfig::new(levels).validate().unwrap());
        let flat = Tensor::new(x.clone(), &Device::Cpu).unwrap();
        let out = q
            .forward_flat(&flat, &[x.len()], &mut Step::eval())
            .unwrap();
        let idx = out.codes.index.to_vec1::<u32>().unwrap();
        let codes = out.z_q.to_vec2::<f32>().unwrap();
        let idx_mismatch = idx.iter().zip(&want_idx).filter(|(a, b)| a != b).count();
        assert_eq!(
            idx_mismatch, 0,
            "levels {levels:?}: {idx_mismatch} of 300 indices differ"
        );
        assert_eq!(codes, want_codes, "levels {levels:?}: codes differ");
        assert!(
            out.code_counts[0]
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .filter(|&&c| c > 0.0)
                .count()
                > 20,
            "levels {levels:?}: the inputs reach too few codes to compare much"
        );
    }
}
