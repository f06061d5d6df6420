#!/bin/bash
# Run a radis-bench grid on a Slurm cluster: one array task per cell (the original model,
# or one method x seed), all writing into ONE run directory, then one report.
#
#   sbatch examples/slurm_grid.sh                    # submits the array; it submits the report step
#
# Every task runs the same command with its own `--only`; the run directory is shared
# storage (NFS/Lustre with working flock). Cells lock only themselves: a task that asks
# for a cell another process is computing stops at once with exit code 2; a re-submitted
# array finishes only what is missing (finished units are reused). Adapt the #SBATCH lines
# to your cluster.
#
#SBATCH --job-name=radis-grid
#SBATCH --array=0-15                 # 1 original + 5 methods x 3 seeds = 16 cells
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%A_%a.out

set -euo pipefail

CONFIG=${CONFIG:-paper}                       # a shipped preset or a YAML/TOML file
OUT=${OUT:-runs/paper-mistral}                # the one shared run directory
METHODS=(radis vanilla sdft seqkd replay)     # must match the config's methods
SEEDS=(0 1 2)                                 # must match the config's seeds
EXTRA=(${EXTRA:-})                            # e.g. EXTRA="--data-dir /data/shared --judge my_judge.yaml"

# The generation cache is SQLite in WAL mode: keep it on node-local disk (WAL does not work
# on NFS). Cells on different nodes then each regenerate the original model's outputs they
# need (e.g. RaDis rationales per seed); a cache on one node's local disk shared by its
# cells avoids that.
export RADIS_BENCH_CACHE=${RADIS_BENCH_CACHE:-${TMPDIR:-/tmp}/radis-bench-cache}

# Task 0 evaluates the original model; task k >= 1 trains and evaluates one method x seed.
task=${SLURM_ARRAY_TASK_ID:?run this under sbatch}
if [ "$task" -eq 0 ]; then
  only="method=original"
else
  i=$((task - 1))
  only="method=${METHODS[$((i % ${#METHODS[@]}))]},seed=${SEEDS[$((i / ${#METHODS[@]}))]}"
fi

# The first task to start submits the report step, which waits for the whole array.
if [ "$task" -eq "${SLURM_ARRAY_TASK_MIN:-0}" ]; then
  sbatch --dependency=afterany:"$SLURM_ARRAY_JOB_ID" --job-name=radis-report --time=00:30:00 \
    --output=logs/%x-%j.out --wrap="radis-bench report '$OUT'"
fi

radis-bench run --config "$CONFIG" --out "$OUT" --only "$only" "${EXTRA[@]}"

# Every cell rewrites scores.csv, manifest.json and report/ from all finished units on
# disk when it ends, so the last one leaves the whole leaderboard; the report step above
# re-renders it once more after the array (also after failed tasks: afterany).
