//! The run configuration: `[data]`, `[model]` and `[train]` tables from a TOML file plus
//! `--set key=value` overrides, validated before anything is trained.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vq_core::TauSchedule;
use vq_data::DataConfig;
use vq_models::ModelConfig;

use crate::error::{Result, TrainError};

/// What to do when the loss or a gradient is NaN or infinite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonFinitePolicy {
    /// Stop with an error naming the step and the tensor (the last checkpoint stays intact).
    #[default]
    Stop,
    /// Skip the batch (no parameter update) and count it in the metrics.
    Skip,
}

/// The `[train]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainParams {
    /// Optimisation steps (the paper: 20,000).
    pub steps: usize,
    /// Examples per batch.
    pub batch_size: usize,
    /// Adam learning rate (the paper: 1e-4).
    pub lr: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Seed of the weights, the shuffles and the Gumbel noise.
    pub seed: u64,
    /// Gumbel-Softmax temperature schedule (validation always uses τ = 1).
    pub tau: TauSchedule,
    /// Steps between metrics lines (interval means).
    pub log_every: usize,
    /// Steps between gradient-gap measurements (0: never).
    pub gap_every: usize,
    /// Steps between validation passes (0: only at the end).
    pub val_every: usize,
    /// Validation batches per pass (0: the whole validation set, the paper's "one pass").
    pub val_batches: usize,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: usize,
    /// NaN/Inf handling.
    pub on_nonfinite: NonFinitePolicy,
    /// `cpu`, `cuda` / `cuda:N` (feature `cuda`) or `metal` (feature `metal`).
    pub device: String,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// Write plots and a reconstruction grid when the run ends.
    pub report: bool,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            steps: 20_000,
            batch_size: 64,
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            seed: 0,
            tau: TauSchedule::Paper,
            log_every: 50,
            gap_every: 50,
            val_every: 1000,
            val_batches: 0,
            checkpoint_every: 1000,
            on_nonfinite: NonFinitePolicy::Stop,
            device: "cpu".into(),
            progress: true,
            report: true,
        }
    }
}

/// The hyper-parameters of `[train]`: fixed when a run starts (with `[data]` and `[model]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HyperParams {
    pub batch_size: usize,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub seed: u64,
    pub tau: TauSchedule,
}

/// The run controls of `[train]`: how a run is driven and observed. A resumed run may change
/// them (a longer `steps` keeps the τ horizon of the run's start).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunControls {
    pub steps: usize,
    pub log_every: usize,
    pub gap_every: usize,
    pub val_every: usize,
    pub val_batches: usize,
    pub checkpoint_every: usize,
    pub on_nonfinite: NonFinitePolicy,
    pub device: String,
    pub progress: bool,
    pub report: bool,
}

impl TrainParams {
    /// The table split into its hyper-parameters and its run controls (every field is one or
    /// the other: a new field does not compile until it is placed).
    pub fn split(&self) -> (HyperParams, RunControls) {
        let TrainParams {
            steps,
            batch_size,
            lr,
            beta1,
            beta2,
            eps,
            seed,
            tau,
            log_every,
            gap_every,
            val_every,
            val_batches,
            checkpoint_every,
            on_nonfinite,
            device,
            progress,
            report,
        } = self.clone();
        let hyper = HyperParams {
            batch_size,
            lr,
            beta1,
            beta2,
            eps,
            seed,
            tau,
        };
        let controls = RunControls {
            steps,
            log_every,
            gap_every,
            val_every,
            val_batches,
            checkpoint_every,
            on_nonfinite,
            device,
            progress,
            report,
        };
        (hyper, controls)
    }
}

/// What a run keeps from its start to its end: a resumed run's config must have the same.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrozenConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    /// `[train]` without its run controls.
    pub train: HyperParams,
}

/// A whole run configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainParams,
}

/// `(key.path, value)` of every leaf of `v`.
fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// The leaves of `v` serialised as TOML.
fn leaves(v: &impl Serialize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    flatten("", &toml::Value::try_from(v).expect("serialises"), &mut out);
    out
}

/// Keys (`section.field`) whose values differ between two configs (or config parts).
pub fn config_diff<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    let (fa, fb) = (leaves(a), leaves(b));
    let mut keys: Vec<String> = fa.iter().chain(&fb).map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    let value =
        |f: &[(String, String)], k: &str| f.iter().find(|(x, _)| x == k).map(|p| p.1.clone());
    keys.into_iter()
        .filter(|k| value(&fa, k) != value(&fb, k))
        .collect()
}

/// The keys of the run controls (`train.steps`, …): what a resumed run may change.
pub fn run_control_keys() -> Vec<String> {
    leaves(&TrainParams::default().split().1)
        .into_iter()
        .map(|(k, _)| format!("train.{k}"))
        .collect()
}

const SECTIONS: &[&str] = &["data", "model", "train"];

/// Applies `key.path=value` to a TOML table; the value is read as a TOML literal (number,
/// boolean, array, inline table, quoted string) or else taken as a bare string.
pub fn apply_override(root: &mut toml::Table, assignment: &str) -> Result<()> {
    let src = format!("--set {assignment}");
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| TrainError::config(&src, "expected key=value, e.g. train.steps=500"))?;
    let path: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
        return Err(TrainError::config(
            &src,
            format!(
                "`{key}` is not a section.key path (sections: {})",
                SECTIONS.join(", ")
            ),
        ));
    }
    if !SECTIONS.contains(&path[0]) {
        return Err(TrainError::config(
            &src,
            format!(
                "unknown section `{}` (sections: {})",
                path[0],
                SECTIONS.join(", ")
            ),
        ));
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let mut table = root;
    for seg in &path[..path.len() - 1] {
        let entry = table
            .entry(seg.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| TrainError::config(&src, format!("`{seg}` is a value, not a table")))?;
    }
    table.insert(path[path.len() - 1].to_string(), value);
    Ok(())
}

