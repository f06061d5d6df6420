"""``radis-bench run``: evaluate the original model, then train every method under the
shared budget and evaluate it, as units of work that are reused when a run resumes.

Units and their keys (a unit is redone only when its key changes):
- training of (method, seed): base-model fingerprint, method options, budget, LoRA,
  training data (directions, sample size and seed, file hashes), seed;
- evaluation of (model label, suite): the model's key, suite options and the run's
  evaluation settings. Generations are cached separately (content-addressed), so an
  evaluation interrupted half-way regenerates nothing it already produced.

Cells: the original model's evaluation, and the training and evaluation of each (method,
seed). ``--only`` runs some cells; separate processes (a job array) may run different
cells into one run directory at once. Each holds the run directory's lock shared and its
cells' locks exclusively; manifest.json, scores.csv and the report are rebuilt from the
unit files on disk under a short lock, so whichever process finishes last leaves them
complete.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from harness import registry
from harness.config import RunConfig
from harness.data import DataSource, Direction, MissingData, parse_directions, sample
from harness.errors import UserError
from harness.progress import console
from harness.store import CellLock, RunLock, StateLock, read_json, read_jsonl, write_atomic, write_json, write_jsonl

log = logging.getLogger("radis_bench")

SCORE_COLUMNS = ["model", "method", "seed", "suite", "metric", "value", "n", "ci_low", "ci_high", "higher_is_better", "main", "note"]

# Which general-ability set each built-in suite reads (for the plan's sizes).
SUITE_DATA = {
    "ifeval": "ifeval",
    "alpaca_eval": "alpaca_eval",
    "mt_bench": "mt_bench",
    "safety": "advbench",
    "gsm8k": "gsm8k",
    "retention": "alpaca_eval",
}


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("radis-bench", "torch", "transformers", "peft", "lm-eval", "sacrebleu", "unbabel-comet", "alpaca-eval", "numpy", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _git_commit() -> dict:
    import subprocess

    root = Path(__file__).resolve().parent.parent
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


ONLY_HELP = "method=NAME[+NAME...][,seed=N[+N...]], e.g. method=radis,seed=1 or method=original"


def parse_only(specs: list[str], methods: list[str], seeds: list[int]) -> list[str]:
    """The cells that ``--only`` selects, as unit labels (``original``, ``radis-seed1``), in
    run order. Each spec selects the product of its methods and seeds (every method or
    seed of the run when left out; ``original`` takes no seed); repeated specs add up."""
    chosen: set[str] = set()
    for spec in specs:
        fields: dict[str, list[str]] = {}
        for part in spec.split(","):
            key, eq, value = part.partition("=")
            key = key.strip()
            values = [v.strip() for v in value.split("+")]
            if not eq or key not in ("method", "seed") or key in fields or not all(values):
                raise UserError(f"--only '{spec}' is not valid; use {ONLY_HELP}.")
            fields[key] = values
        picked = fields.get("method", list(methods))
        for name in picked:
            if name != "original" and name not in methods:
                raise UserError(f"--only '{spec}': method '{name}' is not in this run's methods ({', '.join(methods)}) nor 'original'.")
        wanted = fields.get("seed")
        if wanted is not None:
            for value in wanted:
                if not value.lstrip("-").isdigit() or int(value) not in seeds:
                    raise UserError(f"--only '{spec}': seed '{value}' is not one of this run's seeds ({', '.join(map(str, seeds))}).")
            if picked == ["original"]:
                raise UserError(f"--only '{spec}': the original model has no seed; use method=original alone.")
        for name in picked:
            if name == "original":
                chosen.add("original")
            else:
                chosen |= {f"{name}-seed{s}" for s in seeds if wanted is None or s in {int(v) for v in wanted}}
    order = ["original"] + [f"{m}-seed{s}" for s in seeds for m in methods]
    return [label for label in order if label in chosen]


class Runner:
    def __init__(self, cfg: RunConfig, config_file: Path | None = None, only: list[str] | None = None):
        self.cfg = cfg
        self.config_file = config_file
        self.directions: list[Direction] = parse_directions(cfg.pairs)
        self.methods = {n: registry.get_method(n).from_settings(cfg.method_options.get(n)) for n in cfg.methods}
        self.suites = {n: registry.get_suite(n).from_settings(cfg.suite_options.get(n)) for n in cfg.suites}
        for name in list(cfg.method_options) + list(cfg.suite_options):
            if name not in registry.methods() and name not in registry.suites():
                raise UserError(f"Options given for '{name}', which is neither a known method nor a suite; see `radis-bench list`.")
        for name in cfg.suite_sizes:
            if name not in self.suites:
                raise UserError(f"suite_sizes names '{name}', which is not among this run's suites ({', '.join(self.suites)}).")
        self.data = DataSource.open(cfg.data_dir)
        self.run_dir = Path(cfg.out) if cfg.out else Path("runs") / self.default_name()
        # the cells this process runs; None: the whole run (holds the run directory alone)
        self.only = parse_only(only, list(self.methods), list(cfg.seeds)) if only else None
        self._original = None
        self._spec = None
        self._backend = None
        self._engine = None
        self._lora_ids: dict[str, int] = {}
        self._train_pairs = None
        self._train_keys: dict[tuple[str, int], str] = {}

    def default_name(self) -> str:
        settings = self.cfg.to_dict()
        settings.pop("out", None)
        settings.pop("title", None)
        for how in ("generation_backend", "device", "gen_batch_size"):  # how, not what: one run (and cache) for all
            settings.pop(how, None)
        short = Path(self.cfg.model).name.replace(".", "_")
        return f"{short}-{'_'.join(d.name for d in self.directions)}-{_hash(settings)[:8]}"

    # --- the plan ---------------------------------------------------------------------
    def plan(self, missing_ok: bool = False) -> dict:
        """Every size the run will use, read from the real files (validates the data).

        With ``missing_ok`` (the dry run) a direction or set whose data is missing is listed
        under ``missing`` with the error a real run would stop with."""
        from harness.models import check_model

        model_note = check_model(self.cfg.model)
        translation, general, missing = {}, {}, {}
        for d in self.directions:
            try:
                train = self.data.translation(d, "train")
                test = self.data.translation(d, "test")
            except MissingData as err:
                if not missing_ok:
                    raise
                missing[d.name] = str(err)
                continue
            used = sample(train, self.cfg.train_size, self.cfg.data_seed)
            translation[d.name] = {
                "train_available": len(train),
                "train_used": len(used),
                "train_chars_used": sum(len(p.source) + len(p.reference) for p in used),
                "test_available": len(test),
                "test_used": len(sample(test, self._size("translation"), self.cfg.data_seed)),
            }
        needed = {SUITE_DATA[s] for s in self.suites if s in SUITE_DATA}
        needed |= {getattr(m.options, "replay_set", None) for m in self.methods.values()} - {None}
        for name in sorted(needed):
            try:
                rows = self.data.general(name)
            except MissingData as err:
                if not missing_ok:
                    raise
                missing[name] = str(err)
                continue
            sizes = [self._size(s) for s in self.suites if SUITE_DATA.get(s) == name] or [self.cfg.eval_size]
            size = None if None in sizes else max(sizes)
            general[name] = {"available": len(rows), "used": len(sample(rows, size, self.cfg.data_seed))}
        plan = {"model": model_note, "data": self.data.label, "translation": translation, "general": general}
        if missing:
            plan["missing"] = missing
        return plan

    def _size(self, suite: str) -> int | None:
        return self.cfg.suite_sizes.get(suite, self.cfg.eval_size)

    def print_plan(self) -> None:
        from rich.table import Table

        from harness.estimate import estimate

        plan = self.plan(missing_ok=True)
        out = console.__class__()
        b = self.cfg.budget
        out.print(f"[bold]Model:[/bold] {self.cfg.model} ({plan['model']})")
        out.print(f"[bold]Data:[/bold] {plan['data']}")
        table = Table(title="Translation data (pairs)")
        for col in ("direction", "train available", "train used", "test available", "test used"):
            table.add_column(col, justify="right" if col != "direction" else "left")
        for name, row in plan["translation"].items():
            table.add_row(name, f"{row['train_available']:,}", f"{row['train_used']:,}", f"{row['test_available']:,}", f"{row['test_used']:,}")
        for name in plan.get("missing", {}):
            if name in [d.name for d in self.directions]:
                table.add_row(name, *["[red]missing[/red]"] * 4)
        out.print(table)
        if plan["general"]:
            table = Table(title="General-ability data (items)")
            for col in ("set", "available", "used"):
                table.add_column(col)
            for name, row in plan["general"].items():
                table.add_row(name, f"{row['available']:,}", f"{row['used']:,}")
            out.print(table)
        out.print(f"[bold]Methods:[/bold] {', '.join(self.methods)}   [bold]Seeds:[/bold] {', '.join(map(str, self.cfg.seeds))}")
        out.print(f"[bold]Suites:[/bold] {', '.join(self.suites)}")
        lora = self.cfg.lora
        adapter = "full fine-tuning" if lora.full_finetune else f"LoRA r={lora.r} alpha={lora.alpha} on {','.join(lora.target_modules)}"
        out.print(
            f"[bold]Budget (every method):[/bold] {b.steps} steps x {b.batch_size} examples, lr {b.learning_rate:g} {b.schedule}, "
            f"max length {b.max_length}, equalise {b.equalise}; {adapter}"
        )
        out.print(f"[bold]Run directory:[/bold] {self.run_dir}")
        if plan.get("missing"):
            out.print(f"[bold red]Missing data:[/bold red] {', '.join(plan['missing'])}; a real run stops with:")
            for message in plan["missing"].values():
                out.print(f"  - {message}", soft_wrap=True)
        out.print("[bold]" + estimate(self, plan).line().replace(":", ":[/bold]", 1) + (
            " (directions and sets with missing data not counted)" if plan.get("missing") else ""), soft_wrap=True)
        if self.only is not None:
            out.print(f"[bold]Cells (--only):[/bold] {', '.join(self.only)}")

    # --- models ---------------------------------------------------------------------------
    @property
    def spec(self):
        if self._spec is None:
            from harness.models import resolve_model

            spec = resolve_model(self.cfg.model, self.cfg.trust_remote_code)
            device, dtype = self.placement
            if dtype != "float32":  # other weights give other outputs: every key downstream changes
                spec = dataclasses.replace(spec, fingerprint=f"{spec.fingerprint}@{dtype}")
            self._spec = spec
        return self._spec

    @property
    def placement(self) -> tuple[str, str]:
        """(device, dtype) the models run in, from the device and dtype settings."""
        from harness.models import resolve_placement

        return resolve_placement(self.cfg.device, self.cfg.dtype)

    def _load_base(self):
        from harness.models import load_model

        device, dtype = self.placement
        return load_model(self.spec, dtype=dtype, device=device)

    @property
    def backend(self) -> str:
        """The generation backend, 'transformers' or 'vllm' (resolved from generation_backend once)."""
        if self._backend is None:
            from harness.vllm_backend import select_backend

            self._backend = select_backend(self.cfg.generation_backend)
        return self._backend

    def _generator(self, model, tokenizer, fingerprint: str, adapter: Path | None = None):
        """A generator for a model. With vLLM, one engine holds the base model and a trained
        LoRA model is base + its saved adapter; a fully fine-tuned model stays on transformers."""
        from harness.generation import Generator

        if self.backend != "vllm" or (fingerprint != self.spec.fingerprint and adapter is None):
            return Generator(model, tokenizer, fingerprint, batch_size=self.cfg.gen_batch_size)
        from harness.vllm_backend import VLLMGenerator, load_engine

        if self._engine is None:
            lora = None if self.cfg.lora.full_finetune else self.cfg.lora.r
            self._engine = load_engine(self.spec.path, lora_rank=lora, trust_remote_code=self.spec.trust_remote_code)
        lora_id = self._lora_ids.setdefault(str(adapter), len(self._lora_ids) + 1) if adapter else 1
        return VLLMGenerator(self._engine, tokenizer, fingerprint, batch_size=self.cfg.gen_batch_size,
                             lora_path=adapter, lora_id=lora_id)

    @property
    def original(self):
        """(model, tokenizer, generator) of the frozen original model, loaded on first use."""
        if self._original is None:
            model, tokenizer = self._load_base()
            model.requires_grad_(False)
            self._original = (model, tokenizer, self._generator(model, tokenizer, self.spec.fingerprint))
        return self._original

    # --- data ---------------------------------------------------------------------------
    @property
    def train_pairs(self):
        if self._train_pairs is None:
            pairs = []
            for d in self.directions:
                pairs += sample(self.data.translation(d, "train"), self.cfg.train_size, self.cfg.data_seed)
            self._train_pairs = pairs
        return self._train_pairs

    # --- keys -----------------------------------------------------------------------------
    def _data_key(self) -> dict:
        return {"data": self.data.label, "directions": [d.name for d in self.directions], "train_size": self.cfg.train_size,
                "data_seed": self.cfg.data_seed, "hashes": self._hashes_for_training()}

    def _hashes_for_training(self) -> dict:
        self.train_pairs  # reading the files records their hashes
        return {k: v for k, v in sorted(self.data.hashes.items()) if k.startswith("alma/") and "/train." in k}

    def train_key(self, method: str, seed: int) -> str:
        if (method, seed) not in self._train_keys:
            self._train_keys[method, seed] = self._train_key(method, seed)
        return self._train_keys[method, seed]

    def _train_key(self, method: str, seed: int) -> str:
        m = self.methods[method]
        return _hash({
            "base": self.spec.fingerprint, "method": method, "options": m.options_dict(),
            "budget": asdict(self.cfg.budget), "lora": asdict(self.cfg.lora), "seed": seed, "data": self._data_key(),
            "replay": self._replay_hash(m),
        })

    def _replay_hash(self, method) -> str | None:
        name = getattr(method.options, "replay_set", None)
        if not name:
            return None
        self.data.general(name)
        from harness.data import GENERAL_SETS

        return self.data.hashes.get(GENERAL_SETS[name].path)

    def eval_key(self, model_key: str, suite: str) -> str:
        c = self.cfg
        return _hash({
            "model": model_key, "suite": suite, "options": self.suites[suite].options_dict(),
            "directions": [d.name for d in self.directions], "eval_size": self._size(suite), "data_seed": c.data_seed,
            "data": self.data.label, "extraction": c.extraction, "max_new_tokens": c.max_new_tokens,
            "judge": c.judge, "comet": c.comet_model, "classifier": c.safety_classifier, "lm_eval": c.lm_eval_tasks,
            "original": self.spec.fingerprint,
        })

    # --- the run ----------------------------------------------------------------------------
    def run(self) -> Path:
        if self._distributed():
            import torch.distributed as dist

            if dist.get_rank() != 0:
                return self._follow()
        self._plan = self.plan()  # fail on bad input before any work; the manifest records it
        self.backend  # an unusable generation_backend fails here too
        with contextlib.ExitStack() as locks:
            locks.enter_context(RunLock(self.run_dir, shared=self.only is not None))
            for label in self.only or []:
                locks.enter_context(CellLock(self.run_dir, label))
            handler = logging.FileHandler(self.run_dir / "run.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            try:
                run_dir = self._run()
                self._tell(None)
                return run_dir
            finally:
                log.removeHandler(handler)
                handler.close()

    # multi-process launches ---------------------------------------------------------------
    # Under `accelerate launch -m harness run ...` the main process (rank 0) does the whole run;
    # the other processes only join each training, which it announces with the examples and
    # budget, and wait in between (while it builds data and evaluates).
    def _distributed(self) -> bool:
        from harness.config import launched_processes

        if launched_processes()[1] <= 1:
            return False
        from datetime import timedelta

        import torch
        from accelerate import PartialState

        # GPUs talk over NCCL, CPU processes over gloo; the waits span whole evaluations
        PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=24))
        return True

    def _tell(self, message) -> None:
        """Announce a training (method, seed, examples, budget) to the other processes; None ends the run."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list([message], src=0)

    def _follow(self) -> Path:
        import torch.distributed as dist

        from harness.training import train

        while True:
            message = [None]
            dist.broadcast_object_list(message, src=0)
            if message[0] is None:
                return self.run_dir
            method, seed, examples, budget = message[0]
            base, tokenizer = self._load_base()
            train(base, tokenizer, examples, budget, self.cfg.lora, self._workdir(method, seed), seed,
                  extra_loss=self.methods[method].extra_loss, label=f"train {method} s{seed}")

    def _say(self, message: str) -> None:
        from rich.text import Text

        console.print(message)
        log.info(Text.from_markup(message).plain)

    def _run(self) -> Path:
        started = time.time()
        cells = f", cells {', '.join(self.only)}" if self.only is not None else ""
        self._say(f"[bold]radis-bench[/bold] run in {self.run_dir} (model {self.cfg.model}, data {self.data.label}{cells})")
        self._computed_cells: dict[str, dict] = {}  # label -> stamp of the last unit this process computed
        self.manifest = self._load_manifest()
        self.counts = {"reused": 0, "computed": 0}
        self._backfill_item_stats()
        if self._selected("original"):
            self._generate_ahead("original", self.spec.fingerprint, None)
            for suite in self.suites:
                self._evaluate("original", "original", None, suite, self.spec.fingerprint, None)
        for seed in self.cfg.seeds:
            for method in self.methods:
                label = f"{method}-seed{seed}"
                if not self._selected(label):
                    continue
                key = self.train_key(method, seed)
                holder = {}

                def load(method=method, seed=seed, holder=holder):
                    if "model" not in holder:
                        holder["model"] = self._trained_model(method, seed)
                    return holder["model"]

                pending = [s for s in self.suites if not self._unit_done(label, s, key)]
                if pending or not self._training_done(method, seed, key):
                    load()
                self._generate_ahead(label, key, load)
                for suite in self.suites:
                    self._evaluate(label, method, seed, suite, key, load)
                holder.clear()
        which = "" if self.only is None else f" --only {'+'.join(self.only)}"
        self._timings[f"total_s_last_invocation{which}"] = round(time.time() - started, 1)
        self._publish(report=True)
        self._summary()
        self._say(
            f"Done in {time.time() - started:.0f}s: {self.counts['computed']} units computed, {self.counts['reused']} reused. "
            f"Report: {self.run_dir / 'report' / 'leaderboard.html'}"
        )
        return self.run_dir

    def _selected(self, label: str) -> bool:
        return self.only is None or label in self.only

    # manifest ----------------------------------------------------------------------------
    def _load_manifest(self) -> dict:
        cfg_text = None
        if self.config_file is not None:
            cfg_text = Path(self.config_file).read_text(encoding="utf-8")
        manifest = {
            "name": self.run_dir.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": [Path(sys.argv[0]).name] + sys.argv[1:],
            "config": self.cfg.to_dict(),
            "config_file": {"path": str(self.config_file), "text": cfg_text} if self.config_file else None,
            "model": dataclasses.asdict(self.spec),
            "versions": _versions(),
            "git": _git_commit(),
            "hardware": _hardware(),
            "seeds": self.cfg.seeds,
            "data": {"source": self.data.label, "plan": self._plan, "file_sha256": dict(sorted(self.data.hashes.items()))},
            "budget": asdict(self.cfg.budget),
            "lora": asdict(self.cfg.lora),
            "methods": {n: {"description": m.description, "extension": m.extension, "options": m.options_dict()} for n, m in self.methods.items()},
            "suites": {n: {"description": s.description, "options": s.options_dict()} for n, s in self.suites.items()},
            "evaluation": {"extraction": self.cfg.extraction, "max_new_tokens": self.cfg.max_new_tokens, "greedy": True,
                           "judge": self.cfg.judge, "comet_model": self.cfg.comet_model, "safety_classifier": self.cfg.safety_classifier},
            "training": {},
            "method_stats": {},
            "timings": {},  # merged from this process's and the other processes' on writing
            "cells": {},
            "generation": {
                "backend_setting": self.cfg.generation_backend, "backend": self.backend,
                "note": "vllm: the original and trained LoRA models (base + adapter) generate with vLLM; fully fine-tuned "
                        "models and the safety classifier generate with transformers" if self.backend == "vllm" else "",
            },
        }
        self.manifest, self._timings = manifest, {}
        self._publish()
        return manifest

    def _publish(self, report: bool = False) -> None:
        """Rewrite manifest.json and scores.csv (and the report) from what is on disk now,
        under the short state lock, so concurrent cells never drop each other's units."""
        with StateLock(self.run_dir):
            self._write_manifest()
            self._write_scores()
            if report:
                self._render_report()

    def _write_manifest(self) -> None:
        old = read_json(self.run_dir / "manifest.json") or {}
        m = self.manifest
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        m["created"] = old.get("created") or m["created"]
        m["updated"] = now
        m["data"]["file_sha256"] = dict(sorted({**old.get("data", {}).get("file_sha256", {}), **self.data.hashes}.items()))
        m["training"], m["method_stats"] = {}, {}
        for seed in self.cfg.seeds:
            for method in self.methods:
                if self._training_done(method, seed, self.train_key(method, seed)):
                    workdir = self._workdir(method, seed)
                    m["training"].setdefault(method, {})[str(seed)] = read_json(workdir / "train_stats.json") or {}
                    m["method_stats"].setdefault(method, {})[str(seed)] = read_json(workdir / "method_stats.json") or {}
        m["timings"] = {**old.get("timings", {}), **self._timings}
        # which process and code last computed a unit of each cell; a run that only reuses keeps the old entries
        m["cells"] = {**old.get("cells", {}), **self._computed_cells}
        write_json(self.run_dir / "manifest.json", m)

    def _stamp(self) -> dict:
        """When a unit's computation started, on which host and process, with which git commit."""
        return {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "pid": os.getpid(),
                "git": self.manifest["git"]}

    # training ------------------------------------------------------------------------------
    def _workdir(self, method: str, seed: int) -> Path:
        return self.run_dir / "models" / method / f"seed{seed}"

    def _training_done(self, method: str, seed: int, key: str) -> bool:
        workdir = self._workdir(method, seed)
        return (workdir / "train_stats.json").exists() and (workdir / "unit_key.txt").exists() and (workdir / "unit_key.txt").read_text() == key

    def _trained_model(self, method: str, seed: int):
        from harness.training import FINAL_DIR, STATS_FILE, load_trained, train

        m = self.methods[method]
        key = self.train_key(method, seed)
        workdir = self._workdir(method, seed)
        base, tokenizer = self._load_base()
        trained = None
        if self._training_done(method, seed, key):
            trained = load_trained(base, workdir)
        if trained is not None:
            self._say(f"reused: training {method} seed {seed} ({workdir})")
            self.counts["reused"] += 1
        else:
            if (workdir / "unit_key.txt").exists() and (workdir / "unit_key.txt").read_text() != key:
                self._say(f"settings changed for {method} seed {seed}: discarding its old training")
                shutil.rmtree(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            write_atomic(workdir / "unit_key.txt", key)
            from harness.methods import MethodContext

            _, _, original_gen = self.original
            ctx = MethodContext(pairs=self.train_pairs, original=original_gen, data=self.data, budget=self.cfg.budget, seed=seed)
            t0 = time.time()
            self._say(f"building training data: {method} seed {seed}")
            examples = m.build_training_examples(ctx)
            ctx.stats["build_s"] = round(time.time() - t0, 1)
            ctx.stats["examples"] = len(examples)
            rows = [{"messages": e.messages, "response": [dataclasses.asdict(s) for s in e.response], "source": e.source}
                    for e in examples]
            write_jsonl(workdir / "examples.jsonl", rows)
            write_json(workdir / "method_stats.json", ctx.stats)
            budget = self._budget_for(tokenizer, seed)
            donor = self._same_training(method, seed, rows, budget)
            if donor is not None:
                # e.g. wise trains exactly as vanilla does: the same training is done once
                self._say(f"reused: training {method} seed {seed} is identical to {donor.parent.name}'s (same examples, "
                          f"loss, budget and seed); copying it")
                shutil.copytree(donor / FINAL_DIR, workdir / FINAL_DIR, dirs_exist_ok=True)
                stats = read_json(donor / STATS_FILE) | {"shared_with": f"{donor.parent.name} seed {seed}"}
                ctx.stats["training_shared_with"] = donor.parent.name
                write_json(workdir / "method_stats.json", ctx.stats)
                write_json(workdir / STATS_FILE, stats)
                trained = load_trained(base, workdir)
                self.counts["reused"] += 1
            else:
                self._say(f"training: {method} seed {seed} ({budget.steps} steps x {budget.batch_size})")
                self._tell((method, seed, examples, budget))
                stamp = self._stamp()
                result = train(base, tokenizer, examples, budget, self.cfg.lora, workdir, seed,
                               extra_loss=m.extra_loss, label=f"train {method} s{seed}", record={"computed": stamp})
                trained = result.model
                self.counts["computed"] += 1
                self._computed_cells[f"{method}-seed{seed}"] = stamp
        self._publish()
        original_model = self.original[0]
        trained = m.after_training(trained, {k: v for k, v in original_model.state_dict().items()})
        adapter = None
        if self.backend == "vllm" and hasattr(trained, "peft_config"):
            # vLLM serves base + this adapter, saved after after_training (e.g. WiSE scaling)
            adapter = workdir / "eval_adapter"
            trained.save_pretrained(adapter)
        if hasattr(trained, "merge_and_unload"):
            # merged weights evaluate faster than base + adapter; the original stays a separate model
            trained = trained.merge_and_unload()
        trained.eval()
        fingerprint = f"{self.spec.fingerprint}+{method}:{key}"
        return trained, tokenizer, self._generator(trained, tokenizer, fingerprint, adapter)

    def _training_content_key(self, method: str, examples: list[dict], budget, seed: int) -> str:
        """What a training computes, whatever the method is called: base model, examples (as
        written to examples.jsonl), extra loss, budget, LoRA and seed. Methods that differ
        only after training (wise) share it."""
        m = self.methods[method]
        return _hash({
            "base": self.spec.fingerprint, "seed": seed, "budget": asdict(budget), "lora": asdict(self.cfg.lora),
            "examples": [[e["messages"], e["response"]] for e in examples],
            "extra_loss": [method, m.options_dict()] if m.extra_loss is not None else None,
        })

    def _same_training(self, method: str, seed: int, examples: list[dict], budget) -> Path | None:
        """Another method's finished training in this run that computed exactly this one."""
        if self._distributed():
            return None
        from harness.training import FINAL_DIR

        key = self._training_content_key(method, examples, budget, seed)
        for other in self.methods:
            workdir = self._workdir(other, seed)
            if other == method or not self._training_done(other, seed, self.train_key(other, seed)):
                continue
            if not (workdir / FINAL_DIR).is_dir() or not (workdir / "examples.jsonl").exists():
                continue
            if self._training_content_key(other, read_jsonl(workdir / "examples.jsonl"), budget, seed) == key:
                return workdir
        return None

    def _budget_for(self, tokenizer, seed: int):
        """The shared budget; with equalise=tokens, the target is what vanilla trains on in `steps`."""
        b = self.cfg.budget
        if b.equalise != "tokens" or b.target_tokens:
            return b
        from harness.methods import Segment, TrainingExample
        from harness.prompts import translation_prompt, user_turn
        from harness.training import target_tokens_in_steps

        vanilla = [TrainingExample(user_turn(translation_prompt(p)), [Segment(p.reference)]) for p in self.train_pairs]
        return dataclasses.replace(b, target_tokens=target_tokens_in_steps(tokenizer, vanilla, b, seed))

    # evaluation ----------------------------------------------------------------------------
    def _unit_path(self, label: str, suite: str) -> Path:
        return self.run_dir / "results" / label / f"{suite}.json"

    def _unit_done(self, label: str, suite: str, model_key: str) -> bool:
        done = read_json(self._unit_path(label, suite))
        return bool(done) and done.get("key") == self.eval_key(model_key, suite)

    def _context(self, label, suite, load):
        from harness.evaluation import SuiteContext

        model, tokenizer, generator = self.original if load is None else load()
        original_model, _, original_gen = self.original
        return SuiteContext(
            label=label, model=model, tokenizer=tokenizer, generator=generator, original_generator=original_gen,
            data=self.data, directions=self.directions, config=self.cfg, workdir=self.run_dir / "work" / label / suite,
            original_model_fn=lambda: contextlib.nullcontext(original_model), size=self.cfg.suite_sizes.get(suite),
        )

    def _generate_ahead(self, label, model_key, load) -> None:
        """Generate what every pending suite will ask of this model in one batched call, so
        small suites fill batches together (decoding is bandwidth-bound: a wider batch costs
        little more per step); each suite then finds its outputs in the cache."""
        pending = [s for s in self.suites if not self._unit_done(label, s, model_key)]
        if len(pending) < 2:
            return
        items = []
        for suite in pending:
            items += self.suites[suite].requests(self._context(label, suite, load))
        if items:
            generator = self._context(label, pending[0], load).generator
            generator.generate_many(items, label=f"{label}: {len(items)} answers for {', '.join(pending)}")

    def _evaluate(self, label, method, seed, suite, model_key, load) -> None:
        key = self.eval_key(model_key, suite)
        path = self._unit_path(label, suite)
        done = read_json(path)
        if done and done.get("key") == key:
            log.info("reused: %s on %s", label, suite)
            self.counts["reused"] += 1
            return
        ctx = self._context(label, suite, load)
        self._say(f"evaluating: {label} on {suite}")
        t0, stamp = time.time(), self._stamp()
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        result = self.suites[suite].evaluate(ctx)
        write_jsonl(self.run_dir / "outputs" / label / f"{suite}.jsonl", result.outputs)
        self._write_item_stats(label, suite, result.outputs)
        write_json(path, {
            "key": key, "label": label, "method": method, "seed": seed, "suite": suite,
            "metrics": [dataclasses.asdict(m) for m in result.metrics],
            "not_scored": [dataclasses.asdict(n) for n in result.not_scored],
            "seconds": round(time.time() - t0, 1),
            "computed": stamp,
        })
        self._timings[f"eval {label} {suite}"] = round(time.time() - t0, 1)
        self.counts["computed"] += 1
        self._computed_cells[label] = stamp
        self._publish()

    def _items_path(self, label: str, suite: str) -> Path:
        return self.run_dir / "results" / label / "items" / f"{suite}.json"

    def _write_item_stats(self, label: str, suite: str, outputs: list[dict]) -> None:
        """Per-item statistics (numbers and item ids, no text) beside the unit, for the
        report's confidence intervals of differences between methods."""
        try:
            stats = self.suites[suite].item_stats(outputs)
        except (KeyError, TypeError, ValueError) as err:  # outputs of an older format: no CIs of differences
            log.warning("no per-item statistics for %s on %s: %s", label, suite, err)
            return
        if stats:  # one line per metric: thousands of numbers, committed with published reports
            lines = [f"{json.dumps(name)}: {json.dumps(st.to_dict(), separators=(',', ':'))}" for name, st in stats.items()]
            write_atomic(self._items_path(label, suite), "{\n" + ",\n".join(lines) + "\n}\n")

    def _backfill_item_stats(self) -> None:
        """Units evaluated before per-item statistics existed get them from their outputs."""
        for path in sorted((self.run_dir / "results").glob("*/*.json")):
            label, suite = path.parent.name, path.stem
            outputs = self.run_dir / "outputs" / label / f"{suite}.jsonl"
            if suite in self.suites and not self._items_path(label, suite).exists() and outputs.exists():
                self._write_item_stats(label, suite, read_jsonl(outputs))

    # outputs -------------------------------------------------------------------------------
    def _score_rows(self) -> list[dict]:
        """Rows of every finished unit of this run on disk, whichever process computed it
        (units left by other settings are skipped)."""
        rows = []
        labels = [("original", "original", None, self.spec.fingerprint)] + [
            (f"{m}-seed{s}", m, s, self.train_key(m, s)) for s in self.cfg.seeds for m in self.methods
        ]
        for label, method, seed, model_key in labels:
            for suite in self.suites:
                done = read_json(self._unit_path(label, suite))
                if not done or done.get("key") != self.eval_key(model_key, suite):
                    continue
                base = {"model": self.cfg.model, "method": method, "seed": "" if seed is None else seed, "suite": suite}
                for m in done["metrics"]:
                    rows.append({**base, "metric": m["name"], "value": m["value"], "n": m["n"], "ci_low": m["ci_low"],
                                 "ci_high": m["ci_high"], "higher_is_better": "" if m["higher_is_better"] is None else m["higher_is_better"],
                                 "main": m["main"], "note": m.get("note", "")})
                for n in done["not_scored"]:
                    rows.append({**base, "metric": n["metric"], "value": "", "n": "", "ci_low": "", "ci_high": "",
                                 "higher_is_better": "", "main": False, "note": n["reason"]})
        return rows

    def _write_scores(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SCORE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self._score_rows():
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        write_atomic(self.run_dir / "scores.csv", buf.getvalue())

    def _render_report(self) -> None:
        from harness.report import render_report

        render_report([self.run_dir], self.run_dir / "report", title=self.cfg.title)

    def _summary(self) -> None:
        from rich.table import Table

        rows = self._score_rows()
        mains = []
        for r in rows:
            key = (r["suite"], r["metric"])
            if r["main"] and key not in mains:
                mains.append(key)
        table = Table(title="Main metrics (mean over seeds)")
        table.add_column("method")
        for suite, metric in mains:
            table.add_column(f"{suite}\n{metric}", justify="right")
        for method in ["original"] + list(self.methods):
            cells = []
            for suite, metric in mains:
                vals = [float(r["value"]) for r in rows if r["method"] == method and r["suite"] == suite and r["metric"] == metric and r["value"] != ""]
                cells.append(f"{sum(vals) / len(vals):.3g}" if vals else "—")
            table.add_row(method, *cells)
        console.print(table)
