//! The reproduction driver end to end at a toy budget: two structures, one seed, a few steps.

use xtask::reproduce::{reproduce, Budget, Options, Part};

#[test]
fn toy_reproduction_writes_report_and_figures() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        structures: Some(vec![[512, 128], [65536, 1]]),
        ..Options::new(Part::Table2, "embedded", Budget::Toy, dir.path().into())
    };
    // --status trains nothing: the report names every run as not trained yet (and only-best,
    // which waits for Table 1's best structure).
    let status = Options {
        status: true,
        ..opts.clone()
    };
    let md = std::fs::read_to_string(reproduce(&status).unwrap()).unwrap();
    assert!(
        md.contains("## Runs not finished")
            && md.contains("- `table1/fixed-512x128-s0`: not trained yet")
            && md.contains("- `table2/adaptive-min-error-s0`: not trained yet")
            && md.contains("the only-best runs"),
        "{md}"
    );
    assert!(!dir.path().join("runs").exists(), "nothing trained");
    let report = reproduce(&opts).unwrap();
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(!md.contains("Runs not finished"), "{md}");
    // One row per setting: two fixed structures in Table 1; in Table 2 the best fixed, then the
    // paper's selector, the selector at exponential τ and the authors' variant each under
    // sampled and argmax routing, the (deterministic) min-error router, and the diagnostic pool
    // routed to Table 1's best structure.
    // Each table ends with a blank line (GitHub Markdown reads a following text line as a row).
    let rows_of = |section: &str| -> Vec<String> {
        let start = md.find(section).unwrap();
        let lines: Vec<&str> = md[start..]
            .lines()
            .skip_while(|l| !l.starts_with("| ---"))
            .skip(1)
            .collect();
        let n = lines.iter().take_while(|l| l.starts_with('|')).count();
        assert_eq!(
            lines.get(n),
            Some(&""),
            "{section} table must end with a blank line:\n{md}"
        );
        lines[..n].iter().map(|l| l.to_string()).collect()
    };
    let t1 = rows_of("## Table 1");
    assert_eq!(t1.len(), 2, "{md}");
    assert!(
        t1[0].starts_with("| [512,128] | 1 |") && t1[1].starts_with("| [65536,1] | 1 |"),
        "{t1:?}"
    );
    let t2 = rows_of("## Table 2");
    assert_eq!(t2.len(), 9, "{md}");
    let labels = [
        "adaptive (the paper), sampled routing",
        "adaptive (the paper), argmax routing",
        "adaptive, τ = max(0.5, 2·0.997^m) (not in the paper), sampled routing",
        "adaptive, τ = max(0.5, 2·0.997^m) (not in the paper), argmax routing",
        "authors' variant (their published script), sampled routing",
        "authors' variant (their published script), argmax routing",
        "adaptive, min-error router (not in the paper)",
        "pool, every vector routed to the best fixed structure (diagnostic)",
    ];
    for (row, label) in t2[1..].iter().zip(labels) {
        assert!(row.starts_with(&format!("| {label} | 1 |")), "{t2:?}");
    }
    // Every row has the nine columns: distortion, the paper's figure, quality, rate, usage.
    assert!(
        t1.iter().chain(&t2).all(|r| r.matches('|').count() == 10),
        "{t1:?}"
    );
    for title in [
        "adaptive (the paper)",
        "authors' variant (their published script)",
        "adaptive, min-error router (not in the paper)",
    ] {
        assert!(
            md.contains(&format!("Codebook health and routing, {title}:")),
            "{title}: {md}"
        );
    }
    for f in [
        "fig2_gradient_gap.png",
        "fig2_quantization_loss.png",
        "fig3_selection.png",
        "fig4_gradient_gap.png",
        "fig4_quantization_loss.png",
    ] {
        let p = dir.path().join("results/embedded").join(f);
        assert!(
            p.is_file() && std::fs::metadata(&p).unwrap().len() > 1000,
            "{f}"
        );
        assert!(md.contains(&format!("embedded/{f}")), "report links {f}");
    }
    for run in [
        "table1/fixed-512x128-s0",
        "table1/fixed-65536x1-s0",
        "table2/adaptive-s0",
        "table2/adaptive-exp-tau-s0",
        "table2/authors-variant-s0",
        "table2/adaptive-min-error-s0",
        "table2/pool-only-best-s0",
    ] {
        let r = dir.path().join("runs/embedded").join(run);
        assert!(
            r.join("config.toml").is_file()
                && r.join("metrics.jsonl").is_file()
                && r.join("plots/loss.png").is_file(),
            "{run}"
        );
    }
    // A second invocation reuses the finished runs (their metrics are untouched).
    let before = std::fs::read(
        dir.path()
            .join("runs/embedded/table2/adaptive-s0/metrics.jsonl"),
    )
    .unwrap();
    reproduce(&opts).unwrap();
    assert_eq!(
        std::fs::read(
            dir.path()
                .join("runs/embedded/table2/adaptive-s0/metrics.jsonl")
        )
        .unwrap(),
        before
    );
    // Each finished run's records are archived beside the report; with the run folders gone (a
    // fresh checkout) the study is finished from the archive alone and gives the same report.
    let archived = dir.path().join("results/embedded/runs/table2/adaptive-s0");
    assert_eq!(
        std::fs::read(archived.join("metrics.jsonl")).unwrap(),
        before
    );
    assert!(archived.join("config.toml").is_file() && archived.join("timings.jsonl").is_file());
    assert!(!archived.join("checkpoints").exists());
    let md_before = std::fs::read_to_string(&report).unwrap();
    std::fs::remove_dir_all(dir.path().join("runs")).unwrap();
    reproduce(&opts).unwrap();
    assert!(
        !dir.path().join("runs/embedded").exists(),
        "nothing retrained"
    );
    assert_eq!(std::fs::read_to_string(&report).unwrap(), md_before);
    // A run made with another config (here: another length) is refused, not extended or
    // reported.
    let cfg = dir
        .path()
        .join("results/embedded/runs/table1/fixed-512x128-s0/config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let shorter = text.replacen("steps = 4\n", "steps = 3\n", 1);
    assert_ne!(shorter, text, "{text}");
    std::fs::write(&cfg, shorter).unwrap();
    let e = format!("{:#}", reproduce(&opts).unwrap_err());
    assert!(
        e.contains("fixed-512x128-s0") && e.contains("different config") && e.contains("steps"),
        "{e}"
    );
}