/// Deserialises one `[section]`; a failure names the key: each key is tried alone to find it.
fn section<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    name: &str,
    source_name: &str,
) -> Result<T> {
    let value = table
        .get(name)
        .cloned()
        .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
    let Some(fields) = value.as_table() else {
        return Err(TrainError::config(
            source_name,
            format!("`{name}` must be a table [{name}]"),
        ));
    };
    match T::deserialize(value.clone()) {
        Ok(v) => Ok(v),
        Err(e) => {
            for (k, v) in fields {
                let mut one = toml::Table::new();
                one.insert(k.clone(), v.clone());
                if let Err(e1) = T::deserialize(toml::Value::Table(one)) {
                    return Err(TrainError::config(
                        source_name,
                        format!("[{name}] {k}: {}", e1.message()),
                    ));
                }
            }
            Err(TrainError::config(
                source_name,
                format!("[{name}] {}", e.message()),
            ))
        }
    }
}

impl TrainConfig {
    /// Parses a TOML document (`source_name` names it in errors) and applies the overrides.
    pub fn from_toml(text: &str, source_name: &str, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| TrainError::config(source_name, e.to_string()))?;
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                return Err(TrainError::config(
                    source_name,
                    format!(
                        "unknown section `[{key}]` (sections: {})",
                        SECTIONS.join(", ")
                    ),
                ));
            }
        }
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        Ok(Self {
            data: section(&table, "data", source_name)?,
            model: section(&table, "model", source_name)?,
            train: section(&table, "train", source_name)?,
        })
    }

    /// Reads a config file and applies the overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::from_toml(&text, &path.display().to_string(), overrides)
    }

    /// The fully resolved TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialise")
    }

    /// Everything a resumed run must keep.
    pub fn frozen(&self) -> FrozenConfig {
        FrozenConfig {
            data: self.data.clone(),
            model: self.model.clone(),
            train: self.train.split().0,
        }
    }

    /// Checks everything that can be checked without loading data.
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        let bad = |field: &str, reason: String| {
            Err(TrainError::config(
                format!("config [train] {field}"),
                reason,
            ))
        };
        if t.steps == 0 {
            return bad("steps", "must be ≥ 1".into());
        }
        if t.batch_size == 0 {
            return bad("batch_size", "must be ≥ 1".into());
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return bad("lr", format!("must be a finite number > 0, got {}", t.lr));
        }
        for (name, v) in [("beta1", t.beta1), ("beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(name, format!("must lie in [0, 1), got {v}"));
            }
        }
        if !(t.eps.is_finite() && t.eps > 0.0) {
            return bad("eps", format!("must be > 0, got {}", t.eps));
        }
        if t.log_every == 0 {
            return bad("log_every", "must be ≥ 1".into());
        }
        t.tau.validate(t.steps)?;
        crate::device::parse_device(&t.device)?;
        self.data.validate()?;
        self.model.validate(self.data.channels)?;
        if !self.data.image_size.is_multiple_of(4) {
            return Err(TrainError::config(
                "config [data] image_size",
                format!(
                    "{} is not divisible by 4 (the encoder halves the size twice)",
                    self.data.image_size
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_errors() {
        let c = TrainConfig::from_toml(
            "[train]\nsteps = 10\n[model]\nquantizer = \"fixed:512,128\"\n",
            "t.toml",
            &[
                "train.batch_size=8".into(),
                "model.codebook.commitment=0.5".into(),
                "data.path=/tmp/x y".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.steps, 10);
        assert_eq!(c.train.batch_size, 8);
        assert_eq!(c.model.pool.codebook.commitment, 0.5);
        assert_eq!(c.data.path.as_deref(), Some(Path::new("/tmp/x y")));
        let round = TrainConfig::from_toml(&c.to_toml(), "round", &[]).unwrap();
        assert_eq!(round, c);

        let e = TrainConfig::from_toml("[train]\nstepz = 3\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml") && e.contains("[train]") && e.contains("stepz"),
            "{e}"
        );
        let e = TrainConfig::from_toml("[train]\nsteps = \"many\"\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[train]") && e.contains("steps") || e.contains("integer"),
            "{e}"
        );
        let e = TrainConfig::from_toml("[trian]\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown section `[trian]`"), "{e}");
        let e = TrainConfig::from_toml("", "t", &["steps=3".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--set steps=3"), "{e}");
        let e = TrainConfig::from_toml("x = [", "bad.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml"), "{e}");
    }

    #[test]
    fn validation_names_fields() {
        let mut c = TrainConfig::default();
        c.train.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batch_size"));
        let mut c = TrainConfig::default();
        c.train.tau = TauSchedule::Constant { tau: 0.0 };
        assert!(c.validate().unwrap_err().to_string().contains("tau"));
        let mut c = TrainConfig::default();
        c.model.quantizer = "fixed:512,64".parse().unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("65536"), "{e}");
        let mut c = TrainConfig::default();
        c.data.path = Some("/definitely/missing".into());
        c.data.name = vq_data::DatasetName::Mnist;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("/definitely/missing"));
        let mut c = TrainConfig::default();
        c.train.device = "tpu".into();
        assert!(c.validate().unwrap_err().to_string().contains("tpu"));
    }
}
