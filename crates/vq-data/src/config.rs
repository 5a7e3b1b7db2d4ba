//! The dataset registry: a serde [`DataConfig`] (what a TOML `[data]` table holds) resolved by
//! [`load`] into train and validation datasets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::batcher::Normalization;
use crate::dataset::{Dataset, InMemoryDataset};
use crate::error::{DataError, Result};
use crate::folder::{
    load_celeba, load_class_folders, load_retinopathy, load_tiny_imagenet, FolderSplits,
};
use crate::hub::{default_repo, HubSource};
use crate::image_ops::{convert_chw, ImageSpec};

/// The datasets `data.name` can name (written in kebab-case: `fashion-mnist`, `tiny-imagenet`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// The Fashion-MNIST subset inside this crate (no files needed).
    #[default]
    Embedded,
    Mnist,
    FashionMnist,
    Cifar10,
    TinyImagenet,
    Celeba,
    Retinopathy,
    /// Any folder of class sub-folders of images.
    ImageFolder,
}

impl DatasetName {
    /// Every dataset, in the order the docs list them.
    pub const ALL: [DatasetName; 8] = [
        DatasetName::Embedded,
        DatasetName::Mnist,
        DatasetName::FashionMnist,
        DatasetName::Cifar10,
        DatasetName::TinyImagenet,
        DatasetName::Celeba,
        DatasetName::Retinopathy,
        DatasetName::ImageFolder,
    ];

    /// The name as a config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Embedded => "embedded",
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
            DatasetName::TinyImagenet => "tiny-imagenet",
            DatasetName::Celeba => "celeba",
            DatasetName::Retinopathy => "retinopathy",
            DatasetName::ImageFolder => "image-folder",
        }
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DatasetName {
    type Err = DataError;

    /// Parses a config name; an unknown one is an error listing the known ones.
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|d| d.as_str()).collect();
                DataError::config(
                    "name",
                    format!("unknown dataset `{s}`; one of {}", known.join(", ")),
                )
            })
    }
}

/// How pixels become network inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormalizeKind {
    /// `x/255 − 0.5`, as the authors' code.
    #[default]
    Center,
    /// `x/255`.
    Unit,
    /// `(x/255 − mean)/std` with `data.mean`/`data.std`, or the dataset's known statistics.
    MeanStd,
}

/// Which part of CelebA / retinopathy to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subset {
    /// The paper's subsets: CelebA 8 attributes × 1,000 images (920 train / 80 validation
    /// each); retinopathy 2,750 images with 250 validation images in proportion to the grades.
    #[default]
    Paper,
    /// Everything the files list.
    Full,
}

/// What a file-backed dataset does with an image that cannot be decoded, found when every image
/// is checked before training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadImagePolicy {
    /// Refuse the dataset, naming the first bad files.
    #[default]
    Error,
    /// Leave the bad files out ([`LoadedData::skipped`] names them).
    Skip,
}

/// A dataset: its name, where it is, and the shape its images are brought to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Which dataset; `embedded` is the Fashion-MNIST subset inside this crate.
    pub name: DatasetName,
    /// Local folder (IDX files, CIFAR-10 batches, image folders, the CelebA or retinopathy root).
    pub path: Option<PathBuf>,
    /// Hugging Face dataset repository (`owner/name`) holding parquet files. Used when `path`
    /// is not given; mnist, fashion-mnist, cifar10 and tiny-imagenet have defaults.
    pub hub_repo: Option<String>,
    /// Hub revision.
    pub hub_revision: String,
    /// Parquet files of the training split inside the repo (default: found by name).
    pub hub_train_files: Vec<String>,
    /// Parquet files of the validation split (default: found by name).
    pub hub_val_files: Vec<String>,
    /// Hub cache folder (default: `HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub hub_cache: Option<PathBuf>,
    /// Side of the square images fed to the model (resize / center-crop when different).
    pub image_size: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Input normalisation.
    pub normalize: NormalizeKind,
    /// Per-channel mean for `mean-std` (default: the dataset's known statistics).
    pub mean: Option<Vec<f32>>,
    /// Per-channel std for `mean-std`.
    pub std: Option<Vec<f32>>,
    /// Paper subset or everything (CelebA, retinopathy).
    pub subset: Subset,
    /// CelebA attributes of the paper subset, in label order.
    pub attributes: Vec<String>,
    /// Validation fraction for layouts without a split (seeded, class-proportional).
    pub val_fraction: f64,
    /// Seed of dataset splits.
    pub split_seed: u64,
    /// Retinopathy CSV (default `<path>/trainLabels.csv`).
    pub csv: Option<PathBuf>,
    /// Retinopathy image folder (default `<path>/train`).
    pub images_dir: Option<PathBuf>,
    /// Keep at most this many training examples (in file order).
    pub max_train: Option<usize>,
    /// Keep at most this many validation examples.
    pub max_val: Option<usize>,
    /// Image folders, CelebA, Tiny-ImageNet and retinopathy decode every image once before
    /// training: `error` refuses a dataset with undecodable files, `skip` leaves them out.
    pub on_bad_image: BadImagePolicy,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            name: DatasetName::Embedded,
            path: None,
            hub_repo: None,
            hub_revision: "main".into(),
            hub_train_files: Vec::new(),
            hub_val_files: Vec::new(),
            hub_cache: None,
            image_size: 28,
            channels: 1,
            normalize: NormalizeKind::Center,
            mean: None,
            std: None,
            subset: Subset::Paper,
            attributes: [
                "Bald",
                "Eyeglasses",
                "Wearing_Hat",
                "Blond_Hair",
                "Mustache",
                "Smiling",
                "Black_Hair",
                "Male",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            val_fraction: 0.1,
            split_seed: 0,
            csv: None,
            images_dir: None,
            max_train: None,
            max_val: None,
            on_bad_image: BadImagePolicy::Error,
        }
    }
}

