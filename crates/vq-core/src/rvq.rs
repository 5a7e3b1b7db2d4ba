//! Residual vector quantization (RVQ; Zeghidour et al., 2021, SoundStream): `K` VQ codebooks
//! `[N, D]` in sequence, each quantizing what the previous stages left, `x − Σ_{j<k} q_j`; the
//! output is `Σ_k q_k`. Each stage is a [`VectorQuantizer`] with the shared learning rule (EMA,
//! k-means, restarts, SimVQ), so the search and the updates are the single-codebook ones. The
//! rotation trick and cosine codebooks are refused: the stack has one straight-through estimator
//! around it (no per-stage gradient to rotate), and unit codewords summed over stages could not
//! follow the input's norm.
//!
//! - **Gradient**: the output passes the gradient to `x` unchanged (one straight-through
//!   estimator around the whole stack, as the residual arithmetic of EnCodec's RVQ gives).
//!   `vector-quantize-pytorch`'s `ResidualVQ` detaches each residual, so its stages' estimators
//!   add up to `K` times that gradient.
//! - **Loss**: the sum of the stages' VQ losses, each on its own residual (the residual stays
//!   differentiable in `x`, so every stage's commitment term reaches the encoder).
//! - **Codes**: the `K` stage indices as one mixed-radix index `Σ_k i_k·N^k` (first stage
//!   least significant), so `N^K ≤ 2^24` (per-batch code usage is counted over all `N^K`
//!   codes); decoding sums the stages' codewords.
//! - **Quantize dropout** (SoundStream's, in training only): each training forward keeps the
//!   first `k` stages, `k` drawn uniformly from `min_stages..=K` by a seeded stream of its own
//!   (the stack's variable path and its update counter); the dropped stages neither quantize nor
//!   update and count as digit 0 in that batch's indices.

use candle_core::{DType, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{CodebookConfig, ValidVqConfig, VqConfig};
use crate::error::{ConfigError, Result, VqError};
use crate::quantizer::check_indices;
use crate::search::SearchMethod;
use crate::vq::{code_usage, VectorQuantizer, VqOutput};

/// The most codes of a residual stack, `N^K` (see the module docs).
pub const RVQ_MAX_CODES: u64 = 1 << 24;

/// Configuration of a [`ResidualVq`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RvqConfig {
    /// K: the stages.
    pub stages: usize,
    /// N: codewords per stage.
    pub num_embeddings: usize,
    /// D: the dimension of every codeword.
    pub embedding_dim: usize,
    /// Learning rule of every stage.
    pub codebook: CodebookConfig,
    /// Quantize dropout: the fewest stages a training forward keeps (`stages` = off).
    pub min_stages: usize,
}

impl Default for RvqConfig {
    fn default() -> Self {
        Self {
            stages: 2,
            num_embeddings: 256,
            embedding_dim: 8,
            codebook: CodebookConfig::default(),
            min_stages: 2,
        }
    }
}

impl RvqConfig {
    /// `stages` codebooks `[n, d]` with the default learning rule and no dropout.
    pub fn new(stages: usize, n: usize, d: usize) -> Self {
        Self {
            stages,
            num_embeddings: n,
            embedding_dim: d,
            codebook: CodebookConfig::default(),
            min_stages: stages,
        }
    }

