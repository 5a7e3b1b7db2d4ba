//! The Slurm executor of `cargo xtask reproduce`: the study's runs as a job array, one task per
//! unfinished run, and the report of whatever has finished.
//!
//! Files, under `<runs_dir>/<label>/slurm/`:
//! - `manifest.tsv`: one line per run of the study, `run folder <TAB> config`; array task `i`
//!   trains line `i + 1`. Append-only, so that a task still queued from an earlier submission
//!   reads the same line after the study has grown (Table 2's only-best runs join once Table 1
//!   has finished).
//! - `configs/<table>/<run>.toml`: each run's resolved config.
//! - `array.sh`: the sbatch script (requeueable; a task resumes its run folder when it exists).
//! - `jobs.jsonl`: one line per submission, `{"job": "<id>", "tasks": [i, …]}`.
//! - `logs/<job>_<task>.out`: each task's output, appended across requeues.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::report;
use vq_train::checkpoint;

use crate::reproduce::{survey, Study, Survey, Unfinished};

/// Options of the Slurm executor.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    /// Passed to `sbatch` as they are (partition, time limit, account, `--gres=gpu:1`, …).
    pub args: Vec<String>,
    /// The `vq-train` binary the tasks run (default: the one beside this binary, built first
    /// when cargo runs this one).
    pub vq_train: Option<PathBuf>,
}

/// Whether sbatch arguments ask for GPUs (`--gres=gpu…` or `--gres gpu…`, `--gpus…`, `-G`,
/// `--tres-per-task=…gres/gpu…`), in which case the runs train on `cuda`.
pub fn requests_gpus(args: &[String]) -> bool {
    let gpu_gres = |g: &str| g.split(',').any(|r| r.starts_with("gpu"));
    args.iter().enumerate().any(|(i, a)| {
        a.starts_with("--gpus")
            || a.starts_with("-G")
            || a.strip_prefix("--gres=").is_some_and(gpu_gres)
            || (a == "--gres" && args.get(i + 1).is_some_and(|g| gpu_gres(g)))
            || (a.starts_with("--tres-per-") && a.contains("gres/gpu"))
    })
}

/// sbatch options the executor sets itself or cannot follow: the array, the log path, and other
/// clusters (the tasks are looked up with the local scontrol).
const OWN_OPTIONS: [&str; 8] = [
    "--array",
    "-a",
    "--output",
    "-o",
    "--error",
    "-e",
    "--clusters",
    "-M",
];

/// Refuses `--slurm-arg`s that would break the study's bookkeeping.
pub fn check_args(args: &[String]) -> Result<()> {
    for a in args {
        let opt = a.split('=').next().unwrap_or(a);
        let short = OWN_OPTIONS
            .iter()
            .any(|o| o.len() == 2 && a.starts_with(o) && a.len() > 2 && !a.starts_with("--"));
        if OWN_OPTIONS.contains(&opt) || short {
            bail!(
                "--slurm-arg={a}: the Slurm executor sets the array and the log path itself, and \
                 follows its tasks on the local cluster only"
            );
        }
    }
    Ok(())
}

/// One submission of the study's array.
#[derive(Debug, Serialize, Deserialize)]
struct Submission {
    job: String,
    tasks: Vec<usize>,
}

/// What Slurm says of an array task.
#[derive(Clone, Debug, PartialEq)]
struct TaskState {
    state: String,
    exit_code: String,
}

/// States in which a task has ended for good; in any other state (pending, running, requeued,
/// held, suspended, …) its run is not submitted again.
const ENDED: [&str; 10] = [
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "TIMEOUT",
];

/// Where an unfinished run stands.
#[derive(Debug)]
enum Standing {
    NeverSubmitted,
    /// Queued or running as `<job>_<task>`.
    InFlight(String, TaskState),
    /// The task ended without finishing the run.
    Ended(String, TaskState),
    /// Slurm still knows the job but not the task: it left the queue before it ran (a pending
    /// task that is cancelled leaves no record).
    Vanished(String),
    /// Slurm no longer knows the job (finished jobs drop out after MinJobAge).
    Forgotten(String),
}

