#!/usr/bin/env bash
# The Slurm executor of `cargo xtask reproduce` against a real Slurm: a one-node cluster on this
# machine (munged, slurmctld, slurmd, started here and stopped by PID), a toy study submitted as
# a job array, one task cancelled and one made to fail, the report, a re-submission of only
# those two, and the finished study compared run by run with the same study run locally.
#
# Usage: xtask/slurm-test.sh [XTASK_BIN VQ_TRAIN_BIN]   (default: target/debug/{xtask,vq-train},
# which `cargo test --workspace` builds). Installs Debian's slurmctld, slurmd, slurm-client and
# munge when they are missing (needs root, as the daemons do). Run from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
XTASK=$(realpath "${1:-target/debug/xtask}")
VQ_TRAIN=$(realpath "${2:-target/debug/vq-train}")
for b in "$XTASK" "$VQ_TRAIN"; do
  [ -x "$b" ] || { echo "slurm-test: $b missing (build it: cargo build -p xtask -p vq-train)" >&2; exit 1; }
done
fail() { echo "slurm-test: FAILED: $*" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  [ "$(id -u)" = 0 ] || fail "Slurm is not installed and installing it needs root"
  echo "slurm-test: installing slurmctld slurmd slurm-client munge"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
[ "$(id -u)" = 0 ] || fail "the one-node cluster runs its daemons as root"

D=$(mktemp -d /tmp/vq-slurm-test.XXXXXX)
PIDS=()
cleanup() {
  # This test's jobs first (slurmstepd and vq-train outlive slurmd), then only the daemons this
  # script started, by PID.
  if [ -n "${SLURM_CONF:-}" ] && [ -f "$SLURM_CONF" ]; then
    scancel --name=vq-embedded 2>/dev/null || true
    for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/munge" "$D/state" "$D/spool"
chmod 700 "$D/munge"
head -c 1024 /dev/urandom > "$D/munge/munge.key"
chmod 600 "$D/munge/munge.key"
# Each daemon in the foreground, in the background: $! is its PID.
munged -F -f --socket="$D/munge/munge.sock" --key-file="$D/munge/munge.key" \
  --log-file="$D/munge/munged.log" --pid-file="$D/munge/munged.pid" --seed-file="$D/munge/munged.seed" > "$D/munge/munged.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$D/munge/munge.sock" ] && break; sleep 0.1; done
[ -S "$D/munge/munge.sock" ] || fail "munged did not start: $(cat "$D/munge/munged.log" 2>&1)"

# Two free TCP ports for slurmctld and slurmd (bash's /dev/tcp: a refused connection is free).
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  fail "no free port"
}
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
[ "$CTLD_PORT" != "$SLURMD_PORT" ] || SLURMD_PORT=$((CTLD_PORT + 1))
HOST=$(hostname -s)
CPUS=$(nproc)
cat > "$D/slurm.conf" <<EOF
ClusterName=vqtest
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.sock
CredType=cred/munge
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$D/slurm.conf"
slurmctld -D -f "$SLURM_CONF" > "$D/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" > "$D/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  sinfo -h -o %t 2>/dev/null | grep -qx idle && break
  sleep 0.3
done
sinfo -h -o %t 2>/dev/null | grep -qx idle || fail "the node did not come up: $(tail -5 "$D"/slurm*.log "$D"/slurm*.out 2>&1)"
echo "slurm-test: one-node cluster up ($HOST, $CPUS CPUs, ports $CTLD_PORT/$SLURMD_PORT)"

STUDY=(reproduce table1 --dataset embedded --budget toy --structures 512x128,65536x1 --seeds 2)
SLURM=("${STUDY[@]}" --executor slurm --vq-train "$VQ_TRAIN" --runs-dir "$D/slurm-runs" --report-dir "$D/slurm-report")
REPORT="$D/slurm-report/embedded.md"
SDIR="$D/slurm-runs/embedded/slurm"

# Until squeue (successfully) lists no task of the job; a failed squeue is not "done".
wait_job() {
  local out
  for _ in $(seq 600); do
    if out=$(squeue -h -j "$1" 2>&1); then
      [ -z "$out" ] && return 0
    elif echo "$out" | grep -q "Invalid job id"; then
      return 0
    fi
    sleep 0.5
  done
  fail "job $1 did not finish in 5 minutes: $(squeue -j "$1" 2>&1)"
}

# A rejected submission names the runs and Slurm's error.
if out=$("$XTASK" "${SLURM[@]}" --slurm-arg=--partition=no-such-partition 2>&1); then
  fail "a submission to a missing partition was accepted: $out"
fi
echo "$out" | grep -q "sbatch rejected the job array of 4 run(s) (table1/fixed-512x128-s0" || fail "rejection message: $out"
echo "$out" | grep -qi "partition" || fail "rejection message lacks Slurm's error: $out"