    /// Checks the stages, the stage codebook and the code count.
    pub fn validate(&self) -> std::result::Result<ValidRvqConfig, ConfigError> {
        if self.stages == 0 {
            return Err(ConfigError::invalid("stages", "must be ≥ 1"));
        }
        if !(1..=self.stages).contains(&self.min_stages) {
            return Err(ConfigError::invalid(
                "min_stages",
                format!(
                    "must be 1 to stages = {}, got {}",
                    self.stages, self.min_stages
                ),
            ));
        }
        if self.codebook.gradient != crate::config::VqGradient::StraightThrough {
            return Err(ConfigError::invalid(
                "gradient",
                "a residual stack passes the gradient straight through the whole stack; the \
                 rotation trick applies to a single codebook",
            ));
        }
        if self.codebook.distance != crate::config::Distance::L2 {
            return Err(ConfigError::invalid(
                "distance",
                "a residual stack sums its stages' codewords; unit (cosine) codewords could not \
                 follow the input's norm",
            ));
        }
        let stage = VqConfig {
            num_embeddings: self.num_embeddings,
            embedding_dim: self.embedding_dim,
            codebook: self.codebook.clone(),
        }
        .validate()?;
        let codes = (0..self.stages)
            .try_fold(1u64, |acc, _| acc.checked_mul(self.num_embeddings as u64))
            .filter(|&c| c <= RVQ_MAX_CODES)
            .ok_or_else(|| {
                ConfigError::invalid(
                    "stages",
                    format!(
                        "{} stages of {} codewords make more than 2^24 codes (the most whose \
                         usage is counted per batch, as one index per position)",
                        self.stages, self.num_embeddings
                    ),
                )
            })?;
        Ok(ValidRvqConfig {
            config: self.clone(),
            stage,
            codes,
        })
    }
}

/// A checked [`RvqConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValidRvqConfig {
    config: RvqConfig,
    stage: ValidVqConfig,
    codes: u64,
}

impl ValidRvqConfig {
    /// K.
    pub fn stages(&self) -> usize {
        self.config.stages
    }
    /// The fewest stages a training forward keeps.
    pub fn min_stages(&self) -> usize {
        self.config.min_stages
    }
    /// Every stage's codebook.
    pub fn stage(&self) -> &ValidVqConfig {
        &self.stage
    }
    /// `N^K`.
    pub fn codebook_size(&self) -> u64 {
        self.codes
    }
}

/// A stack of residual VQ stages (see the module docs).
///
/// Variables: `stages.{k}.*` (each a [`VectorQuantizer`]'s) and, with quantize dropout,
/// `dropout_updates` (u32, the stream position).
#[derive(Clone, Debug)]
pub struct ResidualVq {
    config: ValidRvqConfig,
    stages: Vec<VectorQuantizer>,
    dropout_updates: Option<Var>,
    key: u64,
}

