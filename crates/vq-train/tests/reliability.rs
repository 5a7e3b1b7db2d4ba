//! Reliability: same seed → bitwise identical runs; SIGKILL or a crash inside a checkpoint
//! write, then `--resume`, ends exactly like an uninterrupted run; NaN/Inf stop (or skip) with
//! the step and tensor named; bad inputs fail with a clear message, a non-zero exit status and
//! no partial output; an unwritable output keeps the earlier checkpoint.

mod common;

use common::{bin, final_files, write_config};
use vq_train::faults::Faults;
use vq_train::TrainOptions;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vq_train::metrics::{read_metrics, split};

#[test]
fn same_seed_same_bits_other_seed_differs() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: u64| {
        let mut c = common::tiny_config(20);
        c.train.seed = seed;
        let p = dir.path().join(name);
        vq_train::train(c, &p, &TrainOptions::default()).unwrap();
        final_files(&p, 20)
    };
    let (a, b, c) = (run("a", 0), run("b", 0), run("c", 1));
    assert!(a == b, "two runs with seed 0 differ");
    assert!(a.0 != c.0 && a.2 != c.2, "seeds 0 and 1 gave the same run");
}

/// A crash inside the step-20 checkpoint write, then a SIGKILL at an arbitrary later moment;
/// each time `--resume` continues, and the result equals an uninterrupted run bit for bit.
#[test]
fn crash_and_sigkill_then_resume_equal_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 60;
    let reference = dir.path().join("reference");
    vq_train::train(
        common::tiny_config(steps),
        &reference,
        &TrainOptions::default(),
    )
    .unwrap();

    let run = dir.path().join("crashy");
    let cfg = write_config(dir.path(), &common::tiny_config(steps));
    let status = Command::new(bin())
        .args(["train", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .env("VQ_TRAIN_FAULT_ABORT_IN_CHECKPOINT", "40")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "the fault hook should have aborted the run"
    );
    // The checkpoint being written was never published; the previous one is intact.
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/LATEST")).unwrap(),
        "step-00000020"
    );

    // Resume in a child and SIGKILL it somewhere after it has logged past step 40.
    let mut child = Command::new(bin())
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let lines = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .count();
        if lines >= 5 || t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();

    let status = Command::new(bin())
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (want, got) = (final_files(&reference, steps), final_files(&run, steps));
    assert!(want.0 == got.0, "final weights differ");
    assert!(want.1 == got.1, "final optimizer state differs");
    assert_eq!(want.2, got.2, "metrics differ");
}

#[test]
fn nan_stops_with_step_and_tensor_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nan");
    let c = common::tiny_config(40);
    let faults = Faults {
        nan_loss_at_step: Some(25),
        ..Default::default()
    };
    let e = vq_train::train(c, &run, &TrainOptions::default().faults(faults))
        .unwrap_err()
        .to_string();
    assert!(e.contains("step 25") && e.contains("the loss"), "{e}");
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/LATEST")).unwrap(),
        "step-00000020"
    );
    vq_train::checkpoint::load(
        &run.join("checkpoints/step-00000020"),
        &candle_core::Device::Cpu,
    )
    .unwrap();

    let run = dir.path().join("nan-grad");
    let c = common::tiny_config(40);
    let faults = Faults {
        nan_grad_at_step: Some(3),
        ..Default::default()
    };
    let e = vq_train::train(c, &run, &TrainOptions::default().faults(faults))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("step 3") && e.contains("the gradient of `encoder."),
        "{e}"
    );

    let run = dir.path().join("skip");
    let mut c = common::tiny_config(20);
    c.train.on_nonfinite = vq_train::NonFinitePolicy::Skip;
    let faults = Faults {
        nan_loss_at_step: Some(5),
        nan_grad_at_step: Some(12),
        ..Default::default()
    };
    vq_train::train(c, &run, &TrainOptions::default().faults(faults)).unwrap();
    let last = split(read_metrics(&run.join("metrics.jsonl")).unwrap())
        .0
        .pop()
        .unwrap();
    assert_eq!(last.skipped_steps, 2);
    assert!(last.loss.is_finite());
}

