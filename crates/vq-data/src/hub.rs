//! Hugging Face Hub datasets stored as parquet: cache lookup first (so a populated cache works
//! offline), download otherwise, images decoded from the `image.bytes` column.
//!
//! The cache follows the Hub layout `<cache>/datasets--owner--name/{refs/<rev>, snapshots/<hash>/…}`
//! and is found from `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`
//! (or an explicit folder).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::DatasetName;
use crate::dataset::InMemoryDataset;
use crate::error::{DataError, Result};
use crate::image_ops::{decode_image, to_spec, ImageSpec};

/// Where a Hub dataset comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubSource {
    /// `owner/name` of the dataset repository.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// Parquet files of the training split (paths inside the repo); empty: every cached or listed
    /// `*.parquet` whose path contains `train`.
    pub train_files: Vec<String>,
    /// Parquet files of the validation split; empty: paths containing `test`, `valid` or `val`.
    pub val_files: Vec<String>,
    /// Cache folder (the `hub/` level); `None`: from the environment.
    pub cache_dir: Option<PathBuf>,
    /// Hub endpoint; `None`: `HF_ENDPOINT` or `https://huggingface.co`.
    pub endpoint: Option<String>,
}

impl Default for HubSource {
    fn default() -> Self {
        Self {
            repo: String::new(),
            revision: "main".into(),
            train_files: Vec::new(),
            val_files: Vec::new(),
            cache_dir: None,
            endpoint: None,
        }
    }
}

/// The default Hub repository of each named dataset.
pub fn default_repo(dataset: DatasetName) -> Option<&'static str> {
    Some(match dataset {
        DatasetName::Mnist => "ylecun/mnist",
        DatasetName::FashionMnist => "zalando-datasets/fashion_mnist",
        DatasetName::Cifar10 => "uoft-cs/cifar10",
        DatasetName::TinyImagenet => "zh-plus/tiny-imagenet",
        _ => return None,
    })
}

