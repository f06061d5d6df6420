"""Executing a run: evaluate the original model, then train every row and seed under its
budget and evaluate it, as units of work that are reused when a run resumes.

Cells: the original model's evaluation, and the training and evaluation of each (row,
seed). ``--only`` runs some cells; separate processes (a job array) may run different
cells into one run directory at once. Each holds the run directory's lock shared and its
cells' locks exclusively; ``harness.publish`` rebuilds the shared files from the unit
files. Generations are cached separately (content-addressed), so an evaluation
interrupted half-way regenerates nothing it already produced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from pathlib import Path

from harness.claims import record_plan
from harness.errors import raise_if_stopping
from harness.methods import Method, MethodContext
from harness.plan import ORIGINAL, digest
from harness.progress import console
from harness.publish import Publisher
from harness.store import CellLock, RunLock, StateLock, read_json, read_jsonl, write_atomic, write_json, write_jsonl
from harness.units import Units
from harness.versions import TRAINER, evaluation_code, training_code

log = logging.getLogger("radis_bench")


class Models:
    """The base model, the original, and a generator for any model (transformers or vLLM)."""

    def __init__(self, plan):
        self.plan = plan
        self._original = None
        self._backend = None
        self._engine = None
        self._lora_ids: dict[str, int] = {}

    @property
    def placement(self) -> tuple[str, str]:
        from harness.models import resolve_placement

        return resolve_placement(self.plan.cfg.device, self.plan.cfg.dtype)

    @property
    def backend(self) -> str:
        """'transformers' or 'vllm' (resolved from generation_backend once)."""
        if self._backend is None:
            from harness.vllm_backend import select_backend

            self._backend = select_backend(self.plan.cfg.generation_backend)
        return self._backend

    def load_base(self):
        from harness.models import load_model

        device, dtype = self.placement
        return load_model(self.plan.spec, dtype=dtype, device=device)

    def generator(self, model, tokenizer, fingerprint: str, adapter: Path | None = None):
        """With vLLM, one engine holds the base model and a trained LoRA model is base + its
        saved adapter; a fully fine-tuned model stays on transformers."""
        from harness.generation import Generator

        spec, cfg = self.plan.spec, self.plan.cfg
        if self.backend != "vllm" or (fingerprint != spec.fingerprint and adapter is None):
            return Generator(model, tokenizer, fingerprint, batch_size=cfg.gen_batch_size)
        from harness.vllm_backend import VLLMGenerator, load_engine

        if self._engine is None:
            lora = None if cfg.lora.full_finetune else max(l.r for l in self.plan.loras.values())
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
        self.models = Models(plan)
        self.counts = {"reused": 0, "computed": 0}
        self.publisher: Publisher | None = None
        self.trainings = Trainings(self)

    def run(self) -> Path:
        if distributed():
            import torch.distributed as dist

            if dist.get_rank() != 0:
                return follow(self.plan, self.models, self.units)
        self.plan.check()  # fail on bad input before any work; the manifest records the sizes
        if self.plan.cfg.require_clean_code:
            self.plan.refuse_uncommitted_code(self.plan.unit_status())
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
        self.publisher.start()
        with StateLock(self.run_dir):  # before the first unit: the plan, or an amendment of it
            recorded = record_plan(self.run_dir, plan.cfg.analysis)
        if recorded:
            self.say(recorded)
        self.publisher.backfill_item_stats()
        self._generate_original_work()
        if plan.selected(ORIGINAL):
            for suite in plan.suites:
                self._evaluate(ORIGINAL, None, None, suite, None)
        for cell, label, seed in plan.trained_units():
            if not plan.selected(cell):
                continue
            holder = {}

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

    # generation ahead of the units ------------------------------------------------------------
    def _context(self, cell: str, suite: str, load):
        from harness.evaluation import SuiteContext

        model, tokenizer, generator = self.models.original if load is None else load()
        original_model, _, original_gen = self.models.original
        return SuiteContext(
            label=cell, data=self.plan.data, directions=self.plan.directions, config=self.plan.cfg, model=model,
            tokenizer=tokenizer, generator=generator, original_generator=original_gen,
            workdir=self.run_dir / "work" / cell / suite, shared_dir=self.run_dir / "work" / "shared" / suite,
            original_model_fn=lambda: contextlib.nullcontext(original_model), size=self.plan.cfg.suite_sizes.get(suite),
        )

    def method_context(self, label: str, seed: int, original) -> MethodContext:
        return MethodContext(pairs=self.plan.train_pairs, original=original, data=self.plan.data,
                             budget=self.plan.budgets[label], seed=seed)

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
                found = self.plan.methods[label].original_requests(self.method_context(label, seed, None))
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
        key = plan.eval_key(plan.model_key(cell), suite)
        ctx = self._context(cell, suite, load)
        self.say(f"evaluating: {cell} on {suite}")
        t0, stamp = time.time(), self.publisher.stamp()
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        result = plan.suites[suite].evaluate(ctx)
        raise_if_stopping()
        write_jsonl(units.outputs_path(cell, suite), result.outputs)
        self.publisher.write_item_stats(cell, suite, result.outputs)
        write_json(units.result_path(cell, suite), {
            "key": key, "label": cell, "method": label or ORIGINAL, "seed": seed, "suite": suite,
            "metrics": [dataclasses.asdict(m) for m in result.metrics],
            "not_scored": [dataclasses.asdict(n) for n in result.not_scored],
            "seconds": round(time.time() - t0, 1),
            "computed": stamp, "code": evaluation_code(plan.suites[suite]),
        })
        self.publisher.timings[f"eval {cell} {suite}"] = round(time.time() - t0, 1)
        self.counts["computed"] += 1
        self.publisher.computed(cell, stamp)
        self.publisher.publish()


class Trainings:
    """The training units: reuse a finished one, copy an identical one, or train; then the
    method's post-processing and a generator for the result."""

    def __init__(self, execution: "Execution"):
        self.x = execution
        self.plan, self.units, self.models = execution.plan, execution.units, execution.models

    @property
    def publisher(self) -> Publisher:
        return self.x.publisher

    @property
    def counts(self) -> dict:
        return self.x.counts

    def say(self, message: str) -> None:
        self.x.say(message)

    def model(self, label: str, seed: int):
        """(model, tokenizer, generator) of a trained row: reused, copied from an identical training, or trained."""
        from harness.training import FINAL_DIR, STATS_FILE, load_trained

        plan, units = self.plan, self.units
        method, key, workdir = plan.methods[label], plan.train_key(label, seed), units.workdir(label, seed)
        base, tokenizer = self.models.load_base()
        done = units.training_done(label, seed)
        trained = load_trained(base, workdir) if done else None
        if trained is not None:
            self.say(f"reused: training {label} seed {seed} ({workdir})")
            self.counts["reused"] += 1
        else:
            if done:  # e.g. a published run directory, which keeps statistics but no weights
                self.say(f"training {label} seed {seed} is finished but its weights are not in {workdir}; training it again")
                (workdir / STATS_FILE).unlink()
            stored = workdir / "unit_key.txt"
            if stored.exists() and stored.read_text() != key:  # the same key: a resumable training state
                self.say(f"settings changed for {label} seed {seed}: discarding its old training")
                shutil.rmtree(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            write_atomic(workdir / "unit_key.txt", key)
            ctx = self.x.method_context(label, seed, self.models.original[2])
            t0 = time.time()
            self.say(f"building training data: {label} seed {seed}")
            examples = method.build_training_examples(ctx)
            raise_if_stopping()
            ctx.stats["build_s"] = round(time.time() - t0, 1)
            ctx.stats["examples"] = len(examples)
            rows = [{"messages": e.messages, "response": [dataclasses.asdict(s) for s in e.response], "source": e.source,
                     "end_of_turn": e.end_of_turn, "end_weight": e.end_weight} for e in examples]
            write_jsonl(workdir / "examples.jsonl", rows)
            write_json(workdir / "method_stats.json", ctx.stats)
            budget = self._budget_for(label, tokenizer, seed)
            donor = self._same_training(label, seed, rows, budget)
            if donor is not None:
                # e.g. wise trains exactly as vanilla does: the same training is done once
                self.say(f"reused: training {label} seed {seed} is identical to {donor.parent.name}'s (same examples, "
                         f"loss, budget and seed); copying it")
                shutil.copytree(donor / FINAL_DIR, workdir / FINAL_DIR, dirs_exist_ok=True)
                stats = read_json(donor / STATS_FILE) | {"shared_with": f"{donor.parent.name} seed {seed}"}
                ctx.stats["training_shared_with"] = donor.parent.name
                write_json(workdir / "method_stats.json", ctx.stats)
                write_json(workdir / STATS_FILE, stats)
                trained = load_trained(base, workdir)
                self.counts["reused"] += 1
            else:
                trained = self._train(label, seed, base, tokenizer, examples, budget, workdir)
        self.publisher.publish()
        original_model = self.models.original[0]
        trained = method.after_training(trained, dict(original_model.state_dict()))
        adapter = None
        if self.models.backend == "vllm" and hasattr(trained, "peft_config"):
            # vLLM serves base + this adapter, saved after after_training (e.g. WiSE scaling)
            adapter = workdir / "eval_adapter"
            trained.save_pretrained(adapter)
        if hasattr(trained, "merge_and_unload"):
            # merged weights evaluate faster than base + adapter; the original stays a separate model
            trained = trained.merge_and_unload()
        trained.eval()
        fingerprint = f"{plan.spec.fingerprint}+{plan.entries[label].method}:{key}"
        return trained, tokenizer, self.models.generator(trained, tokenizer, fingerprint, adapter)

    def _train(self, label, seed, base, tokenizer, examples, budget, workdir):
        from harness.training import train

        method = self.plan.methods[label]
        self.say(f"training: {label} seed {seed} ({budget.steps} steps x {budget.batch_size})")
        tell((label, seed, examples, budget, method))
        stamp = self.publisher.stamp()
        result = train(base, tokenizer, examples, budget, self.plan.loras[label], workdir, seed, extra_loss=method.extra_loss,
                       prepare=method.prepare_model, label=f"train {label} s{seed}",
                       record={"computed": stamp, "code": training_code(method)})
        self.counts["computed"] += 1
        self.publisher.computed(f"{label}-seed{seed}", stamp)
        return result.model

    def _training_content_key(self, label: str, examples: list[dict], budget, seed: int) -> str:
        """What a training computes, whatever its row is called: base model, examples (as
        written to examples.jsonl), the method's hooks into the loss or the model, budget,
        adapter and seed. Rows that differ only after training (wise) share it."""
        m = self.plan.methods[label]
        hooked = m.extra_loss is not None or type(m).prepare_model is not Method.prepare_model
        return digest({
            "base": self.plan.spec.fingerprint, "seed": seed, "budget": dataclasses.asdict(budget), "trainer": TRAINER,
            "lora": dataclasses.asdict(self.plan.loras[label]),
            "examples": [[e["messages"], e["response"], e.get("end_of_turn", True), e.get("end_weight")] for e in examples],
            "hooks": [self.plan.entries[label].method, m.options_dict()] if hooked else None,
        })

    def _same_training(self, label: str, seed: int, examples: list[dict], budget) -> Path | None:
        """Another row's finished training in this run that computed exactly this one."""
        if distributed():
            return None
        from harness.training import FINAL_DIR

        key = self._training_content_key(label, examples, budget, seed)
        for other in self.plan.entries:
            workdir = self.units.workdir(other, seed)
            if other == label or seed not in self.plan.seeds_of(other) or not self.units.training_done(other, seed):
                continue
            if not (workdir / FINAL_DIR).is_dir() or not (workdir / "examples.jsonl").exists():
                continue
            if self._training_content_key(other, read_jsonl(workdir / "examples.jsonl"), self.plan.budgets[other], seed) == key:
                return workdir
        return None

    def _budget_for(self, label: str, tokenizer, seed: int):
        """The row's budget; with equalise=tokens, the target is what the baseline method
        (plain fine-tuning) trains on in ``steps``."""
        b = self.plan.budgets[label]
        if b.equalise != "tokens" or b.target_tokens:
            return b
        from harness import registry
        from harness.errors import UserError
        from harness.training import target_tokens_in_steps

        baseline = registry.baseline_method()
        if baseline is None:
            raise UserError("budget.equalise=tokens needs budget.target_tokens when no installed method is the baseline.")
        examples = baseline().build_training_examples(self.x.method_context(label, seed, None))
        return dataclasses.replace(b, target_tokens=target_tokens_in_steps(tokenizer, examples, b, seed))


# multi-process launches ---------------------------------------------------------------------
# Under `accelerate launch -m harness run ...` the main process (rank 0) does the whole run;
# the other processes only join each training, which it announces with the examples, the
# budget and the method (its options and any state it built), and wait in between.
def distributed() -> bool:
    from harness.config import launched_processes

    if launched_processes()[1] <= 1:
        return False
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    # GPUs talk over NCCL, CPU processes over gloo; the waits span whole evaluations
    PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=24))
    return True


def tell(message) -> None:
    """Announce a training to the other processes; None ends the run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list([message], src=0)


def follow(plan, models: Models, units: Units) -> Path:
    """A process other than the main one: join every announced training until the run ends."""
    import torch.distributed as dist

    from harness.training import train

    while True:
        message = [None]
        dist.broadcast_object_list(message, src=0)
        if message[0] is None:
            return plan.run_dir
        label, seed, examples, budget, method = message[0]
        base, tokenizer = models.load_base()
        train(base, tokenizer, examples, budget, plan.loras[label], units.workdir(label, seed), seed,
              extra_loss=method.extra_loss, prepare=method.prepare_model, label=f"train {label} s{seed}")
