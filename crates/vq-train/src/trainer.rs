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
use crate::config::{config_diff, run_control_keys, NonFinitePolicy, TrainConfig};
use crate::error::{Result, TrainError};
use crate::faults::Faults;
use crate::lock::RunLock;
use crate::metrics::{JsonlWriter, Record, TimingRecord, TrainRecord, ValRecord};
use crate::optim::{Adam, AdamConfig};
use crate::session::Session;

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

/// A run being trained: its session, optimizer and everything a checkpoint restores, with the
/// writers of its logs. Built by [`Run::open`]; [`train`] drives its parts step by step.
struct Run<'a> {
    dir: &'a Path,
    session: Session,
    vars: Vec<(String, candle_core::Var)>,
    adam: Adam,
    gumbel_rng: ChaCha8Rng,
    /// The first step to train (0 for a new run).
    start_step: usize,
    /// Whether the state was restored from a checkpoint (not merely whether `--resume` was
    /// given: a run resumed before its first checkpoint starts afresh).
    restored: bool,
    /// The data position after the last step trained.
    cursor: Cursor,
    skipped: usize,
    interval: Interval,
    metrics: JsonlWriter,
    timings: JsonlWriter,
    /// The τ schedule's horizon: the step count the run started with.
    tau_horizon: usize,
    config_toml: String,
    faults: Faults,
    _lock: RunLock,
}

/// Where a run stands: its next step and what a checkpoint restores besides the weights.
struct Position {
    step: usize,
    cursor: Cursor,
    skipped: usize,
    interval: Interval,
    tau_horizon: usize,
    metrics_bytes: u64,
    timings_bytes: u64,
}

/// Wall clock of a run's log intervals (timings.jsonl only: not reproducible, not checkpointed).
struct Clock {
    started: Instant,
    interval: Instant,
    /// Steps since the interval began.
    steps: usize,
}

/// What one training step left for the log interval.
struct StepOutcome {
    tau: f64,
    gap: Option<vq_core::GradientGap>,
}

impl<'a> Run<'a> {
    /// Opens `run_dir`: a new run (the folder must not hold a run yet), or the run there resumed
    /// from its newest checkpoint (from step 0 when it has none yet). On resume, `config` must equal the run's `config.toml` except for
    /// [`TrainConfig::frozen`]. Data, model and checkpoint are loaded before anything is written, so
    /// a bad input leaves no partial run folder behind.
    fn open(config: TrainConfig, run_dir: &'a Path, options: &TrainOptions) -> Result<Self> {
        let resume = options.resume;
        config.validate()?;
        // One writer per run folder: an existing run is locked before anything in it is read
        // (any other folder after the inputs are validated, so that a bad input leaves nothing
        // behind).
        let cfg_path = run_dir.join("config.toml");
        let mut lock = if cfg_path.is_file() {
            Some(RunLock::acquire(run_dir)?)
        } else {
            None
        };
        let config_toml = config.to_toml();
        // A resumed run with a new `train.steps` keeps its horizon: the checkpoint's, or for
        // checkpoints without a stored horizon config.toml's `train.steps`.
        let mut tau_horizon = config.train.steps;
        if resume {
            tau_horizon = resumable_steps(&cfg_path, &config)?;
        } else if cfg_path.exists() {
            return Err(already_a_run(run_dir));
        }
        let session = Session::build(config)?;
        warn_skipped_images(&session);
        let tp = &session.config.train;
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
        let mut at = Position {
            step: 0,
            cursor: Cursor::default(),
            skipped: 0,
            interval: Interval::new(session.pool.len()),
            tau_horizon,
            metrics_bytes: 0,
            timings_bytes: 0,
        };
        let resumed_from = if resume {
            checkpoint::latest_if_any(run_dir)?
        } else {
            None
        };
        if let Some(dir) = &resumed_from {
            (at, gumbel_rng) = restore(dir, &session, &vars, &mut adam, tau_horizon)?;
        }
        std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        if lock.is_none() {
            lock = Some(RunLock::acquire(run_dir)?);
            // Another training may have created this folder since the check above.
            if !resume && cfg_path.exists() {
                return Err(already_a_run(run_dir));
            }
        }
        checkpoint::write_atomic(&cfg_path, config_toml.as_bytes())?;
        Ok(Run {
            dir: run_dir,
            metrics: JsonlWriter::open(&run_dir.join("metrics.jsonl"), at.metrics_bytes)?,
            timings: JsonlWriter::open(&run_dir.join("timings.jsonl"), at.timings_bytes)?,
            session,
            vars,
            adam,
            gumbel_rng,
            start_step: at.step,
            restored: resumed_from.is_some(),
            cursor: at.cursor,
            skipped: at.skipped,
            interval: at.interval,
            tau_horizon: at.tau_horizon,
            config_toml,
            faults: options.faults.clone(),
            _lock: lock.expect("locked above"),
        })
    }