/// Known pixel statistics (mean, std per channel) of the named datasets.
pub fn known_statistics(name: DatasetName) -> Option<(Vec<f32>, Vec<f32>)> {
    Some(match name {
        DatasetName::Mnist => (vec![0.1307], vec![0.3081]),
        DatasetName::FashionMnist | DatasetName::Embedded => (vec![0.2860], vec![0.3530]),
        DatasetName::Cifar10 => (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616]),
        DatasetName::TinyImagenet => (vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225]),
        _ => return None,
    })
}

/// Train and validation data with what is known about them.
#[derive(Clone)]
pub struct LoadedData {
    pub train: Arc<dyn Dataset>,
    pub val: Arc<dyn Dataset>,
    /// Class names (or numbers).
    pub classes: Vec<String>,
    /// Human-readable origin (file path, Hub repo, embedded).
    pub source: String,
    /// Input normalisation to use with these images.
    pub normalization: Normalization,
    /// Files left out by `on_bad_image = "skip"`, with the reason each failed to decode.
    pub skipped: Vec<(PathBuf, String)>,
}

impl DataConfig {
    /// Checks the fields that need no I/O.
    pub fn validate(&self) -> Result<ImageSpec> {
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(DataError::config(
                "val_fraction",
                format!("must lie in [0, 1), got {}", self.val_fraction),
            ));
        }
        if let Some(p) = &self.path {
            if !p.exists() {
                return Err(DataError::config(
                    "path",
                    format!("{} does not exist", p.display()),
                ));
            }
        }
        ImageSpec::new(self.image_size, self.channels)
    }

    /// The normalisation this config asks for.
    pub fn normalization(&self) -> Result<Normalization> {
        let c = self.channels;
        Ok(match self.normalize {
            NormalizeKind::Center => Normalization::center(c),
            NormalizeKind::Unit => Normalization::unit(c),
            NormalizeKind::MeanStd => {
                let (mean, std) = match (&self.mean, &self.std) {
                    (Some(m), Some(s)) => (m.clone(), s.clone()),
                    (None, None) => known_statistics(self.name).ok_or_else(|| {
                        DataError::config(
                            "mean",
                            format!(
                                "`{}` has no known statistics; give data.mean and data.std",
                                self.name
                            ),
                        )
                    })?,
                    _ => return Err(DataError::config("std", "give both data.mean and data.std")),
                };
                let fit = |v: Vec<f32>, field: &'static str| -> Result<Vec<f32>> {
                    match v.len() {
                        n if n == c => Ok(v),
                        1 => Ok(vec![v[0]; c]),
                        3 if c == 1 => Ok(vec![v.iter().sum::<f32>() / 3.0]),
                        n => Err(DataError::config(
                            field,
                            format!("{n} values for {c} channels"),
                        )),
                    }
                };
                Normalization::mean_std(&fit(mean, "mean")?, &fit(std, "std")?)?
            }
        })
    }

    fn required_path(&self) -> Result<&Path> {
        self.path.as_deref().ok_or_else(|| {
            DataError::config(
                "path",
                format!(
                    "dataset `{}` is read from a local folder; set data.path",
                    self.name
                ),
            )
        })
    }
}

fn limit(ds: InMemoryDataset, max: Option<usize>) -> InMemoryDataset {
    match max {
        Some(m) if m < ds.len() => ds.subset(&(0..m).collect::<Vec<_>>()),
        _ => ds,
    }
}

/// Brings an in-memory dataset to `spec` (no copy when it already matches).
fn fit_memory(ds: InMemoryDataset, spec: &ImageSpec) -> InMemoryDataset {
    let shape = ds.shape();
    if shape == spec.shape() {
        return ds;
    }
    let pixels: Vec<Vec<u8>> = ds
        .pixels()
        .collect::<Vec<_>>()
        .par_iter()
        .map(|p| convert_chw(p, shape, spec))
        .collect();
    InMemoryDataset::new(spec.shape(), pixels.concat(), ds.labels())
}

/// Training and validation sets, class names, and the files left out as undecodable.
type FolderData = (
    Arc<dyn Dataset>,
    Arc<dyn Dataset>,
    Vec<String>,
    Vec<(PathBuf, String)>,
);

