//! `cargo xtask reproduce`: the paper's Tables 1–3 and Figures 2–4 as runs of the vq-train
//! library, resumable, one folder per run, and a Markdown report with the figures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use vq_data::DatasetName;
use vq_models::{EncoderKind, QuantizerSpec};
use vq_train::checkpoint;
use vq_train::metrics::{read_metrics, Record, TrainRecord, ValRecord};
use vq_train::TrainConfig;

use crate::paths::shared_data;
use crate::report::{self, best_structure, Route};

/// How much compute a reproduction gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Budget {
    /// A handful of steps on a tiny model (tests of the driver).
    Toy,
    /// Table 1 + Table 2 on Fashion-MNIST in about an hour on a 2-core CPU.
    Quick,
    /// Long enough for the best fixed codebook's validation curve to flatten on Fashion-MNIST
    /// ([`MEDIUM_STEPS`]); Table 1 over [`MEDIUM_STRUCTURES`].
    Medium,
    /// The paper's 20,000 steps (for a GPU).
    Paper,
}

/// Which part of the study.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Table1,
    Table2,
    Table3,
    All,
    /// The quantizer zoo: every quantizer of vq-core at one rate ([`zoo_rows`]), reported as
    /// `<dataset>-zoo`.
    Zoo,
}

/// The zoo's rate: codes per latent position, `2^14`, the best fixed structure's at the quick
/// budget ([16384, 4] on Fashion-MNIST, docs/results/fashion-mnist-800-steps.md).
pub const ZOO_CODES: usize = 16384;

/// A zoo row: its group (the report's label), its folder tag, and what it sets on the base
/// config.
pub(crate) type ZooRow = (&'static str, &'static str, fn(&mut TrainConfig));

/// The rows of the zoo, each at [`ZOO_CODES`] codes per position except the paper's pool
/// (W = 65536, whose members have 2^9 to 2^16 codes): VQ [16384, 4] with each gradient and
/// codebook option, FSQ, LFQ, residual VQ, the paper's pool, and a pool that mixes kinds.
pub(crate) fn zoo_rows() -> Vec<ZooRow> {
    fn fixed(c: &mut TrainConfig) {
        c.model.quantizer = QuantizerSpec::Fixed { n: ZOO_CODES, d: 4 };
    }
    vec![
        (ZOO_VQ, "vq", fixed),
        ("VQ [16384,4], rotation trick", "vq-rotation", |c| {
            fixed(c);
            c.model.pool.codebook.gradient = vq_core::VqGradient::Rotation;
        }),
        ("VQ [16384,4], cosine", "vq-cosine", |c| {
            fixed(c);
            c.model.pool.codebook.distance = vq_core::Distance::Cosine;
        }),
        ("SimVQ [16384,4]", "simvq", |c| {
            fixed(c);
            let cb = &mut c.model.pool.codebook;
            (cb.ema, cb.restart_below, cb.sim_vq) = (false, 0.0, true);
        }),
        ("FSQ 8,8,8,8,4", "fsq", |c| {
            c.model.quantizer = QuantizerSpec::Fsq(vq_core::FsqLevels(vec![8, 8, 8, 8, 4]));
        }),
        ("LFQ 14 bits", "lfq", |c| {
            c.model.quantizer = QuantizerSpec::Lfq(vq_core::LfqBits(14));
        }),
        ("RVQ 2 × [128,4]", "rvq", |c| {
            c.model.quantizer = QuantizerSpec::Rvq(vq_core::RvqShape {
                stages: 2,
                n: 128,
                d: 4,
            });
        }),
        (ZOO_PAPER_POOL, "paper-pool", |c| {
            c.model.quantizer = QuantizerSpec::Adaptive;
        }),
        (ZOO_MIXED, "mixed-pool", |c| {
            c.model.quantizer = QuantizerSpec::Adaptive;
            c.model.pool.structures = vec![
                [ZOO_CODES, 4].into(),
                vq_core::PoolMember::fsq(&[8, 8, 8, 8, 4]),
                vq_core::PoolMember::lfq(14),
                vq_core::PoolMember::rvq(2, 128, 4),
            ];
        }),
    ]
}

/// The zoo's group of the plain VQ codebook (straight-through, Table 1's [16384,4]).
pub(crate) const ZOO_VQ: &str = "VQ [16384,4]";

/// The zoo's group of the paper's pool.
pub(crate) const ZOO_PAPER_POOL: &str = "the paper's pool (W = 65536)";

/// The zoo's mixed pool's group.
pub(crate) const ZOO_MIXED: &str = "mixed pool: VQ [16384,4], FSQ, LFQ, RVQ";

/// Steps per run of the `medium` budget: where the best fixed codebook's validation curve has
/// flattened on Fashion-MNIST (from here on, 1,000 more steps improve its validation MSE by less
/// than 5%; measured in docs/results/medium-budget.md).
pub const MEDIUM_STEPS: usize = 5000;

