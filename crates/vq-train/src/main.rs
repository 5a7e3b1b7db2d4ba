//! `vq-train`: train, evaluate and inspect VQ-VAEs with fixed or adaptive codebooks.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vq_train::{default_run_dir, TrainConfig};

#[derive(Parser)]
#[command(
    name = "vq-train",
    version,
    about = "Train and inspect VQ-VAEs with adaptive dynamic quantization"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `vq_train=debug`. The default shows
    /// warnings, and the progress of the image check on folders of 10,000 images or more.
    #[arg(long, global = true, default_value = "warn,vq_data=info")]
    log: String,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (a new run, or `--resume DIR` to continue one).
    Train {
        /// TOML config (see configs/); without one, the defaults: adaptive quantizer on the
        /// embedded Fashion-MNIST subset, 500 steps.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config value, e.g. `--set train.steps=500 --set model.quantizer=fixed:512,128`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Run folder (default: runs/<dataset>-<quantizer>-s<seed>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the run in this folder from its newest checkpoint.
        #[arg(long, conflicts_with_all = ["out", "config"])]
        resume: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Validation metrics of a run's newest checkpoint (JSON on stdout and in eval.json).
    Eval {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        device: Option<String>,
    },
    /// PNG grid of validation originals, reconstructions and chosen codebooks.
    Reconstruct {
        #[arg(long)]
        run: PathBuf,
        /// Images in the grid.
        #[arg(long, default_value_t = 16)]
        count: usize,
        /// Output file (default: <run>/reconstructions.png).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        device: Option<String>,
    },
    /// Dump the codes (codebook id + row per latent position) of a split as safetensors.
    Encode {
        #[arg(long)]
        run: PathBuf,
        /// `train` or `val`.
        #[arg(long, default_value = "val")]
        split: String,
        #[arg(long)]
        device: Option<String>,
    },
    /// Redraw a run's plots from its metrics.
    Plot {
        #[arg(long)]
        run: PathBuf,
    },
}

/// The configuration of `vq-train train` without `--config`: the paper's model and adaptive
/// quantizer on the embedded Fashion-MNIST subset, 500 steps (a few minutes on a 2-core CPU).
fn default_config() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.train.steps = 500;
    c.train.log_every = 25;
    c.train.gap_every = 25;
    c.train.val_every = 250;
    c.train.val_batches = 0;
    c.train.checkpoint_every = 250;
    c.train.tau = vq_core::TauSchedule::Exponential {
        start: 2.0,
        rate: 0.997,
        floor: 0.5,
    };
    c
}

fn main() -> Result<()> {
    vq_train::tune_cpu_runtime();
    let cli = Cli::parse();

    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Train {
            config,
            set,
            out,
            resume,
            quiet,
        } => {
            let (config, dir, resuming) = match resume {
                Some(dir) => {
                    let c = TrainConfig::load(&dir.join("config.toml"), &set)?;
                    (c, dir, true)
                }
                None => {
                    let c = match &config {
                        Some(p) => TrainConfig::load(p, &set)?,
                        None => {
                            let text = toml::to_string(&default_config()).expect("serialises");
                            TrainConfig::from_toml(&text, "default config", &set)?
                        }
                    };
                    let dir = out.unwrap_or_else(|| default_run_dir(&c));
                    (c, dir, false)
                }
            };
            let progress = !quiet && config.train.progress;
            eprintln!("run folder: {}", dir.display());
            // Ctrl-C or SIGTERM: finish the step, checkpoint it, exit 130 / 143.
            vq_train::signals::install();
            let options = vq_train::TrainOptions::default()
                .resume(resuming)
                .progress(progress);
            #[cfg(feature = "fault-injection")]
            let options =
                options.faults(vq_train::faults::Faults::from_env().map_err(anyhow::Error::msg)?);
            let summary = match vq_train::train(config, &dir, &options) {
                Err(e @ vq_train::TrainError::Interrupted { signal, .. }) => {
                    eprintln!("{e}");
                    std::process::exit(vq_train::signals::exit_status(signal));
                }
                r => r?,
            };
            if let Some(v) = &summary.last_val {
                eprintln!(
                    "done: {} steps in {:.0} s; validation MSE {:.5}, sum of batch MSEs {:.3} over {} batches",
                    summary.steps, summary.wall_s, v.mse, v.recon_sum, v.batches
                );
            }
            println!("{}", dir.display());
        }
        Command::Eval { run, device } => {
            let r = vq_train::commands::eval(&run, device.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        Command::Reconstruct {
            run,
            count,
            out,
            device,
        } => {
            let (session, _) = vq_train::Session::open_run(&run, device.as_deref())?;
            let path = out.unwrap_or_else(|| run.join("reconstructions.png"));
            vq_train::report::reconstruction_grid(&session, &path, count)?;
            println!("{}", path.display());
        }
        Command::Encode { run, split, device } => {
            let r = vq_train::commands::encode(&run, &split, device.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        Command::Plot { run } => {
            vq_train::report::plot_run(&run)?;
            println!("{}", run.join("plots").display());
        }
    }
    Ok(())
}