# Submit held, cancel task 1, break task 2's config, release.
out=$("$XTASK" "${SLURM[@]}" --slurm-arg=--hold 2>&1) || fail "submission: $out"
JOB=$(echo "$out" | sed -n 's/^submitted Slurm job \([0-9]*\): array tasks 0-3 (4 runs)$/\1/p')
[ -n "$JOB" ] || fail "no job id in: $out"
[ "$(sed -n 2p "$SDIR/manifest.tsv" | cut -f1)" = "$D/slurm-runs/embedded/table1/fixed-512x128-s1" ] || fail "manifest line 2: $(cat "$SDIR/manifest.tsv")"
scancel "${JOB}_1"
BROKEN=$(sed -n 3p "$SDIR/manifest.tsv" | cut -f2)
echo "not = [valid toml" > "$BROKEN"
scontrol release "$JOB"
wait_job "$JOB"

# The report holds the two finished runs and names the cancelled and the failed one.
out=$("$XTASK" "${SLURM[@]}" --status 2>&1) || fail "status: $out"
grep -q "^## Runs not finished" "$REPORT" || fail "report lists no unfinished runs: $(cat "$REPORT")"
grep -q "table1/fixed-512x128-s1\`: Slurm task ${JOB}_1 left the queue without running" "$REPORT" || fail "cancelled task: $(cat "$REPORT")"
grep -q "table1/fixed-65536x1-s0\`: Slurm task ${JOB}_2 ended FAILED (exit code 1:0)" "$REPORT" || fail "failed task: $(cat "$REPORT")"
grep -q "log $SDIR/logs/${JOB}_2.out: \`Error: .*fixed-65536x1-s0.toml" "$REPORT" || fail "failed task's log: $(cat "$REPORT")"
grep -q "^| \[512,128\] | 1 |" "$REPORT" || fail "Table 1 of the finished runs: $(cat "$REPORT")"
[ -f "$D/slurm-report/embedded/runs/table1/fixed-512x128-s0/metrics.jsonl" ] || fail "finished run not archived"

# Re-submitting submits only those two (their steps slowed by vq-train's test hook, which sbatch
# passes on with the rest of the environment, so that task 1 can be preempted mid-run).
out=$(VQ_TRAIN_FAULT_STEP_DELAY_MS=2000 "$XTASK" "${SLURM[@]}" 2>&1) || fail "re-submission: $out"
JOB2=$(echo "$out" | sed -n 's/^submitted Slurm job \([0-9]*\): array tasks 1-2 (2 runs)$/\1/p')
[ -n "$JOB2" ] || fail "re-submission was not tasks 1-2: $out"
out=$("$XTASK" "${SLURM[@]}" 2>&1) || fail "second re-submission: $out"
echo "$out" | grep -q "nothing to submit" || fail "runs queued or running were submitted again: $out"
# Preemption: task 1 is requeued while it trains; vq-train checkpoints on the SIGTERM and the
# requeued task resumes the run (the comparison with the local study below shows it unchanged).
RUN1="$D/slurm-runs/embedded/table1/fixed-512x128-s1"
# Until step 2 is logged (the toy logs every two steps), then into step 3.
for _ in $(seq 600); do grep -q '"kind":"train"' "$RUN1/metrics.jsonl" 2>/dev/null && break; sleep 0.1; done
grep -q '"kind":"train"' "$RUN1/metrics.jsonl" 2>/dev/null || fail "task 1 did not train a step: $(cat "$SDIR/logs/${JOB2}_1.out" 2>&1)"
sleep 0.5
scontrol requeue "${JOB2}_1" || fail "scontrol requeue ${JOB2}_1 failed"
# Slurm holds a requeued job back (its begin time moves on); let it start again now.
for _ in $(seq 40); do
  squeue -h -j "${JOB2}_1" -o %T 2>/dev/null | grep -qx PENDING && break
  sleep 0.5
done
scontrol update JobId="${JOB2}_1" StartTime=now || fail "task 1 was not pending after the requeue: $(squeue -j "${JOB2}_1" 2>&1)"
wait_job "$JOB2"
grep -q "(restart 1)" "$SDIR/logs/${JOB2}_1.out" || fail "task 1 was not requeued: $(cat "$SDIR/logs/${JOB2}_1.out")"
grep -q "interrupted at step [1-9]" "$SDIR/logs/${JOB2}_1.out" || fail "task 1 did not checkpoint mid-run on SIGTERM: $(cat "$SDIR/logs/${JOB2}_1.out")"
out=$("$XTASK" "${SLURM[@]}" --status 2>&1) || fail "final status: $out"
! grep -q "Runs not finished" "$REPORT" || fail "the study did not complete: $(cat "$REPORT")"
grep -q "^| \[512,128\] | 2 |" "$REPORT" && grep -q "^| \[65536,1\] | 2 |" "$REPORT" || fail "final Table 1: $(cat "$REPORT")"

# The same study run locally gives the same metrics, run by run.
"$XTASK" "${STUDY[@]}" --runs-dir "$D/local-runs" --report-dir "$D/local-report" >/dev/null 2>&1 || fail "local study"
for run in fixed-512x128-s0 fixed-512x128-s1 fixed-65536x1-s0 fixed-65536x1-s1; do
  cmp "$D/slurm-runs/embedded/table1/$run/metrics.jsonl" "$D/local-runs/embedded/table1/$run/metrics.jsonl" \
    || fail "$run: metrics differ between the slurm and the local executor"
done
echo "slurm-test: passed (jobs $JOB, $JOB2)"