/// Table 1 structures of the `medium` budget: the best structure at 800 steps on Fashion-MNIST
/// with healthy codebooks, [16384,4] (docs/results/fashion-mnist-800-steps.md), its two
/// neighbours, and [4096,16]: at 5,000 steps [8192,8] overtakes [16384,4] on Fashion-MNIST (seed
/// 0: 0.00317 against 0.00355), so the range must reach past it for its optimum to be seen as
/// interior or not (every structure's collapse check is the 800-step study).
pub const MEDIUM_STRUCTURES: [[usize; 2]; 4] = [[4096, 16], [8192, 8], [16384, 4], [32768, 2]];

/// A Table 2 setting of the adaptive quantizer (each is a group of runs, one per seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Setting {
    /// The paper's selector: attention, log-attention logits, τ_m = (steps − m) + 1.
    Paper,
    /// The paper's selector trained at τ = max(0.5, 2·0.997^m) (the CLI default; not in the
    /// paper): the soft path is sharp from the first steps instead of nearly uniform (τ ≈ steps),
    /// and the selector commits within ~200 steps rather than ~1,500.
    ExpTau,
    /// The authors' published model (`ModelConfig::into_authors_variant`), τ as the paper.
    Authors,
    /// The min-error router (not in the paper).
    MinError,
    /// A diagnostic: the pool with every vector routed to the best structure of this study's
    /// Table 1 (`router = { only = i }`); against that fixed codebook it measures what the pool
    /// costs apart from routing.
    OnlyBest,
    /// The paper's selector with the `selected` pool loss (`model.vq_loss`; not in the paper):
    /// each vector's VQ loss in its chosen codebook only.
    SelectedLoss,
    /// The min-error router with the `selected` pool loss (not in the paper).
    MinErrorSelected,
    /// The only-best diagnostic with the `selected` pool loss: against the fixed codebook it
    /// measures what the unused codebooks' commitment terms cost.
    OnlyBestSelected,
}

impl Setting {
    /// The settings a study runs unless `--settings` names others (the CLI's default).
    pub const DEFAULT: [Setting; 5] = [
        Setting::Paper,
        Setting::ExpTau,
        Setting::Authors,
        Setting::MinError,
        Setting::OnlyBest,
    ];

    /// The group name of its runs.
    pub(crate) fn group(self) -> &'static str {
        match self {
            Setting::Paper => "adaptive",
            Setting::ExpTau => "adaptive, exponential τ",
            Setting::Authors => "authors' variant",
            Setting::MinError => "adaptive, min-error router",
            Setting::OnlyBest => "pool routed to the best fixed",
            Setting::SelectedLoss => "adaptive, selected VQ loss",
            Setting::MinErrorSelected => "adaptive, min-error router, selected VQ loss",
            Setting::OnlyBestSelected => "pool routed to the best fixed, selected VQ loss",
        }
    }

    /// Folder prefix of its runs.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Setting::Paper => "adaptive",
            Setting::ExpTau => "adaptive-exp-tau",
            Setting::Authors => "authors-variant",
            Setting::MinError => "adaptive-min-error",
            Setting::OnlyBest => "pool-only-best",
            Setting::SelectedLoss => "adaptive-selected-loss",
            Setting::MinErrorSelected => "adaptive-min-error-selected-loss",
            Setting::OnlyBestSelected => "pool-only-best-selected-loss",
        }
    }

    /// How the report names it.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Setting::Paper => "adaptive (the paper)",
            Setting::ExpTau => "adaptive, τ = max(0.5, 2·0.997^m) (not in the paper)",
            Setting::Authors => "authors' variant (their published script)",
            Setting::MinError => "adaptive, min-error router (not in the paper)",
            Setting::OnlyBest => {
                "pool, every vector routed to the best fixed structure (diagnostic)"
            }
            Setting::SelectedLoss => {
                "adaptive, VQ loss of the chosen codebook only (not in the paper)"
            }
            Setting::MinErrorSelected => {
                "adaptive, min-error router, VQ loss of the chosen codebook only (not in the paper)"
            }
            Setting::OnlyBestSelected => {
                "pool routed to the best fixed structure, VQ loss of that codebook only (diagnostic)"
            }
        }
    }

    /// Its routings in the report: a deterministic router has one.
    pub(crate) fn routes(self) -> &'static [Route] {
        match self {
            Setting::MinError
            | Setting::OnlyBest
            | Setting::MinErrorSelected
            | Setting::OnlyBestSelected => &[Route::Argmax],
            _ => &[Route::Sampled, Route::Argmax],
        }
    }

    /// Whether it routes to Table 1's best structure (so it waits for Table 1).
    pub(crate) fn needs_best_structure(self) -> bool {
        matches!(self, Setting::OnlyBest | Setting::OnlyBestSelected)
    }

    /// Whether the paper's adaptive number belongs beside it.
    pub(crate) fn is_papers_method(self) -> bool {
        matches!(self, Setting::Paper | Setting::Authors)
    }

    /// Sets this setting on a base config; `best` is the index of the best fixed structure in
    /// the pool (needed by [`Setting::OnlyBest`] only).
    fn apply(self, c: &mut TrainConfig, best: Option<usize>) -> Result<()> {
        match self {
            Setting::Paper => {}
            Setting::ExpTau => {
                c.train.tau = vq_core::TauSchedule::Exponential {
                    start: 2.0,
                    rate: 0.997,
                    floor: 0.5,
                }
            }
            Setting::Authors => {
                c.model = c.model.clone().into_authors_variant();
                c.train.tau = vq_core::TauSchedule::Paper;
            }
            Setting::MinError => c.model.pool.router = vq_core::Router::MinError,
            Setting::OnlyBest => {
                let i = best.context("the only-best setting needs Table 1's best structure")?;
                c.model.pool.router = vq_core::Router::Only(i);
            }
            Setting::SelectedLoss | Setting::MinErrorSelected | Setting::OnlyBestSelected => {
                let base = match self {
                    Setting::MinErrorSelected => Setting::MinError,
                    Setting::OnlyBestSelected => Setting::OnlyBest,
                    _ => Setting::Paper,
                };
                base.apply(c, best)?;
                c.model.pool.vq_loss = vq_core::PoolLoss::Selected;
            }
        }
        Ok(())
    }
}

