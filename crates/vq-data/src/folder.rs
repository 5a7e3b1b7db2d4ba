//! Image-folder layouts: class-per-folder (with or without `train/` + `val/`), Tiny-ImageNet,
//! CelebA (`img_align_celeba/` + `list_attr_celeba.txt`) and the Kaggle retinopathy CSV.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dataset::ImageFileDataset;
use crate::error::{DataError, Result};
use crate::image_ops::ImageSpec;

/// File extensions read as images (PNG and JPEG, any case).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// A train/validation pair of file-backed datasets and the class names.
#[derive(Clone, Debug)]
pub struct FolderSplits {
    pub train: ImageFileDataset,
    pub val: ImageFileDataset,
    pub classes: Vec<String>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| DataError::io(dir, e)))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

/// Image files directly in `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| p.is_file() && is_image(p))
        .collect())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect())
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Chooses `n_val` examples spread over the labels in proportion to their frequency (largest
/// remainder rounding), seeded; returns a validation mask.
pub fn proportional_holdout(labels: &[u32], n_val: usize, seed: u64) -> Vec<bool> {
    let n = labels.len();
    let n_val = n_val.min(n);
    let mut by_label: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by_label.entry(l).or_default().push(i);
    }
    // Quotas: floor of the exact share, then the largest remainders (ties: smaller label).
    let mut quotas: Vec<(u32, usize, f64)> = by_label
        .iter()
        .map(|(&l, idx)| {
            let exact = n_val as f64 * idx.len() as f64 / n.max(1) as f64;
            (l, exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let mut left = n_val - quotas.iter().map(|q| q.1).sum::<usize>();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    order.sort_by(|&a, &b| quotas[b].2.total_cmp(&quotas[a].2).then(a.cmp(&b)));
    for i in order {
        if left == 0 {
            break;
        }
        quotas[i].1 += 1;
        left -= 1;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut mask = vec![false; n];
    for (l, q, _) in quotas {
        let mut idx = by_label[&l].clone();
        idx.shuffle(&mut rng);
        for &i in idx.iter().take(q) {
            mask[i] = true;
        }
    }
    mask
}

fn split_by_mask(
    files: Vec<(PathBuf, u32)>,
    mask: &[bool],
    spec: ImageSpec,
) -> (ImageFileDataset, ImageFileDataset) {
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for (f, &m) in files.into_iter().zip(mask) {
        if m {
            va.push(f)
        } else {
            tr.push(f)
        }
    }
    (
        ImageFileDataset::new(tr, spec),
        ImageFileDataset::new(va, spec),
    )
}

fn class_files(dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, u32)>> {
    let mut files = Vec::new();
    for class_dir in subdirs(dir)? {
        let name = name_of(&class_dir);
        let label = classes
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| DataError::Format {
                path: class_dir.clone(),
                reason: format!("class folder `{name}` does not exist in the training split"),
            })? as u32;
        for f in list_images(&class_dir)? {
            files.push((f, label));
        }
    }
    Ok(files)
}

/// `root/<class>/*.png|jpg` (seeded, class-proportional validation fraction), or
/// `root/train/<class>/*` + `root/val/<class>/*` when both exist.
pub fn load_class_folders(
    root: &Path,
    spec: ImageSpec,
    val_fraction: f64,
    seed: u64,
) -> Result<FolderSplits> {
    let (train_dir, val_dir) = (root.join("train"), root.join("val"));
    let split = train_dir.is_dir() && val_dir.is_dir();
    let class_root = if split {
        train_dir.clone()
    } else {
        root.to_path_buf()
    };
    if !class_root.is_dir() {
        return Err(DataError::Empty {
            path: root.into(),
            reason: "is not a folder".into(),
        });
    }
    let classes: Vec<String> = subdirs(&class_root)?.iter().map(|p| name_of(p)).collect();
    if classes.is_empty() {
        return Err(DataError::Empty {
            path: class_root,
            reason: "no class folders (expected <root>/<class>/*.png or *.jpg)".into(),
        });
    }
    let files = class_files(&class_root, &classes)?;
    if files.is_empty() {
        return Err(DataError::Empty {
            path: class_root,
            reason: "the class folders hold no .png/.jpg/.jpeg image".into(),
        });
    }
    if split {
        let val_files = class_files(&val_dir, &classes)?;
        if val_files.is_empty() {
            return Err(DataError::Empty {
                path: val_dir,
                reason: "the validation class folders hold no image".into(),
            });
        }
        return Ok(FolderSplits {
            train: ImageFileDataset::new(files, spec),
            val: ImageFileDataset::new(val_files, spec),
            classes,
        });
    }
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(DataError::config(
            "val_fraction",
            format!("must lie in [0, 1), got {val_fraction}"),
        ));
    }
    let labels: Vec<u32> = files.iter().map(|f| f.1).collect();
    let n_val = ((files.len() as f64) * val_fraction).round() as usize;
    let mask = proportional_holdout(&labels, n_val, seed);
    let (train, val) = split_by_mask(files, &mask, spec);
    Ok(FolderSplits {
        train,
        val,
        classes,
    })
}

/// Tiny-ImageNet: `train/<wnid>/images/*.JPEG`, `val/images/*` labelled by
/// `val/val_annotations.txt` (`file<TAB>wnid<TAB>…`). Classes are the sorted wnids.
pub fn load_tiny_imagenet(root: &Path, spec: ImageSpec) -> Result<FolderSplits> {
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(DataError::Empty {
            path: root.into(),
            reason:
                "no train/ folder (expected the Tiny-ImageNet layout train/<wnid>/images/*.JPEG)"
                    .into(),
        });
    }
    let wnid_dirs = subdirs(&train_dir)?;
    let classes: Vec<String> = wnid_dirs.iter().map(|p| name_of(p)).collect();
    let mut train = Vec::new();
    for (label, d) in wnid_dirs.iter().enumerate() {
        let imgs = if d.join("images").is_dir() {
            d.join("images")
        } else {
            d.clone()
        };
        for f in list_images(&imgs)? {
            train.push((f, label as u32));
        }
    }
    if train.is_empty() {
        return Err(DataError::Empty {
            path: train_dir,
            reason: "no training image under train/<wnid>/images/".into(),
        });
    }
    let ann = root.join("val").join("val_annotations.txt");
    let text = std::fs::read_to_string(&ann).map_err(|e| DataError::io(&ann, e))?;
    let mut val = Vec::new();
    for (row, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = line.split('\t');
        let (Some(file), Some(wnid)) = (cols.next(), cols.next()) else {
            return Err(DataError::row(
                &ann,
                row + 1,
                "expected `file<TAB>wnid<TAB>…`",
            ));
        };
        let label = classes.iter().position(|c| c == wnid).ok_or_else(|| {
            DataError::row(&ann, row + 1, format!("wnid {wnid} has no train/ folder"))
        })?;
        let path = root.join("val").join("images").join(file);
        if !path.is_file() {
            return Err(DataError::row(
                &ann,
                row + 1,
                format!("image {} does not exist", path.display()),
            ));
        }
        val.push((path, label as u32));
    }
    if val.is_empty() {
        return Err(DataError::Empty {
            path: ann,
            reason: "lists no validation image".into(),
        });
    }
    Ok(FolderSplits {
        train: ImageFileDataset::new(train, spec),
        val: ImageFileDataset::new(val, spec),
        classes,
    })
}

/// The CelebA subset of the paper: for each attribute in order, the first `per_attribute`
/// images (file order) that have it and were not taken by an earlier attribute; the last
/// `val_per_attribute` of each group are validation. Label = attribute position.
/// With `per_attribute = None` every image is used (label 0) and `list_eval_partition.txt`
/// (partition 1) gives validation, or else a seeded `val_fraction`.
pub fn load_celeba(
    root: &Path,
    spec: ImageSpec,
    attributes: &[String],
    per_attribute: Option<(usize, usize)>,
    val_fraction: f64,
    seed: u64,
) -> Result<FolderSplits> {
    let img_dir = root.join("img_align_celeba");
    if !img_dir.is_dir() {
        return Err(DataError::Empty {
            path: root.into(),
            reason: "no img_align_celeba/ folder".into(),
        });
    }
    let attr_path = root.join("list_attr_celeba.txt");
    let text = std::fs::read_to_string(&attr_path).map_err(|e| DataError::io(&attr_path, e))?;
    let mut lines = text.lines();
    let _count = lines.next();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| DataError::format(&attr_path, "missing the attribute-name line"))?
        .split_whitespace()
        .collect();
    let rows: Vec<(usize, Vec<&str>)> = lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 3, l.split_whitespace().collect()))
        .collect();
    let image_of = |row: usize, cols: &[&str]| -> Result<PathBuf> {
        let p = img_dir.join(cols[0]);
        if p.is_file() {
            Ok(p)
        } else {
            Err(DataError::row(
                &attr_path,
                row,
                format!("image {} does not exist", p.display()),
            ))
        }
    };
    match per_attribute {
        Some((per, n_val)) => {
            if n_val > per {
                return Err(DataError::config(
                    "celeba_val_per_attribute",
                    "exceeds images per attribute",
                ));
            }
            let cols: Vec<usize> = attributes
                .iter()
                .map(|a| {
                    header.iter().position(|h| h == a).ok_or_else(|| {
                        DataError::config(
                            "attributes",
                            format!(
                                "CelebA has no attribute `{a}` (see {})",
                                attr_path.display()
                            ),
                        )
                    })
                })
                .collect::<Result<_>>()?;
            let mut taken = vec![false; rows.len()];
            let (mut train, mut val) = (Vec::new(), Vec::new());
            for (label, &col) in cols.iter().enumerate() {
                let mut group = Vec::new();
                for (k, (row, c)) in rows.iter().enumerate() {
                    if group.len() == per {
                        break;
                    }
                    if c.len() != header.len() + 1 {
                        return Err(DataError::row(
                            &attr_path,
                            *row,
                            format!("{} columns, expected {}", c.len(), header.len() + 1),
                        ));
                    }
                    if !taken[k] && c[col + 1] == "1" {
                        taken[k] = true;
                        group.push((image_of(*row, c)?, label as u32));
                    }
                }
                if group.len() < per {
                    return Err(DataError::config(
                        "attributes",
                        format!(
                            "only {} unused images have `{}`, {per} needed",
                            group.len(),
                            attributes[label]
                        ),
                    ));
                }
                let cut = per - n_val;
                val.extend(group.split_off(cut));
                train.extend(group);
            }
            Ok(FolderSplits {
                train: ImageFileDataset::new(train, spec),
                val: ImageFileDataset::new(val, spec),
                classes: attributes.to_vec(),
            })
        }
        None => {
            let files: Vec<(PathBuf, u32)> = rows
                .iter()
                .map(|(row, c)| Ok((image_of(*row, c)?, 0)))
                .collect::<Result<_>>()?;
            let part = root.join("list_eval_partition.txt");
            let mask: Vec<bool> = if part.is_file() {
                let t = std::fs::read_to_string(&part).map_err(|e| DataError::io(&part, e))?;
                let map: BTreeMap<&str, &str> = t
                    .lines()
                    .filter_map(|l| l.split_once(char::is_whitespace))
                    .collect();
                files
                    .iter()
                    .map(|(p, _)| map.get(name_of(p).as_str()).map(|s| s.trim()) == Some("1"))
                    .collect()
            } else {
                let labels = vec![0u32; files.len()];
                proportional_holdout(
                    &labels,
                    (files.len() as f64 * val_fraction).round() as usize,
                    seed,
                )
            };
            let (train, val) = split_by_mask(files, &mask, spec);
            Ok(FolderSplits {
                train,
                val,
                classes: vec!["face".into()],
            })
        }
    }
}

