//! Finite scalar quantization (FSQ; Mentzer et al., 2023, "Finite Scalar Quantization: VQ-VAE
//! Made Simple"): every channel is bounded and rounded to a few levels, so the codebook is the
//! implicit grid of the levels' product and is never materialised.
//!
//! Channel `i` with `L_i` levels: `bound(z) = tanh(z + s_i)·h_i − o_i` with
//! `h_i = (L_i − 1)(1 + ε)/2`, `o_i = 1/2` for even `L_i` (0 for odd) and `s_i = atanh(o_i/h_i)`,
//! so `bound(0) = 0`. Rounding (half away from zero) gives an integer in
//! `[−⌊L_i/2⌋, ⌈L_i/2⌉ − 1]`, divided by `⌊L_i/2⌋` into `[−1, 1]`; the gradient passes the
//! rounding straight through. Index = `Σ_i digit_i·Π_{j<i} L_j` with `digit_i` the level shifted
//! to start at 0, computed in integers. The grid, the index order and the bound (`1 + ε`,
//! `atanh`) are those of `vector-quantize-pytorch`'s `FSQ` with its defaults (checked against
//! its source of 2026-03); the paper's listing has `1 − ε` and `tan`. Two levels give the
//! lopsided codes {−1, 0}, as that package's versions before 2025-12 did; its newer versions
//! refuse `L = 2` unless `preserve_symmetry` (not implemented here) is on.
//!
//! There is no loss and no learned parameter; the quantizer runs in f32 whatever the input's
//! dtype, so reduced-precision models get the same codes as f32 ones.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Result, VqError};
use crate::quantizer::{check_indices, RowQuantizer};
use crate::vq::{code_usage, VqOutput};

/// ε of the bound: `tanh·h` reaches just past the outermost grid points, and stays inside
/// their rounding intervals while `ε·(L − 1)/2 < 1/2`, i.e. up to [`FSQ_MAX_LEVELS`].
const BOUND_EPS: f64 = 1e-3;

/// The most levels of one channel (see [`BOUND_EPS`]).
pub const FSQ_MAX_LEVELS: u32 = 1000;

/// The largest implicit codebook: each batch's code usage is counted in an `[N]` f32 vector.
pub const FSQ_MAX_CODES: u64 = 1 << 24;

/// Configuration of an [`Fsq`] quantizer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsqConfig {
    /// Levels per channel (`D` = their count; the codebook size is their product). The FSQ
    /// paper's recommendations: `[8, 6, 5]` (2^8 codes), `[8, 5, 5, 5]` (2^10),
    /// `[7, 5, 5, 5, 5]` (2^12), `[8, 8, 8, 6, 5]` (2^14), `[8, 8, 8, 5, 5, 5]` (2^16).
    pub levels: Vec<u32>,
}

impl FsqConfig {
    /// FSQ with these levels per channel.
    pub fn new(levels: &[u32]) -> Self {
        Self {
            levels: levels.to_vec(),
        }
    }

    /// Checks the levels: at least one channel, every channel 2 to [`FSQ_MAX_LEVELS`] levels,
    /// at most [`FSQ_MAX_CODES`] codes.
    pub fn validate(&self) -> std::result::Result<ValidFsqConfig, ConfigError> {
        if self.levels.is_empty() {
            return Err(ConfigError::invalid(
                "levels",
                "no channel: give at least one level count",
            ));
        }
        let bad = |l: u32| !(2..=FSQ_MAX_LEVELS).contains(&l);
        if let Some((i, l)) = self.levels.iter().enumerate().find(|(_, &l)| bad(l)) {
            return Err(ConfigError::invalid(
                "levels",
                format!("channel {i} has {l} level(s); every channel needs 2 to {FSQ_MAX_LEVELS}"),
            ));
        }
        let codes = self
            .levels
            .iter()
            .try_fold(1u64, |acc, &l| acc.checked_mul(u64::from(l)))
            .filter(|&n| n <= FSQ_MAX_CODES)
            .ok_or_else(|| {
                ConfigError::invalid(
                    "levels",
                    format!(
                        "{:?} make more than {FSQ_MAX_CODES} codes (2^24, the most whose usage \
                         is counted per batch)",
                        self.levels
                    ),
                )
            })?;
        Ok(ValidFsqConfig {
            levels: self.levels.clone(),
            codes,
        })
    }
}