/// Options of one reproduction.
#[derive(Clone, Debug)]
pub struct Options {
    pub part: Part,
    /// `fashion-mnist`, `mnist-10k`, `embedded` or any vq-data name (with `data_path`).
    pub dataset: String,
    pub data_path: Option<PathBuf>,
    pub budget: Budget,
    pub steps: Option<usize>,
    pub seeds: Option<usize>,
    /// Restrict Table 1 to these `[N, D]` (default: every structure of W = 65536).
    pub structures: Option<Vec<[usize; 2]>>,
    /// Where the runs go (one folder per run).
    pub runs_dir: PathBuf,
    /// Where `<dataset>.md` and `<dataset>/*.png` go.
    pub report_dir: PathBuf,
    /// Training device (`cpu`, `cuda`, …).
    pub device: String,
    /// Codebook initialisation (k-means by default); the authors' `normal` (which also turns
    /// dead-code restarts off) is reported under `<dataset>-authors-init`, `data` under
    /// `<dataset>-data-init`.
    pub init: vq_core::CodebookInit,
    /// Table 2 settings to run and report (default: [`Setting::DEFAULT`]).
    pub settings: Vec<Setting>,
    /// Where the runs train.
    pub executor: Executor,
    /// Train or submit nothing: report the finished runs and name the others.
    pub status: bool,
    /// Options of the Slurm executor.
    pub slurm: crate::slurm::SlurmOptions,
}

/// One training run of the study.
#[derive(Clone, Debug)]
pub(crate) struct RunSpec {
    /// Group (a row of a table): e.g. `[512,128]`, `adaptive`, `W = 4096`.
    pub(crate) group: String,
    /// Folder name.
    pub(crate) name: String,
    pub(crate) config: TrainConfig,
}

impl Options {
    /// A study of `part` on `dataset` at `budget` with every other option at the CLI's default
    /// (runs under `<root>/runs`, reports under `<root>/results`, CPU, k-means init, the default
    /// settings, local executor).
    pub fn new(part: Part, dataset: &str, budget: Budget, root: PathBuf) -> Self {
        Options {
            part,
            dataset: dataset.into(),
            data_path: None,
            budget,
            steps: None,
            seeds: None,
            structures: None,
            runs_dir: root.join("runs"),
            report_dir: root.join("results"),
            device: "cpu".into(),
            init: vq_core::CodebookInit::Kmeans,
            settings: Setting::DEFAULT.to_vec(),
            executor: Executor::Local,
            status: false,
            slurm: Default::default(),
        }
    }

    /// Name of the study (its runs folder and report): the dataset, suffixed by the budget
    /// unless it is `quick` or `toy` (by `<steps>-steps` instead when `--steps` overrides the
    /// budget's, so that runs of different lengths never share a folder), and by the
    /// initialisation unless it is k-means.
    fn label(&self) -> String {
        let mut l = self.dataset.clone();
        if self.part == Part::Zoo {
            l.push_str("-zoo");
        }
        match (self.steps, self.budget) {
            (Some(s), _) => l.push_str(&format!("-{s}-steps")),
            (None, Budget::Medium) => l.push_str("-medium"),
            (None, Budget::Paper) => l.push_str("-paper"),
            (None, Budget::Toy | Budget::Quick) => {}
        }
        match self.init {
            vq_core::CodebookInit::Kmeans => {}
            vq_core::CodebookInit::Normal => l.push_str("-authors-init"),
            vq_core::CodebookInit::Data => l.push_str("-data-init"),
        }
        l
    }

