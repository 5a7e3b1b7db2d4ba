//! Crash-safe checkpoints: weights and EMA state, optimizer state, step/RNG/data position and
//! the resolved config, written to a temporary folder, fsynced and renamed into place; `LATEST`
//! is switched (atomically) only after the new checkpoint is complete, and the previous one is
//! kept until then.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use vq_data::Cursor;

use crate::error::{Result, TrainError};

/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;

/// Serializable position of a ChaCha RNG.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    /// Word position (u128, as decimal text).
    pub word_pos: String,
}

impl RngState {
    pub fn of(rng: &ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }
    pub fn restore(&self) -> std::result::Result<ChaCha8Rng, String> {
        use rand::SeedableRng;
        let mut r = ChaCha8Rng::from_seed(self.seed);
        r.set_stream(self.stream);
        r.set_word_pos(
            self.word_pos
                .parse::<u128>()
                .map_err(|e| format!("rng word_pos: {e}"))?,
        );
        Ok(r)
    }
}

/// `state.json` of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    pub format_version: u32,
    /// Optimisation steps completed.
    pub step: usize,
    /// The next batch to draw.
    pub cursor: Cursor,
    /// Gumbel noise RNG.
    pub gumbel_rng: RngState,
    /// Adam step count of each parameter.
    pub adam_steps: BTreeMap<String, u64>,
    /// Length of `metrics.jsonl` when the checkpoint was written (the tail is dropped on resume).
    pub metrics_bytes: u64,
    /// Length of `timings.jsonl` at that moment.
    pub timings_bytes: u64,
    /// Batches skipped for non-finite values so far.
    pub skipped_steps: usize,
    /// Partial sums of the current log interval (so a resumed run logs what it would have).
    pub interval: serde_json::Value,
    /// Step count of the τ schedule, fixed when the run started (absent in older checkpoints).
    #[serde(default)]
    pub tau_horizon: Option<usize>,
}

/// A checkpoint read back from disk.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: CheckpointState,
    pub weights: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    /// The resolved config stored with it.
    pub config_toml: String,
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| TrainError::io(path, e))
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}tmp",
        path.extension()
            .map(|e| format!("{}.", e.to_string_lossy()))
            .unwrap_or_default()
    ));
    let written = (|| -> Result<()> {
        let mut f = io(&tmp, File::create(&tmp))?;
        io(&tmp, f.write_all(bytes))?;
        io(&tmp, f.sync_all())?;
        io(path, std::fs::rename(&tmp, path))
    })();
    if written.is_err() {
        // Nothing half-written stays behind; the previous file (if any) is untouched.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable on POSIX file systems.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = io(path, File::create(path))?;
    io(path, f.write_all(bytes))?;
    io(path, f.sync_all())
}