/// A checked [`FsqConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidFsqConfig {
    levels: Vec<u32>,
    codes: u64,
}

impl ValidFsqConfig {
    /// Levels per channel.
    pub fn levels(&self) -> &[u32] {
        &self.levels
    }

    /// The implicit codebook's size, the product of the levels.
    pub fn codebook_size(&self) -> u64 {
        self.codes
    }
}

/// Finite scalar quantizer of `D = levels.len()` channels (see the module docs).
#[derive(Clone, Debug)]
pub struct Fsq {
    config: ValidFsqConfig,
    /// Per channel: `h_i`, `o_i`, `s_i` and `⌊L_i/2⌋`, as f32 rows `[1, D]` on the CPU.
    half_l: Vec<f32>,
    offset: Vec<f32>,
    shift: Vec<f32>,
    half_width: Vec<f32>,
}

impl Fsq {
    /// The quantizer of a checked configuration.
    pub fn new(config: &ValidFsqConfig) -> Self {
        let mut q = Fsq {
            config: config.clone(),
            half_l: vec![],
            offset: vec![],
            shift: vec![],
            half_width: vec![],
        };
        for &l in config.levels() {
            let h = (f64::from(l) - 1.0) * (1.0 + BOUND_EPS) / 2.0;
            let o = if l % 2 == 0 { 0.5 } else { 0.0 };
            q.half_l.push(h as f32);
            q.offset.push(o as f32);
            q.shift.push((o / h).atanh() as f32);
            q.half_width.push((l / 2) as f32);
        }
        q
    }

    /// Its configuration.
    pub fn config(&self) -> &ValidFsqConfig {
        &self.config
    }

    fn row(&self, v: &[f32], dev: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(v, (1, v.len()), dev)?)
    }

    /// `z` `[T, D]` (any float dtype) → `[T, D]` f32 codes in `[−1, 1]`: forward value the
    /// rounded grid point, gradient that of `bound(z)/⌊L/2⌋` (straight through the rounding).
    pub fn quantize(&self, z: &Tensor) -> Result<Tensor> {
        let d = self.config.levels.len();
        if z.rank() != 2 || z.dim(1)? != d {
            return Err(VqError::input(
                "z",
                format!(
                    "expected [T, {d}] (one column per level count), got {:?}",
                    z.dims()
                ),
            ));
        }
        let dev = z.device();
        let z = z.to_dtype(DType::F32)?;
        let bounded = z
            .broadcast_add(&self.row(&self.shift, dev)?)?
            .tanh()?
            .broadcast_mul(&self.row(&self.half_l, dev)?)?
            .broadcast_sub(&self.row(&self.offset, dev)?)?;
        let rounded = (&bounded + (bounded.round()? - &bounded)?.detach())?;
        Ok(rounded.broadcast_div(&self.row(&self.half_width, dev)?)?)
    }

    /// Codes `[T, D]` (grid points, as [`Fsq::quantize`] gives) → `[T]` u32 indices, in integer
    /// arithmetic.
    pub fn codes_to_indices(&self, codes: &Tensor) -> Result<Tensor> {
        let dev = codes.device();
        let hw = self.row(&self.half_width, dev)?;
        let digits = codes
            .to_dtype(DType::F32)?
            .broadcast_mul(&hw)?
            .broadcast_add(&hw)?
            .round()?
            .to_dtype(DType::U32)?;
        Ok(digits.broadcast_mul(&self.basis(dev)?)?.sum(1)?)
    }

    /// `[1, D]` u32: `Π_{j<i} L_j`.
    fn basis(&self, dev: &Device) -> Result<Tensor> {
        let mut b = Vec::with_capacity(self.config.levels.len());
        let mut acc = 1u32;
        for &l in &self.config.levels {
            b.push(acc);
            acc = acc.wrapping_mul(l);
        }
        Ok(Tensor::from_slice(&b, (1, b.len()), dev)?)
    }
}

impl RowQuantizer for Fsq {
    fn width(&self) -> usize {
        self.config.levels.len()
    }