    /// The flags beyond part, dataset and budget that this study was run with, for the report.
    pub(crate) fn command_flags(&self, init: &str) -> String {
        let mut f = init.to_string();
        if let Some(s) = self.steps {
            f.push_str(&format!(" --steps {s}"));
        }
        if let Some(s) = self.seeds {
            f.push_str(&format!(" --seeds {s}"));
        }
        if let Some(st) = &self.structures {
            let v: Vec<String> = st.iter().map(|[n, d]| format!("{n}x{d}")).collect();
            f.push_str(&format!(" --structures {}", v.join(",")));
        }
        if self.settings != Setting::DEFAULT {
            let v: Vec<String> = self
                .settings
                .iter()
                .map(|s| {
                    clap::ValueEnum::to_possible_value(s)
                        .expect("no skipped variants")
                        .get_name()
                        .to_string()
                })
                .collect();
            f.push_str(&format!(" --settings {}", v.join(",")));
        }
        f
    }

    pub(crate) fn steps(&self) -> usize {
        self.steps.unwrap_or(match self.budget {
            Budget::Toy => 4,
            Budget::Quick => 600,
            Budget::Medium => MEDIUM_STEPS,
            Budget::Paper => 20_000,
        })
    }

    pub(crate) fn seeds(&self) -> usize {
        self.seeds.unwrap_or(match self.budget {
            Budget::Toy => 1,
            Budget::Quick | Budget::Medium | Budget::Paper => 3,
        })
    }

    /// The base config: the paper's model and optimiser on the dataset, at this budget.
    fn base(&self, seed: u64) -> Result<TrainConfig> {
        let mut c = TrainConfig::default();
        match (self.dataset.as_str(), &self.data_path) {
            (name, Some(p)) => {
                c.data.name = if name == "mnist-10k" {
                    DatasetName::Mnist
                } else {
                    name.parse()?
                };
                c.data.path = Some(p.clone());
            }
            ("fashion-mnist", None) => {
                c.data.name = DatasetName::FashionMnist;
                c.data.path = shared_data("fashion-mnist");
            }
            ("mnist-10k", None) => {
                c.data.name = DatasetName::Mnist;
                c.data.path = Some(shared_data("mnist-10k").with_context(|| {
                    format!(
                        "{}/data/mnist-10k not found; pass --data-path or set VQ_SHARED_DIR",
                        crate::paths::shared_dir().display()
                    )
                })?);
            }
            (other, None) => c.data.name = other.parse()?,
        }
        c.model.pool.codebook.init = self.init;
        if self.init == vq_core::CodebookInit::Normal {
            // The authors' setting as a whole: no dead-code restarts either.
            c.model.pool.codebook.restart_below = 0.0;
        }
        let steps = self.steps();
        let t = &mut c.train;
        t.steps = steps;
        t.seed = seed;
        t.device = self.device.clone();
        t.progress = false;
        t.report = true;
        match self.budget {
            Budget::Toy => {
                c.data.max_train = Some(256);
                c.data.max_val = Some(64);
                c.model.hidden = 16;
                c.model.residual_hidden = 8;
                t.batch_size = 16;
                t.log_every = 2;
                t.gap_every = 2;
                t.val_every = steps;
                t.checkpoint_every = steps;
            }
            Budget::Quick => {
                t.log_every = 25;
                t.gap_every = 25;
                t.val_every = steps;
                t.checkpoint_every = 100;
            }
            Budget::Medium => {
                t.log_every = 50;
                t.gap_every = 50;
                t.val_every = steps;
                t.checkpoint_every = 250;
            }
            Budget::Paper => {
                t.log_every = 50;
                t.gap_every = 50;
                t.val_every = 1000;
                t.checkpoint_every = 1000;
            }
        }
        Ok(c)
    }

    fn table1_specs(&self) -> Result<Vec<RunSpec>> {
        let structures = match (&self.structures, self.budget) {
            (Some(s), _) => s.clone(),
            (None, Budget::Medium) => MEDIUM_STRUCTURES.to_vec(),
            (None, _) => vq_core::structures(65536)?,
        };
        let mut v = Vec::new();
        for [n, d] in structures {
            for s in 0..self.seeds() as u64 {
                let mut c = self.base(s)?;
                c.model.quantizer = QuantizerSpec::Fixed { n, d };
                v.push(RunSpec {
                    group: format!("[{n},{d}]"),
                    name: format!("fixed-{n}x{d}-s{s}"),
                    config: c,
                });
            }
        }
        Ok(v)
    }

    /// Table 2's adaptive settings ([`Options::settings`]), one run per seed each. `best` is
    /// Table 1's best `[N, D]`; without it [`Setting::OnlyBest`] is left out.
    fn adaptive_specs(&self, best: Option<[usize; 2]>) -> Result<Vec<RunSpec>> {
        let mut v = Vec::new();
        let index = match best {
            Some(nd) => vq_core::structures(self.base(0)?.model.pool.capacity.unwrap_or(65536))?
                .iter()
                .position(|&x| x == nd),
            None => None,
        };
        for &setting in &self.settings {
            if setting.needs_best_structure() && index.is_none() {
                eprintln!(
                    "  {}: no Table 1 structure of the pool to route to; left out",
                    setting.tag()
                );
                continue;
            }
            for s in 0..self.seeds() as u64 {
                let mut c = self.base(s)?;
                setting.apply(&mut c, index)?;
                v.push(RunSpec {
                    group: setting.group().into(),
                    name: format!("{}-s{s}", setting.tag()),
                    config: c,
                });
            }
        }
        Ok(v)
    }