impl ResidualVq {
    /// Builds the stages under `vb`.
    pub fn new(config: &ValidRvqConfig, vb: VarBuilder) -> Result<Self> {
        let stages = (0..config.stages())
            .map(|k| VectorQuantizer::new(config.stage(), vb.pp("stages").pp(k)))
            .collect::<Result<Vec<_>>>()?;
        let dropout_updates = (config.min_stages() < config.stages())
            .then(|| {
                vb.get_with_hints_dtype(1, "dropout_updates", Init::Const(0.0), DType::U32)
                    .map_err(VqError::from)
                    .and_then(|t| Ok(Var::from_tensor(&t)?))
            })
            .transpose()?;
        Ok(Self {
            config: config.clone(),
            stages,
            dropout_updates,
            key: crate::init::stable_hash(vb.prefix().as_bytes()),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &ValidRvqConfig {
        &self.config
    }

    /// The stages, first to last.
    pub fn stages(&self) -> &[VectorQuantizer] {
        &self.stages
    }

    /// Chooses the nearest-neighbour implementation of every stage.
    pub fn with_search(mut self, search: SearchMethod) -> Self {
        self.stages = self
            .stages
            .into_iter()
            .map(|s| s.with_search(search))
            .collect();
        self
    }

    /// How many stages this forward keeps: all of them, or with `update` and quantize dropout a
    /// seeded draw from `min_stages..=K` (advancing the stream).
    fn active_stages(&self, update: bool) -> Result<usize> {
        let k = self.config.stages();
        let Some(counter) = self.dropout_updates.as_ref().filter(|_| update) else {
            return Ok(k);
        };
        let n = counter.as_tensor().to_vec1::<u32>()?[0];
        let mut rng = crate::init::stream(
            self.key ^ u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            "quantize-dropout",
        );
        counter.set(&Tensor::new(&[n.wrapping_add(1)], counter.device())?)?;
        Ok(rng.random_range(self.config.min_stages()..=k))
    }

    /// Quantizes `x` `[T, D]` like [`VectorQuantizer::forward`]: the sum of the stages' codewords
    /// (straight-through as a whole), mixed-radix indices, code usage over `N^K` codes, and the
    /// sum of the stages' losses. With `update` the stages' EMA codebooks move.
    pub fn forward(&self, x: &Tensor, update: bool) -> Result<VqOutput> {
        let _span = tracing::trace_span!("rvq", stages = self.config.stages()).entered();
        let active = self.active_stages(update)?;
        let n = self.config.stage().num_embeddings() as u32;
        let x_sg = x.detach();
        let mut sum = x_sg.zeros_like()?;
        let mut loss = Tensor::zeros((), x.dtype(), x.device())?;
        let mut indices = Tensor::zeros(x.dim(0)?, DType::U32, x.device())?;
        let mut radix = 1u32;
        for stage in &self.stages[..active] {
            // The residual stays differentiable in x (the stage's commitment term reaches it).
            let residual = (x - &sum)?;
            let out = stage.forward(&residual, update)?;
            sum = (sum + out.quantized.detach())?;
            loss = (loss + out.loss)?;
            let place = Tensor::new(radix, x.device())?;
            indices = (indices + out.indices.broadcast_mul(&place)?)?;
            radix = radix.wrapping_mul(n);
        }
        let (counts, perplexity) = code_usage(&indices, self.config.codebook_size() as usize)?;
        Ok(VqOutput {
            // Forward value exactly the sum; gradient the identity.
            quantized: (&sum + (x - &x_sg)?)?,
            indices,
            loss,
            counts,
            perplexity,
        })
    }

    /// Indices `[T]` u32 → `[T, D]`: the sum of the stages' codewords.
    pub fn decode(&self, indices: &Tensor) -> Result<Tensor> {
        check_indices(indices, self.config.codebook_size())?;
        let n = self.config.stage().num_embeddings() as u32;
        let n_t = Tensor::new(n, indices.device())?;
        let mut rest = indices.clone();
        let mut sum: Option<Tensor> = None;
        for stage in &self.stages {
            let next = rest.broadcast_div(&n_t)?;
            let digit = (&rest - next.broadcast_mul(&n_t)?)?;
            let q = stage.decode(&digit)?;
            sum = Some(match sum {
                None => q,
                Some(s) => (s + q)?,
            });
            rest = next;
        }
        Ok(sum.expect("at least one stage"))
    }

    /// The stages' data-driven initialisation, in order: stage `k` from what stages `0..k`
    /// (just initialised) leave of `x` `[T, D]`. Returns whether any stage was initialised.
    pub fn initialise(
        &self,
        x: &Tensor,
        rows_per_step: usize,
        rng: &mut dyn rand::RngCore,
    ) -> Result<bool> {
        let mut residual = x.detach();
        let mut any = false;
        for stage in &self.stages {
            any |= stage.initialise(&residual, rows_per_step, rng)?;
            let q = stage.decode(&stage.encode(&residual)?)?;
            residual = (residual - q)?;
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    /// Two stages of [3, 1] with the authors' settings (no init, no restarts) and the given
    /// codewords.
    fn rvq(first: &[f32], second: &[f32], min_stages: usize) -> ResidualVq {
        let cfg = RvqConfig {
            stages: 2,
            num_embeddings: 3,
            embedding_dim: 1,
            codebook: CodebookConfig::authors(),
            min_stages,
        }
        .validate()
        .unwrap();
        let dev = Device::Cpu;
        let mut ts = HashMap::new();
        for (k, cw) in [first, second].iter().enumerate() {
            let e = Tensor::from_slice(cw, (3, 1), &dev).unwrap();
            ts.insert(format!("stages.{k}.embedding"), e.clone());
            ts.insert(format!("stages.{k}.ema_w"), e);
            ts.insert(
                format!("stages.{k}.ema_cluster_size"),
                Tensor::ones(3, DType::F32, &dev).unwrap(),
            );
        }
        ts.insert(
            "dropout_updates".into(),
            Tensor::zeros(1, DType::U32, &dev).unwrap(),
        );
        ResidualVq::new(&cfg, VarBuilder::from_tensors(ts, DType::F32, &dev)).unwrap()
    }

    /// By hand: stage 1 codewords (−2, 0, 2), stage 2 (−0.5, 0, 0.5).
    /// - x = 1.7: stage 1 → 2 (index 2), residual −0.3 → −0.5 (index 0): output 1.5, index
    ///   2 + 3·0 = 2;
    /// - x = −2.4: −2 (0), residual −0.4 → −0.5 (0): −2.5, index 0;
    /// - x = 0.2: 0 (1), residual 0.2 → 0 (1): 0, index 1 + 3 = 4.
    ///
    /// Losses (α = 0.25, β = 1): stage 1 1.25·(0.09 + 0.16 + 0.04)/3, stage 2 1.25·(0.04 +
    /// 0.01 + 0.04)/3; their sum is 1.25·0.38/3 = 0.158333. Gradient of Σ output: 1 each
    /// (straight-through around the stack).
    #[test]
    fn two_stages_by_hand() {
        let q = rvq(&[-2., 0., 2.], &[-0.5, 0., 0.5], 2);
        let x = Var::new(&[[1.7f32], [-2.4], [0.2]], &Device::Cpu).unwrap();
        let out = q.forward(x.as_tensor(), false).unwrap();
        let got: Vec<f32> = out.quantized.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, vec![1.5, -2.5, 0.0]);
        assert_eq!(out.indices.to_vec1::<u32>().unwrap(), vec![2, 0, 4]);
        let loss = out.loss.to_scalar::<f32>().unwrap();
        assert!((loss - 0.158_333_3).abs() < 1e-6, "{loss}");
        let grads = out.quantized.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, vec![1.0; 3]);
        let back: Vec<f32> = q
            .decode(&out.indices)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(back, got);
        let counts = out.counts.to_vec1::<f32>().unwrap();
        assert_eq!(counts.len(), 9);
        assert_eq!((counts[0], counts[2], counts[4]), (1.0, 1.0, 1.0));
    }

    /// Quantize dropout keeps 1 or 2 stages per training forward, a seeded draw: the same
    /// sequence for the same variable path and counter, both values occur, a one-stage forward
    /// outputs the first stage's codeword, and evaluation always keeps both.
    #[test]
    fn quantize_dropout_is_seeded() {
        let x = Tensor::new(&[[1.7f32]], &Device::Cpu).unwrap();
        let draws = |q: &ResidualVq| -> Vec<f32> {
            (0..16)
                .map(|_| {
                    q.forward(&x, true)
                        .unwrap()
                        .quantized
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()[0]
                })
                .collect()
        };
        // Codewords far from x's region stay put under the EMA updates of a few steps.
        let a = draws(&rvq(&[-2., 0., 2.], &[-0.5, 0., 0.5], 1));
        let b = draws(&rvq(&[-2., 0., 2.], &[-0.5, 0., 0.5], 1));
        assert_eq!(a, b);
        assert!(a.iter().any(|&v| v > 1.9), "{a:?}");
        assert!(a.iter().any(|&v| v < 1.6), "{a:?}");
        let q = rvq(&[-2., 0., 2.], &[-0.5, 0., 0.5], 1);
        let eval = q.forward(&x, false).unwrap().quantized;
        assert_eq!(
            eval.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.5]
        );
    }

    #[test]
    fn bad_configs_name_their_field() {
        let mut c = RvqConfig::new(2, 256, 8);
        c.codebook.gradient = crate::config::VqGradient::Rotation;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("gradient"), "{e}");
        let mut c = RvqConfig::new(2, 256, 8);
        c.codebook.distance = crate::config::Distance::Cosine;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("distance"), "{e}");
        let e = RvqConfig::new(0, 256, 8)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("stages"), "{e}");
        let e = RvqConfig::new(4, 1024, 8)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("stages") && e.contains("2^24"), "{e}");
        let mut c = RvqConfig::new(2, 256, 8);
        c.min_stages = 3;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("min_stages"), "{e}");
    }
}