    /// The shuffled training batches of the run's seed.
    fn batcher(&self) -> Result<Batcher> {
        let tp = &self.session.config.train;
        Ok(Batcher::new(
            self.session.data.train.clone(),
            BatcherConfig {
                batch_size: tp.batch_size,
                shuffle: true,
                drop_last: true,
                seed: tp.seed,
                prefetch: 4,
            },
            self.session.data.normalization.clone(),
        )?)
    }

    /// Data-driven codebooks (k-means or data init) from the first training batches, in the
    /// order training will see them; once, before step 1 of a new run, seeded by its seed.
    fn initialise_codebooks(&self, batcher: &Batcher) -> Result<()> {
        let n = self
            .session
            .config
            .model
            .pool
            .codebook
            .init_batches
            .min(batcher.batches_per_epoch());
        let images = batcher
            .stream(Cursor::default(), false)
            .take(n)
            .map(|b| Ok(b?.images.to_device(&self.session.device)?))
            .collect::<Result<Vec<Tensor>>>()?;
        let mut rng = vq_core::init::stream(self.session.config.train.seed, "codebook-init");
        self.session.model.initialise_codebooks(&images, &mut rng)?;
        Ok(())
    }

    /// Step `step + 1`: forward, backward, the gradient gap when it is due (before the update,
    /// so z_e, the decoder and the codebooks are the ones this batch was encoded with), then the
    /// NaN/Inf policy, the Adam update and the interval sums.
    fn step(&mut self, x: &Tensor, step: usize, tau: f64) -> Result<StepOutcome> {
        let tp = &self.session.config.train;
        let out = self
            .session
            .model
            .forward(x, &mut Step::train(tau, &mut self.gumbel_rng))?;
        if let Some(ms) = self.faults.step_delay_ms {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let loss = if self.faults.nan_loss_at_step == Some(step) {
            out.loss.affine(f64::NAN, 0.0)?
        } else if self.faults.nan_grad_at_step == Some(step) {
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
            bad = self.first_nonfinite_gradient(&g)?;
            grads = Some(g);
        }
        let done = step + 1;
        let gap = if tp.gap_every > 0 && (done.is_multiple_of(tp.gap_every) || done == tp.steps) {
            Some(self.gradient_gap(&out.z_e, x, tau, done)?)
        } else {
            None
        };
        match (bad, tp.on_nonfinite) {
            (Some(tensor), NonFinitePolicy::Stop) => {
                return Err(TrainError::NonFinite { step, tensor })
            }
            (Some(tensor), NonFinitePolicy::Skip) => {
                tracing::warn!(step, "skipping a batch: non-finite {tensor}");
                self.skipped += 1;
            }
            (None, _) => {
                self.adam.step(grads.as_ref().expect("computed"))?;
                let acc = &mut self.interval;
                acc.steps += 1;
                acc.loss += loss_v as f64;
                acc.recon += out.recon_loss.to_scalar::<f32>()? as f64;
                acc.vq += out.quant.loss.to_scalar::<f32>()? as f64;
                add(&mut acc.codebook_loss, &out.quant.codebook_losses)?;
                add(&mut acc.perplexity, &out.quant.perplexity)?;
                add(&mut acc.counts, &out.quant.selection_counts)?;
            }
        }
        Ok(StepOutcome { tau, gap })
    }

    /// The first parameter whose gradient is not finite, if any.
    fn first_nonfinite_gradient(
        &self,
        g: &candle_core::backprop::GradStore,
    ) -> Result<Option<String>> {
        for (name, var) in &self.vars {
            if let Some(gt) = g.get(var.as_tensor()) {
                if !gt.sum_all()?.to_scalar::<f32>()?.is_finite() {
                    return Ok(Some(format!("the gradient of `{name}`")));
                }
            }
        }
        Ok(None)
    }

    /// The gradient gap at this batch, with Gumbel noise of its own seeded stream.
    fn gradient_gap(
        &self,
        z_e: &Tensor,
        x: &Tensor,
        tau: f64,
        done: usize,
    ) -> Result<vq_core::GradientGap> {
        let mut rng = vq_core::init::stream(self.session.config.train.seed ^ done as u64, "gap");
        let dec = self.session.model.decoder();
        let q = self.session.model.quantizer();
        Ok(gradient_gap(
            z_e,
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
                Ok((candle_core::Module::forward(dec, z)? - x)?
                    .sqr()?
                    .mean_all()?)
            },
        )?)
    }