    fn zoo_specs(&self) -> Result<Vec<RunSpec>> {
        let mut v = Vec::new();
        for (group, tag, set) in zoo_rows() {
            for s in 0..self.seeds() as u64 {
                let mut c = self.base(s)?;
                set(&mut c);
                v.push(RunSpec {
                    group: group.into(),
                    name: format!("{tag}-s{s}"),
                    config: c,
                });
            }
        }
        Ok(v)
    }

    fn table3_specs(&self) -> Result<Vec<RunSpec>> {
        let mut v = Vec::new();
        let mut add = |group: String, tag: String, f: &dyn Fn(&mut TrainConfig)| -> Result<()> {
            for s in 0..self.seeds() as u64 {
                let mut c = self.base(s)?;
                f(&mut c);
                v.push(RunSpec {
                    group: group.clone(),
                    name: format!("{tag}-s{s}"),
                    config: c,
                });
            }
            Ok(())
        };
        for w in [65536usize, 32768, 16384, 8192, 4096] {
            add(format!("W = {w}"), format!("w-{w}"), &|c| {
                c.model.pool.capacity = Some(w)
            })?;
        }
        add("without EMA".into(), "no-ema".into(), &|c| {
            c.model.pool.codebook.ema = false;
            // Restarts act on EMA statistics; a learned codebook has none.
            c.model.pool.codebook.restart_below = 0.0;
        })?;
        for a in [0.5, 0.75, 1.0, 5.0, 10.0] {
            add(format!("α = {a}"), format!("alpha-{a}"), &|c| {
                c.model.pool.codebook.commitment = a
            })?;
        }
        for b in [0.01, 0.2, 5.0] {
            add(format!("β = {b}"), format!("beta-{b}"), &|c| {
                c.model.pool.codebook.beta = b
            })?;
        }
        add("CNN encoder".into(), "encoder-cnn".into(), &|c| {
            c.model.encoder = EncoderKind::Cnn
        })?;
        add(
            "CNN+Inception encoder".into(),
            "encoder-inception".into(),
            &|c| c.model.encoder = EncoderKind::CnnInception,
        )?;
        Ok(v)
    }
}

/// Final validation and the training curve of one finished run.
pub(crate) struct Finished {
    pub(crate) group: String,
    pub(crate) val: ValRecord,
    pub(crate) train: Vec<TrainRecord>,
    /// Wall-clock seconds of the run's last logged interval end (timings.jsonl).
    pub(crate) train_s: f64,
}

/// The files of a run that its report reads. A finished run's copies are archived beside the
/// report (`<report_dir>/<label>/runs/<table>/<run>/`, a few hundred KiB, no checkpoints), so
/// that a fresh checkout rebuilds the report and resumes the study without retraining what the
/// archive holds.
const RECORD_FILES: [&str; 3] = ["config.toml", "metrics.jsonl", "timings.jsonl"];

/// Refuses a folder whose config.toml was made for another config (an older budget, another
/// best structure for only-best): it is never extended or reported as this one.
fn check_config(spec: &RunSpec, dir: &Path) -> Result<bool> {
    let cfg_path = dir.join("config.toml");
    if !cfg_path.is_file() {
        return Ok(false);
    }
    let old = TrainConfig::load(&cfg_path, &[])?;
    // The device and the progress bar change nothing a report reads (a run may resume on another
    // device), nor does where the same dataset lies (another checkout, another machine).
    let diff: Vec<String> = vq_train::config::config_diff(&old, &spec.config)
        .into_iter()
        .filter(|k| !["train.device", "train.progress", "data.path"].contains(&k.as_str()))
        .collect();
    if !diff.is_empty() {
        bail!(
            "{} was made with a different config ({}); move it away or choose another --runs-dir \
             / --report-dir",
            dir.display(),
            diff.join(", ")
        );
    }
    Ok(true)
}

/// The final validation record of the run in `dir`, if its metrics reach `steps`.
fn final_val(dir: &Path, steps: usize) -> Result<Option<ValRecord>> {
    let path = dir.join("metrics.jsonl");
    if !path.is_file() {
        return Ok(None);
    }
    Ok(final_record(&read_metrics(&path)?, steps))
}

/// The validation record at `steps` among a run's records.
fn final_record(records: &[Record], steps: usize) -> Option<ValRecord> {
    records.iter().rev().find_map(|r| match r {
        Record::Val(v) if v.step == steps => Some(v.clone()),
        _ => None,
    })
}

