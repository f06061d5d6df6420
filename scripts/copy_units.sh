#!/bin/bash
# Copy a run directory's finished units as a published run keeps them (manifest, scores, unit
# files with their item statistics, analysis records, and per training its key and statistics;
# never weights, outputs or caches) into another folder, e.g. from an experiment's worktree into
# the checkout that commits them:
#   scripts/copy_units.sh /work/exp/reports/NAME/run reports/NAME/run
set -euo pipefail
src=$1
dst=$(realpath -m "$2")  # before the cd below
mkdir -p "$dst"
cd "$src"
for f in manifest.json scores.csv trajectories.csv; do [ -f "$f" ] && cp "$f" "$dst/$f"; done
[ -d results ] && mkdir -p "$dst/results" && cp -r results/. "$dst/results/"
[ -d analysis ] && mkdir -p "$dst/analysis" && cp -r analysis/. "$dst/analysis/"
for d in models/*/*/; do
  [ -f "$d/train_stats.json" ] || continue
  mkdir -p "$dst/$d"
  for f in unit_key.txt train_stats.json method_stats.json; do [ -f "$d/$f" ] && cp "$d/$f" "$dst/$d/$f"; done
done
true
