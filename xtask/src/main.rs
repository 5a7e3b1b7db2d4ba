//! `cargo xtask`: reproduction runs of the paper's tables and figures, and benchmarks.

use std::path::PathBuf;

use xtask::{bench, fuzz, reproduce};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Training-step time and peak memory of fixed and adaptive models (each case in its own
    /// process); `--compare-torch` runs the repository's bench/torch_reference.py (or
    /// $VQ_TORCH_REFERENCE) in alternation.
    Bench {
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Paired rounds per case (median reported).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        #[arg(long)]
        compare_torch: bool,
        /// Only this model (fixed512x128, fixed16384x4, adaptive, adaptive-no-restart, quantizer,
        /// fsq, lfq, rotation, cosine, simvq, rvq).
        #[arg(long)]
        only: Option<String>,
        /// Only this input shape (mnist: 64×1×28×28, cifar: 64×3×32×32).
        #[arg(long)]
        shape: Option<String>,
        /// Device of our cases: cpu, cuda[:N] (build with --features cuda), metal.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Also write the results as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Another xtask binary (e.g. a build of the previous commit) whose cases alternate
        /// with ours in every round: a paired A/B of the two builds.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// The paper's tables and figures: runs (resumable) and docs/results/<dataset>.md.
    Reproduce(ReproduceArgs),
    /// Runs the cargo-fuzz targets (IDX, CIFAR-10, config parsers) for a bounded time each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (idx, cifar, config).
        #[arg(long)]
        only: Option<String>,
    },
    /// Forward + backward time of each convolution of the base model, beside PyTorch's
    /// (`--compare-torch`), weighted by occurrences per training step.
    BenchLayers {
        /// mnist (64×1×28×28) or cifar (64×3×32×32).
        #[arg(long, default_value = "mnist")]
        shape: String,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Paired rounds (median reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        compare_torch: bool,
    },
    /// Per-image oracle among trained runs: each validation image reconstructed by the run of
    /// a set that reconstructs it best, against the set's best run alone (docs/results/).
    Oracle {
        /// A named set of run folders (each with a checkpoint), NAME=DIR,DIR,... (repeatable),
        /// e.g. structures=runs/a,runs/b seeds=runs/b,runs/c.
        #[arg(long = "set", value_name = "NAME=DIR,DIR", required = true)]
        sets: Vec<String>,
        /// The report to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// One benchmark case in this process (used by `bench`).
    #[command(hide = true)]
    BenchCase {
        #[arg(long)]
        model: String,
        #[arg(long)]
        shape: String,
        #[arg(long)]
        steps: usize,
        #[arg(long)]
        warmup: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

/// The options of `cargo xtask reproduce`.
#[derive(clap::Args)]
struct ReproduceArgs {
    #[arg(value_enum)]
    part: reproduce::Part,
    /// fashion-mnist, mnist-10k (from $VQ_SHARED_DIR/data, default ../shared/data), embedded,
    /// or a vq-data name with
    /// --data-path.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    #[arg(long)]
    data_path: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "quick")]
    budget: reproduce::Budget,
    /// Override the budget's steps per run.
    #[arg(long)]
    steps: Option<usize>,
    /// Override the budget's seeds per setting.
    #[arg(long)]
    seeds: Option<usize>,
    /// Table 1 structures, e.g. 512x128,65536x1 (default: all of W = 65536).
    #[arg(long)]
    structures: Option<String>,
    #[arg(long, default_value = "runs/reproduce")]
    runs_dir: PathBuf,
    #[arg(long, default_value = "docs/results")]
    report_dir: PathBuf,
    /// Training device (default: cpu, or cuda when --slurm-arg asks for GPUs).
    #[arg(long)]
    device: Option<String>,
    /// Where the runs train: local (one after another in this process) or slurm (a job
    /// array of the unfinished runs, submitted with sbatch; run the same command again to
    /// submit what has not finished, or with --status to report).
    #[arg(long, value_enum, default_value = "local")]
    executor: reproduce::Executor,
    /// An sbatch argument for the Slurm executor, e.g. --slurm-arg=--partition=gpu
    /// --slurm-arg=--gres=gpu:1 --slurm-arg=--time=4:00:00 (repeatable).
    #[arg(long = "slurm-arg", allow_hyphen_values = true, value_name = "ARG")]
    slurm_args: Vec<String>,
    /// Train or submit nothing: write the report of the finished runs and name the others
    /// (with their Slurm state under --executor slurm).
    #[arg(long)]
    status: bool,
    /// With --executor slurm: the vq-train binary the tasks run (default: the one beside
    /// this binary, built first under `cargo xtask`).
    #[arg(long)]
    vq_train: Option<PathBuf>,
    /// Codebook initialisation: kmeans (default: k-means++ on projected latents, with
    /// dead-code restarts), authors (N(0, 1) as in the authors' code, no restarts; the
    /// report is named <dataset>-authors-init) or data (first batch; <dataset>-data-init).
    #[arg(long, default_value = "kmeans")]
    init: String,
    /// Table 2 settings, comma-separated: paper (the paper's selector and τ), exp-tau (the
    /// selector at τ = max(0.5, 2·0.997^m)), authors (the authors' published model),
    /// min-error (the min-error router), only-best (diagnostic: the pool with every vector
    /// routed to Table 1's best structure); and, not in the default, selected-loss,
    /// min-error-selected and only-best-selected (the paper's selector, the min-error router and
    /// the only-best diagnostic with `model.vq_loss = "selected"`: each vector's VQ loss in its
    /// chosen codebook only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "paper,exp-tau,authors,min-error,only-best"
    )]
    settings: Vec<reproduce::Setting>,
}

