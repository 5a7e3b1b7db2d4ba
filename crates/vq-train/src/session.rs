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
use crate::metrics::ValRecord;

/// Everything a run needs besides the optimiser.
pub struct Session {
    pub config: TrainConfig,
    pub device: Device,
    pub params: SeededVarMap,
    pub model: VqVae,
    pub data: LoadedData,
    /// `[N, D]` of each codebook.
    pub pool: Vec<[usize; 2]>,
}

impl Session {
    /// Validates the config, loads the data and builds the model with seeded weights.
    pub fn build(config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let device = parse_device(&config.train.device)?;
        let valid = config.model.validate(config.data.channels)?;
        let pool = valid.quantizer().pool();
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
        let ck = checkpoint::load(&checkpoint::latest(run)?, &session.device)?;
        checkpoint::restore_vars(
            &session.params.named_vars(),
            ck.weights.clone(),
            &ck.dir.join("model.safetensors"),
        )?;
        Ok((session, ck))
    }

    /// Labels of the pool's codebooks, `"[N,D]"`.
    pub fn pool_labels(&self) -> Vec<String> {
        self.pool
            .iter()
            .map(|[n, d]| format!("[{n},{d}]"))
            .collect()
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

    /// One validation pass (or `max_batches` of it) with the paper's τ = 1 Gumbel-Softmax and
    /// noise from `rng`; no codebook update.
    pub fn validate(
        &self,
        step: usize,
        max_batches: usize,
        rng: &mut dyn RngCore,
    ) -> Result<ValRecord> {
        let _span = tracing::debug_span!("validation", step).entered();
        let batcher = self.ordered_batcher(false)?;
        let m = self.pool.len();
        let (mut sq_sum, mut px, mut recon_sum, mut batches, mut images) =
            (0f64, 0usize, 0f64, 0usize, 0usize);
        let mut counts = vec![0f64; m];
        let mut ppl = vec![0f64; m];
        for batch in batcher.stream(Cursor::default(), true) {
            let batch = batch?;
            if max_batches > 0 && batches == max_batches {
                break;
            }
            let x = batch.images.to_device(&self.device)?;
            let out = self.model.forward(&x, &mut Step::validate(rng))?;
            let mse = out.recon_loss.to_scalar::<f32>()? as f64;
            let n = x.elem_count();
            sq_sum += mse * n as f64;
            px += n;
            recon_sum += mse;
            batches += 1;
            images += x.dim(0)?;
            for (c, v) in counts
                .iter_mut()
                .zip(out.quant.selection_counts.to_vec1::<f32>()?)
            {
                *c += v as f64;
            }
            for (p, v) in ppl.iter_mut().zip(out.quant.perplexity.to_vec1::<f32>()?) {
                *p += v as f64;
            }
        }
        if batches == 0 {
            return Err(TrainError::config(
                "validation",
                "the validation split produced no batch",
            ));
        }
        let units: f64 = counts.iter().sum();
        Ok(ValRecord {
            step,
            mse: sq_sum / px as f64,
            recon_sum,
            batches,
            images,
            selection: counts.iter().map(|c| c / units.max(1.0)).collect(),
            perplexity: ppl.iter().map(|p| p / batches as f64).collect(),
        })
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
