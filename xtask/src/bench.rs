//! `cargo xtask bench`: ms per training step and peak RSS of the paper's model with fixed and
//! adaptive quantizers (each case in its own process), optionally beside the PyTorch reference.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use vq_core::{
    AdaptiveConfig, AdaptiveQuantizer, CodebookConfig, Distance, Fsq, FsqConfig, Lfq, LfqConfig,
    Quantizer, ResidualVq, RvqConfig, SeededVarMap, Step, VectorQuantizer, VqConfig, VqGradient,
};
use vq_models::{ModelConfig, QuantizerSpec, VqVae};
use vq_train::optim::{Adam, AdamConfig};

/// One measurement, printed as a JSON line by a child process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    pub kind: String,
    pub model: String,
    pub shape: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Forward-only median (NaN when not measured; JSON null).
    #[serde(with = "nan_as_null")]
    pub fwd_median_ms: f64,
    #[serde(with = "nan_as_null")]
    pub bwd_median_ms: f64,
    pub peak_rss_mib: f64,
    pub threads: usize,
}

/// NaN ↔ JSON null.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_nan() {
            s.serialize_none()
        } else {
            s.serialize_f64(*v)
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Peak resident set of this process (VmHWM), MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// `(batch, channels, side)` of a benchmark input shape.
pub(crate) fn shape_of(shape: &str) -> Result<(usize, usize, usize)> {
    Ok(match shape {
        "mnist" => (64, 1, 28),
        "cifar" => (64, 3, 32),
        s => bail!("unknown shape {s} (mnist, cifar)"),
    })
}

fn quantizer_of(model: &str) -> Result<QuantizerSpec> {
    Ok(match model {
        "adaptive" | "adaptive-no-restart" => QuantizerSpec::Adaptive,
        m => {
            let nd = m
                .strip_prefix("fixed")
                .context("model: adaptive or fixedNxD")?;
            format!("fixed:{nd}").parse().map_err(anyhow::Error::msg)?
        }
    })
}

/// Times `steps` training steps (after `warmup`) of one case in this process.
pub fn run_case(
    model: &str,
    shape: &str,
    steps: usize,
    warmup: usize,
    device: &str,
) -> Result<CaseResult> {
    let (b, c, s) = shape_of(shape)?;
    let dev: Device = vq_train::device::parse_device(device)?;
    let threads = rayon_threads();
    if model == "quantizer" {
        // The adaptive pool alone, forward + backward, T = 64·s'² vectors of C = 128.
        let side = s / 4;
        let cfg = AdaptiveConfig::adaptive(128, 65536).validate()?;
        let vm = SeededVarMap::new(0);
        let q = AdaptiveQuantizer::new(&cfg, vm.var_builder(DType::F32, &dev))?;
        let z = Tensor::randn(0f32, 1.0, (b, 128, side, side), &dev)?;
        let mut rng = vq_core::init::stream(0, "bench");
        // Healthy codebooks, as in training: k-means on the batch's projected vectors.
        let flat = z.permute((0, 2, 3, 1))?.contiguous()?.reshape(((), 128))?;
        q.initialise_codebooks(&flat, flat.dim(0)?, &mut rng)?;
        return quantizer_alone(&q, z, steps, warmup, &mut rng, (model, shape, threads));
    }
    if model == "fsq" {
        // FSQ alone (levels FSQ_BENCH_LEVELS, 2^16 codes), forward + backward, on the same
        // T = 64·s'² vectors, each of len(levels) channels.
        let side = s / 4;
        let q = Fsq::new(&FsqConfig::new(&FSQ_BENCH_LEVELS).validate()?);
        let z = Tensor::randn(0f32, 1.0, (b, FSQ_BENCH_LEVELS.len(), side, side), &dev)?;
        let mut rng = vq_core::init::stream(0, "bench");
        return quantizer_alone(&q, z, steps, warmup, &mut rng, (model, shape, threads));
    }
    if model == "lfq" {
        // LFQ alone (LFQ_BENCH_BITS bits, 2^16 codes, the package's default loss), forward +
        // backward with its entropy loss, on the same T = 64·s'² vectors.
        let side = s / 4;
        let q = Lfq::new(&LfqConfig::new(LFQ_BENCH_BITS).validate()?);
        let z = Tensor::randn(0f32, 1.0, (b, LFQ_BENCH_BITS as usize, side, side), &dev)?;
        let mut rng = vq_core::init::stream(0, "bench");
        return quantizer_alone(&q, z, steps, warmup, &mut rng, (model, shape, threads));
    }
    if model == "rvq" {
        // Two VQ stages [VQ_BENCH_CODES, VQ_BENCH_DIM] (default learning rule) on residuals.
        let side = s / 4;
        let cfg = RvqConfig::new(2, VQ_BENCH_CODES, VQ_BENCH_DIM).validate()?;
        let vm = SeededVarMap::new(0);
        let q = ResidualVq::new(&cfg, vm.var_builder(DType::F32, &dev))?;
        let z = Tensor::randn(0f32, 1.0, (b, VQ_BENCH_DIM, side, side), &dev)?;
        let mut rng = vq_core::init::stream(0, "bench");
        return quantizer_alone(&q, z, steps, warmup, &mut rng, (model, shape, threads));
    }
    if let Some(codebook) = vq_variant(model) {
        // One VQ codebook [VQ_BENCH_CODES, VQ_BENCH_DIM] alone with the variant's settings,
        // forward + backward on the same T = 64·s'² vectors; the first (warm-up) step runs its
        // k-means initialisation.
        let side = s / 4;
        let cfg = VqConfig {
            num_embeddings: VQ_BENCH_CODES,
            embedding_dim: VQ_BENCH_DIM,
            codebook,
        }
        .validate()?;
        let vm = SeededVarMap::new(0);
        let q = VectorQuantizer::new(&cfg, vm.var_builder(DType::F32, &dev))?;
        let z = Tensor::randn(0f32, 1.0, (b, VQ_BENCH_DIM, side, side), &dev)?;
        let mut rng = vq_core::init::stream(0, "bench");
        return quantizer_alone(&q, z, steps, warmup, &mut rng, (model, shape, threads));
    }
    let mut mc = ModelConfig {
        quantizer: quantizer_of(model)?,
        ..Default::default()
    };
    if model == "adaptive-no-restart" {
        // The cost of dead-code restarts is this case's difference from `adaptive`.
        mc.pool.codebook.restart_below = 0.0;
    }
    let cfg = mc.validate(c)?;
    let vm = SeededVarMap::new(0);
    let net = VqVae::new(&cfg, vm.var_builder(DType::F32, &dev))?;
    let mut adam = Adam::new(
        vm.named_vars(),
        AdamConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
    );
    let x = Tensor::rand(-0.5f32, 0.5, (b, c, s, s), &dev)?;
    let mut rng = vq_core::init::stream(0, "bench");
    // Healthy codebooks, as in training: k-means on the batch's latents (once, untimed).
    net.initialise_codebooks(std::slice::from_ref(&x), &mut rng)?;
    let (mut total, mut fwd, mut bwd) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let out = net.forward(&x, &mut Step::train(1.0, &mut rng))?;
        let _ = out.loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = out.loss.backward()?;
        let t2 = Instant::now();
        adam.step(&grads)?;
        if i >= warmup {
            total.push(t0.elapsed().as_secs_f64() * 1e3);
            fwd.push((t1 - t0).as_secs_f64() * 1e3);
            bwd.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    let split = [median(&mut fwd), median(&mut bwd)];
    Ok(timed_result(
        "train_step",
        (model, shape, threads),
        &mut total,
        split,
    ))
}

/// The result of one case from its step times (ms) and the median forward and backward times
/// (NaN where not measured apart), with this process's peak memory.
fn timed_result(
    kind: &str,
    (model, shape, threads): (&str, &str, usize),
    times: &mut [f64],
    [fwd, bwd]: [f64; 2],
) -> CaseResult {
    let min_ms = times.iter().cloned().fold(f64::MAX, f64::min);
    let max_ms = times.iter().cloned().fold(0.0, f64::max);
    CaseResult {
        kind: kind.into(),
        model: model.into(),
        shape: shape.into(),
        median_ms: median(times),
        min_ms,
        max_ms,
        fwd_median_ms: fwd,
        bwd_median_ms: bwd,
        peak_rss_mib: peak_rss_mib(),
        threads,
    }
}

/// FSQ levels of the `fsq` case: the FSQ paper's recommendation for 2^16 codes.
pub(crate) const FSQ_BENCH_LEVELS: [u32; 6] = [8, 8, 8, 5, 5, 5];

/// The codebook `[N, D]` of the `rotation`, `cosine` and `simvq` cases (as
/// `bench/torch_reference.py vq-bench`).
pub(crate) const VQ_BENCH_CODES: usize = 1024;
pub(crate) const VQ_BENCH_DIM: usize = 64;

/// The codebook settings of a VQ-variant case: the rotation trick, cosine similarity, or SimVQ
/// (straight-through), each with EMA decay 0.99 and α = 0.25 where it has them.
fn vq_variant(model: &str) -> Option<CodebookConfig> {
    let base = CodebookConfig::default();
    Some(match model {
        "rotation" => CodebookConfig {
            gradient: VqGradient::Rotation,
            ..base
        },
        "cosine" => CodebookConfig {
            distance: Distance::Cosine,
            ..base
        },
        "simvq" => CodebookConfig {
            ema: false,
            restart_below: 0.0,
            sim_vq: true,
            ..base
        },
        _ => return None,
    })
}

/// Bits of the `lfq` case (2^16 codes, as the `fsq` case).
pub(crate) const LFQ_BENCH_BITS: u32 = 16;

/// Times `steps` forward + backward passes (after `warmup`) of a quantizer alone on `z`
/// `[B, C, *S]`, with the loss `mean(z_q²) + quantizer loss`; `(model, shape, threads)` label the
/// result.
fn quantizer_alone(
    q: &dyn Quantizer,
    z: Tensor,
    steps: usize,
    warmup: usize,
    rng: &mut dyn rand::RngCore,
    (model, shape, threads): (&str, &str, usize),
) -> Result<CaseResult> {
    let z = candle_core::Var::from_tensor(&z)?;
    let mut times = Vec::new();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let out = q.forward(z.as_tensor(), &mut Step::train(1.0, &mut *rng))?;
        let l = (out.z_q.sqr()?.mean_all()? + out.loss)?;
        l.backward()?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let label = (model, shape, threads);
    Ok(timed_result(
        "quantizer_fwd_bwd",
        label,
        &mut times,
        [f64::NAN; 2],
    ))
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The cases of the benchmark.
pub const CASES: &[(&str, &str)] = &[
    ("fixed512x128", "mnist"),
    ("fixed16384x4", "mnist"),
    ("adaptive", "mnist"),
    ("adaptive-no-restart", "mnist"),
    ("quantizer", "mnist"),
    ("fsq", "mnist"),
    ("lfq", "mnist"),
    ("rotation", "mnist"),
    ("cosine", "mnist"),
    ("simvq", "mnist"),
    ("rvq", "mnist"),
    ("fixed512x128", "cifar"),
    ("fixed16384x4", "cifar"),
    ("adaptive", "cifar"),
    ("quantizer", "cifar"),
];

fn run_torch(
    model: &str,
    shape: &str,
    steps: usize,
    warmup: usize,
    threads: usize,
) -> Result<CaseResult> {
    let script = crate::paths::torch_reference();
    if !script.is_file() {
        bail!(
            "--compare-torch: no PyTorch reference at {} (set {} to the script)",
            script.display(),
            crate::paths::TORCH_REFERENCE_VAR
        );
    }
    let mut cmd = Command::new("python3");
    cmd.arg(&script).env("ADQ_THREADS", threads.to_string());
    let t = if shape == "mnist" { 3136 } else { 4096 };
    if model == "quantizer" {
        cmd.args(["quant-bench", "--T", &t.to_string(), "--vq-impl", "index"]);
    } else if model == "fsq" {
        let levels: Vec<String> = FSQ_BENCH_LEVELS.iter().map(u32::to_string).collect();
        cmd.args([
            "fsq-bench",
            "--T",
            &t.to_string(),
            "--levels",
            &levels.join(","),
        ]);
    } else if vq_variant(model).is_some() || model == "rvq" {
        cmd.args(["vq-bench", "--T", &t.to_string(), "--variant", model]);
    } else if model == "lfq" {
        cmd.args([
            "lfq-bench",
            "--T",
            &t.to_string(),
            "--bits",
            &LFQ_BENCH_BITS.to_string(),
        ]);
    } else {
        cmd.args([
            "bench",
            "--model",
            model,
            "--shape",
            shape,
            "--vq-impl",
            "index",
        ]);
    }
    cmd.args([
        "--steps",
        &steps.to_string(),
        "--warmup",
        &warmup.to_string(),
    ]);
    let v: serde_json::Value = json_output(
        &mut cmd,
        &format!("the torch reference {}", script.display()),
    )?;
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    Ok(CaseResult {
        kind: "torch".into(),
        model: model.into(),
        shape: shape.into(),
        median_ms: f("median_ms"),
        min_ms: f("min_ms"),
        max_ms: f("max_ms"),
        fwd_median_ms: f("fwd_only_median_ms"),
        bwd_median_ms: f64::NAN,
        peak_rss_mib: f("peak_rss_mib"),
        threads,
    })
}

/// One case in a child process of `exe` (this binary, or the `--baseline` one).
fn run_child(
    exe: &Path,
    model: &str,
    shape: &str,
    steps: usize,
    warmup: usize,
    device: &str,
) -> Result<CaseResult> {
    let mut cmd = Command::new(exe);
    cmd.args([
        "bench-case",
        "--model",
        model,
        "--shape",
        shape,
        "--steps",
        &steps.to_string(),
        "--warmup",
        &warmup.to_string(),
        "--device",
        device,
    ]);
    json_output(
        &mut cmd,
        &format!("bench case {model}/{shape} of {}", exe.display()),
    )
}

/// Runs `cmd` (a benchmark child) and parses the last line of its stdout that starts with `{`.
pub(crate) fn json_output<T: serde::de::DeserializeOwned>(
    cmd: &mut Command,
    what: &str,
) -> Result<T> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no JSON line from {what}"))?;
    serde_json::from_str(line).with_context(|| format!("the JSON line of {what}"))
}

/// What `cargo xtask bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub steps: usize,
    pub warmup: usize,
    /// Paired rounds per case (the median round is reported).
    pub rounds: usize,
    pub compare_torch: bool,
    /// Only this model (fixed512x128, fixed16384x4, adaptive, adaptive-no-restart, quantizer, fsq,
    /// lfq, rotation, cosine, simvq, rvq).
    pub only: Option<String>,
    /// Only this input shape (mnist, cifar).
    pub shape: Option<String>,
    /// Device of our cases.
    pub device: String,
    /// Also write the results as JSON here.
    pub out: Option<PathBuf>,
    /// Another xtask binary (an earlier build) whose cases alternate with ours in every round:
    /// a paired A/B of two builds on the same machine at the same time.
    pub baseline: Option<PathBuf>,
}

/// The measurements of one case: ours, and those of the reference and the baseline build when
/// asked (each the median of its rounds).
#[derive(Clone, Debug, Serialize)]
pub struct CaseRow {
    pub ours: CaseResult,
    pub torch: Option<CaseResult>,
    pub baseline: Option<CaseResult>,
}

/// The round with the median time, with the largest peak memory of all rounds.
fn median_round(v: &mut [CaseResult]) -> Option<CaseResult> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.median_ms.total_cmp(&b.median_ms));
    let mut r = v[v.len() / 2].clone();
    r.peak_rss_mib = v.iter().map(|c| c.peak_rss_mib).fold(0.0, f64::max);
    Some(r)
}