/// Copies a finished run's [`RECORD_FILES`] into `archive` (each through a temporary file and a
/// rename, so that an interrupted copy never leaves a truncated record).
fn archive_run(dir: &Path, archive: &Path) -> Result<()> {
    std::fs::create_dir_all(archive).with_context(|| archive.display().to_string())?;
    for name in RECORD_FILES {
        let src = dir.join(name);
        if !src.is_file() {
            continue;
        }
        let bytes = std::fs::read(&src).with_context(|| src.display().to_string())?;
        checkpoint::write_atomic(&archive.join(name), &bytes)?;
    }
    Ok(())
}

/// Where a run of the study lives: `dir` holds the run with its checkpoints, `archive` the
/// records of a finished run (see [`RECORD_FILES`]).
pub(crate) struct RunPlace {
    pub(crate) dir: PathBuf,
    pub(crate) archive: PathBuf,
}

/// The finished run of `spec`, if there is one (archiving its records when they are only in
/// the run folder). A run counts as finished when its last checkpoint is at the final step, or
/// when the archive holds its config and a final validation record. A run folder or archive made
/// with another config is an error.
pub(crate) fn finished(spec: &RunSpec, at: &RunPlace) -> Result<Option<Finished>> {
    let steps = spec.config.train.steps;
    let here = check_config(spec, &at.dir)? && checkpoint::latest_step(&at.dir)? == Some(steps);
    let archived = check_config(spec, &at.archive)? && final_val(&at.archive, steps)?.is_some();
    let src = if here {
        archive_run(&at.dir, &at.archive)?;
        &at.dir
    } else if archived {
        &at.archive
    } else {
        return Ok(None);
    };
    let records = read_metrics(&src.join("metrics.jsonl"))?;
    let val = final_record(&records, steps)
        .with_context(|| format!("{}: no final validation record", src.display()))?;
    let (train, _) = vq_train::metrics::split(records);
    let train_s = std::fs::read_to_string(src.join("timings.jsonl"))
        .ok()
        .and_then(|t| {
            t.lines()
                .last()
                .and_then(|l| serde_json::from_str::<vq_train::metrics::TimingRecord>(l).ok())
        })
        .map_or(0.0, |t| t.elapsed_s);
    Ok(Some(Finished {
        group: spec.group.clone(),
        val,
        train,
        train_s,
    }))
}

/// Runs (or resumes, or skips when finished) one run in this process.
fn run_one(spec: &RunSpec, at: &RunPlace) -> Result<Finished> {
    if let Some(f) = finished(spec, at)? {
        eprintln!("  finished already: {}", at.dir.display());
        return Ok(f);
    }
    let steps = spec.config.train.steps;
    let resume = at.dir.join("config.toml").is_file();
    let t0 = Instant::now();
    eprintln!(
        "  {} {} ({steps} steps)",
        if resume { "resuming" } else { "training" },
        at.dir.display()
    );
    vq_train::train(
        spec.config.clone(),
        &at.dir,
        &vq_train::TrainOptions::default().resume(resume),
    )
    .with_context(|| format!("run {}", at.dir.display()))?;
    eprintln!("  done in {:.0} s", t0.elapsed().as_secs_f64());
    finished(spec, at)?.with_context(|| format!("{}: no final validation record", at.dir.display()))
}

fn run_all(study: &Study, table: Table, specs: &[RunSpec]) -> Result<Vec<Finished>> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let at = study.place(table, s);
        // A signal that arrived during the previous run's last step (which completes it) stops
        // the study before the next run.
        if let Some(signal) = vq_train::signals::pending() {
            return Err(vq_train::TrainError::Interrupted {
                step: 0,
                signal,
                run: at.dir,
            }
            .into());
        }
        eprintln!(
            "[{}/{}] {} ({:.0} s so far)",
            i + 1,
            specs.len(),
            s.name,
            t0.elapsed().as_secs_f64()
        );
        out.push(run_one(s, &at)?);
    }
    Ok(out)
}

/// Where the runs of a study train.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    /// One run after another in this process.
    #[default]
    Local,
    /// A Slurm job array, one task per unfinished run (see `slurm.rs`).
    Slurm,
}

/// A table of the study.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    One,
    Two,
    Three,
    Zoo,
}

impl Table {
    /// Its folder under the study's runs and archive folders.
    pub(crate) fn dir(self) -> &'static str {
        match self {
            Table::One => "table1",
            Table::Two => "table2",
            Table::Three => "table3",
            Table::Zoo => "zoo",
        }
    }
}

/// One study: its options, its label, where its runs and their archive live.
pub(crate) struct Study<'a> {
    pub(crate) opts: &'a Options,
    pub(crate) label: String,
    /// `<runs_dir>/<label>`: the run folders (with checkpoints).
    pub(crate) root: PathBuf,
    /// `<report_dir>/<label>/runs`: the finished runs' records.
    archive: PathBuf,
}

impl<'a> Study<'a> {
    pub(crate) fn new(opts: &'a Options) -> Self {
        let label = opts.label();
        Study {
            opts,
            root: opts.runs_dir.join(&label),
            archive: opts.report_dir.join(&label).join("runs"),
            label,
        }
    }

