//! `cargo xtask bench-layers`: forward + backward time of each convolution of the paper's base
//! model, ours (the channel-last CPU ops the model runs) beside PyTorch's in paired rounds, weighted by how often the
//! layer occurs in one training step: where the fixed model's remaining gap to PyTorch lies.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use serde::Serialize;
use vq_ops::ops::{conv2d_nhwc, conv_transpose2d_nhwc, ReluAt};

use crate::bench::{median, shape_of};

/// One convolution of the CNN+ResNet autoencoder (h = 128, residual h = 32, two residual layers).
#[derive(Clone, Debug, Serialize)]
pub struct LayerCase {
    pub name: &'static str,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// Input height = width.
    pub side: usize,
    pub transposed: bool,
    pub bias: bool,
    /// Whether the input needs a gradient (not for the first layer).
    pub input_grad: bool,
    /// How many times the layer's shape occurs in one forward pass.
    #[serde(skip)]
    pub per_step: usize,
}

/// The base model's convolutions for `channels`×`side`² inputs.
pub fn base_model_layers(channels: usize, side: usize) -> Vec<LayerCase> {
    let (s2, s4) = (side / 2, side / 4);
    // (name, cin, cout, k, stride, pad, input side, transposed, bias, occurrences per step)
    #[rustfmt::skip]
    let table = [
        ("encoder.c1", channels, 64, 4, 2, 1, side, false, true, 1),
        ("encoder.c2", 64, 128, 4, 2, 1, s2, false, true, 1),
        ("c3x3 128→128 (encoder.c3, decoder.c1)", 128, 128, 3, 1, 1, s4, false, true, 2),
        ("residual 3x3 128→32 (×4)", 128, 32, 3, 1, 1, s4, false, false, 4),
        ("residual 1x1 32→128 (×4)", 32, 128, 1, 1, 0, s4, false, false, 4),
        ("decoder.t1 (transposed)", 128, 64, 4, 2, 1, s4, true, true, 1),
        ("decoder.t2 (transposed)", 64, channels, 4, 2, 1, s2, true, true, 1),
    ];
    table
        .into_iter()
        .map(
            |(name, cin, cout, k, stride, pad, side, transposed, bias, per_step)| LayerCase {
                name,
                cin,
                cout,
                k,
                stride,
                pad,
                side,
                transposed,
                bias,
                input_grad: name != "encoder.c1",
                per_step,
            },
        )
        .collect()
}

/// Median ms of `y = conv(x, w, b); y.sum().backward()` with our ops on a channel-last input
/// (the layout the model keeps its activations in on the CPU).
pub fn time_ours(l: &LayerCase, batch: usize, steps: usize, warmup: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let mut rng = vq_core::init::stream(0, l.name);
    let mut randn = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| vq_core::init::standard_normal(&mut rng) as f32 * scale)
            .collect()
    };
    let x = Tensor::from_vec(
        randn(batch * l.cin * l.side * l.side, 0.5),
        (batch, l.side, l.side, l.cin),
        &dev,
    )?;
    let x = if l.input_grad {
        Var::from_tensor(&x)?.as_tensor().clone()
    } else {
        x
    };
    let wshape = if l.transposed {
        (l.cin, l.cout, l.k, l.k)
    } else {
        (l.cout, l.cin, l.k, l.k)
    };
    let w = Var::from_tensor(&Tensor::from_vec(
        randn(l.cin * l.cout * l.k * l.k, 0.05),
        wshape,
        &dev,
    )?)?;
    let b = l
        .bias
        .then(|| Var::zeros(l.cout, candle_core::DType::F32, &dev))
        .transpose()?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let y = if l.transposed {
            conv_transpose2d_nhwc(
                &x,
                &w,
                b.as_ref().map(|b| b.as_tensor()),
                l.stride,
                l.pad,
                ReluAt::NONE,
            )?
        } else {
            conv2d_nhwc(
                &x,
                &w,
                b.as_ref().map(|b| b.as_tensor()),
                l.stride,
                l.pad,
                ReluAt::NONE,
            )?
        };
        let grads = y.sum_all()?.backward()?;
        if grads.get(&w).is_none() {
            bail!("{}: no kernel gradient", l.name);
        }
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(&mut times))
}

