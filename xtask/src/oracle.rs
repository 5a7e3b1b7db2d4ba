//! `cargo xtask oracle`: the per-image oracle among trained models — each validation image
//! reconstructed by whichever model reconstructs it best — beside the same oracle among seeds
//! of one model, which measures what picking the lower of noisy errors gives by itself.
//!
//! The paper's premise is that data points differ in which balance of `N` and `D` suits them.
//! If they do, an oracle that routes each image to its best structure gains more over the best
//! single structure than an oracle over seeds of that one structure gains over its best seed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use vq_core::Step;
use vq_data::Cursor;
use vq_train::Session;

/// What `cargo xtask oracle` compares.
pub struct OracleOptions {
    /// Named sets of run folders (each with a checkpoint), e.g. `structures` and `seeds`.
    pub sets: Vec<(String, Vec<PathBuf>)>,
    /// The report (Markdown).
    pub out: PathBuf,
    /// The command line, quoted in the report.
    pub command: String,
}

/// One model's reconstructions of the validation split, image by image.
struct ModelEval {
    run: PathBuf,
    /// The quantizer, e.g. `fixed:8192,8`, and the seed.
    label: String,
    /// Per image: mean squared error over its pixels, in the model's input space (as the
    /// validation MSE of the run's metrics).
    mse: Vec<f64>,
    /// Per image: bits of its codes (`vq_train::quality::bits_per_image`).
    bits: Vec<f64>,
    /// The run's own last validation MSE (metrics.jsonl), for the check that this pass
    /// reproduces it.
    recorded: Option<f64>,
}

/// Reconstructs the validation split with the newest checkpoint of `run` (argmax routing, no
/// codebook update).
fn eval_run(run: &Path) -> Result<ModelEval> {
    let (session, _) =
        Session::open_run(run, None).with_context(|| format!("opening {}", run.display()))?;
    let batcher = session.ordered_batcher(false)?;
    let (mut mse, mut bits) = (Vec::new(), Vec::new());
    for batch in batcher.stream(Cursor::default(), true) {
        let x = batch?.images.to_device(&session.device)?;
        let out = session.model.forward(&x, &mut Step::eval())?;
        let per_image: Tensor = (&out.reconstruction - &x)?
            .sqr()?
            .flatten_from(1)?
            .mean(1)?;
        mse.extend(per_image.to_vec1::<f32>()?.iter().map(|&v| f64::from(v)));
        for codes in out.quant.codes.codebook.flatten_from(1)?.to_vec2::<u32>()? {
            bits.push(vq_train::quality::bits_per_image(&codes, &session.pool));
        }
    }
    // A run without metrics.jsonl has nothing recorded; an unreadable one is an error.
    let metrics = run.join("metrics.jsonl");
    let recorded = if metrics.is_file() {
        let records = vq_train::metrics::read_metrics(&metrics)
            .with_context(|| format!("reading {}", metrics.display()))?;
        vq_train::metrics::split(records).1.last().map(|v| v.mse)
    } else {
        None
    };
    let label = format!(
        "{} s{}",
        session.config.model.quantizer, session.config.train.seed
    );
    Ok(ModelEval {
        run: run.to_path_buf(),
        label,
        mse,
        bits,
        recorded,
    })
}

/// The oracle over some models.
#[derive(Debug, PartialEq)]
pub struct Oracle {
    /// Mean over images of the lowest per-image error.
    pub mse: f64,
    /// Images each model reconstructs best (ties to the first).
    pub wins: Vec<usize>,
    /// Mean bits per image of the chosen model's codes, plus `log2 m` to name the model.
    pub bits: f64,
}