/// The Slurm executor without Slurm: a clear error naming the missing command, and the runs'
/// configs written for the tasks (on `cuda` when the sbatch arguments ask for GPUs). The real
/// cluster test is xtask/slurm-test.sh.
#[test]
fn slurm_executor_without_sbatch_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let out = std::process::Command::new(xtask)
        .args([
            "reproduce",
            "table1",
            "--dataset",
            "embedded",
            "--budget",
            "toy",
            "--structures",
            "512x128",
            "--seeds",
            "1",
            "--executor",
            "slurm",
            "--slurm-arg=--gres=gpu:1",
            "--vq-train",
            xtask,
        ])
        .arg("--runs-dir")
        .arg(dir.path().join("runs"))
        .arg("--report-dir")
        .arg(dir.path().join("results"))
        .env("PATH", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("sbatch not found") && stderr.contains("--executor local"),
        "{stderr}"
    );
    let slurm = dir.path().join("runs/embedded/slurm");
    let manifest = std::fs::read_to_string(slurm.join("manifest.tsv")).unwrap();
    let (run, config) = manifest.trim_end().split_once('\t').unwrap();
    assert!(
        run.ends_with("runs/embedded/table1/fixed-512x128-s0"),
        "{manifest}"
    );
    let config = std::fs::read_to_string(config).unwrap();
    assert!(config.contains("device = \"cuda\""), "{config}");
    assert!(!slurm.join("jobs.jsonl").exists(), "nothing was submitted");
}

/// The zoo at the toy budget: every quantizer trains a few steps, one row each in the order of
/// `zoo_rows` (a pool one per routing), with the mixed pool's selection figure.
#[test]
fn toy_zoo_writes_one_row_per_quantizer() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::new(Part::Zoo, "embedded", Budget::Toy, dir.path().into());
    let report = reproduce(&opts).unwrap();
    assert!(report.ends_with("embedded-zoo.md"), "{}", report.display());
    let md = std::fs::read_to_string(&report).unwrap();
    let start = md.find("## The quantizer zoo").expect("a zoo section");
    let rows: Vec<&str> = md[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| ---"))
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .collect();
    let labels: Vec<&str> = rows
        .iter()
        .map(|r| r.split('|').nth(1).unwrap().trim())
        .collect();
    assert_eq!(
        labels,
        vec![
            "VQ [16384,4]",
            "VQ [16384,4], rotation trick",
            "VQ [16384,4], cosine",
            "SimVQ [16384,4]",
            "FSQ 8,8,8,8,4",
            "LFQ 14 bits",
            "RVQ 2 × [128,4]",
            "the paper's pool (W = 65536), sampled routing",
            "the paper's pool (W = 65536), argmax routing",
            "mixed pool: VQ [16384,4], FSQ, LFQ, RVQ, sampled routing",
            "mixed pool: VQ [16384,4], FSQ, LFQ, RVQ, argmax routing",
        ],
        "{md}"
    );
    // Every single quantizer and the mixed pool spend 14 bits per position (7 × 7 positions of
    // a 28 × 28 image) and 2 more per position to name the pool member: 686 and 784.
    for r in &rows[..7] {
        assert!(r.contains("| 686 |"), "{r}");
    }
    for r in &rows[9..] {
        assert!(r.contains("| 784 |"), "{r}");
    }
    // The embedded set has no column in the paper's tables.
    assert!(
        rows[0].split('|').nth(5).unwrap().trim() == "–",
        "{}",
        rows[0]
    );
    assert!(dir
        .path()
        .join("results/embedded-zoo/zoo_mixed_pool_selection.png")
        .is_file());
}