    /// Writes the interval's train record (when it holds a step or a gradient gap) and starts
    /// the next interval.
    fn log_interval(&mut self, done: usize, outcome: &StepOutcome) -> Result<Option<TrainRecord>> {
        let acc = &self.interval;
        if acc.steps == 0 && outcome.gap.is_none() {
            return Ok(None);
        }
        let n = acc.steps.max(1) as f64;
        let units: f64 = acc.counts.iter().sum();
        let rec = TrainRecord {
            step: done,
            loss: acc.loss / n,
            recon_loss: acc.recon / n,
            vq_loss: acc.vq / n,
            codebook_loss: acc.codebook_loss.iter().map(|v| v / n).collect(),
            perplexity: acc.perplexity.iter().map(|v| v / n).collect(),
            selection: acc.counts.iter().map(|c| c / units.max(1.0)).collect(),
            tau: outcome.tau,
            grad_gap_l2: outcome.gap.map(|g| g.l2),
            grad_gap_mean_abs: outcome.gap.map(|g| g.mean_abs),
            skipped_steps: self.skipped,
        };
        self.metrics.write(&Record::Train(rec.clone()))?;
        self.interval = Interval::new(self.session.pool.len());
        Ok(Some(rec))
    }

    /// The next training batch on the run's device; the data position moves past it.
    fn next_batch(
        &mut self,
        stream: &mut impl Iterator<Item = vq_data::Result<vq_data::Batch>>,
        per_epoch: usize,
    ) -> Result<Tensor> {
        let batch = stream
            .next()
            .ok_or_else(|| TrainError::config("data", "the batch stream ended"))??;
        self.cursor = Cursor {
            epoch: batch.cursor.epoch + (batch.cursor.batch + 1 == per_epoch) as u64,
            batch: (batch.cursor.batch + 1) % per_epoch,
        };
        Ok(batch.images.to_device(&self.session.device)?)
    }

    /// The interval's wall-clock record (timings.jsonl), and a new interval on the clock.
    fn log_timing(&mut self, done: usize, clock: &mut Clock) -> Result<()> {
        let dt = clock.interval.elapsed().as_secs_f64();
        let batch = self.session.config.train.batch_size;
        self.timings.write(&TimingRecord {
            step: done,
            images_per_sec: (clock.steps * batch) as f64 / dt.max(1e-9),
            ms_per_step: 1e3 * dt / clock.steps.max(1) as f64,
            elapsed_s: clock.started.elapsed().as_secs_f64(),
        })?;
        (clock.interval, clock.steps) = (Instant::now(), 0);
        Ok(())
    }

    /// A validation pass after step `done` (its own seeded noise), logged.
    fn validate(&mut self, done: usize) -> Result<ValRecord> {
        let tp = &self.session.config.train;
        let mut rng = vq_core::init::stream(tp.seed ^ done as u64, "validation");
        let rec = self.session.validate(done, tp.val_batches, &mut rng)?;
        self.metrics.write(&Record::Val(rec.clone()))?;
        Ok(rec)
    }

    /// After step `done`: a checkpoint when one is due, or when SIGINT/SIGTERM is pending
    /// (when the binary installed the handlers), in which case the signal is returned and the
    /// run stops; a signal during the last step lets it complete.
    fn checkpoint_or_interrupt(&mut self, done: usize) -> Result<Option<i32>> {
        let tp = &self.session.config.train;
        let last = done == tp.steps;
        let interrupt = crate::signals::pending().filter(|_| !last);
        if (tp.checkpoint_every > 0 && done.is_multiple_of(tp.checkpoint_every))
            || last
            || interrupt.is_some()
        {
            self.checkpoint(done)?;
        }
        Ok(interrupt)
    }

