//! `eval` and `encode` over a run folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Module, Tensor};
use serde::Serialize;
use vq_core::Quantizer;
use vq_data::Cursor;

use crate::checkpoint::write_atomic;
use crate::error::{Result, TrainError};
use crate::metrics::ValRecord;
use crate::session::Session;

/// Validation metrics of a run's newest checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub run: PathBuf,
    pub checkpoint_step: usize,
    pub codebooks: Vec<String>,
    pub validation: ValRecord,
}

/// One full validation pass (τ = 1 Gumbel-Softmax with a fixed seed, no update); also written
/// to `<run>/eval.json`.
pub fn eval(run: &Path, device: Option<&str>) -> Result<EvalReport> {
    let (session, ck) = Session::open_run(run, device)?;
    let mut rng = vq_core::init::stream(session.config.train.seed, "eval");
    let validation = session.validate(ck.state.step, 0, &mut rng)?;
    let report = EvalReport {
        run: run.to_path_buf(),
        checkpoint_step: ck.state.step,
        codebooks: session.pool_labels(),
        validation,
    };
    write_atomic(
        &run.join("eval.json"),
        &serde_json::to_vec_pretty(&report).expect("serialises"),
    )?;
    Ok(report)
}

/// Summary of a code dump.
#[derive(Clone, Debug, Serialize)]
pub struct EncodeReport {
    pub file: PathBuf,
    pub images: usize,
    /// `[h, w]` of the code maps.
    pub latent: [usize; 2],
    /// Positions assigned to each codebook.
    pub codebook_usage: Vec<usize>,
    /// Distinct codewords used per codebook.
    pub distinct_codes: Vec<usize>,
}

/// Writes the codes of a split (argmax selection) to `<run>/codes-<split>.safetensors`:
/// `codebook` and `index` `[N, h, w]` u32 and `label` `[N]` u32.
pub fn encode(run: &Path, split: &str, device: Option<&str>) -> Result<EncodeReport> {
    let train = match split {
        "train" => true,
        "val" | "validation" | "test" => false,
        other => {
            return Err(TrainError::config(
                "--split",
                format!("`{other}`: expected train or val"),
            ))
        }
    };
    let (session, _) = Session::open_run(run, device)?;
    if !session.model.quantizer().decodable() {
        return Err(TrainError::config(
            run.join("config.toml").display().to_string(),
            "this model's codes do not describe its latents position by position (raw-view \
             selection or a 3×3 back-projection in a pool, as in the authors' variant), so \
             there is nothing meaningful to encode",
        ));
    }
    let batcher = session.ordered_batcher(train)?;
    let (mut books, mut idx, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for b in batcher.stream(Cursor::default(), true) {
        let b = b?;
        let x = b.images.to_device(&session.device)?;
        let codes = session
            .model
            .quantizer()
            .encode(&session.model.encoder().forward(&x)?)?;
        books.push(codes.codebook.to_device(&candle_core::Device::Cpu)?);
        idx.push(codes.index.to_device(&candle_core::Device::Cpu)?);
        labels.push(b.labels);
    }
    let books = Tensor::cat(&books, 0)?;
    let idx = Tensor::cat(&idx, 0)?;
    let labels = Tensor::cat(&labels, 0)?;
    let (n, h, w) = books.dims3()?;
    let m = session.pool.len();
    let bv = books.flatten_all()?.to_vec1::<u32>()?;
    let iv = idx.flatten_all()?.to_vec1::<u32>()?;
    let mut usage = vec![0usize; m];
    let mut distinct: Vec<std::collections::BTreeSet<u32>> = vec![Default::default(); m];
    for (&b, &i) in bv.iter().zip(&iv) {
        usage[b as usize] += 1;
        distinct[b as usize].insert(i);
    }
    let file = run.join(format!(
        "codes-{}.safetensors",
        if train { "train" } else { "val" }
    ));
    let tensors: HashMap<String, Tensor> = [
        ("codebook".to_string(), books),
        ("index".to_string(), idx),
        ("label".to_string(), labels),
    ]
    .into();
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let bytes =
        safetensors::tensor::serialize(named.into_iter().map(|(k, t)| (k.as_str(), t)), None)
            .map_err(|e| TrainError::io(&file, std::io::Error::other(e.to_string())))?;
    write_atomic(&file, &bytes)?;
    Ok(EncodeReport {
        file,
        images: n,
        latent: [h, w],
        codebook_usage: usage,
        distinct_codes: distinct.iter().map(|s| s.len()).collect(),
    })
}
