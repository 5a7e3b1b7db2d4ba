//! A model and its data built from a validated config, optionally restored from a checkpoint;
//! shared by training, evaluation, reconstruction pictures and code dumps.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rand::RngCore;
use vq_core::{SeededVarMap, Step};
use vq_data::{load, Batcher, BatcherConfig, Cursor, Dataset, LoadedData};
use vq_models::VqVae;

use crate::checkpoint::{self, Checkpoint};
use crate::config::TrainConfig;
use crate::device::parse_device;
use crate::error::{Result, TrainError};
use crate::metrics::{RouteRecord, ValRecord};

/// Everything a run needs besides the optimiser.
pub struct Session {
    pub config: TrainConfig,
    pub device: Device,
    pub params: SeededVarMap,
    pub model: VqVae,
    pub data: LoadedData,
    /// `[N, D]` of each codebook.
    pub pool: Vec<[usize; 2]>,
    labels: Vec<String>,
}

impl Session {
    /// Validates the config, loads the data and builds the model with seeded weights.
    pub fn build(config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let device = parse_device(&config.train.device)?;
        let valid = config.model.validate(config.data.channels)?;
        let pool = valid.quantizer().pool();
        let labels = valid.quantizer().labels();
        let data = load(&config.data)?;
        let params = SeededVarMap::new(config.train.seed);
        let model = VqVae::new(&valid, params.var_builder(DType::F32, &device))?;
        Ok(Self {
            config,
            device,
            params,
            model,
            data,
            pool,
            labels,
        })
    }

    /// Opens a finished or running run folder: its `config.toml` and newest checkpoint.
    pub fn open_run(run: &Path, device_override: Option<&str>) -> Result<(Self, Checkpoint)> {
        let cfg_path = run.join("config.toml");
        let mut config = TrainConfig::load(&cfg_path, &[])?;
        if let Some(d) = device_override {
            config.train.device = d.to_string();
        }
        let session = Self::build(config)?;
        let ck = checkpoint::load_latest(run, &session.device)?;
        checkpoint::restore_vars(
            &session.params.named_vars(),
            ck.weights.clone(),
            &ck.dir.join("model.safetensors"),
        )?;
        Ok((session, ck))
    }

    /// Labels of the pool's members: `"[N,D]"` for a codebook, `"fsq:8,5,5,5"`, `"lfq:16"`.
    pub fn pool_labels(&self) -> Vec<String> {
        self.labels.clone()
    }

    /// A batcher over a split in file order (for validation, pictures, code dumps).
    pub fn ordered_batcher(&self, train_split: bool) -> Result<Batcher> {
        let ds: Arc<dyn Dataset> = if train_split {
            self.data.train.clone()
        } else {
            self.data.val.clone()
        };
        let cfg = BatcherConfig {
            batch_size: self.config.train.batch_size.min(ds.len()).max(1),
            shuffle: false,
            drop_last: false,
            seed: 0,
            prefetch: 2,
        };
        Ok(Batcher::new(ds, cfg, self.data.normalization.clone())?)
    }

    /// One validation pass (or `max_batches` of it) with the paper's τ = 1 Gumbel-Softmax
    /// (noise from `rng`) and, for a pool routed by attention, a second decoding of every batch
    /// with argmax routing; no codebook update. Also measures PSNR, SSIM, bits per image and,
    /// per codebook, the codewords in use over the pass.
    pub fn validate(
        &self,
        step: usize,
        max_batches: usize,
        rng: &mut dyn RngCore,
    ) -> Result<ValRecord> {
        let _span = tracing::debug_span!("validation", step).entered();
        let batcher = self.ordered_batcher(false)?;
        let m = self.pool.len();
        let deterministic = m == 1 || self.config.model.pool.router.is_deterministic();
        let (mut batches, mut images) = (0usize, 0usize);
        let mut sampled = RouteAcc::new(m);
        let mut argmax = RouteAcc::new(m);
        let mut usage = CodeUsage::new(&self.pool);
        for batch in batcher.stream(Cursor::default(), true) {
            let batch = batch?;
            if max_batches > 0 && batches == max_batches {
                break;
            }
            let x = batch.images.to_device(&self.device)?;
            let out = self.model.forward(&x, &mut Step::validate(rng))?;
            let x_unit = self.unit_pixels(&x, false)?;
            sampled.add(&x_unit, &out, self, x.dims4()?)?;
            // A deterministic route equals the sampled one: measured once, copied at the end.
            if !deterministic {
                let det = self.model.forward(&x, &mut Step::eval())?;
                argmax.add(&x_unit, &det, self, x.dims4()?)?;
            }
            batches += 1;
            images += x.dim(0)?;
            usage.add(&out.quant)?;
        }
        if batches == 0 {
            return Err(TrainError::config(
                "validation",
                "the validation split produced no batch",
            ));
        }
        let s = sampled.finish(images);
        let codes_used: Vec<usize> = usage
            .hist
            .iter()
            .map(|h| h.iter().filter(|&&c| c > 0.0).count())
            .collect();
        Ok(ValRecord {
            step,
            mse: s.mse,
            recon_sum: s.recon_sum,
            batches,
            images,
            selection: s.selection.clone(),
            perplexity: usage
                .batch_perplexity
                .iter()
                .map(|p| p / batches as f64)
                .collect(),
            psnr: Some(s.psnr),
            ssim: Some(s.ssim),
            bits_per_image: Some(s.bits_per_image),
            codes_in_use: codes_used
                .iter()
                .zip(&self.pool)
                .map(|(&u, &[n, _])| u as f64 / n as f64)
                .collect(),
            codes_used,
            pass_perplexity: usage.pass_perplexity(),
            argmax: Some(if deterministic {
                s.clone()
            } else {
                argmax.finish(images)
            }),
        })
    }

