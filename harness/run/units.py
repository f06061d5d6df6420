"""Where each unit of a run lives in its run directory (the layout: ``harness.store``), and
whether it is finished under the plan's current key (an old-scheme key of the same unit is
re-keyed: ``harness.run.keys``); what a run would compute and reuse."""

from __future__ import annotations

import logging
from pathlib import Path

from harness.errors import UserError
from harness.progress import warn
from harness.store import Unreadable, load_json, write_atomic, write_json

log = logging.getLogger("radis_bench")


class Units:
    """The run's units on disk. A unit file or per-item statistics file that is there but
    cannot be read (cut short by a full disk, damaged by a copy) makes its unit unfinished:
    the run names the file once and recomputes the unit, which rewrites it."""

    def __init__(self, plan, readonly: bool = False):
        self.plan = plan
        self.run_dir = plan.run_dir
        self.readonly = readonly  # a dry run: an old-scheme key counts as finished but is not rewritten
        self.rekeyed = 0  # units whose old-scheme key was migrated by this process
        self.unversioned: set[str] = set()  # units in use that were made before code versions existed
        self.damaged: dict[Path, str] = {}  # files this process found unreadable -> why (each named once)
        self._readable: dict[Path, tuple[int, int]] = {}  # per-item statistics read whole once: (size, mtime)

    def _damaged(self, err: Unreadable, unit: str) -> None:
        if err.path not in self.damaged:
            self.damaged[err.path] = err.why
            warn(f"{err}, so {unit} counts as not finished; {'a run recomputes it' if self.readonly else 'recomputing it'}.")

    def _check_items(self, cell: str, suite: str) -> None:
        """``Unreadable`` when the unit's per-item statistics are there but damaged (each
        version of the file is parsed once per process)."""
        path = self.items_path(cell, suite)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return  # a suite without per-item statistics, or a unit made before they existed
        if self._readable.get(path) != (stat.st_size, stat.st_mtime_ns):
            load_json(path)
            self._readable[path] = (stat.st_size, stat.st_mtime_ns)

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
        try:
            done = load_json(self.result_path(cell, suite))
            if done is not None and not isinstance(done.get("metrics"), list):
                raise Unreadable(self.result_path(cell, suite), "no metrics: not a unit file")
            if done is not None:
                self._check_items(cell, suite)
        except Unreadable as err:
            self._damaged(err, f"evaluation {cell} on {suite}")
            return None
        if not done:
            return None
        key = self.plan.keys.eval_key(self.plan.keys.model_key(cell), suite)
        what = f"evaluation {cell} on {suite}"
        if done.get("key") == key:
            if done.get("unversioned"):
                self.unversioned.add(what)
            return done
        if done.get("key") in self.plan.keys.earlier.evaluation(cell, suite):
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
        key, text = self.plan.keys.train_key(label, seed), stored.read_text(errors="replace")
        what = f"training {label} seed {seed}"
        try:
            stats = load_json(stats_path)
        except Unreadable as err:
            self._damaged(err, what)
            return False
        if text == key:
            if stats.get("unversioned"):
                self.unversioned.add(what)
            return True
        if text in self.plan.keys.earlier.train(label, seed):
            self.unversioned.add(what)
            if self.readonly:
                return True
            write_json(stats_path, {**stats, "unversioned": True, "key_before_versions": text})
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


def pending_units(plan) -> dict:
    """What a dry run says of the selected cells: the trainings and evaluations to compute
    (``todo_train``: (label, seed); ``todo_eval``: cell -> suites) and how many are
    finished under the current keys (read only: an old-scheme key is not rewritten).
    ``known`` is False when that cannot be told without fetching the model (a hub model
    not in the local cache); then everything selected is listed as to compute."""
    cells = [c for c in plan.cells() if plan.selected(c)]
    trained = [(label, seed) for cell, label, seed in plan.trained_units() if plan.selected(cell)]
    status = {"known": True, "why": "", "done_train": 0, "done_eval": 0,
              "todo_train": trained, "todo_eval": {c: list(plan.suites) for c in cells}}
    if not any((plan.run_dir / d).is_dir() for d in ("models", "results")):
        return status  # a new run directory: nothing is finished
    if not plan.spec_resolved:
        try:
            plan.resolve_spec(offline=True)
        except UserError:
            return {**status, "known": False, "why": f"{plan.cfg.model} is not in the local hub cache"}
    units = Units(plan, readonly=True)
    todo_train = [(label, seed) for label, seed in trained if not units.training_done(label, seed)]
    todo_eval = {c: pending for c in cells if (pending := [s for s in plan.suites if units.evaluation(c, s) is None])}
    return {**status, "done_train": len(trained) - len(todo_train),
            "done_eval": len(cells) * len(plan.suites) - sum(len(v) for v in todo_eval.values()),
            "todo_train": todo_train, "todo_eval": todo_eval, "unversioned": units.unversioned_warning()}