/// Runs every case (in alternation with the PyTorch reference and the baseline build when
/// asked) and prints a table.
pub fn bench(o: &BenchOptions) -> Result<()> {
    let (steps, warmup, rounds) = (o.steps, o.warmup, o.rounds.max(1));
    let device = o.device.as_str();
    let threads = rayon_threads();
    let exe = std::env::current_exe()?;
    let mut rows: Vec<CaseRow> = Vec::new();
    for &(model, shape) in CASES {
        if o.only.as_deref().is_some_and(|x| x != model)
            || o.shape.as_deref().is_some_and(|x| x != shape)
        {
            continue;
        }
        // Paired rounds: ours, the baseline build, the reference, `rounds` times; the median
        // round of each.
        let (mut ours, mut theirs, mut base) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.push(run_child(&exe, model, shape, steps, warmup, device)?);
            if let Some(b) = &o.baseline {
                base.push(run_child(b, model, shape, steps, warmup, device)?);
            }
            if o.compare_torch {
                // The reference has no restarts: its adaptive case stands beside both of ours.
                let reference = if model == "adaptive-no-restart" {
                    "adaptive"
                } else {
                    model
                };
                theirs.push(run_torch(reference, shape, steps, warmup, threads)?);
            }
        }
        let row = CaseRow {
            ours: median_round(&mut ours).expect("at least one round"),
            torch: median_round(&mut theirs),
            baseline: median_round(&mut base),
        };
        eprintln!("{}", describe(model, shape, &row));
        rows.push(row);
    }
    let json = serde_json::to_string_pretty(&rows)?;
    println!("{json}");
    if let Some(p) = &o.out {
        std::fs::write(p, json).with_context(|| p.display().to_string())?;
    }
    Ok(())
}

/// One line of the progress table: our times and memory, and the ratios to the reference and
/// the baseline build.
fn describe(model: &str, shape: &str, row: &CaseRow) -> String {
    let o = &row.ours;
    let mut line = format!(
        "{model:>19} {shape:>5}: {:8.1} ms/step (fwd {:7.1}, bwd {:7.1}) peak {:7.0} MiB",
        o.median_ms, o.fwd_median_ms, o.bwd_median_ms, o.peak_rss_mib
    );
    if let Some(t) = &row.torch {
        line += &format!(
            " | torch {:8.1} ms, {:6.0} MiB | ratio {:.3}× time, {:.3}× memory",
            t.median_ms,
            t.peak_rss_mib,
            o.median_ms / t.median_ms,
            o.peak_rss_mib / t.peak_rss_mib
        );
    }
    if let Some(b) = &row.baseline {
        line += &format!(
            " | baseline {:8.1} ms | new/baseline {:.3}× time",
            b.median_ms,
            o.median_ms / b.median_ms
        );
    }
    line
}