    /// The tables of its part, in order (Table 2 compares with Table 1, so it brings it along).
    pub(crate) fn tables(&self) -> Vec<Table> {
        match self.opts.part {
            Part::Table1 => vec![Table::One],
            Part::Table2 => vec![Table::One, Table::Two],
            Part::Table3 => vec![Table::Three],
            Part::All => vec![Table::One, Table::Two, Table::Three],
            Part::Zoo => vec![Table::Zoo],
        }
    }

    /// The runs of a table; Table 2's only-best setting routes to the best of `fixed` (the
    /// finished Table 1 runs) and is left out while there is none.
    pub(crate) fn specs(&self, table: Table, fixed: &[Finished]) -> Result<Vec<RunSpec>> {
        match table {
            Table::One => self.opts.table1_specs(),
            Table::Two => self.opts.adaptive_specs(best_structure(fixed)),
            Table::Three => self.opts.table3_specs(),
            Table::Zoo => self.opts.zoo_specs(),
        }
    }

    pub(crate) fn place(&self, table: Table, spec: &RunSpec) -> RunPlace {
        RunPlace {
            dir: self.root.join(table.dir()).join(&spec.name),
            archive: self.archive.join(table.dir()).join(&spec.name),
        }
    }
}

/// The finished runs of each table, in the order of [`Study::tables`].
#[derive(Default)]
pub(crate) struct Results {
    pub(crate) fixed: Vec<Finished>,
    pub(crate) adaptive: Vec<Finished>,
    pub(crate) ablation: Vec<Finished>,
    pub(crate) zoo: Vec<Finished>,
}

impl Results {
    pub(crate) fn table_mut(&mut self, table: Table) -> &mut Vec<Finished> {
        match table {
            Table::One => &mut self.fixed,
            Table::Two => &mut self.adaptive,
            Table::Three => &mut self.ablation,
            Table::Zoo => &mut self.zoo,
        }
    }
}

/// A run of the study that has not finished.
pub(crate) struct Unfinished {
    /// `<table>/<run>`.
    pub(crate) name: String,
    pub(crate) spec: RunSpec,
    pub(crate) at: RunPlace,
}

/// Where a study stands, nothing trained: its finished runs (archived on the way), the others,
/// and notes on runs that cannot be named yet.
pub(crate) struct Survey {
    pub(crate) done: Results,
    pub(crate) unfinished: Vec<Unfinished>,
    pub(crate) notes: Vec<String>,
}

pub(crate) fn survey(study: &Study) -> Result<Survey> {
    let mut done = Results::default();
    let mut unfinished: Vec<Unfinished> = Vec::new();
    let mut notes = Vec::new();
    for table in study.tables() {
        // Only-best routes to the best of the whole Table 1, never of a part of it.
        let table1_pending = unfinished.iter().any(|u| u.name.starts_with("table1/"));
        if table == Table::Two
            && table1_pending
            && study.opts.settings.iter().any(|s| s.needs_best_structure())
        {
            notes.push(
                "the only-best runs: they route to Table 1's best structure, so they join the \
                 study once Table 1 has finished"
                    .to_string(),
            );
        }
        let fixed = if table1_pending {
            &[][..]
        } else {
            &done.fixed[..]
        };
        for spec in study.specs(table, fixed)? {
            let at = study.place(table, &spec);
            match finished(&spec, &at)? {
                Some(f) => done.table_mut(table).push(f),
                None => unfinished.push(Unfinished {
                    name: format!("{}/{}", table.dir(), spec.name),
                    spec,
                    at,
                }),
            }
        }
    }
    Ok(Survey {
        done,
        unfinished,
        notes,
    })
}

/// Runs the study (or, with the Slurm executor, submits its unfinished runs) and writes the
/// report of what has finished; returns the report's path. With `status`, nothing is trained or
/// submitted: the report holds the finished runs and names the others.
pub fn reproduce(opts: &Options) -> Result<PathBuf> {
    let t0 = Instant::now();
    let study = Study::new(opts);
    if opts.executor == Executor::Slurm {
        return crate::slurm::reproduce(&study, t0);
    }
    if opts.status {
        let s = survey(&study)?;
        let missing: Vec<String> = s
            .unfinished
            .iter()
            .map(|u| match checkpoint::latest_step(&u.at.dir) {
                Ok(Some(k)) => format!("`{}`: not finished (checkpoint at step {k})", u.name),
                _ => format!("`{}`: not trained yet", u.name),
            })
            .chain(s.notes)
            .collect();
        for m in &missing {
            eprintln!("  {m}");
        }
        return report::write(&study, &s.done, &missing, t0);
    }
    let mut done = Results::default();
    for table in study.tables() {
        let specs = study.specs(table, &done.fixed)?;
        *done.table_mut(table) = run_all(&study, table, &specs)?;
    }
    report::write(&study, &done, &[], t0)
}

