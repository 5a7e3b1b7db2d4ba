//! Lookup-free quantization (LFQ; Yu et al., 2023, "Language Model Beats Diffusion —
//! Tokenizer is Key to Visual Generation"): every channel is quantized to its sign, so `d`
//! channels have the implicit codebook `{−s, s}^d` of `2^d` codes, never materialised; an entropy
//! loss keeps each vector's code confident and the batch's codes diverse.
//!
//! Forward: `q_i = s` where `z_i > 0`, else `−s` (0 maps to `−s`), with the straight-through
//! gradient. Index = `Σ_i [z_i > 0]·2^(d−1−i)` (the first channel is the most significant bit).
//!
//! Loss (in training and evaluation alike): `w_H·(H_sample − γ·H_codebook) + w_c·mean (z −
//! sg[q])²`, with the soft assignment `p_t(c) = softmax_c(2β⟨z_t, c⟩)` over the `2^d` codes
//! (β the inverse temperature). That softmax factorises over channels, `P(c_i = +s) =
//! σ(4βs·z_i)`, so:
//! - `H_sample = mean_t Σ_i H_b(σ(4βs·z_ti))`, O(T·d) and exact;
//! - `H_codebook = H(mean_t p_t)` needs the batch's mean distribution over all `2^d` codes. It
//!   is computed as `Aᵀ·B / T` with `A` `[T, 2^⌊d/2⌋]` and `B` `[T, 2^⌈d/2⌉]` the distributions
//!   of each half of the channels: memory `O(T·2^(d/2) + 2^d)` instead of the `[T, 2^d]` matrix
//!   of a direct softmax, and autograd gives its backward through the same two factors.
//!
//! The values, the index order and the defaults (`w_H = 0.1`, `γ = 1`, `w_c = 0`, `β = 100`,
//! `s = 1`) are those of `vector-quantize-pytorch`'s `LFQ` (1.32.0), with one difference: the
//! package clamps every probability at 1e-5 inside the log of both entropies. Here the clamp
//! applies to `H_codebook` only (its `2^d` probabilities are materialised); `H_sample` is the
//! exact entropy, which the package's `[T, 2^d]` softmax undercounts where codes have
//! probability below 1e-5. The package returns a zero loss outside training; here the loss is
//! a function of the inputs only, so validation reports the same quantity training minimises.
//!
//! Everything runs in f32 whatever the input's dtype.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Result, VqError};
use crate::quantizer::{check_indices, RowQuantizer};
use crate::vq::{code_usage, VqOutput};

/// The most channels (bits) of one LFQ quantizer: each batch's code usage is counted in an
/// `[2^d]` f32 vector, as for [`crate::Fsq`].
pub const LFQ_MAX_BITS: u32 = 24;

/// The clamp of the codebook entropy's probabilities inside the log (the package's `eps`).
const ENTROPY_EPS: f64 = 1e-5;

/// Below `−LOG_SIGMOID_LINEAR`, `log σ(u)` is taken as `u`.
const LOG_SIGMOID_LINEAR: f32 = 20.0;

/// The loss settings of LFQ (shared by every LFQ member of a pool: TOML `[model.lfq]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LfqLoss {
    /// `w_H`: weight of the entropy term. Package default 0.1.
    pub entropy_weight: f64,
    /// γ: weight of the codebook entropy inside the entropy term. Package default 1.
    pub diversity_gamma: f64,
    /// `w_c`: weight of the commitment term `mean (z − sg[q])²`. Package default 0.
    pub commitment_weight: f64,
    /// β: inverse temperature of the soft assignment. Package default 100.
    pub inv_temperature: f64,
    /// s: the codes' magnitude. Package default 1.
    pub codebook_scale: f64,
}

impl Default for LfqLoss {
    fn default() -> Self {
        Self {
            entropy_weight: 0.1,
            diversity_gamma: 1.0,
            commitment_weight: 0.0,
            inv_temperature: 100.0,
            codebook_scale: 1.0,
        }
    }
}

