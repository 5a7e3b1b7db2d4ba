//! The training loop: seeded, resumable, with interval metrics, gradient gap, validation,
//! crash-safe checkpoints and a NaN/Inf policy.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use vq_core::{gradient_gap, Quantizer, Selection, Step};
use vq_data::{Batcher, BatcherConfig, Cursor};

use crate::checkpoint::{self, CheckpointState, RngState, FORMAT_VERSION};
use crate::config::{NonFinitePolicy, TrainConfig};
use crate::error::{Result, TrainError};
use crate::lock::RunLock;
use crate::metrics::{JsonlWriter, Record, TimingRecord, TrainRecord, ValRecord};
use crate::optim::{Adam, AdamConfig};
use crate::session::Session;

/// Keys of `[train]` that may change when a run is resumed.
pub const RESUMABLE_KEYS: &[&str] = &[
    "train.steps",
    "train.log_every",
    "train.gap_every",
    "train.val_every",
    "train.val_batches",
    "train.checkpoint_every",
    "train.on_nonfinite",
    "train.device",
    "train.progress",
    "train.report",
    "train.fault_nan_at_step",
    "train.fault_nan_grad_at_step",
];

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub last_train: Option<TrainRecord>,
    pub last_val: Option<ValRecord>,
    pub wall_s: f64,
}

/// Sums over the steps of a log interval (saved in checkpoints so a resumed run logs the same).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Interval {
    steps: usize,
    loss: f64,
    recon: f64,
    vq: f64,
    codebook_loss: Vec<f64>,
    perplexity: Vec<f64>,
    counts: Vec<f64>,
}

impl Interval {
    fn new(m: usize) -> Self {
        Self {
            codebook_loss: vec![0.0; m],
            perplexity: vec![0.0; m],
            counts: vec![0.0; m],
            ..Default::default()
        }
    }
}

fn add(acc: &mut [f64], t: &Tensor) -> Result<()> {
    for (a, v) in acc.iter_mut().zip(t.to_vec1::<f32>()?) {
        *a += v as f64;
    }
    Ok(())
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Keys whose values differ between two configs.
pub fn config_diff(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    flatten("", &toml::Value::try_from(a).expect("serialises"), &mut fa);
    flatten("", &toml::Value::try_from(b).expect("serialises"), &mut fb);
    let mut keys: Vec<String> = fa.iter().chain(&fb).map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| {
            fa.iter().find(|(x, _)| x == k).map(|p| &p.1)
                != fb.iter().find(|(x, _)| x == k).map(|p| &p.1)
        })
        .collect()
}