impl HubSource {
    /// The cache folder used: the explicit one, else `HF_HUB_CACHE`, else `HF_HOME/hub`, else the
    /// user's default.
    pub fn cache_path(&self) -> PathBuf {
        if let Some(d) = &self.cache_dir {
            return d.clone();
        }
        if let Ok(d) = std::env::var("HF_HUB_CACHE") {
            return PathBuf::from(d);
        }
        Cache::from_env().path().clone()
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.repo.clone(), RepoType::Dataset, self.revision.clone())
    }

    fn hub_error(&self, file: &str, reason: impl Into<String>) -> DataError {
        DataError::Hub {
            repo: self.repo.clone(),
            revision: self.revision.clone(),
            file: file.into(),
            cache: self.cache_path(),
            reason: reason.into(),
        }
    }

    /// The Hub client: this cache, the explicit endpoint or `HF_ENDPOINT`.
    fn api(&self, file: &str) -> Result<hf_hub::api::sync::Api> {
        let mut builder =
            ApiBuilder::from_cache(Cache::new(self.cache_path())).with_progress(false);
        if let Some(e) = self
            .endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
        {
            builder = builder.with_endpoint(e);
        }
        builder
            .build()
            .map_err(|e| self.hub_error(file, e.to_string()))
    }

    /// The cached snapshot folder of this revision: `refs/<revision>` (trimmed) names it, or the
    /// revision is itself a commit hash.
    fn snapshot_dir(&self) -> Option<PathBuf> {
        let root = self.cache_path().join(self.repo().folder_name());
        let hash = match std::fs::read_to_string(root.join("refs").join(&self.revision)) {
            Ok(h) => h.trim().to_string(),
            Err(_)
                if self.revision.len() == 40
                    && self.revision.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                self.revision.clone()
            }
            Err(_) => return None,
        };
        let dir = root.join("snapshots").join(hash);
        dir.is_dir().then_some(dir)
    }

    /// Local path of `file`: from the cache when present, downloaded into it otherwise.
    pub fn fetch(&self, file: &str) -> Result<PathBuf> {
        if let Some(p) = self
            .snapshot_dir()
            .map(|d| d.join(file))
            .filter(|p| p.is_file())
        {
            return Ok(p);
        }
        self.api(file)?
            .repo(self.repo())
            .download(file)
            .map_err(|e| {
                self.hub_error(
                    file,
                    format!("not in the cache, and the download failed: {e}"),
                )
            })
    }

    /// Parquet files of the cached snapshot of this revision (relative paths), if any.
    fn cached_parquet_files(&self) -> Vec<String> {
        let Some(snap) = self.snapshot_dir() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut stack = vec![snap.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    if let Ok(rel) = p.strip_prefix(&snap) {
                        out.push(rel.to_string_lossy().replace('\\', "/"));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Parquet files of the repo listed by the Hub API (online only).
    fn listed_parquet_files(&self) -> Result<Vec<String>> {
        let api = self.api("*.parquet")?;
        let info = api.repo(self.repo()).info().map_err(|e| {
            self.hub_error(
                "*.parquet",
                format!("nothing cached and the file list could not be fetched: {e}"),
            )
        })?;
        Ok(info
            .siblings
            .into_iter()
            .map(|s| s.rfilename)
            .filter(|f| f.ends_with(".parquet"))
            .collect::<Vec<_>>())
        .map(|mut v| {
            // Sorted like the cached list, so both give the same example order.
            v.sort();
            v
        })
    }

    /// Files of a split: the configured ones, else matched by keyword among cached or listed
    /// parquet files.
    pub fn split_files(&self, train: bool) -> Result<Vec<String>> {
        let given = if train {
            &self.train_files
        } else {
            &self.val_files
        };
        if !given.is_empty() {
            return Ok(given.clone());
        }
        let keys: &[&str] = if train {
            &["train"]
        } else {
            &["test", "valid", "val"]
        };
        let pick = |all: Vec<String>| -> Vec<String> {
            all.into_iter()
                .filter(|f| {
                    let name = f.rsplit('/').next().unwrap_or(f).to_ascii_lowercase();
                    keys.iter().any(|k| {
                        name.starts_with(k) || f.to_ascii_lowercase().contains(&format!("/{k}"))
                    })
                })
                .collect()
        };
        // The cached snapshot first; when it lacks this split, the repository's file list.
        let mut picked = pick(self.cached_parquet_files());
        if picked.is_empty() {
            picked = pick(self.listed_parquet_files()?);
        }
        if picked.is_empty() {
            return Err(self.hub_error(
                if train {
                    "train*.parquet"
                } else {
                    "test*/valid*.parquet"
                },
                "no parquet file of this split found; name them in hub train_files / val_files",
            ));
        }
        Ok(picked)
    }

    /// Loads both splits, decoding every image to `spec`.
    pub fn load(
        &self,
        spec: ImageSpec,
        limit: (Option<usize>, Option<usize>),
    ) -> Result<(InMemoryDataset, InMemoryDataset)> {
        let mut splits = Vec::new();
        for (train, lim) in [(true, limit.0), (false, limit.1)] {
            let mut parts = Vec::new();
            for f in self.split_files(train)? {
                let path = self.fetch(&f)?;
                let rows = read_image_parquet(&path)?;
                parts.push((path, rows));
            }
            let mut rows: Vec<(Arc<Vec<u8>>, u32, PathBuf, usize)> = Vec::new();
            for (path, part) in parts {
                for (i, (bytes, label)) in part.into_iter().enumerate() {
                    rows.push((Arc::new(bytes), label, path.clone(), i));
                }
            }
            if let Some(l) = lim {
                rows.truncate(l);
            }
            let decoded: Vec<Vec<u8>> = rows
                .par_iter()
                .map(|(bytes, _, path, i)| {
                    decode_image(bytes, path)
                        .map(|img| to_spec(img, &spec))
                        .map_err(|e| DataError::row(path, *i, e.to_string()))
                })
                .collect::<Result<_>>()?;
            let labels = rows.iter().map(|r| r.1).collect();
            splits.push(InMemoryDataset::new(spec.shape(), decoded.concat(), labels));
        }
        let val = splits.pop().expect("two splits");
        let train = splits.pop().expect("two splits");
        Ok((train, val))
    }
}

fn field_int(f: &Field) -> Option<i64> {
    Some(match *f {
        Field::Byte(v) => v as i64,
        Field::Short(v) => v as i64,
        Field::Int(v) => v as i64,
        Field::Long(v) => v,
        Field::UByte(v) => v as i64,
        Field::UShort(v) => v as i64,
        Field::UInt(v) => v as i64,
        Field::ULong(v) => v as i64,
        _ => return None,
    })
}

/// Reads `(encoded image bytes, label)` rows of a Hugging Face image parquet file: the image
/// column is a struct with a binary `bytes` field (the `datasets` `Image` feature) or a binary
/// column named `image`/`img`; the label is the integer column `label`/`labels`/`fine_label`
/// (else the first integer column, else 0).
pub fn read_image_parquet(path: &Path) -> Result<Vec<(Vec<u8>, u32)>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| DataError::format(path, format!("not a readable parquet file: {e}")))?;
    let n_rows = reader.metadata().file_metadata().num_rows().max(0) as usize;
    let mut out = Vec::with_capacity(n_rows);
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| DataError::format(path, format!("cannot read parquet rows: {e}")))?;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| DataError::row(path, i, e.to_string()))?;
        let mut image: Option<Vec<u8>> = None;
        let (mut label, mut any_int): (Option<i64>, Option<i64>) = (None, None);
        for (name, field) in row.get_column_iter() {
            let lname = name.to_ascii_lowercase();
            match field {
                Field::Group(g) if image.is_none() => {
                    for (n, f) in g.get_column_iter() {
                        if n == "bytes" {
                            if let Field::Bytes(b) = f {
                                image = Some(b.data().to_vec());
                            }
                        }
                    }
                }
                Field::Bytes(b) if image.is_none() && (lname == "image" || lname == "img") => {
                    image = Some(b.data().to_vec());
                }
                f => {
                    if let Some(v) = field_int(f) {
                        if matches!(lname.as_str(), "label" | "labels" | "fine_label") {
                            label = Some(v);
                        } else if any_int.is_none() {
                            any_int = Some(v);
                        }
                    }
                }
            }
        }
        let Some(image) = image else {
            return Err(DataError::row(
                path,
                i,
                "no image column (expected a struct with a binary `bytes` field, or a binary `image` column)",
            ));
        };
        let label = label.or(any_int).unwrap_or(0);
        if !(0..=u32::MAX as i64).contains(&label) {
            return Err(DataError::row(
                path,
                i,
                format!("label {label} is negative or too large"),
            ));
        }
        out.push((image, label as u32));
    }
    Ok(out)
}