/// The study's Slurm folder.
struct Folder {
    dir: PathBuf,
}

impl Folder {
    fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.tsv")
    }
    fn jobs(&self) -> PathBuf {
        self.dir.join("jobs.jsonl")
    }
    fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    fn log(&self, job_task: &str) -> PathBuf {
        self.logs().join(format!("{job_task}.out"))
    }
}

/// The study on Slurm: finished runs are collected (and archived); the unfinished runs that are
/// not queued or running are submitted as one job array (unless `--status`), their configs
/// written and the manifest extended only then, so that nothing a queued task reads changes;
/// the report of what has finished is written, naming the rest.
pub(crate) fn reproduce(study: &Study, t0: Instant) -> Result<PathBuf> {
    std::fs::create_dir_all(&study.root).with_context(|| study.root.display().to_string())?;
    let root =
        std::fs::canonicalize(&study.root).with_context(|| study.root.display().to_string())?;
    let folder = Folder {
        dir: root.join("slurm"),
    };
    std::fs::create_dir_all(&folder.dir).with_context(|| folder.dir.display().to_string())?;
    // One invocation at a time per study: the manifest and the submissions are read, extended
    // and written back.
    let _lock = vq_train::lock::RunLock::acquire(&folder.dir).with_context(|| {
        format!(
            "another `reproduce --executor slurm` holds {}",
            folder.dir.display()
        )
    })?;
    let Survey {
        done,
        unfinished,
        notes,
    } = survey(study)?;
    let mut manifest = Manifest::read(&folder.manifest())?;
    let runs: Vec<String> = unfinished
        .iter()
        .map(|u| run_path(&root, study, u))
        .collect::<Result<_>>()?;
    let index: Vec<Option<usize>> = runs.iter().map(|r| manifest.index(r)).collect();
    let standing = standings(&folder, &index)?;
    let mut missing = Vec::new();
    for (u, s) in unfinished.iter().zip(&standing) {
        let line = describe(&folder, &u.name, s);
        eprintln!("  {line}");
        missing.push(line);
    }
    missing.extend(notes);
    let pick: Vec<usize> = (0..unfinished.len())
        .filter(|&k| !matches!(standing[k], Standing::InFlight(..)))
        .collect();
    if !study.opts.status {
        if pick.is_empty() {
            eprintln!("nothing to submit: every run has finished or is queued or running");
        } else {
            let mut tasks = Vec::with_capacity(pick.len());
            for &k in &pick {
                let u = &unfinished[k];
                let config = folder.dir.join("configs").join(format!("{}.toml", u.name));
                let dir = config.parent().expect("a config has a folder");
                std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
                checkpoint::write_atomic(&config, u.spec.config.to_toml().as_bytes())?;
                tasks.push(manifest.add(&runs[k], &config.display().to_string())?);
            }
            manifest.write(&folder.manifest())?;
            let names: Vec<&str> = pick.iter().map(|&k| unfinished[k].name.as_str()).collect();
            let job = submit(study, &folder, &tasks, &names)?;
            println!(
                "submitted Slurm job {job}: array tasks {} ({} runs)",
                ranges(&tasks),
                tasks.len()
            );
        }
    }
    report::write(study, &done, &missing, t0)
}

/// The absolute path of a run folder under the study's canonical root.
fn run_path(root: &Path, study: &Study, u: &Unfinished) -> Result<String> {
    let rel = u.at.dir.strip_prefix(&study.root).with_context(|| {
        format!(
            "{} is not under {}",
            u.at.dir.display(),
            study.root.display()
        )
    })?;
    let run = root.join(rel).display().to_string();
    if run.contains(['\t', '\n']) {
        bail!("{run}: the Slurm executor needs run paths without tabs or newlines");
    }
    Ok(run)
}

/// The study's manifest: line `i + 1` is array task `i`, `run folder <TAB> config`.
/// Append-only, so that a queued task always reads its own run.
struct Manifest {
    lines: Vec<(String, String)>,
    changed: bool,
}