/// Kaggle diabetic-retinopathy layout: a CSV with `image` and `level` columns; images in
/// `images_dir` as `<image>`, `<image>.jpeg`, `.jpg` or `.png`. With `subset = Some((total,
/// n_val))` the first `total` rows are used and `n_val` of them, spread over the grades in
/// proportion (seeded), are validation.
pub fn load_retinopathy(
    csv: &Path,
    images_dir: &Path,
    spec: ImageSpec,
    subset: Option<(usize, usize)>,
    val_fraction: f64,
    seed: u64,
) -> Result<FolderSplits> {
    let text = std::fs::read_to_string(csv).map_err(|e| DataError::io(csv, e))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| DataError::format(csv, "empty CSV"))?;
    let cols: Vec<&str> = header.split(',').map(|c| c.trim()).collect();
    let col = |name: &str| {
        cols.iter().position(|c| *c == name).ok_or_else(|| {
            DataError::format(
                csv,
                format!("header has no `{name}` column (found {cols:?})"),
            )
        })
    };
    let (ci, cl) = (col("image")?, col("level")?);
    let mut files = Vec::new();
    for (i, line) in lines {
        if let Some((total, _)) = subset {
            if files.len() == total {
                break;
            }
        }
        let row = i + 1;
        let f: Vec<&str> = line.split(',').map(|c| c.trim()).collect();
        if f.len() <= ci.max(cl) {
            return Err(DataError::row(
                csv,
                row,
                format!("{} columns, expected {}", f.len(), cols.len()),
            ));
        }
        let level: u32 = f[cl].parse().ok().filter(|&l| l <= 4).ok_or_else(|| {
            DataError::row(csv, row, format!("level `{}` is not a grade 0-4", f[cl]))
        })?;
        let path = ["", ".jpeg", ".jpg", ".png"]
            .iter()
            .map(|ext| images_dir.join(format!("{}{ext}", f[ci])))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                DataError::row(
                    csv,
                    row,
                    format!(
                        "image `{}` not found in {} (tried no extension, .jpeg, .jpg, .png)",
                        f[ci],
                        images_dir.display()
                    ),
                )
            })?;
        files.push((path, level));
    }
    if files.is_empty() {
        return Err(DataError::Empty {
            path: csv.into(),
            reason: "lists no image".into(),
        });
    }
    let n_val = match subset {
        Some((total, n_val)) => {
            if files.len() < total {
                return Err(DataError::config(
                    "subset",
                    format!(
                        "the paper's retinopathy subset needs {total} rows, {} has {}",
                        csv.display(),
                        files.len()
                    ),
                ));
            }
            n_val
        }
        None => (files.len() as f64 * val_fraction).round() as usize,
    };
    let labels: Vec<u32> = files.iter().map(|f| f.1).collect();
    let mask = proportional_holdout(&labels, n_val, seed);
    let (train, val) = split_by_mask(files, &mask, spec);
    Ok(FolderSplits {
        train,
        val,
        classes: (0..5).map(|g| format!("grade {g}")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_proportional_and_seeded() {
        // 2750 labels, grades with 2000/300/250/150/50 → 250 validation.
        let mut labels = Vec::new();
        for (g, n) in [(0u32, 2000usize), (1, 300), (2, 250), (3, 150), (4, 50)] {
            labels.extend(std::iter::repeat_n(g, n));
        }
        let m = proportional_holdout(&labels, 250, 3);
        assert_eq!(m.iter().filter(|&&v| v).count(), 250);
        // Exact shares 181.82, 27.27, 22.73, 13.64, 4.55 → floors 181+27+22+13+4 = 247, the 3
        // largest remainders (0.82 g0, 0.73 g2, 0.64 g3) get one more: 182, 27, 23, 14, 4.
        let per: Vec<usize> = (0..5)
            .map(|g| labels.iter().zip(&m).filter(|(&l, &v)| v && l == g).count())
            .collect();
        assert_eq!(per, vec![182, 27, 23, 14, 4]);
        assert_eq!(m, proportional_holdout(&labels, 250, 3));
        assert_ne!(m, proportional_holdout(&labels, 250, 4));
    }
}
