//! `cargo xtask`: reproduction runs of the paper's tables and figures, and benchmarks.

mod bench;

use std::path::PathBuf;

use anyhow::Result;
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
    /// process); `--compare-torch` runs ../shared/bench/torch_reference.py in alternation.
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
        /// Only this model (fixed512x128, fixed16384x4, adaptive, quantizer).
        #[arg(long)]
        only: Option<String>,
        /// Also write the results as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
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
    },
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
            out,
        } => bench::bench(
            steps,
            warmup,
            rounds.max(1),
            compare_torch,
            only.as_deref(),
            out.as_deref(),
        ),
        Cmd::BenchCase {
            model,
            shape,
            steps,
            warmup,
        } => {
            let r = bench::run_case(&model, &shape, steps, warmup)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}