impl Manifest {
    fn read(path: &Path) -> Result<Self> {
        let lines = read_lines(path)?
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                l.split_once('\t')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .with_context(|| {
                        format!("{}:{}: expected `run<TAB>config`", path.display(), i + 1)
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Manifest {
            lines,
            changed: false,
        })
    }

    /// The task id of a run, if it has one.
    fn index(&self, run: &str) -> Option<usize> {
        self.lines.iter().position(|(r, _)| r == run)
    }

    /// The task id of a run, appending its line when it has none.
    fn add(&mut self, run: &str, config: &str) -> Result<usize> {
        if config.contains(['\t', '\n']) {
            bail!("{config}: the Slurm executor needs paths without tabs or newlines");
        }
        Ok(match self.index(run) {
            Some(i) => i,
            None => {
                self.lines.push((run.to_string(), config.to_string()));
                self.changed = true;
                self.lines.len() - 1
            }
        })
    }

    fn write(&self, path: &Path) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        let text: String = self
            .lines
            .iter()
            .map(|(r, c)| format!("{r}\t{c}\n"))
            .collect();
        Ok(checkpoint::write_atomic(path, text.as_bytes())?)
    }
}

/// The lines of a text file; none when it does not exist.
fn read_lines(path: &Path) -> Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

/// The standing of each unfinished run from the newest submission that holds its task.
fn standings(folder: &Folder, index: &[Option<usize>]) -> Result<Vec<Standing>> {
    let subs = read_submissions(&folder.jobs())?;
    let mut jobs: BTreeMap<String, Option<BTreeMap<usize, TaskState>>> = BTreeMap::new();
    let mut out = Vec::with_capacity(index.len());
    for &i in index {
        let Some((i, sub)) =
            i.and_then(|i| Some((i, subs.iter().rev().find(|s| s.tasks.contains(&i))?)))
        else {
            out.push(Standing::NeverSubmitted);
            continue;
        };
        if !jobs.contains_key(&sub.job) {
            jobs.insert(sub.job.clone(), query(&sub.job)?);
        }
        let job_task = format!("{}_{i}", sub.job);
        out.push(match jobs[&sub.job].as_ref().map(|tasks| tasks.get(&i)) {
            Some(Some(t)) if !ENDED.contains(&t.state.as_str()) => {
                Standing::InFlight(job_task, t.clone())
            }
            Some(Some(t)) => Standing::Ended(job_task, t.clone()),
            Some(None) => Standing::Vanished(job_task),
            None => Standing::Forgotten(job_task),
        });
    }
    Ok(out)
}