/// Per image the model with the lowest error: `mse[k][i]` and `bits[k][i]` are model `k`'s
/// error and bits on image `i`.
pub fn oracle(mse: &[&[f64]], bits: &[&[f64]]) -> Result<Oracle> {
    let m = mse.len();
    if m == 0 || bits.len() != m {
        bail!("the oracle needs one error and one bit count list per model");
    }
    let n = mse[0].len();
    if n == 0 || mse.iter().chain(bits).any(|v| v.len() != n) {
        bail!("every model must reconstruct the same non-empty list of images");
    }
    let mut wins = vec![0usize; m];
    let (mut sum, mut bit_sum) = (0f64, 0f64);
    for i in 0..n {
        let mut best = 0;
        for k in 1..m {
            if mse[k][i] < mse[best][i] {
                best = k;
            }
        }
        wins[best] += 1;
        sum += mse[best][i];
        bit_sum += bits[best][i];
    }
    Ok(Oracle {
        mse: sum / n as f64,
        wins,
        bits: bit_sum / n as f64 + (m as f64).log2(),
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Evaluates every run of the sets once, computes each set's oracle and writes the report.
pub fn run(opts: &OracleOptions) -> Result<()> {
    let mut evals: Vec<ModelEval> = Vec::new();
    for (_, runs) in &opts.sets {
        for run in runs {
            if !evals.iter().any(|e| &e.run == run) {
                eprintln!("evaluating {}", run.display());
                evals.push(eval_run(run)?);
            }
        }
    }
    let find = |run: &PathBuf| evals.iter().find(|e| &e.run == run).expect("evaluated");
    let mut md = String::new();
    writeln!(md, "# Per-image oracle among trained models\n")?;
    writeln!(
        md,
        "Generated by `{}`. Machine: {}. Commit `{}`.\n",
        opts.command,
        crate::report::machine(),
        crate::report::commit()
    )?;
    writeln!(
        md,
        "Each model reconstructs the whole validation split (argmax routing, no codebook update); \
         its per-image MSE is the mean over the image's pixels in the model's input space, so \
         the mean over images is the run's validation MSE. The oracle of a set takes, for every \
         image, the model of the set with the lowest error (it knows the image, as an encoder \
         choosing between codecs does), and names it with log2 m bits. A study's archive \
         (`docs/results/<label>/runs/`) keeps configs and metrics but no weights: such a run is \
         retrained with `vq-train train --config <archive>/<run>/config.toml --out DIR`, and \
         training is deterministic, so the retrained run's validation MSE is the archived one \
         (the column \"recorded\" is the retrained run's own).\n"
    )?;
    writeln!(md, "## Models\n")?;
    writeln!(
        md,
        "| run | quantizer | validation MSE (this pass) | recorded in metrics.jsonl | bits / image |"
    )?;
    writeln!(md, "| --- | --- | --- | --- | --- |")?;
    for e in &evals {
        writeln!(
            md,
            "| `{}` | {} | {:.5} | {} | {:.0} |",
            e.run.file_name().unwrap_or_default().to_string_lossy(),
            e.label,
            mean(&e.mse),
            e.recorded.map_or("–".into(), |v| format!("{v:.5}")),
            mean(&e.bits)
        )?;
    }
    writeln!(md, "\n## Oracles\n")?;
    writeln!(
        md,
        "| set | models | best single model | its MSE | oracle MSE | oracle / best single | images won by each model | oracle bits / image |"
    )?;
    writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- |")?;
    for (name, runs) in &opts.sets {
        let models: Vec<&ModelEval> = runs.iter().map(find).collect();
        let mse: Vec<&[f64]> = models.iter().map(|e| e.mse.as_slice()).collect();
        let bits: Vec<&[f64]> = models.iter().map(|e| e.bits.as_slice()).collect();
        let o = oracle(&mse, &bits).with_context(|| format!("set {name}"))?;
        let best = models
            .iter()
            .min_by(|a, b| mean(&a.mse).total_cmp(&mean(&b.mse)))
            .expect("non-empty");
        let n = best.mse.len() as f64;
        let wins: Vec<String> = models
            .iter()
            .zip(&o.wins)
            .map(|(e, &w)| format!("{} {:.1}%", e.label, 100.0 * w as f64 / n))
            .collect();
        writeln!(
            md,
            "| {name} | {} | {} | {:.5} | {:.5} | {:.3}× | {} | {:.0} |",
            models.len(),
            best.label,
            mean(&best.mse),
            o.mse,
            o.mse / mean(&best.mse),
            wins.join(", "),
            o.bits
        )?;
    }
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    std::fs::write(&opts.out, md).with_context(|| opts.out.display().to_string())?;
    eprintln!("report: {}", opts.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three images, two models, by hand: model 0 wins images 0 and 2 (0.1, 0.3), model 1
    /// image 1 (0.2); the mean is (0.1 + 0.2 + 0.3) / 3 = 0.2, the bits (10 + 21 + 12) / 3 +
    /// log2 2 = 15.333… A tie goes to the first model.
    #[test]
    fn oracle_by_hand() {
        let mse = [[0.1, 0.5, 0.3], [0.4, 0.2, 0.3]];
        let bits = [[10.0, 11.0, 12.0], [20.0, 21.0, 22.0]];
        let o = oracle(&[&mse[0], &mse[1]], &[&bits[0], &bits[1]]).unwrap();
        assert!((o.mse - 0.2).abs() < 1e-12, "{}", o.mse);
        assert_eq!(o.wins, vec![2, 1]);
        assert!((o.bits - (43.0 / 3.0 + 1.0)).abs() < 1e-12, "{}", o.bits);
    }

    #[test]
    fn mismatched_lists_are_errors() {
        let a = [0.1, 0.2];
        let b = [0.1];
        assert!(oracle(&[&a, &b], &[&a, &a]).is_err());
        assert!(oracle(&[], &[]).is_err());
        assert!(oracle(&[&a], &[&a, &a]).is_err());
    }
}
