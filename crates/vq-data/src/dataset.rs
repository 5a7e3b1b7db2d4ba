//! The [`Dataset`] trait and the in-memory and lazily decoded image datasets behind every loader.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::image_ops::{load_image_file, ImageSpec};

/// One example: a `u8` image in CHW layout and its class label.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// `[C, H, W]` row-major bytes.
    pub image: Vec<u8>,
    /// Class label (0 when the dataset has none).
    pub label: u32,
}

/// A finite, indexable set of equally shaped images.
pub trait Dataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// `true` when the dataset has no example.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[C, H, W]` of every image.
    fn shape(&self) -> [usize; 3];
    /// Example `i` (decoded if the dataset is backed by files).
    fn get(&self, i: usize) -> Result<Sample>;
}

/// Images held decoded in memory (`N × C × H × W` bytes).
#[derive(Clone, Debug)]
pub struct InMemoryDataset {
    shape: [usize; 3],
    pixels: Arc<Vec<u8>>,
    labels: Arc<Vec<u32>>,
    /// Indices into `pixels`/`labels` this view exposes.
    rows: Arc<Vec<u32>>,
}

impl InMemoryDataset {
    /// Takes `pixels` of `labels.len()` images of `shape` (CHW).
    ///
    /// # Panics
    /// When `pixels.len() != labels.len() · C·H·W` (loaders check sizes before building).
    pub fn new(shape: [usize; 3], pixels: Vec<u8>, labels: Vec<u32>) -> Self {
        let per = shape.iter().product::<usize>();
        assert_eq!(pixels.len(), labels.len() * per, "pixel buffer size");
        let rows = (0..labels.len() as u32).collect();
        Self {
            shape,
            pixels: Arc::new(pixels),
            labels: Arc::new(labels),
            rows: Arc::new(rows),
        }
    }

    /// A view of the given rows (shares the pixel buffer).
    pub fn subset(&self, rows: &[usize]) -> Self {
        Self {
            shape: self.shape,
            pixels: self.pixels.clone(),
            labels: self.labels.clone(),
            rows: Arc::new(rows.iter().map(|&r| self.rows[r]).collect()),
        }
    }

    /// Labels of the exposed rows.
    pub fn labels(&self) -> Vec<u32> {
        self.rows.iter().map(|&r| self.labels[r as usize]).collect()
    }

    /// Pixels of the exposed rows, concatenated.
    pub fn pixels(&self) -> impl Iterator<Item = &[u8]> {
        let per = self.shape.iter().product::<usize>();
        self.rows
            .iter()
            .map(move |&r| &self.pixels[r as usize * per..(r as usize + 1) * per])
    }
}

impl Dataset for InMemoryDataset {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn shape(&self) -> [usize; 3] {
        self.shape
    }
    fn get(&self, i: usize) -> Result<Sample> {
        let per = self.shape.iter().product::<usize>();
        let r = self.rows[i] as usize;
        Ok(Sample {
            image: self.pixels[r * per..(r + 1) * per].to_vec(),
            label: self.labels[r],
        })
    }
}

/// Image files decoded on access (on the batcher's background thread), resized to `spec`.
#[derive(Clone, Debug)]
pub struct ImageFileDataset {
    files: Arc<Vec<(PathBuf, u32)>>,
    spec: ImageSpec,
}

impl ImageFileDataset {
    /// `files`: path and label of each image.
    pub fn new(files: Vec<(PathBuf, u32)>, spec: ImageSpec) -> Self {
        Self {
            files: Arc::new(files),
            spec,
        }
    }

    /// The files and labels.
    pub fn files(&self) -> &[(PathBuf, u32)] {
        &self.files
    }

    /// The first `max` files (all when `None`).
    pub fn truncated(self, max: Option<usize>) -> Self {
        match max {
            Some(m) if m < self.files.len() => Self {
                files: Arc::new(self.files[..m].to_vec()),
                spec: self.spec,
            },
            _ => self,
        }
    }

    /// These files less those in `drop`.
    pub fn without(self, drop: &std::collections::HashSet<&Path>) -> Self {
        if drop.is_empty() || !self.files.iter().any(|(p, _)| drop.contains(p.as_path())) {
            return self;
        }
        Self {
            files: Arc::new(
                self.files
                    .iter()
                    .filter(|(p, _)| !drop.contains(p.as_path()))
                    .cloned()
                    .collect(),
            ),
            spec: self.spec,
        }
    }

    /// Decodes every image now (for small sets used many times).
    pub fn into_memory(self) -> Result<InMemoryDataset> {
        use rayon::prelude::*;
        let decoded: Vec<Vec<u8>> = self
            .files
            .par_iter()
            .map(|(p, _)| load_image_file(p, &self.spec))
            .collect::<Result<_>>()?;
        let labels = self.files.iter().map(|f| f.1).collect();
        Ok(InMemoryDataset::new(self.shape(), decoded.concat(), labels))
    }
}

impl Dataset for ImageFileDataset {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn shape(&self) -> [usize; 3] {
        self.spec.shape()
    }
    fn get(&self, i: usize) -> Result<Sample> {
        let (path, label) = &self.files[i];
        Ok(Sample {
            image: load_image_file(path, &self.spec)?,
            label: *label,
        })
    }
}

/// Decodes every image of `sets` (in parallel; a decode reads the header, checks the
/// dimensions and decodes the pixels) and returns the files that fail, in file order, with the
/// reason. Logs progress every 10,000 images.
pub fn check_images(sets: &[&ImageFileDataset]) -> Vec<(PathBuf, String)> {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let files: Vec<(&PathBuf, &ImageSpec)> = sets
        .iter()
        .flat_map(|s| s.files.iter().map(move |(p, _)| (p, &s.spec)))
        .collect();
    let total = files.len();
    let _span = tracing::info_span!("check_images", total).entered();
    let done = AtomicUsize::new(0);
    let t0 = std::time::Instant::now();
    let bad: Vec<(PathBuf, String)> = files
        .par_iter()
        .filter_map(|&(p, spec)| {
            let r = load_image_file(p, spec);
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(10_000) {
                tracing::info!(
                    "checked {n} of {total} images ({:.0} s)",
                    t0.elapsed().as_secs_f64()
                );
            }
            r.err().map(|e| {
                let why = match e {
                    crate::DataError::Image { reason, .. } => reason,
                    other => other.to_string(),
                };
                (p.clone(), why)
            })
        })
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    if total >= 10_000 {
        tracing::info!(
            "{total} images checked in {secs:.1} s, {} undecodable",
            bad.len()
        );
    } else {
        tracing::debug!(total, bad = bad.len(), "images checked in {secs:.2} s");
    }
    bad
}
