//! `cargo xtask fuzz`: runs the `cargo fuzz` targets of `fuzz/` (IDX, CIFAR-10 and config
//! parsers) for a bounded time each and reports how many inputs ran without a crash.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The fuzz targets in `fuzz/fuzz_targets`.
pub const TARGETS: &[&str] = &["idx", "cifar", "config"];

/// Executions and time libFuzzer reported for one target.
#[derive(Clone, Debug, PartialEq)]
pub struct FuzzResult {
    pub target: String,
    pub runs: u64,
    pub seconds: u64,
}

/// Parses libFuzzer's final `Done <runs> runs in <secs> second(s)` line.
pub fn parse_done(output: &str) -> Option<(u64, u64)> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.starts_with("Done ") && l.contains(" runs in "))?;
    let mut w = line.split_whitespace();
    let runs = w.nth(1)?.parse().ok()?;
    let secs = w.nth(2)?.parse().ok()?;
    Some((runs, secs))
}

/// Runs every target (or `only`) for `seconds` each.
pub fn fuzz(seconds: u64, only: Option<&str>) -> Result<Vec<FuzzResult>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let have = Command::new("cargo").args(["fuzz", "--version"]).output();
    if !have.is_ok_and(|o| o.status.success()) {
        bail!("`cargo fuzz` is not installed: run `cargo install cargo-fuzz` (it needs a nightly toolchain, or RUSTC_BOOTSTRAP=1 on stable)");
    }
    let mut out = Vec::new();
    for t in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        eprintln!("fuzzing {t} for {seconds} s …");
        let corpus = root.join("fuzz/corpus").join(t);
        let o = Command::new("cargo")
            .current_dir(&root)
            // `cargo fuzz` passes -Z flags; this lets a stable toolchain accept them.
            .env("RUSTC_BOOTSTRAP", "1")
            .args([
                "fuzz",
                "run",
                "--fuzz-dir",
                "fuzz",
                "--sanitizer",
                "none",
                t,
            ])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=4096",
            ])
            .output()
            .with_context(|| format!("running cargo fuzz run {t}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if !o.status.success() {
            bail!(
                "fuzz target {t} failed (a crash input is saved under fuzz/artifacts/{t}/):\n{}",
                text.lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let (runs, secs) =
            parse_done(&text).with_context(|| format!("no libFuzzer summary for {t}"))?;
        eprintln!("  {t}: {runs} inputs in {secs} s, no crash");
        out.push(FuzzResult {
            target: t.to_string(),
            runs,
            seconds: secs,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_libfuzzer_summary() {
        let log = "#1024 pulse cov: 10\nDone 123456 runs in 61 second(s)\n";
        assert_eq!(parse_done(log), Some((123456, 61)));
        assert_eq!(parse_done("no summary"), None);
    }
}
