//! The [`Dataset`] trait and the in-memory and lazily decoded image datasets behind every loader.

use std::path::PathBuf;
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
