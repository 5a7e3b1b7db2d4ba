//! Seeded shuffling, normalisation and batching into `[B, C, H, W]` f32 tensors, with decoding
//! on a background thread so a training loop never waits on I/O.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// Per-channel affine map from bytes to network inputs: `x = byte · scale[c] + shift[c]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Normalization {
    /// `x / 255` in `[0, 1]`.
    pub fn unit(channels: usize) -> Self {
        Self {
            scale: vec![1.0 / 255.0; channels],
            shift: vec![0.0; channels],
        }
    }
    /// `x / 255 − 0.5` (the authors' code).
    pub fn center(channels: usize) -> Self {
        Self {
            scale: vec![1.0 / 255.0; channels],
            shift: vec![-0.5; channels],
        }
    }
    /// `(x / 255 − mean) / std` per channel.
    pub fn mean_std(mean: &[f32], std: &[f32]) -> Result<Self> {
        if mean.len() != std.len() || mean.is_empty() {
            return Err(DataError::config(
                "mean",
                "mean and std need one value per channel",
            ));
        }
        if let Some(s) = std.iter().find(|&&s| !(s.is_finite() && s > 0.0)) {
            return Err(DataError::config(
                "std",
                format!("must be finite and > 0, got {s}"),
            ));
        }
        Ok(Self {
            scale: std.iter().map(|s| 1.0 / (255.0 * s)).collect(),
            shift: mean.iter().zip(std).map(|(m, s)| -m / s).collect(),
        })
    }
    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.scale.len()
    }
    /// Normalises one CHW image of `plane = H·W` pixels per channel into `out`.
    pub fn apply(&self, pixels: &[u8], plane: usize, out: &mut [f32]) {
        for (c, (px, o)) in pixels
            .chunks_exact(plane)
            .zip(out.chunks_exact_mut(plane))
            .enumerate()
        {
            let (a, b) = (self.scale[c], self.shift[c]);
            for (p, v) in px.iter().zip(o.iter_mut()) {
                *v = *p as f32 * a + b;
            }
        }
    }
    /// Maps a normalised value of channel `c` back to the pixel scale `[0, 1]` (`byte / 255`,
    /// not clamped), for image-quality metrics.
    pub fn to_unit(&self, c: usize, x: f32) -> f32 {
        (x - self.shift[c]) / (self.scale[c] * 255.0)
    }
    /// Maps normalised values of channel `c` back to bytes (clamped), for pictures.
    pub fn invert(&self, c: usize, x: f32) -> u8 {
        ((x - self.shift[c]) / self.scale[c])
            .round()
            .clamp(0.0, 255.0) as u8
    }
}

/// How batches are drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatcherConfig {
    /// Examples per batch (≥ 1).
    pub batch_size: usize,
    /// Reshuffle every epoch (order seeded by `(seed, epoch)`).
    pub shuffle: bool,
    /// Skip the last incomplete batch of an epoch.
    pub drop_last: bool,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Batches decoded ahead by the background thread.
    pub prefetch: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            shuffle: true,
            drop_last: true,
            seed: 0,
            prefetch: 4,
        }
    }
}

/// A batch on the CPU.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, C, H, W]` f32, normalised.
    pub images: Tensor,
    /// `[B]` u32.
    pub labels: Tensor,
    /// Dataset indices of the examples.
    pub indices: Vec<usize>,
    /// Position of this batch.
    pub cursor: Cursor,
}

/// A position in the stream of batches: epoch and batch within the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub batch: usize,
}

/// Draws batches from a dataset.
#[derive(Clone)]
pub struct Batcher {
    dataset: Arc<dyn Dataset>,
    config: BatcherConfig,
    norm: Normalization,
}

