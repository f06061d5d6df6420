"""Publishing a run: the manifest, scores.csv, the per-item statistics beside each unit and
the report, all rebuilt from the unit files on disk under a short lock, so whichever
process finishes last (cells of a grid run side by side) leaves them complete."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from harness import versions
from harness.paths import cache_dir
from harness.progress import console, warn
from harness.report.read import SCORE_COLUMNS, TRAJECTORY_COLUMNS, unit_rows
from harness.report.render import render_report
from harness.store import ORIGINAL, StateLock, Unreadable, load_json, read_json, read_jsonl, write_atomic, write_json

log = logging.getLogger("radis_bench")



def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("radis-bench", "torch", "transformers", "peft", "lm-eval", "sacrebleu", "unbabel-comet", "alpaca-eval", "numpy", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> dict:
    import subprocess

    root = versions.SOURCE_ROOT
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def _hardware() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def portable(value: str | None) -> str | None:
    """A path as the manifest may publish it (the model, the data dir, the config file and the
    command line; the config itself stays as given): under radis-bench's cache as ``<radis-bench
    cache>/...``, under the home folder as ``~/...``, any other absolute path relative to the
    working directory (``../shared/data``); anything else unchanged."""
    if not value or not os.path.isabs(value):
        return value

    path = Path(value)
    for root, name in ((cache_dir(), "<radis-bench cache>"), (Path.home(), "~")):
        try:
            return str(Path(name) / path.relative_to(root))
        except ValueError:
            continue
    return os.path.relpath(path)


class Publisher:
    def __init__(self, plan, units, backend: str):
        self.plan, self.units, self.backend = plan, units, backend
        self.run_dir = plan.run_dir
        self.timings: dict[str, float] = {}
        self.generated: dict[str, dict] = {}  # cell (or the original's work) -> answers, new tokens, seconds
        self.computed_cells: dict[str, dict] = {}  # cell -> stamp of the last unit this process computed
        self.manifest: dict = {}

    def start(self) -> None:
        """The manifest of this invocation (merged with the one on disk when it is written)."""
        plan, cfg = self.plan, self.plan.cfg
        cfg_text = Path(plan.config_file).read_text(encoding="utf-8") if plan.config_file is not None else None
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.manifest = {
            "name": self.run_dir.name, "created": now, "updated": now,
            "command": [Path(sys.argv[0]).name] + [portable(a) for a in sys.argv[1:]],
            "config": cfg.to_dict(),  # as the user gave it: a re-run reads it back
            "config_file": {"path": portable(str(plan.config_file)), "text": cfg_text} if plan.config_file else None,
            "model": {**dataclasses.asdict(plan.spec), "path": portable(plan.spec.path)},
            "versions": _versions(), "git": git_commit(), "hardware": _hardware(), "seeds": cfg.seeds,
            "data": {"source": portable(plan.data.label),
                     "plan": {**(plan.sizes or {}), "data": portable(plan.data.label)} if plan.sizes else plan.sizes,
                     "file_sha256": dict(sorted(plan.data.hashes.items()))},
            "code": {"trainer": versions.TRAINER, "generator": versions.GENERATOR,
                     "methods": {label: type(m).version for label, m in plan.methods.items()},
                     "suites": {name: type(s).version for name, s in plan.suites.items()}},
            "budget": asdict(cfg.budget), "lora": asdict(cfg.lora),
            "methods": {row.pop("label"): row for row in plan.describe_rows()},
            "suites": {n: {"description": s.description, "role": s.role, "options": s.options_dict(),
                           "metrics": [m.to_dict() for m in s.metrics()]} for n, s in plan.suites.items()},
            "training": {}, "method_stats": {}, "timings": {}, "generated": {}, "cells": {},
            "generation": {
                "backend_setting": cfg.generation_backend, "backend": self.backend, "greedy_answers": True,
                "note": "vllm: the original and trained LoRA models (base + adapter) generate with vLLM; fully fine-tuned "
                        "models and the safety classifier generate with transformers" if self.backend == "vllm" else "",
            },
        }
        self.publish()

    def stamp(self) -> dict:
        """When a unit's computation started, on which host and process, with which git commit."""
        return {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "pid": os.getpid(),
                "git": self.manifest["git"]}

    def computed(self, cell: str, stamp: dict) -> None:
        self.computed_cells[cell] = stamp

    def publish(self, report: bool = False) -> None:
        """Rewrite manifest.json and scores.csv (and the report) from what is on disk now,
        under the short state lock, so concurrent cells never drop each other's units."""
        with StateLock(self.run_dir):
            self._write_scores()
            self._write_trajectories()
            self._write_manifest()  # after the scores: reading every unit found the unversioned ones
            if report:
                render_report([self.run_dir], self.run_dir / "report", title=self.plan.cfg.title)

    def _write_manifest(self) -> None:
        old = read_json(self.run_dir / "manifest.json") or {}
        m = self.manifest
        m["created"] = old.get("created") or m["created"]
        m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        m["data"]["file_sha256"] = dict(sorted({**old.get("data", {}).get("file_sha256", {}), **self.plan.data.hashes}.items()))
        m["training"], m["method_stats"], m["keys"] = {}, {}, {}
        for cell, label, seed in self.plan.trained_units():
            if self.units.training_done(label, seed):
                workdir = self.units.workdir(label, seed)
                m["training"].setdefault(label, {})[str(seed)] = read_json(workdir / "train_stats.json") or {}
                m["method_stats"].setdefault(label, {})[str(seed)] = read_json(workdir / "method_stats.json") or {}
                m["keys"].setdefault(label, {})[str(seed)] = self.plan.keys.train_key(label, seed)
        m["timings"] = {**old.get("timings", {}), **self.timings}
        m["generated"] = {**old.get("generated", {}), **self.generated}
        # which process and code last computed a unit of each cell; a run that only reuses keeps the old entries
        m["cells"] = {**old.get("cells", {}), **self.computed_cells}
        m["unversioned_units"] = sorted(self.units.unversioned)
        compute = self.compute()
        if compute:
            m["compute"] = compute
        write_json(self.run_dir / "manifest.json", m)

    def compute(self) -> dict:
        """FLOPs of every unit that counted them (harness.model.compute), by cell: building the
        training data, training (its preparation and its steps), each suite's evaluation."""
        out: dict[str, dict] = {}
        cells = [(ORIGINAL, None, None)] + list(self.plan.trained_units())
        for cell, label, seed in cells:
            entry: dict = {}
            if label is not None and self.units.training_done(label, seed):
                workdir = self.units.workdir(label, seed)
                data = (read_json(workdir / "method_stats.json") or {}).get("data_flops")
                trained = (read_json(workdir / "train_stats.json") or {}).get("flops")
                if data:
                    entry["data"] = data
                if trained:
                    entry["training"] = trained
            for suite in self.plan.suites:
                done = self.units.evaluation(cell, suite)
                if done and done.get("flops"):
                    entry.setdefault("evaluation", {})[suite] = done["flops"]
            if entry:
                out[cell] = entry
        return out

    # scores --------------------------------------------------------------------------------
    def score_rows(self) -> list[dict]:
        """Rows of every finished unit of this run on disk, whichever process computed it
        (units left by other settings are skipped)."""
        rows = []
        cells = [(ORIGINAL, ORIGINAL, None)] + [(cell, label, seed) for cell, label, seed in self.plan.trained_units()]
        for cell, label, seed in cells:
            for suite in self.plan.suites:
                done = self.units.evaluation(cell, suite)
                if done is None:
                    continue
                base = {"model": self.plan.cfg.model, "method": label, "seed": "" if seed is None else seed, "suite": suite}
                rows += [{**base, **row} for row in unit_rows(done)]
        return rows

    def trajectory_rows(self) -> list[dict]:
        """Every trajectory point's scores on the trajectory suites: the original at step 0, each
        kept checkpoint (``<cell>@step<N>``) and each cell's final model at its last step."""
        suites = self.plan.cfg.trajectory
        rows = []

        def add(cell, label, seed, step):
            for suite in suites:
                done = self.units.evaluation(cell, suite)
                for m in (done or {}).get("metrics", []):
                    rows.append({"model": self.plan.cfg.model, "method": label, "seed": "" if seed is None else seed,
                                 "step": step, "suite": suite, "metric": m["name"], "value": m["value"], "n": m["n"],
                                 "higher_is_better": "" if m["higher_is_better"] is None else m["higher_is_better"],
                                 "main": m["main"], "cell": cell})

        add(ORIGINAL, ORIGINAL, None, 0)
        for cell, label, seed in self.plan.trained_units():
            if not self.units.training_done(label, seed):
                continue
            total = int((read_json(self.units.workdir(label, seed) / "train_stats.json") or {}).get("steps") or 0)
            for step in range(self.plan.cfg.eval_every, total, self.plan.cfg.eval_every):
                add(f"{cell}@step{step}", label, seed, step)
            add(cell, label, seed, total)
        return rows

    def _write_trajectories(self) -> None:
        if not self.plan.cfg.eval_every:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=TRAJECTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.trajectory_rows():
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        write_atomic(self.run_dir / "trajectories.csv", buf.getvalue())

    def _write_scores(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SCORE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.score_rows():
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        write_atomic(self.run_dir / "scores.csv", buf.getvalue())

    # per-item statistics --------------------------------------------------------------------
    def write_item_stats(self, cell: str, suite: str, outputs: list[dict]) -> None:
        """Per-item statistics (numbers and item ids, no text) beside the unit, for the
        intervals of the report."""
        try:
            stats = self.plan.suites[suite].item_stats(outputs)
        except (KeyError, TypeError, ValueError) as err:  # outputs of an older format: no intervals from items
            log.warning("no per-item statistics for %s on %s: %s", cell, suite, err)
            return
        if stats:  # one line per metric: thousands of numbers, committed with published reports
            lines = [f"{json.dumps(name)}: {json.dumps(st.to_dict(), separators=(',', ':'))}" for name, st in stats.items()]
            write_atomic(self.units.items_path(cell, suite), "{\n" + ",\n".join(lines) + "\n}\n")

    def backfill_item_stats(self) -> None:
        """Units evaluated before per-item statistics existed get them from their outputs, and
        so do units whose statistics file is damaged (said once); a unit whose damaged file
        cannot be rewritten so is recomputed (``harness.run.units``)."""
        for path in sorted((self.run_dir / "results").glob("*/*.json")):
            cell, suite = path.parent.name, path.stem
            items, outputs = self.units.items_path(cell, suite), self.units.outputs_path(cell, suite)
            if suite not in self.plan.suites or not outputs.exists():
                continue
            try:
                if items.exists():
                    load_json(items)
                    continue
            except Unreadable as err:
                damaged = err
            else:
                damaged = None
            try:
                rows = read_jsonl(outputs)
            except Unreadable as err:
                warn(f"{err}, so no per-item statistics are made from it")
                continue
            if damaged is not None:
                warn(f"{damaged}; rewriting it from {outputs.relative_to(self.run_dir)}")
            self.write_item_stats(cell, suite, rows)

    # the console summary --------------------------------------------------------------------
    def summary(self) -> None:
        from rich.table import Table

        rows = self.score_rows()
        mains = list(dict.fromkeys((r["suite"], r["metric"]) for r in rows if r["main"]))
        table = Table(title="Main metrics (mean over seeds)")
        table.add_column("method")
        for suite, metric in mains:
            table.add_column(f"{suite}\n{metric}", justify="right")
        for label in [ORIGINAL] + list(self.plan.entries):
            cells = []
            for suite, metric in mains:
                vals = [float(r["value"]) for r in rows if r["method"] == label and r["suite"] == suite and r["metric"] == metric and r["value"] is not None]
                cells.append(f"{sum(vals) / len(vals):.3g}" if vals else "—")
            table.add_row(label, *cells)
        console.print(table)
