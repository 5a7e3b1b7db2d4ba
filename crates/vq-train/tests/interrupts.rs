//! Reliability against the outside world: SIGINT / SIGTERM checkpoint and exit 130 / 143 (and
//! resuming ends bit-identical to an uninterrupted run; a second signal exits at once), one
//! writer per run folder, checkpoints of another format version refused, and undecodable images
//! found before step 1.

mod common;

use common::{bin, final_files, write_config};
use vq_train::TrainOptions;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn_train(cfg: &Path, run: &Path) -> Child {
    spawn_train_with(cfg, run, &[])
}

fn spawn_train_with(cfg: &Path, run: &Path, env: &[(&str, &str)]) -> Child {
    Command::new(bin())
        .envs(env.iter().copied())
        .args(["train", "--quiet", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(run)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the run's metrics.jsonl has `lines` lines (or the child ended).
fn wait_for_lines(child: &mut Child, run: &Path, lines: usize) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(300) {
        let n = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .count();
        if n >= lines || child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never reached {lines} metrics lines", run.display());
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

fn resume(run: &Path) {
    let out = Command::new(bin())
        .args(["train", "--quiet", "--resume"])
        .arg(run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One signal: the step finishes, a checkpoint is written at the reported step, the exit status
/// is 128 + the signal, and `--resume` ends byte-equal to an uninterrupted run. Two signals in a
/// row: the process exits at once with the same status, and the last complete checkpoint still
/// resumes to the same end.
/// Sends SIG`signal` (`INT`, `TERM`) to `child` with kill(1), and waits until it is sent.
fn send(signal: &str, child: &std::process::Child) {
    let ok = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -s {signal} failed");
}

#[test]
fn signals_checkpoint_and_resume_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 60;
    let reference = dir.path().join("reference");
    vq_train::train(
        common::tiny_config(steps),
        &reference,
        &TrainOptions::default(),
    )
    .unwrap();
    let want = final_files(&reference, steps);
    let cfg = write_config(dir.path(), &common::tiny_config(steps));
    for (signal, status, twice) in [
        ("INT", 130, false),
        ("TERM", 143, false),
        ("TERM", 143, true),
    ] {
        let run = dir.path().join(format!("run-{signal}-{twice}"));
        // For two signals, steps of 300 ms: both land inside one step, so the second takes
        // the immediate exit.
        let delay: &[(&str, &str)] = if twice {
            &[("VQ_TRAIN_FAULT_STEP_DELAY_MS", "300")]
        } else {
            &[]
        };
        let mut child = spawn_train_with(&cfg, &run, delay);
        wait_for_lines(&mut child, &run, 2);
        send(signal, &child);
        if twice {
            // Delivered one after the other (two pending signals of a kind merge into one).
            std::thread::sleep(Duration::from_millis(5));
            send(signal, &child);
        }
        let err = stderr_of(&mut child);
        let code = child.wait().unwrap().code();
        assert_eq!(code, Some(status), "signal {signal}: {err}");
        if twice {
            assert!(
                err.contains("second signal: exiting now") && !err.contains("interrupted at step"),
                "the second signal should exit at once: {err}"
            );
        } else {
            let step: usize = err
                .split("interrupted at step ")
                .nth(1)
                .and_then(|s| s.split(';').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no step in: {err}"));
            assert!(step < steps, "{err}");
            assert!(err.contains("vq-train train --resume"), "{err}");
            assert_eq!(
                std::fs::read_to_string(run.join("checkpoints/LATEST")).unwrap(),
                format!("step-{step:08}"),
                "{err}"
            );
        }
        resume(&run);
        let got = final_files(&run, steps);
        assert!(want.0 == got.0, "signal {signal}: final weights differ");
        assert!(
            want.1 == got.1,
            "signal {signal}: final optimizer state differs"
        );
        assert_eq!(want.2, got.2, "signal {signal}: metrics differ");
    }
}

/// A second training into a folder that is being trained exits non-zero naming the holder's
/// PID; the first finishes normally. Its lock file, left behind with a dead PID, blocks no one.
#[test]
fn one_writer_per_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &common::tiny_config(60));
    let run = dir.path().join("run");
    let mut first = spawn_train(&cfg, &run);
    wait_for_lines(&mut first, &run, 1);
    for args in [
        vec![
            "train",
            "--quiet",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
        ],
        vec!["train", "--quiet", "--resume"],
    ] {
        let out = Command::new(bin()).args(&args).arg(&run).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!("in use by process {}", first.id())),
            "{args:?}: {err}"
        );
    }
    let err = stderr_of(&mut first);
    assert!(first.wait().unwrap().success(), "{err}");
    assert!(run.join("checkpoints/step-00000060").is_dir());
    // The lock file stays, with a PID that no longer holds it: a resume is not blocked.
    assert!(run.join(".lock").is_file());
    vq_train::train(
        common::tiny_config(62),
        &run,
        &TrainOptions::default().resume(true),
    )
    .unwrap();
}

/// A state.json of another format version is refused, both versions named.
#[test]
fn other_checkpoint_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    vq_train::train(common::tiny_config(20), &run, &TrainOptions::default()).unwrap();
    let state = run.join("checkpoints/step-00000020/state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    let v = vq_train::checkpoint::FORMAT_VERSION;
    let bumped = text.replace(
        &format!("\"format_version\": {v}"),
        &format!("\"format_version\": {}", v + 1),
    );
    assert_ne!(bumped, text, "state.json has no format_version: {text}");
    std::fs::write(&state, bumped).unwrap();
    let e = vq_train::train(
        common::tiny_config(30),
        &run,
        &TrainOptions::default().resume(true),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(&format!("format version {}", v + 1))
            && e.contains(&format!("this build reads {v}")),
        "{e}"
    );
}

/// An image folder of 24 good 8×8 PNGs in two classes and one corrupt PNG.
fn image_folder(root: &Path) -> PathBuf {
    for (c, class) in ["a", "b"].iter().enumerate() {
        let d = root.join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..12u8 {
            let img = image::GrayImage::from_fn(8, 8, |x, y| {
                image::Luma([((x * 30 + y * 7 + i as u32 * 5 + c as u32 * 60) % 255) as u8])
            });
            img.save(d.join(format!("{i:02}.png"))).unwrap();
        }
    }
    let bad = root.join("b/07-broken.png");
    let mut bytes = std::fs::read(root.join("b/07.png")).unwrap();
    bytes.truncate(30);
    std::fs::write(&bad, bytes).unwrap();
    bad
}

/// A corrupt PNG is found before step 1: non-zero exit, the file named, no run folder. With
/// `data.on_bad_image = "skip"` the run trains and its log names the file and the count.
#[test]
fn bad_images_are_found_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    let bad = image_folder(&data);
    let run = dir.path().join("run");
    let path = format!("data.path={}", data.display());
    let args = |extra: &'static str| {
        let mut a = vec![
            "train".to_string(),
            "--quiet".into(),
            "--out".into(),
            run.display().to_string(),
        ];
        for kv in [
            "data.name=image-folder",
            path.as_str(),
            "data.image_size=8",
            "data.val_fraction=0.2",
            "model.hidden=16",
            "model.residual_hidden=8",
            "model.capacity=1024",
            "model.quantizer=fixed:64,16",
            "train.steps=3",
            "train.batch_size=4",
            "train.val_every=0",
            "train.report=false",
            extra,
        ] {
            a.push("--set".into());
            a.push(kv.into());
        }
        a
    };
    let out = Command::new(bin())
        .args(args("data.on_bad_image=\"error\""))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("1 image file(s) cannot be decoded") && err.contains("07-broken.png"),
        "{err}"
    );
    assert!(!run.exists(), "a run folder was left behind");
    let out = Command::new(bin())
        .args(args("data.on_bad_image=\"skip\""))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("1 image file(s) left out"),
        "{err}"
    );
    assert!(run.join("checkpoints/step-00000003").is_dir());
}
