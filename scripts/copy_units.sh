#!/bin/bash
# Copy a run directory's finished units into a run directory of this checkout, keeping exactly what
# the repository's .gitignore lets a published run commit (manifest, scores, unit files with their
# item statistics, the analysis records, the report, and per training its key and statistics; never
# weights, outputs or caches), e.g. from an experiment's worktree into the checkout that commits them:
#   scripts/copy_units.sh /work/exp/reports/NAME/run reports/NAME/run
set -euo pipefail
src=$(realpath "$1")
dst=$(realpath -m "$2")
mkdir -p "$dst"
repo=$(git -C "$dst" rev-parse --show-toplevel)
rel=${dst#"$repo"/}
cd "$src"
find . -type f -printf '%P\n' | sort > /tmp/copy_units.$$.all
sed "s|^|$rel/|" /tmp/copy_units.$$.all | git -C "$repo" check-ignore --no-index --stdin | sed "s|^$rel/||" | sort \
  > /tmp/copy_units.$$.ignored || true  # check-ignore exits 1 when nothing is ignored
comm -23 /tmp/copy_units.$$.all /tmp/copy_units.$$.ignored | while IFS= read -r f; do
  mkdir -p "$dst/$(dirname "$f")"
  cp "$f" "$dst/$f"
done
rm -f /tmp/copy_units.$$.all /tmp/copy_units.$$.ignored