fn safetensors_bytes(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<Vec<u8>> {
    let mut named: Vec<(&String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k, t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    named.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::tensor::serialize(named.iter().map(|(k, t)| (k.as_str(), t)), None)
        .map_err(|e| TrainError::checkpoint(path, format!("serialising: {e}")))
}

/// Folder holding the checkpoints of a run.
pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Writes a complete checkpoint of step `state.step`, switches `LATEST` to it and removes
/// checkpoints older than the previous one.
pub fn save(
    run: &Path,
    state: &CheckpointState,
    weights: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    config_toml: &str,
) -> Result<PathBuf> {
    let _span = tracing::debug_span!("checkpoint", step = state.step).entered();
    let root = checkpoints_dir(run);
    io(&root, std::fs::create_dir_all(&root))?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        io(&tmp, std::fs::remove_dir_all(&tmp))?;
    }
    io(&tmp, std::fs::create_dir_all(&tmp))?;
    let written = (|| -> Result<()> {
        write_synced(
            &tmp.join("model.safetensors"),
            &safetensors_bytes(weights, &tmp)?,
        )?;
        // Testing aid: die in the middle of writing this checkpoint (crash-safety tests).
        #[cfg(feature = "fault-injection")]
        if std::env::var("VQ_TRAIN_FAULT_ABORT_IN_CHECKPOINT")
            .is_ok_and(|v| v == state.step.to_string())
        {
            std::process::abort();
        }
        write_synced(
            &tmp.join("optimizer.safetensors"),
            &safetensors_bytes(optimizer, &tmp)?,
        )?;
        write_synced(&tmp.join("config.toml"), config_toml.as_bytes())?;
        let json = serde_json::to_vec_pretty(state).expect("state serialises");
        write_synced(&tmp.join("state.json"), &json)?;
        sync_dir(&tmp);
        Ok(())
    })();
    if let Err(e) = written {
        // A failed write (full disk, I/O error) leaves no half checkpoint behind.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = root.join(&name);
    if dest.exists() {
        io(&dest, std::fs::remove_dir_all(&dest))?;
    }
    io(&dest, std::fs::rename(&tmp, &dest))?;
    sync_dir(&root);
    let previous = latest_name(run)?;
    write_atomic(&root.join("LATEST"), name.as_bytes())?;
    // Keep the new checkpoint and the one before it.
    for entry in io(&root, std::fs::read_dir(&root))?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        let stale_tmp = n.starts_with(".step-") && n.ends_with(".tmp");
        if stale_tmp || (n.starts_with("step-") && n != name && Some(&n) != previous.as_ref()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(dest)
}

fn latest_name(run: &Path) -> Result<Option<String>> {
    let p = checkpoints_dir(run).join("LATEST");
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::io(p, e)),
    }
}

/// The folder of the newest complete checkpoint of a run, `None` when it has none yet (any other
/// problem reading `LATEST` is an error).
pub fn latest_if_any(run: &Path) -> Result<Option<PathBuf>> {
    Ok(latest_name(run)?.map(|n| checkpoints_dir(run).join(n)))
}

/// The step of the newest complete checkpoint of a run (from `LATEST`, without reading the
/// checkpoint), `None` when it has none yet.
pub fn latest_step(run: &Path) -> Result<Option<usize>> {
    let Some(name) = latest_name(run)? else {
        return Ok(None);
    };
    match name.strip_prefix("step-").and_then(|n| n.parse().ok()) {
        Some(step) => Ok(Some(step)),
        None => Err(TrainError::checkpoint(
            checkpoints_dir(run).join("LATEST"),
            format!("names `{name}`, not a step-<number> checkpoint"),
        )),
    }
}

/// The folder of the newest complete checkpoint of a run.
pub fn latest(run: &Path) -> Result<PathBuf> {
    match latest_name(run)? {
        Some(n) => Ok(checkpoints_dir(run).join(n)),
        None => Err(TrainError::checkpoint(
            run,
            "the run has no checkpoint (no checkpoints/LATEST)",
        )),
    }
}

/// Reads the newest complete checkpoint of a run that may still be training: a training keeps
/// the newest two checkpoints, so a reader slower than two checkpoint intervals may find its
/// folder removed; it then reads the one `LATEST` names now (up to 5 tries). A checkpoint that
/// is bad for another reason is an error at once.
pub fn load_latest(run: &Path, device: &Device) -> Result<Checkpoint> {
    let mut tries = 0;
    loop {
        let dir = latest(run)?;
        match load(&dir, device) {
            Ok(ck) => return Ok(ck),
            Err(e) => {
                tries += 1;
                let moved = latest(run).is_ok_and(|now| now != dir);
                if !moved || tries >= 5 {
                    return Err(e);
                }
                tracing::debug!("{} was replaced while reading it; retrying", dir.display());
            }
        }
    }
}

/// Reads a checkpoint folder onto `device`.
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let st = |name: &str| -> Result<HashMap<String, Tensor>> {
        let p = dir.join(name);
        if !p.is_file() {
            return Err(TrainError::checkpoint(dir, format!("{name} is missing")));
        }
        candle_core::safetensors::load(&p, device)
            .map_err(|e| TrainError::checkpoint(&p, format!("unreadable safetensors: {e}")))
    };
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path)
        .map_err(|e| TrainError::checkpoint(dir, format!("state.json: {e}")))?;
    let state: CheckpointState = serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(&state_path, e.to_string()))?;
    if state.format_version != FORMAT_VERSION {
        return Err(TrainError::checkpoint(
            &state_path,
            format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                state.format_version
            ),
        ));
    }
    let config_toml = std::fs::read_to_string(dir.join("config.toml"))
        .map_err(|e| TrainError::checkpoint(dir, format!("config.toml: {e}")))?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        weights: st("model.safetensors")?,
        optimizer: st("optimizer.safetensors")?,
        state,
        config_toml,
    })
}

/// Sets every variable of `vars` from `weights`: all must be present with the same shape, and
/// nothing else may be in the file.
pub fn restore_vars(
    vars: &[(String, candle_core::Var)],
    mut weights: HashMap<String, Tensor>,
    origin: &Path,
) -> Result<()> {
    for (name, var) in vars {
        let t = weights.remove(name).ok_or_else(|| {
            TrainError::checkpoint(
                origin,
                format!("tensor `{name}` is missing (does the config match the checkpoint?)"),
            )
        })?;
        if t.dims() != var.as_tensor().dims() {
            return Err(TrainError::checkpoint(
                origin,
                format!(
                    "tensor `{name}` has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.as_tensor().dims()
                ),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    if let Some(extra) = weights.keys().next() {
        return Err(TrainError::checkpoint(
            origin,
            format!("unexpected tensor `{extra}` (does the config match the checkpoint?)"),
        ));
    }
    Ok(())
}