/// Parses `512x128,65536x1`.
pub fn parse_structures(s: &str) -> Result<Vec<[usize; 2]>> {
    s.split(',')
        .map(|p| {
            let (n, d) = p
                .trim()
                .split_once('x')
                .context("structures: expected NxD,NxD")?;
            let (n, d) = (n.parse::<usize>()?, d.parse::<usize>()?);
            if n == 0 || d == 0 {
                bail!("structures: N and D must be ≥ 1");
            }
            Ok([n, d])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(budget: Budget) -> Options {
        Options::new(Part::All, "embedded", budget, PathBuf::from("."))
    }

    /// Study labels: budget and initialisation suffixes; the authors' init turns restarts off.
    #[test]
    fn labels_and_the_authors_setting() {
        let mut o = opts(Budget::Quick);
        assert_eq!(o.label(), "embedded");
        o.budget = Budget::Medium;
        assert_eq!(o.label(), "embedded-medium");
        assert_eq!(o.steps(), MEDIUM_STEPS);
        assert_eq!(o.table1_specs().unwrap().len(), MEDIUM_STRUCTURES.len() * 3);
        o.init = vq_core::CodebookInit::Normal;
        assert_eq!(o.label(), "embedded-medium-authors-init");
        let c = o.base(0).unwrap();
        assert_eq!(c.model.pool.codebook.restart_below, 0.0);
        assert_eq!(c.model.pool.codebook.init, vq_core::CodebookInit::Normal);
        assert_eq!(
            o.adaptive_specs(None).unwrap().len(),
            12,
            "only-best needs Table 1"
        );
        let specs = o.adaptive_specs(Some([16384, 4])).unwrap();
        assert_eq!(specs.len(), 15);
        assert!(specs[12..]
            .iter()
            .all(|s| s.config.model.pool.router == vq_core::Router::Only(5)));
        assert!(specs[6..9].iter().all(|s| s.config.model
            == o.base(0).unwrap().model.into_authors_variant()
            && s.config.train.tau == vq_core::TauSchedule::Paper));
        assert!(matches!(
            specs[3].config.train.tau,
            vq_core::TauSchedule::Exponential { .. }
        ));
        assert!(specs[9..12]
            .iter()
            .all(|s| s.config.model.pool.router == vq_core::Router::MinError));
        o.steps = Some(800);
        assert_eq!(o.label(), "embedded-800-steps-authors-init");
    }

    /// Table 3 holds the paper's ablations, one valid config per setting and seed, each
    /// differing from the adaptive baseline in exactly the ablated field.
    #[test]
    fn table3_settings_are_the_papers_ablations() {
        let o = opts(Budget::Quick);
        let specs = o.table3_specs().unwrap();
        let base = o.base(0).unwrap();
        let groups: Vec<&str> = specs
            .iter()
            .filter(|s| s.name.ends_with("-s0"))
            .map(|s| s.group.as_str())
            .collect();
        assert_eq!(
            groups,
            [
                "W = 65536",
                "W = 32768",
                "W = 16384",
                "W = 8192",
                "W = 4096",
                "without EMA",
                "α = 0.5",
                "α = 0.75",
                "α = 1",
                "α = 5",
                "α = 10",
                "β = 0.01",
                "β = 0.2",
                "β = 5",
                "CNN encoder",
                "CNN+Inception encoder"
            ]
        );
        assert_eq!(specs.len(), 16 * 3, "3 seeds per setting");
        for s in &specs {
            s.config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            assert_eq!(s.config.train.steps, 600);
            assert!(matches!(s.config.model.quantizer, QuantizerSpec::Adaptive));
            let (m, b) = (&s.config.model, &base.model);
            let changed = [
                m.pool.capacity != b.pool.capacity,
                m.pool.codebook.ema != b.pool.codebook.ema,
                m.pool.codebook.commitment != b.pool.codebook.commitment,
                m.pool.codebook.beta != b.pool.codebook.beta,
                m.encoder != b.encoder,
            ];
            let expected = usize::from(s.group != "W = 65536");
            assert_eq!(
                changed.iter().filter(|c| **c).count(),
                expected,
                "{}: {changed:?}",
                s.name
            );
        }
        let w4096 = specs.iter().find(|s| s.name == "w-4096-s2").unwrap();
        assert_eq!(
            (w4096.config.model.pool.capacity, w4096.config.train.seed),
            (Some(4096), 2)
        );
    }

    /// Table 1 is every structure of W = 65536 (N > D), three seeds each at the quick budget.
    #[test]
    fn table1_is_every_structure_of_w() {
        let specs = opts(Budget::Quick).table1_specs().unwrap();
        assert_eq!(specs.len(), 8 * 3);
        assert_eq!(specs[0].name, "fixed-512x128-s0");
        assert_eq!(specs[23].name, "fixed-65536x1-s2");
        assert_eq!(
            parse_structures("512x128, 65536x1").unwrap(),
            vec![[512, 128], [65536, 1]]
        );
        assert!(parse_structures("512").is_err() && parse_structures("0x4").is_err());
    }
}
