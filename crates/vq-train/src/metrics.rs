//! The metrics log: `metrics.jsonl` (one JSON object per line, bitwise reproducible for a seed)
//! and `timings.jsonl` (wall-clock throughput, which naturally differs between runs).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Interval means of a training log line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Steps completed.
    pub step: usize,
    /// Mean total loss (reconstruction + VQ) over the interval.
    pub loss: f64,
    /// Mean reconstruction MSE.
    pub recon_loss: f64,
    /// Mean VQ loss (mean over the pool).
    pub vq_loss: f64,
    /// Mean VQ loss of each codebook.
    pub codebook_loss: Vec<f64>,
    /// Mean code-usage perplexity of each codebook.
    pub perplexity: Vec<f64>,
    /// Fraction of selection units that chose each codebook over the interval.
    pub selection: Vec<f64>,
    /// τ at the last step of the interval.
    pub tau: f64,
    /// Gradient gap `‖·‖₂` (eq. 5) measured at this step, when scheduled.
    pub grad_gap_l2: Option<f64>,
    /// Mean absolute gradient gap (the authors' figure).
    pub grad_gap_mean_abs: Option<f64>,
    /// Batches skipped for non-finite values since the start.
    pub skipped_steps: usize,
}

/// One validation pass. The top-level distortion fields are the paper's validation: codebooks
/// routed by the τ = 1 Gumbel-Softmax draw (`sampled`); [`ValRecord::argmax`] holds the same
/// figures with the noiseless argmax routing. Fields after `perplexity` are absent from logs
/// written before they existed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValRecord {
    /// Steps completed.
    pub step: usize,
    /// Mean squared error over every validation pixel.
    pub mse: f64,
    /// The paper's figure: sum over validation batches of the batch-mean MSE after one pass.
    pub recon_sum: f64,
    /// Batches and images in the pass.
    pub batches: usize,
    pub images: usize,
    /// Selection frequency of each codebook (τ = 1 Gumbel-Softmax, as the paper validates).
    pub selection: Vec<f64>,
    /// Code-usage perplexity of each codebook (batch means).
    pub perplexity: Vec<f64>,
    /// Mean PSNR (dB) of the images, pixels in `[0, 1]`, reconstructions clamped to it.
    #[serde(default)]
    pub psnr: Option<f64>,
    /// Mean SSIM of the images (see [`crate::quality::ssim_plane`]).
    #[serde(default)]
    pub ssim: Option<f64>,
    /// Mean bits per image of the codes (see [`crate::quality::bits_per_image`]).
    #[serde(default)]
    pub bits_per_image: Option<f64>,
    /// Per codebook: fraction of its codewords that received at least one vector over the pass
    /// (every codebook quantizes every vector, whichever is selected).
    #[serde(default)]
    pub codes_in_use: Vec<f64>,
    /// Per codebook: how many codewords received at least one vector over the pass.
    #[serde(default)]
    pub codes_used: Vec<usize>,
    /// Per codebook: code-usage perplexity over the whole pass (`exp` of the entropy of the
    /// pass's code histogram).
    #[serde(default)]
    pub pass_perplexity: Vec<f64>,
    /// The same pass with argmax routing (equal to the sampled figures for a single codebook or
    /// a deterministic router).
    #[serde(default)]
    pub argmax: Option<RouteRecord>,
}

/// Distortion and rate of one routing mode over a validation pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// Mean squared error over every validation pixel.
    pub mse: f64,
    /// Sum over validation batches of the batch-mean MSE.
    pub recon_sum: f64,
    /// Mean PSNR (dB).
    pub psnr: f64,
    /// Mean SSIM.
    pub ssim: f64,
    /// Mean bits per image.
    pub bits_per_image: f64,
    /// Selection frequency of each codebook.
    pub selection: Vec<f64>,
}

/// A line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Train(TrainRecord),
    Val(ValRecord),
}

/// A line of `timings.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimingRecord {
    pub step: usize,
    pub images_per_sec: f64,
    pub ms_per_step: f64,
    pub elapsed_s: f64,
}

/// Appends JSON lines to a file and tracks its length.
pub struct JsonlWriter {
    path: PathBuf,
    file: File,
    len: u64,
}

impl JsonlWriter {
    /// Opens `path` for appending after truncating it to `keep` bytes (what a checkpoint saw).
    pub fn open(path: &Path, keep: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        let actual = file.metadata().map_err(|e| TrainError::io(path, e))?.len();
        if actual < keep {
            return Err(TrainError::checkpoint(
                path,
                format!("is {actual} bytes, shorter than the {keep} the checkpoint recorded"),
            ));
        }
        file.set_len(keep).map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            path: path.into(),
            file,
            len: keep,
        })
    }

    /// Writes one record as a line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record).expect("records serialise");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| TrainError::io(&self.path, e))?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Bytes written so far (after an fsync, they survive a crash).
    pub fn sync(&mut self) -> Result<u64> {
        self.file
            .sync_data()
            .map_err(|e| TrainError::io(&self.path, e))?;
        Ok(self.len)
    }
}

/// Training and validation records, each in log order.
pub fn split(records: Vec<Record>) -> (Vec<TrainRecord>, Vec<ValRecord>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for r in records {
        match r {
            Record::Train(t) => train.push(t),
            Record::Val(v) => val.push(v),
        }
    }
    (train, val)
}

/// Reads every record of a `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<Record>> {
    let f = File::open(path).map_err(|e| TrainError::io(path, e))?;
    BufReader::new(f)
        .lines()
        .enumerate()
        .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|(i, l)| {
            let l = l.map_err(|e| TrainError::io(path, e))?;
            serde_json::from_str(&l).map_err(|e| {
                TrainError::config(format!("{} line {}", path.display(), i + 1), e.to_string())
            })
        })
        .collect()
}