/// Median ms per layer of the same work in PyTorch (`conv_layers.py`), name → ms.
pub fn time_torch(
    layers: &[LayerCase],
    batch: usize,
    steps: usize,
    warmup: usize,
    threads: usize,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let cfg = serde_json::json!({
        "batch": batch, "steps": steps, "warmup": warmup, "threads": threads, "layers": layers,
    });
    let mut cmd = Command::new("python3");
    cmd.args(["-c", include_str!("conv_layers.py"), &cfg.to_string()]);
    crate::bench::json_output(
        &mut cmd,
        "the PyTorch layer timing (pip install torch numpy)",
    )
}

/// Options of `cargo xtask bench-layers`.
#[derive(Clone, Debug)]
pub struct LayerOptions {
    /// `mnist` (64×1×28×28) or `cifar` (64×3×32×32).
    pub shape: String,
    pub steps: usize,
    pub warmup: usize,
    pub rounds: usize,
    pub compare_torch: bool,
}

/// Prints one row per layer (ours, PyTorch, ratio, weighted by occurrences per step) and the
/// weighted totals.
pub fn bench_layers(o: &LayerOptions) -> Result<()> {
    let (batch, c, side) = shape_of(&o.shape)?;
    let threads = rayon::current_num_threads();
    let layers = base_model_layers(c, side);
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); layers.len()];
    let mut theirs: Vec<Vec<f64>> = vec![Vec::new(); layers.len()];
    for _ in 0..o.rounds.max(1) {
        for (i, l) in layers.iter().enumerate() {
            ours[i].push(time_ours(l, batch, o.steps, o.warmup)?);
        }
        if o.compare_torch {
            let t = time_torch(&layers, batch, o.steps, o.warmup, threads)?;
            for (i, l) in layers.iter().enumerate() {
                let ms = t
                    .get(l.name)
                    .and_then(|v| v.as_f64())
                    .with_context(|| format!("no PyTorch time for {}", l.name))?;
                theirs[i].push(ms);
            }
        }
    }
    println!(
        "conv forward + backward, batch {batch}, {} threads, median of {} rounds",
        threads,
        o.rounds.max(1)
    );
    println!(
        "| layer | per step | ours ms | PyTorch ms | ratio | ours × count | PyTorch × count |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let (mut sum_o, mut sum_t) = (0.0, 0.0);
    for (i, l) in layers.iter().enumerate() {
        let mo = median(&mut ours[i]);
        let mt = if theirs[i].is_empty() {
            f64::NAN
        } else {
            median(&mut theirs[i])
        };
        let n = l.per_step as f64;
        sum_o += mo * n;
        sum_t += mt * n;
        println!(
            "| {} | {} | {mo:.2} | {mt:.2} | {:.2}× | {:.1} | {:.1} |",
            l.name,
            l.per_step,
            mo / mt,
            mo * n,
            mt * n
        );
    }
    println!(
        "| all convolutions of one step | | | | {:.2}× | {sum_o:.1} | {sum_t:.1} |",
        sum_o / sum_t
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layer list has the base model's multiply-accumulates: 2.29 G per forward pass at
    /// batch 64 of 28×28 images, counted by hand from the architecture (see docs/benchmarks.md).
    #[test]
    fn layer_list_matches_the_architecture() {
        let macs: usize = base_model_layers(1, 28)
            .iter()
            .map(|l| {
                let per_image = if l.transposed {
                    l.side * l.side * l.cin * l.cout * l.k * l.k
                } else {
                    let out = (l.side + 2 * l.pad - l.k) / l.stride + 1;
                    out * out * l.cout * l.cin * l.k * l.k
                };
                64 * per_image * l.per_step
            })
            .sum();
        // c1 12.8M + c2 411M + 2·462M + 4·115.6M + 4·12.8M + t1 411M + t2 12.8M.
        assert_eq!(macs, 2_286_419_968);
    }
}