impl LfqLoss {
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        for (field, v) in [
            ("entropy_weight", self.entropy_weight),
            ("diversity_gamma", self.diversity_gamma),
            ("commitment_weight", self.commitment_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::invalid(
                    field,
                    format!("must be a finite number ≥ 0, got {v}"),
                ));
            }
        }
        for (field, v) in [
            ("inv_temperature", self.inv_temperature),
            ("codebook_scale", self.codebook_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::invalid(
                    field,
                    format!("must be a finite number > 0, got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// Configuration of an [`Lfq`] quantizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LfqConfig {
    /// d: channels, one bit each; the codebook has `2^d` codes.
    pub bits: u32,
    /// The loss.
    pub loss: LfqLoss,
}

impl Default for LfqConfig {
    fn default() -> Self {
        Self {
            bits: 16,
            loss: LfqLoss::default(),
        }
    }
}

impl LfqConfig {
    /// LFQ with `bits` channels and the package's default loss.
    pub fn new(bits: u32) -> Self {
        Self {
            bits,
            loss: LfqLoss::default(),
        }
    }

    /// Checks the bits (1 to [`LFQ_MAX_BITS`]) and the loss settings.
    pub fn validate(&self) -> std::result::Result<ValidLfqConfig, ConfigError> {
        if !(1..=LFQ_MAX_BITS).contains(&self.bits) {
            return Err(ConfigError::invalid(
                "bits",
                format!(
                    "LFQ needs 1 to {LFQ_MAX_BITS} bits (2^24 codes, the most whose usage is \
                     counted per batch), got {}",
                    self.bits
                ),
            ));
        }
        self.loss.validate()?;
        Ok(ValidLfqConfig {
            config: self.clone(),
        })
    }
}

/// A checked [`LfqConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValidLfqConfig {
    config: LfqConfig,
}

impl ValidLfqConfig {
    /// d.
    pub fn bits(&self) -> usize {
        self.config.bits as usize
    }

    /// The implicit codebook's size, `2^d`.
    pub fn codebook_size(&self) -> u64 {
        1u64 << self.config.bits
    }

    /// The loss settings.
    pub fn loss(&self) -> &LfqLoss {
        &self.config.loss
    }
}

/// The two entropies of a batch (nats), as scalar f32 tensors with their gradients.
#[derive(Clone, Debug)]
pub struct LfqEntropy {
    /// `mean_t H(p_t)`: low when each vector's soft code is confident.
    pub per_sample: Tensor,
    /// `H(mean_t p_t)` (probabilities clamped at 1e-5 inside the log): high when the batch
    /// spreads over the codes.
    pub codebook: Tensor,
}

/// Lookup-free quantizer of `d` channels (see the module docs).
#[derive(Clone, Debug)]
pub struct Lfq {
    config: ValidLfqConfig,
}

impl Lfq {
    /// The quantizer of a checked configuration.
    pub fn new(config: &ValidLfqConfig) -> Self {
        Self {
            config: config.clone(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ValidLfqConfig {
        &self.config
    }

    fn check(&self, z: &Tensor) -> Result<()> {
        let d = self.config.bits();
        if z.rank() != 2 || z.dim(1)? != d {
            return Err(VqError::input(
                "z",
                format!("expected [T, {d}] (one column per bit), got {:?}", z.dims()),
            ));
        }
        Ok(())
    }

    /// `z` `[T, d]` (any float dtype) → `[T, d]` f32 codes `±s`: forward value the sign code,
    /// gradient the identity (straight through).
    pub fn quantize(&self, z: &Tensor) -> Result<Tensor> {
        self.check(z)?;
        let z = z.to_dtype(DType::F32)?;
        let s = self.config.loss().codebook_scale;
        let codes = z.gt(0f32)?.to_dtype(DType::F32)?.affine(2.0 * s, -s)?;
        Ok((&z + (codes - &z)?.detach())?)
    }

    /// Codes `[T, d]` (as [`Lfq::quantize`] gives) → `[T]` u32 indices.
    pub fn codes_to_indices(&self, codes: &Tensor) -> Result<Tensor> {
        let bits = codes.to_dtype(DType::F32)?.gt(0f32)?.to_dtype(DType::U32)?;
        Ok(bits
            .broadcast_mul(&self.bit_values(codes.device())?)?
            .sum(1)?)
    }

    /// `[1, d]` u32: `2^(d−1−i)`.
    fn bit_values(&self, dev: &Device) -> Result<Tensor> {
        let d = self.config.bits();
        let v: Vec<u32> = (0..d).map(|i| 1u32 << (d - 1 - i)).collect();
        Ok(Tensor::from_vec(v, (1, d), dev)?)
    }

    /// The per-sample and codebook entropies of the soft assignment of `z` `[T, d]` (see the
    /// module docs), in bounded memory.
    pub fn entropy(&self, z: &Tensor) -> Result<LfqEntropy> {
        self.check(z)?;
        let (t, d) = z.dims2()?;
        let loss = self.config.loss();
        let u = z
            .to_dtype(DType::F32)?
            .affine(4.0 * loss.inv_temperature * loss.codebook_scale, 0.0)?;
        // log σ(u) = −log(1 + e^−u), and u itself below −20 (where e^−u would overflow and
        // the two differ by < 3e-9): smooth everywhere, so autograd needs no subgradient (a
        // relu/abs form gets the derivative at u = 0 wrong).
        let log_sigmoid = |u: &Tensor| -> Result<Tensor> {
            let safe = u.maximum(-LOG_SIGMOID_LINEAR)?;
            let smooth = (safe.neg()?.exp()? + 1.0)?.log()?.neg()?;
            Ok(u.gt(-LOG_SIGMOID_LINEAR)?.where_cond(&smooth, u)?)
        };
        let log_pos = log_sigmoid(&u)?; // log P(bit = 1)
        let log_neg = log_sigmoid(&u.neg()?)?; // log P(bit = 0)
        let per_sample = ((log_pos.exp()? * &log_pos)? + (log_neg.exp()? * &log_neg)?)?
            .sum(1)?
            .mean(0)?
            .neg()?;
        // The distribution of each half of the channels over its codes, [T, 2^half].
        let half = |from: usize, len: usize| -> Result<Tensor> {
            if len == 0 {
                return Ok(Tensor::ones((t, 1), DType::F32, z.device())?);
            }
            let (ones, zeros) = half_bits(len, z.device())?; // [len, 2^len] each
            let lp = log_pos.narrow(1, from, len)?.contiguous()?;
            let ln = log_neg.narrow(1, from, len)?.contiguous()?;
            Ok((lp.matmul(&ones)? + ln.matmul(&zeros)?)?.exp()?)
        };
        let high = d / 2;
        let a = half(0, high)?;
        let b = half(high, d - high)?;
        // Mean distribution over the 2^d codes, [2^high, 2^(d − high)] (row-major = code order).
        let mean = a.t()?.matmul(&b)?.affine(1.0 / t as f64, 0.0)?;
        let codebook = (&mean * mean.maximum(ENTROPY_EPS as f32)?.log()?)?
            .sum_all()?
            .neg()?;
        Ok(LfqEntropy {
            per_sample,
            codebook,
        })
    }

    /// `w_H·(H_sample − γ·H_codebook) + w_c·mean (z − sg[q])²` for `z` and its codes `q`.
    fn loss(&self, z: &Tensor, quantized: &Tensor) -> Result<Tensor> {
        let w = self.config.loss();
        let mut loss = Tensor::zeros((), DType::F32, z.device())?;
        if w.entropy_weight > 0.0 {
            let h = self.entropy(z)?;
            let term = (h.per_sample - h.codebook.affine(w.diversity_gamma, 0.0)?)?;
            loss = (loss + term.affine(w.entropy_weight, 0.0)?)?;
        }
        if w.commitment_weight > 0.0 {
            let commit = (z.to_dtype(DType::F32)? - quantized.detach())?
                .sqr()?
                .mean_all()?;
            loss = (loss + commit.affine(w.commitment_weight, 0.0)?)?;
        }
        Ok(loss)
    }
}

/// `[len, 2^len]` f32 twice: column `c` holds the bits of `c` (most significant first), and
/// their complements.
fn half_bits(len: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let n = 1usize << len;
    let ones: Vec<f32> = (0..len * n)
        .map(|k| ((k % n) >> (len - 1 - k / n) & 1) as f32)
        .collect();
    let zeros: Vec<f32> = ones.iter().map(|b| 1.0 - b).collect();
    Ok((
        Tensor::from_vec(ones, (len, n), dev)?,
        Tensor::from_vec(zeros, (len, n), dev)?,
    ))
}

impl RowQuantizer for Lfq {
    fn width(&self) -> usize {
        self.config.bits()
    }

    /// Quantizes `z` `[T, d]` like [`VectorQuantizer::forward`](crate::VectorQuantizer::forward)
    /// does: f32 codes (straight-through), indices, the batch's code usage and the loss.
    fn forward_rows(&self, z: &Tensor, _update: bool) -> Result<VqOutput> {
        let _span = tracing::trace_span!("lfq", bits = self.config.bits()).entered();
        let quantized = self.quantize(z)?;
        let indices = self.codes_to_indices(&quantized.detach())?;
        let (counts, perplexity) = code_usage(&indices, self.config.codebook_size() as usize)?;
        let loss = self.loss(z, &quantized)?;
        Ok(VqOutput {
            quantized,
            indices,
            loss,
            counts,
            perplexity,
        })
    }

    /// Indices `[T]` u32 → `[T, d]` f32 codes `±s` (no codebook).
    fn indices_to_codes(&self, indices: &Tensor) -> Result<Tensor> {
        check_indices(indices, self.config.codebook_size())?;
        let two = Tensor::new(2u32, indices.device())?;
        let shifted = indices
            .unsqueeze(1)?
            .broadcast_div(&self.bit_values(indices.device())?)?;
        let bits = (&shifted - shifted.broadcast_div(&two)?.broadcast_mul(&two)?)?;
        let s = self.config.loss().codebook_scale;
        Ok(bits.to_dtype(DType::F32)?.affine(2.0 * s, -s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn lfq(bits: u32, inv_temperature: f64) -> Lfq {
        let mut c = LfqConfig::new(bits);
        c.loss.inv_temperature = inv_temperature;
        Lfq::new(&c.validate().unwrap())
    }

    /// d = 2, s = 1, β = 0.25 (so `P(bit = 1) = σ(z)`), against a brute-force softmax over the
    /// four codes in PyTorch (f64):
    ///
    /// ```python
    /// import torch, itertools
    /// z = torch.tensor([[0.5, -0.25], [0.0, 1.0], [-2.0, 0.75]], dtype=torch.float64,
    ///                  requires_grad=True)
    /// codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=2)),
    ///                      dtype=torch.float64)  # index order: first channel most significant
    /// p = torch.softmax(2 * 0.25 * z @ codes.T, dim=-1)  # [T, 4]
    /// ent = lambda q: -(q * q.clamp(min=1e-5).log()).sum(-1)
    /// hs = ent(p).mean(); hc = ent(p.mean(0))
    /// (hs - hc).backward()
    /// print(repr(hs.item()), repr(hc.item())); print(z.grad.tolist())
    /// ```
    ///
    /// Codes by hand: (0.5, −0.25) → (1, −1), bits 10, index 2; (0, 1) → (−1, 1) (0 maps to
    /// −s), index 1; (−2, 0.75) → (−1, 1), index 1.
    #[test]
    fn codes_entropies_and_gradient_by_hand() {
        let q = lfq(2, 0.25);
        let z = Var::new(&[[0.5f32, -0.25], [0.0, 1.0], [-2.0, 0.75]], &Device::Cpu).unwrap();
        let codes = q.quantize(z.as_tensor()).unwrap();
        assert_eq!(
            codes.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, -1.0], vec![-1.0, 1.0], vec![-1.0, 1.0]]
        );
        let idx = q.codes_to_indices(&codes).unwrap();
        assert_eq!(idx.to_vec1::<u32>().unwrap(), vec![2, 1, 1]);
        assert_eq!(
            q.indices_to_codes(&idx).unwrap().to_vec2::<f32>().unwrap(),
            codes.to_vec2::<f32>().unwrap()
        );
        let h = q.entropy(z.as_tensor()).unwrap();
        let hs = h.per_sample.to_scalar::<f32>().unwrap();
        let hc = h.codebook.to_scalar::<f32>().unwrap();
        assert!((hs - 1.205_471_2).abs() < 1e-6, "{hs}");
        assert!((hc - 1.342_189_1).abs() < 1e-6, "{hc}");
        let grads = (h.per_sample - h.codebook).unwrap().backward().unwrap();
        let g = grads.get(z.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let want = [
            [-0.06282099263130998, 0.05490726690710276],
            [-0.031652108219823095, -0.03593051495303697],
            [0.05718480090142206, -0.014317550363112191],
        ];
        for (gr, wr) in g.iter().zip(want) {
            for (a, b) in gr.iter().zip(wr) {
                assert!((f64::from(*a) - b).abs() < 1e-6, "{g:?}");
            }
        }
        // The straight-through gradient of the codes is the identity.
        let grads = codes.sum_all().unwrap().backward().unwrap();
        let g = grads.get(z.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g, vec![vec![1.0; 2]; 3]);
    }

    /// The factorised entropies equal a direct softmax over all 2^d codes (f64, in this test),
    /// for an odd d (uneven halves) and d = 1 (an empty first half).
    #[test]
    fn factorised_entropies_equal_a_direct_softmax() {
        let mut state = 3u64;
        for (d, beta) in [(7usize, 0.8f64), (1, 2.0), (4, 0.3), (5, 100.0)] {
            let t = 40;
            let z: Vec<f32> = (0..t * d)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
                })
                .collect();
            let n = 1usize << d;
            let mut mean = vec![0f64; n];
            let mut per_sample = 0f64;
            for row in z.chunks(d) {
                let logits: Vec<f64> = (0..n)
                    .map(|c| {
                        (0..d)
                            .map(|i| {
                                let bit = (c >> (d - 1 - i)) & 1;
                                let code = if bit == 1 { 1.0 } else { -1.0 };
                                2.0 * beta * code * f64::from(row[i])
                            })
                            .sum()
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (c, v) in e.iter().enumerate() {
                    let p = v / sum;
                    mean[c] += p / t as f64;
                    if p > 0.0 {
                        per_sample -= p * p.ln() / t as f64;
                    }
                }
            }
            let codebook: f64 = -mean.iter().map(|p| p * p.max(1e-5).ln()).sum::<f64>();
            let q = lfq(d as u32, beta);
            let h = q
                .entropy(&Tensor::from_vec(z, (t, d), &Device::Cpu).unwrap())
                .unwrap();
            let hs = f64::from(h.per_sample.to_scalar::<f32>().unwrap());
            let hc = f64::from(h.codebook.to_scalar::<f32>().unwrap());
            assert!(
                (hs - per_sample).abs() < 1e-4 * d as f64,
                "d {d}: {hs} vs {per_sample}"
            );
            assert!(
                (hc - codebook).abs() < 1e-4 * d as f64,
                "d {d}: {hc} vs {codebook}"
            );
        }
    }

    /// Every code of d = 5 round-trips, and index 2^24 − 1 with 24 bits is exact.
    #[test]
    fn indices_round_trip() {
        let q = lfq(5, 100.0);
        let idx = Tensor::arange(0u32, 32, &Device::Cpu).unwrap();
        let codes = q.indices_to_codes(&idx).unwrap();
        // 19 = 0b10011.
        assert_eq!(
            codes.to_vec2::<f32>().unwrap()[19],
            vec![1.0, -1.0, -1.0, 1.0, 1.0]
        );
        let back = q.codes_to_indices(&codes).unwrap();
        assert_eq!(back.to_vec1::<u32>().unwrap(), (0..32).collect::<Vec<_>>());
        let e = q
            .indices_to_codes(&Tensor::new(&[3u32, 32], &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("32 is out of range for 32 codes"), "{e}");
        let q = lfq(24, 100.0);
        let want = vec![(1u32 << 24) - 1, (1 << 23) + 5, 0];
        let idx = Tensor::new(want.as_slice(), &Device::Cpu).unwrap();
        let codes = q.indices_to_codes(&idx).unwrap();
        let back = q.codes_to_indices(&codes).unwrap();
        assert_eq!(back.to_vec1::<u32>().unwrap(), want);
    }

    /// bf16 inputs give the codes, indices and code usage of the same values in f32.
    #[test]
    fn bf16_inputs_give_the_f32_codes() {
        let q = lfq(10, 100.0);
        let mut state = 17u64;
        let vals: Vec<f32> = (0..10 * 400)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let z32 = Tensor::from_vec(vals, (400, 10), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let z16 = z32.to_dtype(DType::BF16).unwrap();
        let a = q.forward_rows(&z32, true).unwrap();
        let b = q.forward_rows(&z16, true).unwrap();
        assert_eq!(
            a.indices.to_vec1::<u32>().unwrap(),
            b.indices.to_vec1::<u32>().unwrap()
        );
        assert_eq!(
            a.counts.to_vec1::<f32>().unwrap(),
            b.counts.to_vec1::<f32>().unwrap()
        );
        assert_eq!(b.quantized.dtype(), DType::F32);
    }

    /// The loss is `w_H·(H_sample − γ·H_codebook) + w_c·commitment`, each part by itself.
    #[test]
    fn loss_weights() {
        let z = Tensor::new(&[[0.5f32, -0.25], [0.0, 1.0], [-2.0, 0.75]], &Device::Cpu).unwrap();
        let mut c = LfqConfig::new(2);
        c.loss.inv_temperature = 0.25;
        c.loss.entropy_weight = 0.5;
        c.loss.diversity_gamma = 2.0;
        let out = Lfq::new(&c.validate().unwrap())
            .forward_rows(&z, true)
            .unwrap();
        let want = 0.5 * (1.2054712465017667 - 2.0 * 1.3421890802510463);
        let got = f64::from(out.loss.to_scalar::<f32>().unwrap());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        c.loss.entropy_weight = 0.0;
        c.loss.commitment_weight = 3.0;
        let out = Lfq::new(&c.validate().unwrap())
            .forward_rows(&z, true)
            .unwrap();
        // (0.5² + 0.75² + 1² + 0 + 1² + 0.25²) / 6 = 2.875 / 6.
        let got = f64::from(out.loss.to_scalar::<f32>().unwrap());
        assert!((got - 3.0 * 2.875 / 6.0).abs() < 1e-6, "{got}");
    }

    /// Saturated soft assignments (β = 100, |z| up to 1e3, and exact zeros) keep every entropy
    /// and gradient finite.
    #[test]
    fn saturated_inputs_give_finite_gradients() {
        let q = lfq(3, 100.0);
        let z = Var::new(
            &[[1e3f32, -1e3, 0.0], [0.2, -0.7, 5.0], [-30.0, 0.0, 1e-3]],
            &Device::Cpu,
        )
        .unwrap();
        let out = q.forward_rows(z.as_tensor(), true).unwrap();
        let loss = out.loss.to_scalar::<f32>().unwrap();
        assert!(loss.is_finite(), "{loss}");
        let grads = out.loss.backward().unwrap();
        let g = grads.get(z.as_tensor()).unwrap().flatten_all().unwrap();
        assert!(g.to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_configs_name_their_field() {
        let err = LfqConfig::new(0).validate().unwrap_err().to_string();
        assert!(err.contains("bits"), "{err}");
        let err = LfqConfig::new(25).validate().unwrap_err().to_string();
        assert!(err.contains("bits") && err.contains("25"), "{err}");
        let mut c = LfqConfig::new(8);
        c.loss.inv_temperature = 0.0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("inv_temperature"), "{err}");
        let mut c = LfqConfig::new(8);
        c.loss.entropy_weight = f64::NAN;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("entropy_weight"), "{err}");
        let err = lfq(4, 100.0)
            .quantize(&Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("[T, 4]"), "{err}");
    }
}