impl Batcher {
    /// Checks the configuration against the dataset.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        config: BatcherConfig,
        norm: Normalization,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::config("batch_size", "must be ≥ 1"));
        }
        if dataset.is_empty() {
            return Err(DataError::config("dataset", "is empty"));
        }
        if config.drop_last && dataset.len() < config.batch_size {
            return Err(DataError::config(
                "batch_size",
                format!(
                    "{} exceeds the {} examples of the dataset with drop_last",
                    config.batch_size,
                    dataset.len()
                ),
            ));
        }
        if norm.channels() != dataset.shape()[0] {
            return Err(DataError::config(
                "normalize",
                format!(
                    "{} channel statistics for {}-channel images",
                    norm.channels(),
                    dataset.shape()[0]
                ),
            ));
        }
        Ok(Self {
            dataset,
            config,
            norm,
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// The normalisation applied.
    pub fn normalization(&self) -> &Normalization {
        &self.norm
    }

    /// The configuration.
    pub fn config(&self) -> &BatcherConfig {
        &self.config
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Example order of `epoch` (identity without shuffling).
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            let seed = self.config.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        order
    }

    /// Decodes and normalises the examples `indices` into a batch.
    pub fn assemble(&self, indices: Vec<usize>, cursor: Cursor) -> Result<Batch> {
        let _span = tracing::trace_span!("assemble", n = indices.len()).entered();
        let [c, h, w] = self.dataset.shape();
        let per = c * h * w;
        let samples = indices
            .par_iter()
            .map(|&i| self.dataset.get(i))
            .collect::<Result<Vec<_>>>()?;
        if let Some((i, s)) = indices
            .iter()
            .zip(&samples)
            .find(|(_, s)| s.image.len() != per)
        {
            return Err(DataError::config(
                "dataset",
                format!(
                    "example {i} has {} bytes, expected {per} for shape [{c}, {h}, {w}]",
                    s.image.len()
                ),
            ));
        }
        let mut data = vec![0f32; indices.len() * per];
        data.par_chunks_mut(per)
            .zip(samples.par_iter())
            .for_each(|(out, s)| self.norm.apply(&s.image, h * w, out));
        let labels: Vec<u32> = samples.iter().map(|s| s.label).collect();
        let b = indices.len();
        Ok(Batch {
            images: Tensor::from_vec(data, (b, c, h, w), &Device::Cpu)?,
            labels: Tensor::from_vec(labels, b, &Device::Cpu)?,
            indices,
            cursor,
        })
    }

    /// The batch at `cursor`, computed on this thread.
    pub fn batch_at(&self, cursor: Cursor) -> Result<Batch> {
        let order = self.epoch_order(cursor.epoch);
        let b = self.config.batch_size;
        let start = cursor.batch * b;
        if start >= order.len() || cursor.batch >= self.batches_per_epoch() {
            return Err(DataError::config(
                "cursor",
                format!("batch {} is past the end of the epoch", cursor.batch),
            ));
        }
        let end = (start + b).min(order.len());
        self.assemble(order[start..end].to_vec(), cursor)
    }

    /// Batches from `start` on, across epochs without end (or through one epoch with
    /// `one_epoch`), decoded `prefetch` ahead on a background thread.
    pub fn stream(&self, start: Cursor, one_epoch: bool) -> BatchStream {
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name("vq-data-batcher".into())
            .spawn(move || {
                let mut cur = start;
                let per_epoch = me.batches_per_epoch();
                loop {
                    if cur.batch >= per_epoch {
                        if one_epoch {
                            return;
                        }
                        cur = Cursor {
                            epoch: cur.epoch + 1,
                            batch: 0,
                        };
                    }
                    let order = me.epoch_order(cur.epoch);
                    while cur.batch < per_epoch {
                        let s = cur.batch * me.config.batch_size;
                        let e = (s + me.config.batch_size).min(order.len());
                        let item = me.assemble(order[s..e].to_vec(), cur);
                        let failed = item.is_err();
                        if tx.send(item).is_err() || failed {
                            return;
                        }
                        cur.batch += 1;
                    }
                }
            })
            .expect("spawn batcher thread");
        BatchStream {
            rx,
            handle: Some(handle),
        }
    }
}

/// Batches produced by a background thread; dropping the stream stops the thread.
pub struct BatchStream {
    rx: Receiver<Result<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(item) => Some(item),
            // The producer ended: normally (end of a one-epoch stream), or by a panic, which is
            // reported instead of looking like the end of the data.
            Err(_) => match self.handle.take().map(|h| h.join()) {
                Some(Err(panic)) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    Some(Err(DataError::Loader(msg)))
                }
                _ => None,
            },
        }
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Unblock the producer (its next send fails), then wait for it.
        let (_tx, rx) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, rx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::InMemoryDataset;

    fn toy(n: usize) -> Arc<dyn Dataset> {
        let pixels: Vec<u8> = (0..n * 4).map(|i| (i % 256) as u8).collect();
        Arc::new(InMemoryDataset::new(
            [1, 2, 2],
            pixels,
            (0..n as u32).collect(),
        ))
    }

    #[test]
    fn seeded_order_and_stream_equal_direct() {
        let cfg = BatcherConfig {
            batch_size: 3,
            seed: 7,
            ..Default::default()
        };
        let a = Batcher::new(toy(10), cfg.clone(), Normalization::unit(1)).unwrap();
        let b = Batcher::new(toy(10), cfg, Normalization::unit(1)).unwrap();
        assert_eq!(a.epoch_order(0), b.epoch_order(0));
        assert_ne!(a.epoch_order(0), a.epoch_order(1));
        assert_eq!(a.batches_per_epoch(), 3);
        let streamed: Vec<Batch> = a
            .stream(Cursor { epoch: 0, batch: 2 }, false)
            .take(3)
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(streamed[0].cursor, Cursor { epoch: 0, batch: 2 });
        assert_eq!(streamed[1].cursor, Cursor { epoch: 1, batch: 0 });
        let direct = a.batch_at(Cursor { epoch: 1, batch: 0 }).unwrap();
        assert_eq!(streamed[1].indices, direct.indices);
        assert_eq!(
            streamed[1].labels.to_vec1::<u32>().unwrap(),
            direct.indices.iter().map(|&i| i as u32).collect::<Vec<_>>()
        );
        // Example i has pixels 4i..4i+4 (mod 256) → normalised by /255.
        let x = direct
            .images
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((x[0] - (4 * direct.indices[0]) as f32 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn one_epoch_without_drop_last_covers_everything() {
        let cfg = BatcherConfig {
            batch_size: 4,
            drop_last: false,
            shuffle: false,
            ..Default::default()
        };
        let b = Batcher::new(toy(10), cfg, Normalization::center(1)).unwrap();
        let all: Vec<usize> = b
            .stream(Cursor::default(), true)
            .flat_map(|b| b.unwrap().indices)
            .collect();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    struct Panicky;
    impl Dataset for Panicky {
        fn len(&self) -> usize {
            4
        }
        fn shape(&self) -> [usize; 3] {
            [1, 1, 1]
        }
        fn get(&self, _: usize) -> Result<crate::dataset::Sample> {
            panic!("decoder exploded")
        }
    }

    /// A panic in the loader thread is reported, not mistaken for the end of the data.
    #[test]
    fn loader_panic_is_an_error() {
        let b = Batcher::new(
            Arc::new(Panicky),
            BatcherConfig {
                batch_size: 2,
                ..Default::default()
            },
            Normalization::unit(1),
        )
        .unwrap();
        let first = b.stream(Cursor::default(), false).next().unwrap();
        let e = first.err().unwrap().to_string();
        assert!(e.contains("decoder exploded"), "{e}");
    }

    #[test]
    fn bad_configs() {
        let e = Batcher::new(
            toy(3),
            BatcherConfig {
                batch_size: 0,
                ..Default::default()
            },
            Normalization::unit(1),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("batch_size"));
        let e = Batcher::new(
            toy(3),
            BatcherConfig {
                batch_size: 5,
                ..Default::default()
            },
            Normalization::unit(1),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("exceeds"));
        assert!(Normalization::mean_std(&[0.5], &[0.0]).is_err());
        let n = Normalization::mean_std(&[0.2860], &[0.3530]).unwrap();
        let mut out = [0f32; 1];
        n.apply(&[255], 1, &mut out);
        assert!((out[0] - (1.0 - 0.2860) / 0.3530).abs() < 1e-5);
        assert_eq!(n.invert(0, out[0]), 255);
    }
}