/// `VQ_TRAIN_FAULT_STEP_DELAY_MS`: a pause in every training step (signal tests).
fn step_delay_ms() -> Option<u64> {
    std::env::var("VQ_TRAIN_FAULT_STEP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// A run folder name for a config: `runs/<dataset>-<quantizer>-s<seed>`, suffixed to be new.
pub fn default_run_dir(config: &TrainConfig) -> PathBuf {
    let q = config.model.quantizer.to_string().replace([':', ','], "-");
    let base = format!("{}-{}-s{}", config.data.name, q, config.train.seed);
    let mut dir = PathBuf::from("runs").join(&base);
    let mut i = 2;
    while dir.exists() {
        dir = PathBuf::from("runs").join(format!("{base}-{i}"));
        i += 1;
    }
    dir
}

/// Starts a new run in `run_dir` (which must not hold a run yet), or resumes the run there.
///
/// On resume, `config` must equal the run's `config.toml` except for [`RESUMABLE_KEYS`]; the
/// newest checkpoint's weights, optimizer, RNG and data position are restored and the metrics
/// logs are cut back to what they were when it was written, so the finished run is identical to
/// one that was never interrupted.
pub fn train(
    config: TrainConfig,
    run_dir: &Path,
    resume: bool,
    progress: bool,
) -> Result<RunSummary> {
    let started = Instant::now();
    config.validate()?;
    // One writer per run folder: an existing run is locked before anything in it is read (any
    // other folder after the inputs are validated, so that a bad input leaves nothing behind).
    let mut lock = if run_dir.join("config.toml").is_file() {
        Some(RunLock::acquire(run_dir)?)
    } else {
        None
    };
    let cfg_path = run_dir.join("config.toml");
    let config_toml = config.to_toml();
    // The τ schedule's horizon: the step count the run started with (a resumed run with a new
    // `train.steps` keeps it; checkpoints older than this field fall back to config.toml's).
    let mut tau_horizon = config.train.steps;
    if resume {
        let old = TrainConfig::load(&cfg_path, &[])?;
        tau_horizon = old.train.steps;
        let diff: Vec<String> = config_diff(&old, &config)
            .into_iter()
            .filter(|k| !RESUMABLE_KEYS.contains(&k.as_str()))
            .collect();
        if !diff.is_empty() {
            return Err(TrainError::config(
                cfg_path.display().to_string(),
                format!(
                    "cannot resume with a different {} (only {} may change)",
                    diff.join(", "),
                    RESUMABLE_KEYS.join(", ")
                ),
            ));
        }
    } else if cfg_path.exists() {
        return Err(TrainError::config(
            run_dir.display().to_string(),
            "already holds a run (config.toml); resume it with --resume or choose another --out",
        ));
    }
    // Data, model and checkpoint are loaded before anything is written, so a bad input leaves
    // no partial run folder behind.
    let session = Session::build(config)?;
    if !session.data.skipped.is_empty() {
        for (path, why) in &session.data.skipped {
            tracing::warn!("skipped image {}: {why}", path.display());
        }
        tracing::warn!(
            "data.on_bad_image = \"skip\": {} image file(s) left out of the dataset",
            session.data.skipped.len()
        );
    }
    let cfg = &session.config;
    let tp = &cfg.train;
    let m = session.pool.len();
    let vars = session.params.named_vars();
    let mut adam = Adam::new(
        vars.clone(),
        AdamConfig {
            lr: tp.lr,
            beta1: tp.beta1,
            beta2: tp.beta2,
            eps: tp.eps,
        },
    );
    let mut gumbel_rng: ChaCha8Rng = vq_core::init::stream(tp.seed, "gumbel");
    let mut start_step = 0usize;
    let mut cursor = Cursor::default();
    let mut skipped = 0usize;
    let mut interval = Interval::new(m);
    let (mut metrics_keep, mut timings_keep) = (0u64, 0u64);
    let resumed_from = if resume {
        checkpoint::latest_if_any(run_dir)?
    } else {
        None
    };
    if let Some(dir) = &resumed_from {
        let ck = checkpoint::load(dir, &session.device)?;
        checkpoint::restore_vars(&vars, ck.weights, &dir.join("model.safetensors"))?;
        adam.load_state(
            ck.optimizer,
            &ck.state.adam_steps,
            &dir.join("optimizer.safetensors"),
        )?;
        gumbel_rng = ck
            .state
            .gumbel_rng
            .restore()
            .map_err(|e| TrainError::checkpoint(dir, e))?;
        start_step = ck.state.step;
        cursor = ck.state.cursor;
        skipped = ck.state.skipped_steps;
        metrics_keep = ck.state.metrics_bytes;
        timings_keep = ck.state.timings_bytes;
        interval = serde_json::from_value(ck.state.interval).map_err(|e| {
            TrainError::checkpoint(dir.join("state.json"), format!("interval: {e}"))
        })?;
        tau_horizon = ck.state.tau_horizon.unwrap_or(tau_horizon);
        tracing::info!(step = start_step, "resumed from {}", dir.display());
    }
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    if lock.is_none() {
        lock = Some(RunLock::acquire(run_dir)?);
        // Another training may have created this folder since the check above.
        if !resume && cfg_path.exists() {
            return Err(TrainError::config(
                run_dir.display().to_string(),
                "already holds a run (config.toml); resume it with --resume or choose another --out",
            ));
        }
    }
    let _lock = lock;
    checkpoint::write_atomic(&cfg_path, config_toml.as_bytes())?;
    let mut metrics = JsonlWriter::open(&run_dir.join("metrics.jsonl"), metrics_keep)?;
    let mut timings = JsonlWriter::open(&run_dir.join("timings.jsonl"), timings_keep)?;

    let batcher = Batcher::new(
        session.data.train.clone(),
        BatcherConfig {
            batch_size: tp.batch_size,
            shuffle: true,
            drop_last: true,
            seed: tp.seed,
            prefetch: 4,
        },
        session.data.normalization.clone(),
    )?;
    let per_epoch = batcher.batches_per_epoch();
    // Paper schedule: τ_m = (horizon − m) + 1, τ = 1 past the horizon.
    let temperature = tp.tau.validate(tau_horizon)?;
    if resumed_from.is_none() && start_step == 0 {
        // Data-driven codebooks (k-means or data init) from the first training batches, in the
        // order training will see them; once, before step 1, seeded by the run's seed.
        let n = cfg.model.codebook.init_batches.min(per_epoch);
        let images = batcher
            .stream(Cursor::default(), false)
            .take(n)
            .map(|b| Ok(b?.images.to_device(&session.device)?))
            .collect::<Result<Vec<Tensor>>>()?;
        let mut rng = vq_core::init::stream(tp.seed, "codebook-init");
        session.model.initialise_codebooks(&images, &mut rng)?;
    }
    let mut stream = batcher.stream(cursor, false);
    let bar = if progress && start_step < tp.steps {
        let pb = indicatif::ProgressBar::new(tp.steps as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        pb.set_position(start_step as u64);
        Some(pb)
    } else {
        None
    };
    let labels = session.pool_labels();
    let mut last_train = None;
    let mut last_val = None;
    let mut t_interval = Instant::now();
    let mut steps_in_timing = 0usize;
    let step_delay = step_delay_ms();
    for step in start_step..tp.steps {
        let _span = tracing::debug_span!("step", step).entered();
        if step == start_step {
            // A signal during setup (image check, checkpoint load, k-means): stop before the
            // first step; the state on disk is the last checkpoint.
            if let Some(signal) = crate::signals::pending() {
                if let Some(pb) = &bar {
                    pb.abandon();
                }
                return Err(TrainError::Interrupted {
                    step,
                    signal,
                    run: run_dir.to_path_buf(),
                });
            }
        }
        let batch = stream
            .next()
            .ok_or_else(|| TrainError::config("data", "the batch stream ended"))??;
        cursor = Cursor {
            epoch: batch.cursor.epoch + (batch.cursor.batch + 1 == per_epoch) as u64,
            batch: (batch.cursor.batch + 1) % per_epoch,
        };
        let x = batch.images.to_device(&session.device)?;
        if let Some(ms) = step_delay {
            // Testing aid: slow steps, so that a test's signals land inside one.
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let tau = temperature.at(step);
        let out = session
            .model
            .forward(&x, &mut Step::train(tau, &mut gumbel_rng))?;
        let loss = if tp.fault_nan_at_step == Some(step) {
            out.loss.affine(f64::NAN, 0.0)?
        } else if tp.fault_nan_grad_at_step == Some(step) {
            // NaN only in the gradients: sqrt(Σz_e · 0) is 0 but its derivative is ∞ · 0.
            let s = out.z_e.sum_all()?;
            (&out.loss + (&s * s.zeros_like()?)?.sqrt()?)?
        } else {
            out.loss.clone()
        };
        let loss_v = loss.to_scalar::<f32>()?;
        let mut bad: Option<String> = (!loss_v.is_finite()).then(|| "the loss".to_string());
        let mut grads = None;
        if bad.is_none() {
            let g = loss.backward()?;
            for (name, var) in &vars {
                if let Some(gt) = g.get(var.as_tensor()) {
                    if !gt.sum_all()?.to_scalar::<f32>()?.is_finite() {
                        bad = Some(format!("the gradient of `{name}`"));
                        break;
                    }
                }
            }
            grads = Some(g);
        }
        let done = step + 1;
        let last = done == tp.steps;
        // Measured before the parameter update, so z_e, the decoder and the codebooks are the
        // ones this batch was encoded with.
        let gap = if tp.gap_every > 0 && (done % tp.gap_every == 0 || last) {
            let mut rng = vq_core::init::stream(tp.seed ^ done as u64, "gap");
            let dec = session.model.decoder();
            let q = session.model.quantizer();
            Some(gradient_gap(
                &out.z_e,
                |z| {
                    let mut s = Step {
                        update_codebooks: false,
                        selection: Selection::Gumbel {
                            tau,
                            hard: true,
                            rng: &mut rng,
                        },
                    };
                    Ok(q.forward(z, &mut s)?.z_q)
                },
                |z| {
                    Ok((candle_core::Module::forward(dec, z)? - &x)?
                        .sqr()?
                        .mean_all()?)
                },
            )?)
        } else {
            None
        };
        match (bad, tp.on_nonfinite) {
            (Some(tensor), NonFinitePolicy::Stop) => {
                if let Some(pb) = &bar {
                    pb.abandon();
                }
                return Err(TrainError::NonFinite { step, tensor });
            }
            (Some(tensor), NonFinitePolicy::Skip) => {
                tracing::warn!(step, "skipping a batch: non-finite {tensor}");
                skipped += 1;
            }
            (None, _) => {
                adam.step(grads.as_ref().expect("computed"))?;
                interval.steps += 1;
                interval.loss += loss_v as f64;
                interval.recon += out.recon_loss.to_scalar::<f32>()? as f64;
                interval.vq += out.quant.loss.to_scalar::<f32>()? as f64;
                add(&mut interval.codebook_loss, &out.quant.codebook_losses)?;
                add(&mut interval.perplexity, &out.quant.perplexity)?;
                add(&mut interval.counts, &out.quant.selection_counts)?;
            }
        }
        steps_in_timing += 1;
        if done % tp.log_every == 0 || last || gap.is_some() {
            if interval.steps > 0 || gap.is_some() {
                let n = interval.steps.max(1) as f64;
                let units: f64 = interval.counts.iter().sum();
                let rec = TrainRecord {
                    step: done,
                    loss: interval.loss / n,
                    recon_loss: interval.recon / n,
                    vq_loss: interval.vq / n,
                    codebook_loss: interval.codebook_loss.iter().map(|v| v / n).collect(),
                    perplexity: interval.perplexity.iter().map(|v| v / n).collect(),
                    selection: interval.counts.iter().map(|c| c / units.max(1.0)).collect(),
                    tau,
                    grad_gap_l2: gap.map(|g| g.l2),
                    grad_gap_mean_abs: gap.map(|g| g.mean_abs),
                    skipped_steps: skipped,
                };
                if let Some(pb) = &bar {
                    let (top, share) = rec
                        .selection
                        .iter()
                        .enumerate()
                        .fold((0, -1.0), |b, (i, &s)| if s > b.1 { (i, s) } else { b });
                    pb.set_message(format!(
                        "loss {:.4} recon {:.4} τ {:.3} top {} {:.0}%",
                        rec.loss,
                        rec.recon_loss,
                        tau,
                        labels[top],
                        share * 100.0
                    ));
                }
                metrics.write(&Record::Train(rec.clone()))?;
                last_train = Some(rec);
                interval = Interval::new(m);
            }
            let dt = t_interval.elapsed().as_secs_f64();
            timings.write(&TimingRecord {
                step: done,
                images_per_sec: (steps_in_timing * tp.batch_size) as f64 / dt.max(1e-9),
                ms_per_step: 1e3 * dt / steps_in_timing.max(1) as f64,
                elapsed_s: started.elapsed().as_secs_f64(),
            })?;
            t_interval = Instant::now();
            steps_in_timing = 0;
        }
        if (tp.val_every > 0 && done % tp.val_every == 0) || last {
            let mut rng = vq_core::init::stream(tp.seed ^ done as u64, "validation");
            let rec = session.validate(done, tp.val_batches, &mut rng)?;
            metrics.write(&Record::Val(rec.clone()))?;
            last_val = Some(rec);
        }
        // SIGINT/SIGTERM (when the binary installed the handlers): checkpoint this step, stop.
        let interrupt = crate::signals::pending().filter(|_| !last);
        if (tp.checkpoint_every > 0 && done % tp.checkpoint_every == 0)
            || last
            || interrupt.is_some()
        {
            let (opt_tensors, adam_steps) = adam.state()?;
            let state = CheckpointState {
                format_version: FORMAT_VERSION,
                step: done,
                cursor,
                gumbel_rng: RngState::of(&gumbel_rng),
                adam_steps,
                metrics_bytes: metrics.sync()?,
                timings_bytes: timings.sync()?,
                skipped_steps: skipped,
                interval: serde_json::to_value(&interval).expect("serialises"),
                tau_horizon: Some(tau_horizon),
            };
            checkpoint::save(
                run_dir,
                &state,
                &session.weights(),
                &opt_tensors,
                &config_toml,
            )?;
        }
        if let Some(signal) = interrupt {
            if let Some(pb) = &bar {
                pb.abandon();
            }
            return Err(TrainError::Interrupted {
                step: done,
                signal,
                run: run_dir.to_path_buf(),
            });
        }
        if let Some(pb) = &bar {
            pb.set_position(done as u64);
        }
    }
    drop(stream);
    if let Some(pb) = &bar {
        pb.finish();
    }
    // The run is complete; a signal during its last step skips only the plots (`vq-train plot`
    // draws them later).
    if tp.report && start_step < tp.steps && crate::signals::pending().is_none() {
        crate::report::write_run_report(&session, run_dir)?;
    }
    Ok(RunSummary {
        run_dir: run_dir.to_path_buf(),
        steps: tp.steps,
        last_train,
        last_val,
        wall_s: started.elapsed().as_secs_f64(),
    })
}
