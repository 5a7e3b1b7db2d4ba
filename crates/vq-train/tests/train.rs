//! End-to-end training on real Fashion-MNIST: the loss falls, and a resumed run continues
//! exactly where the checkpoint left it (step, optimizer, EMA codebooks, RNG, data order).

mod common;

use vq_train::metrics::{read_metrics, split};

#[test]
fn reconstruction_loss_falls_on_fashion_mnist() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cfg = common::tiny_config(60);
    cfg.train.report = true;
    let summary = vq_train::train(cfg, &run, false, false).unwrap();
    let (train, _) = split(read_metrics(&run.join("metrics.jsonl")).unwrap());
    let first = train.first().unwrap().recon_loss;
    let last = train.last().unwrap().recon_loss;
    // Measured: ~0.14 over steps 1–10 → ~0.03 over steps 51–60; require a factor of 2.
    assert!(last < 0.5 * first, "reconstruction MSE {first} → {last}");
    assert!(train
        .iter()
        .all(|t| t.grad_gap_l2.is_some_and(|g| g.is_finite() && g >= 0.0)));
    assert!(train
        .iter()
        .all(|t| (t.selection.iter().sum::<f64>() - 1.0).abs() < 1e-9));
    let val = summary.last_val.unwrap();
    assert_eq!(val.images, 128);
    assert!(val.mse < first);
    for f in [
        "config.toml",
        "timings.jsonl",
        "reconstructions.png",
        "plots/loss.png",
        "plots/selection.png",
        "plots/gradient_gap.png",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
}

/// 40 steps in one go versus 20 steps, then `--resume` to 40: identical weights (EMA codebooks
/// included), optimizer state and metrics log.
#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    vq_train::train(common::tiny_config(40), &a, false, false).unwrap();
    vq_train::train(common::tiny_config(20), &b, false, false).unwrap();
    let mut more = common::tiny_config(20);
    more.train.steps = 40;
    vq_train::train(more, &b, true, false).unwrap();
    let read = |p: &std::path::Path, f: &str| {
        std::fs::read(p.join("checkpoints/step-00000040").join(f)).unwrap()
    };
    assert_eq!(
        read(&a, "model.safetensors"),
        read(&b, "model.safetensors"),
        "weights and EMA state"
    );
    assert_eq!(
        read(&a, "optimizer.safetensors"),
        read(&b, "optimizer.safetensors"),
        "optimizer state"
    );
    // state.json: everything but the length of timings.jsonl (wall-clock figures).
    let state = |p: &std::path::Path| {
        let mut v: serde_json::Value = serde_json::from_slice(&read(p, "state.json")).unwrap();
        v.as_object_mut().unwrap().remove("timings_bytes");
        v
    };
    assert_eq!(state(&a), state(&b), "step, RNG, data cursor, Adam steps");

    assert_eq!(
        std::fs::read_to_string(a.join("metrics.jsonl")).unwrap(),
        std::fs::read_to_string(b.join("metrics.jsonl")).unwrap()
    );
    // The EMA codebooks moved during the resumed half (they are not frozen by the restore).
    let st = |step: &str| {
        candle_core::safetensors::load(
            b.join("checkpoints").join(step).join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (s20, s40) = (st("step-00000020"), st("step-00000040"));
    let key = "quantizer.books.0.quantizer.embedding";
    let diff = (&s20[key] - &s40[key])
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 0.0);
}

/// A run folder that already holds a run is not overwritten; resuming with a changed model is
/// refused with the key named.
#[test]
fn refuses_to_overwrite_or_resume_with_other_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("r");
    vq_train::train(common::tiny_config(2), &run, false, false).unwrap();
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let e = vq_train::train(common::tiny_config(2), &run, false, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already holds a run"), "{e}");
    let mut other = common::tiny_config(4);
    other.model.hidden = 64;
    let e = vq_train::train(other, &run, true, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.hidden"), "{e}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), before);
}