fn read_submissions(path: &Path) -> Result<Vec<Submission>> {
    let lines = read_lines(path)?;
    let n = lines.len();
    let mut out = Vec::with_capacity(n);
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(s) => out.push(s),
            // A crash while appending leaves at most a torn last line.
            Err(e) if i + 1 == n => {
                eprintln!(
                    "warning: {}:{}: a torn submission record is ignored ({e})",
                    path.display(),
                    i + 1
                )
            }
            Err(e) => bail!("{}:{}: not a submission record: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// The state of each array task of `job` (`scontrol -o show job`; `None` when Slurm no longer
/// knows the job).
fn query(job: &str) -> Result<Option<BTreeMap<usize, TaskState>>> {
    // SLURM_BITSTR_LEN=0: the whole list of pending tasks, not cut at 64 characters.
    let out = Command::new("scontrol")
        .args(["-o", "show", "job", job])
        .env("SLURM_BITSTR_LEN", "0")
        .output()
        .map_err(|e| missing_tool("scontrol", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("Invalid job id") {
            return Ok(None);
        }
        bail!(
            "scontrol show job {job} failed ({}): {}",
            out.status,
            stderr.trim()
        );
    }
    Ok(Some(
        parse_scontrol(&stdout).with_context(|| format!("scontrol show job {job}"))?,
    ))
}

/// Array task states from `scontrol -o show job` lines (one per task, or one per group of
/// pending tasks, `ArrayTaskId=3-5,7,9-15:3%2`); a task list it cannot read is an error (a
/// task it missed would be submitted twice).
fn parse_scontrol(text: &str) -> Result<BTreeMap<usize, TaskState>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        let (Some(ids), Some(state)) = (field("ArrayTaskId"), field("JobState")) else {
            continue;
        };
        let t = TaskState {
            state,
            exit_code: field("ExitCode").unwrap_or_default(),
        };
        let list = ids.split('%').next().unwrap_or_default();
        for part in list.trim_matches(['[', ']']).split(',') {
            let (range, step) = part.split_once(':').unwrap_or((part, "1"));
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let (Ok(a), Ok(b), Ok(step)) = (
                a.parse::<usize>(),
                b.parse::<usize>(),
                step.parse::<usize>(),
            ) else {
                bail!("cannot read the array task list `{ids}`");
            };
            for i in (a..=b).step_by(step.max(1)) {
                out.insert(i, t.clone());
            }
        }
    }
    Ok(out)
}

/// One line of the report's list of unfinished runs.
fn describe(folder: &Folder, name: &str, s: &Standing) -> String {
    let tail = |job_task: &str| {
        let log = folder.log(job_task);
        match std::fs::read_to_string(&log) {
            Ok(text) => format!("; log {}: `{}`", log.display(), log_error(&text)),
            Err(_) => format!("; no log at {}", log.display()),
        }
    };
    match s {
        Standing::NeverSubmitted => format!("`{name}`: not submitted"),
        Standing::InFlight(jt, t) => format!("`{name}`: Slurm task {jt} is {}", t.state),
        Standing::Ended(jt, t) => format!(
            "`{name}`: Slurm task {jt} ended {} (exit code {}) without finishing the run{}",
            t.state,
            t.exit_code,
            tail(jt)
        ),
        Standing::Vanished(jt) if folder.log(jt).is_file() => format!(
            "`{name}`: Slurm no longer lists task {jt} and the run has not finished{}",
            tail(jt)
        ),
        Standing::Vanished(jt) => format!(
            "`{name}`: Slurm task {jt} left the queue without running (cancelled while pending)"
        ),
        Standing::Forgotten(jt) => format!(
            "`{name}`: Slurm no longer knows task {jt} and the run has not finished{}",
            tail(jt)
        ),
    }
}

/// What a task's log says went wrong: the last `Error:` paragraph vq-train printed (without a
/// backtrace), else the log's last three lines.
fn log_error(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let picked: Vec<&str> = match lines.iter().rposition(|l| l.starts_with("Error:")) {
        Some(i) => lines[i..]
            .iter()
            .take_while(|l| !l.trim().is_empty() && !l.starts_with("Stack backtrace"))
            .take(4)
            .map(|l| l.trim())
            .collect(),
        None => lines[lines.len().saturating_sub(3)..].to_vec(),
    };
    picked.join(" / ")
}

fn missing_tool(tool: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!(
            "{tool} not found: the Slurm executor needs Slurm's client commands on PATH \
             (or use --executor local)"
        )
    } else {
        anyhow::anyhow!("running {tool}: {e}")
    }
}

/// `0,2,3,4,7` as `0,2-4,7` (sbatch's `--array` syntax).
fn ranges(v: &[usize]) -> String {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = if i == j {
            write!(out, "{}", v[i])
        } else {
            write!(out, "{}-{}", v[i], v[j])
        };
        i = j + 1;
    }
    out
}

