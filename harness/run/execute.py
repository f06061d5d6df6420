"""Executing a run: evaluate the original model, then train every row and seed under its
budget and evaluate it, as units of work that are reused when a run resumes.

Cells: the original model's evaluation, and the training and evaluation of each (row,
seed). ``--only`` runs some cells; separate processes (a job array) may run different
cells into one run directory at once. Each holds the run directory's lock shared and its
cells' locks exclusively; ``harness.run.publish`` rebuilds the shared files from the unit
files. Generations are cached separately (content-addressed), so an evaluation
interrupted half-way regenerates nothing it already produced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

from harness.errors import raise_if_stopping
from harness.model.checkpoints import STATS_FILE, snapshot_steps
from harness.model.compute import Meter, metering
from harness.model.generation import Generator
from harness.model.loading import load_model, resolve_placement
from harness.model.vllm_backend import VLLMGenerator, load_engine, select_backend
from harness.plugins.suite import SuiteContext
from harness.progress import console
from harness.report.claims import record_plan
from harness.run.checks import check_plan, refuse_uncommitted_code
from harness.run.distributed import distributed, follow, tell
from harness.run.publish import Publisher
from harness.run.tracking import tracker
from harness.run.trainings import Trainings, method_context
from harness.run.units import Units, pending_units
from harness.store import ORIGINAL, CellLock, RunLock, StateLock, read_json, write_json, write_jsonl
from harness.versions import evaluation_code

log = logging.getLogger("radis_bench")


class LoadedModels:
    """The base model, the original, and a generator for any model (transformers or vLLM)."""

    def __init__(self, plan):
        self.plan = plan
        self._original = None
        self._backend = None
        self._engine = None
        self._lora_ids: dict[str, int] = {}

    @property
    def placement(self) -> tuple[str, str]:
        return resolve_placement(self.plan.cfg.device, self.plan.cfg.dtype)

    @property
    def backend(self) -> str:
        """'transformers' or 'vllm' (resolved from generation_backend once)."""
        if self._backend is None:
            self._backend = select_backend(self.plan.cfg.generation_backend)
        return self._backend

    def load_base(self):
        device, dtype = self.placement
        return load_model(self.plan.spec, dtype=dtype, device=device)

    def generator(self, model, tokenizer, fingerprint: str, adapter: Path | None = None):
        """With vLLM, one engine holds the base model and a trained LoRA model is base + its
        saved adapter; a fully fine-tuned model stays on transformers."""
        spec, cfg = self.plan.spec, self.plan.cfg
        if self.backend != "vllm" or (fingerprint != spec.fingerprint and adapter is None):
            return Generator(model, tokenizer, fingerprint, batch_size=cfg.gen_batch_size)
        if self._engine is None:
            # a PiSSA result is served as the plain LoRA it was converted to, of twice the rank
            ranks = [l.r * (2 if l.adapter == "pissa" else 1) for l in self.plan.loras.values() if l.adapter != "full"]
            lora = max(ranks) if ranks else None
            self._engine = load_engine(spec.path, lora_rank=lora, trust_remote_code=spec.trust_remote_code)
        lora_id = self._lora_ids.setdefault(str(adapter), len(self._lora_ids) + 1) if adapter else 1
        return VLLMGenerator(self._engine, tokenizer, fingerprint, batch_size=cfg.gen_batch_size,
                             lora_path=adapter, lora_id=lora_id)

    @property
    def original(self):
        """(model, tokenizer, generator) of the frozen original model, loaded on first use."""
        if self._original is None:
            model, tokenizer = self.load_base()
            model.requires_grad_(False)
            self._original = (model, tokenizer, self.generator(model, tokenizer, self.plan.spec.fingerprint))
        return self._original


class Execution:
    def __init__(self, plan):
        self.plan = plan
        self.run_dir = plan.run_dir
        self.units = Units(plan)
        self.models = LoadedModels(plan)
        self.counts = {"reused": 0, "computed": 0}
        self.publisher: Publisher | None = None
        self.trainings: Trainings | None = None  # made with the publisher, when the run starts

    def run(self) -> Path:
        if distributed():
            import torch.distributed as dist

            if dist.get_rank() != 0:
                return follow(self.plan, self.models, self.units)
        check_plan(self.plan)  # fail on bad input before any work; the manifest records the sizes
        for note in self.plan.sizes.get("notes", []):  # what the dry run notes, e.g. settings this run does not use
            console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
        if self.plan.cfg.require_clean_code:
            refuse_uncommitted_code(self.plan, pending_units(self.plan))
        self.models.backend  # an unusable generation_backend fails here too
        with contextlib.ExitStack() as locks:
            locks.enter_context(RunLock(self.run_dir, shared=self.plan.only is not None))
            for cell in self.plan.only or []:
                locks.enter_context(CellLock(self.run_dir, cell))
            handler = logging.FileHandler(self.run_dir / "run.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            try:
                run_dir = self._run()
                tell(None)
                return run_dir
            finally:
                log.removeHandler(handler)
                handler.close()

    def say(self, message: str) -> None:
        from rich.text import Text

        console.print(message)
        log.info(Text.from_markup(message).plain)

    def _run(self) -> Path:
        plan = self.plan
        started = time.time()
        cells = f", cells {', '.join(plan.only)}" if plan.only is not None else ""
        self.say(f"[bold]radis-bench[/bold] run in {self.run_dir} (model {plan.cfg.model}, data {plan.data.label}{cells})")
        self.publisher = Publisher(plan, self.units, self.models.backend)
        self.trainings = Trainings(plan, self.units, self.models, self.publisher, self.say, self.counts)
        self.publisher.backfill_item_stats()  # first: a damaged statistics file rewritten from outputs is no unit to redo
        self.publisher.start()
        with StateLock(self.run_dir):  # before the first unit: the plan, or an amendment of it
            recorded = record_plan(self.run_dir, plan.cfg.analysis)
        if recorded:
            self.say(recorded)
        self._generate_original_work()
        if plan.selected(ORIGINAL):
            for suite in plan.suites:
                self._evaluate(ORIGINAL, None, None, suite, None)
        for cell, label, seed in plan.trained_units():
            if not plan.selected(cell):
                continue
            holder, computed = {}, self.counts["computed"]

            def load(label=label, seed=seed, holder=holder):
                if "model" not in holder:
                    holder["model"] = self.trainings.model(label, seed)
                return holder["model"]

            pending = [s for s in plan.suites if self.units.evaluation(cell, s) is None]
            if pending or not self.units.training_done(label, seed):
                load()
            self._generate_ahead(cell, load)
            for suite in plan.suites:
                self._evaluate(cell, label, seed, suite, load)
            holder.clear()
            self._trajectory(cell, label, seed)
            if self.counts["computed"] > computed:  # logged once, when something of the cell was computed
                self._log_metrics(cell, label, seed)
        which = "" if plan.only is None else f" --only {'+'.join(plan.only)}"
        self.publisher.timings[f"total_s_last_invocation{which}"] = round(time.time() - started, 1)
        self.publisher.publish(report=True)
        self.publisher.summary()
        rekeyed = f", {self.units.rekeyed} re-keyed from an earlier key scheme" if self.units.rekeyed else ""
        warning = self.units.unversioned_warning()
        if warning:
            self.say(f"[bold yellow]Warning:[/bold yellow] {warning}.")
        self.say(f"Done in {time.time() - started:.0f}s: {self.counts['computed']} units computed, {self.counts['reused']} reused"
                 f"{rekeyed}. Report: {self.run_dir / 'report' / 'leaderboard.html'}")
        return self.run_dir

    def _trajectory(self, cell: str, label: str, seed: int) -> None:
        """The training's checkpoints every ``eval_every`` steps, each evaluated on the trajectory
        suites as units of its own (``<cell>@step<N>``); the last step is the cell's own units."""
        every, suites = self.plan.cfg.eval_every, self.plan.cfg.trajectory
        if not every or not self.units.training_done(label, seed):
            return
        workdir = self.units.workdir(label, seed)
        total = int((read_json(workdir / STATS_FILE) or {}).get("steps") or 0)
        kept = set(snapshot_steps(workdir))
        points = [(step, f"{cell}@step{step}") for step in range(every, total, every)]
        pending = [(step, point) for step, point in points
                   if any(self.units.evaluation(point, suite) is None for suite in suites)]
        self.counts["reused"] += sum(len(suites) for step, point in points if (step, point) not in pending)
        missing = [step for step, _ in pending if step not in kept]
        if missing:
            self.say(f"[yellow]{cell}: no weights kept at step {', '.join(map(str, missing))} (it was trained without "
                     f"eval_every {every}); its trajectory leaves them out (delete {workdir} to train it again)[/yellow]")
        for step, point in pending:
            if step not in kept:
                continue
            holder = {}

            def load(step=step, holder=holder):
                if "model" not in holder:
                    holder["model"] = self.trainings.snapshot(label, seed, step)
                return holder["model"]

            items = [item for suite in suites if self.units.evaluation(point, suite) is None
                     for item in self.plan.suites[suite].requests(self._context(point, suite, load))]
            if items:
                self._generate(load()[2], items, point, f"{point}: {len(items)} answers for {', '.join(suites)}")
            for suite in suites:
                self._evaluate(point, label, seed, suite, load)
            holder.clear()

    def _log_metrics(self, cell: str, label: str, seed: int) -> None:
        """With ``log_with``: the main metrics of the trajectory suites (every suite without a
        trajectory) at each point of the training unit's tracker run: the original at step 0,
        the checkpoints, the final model at its last step."""
        if not self.plan.cfg.log_with or not self.units.training_done(label, seed):
            return
        suites = self.plan.cfg.trajectory or list(self.plan.suites)
        total = int((read_json(self.units.workdir(label, seed) / STATS_FILE) or {}).get("steps") or 0)
        every = self.plan.cfg.eval_every
        points = [(0, ORIGINAL)] + [(step, f"{cell}@step{step}") for step in (range(every, total, every) if every else [])]
        logger = tracker(self.plan, label, seed)
        if logger is None:
            return
        try:
            for step, point in points + [(total, cell)]:
                values = {f"{suite}/{m['name']}": m["value"] for suite in suites
                          for m in (self.units.evaluation(point, suite) or {}).get("metrics", []) if m.get("main")}
                if values:
                    logger.log(values, step)
        finally:
            logger.finish()

    # generation ahead of the units ------------------------------------------------------------
    def _context(self, cell: str, suite: str, load):
        model, tokenizer, generator = self.models.original if load is None else load()
        original_model, _, original_gen = self.models.original
        return SuiteContext(
            label=cell, data=self.plan.data, directions=self.plan.directions, config=self.plan.cfg, model=model,
            tokenizer=tokenizer, generator=generator, original_generator=original_gen,
            workdir=self.run_dir / "work" / cell / suite, shared_dir=self.run_dir / "work" / "shared" / suite,
            original_model_fn=lambda: contextlib.nullcontext(original_model), size=self.plan.cfg.suite_sizes.get(suite),
        )

    def _generate_original_work(self) -> None:
        """Everything this process will ask of the original model, in one wide batch: its own
        answers for every pending suite, what suites ask of it for every model (retention's
        answers), and the training data every pending row builds with it (rationales,
        rewrites, self-translations). Decoding is bandwidth-bound: a wider batch costs
        little more per step. Each stage then finds its outputs in the cache."""
        plan, items, why = self.plan, [], []
        if plan.selected(ORIGINAL):
            pending = [s for s in plan.suites if self.units.evaluation(ORIGINAL, s) is None]
            for suite in pending:
                ctx = self._context(ORIGINAL, suite, None)
                items += plan.suites[suite].requests(ctx) + plan.suites[suite].original_requests(ctx)
            why += pending
        for cell, label, seed in plan.trained_units():
            if plan.selected(cell) and not self.units.training_done(label, seed):
                found = self.plan.methods[label].original_requests(method_context(self.plan, label, seed, None))
                items += found
                why += [f"{label} data"] if found else []
        if items:
            why_text = ", ".join(dict.fromkeys(why))
            self._generate(self.models.original[2], items, f"original for {why_text}", f"original: {len(items)} answers for {why_text}")

    def _generate_ahead(self, cell: str, load) -> None:
        """What every pending suite will ask of a trained model, in one batched call."""
        pending = [s for s in self.plan.suites if self.units.evaluation(cell, s) is None]
        items = []
        for suite in pending:
            items += self.plan.suites[suite].requests(self._context(cell, suite, load))
        if items:
            self._generate(load()[2], items, cell, f"{cell}: {len(items)} answers for {', '.join(pending)}")

    def _generate(self, generator, items, key: str, label: str) -> None:
        """One batched call; what it generated anew (answers, tokens, seconds) goes to the
        manifest's ``generated`` under ``key`` (outputs found in the cache cost nothing)."""
        stats = generator.stats
        before = (stats.generated, stats.new_tokens, stats.seconds)
        generator.generate_many(items, label=label)
        answers = stats.generated - before[0]
        if answers:
            self.publisher.generated[key] = {"answers": answers, "new_tokens": stats.new_tokens - before[1],
                                             "seconds": round(stats.seconds - before[2], 1)}

    # evaluation -----------------------------------------------------------------------------
    def _evaluate(self, cell, label, seed, suite, load) -> None:
        plan, units = self.plan, self.units
        if units.evaluation(cell, suite) is not None:
            log.info("reused: %s on %s", cell, suite)
            self.counts["reused"] += 1
            return
        key = plan.keys.eval_key(plan.keys.model_key(cell), suite)
        ctx = self._context(cell, suite, load)
        self.say(f"evaluating: {cell} on {suite}")
        t0, stamp = time.time(), self.publisher.stamp()
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        with metering(Meter()) as meter:
            result = plan.suites[suite].evaluate(ctx)
        raise_if_stopping()
        write_jsonl(units.outputs_path(cell, suite), result.outputs)
        self.publisher.write_item_stats(cell, suite, result.outputs)
        write_json(units.result_path(cell, suite), {
            "key": key, "label": cell, "method": label or ORIGINAL, "seed": seed, "suite": suite,
            "metrics": [dataclasses.asdict(m) for m in result.metrics],
            "not_scored": [dataclasses.asdict(n) for n in result.not_scored],
            **({"step": int(cell.rsplit("@step", 1)[1])} if "@step" in cell else {}),
            "seconds": round(time.time() - t0, 1), "flops": meter.record(),
            "computed": stamp, "code": evaluation_code(plan.suites[suite]),
        })
        self.publisher.timings[f"eval {cell} {suite}"] = round(time.time() - t0, 1)
        self.counts["computed"] += 1
        self.publisher.computed(cell, stamp)
        self.publisher.publish()