    /// A crash-safe checkpoint of the state after step `done`.
    fn checkpoint(&mut self, done: usize) -> Result<()> {
        let (opt_tensors, adam_steps) = self.adam.state()?;
        let state = CheckpointState {
            format_version: FORMAT_VERSION,
            step: done,
            cursor: self.cursor,
            gumbel_rng: RngState::of(&self.gumbel_rng),
            adam_steps,
            metrics_bytes: self.metrics.sync()?,
            timings_bytes: self.timings.sync()?,
            skipped_steps: self.skipped,
            interval: serde_json::to_value(&self.interval).expect("serialises"),
            tau_horizon: Some(self.tau_horizon),
        };
        checkpoint::save(
            self.dir,
            &state,
            &self.session.weights(),
            &opt_tensors,
            &self.config_toml,
        )?;
        Ok(())
    }
}

/// Restores weights and optimizer from the checkpoint `dir`; returns the run's position there
/// and its Gumbel RNG. `tau_horizon` stands for checkpoints older than the stored horizon.
fn restore(
    dir: &Path,
    session: &Session,
    vars: &[(String, candle_core::Var)],
    adam: &mut Adam,
    tau_horizon: usize,
) -> Result<(Position, ChaCha8Rng)> {
    let ck = checkpoint::load(dir, &session.device)?;
    checkpoint::restore_vars(vars, ck.weights, &dir.join("model.safetensors"))?;
    adam.load_state(
        ck.optimizer,
        &ck.state.adam_steps,
        &dir.join("optimizer.safetensors"),
    )?;
    let rng = ck
        .state
        .gumbel_rng
        .restore()
        .map_err(|e| TrainError::checkpoint(dir, e))?;
    let at = Position {
        step: ck.state.step,
        cursor: ck.state.cursor,
        skipped: ck.state.skipped_steps,
        interval: serde_json::from_value(ck.state.interval).map_err(|e| {
            TrainError::checkpoint(dir.join("state.json"), format!("interval: {e}"))
        })?,
        tau_horizon: ck.state.tau_horizon.unwrap_or(tau_horizon),
        metrics_bytes: ck.state.metrics_bytes,
        timings_bytes: ck.state.timings_bytes,
    };
    tracing::info!(step = at.step, "resumed from {}", dir.display());
    Ok((at, rng))
}

/// `train.steps` of the run whose config is `cfg_path` (the τ horizon of checkpoints that store
/// none), after checking that `config` keeps the run's [`TrainConfig::frozen`] part.
fn resumable_steps(cfg_path: &Path, config: &TrainConfig) -> Result<usize> {
    let old = TrainConfig::load(cfg_path, &[])?;
    let diff = config_diff(&old.frozen(), &config.frozen());
    if !diff.is_empty() {
        return Err(TrainError::config(
            cfg_path.display().to_string(),
            format!(
                "cannot resume with a different {} (only the run controls {} may change)",
                diff.join(", "),
                run_control_keys().join(", ")
            ),
        ));
    }
    Ok(old.train.steps)
}

fn already_a_run(run_dir: &Path) -> TrainError {
    TrainError::config(
        run_dir.display().to_string(),
        "already holds a run (config.toml); resume it with --resume or choose another --out",
    )
}

fn warn_skipped_images(session: &Session) {
    let skipped = &session.data.skipped;
    if skipped.is_empty() {
        return;
    }
    for (path, why) in skipped {
        tracing::warn!("skipped image {}: {why}", path.display());
    }
    tracing::warn!(
        "data.on_bad_image = \"skip\": {} image file(s) left out of the dataset",
        skipped.len()
    );
}

/// The progress bar of a run from `start` of `steps` (none when `show` is false or nothing
/// is left to train).
fn progress_bar(show: bool, start: usize, steps: usize) -> Option<indicatif::ProgressBar> {
    if !show || start >= steps {
        return None;
    }
    let pb = indicatif::ProgressBar::new(steps as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_position(start as u64);
    Some(pb)
}

/// The bar's message for a train record: losses, τ and the most selected codebook.
fn bar_message(rec: &TrainRecord, labels: &[String]) -> String {
    let (top, share) = rec
        .selection
        .iter()
        .enumerate()
        .fold((0, -1.0), |b, (i, &s)| if s > b.1 { (i, s) } else { b });
    format!(
        "loss {:.4} recon {:.4} τ {:.3} top {} {:.0}%",
        rec.loss,
        rec.recon_loss,
        rec.tau,
        labels[top],
        share * 100.0
    )
}

/// How [`train`] starts a run: `TrainOptions::default().resume(true).progress(false)`.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    resume: bool,
    progress: bool,
    faults: Faults,
}