/// The splits of a file-backed dataset, truncated to `max` and with every image checked by a
/// full decode: an undecodable file is an error naming the first ones, or (with
/// [`BadImagePolicy::Skip`]) is left out and returned in the third element.
fn folder_data(
    s: FolderSplits,
    max: (Option<usize>, Option<usize>),
    policy: BadImagePolicy,
) -> Result<FolderData> {
    let (train, val) = (s.train.truncated(max.0), s.val.truncated(max.1));
    let bad = crate::dataset::check_images(&[&train, &val]);
    if !bad.is_empty() && policy == BadImagePolicy::Error {
        return Err(DataError::BadImages {
            count: bad.len(),
            first: bad
                .iter()
                .take(5)
                .map(|(p, why)| format!("{} ({why})", p.display()))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let drop: std::collections::HashSet<&Path> = bad.iter().map(|(p, _)| p.as_path()).collect();
    let (train, val) = (train.without(&drop), val.without(&drop));
    Ok((Arc::new(train), Arc::new(val), s.classes, bad))
}

/// Loads the dataset a config names.
pub fn load(cfg: &DataConfig) -> Result<LoadedData> {
    let spec = cfg.validate()?;
    let normalization = cfg.normalization()?;
    let max = (cfg.max_train, cfg.max_val);
    let memory = |(tr, va): (InMemoryDataset, InMemoryDataset),
                  source: String,
                  classes: Vec<String>|
     -> LoadedData {
        let tr = fit_memory(limit(tr, max.0), &spec);
        let va = fit_memory(limit(va, max.1), &spec);
        LoadedData {
            train: Arc::new(tr),
            val: Arc::new(va),
            classes,
            source,
            normalization: normalization.clone(),
            skipped: Vec::new(),
        }
    };
    let numbered = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>();
    let name = cfg.name;
    if name == DatasetName::Embedded {
        return Ok(memory(
            crate::embedded::embedded_fashion_mnist()?,
            "embedded Fashion-MNIST subset (6,000 train + 1,000 test, MIT license)".into(),
            numbered(10),
        ));
    }
    let from_hub = |repo: String| -> Result<LoadedData> {
        let hub = HubSource {
            repo: repo.clone(),
            revision: cfg.hub_revision.clone(),
            train_files: cfg.hub_train_files.clone(),
            val_files: cfg.hub_val_files.clone(),
            cache_dir: cfg.hub_cache.clone(),
            endpoint: None,
        };
        let (tr, va) = hub.load(spec, max)?;
        let classes = numbered(
            tr.labels()
                .iter()
                .chain(va.labels().iter())
                .max()
                .map_or(1, |&m| m as usize + 1),
        );
        Ok(memory(
            (tr, va),
            format!("hub:{repo}@{}", cfg.hub_revision),
            classes,
        ))
    };
    if cfg.path.is_none() {
        if let Some(repo) = cfg
            .hub_repo
            .clone()
            .or_else(|| default_repo(name).map(String::from))
        {
            return from_hub(repo);
        }
    }
    let path = cfg.required_path()?;
    let source = path.display().to_string();
    let policy = cfg.on_bad_image;
    let (train, val, classes, skipped) = match name {
        DatasetName::Mnist | DatasetName::FashionMnist => {
            return Ok(memory(
                crate::idx::load_idx_dir(path)?,
                source,
                numbered(10),
            ))
        }
        DatasetName::Cifar10 => {
            return Ok(memory(
                crate::cifar::load_cifar_dir(path)?,
                source,
                numbered(10),
            ))
        }
        DatasetName::TinyImagenet => folder_data(load_tiny_imagenet(path, spec)?, max, policy)?,
        DatasetName::Celeba => {
            let per = (cfg.subset == Subset::Paper).then_some((1000, 80));
            folder_data(
                load_celeba(
                    path,
                    spec,
                    &cfg.attributes,
                    per,
                    cfg.val_fraction,
                    cfg.split_seed,
                )?,
                max,
                policy,
            )?
        }
        DatasetName::Retinopathy => {
            let csv = cfg
                .csv
                .clone()
                .unwrap_or_else(|| path.join("trainLabels.csv"));
            let dir = cfg.images_dir.clone().unwrap_or_else(|| path.join("train"));
            let subset = (cfg.subset == Subset::Paper).then_some((2750, 250));
            folder_data(
                load_retinopathy(&csv, &dir, spec, subset, cfg.val_fraction, cfg.split_seed)?,
                max,
                policy,
            )?
        }
        DatasetName::ImageFolder => folder_data(
            load_class_folders(path, spec, cfg.val_fraction, cfg.split_seed)?,
            max,
            policy,
        )?,
        DatasetName::Embedded => unreachable!("returned above"),
    };
    if train.is_empty() || val.is_empty() {
        return Err(DataError::Empty {
            path: path.into(),
            reason: format!(
                "{} training and {} validation images; both splits need at least one",
                train.len(),
                val.len()
            ),
        });
    }
    Ok(LoadedData {
        train,
        val,
        classes,
        source,
        normalization,
        skipped,
    })
}