fn main() -> Result<()> {
    vq_train::tune_cpu_runtime();
    match Cli::parse().command {
        Cmd::Bench {
            steps,
            warmup,
            rounds,
            compare_torch,
            only,
            shape,
            device,
            out,
            baseline,
        } => bench::bench(&bench::BenchOptions {
            steps,
            warmup,
            rounds,
            compare_torch,
            only,
            shape,
            device,
            out,
            baseline,
        }),
        Cmd::Reproduce(args) => reproduce_cmd(args),
        Cmd::BenchLayers {
            shape,
            steps,
            warmup,
            rounds,
            compare_torch,
        } => xtask::layers::bench_layers(&xtask::layers::LayerOptions {
            shape,
            steps,
            warmup,
            rounds,
            compare_torch,
        }),
        Cmd::Fuzz { seconds, only } => {
            let results = fuzz::fuzz(seconds, only.as_deref())?;
            for r in &results {
                println!(
                    "{}: {} inputs in {} s without a crash",
                    r.target, r.runs, r.seconds
                );
            }
            Ok(())
        }
        Cmd::Oracle { sets, out } => {
            let command = format!(
                "cargo xtask oracle {} --out {}",
                sets.iter()
                    .map(|s| format!("--set {s}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                out.display()
            );
            let sets = sets
                .iter()
                .map(|s| parse_set(s))
                .collect::<Result<Vec<_>>>()?;
            xtask::oracle::run(&xtask::oracle::OracleOptions { sets, out, command })
        }
        Cmd::BenchCase {
            model,
            shape,
            steps,
            warmup,
            device,
        } => {
            let r = bench::run_case(&model, &shape, steps, warmup, &device)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}

/// `NAME=DIR,DIR,...` → the set's name and run folders.
fn parse_set(s: &str) -> Result<(String, Vec<PathBuf>)> {
    let (name, dirs) = s
        .split_once('=')
        .with_context(|| format!("--set {s}: expected NAME=DIR,DIR,..."))?;
    let dirs: Vec<PathBuf> = dirs
        .split(',')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    if name.is_empty() || dirs.is_empty() {
        anyhow::bail!("--set {s}: expected NAME=DIR,DIR,... with a name and at least one run");
    }
    if let Some(d) = dirs.iter().find(|d| !d.join("config.toml").is_file()) {
        anyhow::bail!(
            "--set {s}: {} is not a run folder (no config.toml)",
            d.display()
        );
    }
    Ok((name.to_string(), dirs))
}

/// `cargo xtask reproduce`: checks the options, then runs (or reports) the study.
fn reproduce_cmd(args: ReproduceArgs) -> Result<()> {
    let a = args;
    if a.executor == reproduce::Executor::Local
        && (a.vq_train.is_some() || !a.slurm_args.is_empty())
    {
        anyhow::bail!("--vq-train and --slurm-arg need --executor slurm");
    }
    xtask::slurm::check_args(&a.slurm_args)?;
    let device = a.device.unwrap_or_else(|| {
        if a.executor == reproduce::Executor::Slurm && xtask::slurm::requests_gpus(&a.slurm_args) {
            "cuda".into()
        } else {
            "cpu".into()
        }
    });
    let init = match a.init.as_str() {
        "kmeans" => vq_core::CodebookInit::Kmeans,
        "authors" | "normal" => vq_core::CodebookInit::Normal,
        "data" => vq_core::CodebookInit::Data,
        other => anyhow::bail!("--init {other}: expected kmeans, authors or data"),
    };
    let opts = reproduce::Options {
        part: a.part,
        dataset: a.dataset,
        data_path: a.data_path,
        budget: a.budget,
        steps: a.steps,
        seeds: a.seeds,
        structures: a
            .structures
            .as_deref()
            .map(reproduce::parse_structures)
            .transpose()?,
        runs_dir: a.runs_dir,
        report_dir: a.report_dir,
        device,
        init,
        settings: a.settings,
        executor: a.executor,
        status: a.status,
        slurm: xtask::slurm::SlurmOptions {
            args: a.slurm_args,
            vq_train: a.vq_train,
        },
    };
    // Ctrl-C / SIGTERM: the run in progress checkpoints its step; re-issuing the same
    // command resumes it (finished runs are reused).
    vq_train::signals::install();
    match reproduce::reproduce(&opts) {
        Ok(path) => {
            println!("{}", path.display());
            Ok(())
        }
        Err(e) => match e.downcast_ref::<vq_train::TrainError>() {
            Some(vq_train::TrainError::Interrupted { step, signal, run }) => {
                eprintln!(
                    "interrupted: {} checkpointed at step {step}; run the same command again to continue",
                    run.display()
                );
                std::process::exit(vq_train::signals::exit_status(*signal));
            }
            _ => Err(e),
        },
    }
}
