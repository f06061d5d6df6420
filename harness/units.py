"""Where each unit of a run lives in its directory, and whether it is finished under the
plan's current key (an old-scheme key of the same unit is re-keyed: ``harness.migrate``).

    models/<label>/seed<k>/unit_key.txt, train_stats.json   a finished training
    results/<cell>/<suite>.json                             a finished evaluation (its key inside)
    results/<cell>/items/<suite>.json                       its per-item statistics
    outputs/<cell>/<suite>.jsonl                            its per-item outputs
"""

from __future__ import annotations

import logging
from pathlib import Path

from harness import migrate
from harness.store import read_json, write_atomic, write_json

log = logging.getLogger("radis_bench")


class Units:
    def __init__(self, plan, readonly: bool = False):
        self.plan = plan
        self.run_dir = plan.run_dir
        self.readonly = readonly  # a dry run: an old-scheme key counts as finished but is not rewritten
        self.rekeyed = 0  # units whose old-scheme key was migrated by this process
        self.unversioned: set[str] = set()  # units in use that were made before code versions existed

    def result_path(self, cell: str, suite: str) -> Path:
        return self.run_dir / "results" / cell / f"{suite}.json"

    def items_path(self, cell: str, suite: str) -> Path:
        return self.run_dir / "results" / cell / "items" / f"{suite}.json"

    def outputs_path(self, cell: str, suite: str) -> Path:
        return self.run_dir / "outputs" / cell / f"{suite}.jsonl"

    def workdir(self, label: str, seed: int) -> Path:
        return self.run_dir / "models" / label / f"seed{seed}"

    def evaluation(self, cell: str, suite: str) -> dict | None:
        """The finished evaluation unit of ``cell`` on ``suite`` under the current key, or None."""
        done = read_json(self.result_path(cell, suite))
        if not done:
            return None
        key = self.plan.eval_key(self.plan.model_key(cell), suite)
        what = f"evaluation {cell} on {suite}"
        if done.get("key") == key:
            if done.get("unversioned"):
                self.unversioned.add(what)
            return done
        if done.get("key") in migrate.unversioned_eval_keys(self.plan, cell, suite):
            self.unversioned.add(what)
            if self.readonly:
                return done
            done = {**done, "key": key, "unversioned": True, "key_before_versions": done["key"]}
            write_json(self.result_path(cell, suite), done)
            self._rekeyed(what)
            return done
        return None

    def training_done(self, label: str, seed: int) -> bool:
        workdir = self.workdir(label, seed)
        stored, stats_path = workdir / "unit_key.txt", workdir / "train_stats.json"
        if not stats_path.exists() or not stored.exists():
            return False
        key, text = self.plan.train_key(label, seed), stored.read_text()
        what = f"training {label} seed {seed}"
        if text == key:
            if (read_json(stats_path) or {}).get("unversioned"):
                self.unversioned.add(what)
            return True
        if text in migrate.unversioned_train_keys(self.plan, label, seed):
            self.unversioned.add(what)
            if self.readonly:
                return True
            write_json(stats_path, {**(read_json(stats_path) or {}), "unversioned": True, "key_before_versions": text})
            write_atomic(stored, key)
            self._rekeyed(what)
            return True
        return False

    def unversioned_warning(self) -> str | None:
        """One line on the units in use that were made before code versions existed, if any."""
        if not self.unversioned:
            return None
        return (f"{len(self.unversioned)} units in use were computed before radis-bench recorded code versions, by code "
                "that is unknown (taken for version 1; their commits are under 'computed' in each unit file); delete "
                "their files to recompute them with today's code")

    def _rekeyed(self, what: str) -> None:
        self.rekeyed += 1
        log.info("re-keyed: %s (its key was made by an earlier key scheme, without code versions)", what)