/// Writes the array script and submits `tasks` with `sbatch --parsable`; returns the job id.
fn submit(study: &Study, folder: &Folder, tasks: &[usize], names: &[&str]) -> Result<String> {
    let device = &study.opts.device;
    let vq_train = vq_train_binary(study.opts.slurm.vq_train.as_deref(), device)?;
    std::fs::create_dir_all(folder.logs()).with_context(|| folder.logs().display().to_string())?;
    let script = folder.dir.join("array.sh");
    checkpoint::write_atomic(&script, array_script(folder, &vq_train, device).as_bytes())?;
    // The log path, job name and requeue policy as arguments, not `#SBATCH` lines (which sbatch
    // splits on white space); `%` in a path is escaped from sbatch's filename patterns.
    let logs = folder.logs().display().to_string().replace('%', "%%");
    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg(format!("--array={}", ranges(tasks)))
        .arg(format!("--job-name=vq-{}", study.label))
        .arg(format!("--output={logs}/%A_%a.out"))
        .arg("--open-mode=append")
        .arg("--requeue")
        .args(&study.opts.slurm.args)
        .arg(&script)
        .output()
        .map_err(|e| missing_tool("sbatch", e))?;
    if !out.status.success() {
        bail!(
            "sbatch rejected the job array of {} run(s) ({}): {}",
            names.len(),
            names.join(", "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let job = stdout
        .trim()
        .split(';')
        .next()
        .filter(|j| !j.is_empty() && j.chars().all(|c| c.is_ascii_digit()))
        .with_context(|| {
            format!(
                "sbatch --parsable printed {stdout:?}, not a job id: the array may have been \
                 submitted all the same (check squeue) and is not recorded in {}",
                folder.jobs().display()
            )
        })?
        .to_string();
    let line = serde_json::to_string(&Submission {
        job: job.clone(),
        tasks: tasks.to_vec(),
    })?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(folder.jobs())
        .with_context(|| folder.jobs().display().to_string())?;
    writeln!(f, "{line}")
        .and_then(|_| f.sync_data())
        .with_context(|| format!("recording job {job} in {}", folder.jobs().display()))?;
    Ok(job)
}

/// `s` as one single-quoted shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The sbatch script: task `i` trains manifest line `i + 1`, resuming its run folder if it
/// exists (on `device`, whatever the run started on). Requeueable: a preempted task is queued
/// again; vq-train checkpoints on the SIGTERM that precedes preemption (and cancellation and the
/// time limit) and the requeued task resumes.
fn array_script(folder: &Folder, vq_train: &Path, device: &str) -> String {
    format!(
        r#"#!/bin/bash
# Job array of a study, written by `cargo xtask reproduce --executor slurm`.
# Task i trains line i + 1 of the manifest (run folder <TAB> config), resuming the run folder
# when it exists.
set -euo pipefail
manifest={manifest}
line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$manifest")
if [ -z "$line" ]; then
  echo "task ${{SLURM_ARRAY_TASK_ID}}: no line $((SLURM_ARRAY_TASK_ID + 1)) in $manifest" >&2
  exit 2
fi
run=${{line%%$'\t'*}}
config=${{line#*$'\t'}}
echo "task ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} (restart ${{SLURM_RESTART_COUNT:-0}}) on $(hostname): $run"
if [ -f "$run/config.toml" ]; then
  exec {bin} train --resume "$run" --quiet --set train.device={device}
else
  exec {bin} train --config "$config" --out "$run" --quiet
fi
"#,
        manifest = shell_quote(&folder.manifest().display().to_string()),
        bin = shell_quote(&vq_train.display().to_string()),
        device = shell_quote(device),
    )
}

/// The vq-train binary for the tasks: the one given, else the one beside this binary (built
/// first when cargo runs this one, so that it matches this source tree; with `--features cuda`
/// for runs on `cuda`).
fn vq_train_binary(given: Option<&Path>, device: &str) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--vq-train {}: no such file", p.display());
        }
        return std::path::absolute(p).with_context(|| p.display().to_string());
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = exe.parent().context("this binary's folder")?;
    let sibling = dir.join("vq-train");
    if let (Some(cargo), Some(target)) = (std::env::var_os("CARGO"), dir.parent()) {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "vq-train", "--target-dir"])
            .arg(target);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if device.starts_with("cuda") {
            cmd.args(["--features", "cuda"]);
        }
        eprintln!("building vq-train for the Slurm tasks: {cmd:?}");
        let status = cmd.status().context("running cargo build -p vq-train")?;
        if !status.success() {
            bail!("cargo build -p vq-train failed ({status})");
        }
    }
    if !sibling.is_file() {
        bail!(
            "no vq-train binary beside {}: build it (cargo build --release -p vq-train) and pass \
             --vq-train PATH",
            exe.display()
        );
    }
    Ok(sibling)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scontrol -o show job` of a 4-task array (from Slurm 22.05 on a one-node cluster, the
    /// lines cut to the fields read): task 0 done, 1 failed, 2 and 3 pending as one line.
    #[test]
    fn scontrol_lines_give_each_task_state() {
        let text = "JobId=7 ArrayJobId=5 ArrayTaskId=2-3,6%1 JobState=PENDING Reason=Resources ExitCode=0:0\n\
                    JobId=6 ArrayJobId=5 ArrayTaskId=1 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0\n\
                    JobId=5 ArrayJobId=5 ArrayTaskId=0 JobState=COMPLETED Reason=None ExitCode=0:0\n";
        let m = parse_scontrol(text).unwrap();
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 6]);
        assert_eq!(m[&1].state, "FAILED");
        assert_eq!(m[&1].exit_code, "1:0");
        assert_eq!(m[&3].state, "PENDING");
        assert_eq!(m[&0].state, "COMPLETED");
    }

    /// Stepped ranges (`first-last:step`) and lists; a cut list (`...`, what scontrol prints
    /// past 64 characters unless SLURM_BITSTR_LEN is set) is refused rather than half read.
    #[test]
    fn scontrol_task_lists_with_steps_and_cuts() {
        let m =
            parse_scontrol("JobId=9 ArrayTaskId=1-11:5,13 JobState=PENDING ExitCode=0:0").unwrap();
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 6, 11, 13]);
        let e = parse_scontrol("JobId=9 ArrayTaskId=1,4,7,10,13,16,... JobState=PENDING")
            .unwrap_err()
            .to_string();
        assert!(e.contains("1,4,7,10,13,16,..."), "{e}");
    }

    #[test]
    fn script_quotes_paths() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
        let folder = Folder {
            dir: PathBuf::from("/runs/my study/slurm"),
        };
        let s = array_script(&folder, Path::new("/bin/vq train"), "cuda");
        assert!(
            s.contains("manifest='/runs/my study/slurm/manifest.tsv'"),
            "{s}"
        );
        assert!(
            s.contains(
                "exec '/bin/vq train' train --resume \"$run\" --quiet --set train.device='cuda'"
            ),
            "{s}"
        );
    }

    /// A failed task's log: the error paragraph, not the backtrace after it.
    #[test]
    fn a_failed_log_gives_its_error() {
        let log = "task 3_2 (restart 0) on vm: /runs/x\nError: /c/x.toml: TOML parse error\n\n\
                   Caused by:\n    expected `=`\n\nStack backtrace:\n   0: main\n   1: _start\n";
        assert_eq!(log_error(log), "Error: /c/x.toml: TOML parse error");
        assert_eq!(log_error("a\nb\nc\nd\n"), "b / c / d");
    }

    #[test]
    fn task_lists_compress_to_ranges() {
        assert_eq!(ranges(&[7, 0, 2, 3, 4]), "0,2-4,7");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[1, 2]), "1-2");
    }

    #[test]
    fn own_options_are_refused() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_args(&v(&["--partition=gpu", "--time=1:00:00", "--gres=gpu:1"])).is_ok());
        for bad in [
            "--array=0-3",
            "--output=x.out",
            "-o",
            "-oX",
            "--clusters=b",
            "-M",
            "-a",
        ] {
            let e = check_args(&v(&[bad])).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        // Options that merely start with the same letters are left alone.
        assert!(check_args(&v(&["--account=x", "--mem=4G", "--exclusive"])).is_ok());
    }

    #[test]
    fn gpu_requests_are_recognised() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(requests_gpus(&v(&["--gres=gpu:1"])));
        assert!(requests_gpus(&v(&[
            "--partition=x",
            "--gres=tmp:10G,gpu:a100:2"
        ])));
        assert!(requests_gpus(&v(&["--gpus=2"])));
        assert!(requests_gpus(&v(&["--gpus-per-task=1"])));
        assert!(requests_gpus(&v(&["-G1"])));
        assert!(requests_gpus(&v(&["--gres", "gpu:1"])));
        assert!(requests_gpus(&v(&["--tres-per-task=gres/gpu:1"])));
        assert!(!requests_gpus(&v(&["--gres", "tmp:1G"])));
        assert!(!requests_gpus(&v(&["--gres=tmp:10G", "--time=1:00:00"])));
    }
}