    /// `[B, C, H, W]` normalised images → host pixels on the `[0, 1]` scale (clamped to it when
    /// `clamp`, as a reconstruction shown as a picture would be).
    fn unit_pixels(&self, x: &Tensor, clamp: bool) -> Result<Vec<f32>> {
        let (_, c, h, w) = x.dims4()?;
        let plane = h * w;
        let v = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let norm = &self.data.normalization;
        Ok(v.iter()
            .enumerate()
            .map(|(i, &p)| {
                let u = norm.to_unit((i / plane) % c, p);
                if clamp {
                    u.clamp(0.0, 1.0)
                } else {
                    u
                }
            })
            .collect())
    }

    /// All variables as a map for a checkpoint.
    pub fn weights(&self) -> std::collections::HashMap<String, Tensor> {
        self.params
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect()
    }
}

/// Sums of one routing mode over a validation pass.
struct RouteAcc {
    sq_sum: f64,
    px: usize,
    recon_sum: f64,
    psnr_sum: f64,
    ssim_sum: f64,
    bits_sum: f64,
    counts: Vec<f64>,
}

impl RouteAcc {
    fn new(m: usize) -> Self {
        Self {
            sq_sum: 0.0,
            px: 0,
            recon_sum: 0.0,
            psnr_sum: 0.0,
            ssim_sum: 0.0,
            bits_sum: 0.0,
            counts: vec![0.0; m],
        }
    }

    /// Adds one batch: `x_unit` the originals on the `[0, 1]` scale, `out` the model's output.
    fn add(
        &mut self,
        x_unit: &[f32],
        out: &vq_models::VqVaeOutput,
        session: &Session,
        dims: (usize, usize, usize, usize),
    ) -> Result<()> {
        let (b, c, h, w) = dims;
        let mse = out.recon_loss.to_scalar::<f32>()? as f64;
        let n = b * c * h * w;
        self.sq_sum += mse * n as f64;
        self.px += n;
        self.recon_sum += mse;
        let r = session.unit_pixels(&out.reconstruction, true)?;
        let per = c * h * w;
        for (xi, ri) in x_unit.chunks_exact(per).zip(r.chunks_exact(per)) {
            let e = xi
                .iter()
                .zip(ri)
                .map(|(p, q)| ((p - q) as f64).powi(2))
                .sum::<f64>()
                / per as f64;
            self.psnr_sum += crate::quality::psnr(e);
        }
        self.ssim_sum += crate::quality::ssim_sum(x_unit, &r, [b, c, h, w]);
        let codes = out.quant.codes.codebook.flatten_all()?.to_vec1::<u32>()?;
        self.bits_sum += crate::quality::bits_per_image(&codes, &session.pool);
        for (a, v) in self
            .counts
            .iter_mut()
            .zip(out.quant.selection_counts.to_vec1::<f32>()?)
        {
            *a += v as f64;
        }
        Ok(())
    }

    fn finish(&self, images: usize) -> RouteRecord {
        let units: f64 = self.counts.iter().sum();
        let per_image = |v: f64| v / images.max(1) as f64;
        RouteRecord {
            mse: self.sq_sum / self.px.max(1) as f64,
            recon_sum: self.recon_sum,
            psnr: per_image(self.psnr_sum),
            ssim: per_image(self.ssim_sum),
            bits_per_image: per_image(self.bits_sum),
            selection: self.counts.iter().map(|c| c / units.max(1.0)).collect(),
        }
    }
}

/// Code usage over a validation pass: per codebook, the sum of the batch perplexities and the
/// count of each codeword's assignments.
struct CodeUsage {
    batch_perplexity: Vec<f64>,
    /// `[codebook][codeword]` assignment counts.
    hist: Vec<Vec<f64>>,
}

impl CodeUsage {
    fn new(pool: &[[usize; 2]]) -> Self {
        Self {
            batch_perplexity: vec![0.0; pool.len()],
            hist: pool.iter().map(|&[n, _]| vec![0.0; n]).collect(),
        }
    }

    fn add(&mut self, quant: &vq_core::QuantizerOutput) -> Result<()> {
        let ppl = quant.perplexity.to_vec1::<f32>()?;
        for (p, v) in self.batch_perplexity.iter_mut().zip(ppl) {
            *p += v as f64;
        }
        for (h, c) in self.hist.iter_mut().zip(&quant.code_counts) {
            for (a, v) in h.iter_mut().zip(c.to_vec1::<f32>()?) {
                *a += v as f64;
            }
        }
        Ok(())
    }

    /// exp of the entropy of each codebook's codeword frequencies over the whole pass.
    fn pass_perplexity(&self) -> Vec<f64> {
        self.hist
            .iter()
            .map(|h| {
                let total: f64 = h.iter().sum();
                let entropy: f64 = h
                    .iter()
                    .filter(|&&c| c > 0.0)
                    .map(|&c| {
                        let p = c / total;
                        -p * p.ln()
                    })
                    .sum();
                entropy.exp()
            })
            .collect()
    }
}