/// Writes `(encoded image, label)` rows as a Hugging Face style image parquet file
/// (`image: struct<bytes: binary, path: string>, label: int64`), e.g. to export a dataset for
/// the Hub or to build a test cache.
pub fn write_image_parquet(path: &Path, rows: &[(Vec<u8>, u32)]) -> Result<()> {
    let schema = parquet::schema::parser::parse_message_type(
        "message schema {
            optional group image {
                optional binary bytes;
                optional binary path (UTF8);
            }
            optional int64 label;
        }",
    )
    .map_err(|e| DataError::format(path, e.to_string()))?;
    let perr =
        |e: parquet::errors::ParquetError| DataError::format(path, format!("parquet write: {e}"));
    let file = File::create(path).map_err(|e| DataError::io(path, e))?;
    let props = Arc::new(WriterProperties::builder().build());
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), props).map_err(perr)?;
    let mut rg = writer.next_row_group().map_err(perr)?;
    let n = rows.len();
    // Column 1: image.bytes (definition level 2 = both the group and the field present).
    let bytes: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(r.0.clone())).collect();
    let mut col = rg.next_column().map_err(perr)?.expect("image.bytes column");
    col.typed::<ByteArrayType>()
        .write_batch(&bytes, Some(&vec![2i16; n]), None)
        .map_err(perr)?;
    col.close().map_err(perr)?;
    // Column 2: image.path, null (definition level 1: group present, field absent).
    let mut col = rg.next_column().map_err(perr)?.expect("image.path column");
    col.typed::<ByteArrayType>()
        .write_batch(&[], Some(&vec![1i16; n]), None)
        .map_err(perr)?;
    col.close().map_err(perr)?;
    // Column 3: label.
    let labels: Vec<i64> = rows.iter().map(|r| r.1 as i64).collect();
    let mut col = rg.next_column().map_err(perr)?.expect("label column");
    col.typed::<Int64Type>()
        .write_batch(&labels, Some(&vec![1i16; n]), None)
        .map_err(perr)?;
    col.close().map_err(perr)?;
    rg.close().map_err(perr)?;
    writer.close().map_err(perr)?;
    Ok(())
}
