"""The training units of a run: reuse a finished one, copy an identical one from another
row, or train it; then the method's post-processing and a generator for the result."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from harness.errors import UserError, interruption, raise_if_stopping
from harness.model.adapters import save_result
from harness.model.checkpoints import FINAL_DIR, STATS_FILE, TRAJECTORY_DIR, load_snapshot, load_trained
from harness.model.compute import Meter, metering
from harness.model.examples import target_tokens_in_steps
from harness.model.training import ComputeTarget, method_hooks, train
from harness.plugins import registry
from harness.plugins.method import MethodContext
from harness.progress import warn
from harness.run.distributed import distributed, tell
from harness.run.tracking import tracker
from harness.store import Unreadable, read_json, read_jsonl, write_atomic, write_json, write_jsonl
from harness.versions import training_code


def method_context(plan, label: str, seed: int, original, original_model=None) -> MethodContext:
    """What a row's method builds its data from; ``original`` (its generator) None while planning."""
    return MethodContext(pairs=plan.train_pairs, original=original, data=plan.data, budget=plan.budgets[label], seed=seed,
                         original_model=original_model)


class Trainings:
    """The training units: reuse a finished one, copy an identical one, or train; then the
    method's post-processing and a generator for the result."""

    def __init__(self, plan, units, models, publisher, say, counts: dict):
        self.plan, self.units, self.models, self.publisher = plan, units, models, publisher
        self.say, self.counts = say, counts  # the run's console line and its computed/reused counts

    def model(self, label: str, seed: int):
        """(model, tokenizer, generator) of a trained row: reused, copied from an identical training, or trained."""
        plan, units = self.plan, self.units
        method, key, workdir = plan.methods[label], plan.keys.train_key(label, seed), units.workdir(label, seed)
        base, tokenizer = self.models.load_base()
        done = units.training_done(label, seed)
        trained, base = self._load(base, workdir) if done else (None, base)
        if trained is not None:
            self.say(f"reused: training {label} seed {seed} ({workdir})")
            self.counts["reused"] += 1
        else:
            if done:  # e.g. a published run directory, which keeps statistics but no weights
                self.say(f"training {label} seed {seed} is finished but its weights are not in {workdir}; training it again")
            (workdir / STATS_FILE).unlink(missing_ok=True)  # (also one that cannot be read: harness.run.units)
            stored = workdir / "unit_key.txt"
            if stored.exists() and stored.read_text(errors="replace") != key:  # the same key: a resumable training state
                self.say(f"settings changed for {label} seed {seed}: discarding its old training")
                shutil.rmtree(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            write_atomic(workdir / "unit_key.txt", key)
            ctx = method_context(self.plan, label, seed, self.models.original[2], self.models.original[0])
            t0 = time.time()
            self.say(f"building training data: {label} seed {seed}")
            with metering(Meter()) as meter:  # what building the data costs (the original's generations)
                examples = method.build_training_examples(ctx)
            raise_if_stopping()
            ctx.stats["data_flops"] = meter.record()
            ctx.stats["build_s"] = round(time.time() - t0, 1)
            ctx.stats["examples"] = len(examples)
            rows = [{"messages": e.messages, "response": [dataclasses.asdict(s) for s in e.response], "source": e.source,
                     "end_of_turn": e.end_of_turn, "end_weight": e.end_weight} for e in examples]
            write_jsonl(workdir / "examples.jsonl", rows)
            write_json(workdir / "method_stats.json", ctx.stats)
            budget = self._budget_for(label, tokenizer, seed)
            donor = self._same_training(label, seed, rows, budget, ctx.stats["data_flops"]["total"])
            if donor is not None:
                # e.g. wise trains exactly as vanilla does: the same training is done once
                self.say(f"reused: training {label} seed {seed} is identical to {donor.parent.name}'s (same examples, "
                         f"loss, budget and seed); copying it")
                shutil.copytree(donor / FINAL_DIR, workdir / FINAL_DIR, dirs_exist_ok=True)
                if (donor / TRAJECTORY_DIR).is_dir():
                    shutil.copytree(donor / TRAJECTORY_DIR, workdir / TRAJECTORY_DIR, dirs_exist_ok=True)
                stats = read_json(donor / STATS_FILE) | {"shared_with": f"{donor.parent.name} seed {seed}"}
                ctx.stats["training_shared_with"] = donor.parent.name
                write_json(workdir / "method_stats.json", ctx.stats)
                write_json(workdir / STATS_FILE, stats)
                trained = load_trained(base, workdir)
                self.counts["reused"] += 1
            else:
                trained = self._train(label, seed, base, tokenizer, examples, budget, workdir, ctx.stats["data_flops"]["total"])
        self.publisher.publish()
        return self._ready(label, trained, tokenizer, workdir, workdir / "eval_adapter", key)

    def snapshot(self, label: str, seed: int, step: int):
        """(model, tokenizer, generator) of a training's checkpoint at ``step`` (a trajectory
        point), post-processed as the final model is; None when the training did not keep it."""
        workdir = self.units.workdir(label, seed)
        base, tokenizer = self.models.load_base()
        trained = load_snapshot(base, workdir, step)
        if trained is None:
            return None
        return self._ready(label, trained, tokenizer, workdir, workdir / TRAJECTORY_DIR / f"step{step}-eval_adapter",
                           f"{self.plan.keys.train_key(label, seed)}@step{step}")

    def _ready(self, label: str, trained, tokenizer, workdir: Path, adapter_dir: Path, key: str):
        """The method's post-processing, then the weights merged, and a generator for them."""
        original_model = self.models.original[0]
        trained = self.plan.methods[label].after_training(trained, dict(original_model.state_dict()))
        adapter = None
        if self.models.backend == "vllm" and hasattr(trained, "peft_config") and self.plan.loras[label].adapter != "dora":
            # vLLM serves base + this adapter, saved after after_training (e.g. WiSE scaling; a PiSSA adapter converted
            # to plain LoRA on the original); it serves no DoRA adapter, so a DoRA model generates with transformers
            adapter = adapter_dir
            save_result(trained, adapter, workdir)
        if hasattr(trained, "merge_and_unload"):
            # merged weights evaluate faster than base + adapter; the original stays a separate model
            trained = trained.merge_and_unload()
        trained.eval()
        fingerprint = f"{self.plan.spec.fingerprint}+{self.plan.entries[label].method}:{key}"
        return trained, tokenizer, self.models.generator(trained, tokenizer, fingerprint, adapter)

    def _load(self, base, workdir: Path):
        """(a finished training's weights or None, the base model): ``load_trained``, or None
        when they cannot be loaded; a run directory is data that may come from elsewhere
        (safetensors only: ``load_trained`` never reads a .bin), and weights it cannot give
        are trained again, on a fresh base (a failed load may have attached layers to it)."""
        try:
            return load_trained(base, workdir), base
        except Exception as err:  # any damaged or foreign weight file; a stop is no damage
            if interruption(err):
                raise
            first = (str(err).strip().splitlines() or [""])[0][:160]
            warn(f"{workdir / FINAL_DIR} cannot be loaded ({type(err).__name__}: {first}); training it again.")
            return None, self.models.load_base()[0]

    def _train(self, label, seed, base, tokenizer, examples, budget, workdir, data_flops: int):
        method = self.plan.methods[label]
        compute = None
        if budget.equalise == "compute":
            compute = ComputeTarget(self._baseline_examples(label, seed), data_flops, method.reference_passes)
        steps = "steps to equal compute" if compute else f"{budget.steps} steps"
        self.say(f"training: {label} seed {seed} ({steps} x {budget.batch_size})")
        tell((label, seed, examples, budget, method, compute, self.plan.cfg.eval_every))
        stamp = self.publisher.stamp()
        logger = tracker(self.plan, label, seed)
        try:
            result = self._run_training(label, seed, base, tokenizer, examples, budget, workdir, method, compute, stamp, logger)
        finally:
            if logger is not None:
                logger.finish()
        self.counts["computed"] += 1
        self.publisher.computed(f"{label}-seed{seed}", stamp)
        return result.model

    def _run_training(self, label, seed, base, tokenizer, examples, budget, workdir, method, compute, stamp, logger):
        return train(base, tokenizer, examples, budget, self.plan.loras[label], workdir, seed, label=f"train {label} s{seed}",
                     record={"computed": stamp, "code": training_code(method)}, compute=compute,
                     snapshot_every=self.plan.cfg.eval_every, tracker=logger, **method_hooks(method))

    def _same_training(self, label: str, seed: int, examples: list[dict], budget, data_flops: int) -> Path | None:
        """Another row's finished training in this run that computed exactly this one (under a
        compute budget, one whose data building cost the same too: it sets the steps)."""
        if distributed():
            return None

        key = self.plan.keys.training_content_key(label, examples, budget, seed)
        for other in self.plan.entries:
            workdir = self.units.workdir(other, seed)
            if other == label or seed not in self.plan.seeds_of(other) or not self.units.training_done(other, seed):
                continue
            if not (workdir / FINAL_DIR).is_dir() or not (workdir / "examples.jsonl").exists():
                continue
            if budget.equalise == "compute" and data_flops != ((read_json(workdir / "method_stats.json") or {}).get("data_flops") or {}).get("total"):
                continue
            try:
                theirs = read_jsonl(workdir / "examples.jsonl")
            except Unreadable:  # not a training to copy; its own row's next run rewrites it
                continue
            if self.plan.keys.training_content_key(other, theirs, self.plan.budgets[other], seed) == key:
                return workdir
        return None

    def _budget_for(self, label: str, tokenizer, seed: int):
        """The row's budget; with equalise=tokens, the target is what the baseline method
        (plain fine-tuning) trains on in ``steps``."""
        b = self.plan.budgets[label]
        if b.equalise != "tokens" or b.target_tokens:
            return b

        examples = self._baseline_examples(label, seed)
        return dataclasses.replace(b, target_tokens=target_tokens_in_steps(tokenizer, examples, b, seed))

    def _baseline_examples(self, label: str, seed: int) -> list:
        """What the baseline method (plain fine-tuning) trains on, which the tokens and compute
        budgets are equalised to."""
        baseline = registry.baseline_method()
        if baseline is None:
            raise UserError(f"budget.equalise={self.plan.budgets[label].equalise} needs an installed baseline method "
                            f"(plain fine-tuning) to equalise to; install it or use equalise=steps"
                            + (" or set budget.target_tokens." if self.plan.budgets[label].equalise == "tokens" else "."))
        return baseline().build_training_examples(method_context(self.plan, label, seed, None))