impl TrainOptions {
    /// Continue the run in the folder from its newest checkpoint (else the folder must not hold
    /// a run yet).
    pub fn resume(self, resume: bool) -> Self {
        Self { resume, ..self }
    }

    /// Show a progress bar on a terminal.
    pub fn progress(self, progress: bool) -> Self {
        Self { progress, ..self }
    }

    /// Faults to inject (tests of the failure handling; feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub fn faults(self, faults: Faults) -> Self {
        Self { faults, ..self }
    }
}

/// Starts a new run in `run_dir` (which must not hold a run yet), or resumes the run there.
///
/// On resume, `config` must keep the run's [`TrainConfig::frozen`] part (only the run controls
/// may change); the newest checkpoint's weights, optimizer, RNG and data position are restored
/// and the metrics logs are cut back to what they were when it was written, so the finished run
/// is identical to one that was never interrupted.
pub fn train(config: TrainConfig, run_dir: &Path, options: &TrainOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let mut run = Run::open(config, run_dir, options)?;
    let tp = run.session.config.train.clone();
    let batcher = run.batcher()?;
    if !run.restored {
        run.initialise_codebooks(&batcher)?;
    }
    let bar = progress_bar(options.progress, run.start_step, tp.steps);
    let trained = run.train_steps(&batcher, bar.as_ref(), started);
    if let Some(pb) = &bar {
        match &trained {
            Ok(_) => pb.finish(),
            Err(_) => pb.abandon(),
        }
    }
    let (last_train, last_val) = trained?;
    // The run is complete; a signal during its last step skips only the plots (`vq-train plot`
    // draws them later).
    if tp.report && run.start_step < tp.steps && crate::signals::pending().is_none() {
        crate::report::write_run_report(&run.session, run_dir)?;
    }
    Ok(RunSummary {
        run_dir: run_dir.to_path_buf(),
        steps: tp.steps,
        last_train,
        last_val,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

impl Run<'_> {
    /// Trains from `start_step` to `train.steps`: each step, then the log interval, validation
    /// and checkpoint when due. Returns the last train and validation records written.
    fn train_steps(
        &mut self,
        batcher: &Batcher,
        bar: Option<&indicatif::ProgressBar>,
        started: Instant,
    ) -> Result<(Option<TrainRecord>, Option<ValRecord>)> {
        let tp = self.session.config.train.clone();
        // Paper schedule: τ_m = (horizon − m) + 1, τ = 1 past the horizon.
        let temperature = tp.tau.validate(self.tau_horizon)?;
        let per_epoch = batcher.batches_per_epoch();
        let mut stream = batcher.stream(self.cursor, false);
        let labels = self.session.pool_labels();
        let (mut last_train, mut last_val) = (None, None);
        let mut clock = Clock {
            started,
            interval: Instant::now(),
            steps: 0,
        };
        let dir = self.dir;
        let interrupted = |step, signal| TrainError::Interrupted {
            step,
            signal,
            run: dir.to_path_buf(),
        };
        // A signal during setup (image check, checkpoint load, k-means): stop before the first
        // step; the state on disk is the last checkpoint.
        if let Some(signal) = crate::signals::pending().filter(|_| self.start_step < tp.steps) {
            return Err(interrupted(self.start_step, signal));
        }
        for step in self.start_step..tp.steps {
            let _span = tracing::debug_span!("step", step).entered();
            let x = self.next_batch(&mut stream, per_epoch)?;
            let outcome = self.step(&x, step, temperature.at(step))?;
            let done = step + 1;
            let last = done == tp.steps;
            clock.steps += 1;
            if done.is_multiple_of(tp.log_every) || last || outcome.gap.is_some() {
                if let Some(rec) = self.log_interval(done, &outcome)? {
                    if let Some(pb) = bar {
                        pb.set_message(bar_message(&rec, &labels));
                    }
                    last_train = Some(rec);
                }
                self.log_timing(done, &mut clock)?;
            }
            if (tp.val_every > 0 && done.is_multiple_of(tp.val_every)) || last {
                last_val = Some(self.validate(done)?);
            }
            if let Some(signal) = self.checkpoint_or_interrupt(done)? {
                return Err(interrupted(done, signal));
            }
            if let Some(pb) = bar {
                pb.set_position(done as u64);
            }
        }
        Ok((last_train, last_val))
    }
}