    /// Quantizes `z` `[T, D]` like [`VectorQuantizer::forward`](crate::VectorQuantizer::forward)
    /// does: f32 codes (straight-through), indices, the batch's code usage, and a zero loss
    /// (FSQ has none).
    fn forward_rows(&self, z: &Tensor, _update: bool) -> Result<VqOutput> {
        let quantized = self.quantize(z)?;
        let indices = self.codes_to_indices(&quantized.detach())?;
        let (counts, perplexity) = code_usage(&indices, self.config.codes as usize)?;
        Ok(VqOutput {
            quantized,
            indices,
            loss: Tensor::zeros((), DType::F32, z.device())?,
            counts,
            perplexity,
        })
    }

    /// Indices `[T]` u32 → `[T, D]` f32 codes, in integer arithmetic (no codebook).
    fn indices_to_codes(&self, indices: &Tensor) -> Result<Tensor> {
        let dev = indices.device();
        check_indices(indices, self.config.codes)?;
        let levels: Vec<u32> = self.config.levels.clone();
        let levels = Tensor::from_slice(&levels, (1, levels.len()), dev)?;
        let quotient = indices.unsqueeze(1)?.broadcast_div(&self.basis(dev)?)?;
        let digits = (&quotient - quotient.broadcast_div(&levels)?.broadcast_mul(&levels)?)?;
        let hw = self.row(&self.half_width, dev)?;
        Ok(digits
            .to_dtype(DType::F32)?
            .broadcast_sub(&hw)?
            .broadcast_div(&hw)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Quantizer, Step};
    use candle_core::Var;

    fn fsq(levels: &[u32]) -> Fsq {
        Fsq::new(&FsqConfig::new(levels).validate().unwrap())
    }

    /// Levels [3, 4], by hand (ε = 1e-3; the decimals from Python's `math`):
    /// - L = 3: h = 1.001, o = 0, s = 0, ⌊L/2⌋ = 1: bound(z) = 1.001·tanh z.
    /// - L = 4: h = 1.5015, o = 0.5, s = atanh(0.5/1.5015) = 0.346199, ⌊L/2⌋ = 2:
    ///   bound(z) = 1.5015·tanh(z + 0.346199) − 0.5.
    ///
    /// | z (L=3, L=4) | bound | rounded | codes | digits | index = d0 + 3·d1 |
    /// | (0.3, 1.0) | (0.29160, 0.81104) | (0, 1) | (0, 0.5) | (1, 3) | 10 |
    /// | (1.0, 0.0) | (0.76236, 0) | (1, 0) | (1, 0) | (2, 2) | 8 |
    /// | (−2, −5) | (−0.96499, −2.00123) | (−1, −2) | (−1, −1) | (0, 0) | 0 |
    /// | (0.6, −0.5) | (0.53759, −0.72913) | (1, −1) | (1, −0.5) | (2, 1) | 5 |
    ///
    /// Gradient of Σ codes (straight through the rounding) = h·(1 − tanh²(z + s))/⌊L/2⌋:
    /// row 1: 1.001·(1 − tanh²1) = 0.420394 and 1.5015·(1 − (0.5/1.5015)²)/2 = 0.667500.
    #[test]
    fn codes_indices_and_gradient_by_hand() {
        let q = fsq(&[3, 4]);
        let z = Var::new(
            &[[0.3f32, 1.0], [1.0, 0.0], [-2.0, -5.0], [0.6, -0.5]],
            &Device::Cpu,
        )
        .unwrap();
        let codes = q.quantize(z.as_tensor()).unwrap();
        assert_eq!(
            codes.to_vec2::<f32>().unwrap(),
            vec![
                vec![0.0, 0.5],
                vec![1.0, 0.0],
                vec![-1.0, -1.0],
                vec![1.0, -0.5]
            ]
        );
        let idx = q.codes_to_indices(&codes).unwrap();
        assert_eq!(idx.to_vec1::<u32>().unwrap(), vec![10, 8, 0, 5]);
        assert_eq!(
            q.indices_to_codes(&idx).unwrap().to_vec2::<f32>().unwrap(),
            codes.to_vec2::<f32>().unwrap()
        );
        let grads = codes.sum_all().unwrap().backward().unwrap();
        let g = grads.get(z.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!((g[1][0] - 0.420394).abs() < 1e-5, "{:?}", g[1]);
        assert!((g[1][1] - 0.667500).abs() < 1e-5, "{:?}", g[1]);
    }

    /// Every grid point of [8, 5, 2] once: the indices are 0..80 in the documented order, and
    /// the codes of each level set are evenly spaced in [−1, 1].
    #[test]
    fn the_whole_grid_round_trips() {
        let q = fsq(&[8, 5, 2]);
        let idx = Tensor::arange(0u32, 80, &Device::Cpu).unwrap();
        let codes = q.indices_to_codes(&idx).unwrap();
        let rows = codes.to_vec2::<f32>().unwrap();
        // Index 1 + 8·3 + 40·1 = 65: digits (1, 3, 1) → ((1−4)/4, (3−2)/2, (1−1)/1).
        assert_eq!(rows[65], vec![-0.75, 0.5, 0.0]);
        assert_eq!(rows[0], vec![-1.0, -1.0, -1.0]);
        assert_eq!(rows[79], vec![0.75, 1.0, 0.0]);
        let back = q
            .codes_to_indices(&codes)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(back, (0..80).collect::<Vec<u32>>());
        // Quantizing a grid point's pre-image gives the grid point: atanh of the bounded value.
        let hw = [4.0f32, 2.0, 1.0];
        let (h, o) = (
            [3.5f32 * 1.001, 2.0 * 1.001, 0.5 * 1.001],
            [0.5f32, 0.0, 0.5],
        );
        let pre: Vec<f32> = rows
            .iter()
            .flat_map(|r| {
                (0..3).map(move |i| {
                    let s = (o[i] / h[i]).atanh();
                    ((r[i] * hw[i] + o[i]) / h[i])
                        .clamp(-0.9999, 0.9999)
                        .atanh()
                        - s
                })
            })
            .collect();
        let pre = Tensor::from_vec(pre, (80, 3), &Device::Cpu).unwrap();
        assert_eq!(q.quantize(&pre).unwrap().to_vec2::<f32>().unwrap(), rows);
    }

    /// 2^27 codes: indices above 2^24 stay exact (integer arithmetic, not f32).
    #[test]
    fn large_indices_are_exact() {
        let q = Fsq::new(&ValidFsqConfig {
            levels: vec![8; 9],
            codes: 1 << 27,
        });
        let want: Vec<u32> = vec![(1 << 27) - 1, (1 << 24) + 1, 123_456_789, 0];
        let idx = Tensor::new(want.as_slice(), &Device::Cpu).unwrap();
        let codes = q.indices_to_codes(&idx).unwrap();
        assert_eq!(
            q.codes_to_indices(&codes)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap(),
            want
        );
    }

    /// The same inputs in bf16 and in f32 give the same codes and code usage.
    #[test]
    fn bf16_inputs_give_the_f32_codes() {
        let q = fsq(&[8, 8, 8, 5, 5, 5]);
        let mut state = 11u64;
        let vals: Vec<f32> = (0..6 * 500)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
            })
            .collect();
        let bf = Tensor::from_vec(vals, (500, 6), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let f = bf.to_dtype(DType::F32).unwrap();
        let (mut s1, mut s2) = (Step::eval(), Step::eval());
        let a = q.forward_flat(&bf, &[500], &mut s1).unwrap();
        let b = q.forward_flat(&f, &[500], &mut s2).unwrap();
        assert_eq!(
            a.codes.index.to_vec1::<u32>().unwrap(),
            b.codes.index.to_vec1::<u32>().unwrap()
        );
        assert_eq!(
            a.code_counts[0].to_vec1::<f32>().unwrap(),
            b.code_counts[0].to_vec1::<f32>().unwrap()
        );
        assert_eq!(a.z_q.dtype(), DType::BF16);
    }

    #[test]
    fn bad_levels_are_refused_by_name() {
        for (levels, says) in [
            (vec![], "no channel"),
            (vec![8, 1, 5], "channel 1 has 1 level"),
            (vec![8, 1001], "channel 1 has 1001 level"),
            (vec![512, 512, 512], "more than 16777216 codes"),
        ] {
            let err = FsqConfig::new(&levels).validate().unwrap_err().to_string();
            assert!(err.contains("levels") && err.contains(says), "{err}");
        }
        let q = fsq(&[3, 4]);
        let err = q
            .quantize(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected [T, 2]"), "{err}");
    }
}