fn run_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bad configs and inputs: non-zero exit, the file/field named, no run folder created.
#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    let o = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "train.stepz=3"], "stepz"),
        (&["--set", "train.steps=many"], "[train] steps"),
        (&["--set", "model.quantizer=fixed:512,64"], "N·D = 32768"),
        (
            &[
                "--set",
                "model.quantizer=fixed:64,1024",
                "--set",
                "model.capacity=65536",
            ],
            "N must be greater than D",
        ),
        (&["--set", "model.capacity=1"], "power of two"),
        (
            &["--set", "train.tau={kind=\"constant\",tau=0.0}"],
            "temperature",
        ),
        (&["--set", "train.batch_size=0"], "batch_size"),
        (
            &[
                "--set",
                "data.name=mnist",
                "--set",
                "data.path=/no/such/folder",
            ],
            "/no/such/folder",
        ),
        (&["--set", "model.heads=3"], "heads"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["train", "--quiet", "--out", o];
        args.extend_from_slice(extra);
        let (ok, err) = run_cli(&args);
        assert!(!ok, "{extra:?} should fail");
        assert!(
            err.contains(needle),
            "{extra:?}: expected `{needle}` in: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{extra:?} left {o} behind");
    }
    // A corrupt data file: named, nothing written.
    let data = dir.path().join("idx");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("train-images-idx3-ubyte.gz"), b"not gzip").unwrap();
    std::fs::write(data.join("train-labels-idx1-ubyte.gz"), b"not gzip").unwrap();
    std::fs::write(data.join("t10k-images-idx3-ubyte.gz"), b"x").unwrap();
    std::fs::write(data.join("t10k-labels-idx1-ubyte.gz"), b"x").unwrap();
    let path = format!("data.path={}", data.display());
    let (ok, err) = run_cli(&[
        "train",
        "--quiet",
        "--out",
        o,
        "--set",
        "data.name=mnist",
        "--set",
        &path,
    ]);
    assert!(
        !ok && err.contains("train-images-idx3-ubyte.gz") && err.contains("gzip"),
        "{err}"
    );
    assert!(!out.exists());
    // Unknown config file.
    let (ok, err) = run_cli(&["train", "--config", "/no/config.toml"]);
    assert!(!ok && err.contains("/no/config.toml"), "{err}");
}

/// Damaged checkpoints are refused with the tensor named; nothing of the run is changed.
#[test]
fn damaged_checkpoints_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("r");
    vq_train::train(common::tiny_config(20), &run, &TrainOptions::default()).unwrap();
    let ck = run.join("checkpoints/step-00000020");
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let mut weights =
        candle_core::safetensors::load(ck.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    // Wrong shape.
    let key = "decoder.conv1.bias".to_string();
    weights.insert(
        key.clone(),
        candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&weights, ck.join("model.safetensors")).unwrap();
    let mut more = common::tiny_config(20);
    more.train.steps = 30;
    let e = vq_train::train(more.clone(), &run, &TrainOptions::default().resume(true))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("decoder.conv1.bias") && e.contains("shape"),
        "{e}"
    );
    // Missing tensor.
    weights.remove(&key);
    candle_core::safetensors::save(&weights, ck.join("model.safetensors")).unwrap();
    let e = vq_train::train(more.clone(), &run, &TrainOptions::default().resume(true))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("decoder.conv1.bias") && e.contains("missing"),
        "{e}"
    );
    // Truncated file.
    std::fs::write(ck.join("model.safetensors"), b"\x10\x00\x00\x00").unwrap();
    let e = vq_train::train(more, &run, &TrainOptions::default().resume(true))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
}

/// Writing fails (file-size limit, as a full disk): a clear error names the file and the
/// earlier checkpoint still loads. An output path under a regular file is refused too.
#[test]
fn unwritable_output_keeps_the_earlier_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("full");
    vq_train::train(common::tiny_config(20), &run, &TrainOptions::default()).unwrap();
    // A 4 KiB file-size limit (8 blocks of 512 bytes in POSIX sh) with SIGXFSZ ignored, so a
    // write past it fails with EFBIG instead of killing the process; both survive exec.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' XFSZ; ulimit -f 8; exec \"$0\" \"$@\""])
        .arg(bin())
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .args(["--set", "train.steps=40"]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("File too large") || err.contains("No space"),
        "{err}"
    );
    assert!(err.contains(&run.display().to_string()), "{err}");
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints/LATEST")).unwrap(),
        "step-00000020"
    );
    vq_train::checkpoint::load(
        &run.join("checkpoints/step-00000020"),
        &candle_core::Device::Cpu,
    )
    .unwrap();

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("run");
    let (ok, err) = run_cli(&[
        "train",
        "--quiet",
        "--out",
        bad.to_str().unwrap(),
        "--set",
        "train.steps=1",
    ]);
    assert!(!ok && err.contains(&bad.display().to_string()), "{err}");
}

/// Clears the immutable attribute again, whatever the test's outcome.
struct Immutable(PathBuf);

impl Immutable {
    /// `chattr +i` (read-only even for root); `None` where the file system or user cannot.
    fn set(p: &Path) -> Option<Self> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(p)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Immutable(p.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// A read-only checkpoint folder: the next checkpoint fails with the folder named and the
/// earlier checkpoint stays the newest and loads.
#[test]
fn read_only_checkpoint_folder_keeps_the_earlier_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("ro");
    vq_train::train(common::tiny_config(20), &run, &TrainOptions::default()).unwrap();
    let ck = run.join("checkpoints");
    let Some(_guard) = Immutable::set(&ck) else {
        println!("NOTICE: chattr +i is not available here; skipping the read-only folder check");
        return;
    };
    let mut more = common::tiny_config(20);
    more.train.steps = 40;
    let e = vq_train::train(more, &run, &TrainOptions::default().resume(true))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&ck.display().to_string()) && e.contains("not permitted"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(ck.join("LATEST")).unwrap(),
        "step-00000020"
    );
    vq_train::checkpoint::load(&ck.join("step-00000020"), &candle_core::Device::Cpu).unwrap();
}
