"""The one trainer every method goes through: same budget, same loop, complete resumable state.

A recipe of small steps (torchtune's shape), read top to bottom in ``train``: examples are
tokenised once (``harness.model.examples``), the adapter is attached and seeded (``_setup``,
``harness.model.adapters``), then each optimiser step takes ``budget.batch_size`` examples in a
seeded order (or, for an on-policy method, the sequences it samples for them from the current
weights: ``harness.model.onpolicy``), groups them by length into ``grad_accum`` micro-batches,
and minimises the token-weighted mean NLL of the step (or the method's own per-token loss) plus
a method's optional extra loss (``_step``). Every ``budget.save_every`` steps the
whole state is saved atomically (``harness.model.checkpoints``); a rerun resumes from it and
ends with the same weights. ``_finish`` saves the result and the statistics, which mark the
training finished.

Under ``accelerate launch`` (or torchrun) the same loop runs on every process through an
``accelerate.Accelerator``: the global batch stays ``budget.batch_size``, each process takes
every N-th of the step's micro-batches, the loss keeps the global step's token count as its
denominator and is scaled by N because the processes average their gradients, so the update
equals the one-process update. Only the main process writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import resource
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from harness.config.settings import Budget, LoRASettings, launched_processes
from harness.errors import UserError
from harness.model.adapters import attach_adapter, save_result
from harness.model.checkpoints import (FINAL_DIR, STATE_DIR, STATS_FILE, load_state, load_trained, replace_dir,
                                       save_snapshot, save_state, state_identity, trainable)
from harness.model.compute import KINDS, Meter, adapter_flops, install, metering, pass_flops, shape_of
from harness.model.examples import (TokenisedExample, accepts_logits_to_keep, collate, first_scored, length_groups,
                                    lr_factor, step_indices, steps_for_tokens, tokenise_example, weighted_nll,
                                    weighted_token_loss)
from harness.model.fast_lora import fast_lora
from harness.model.onpolicy import SampleStep, start_on_policy
from harness.model.packing import packable, packed_step
from harness.plugins.method import TrainingExample
from harness.progress import progress_bar
from harness.store import write_json

log = logging.getLogger("radis_bench")

ExtraLoss = Callable[[Any, dict, Any], torch.Tensor]
TokenLoss = Callable[[Any, dict, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ComputeTarget:
    """What ``budget.equalise: compute`` needs: the baseline's examples (what they cost in
    ``budget.steps`` steps under this row's adapter is every row's total), what building this
    row's data cost, and the original's passes per micro-batch that the method makes."""

    baseline: list[TrainingExample]
    data_flops: int = 0
    reference_passes: int = 0


@dataclass
class TrainResult:
    model: Any  # a peft PeftModel (LoRA) or the fully fine-tuned model
    stats: dict  # JSON-able accounting of what was trained (see ``train``)


# Below this size each operation is too small for intra-op threads to pay off: on a busy
# 2-core machine a 16k-parameter test model trained 7-20x slower with 2 threads than with 1.
SMALL_MODEL_PARAMS = 20_000_000


@contextlib.contextmanager
def _training_threads(model):
    """One thread for small models; otherwise no more threads than usable CPUs (containers
    often report the host's cores). The caller's setting is restored afterwards."""
    before = torch.get_num_threads()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    torch.set_num_threads(1 if small else min(before, usable))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _accelerator(budget: Budget, device: torch.device):
    """An Accelerator for this training. One process keeps the model where it is (the harness
    loads models on the CPU); a multi-process launch puts each process on its own GPU, or on
    the CPU (gloo) where there is none."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    processes = launched_processes()[1]
    # The mixed-precision setting is a process-wide singleton; each training sets its own
    # (the process group, kept in accelerate's PartialState, stays).
    AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision="bf16" if budget.bf16 else "no",
        cpu=device.type == "cpu" if processes == 1 else not torch.cuda.is_available(),
        device_placement=processes > 1,
    )


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class _Session:
    """One training under way: the prepared model and optimiser, its data and its statistics."""

    model: Any
    optimizer: Any
    accelerator: Any
    items: list[TokenisedExample]
    budget: Budget
    seed: int
    total_steps: int
    identity: str  # what a saved state of this training must belong to
    stats: dict
    extra_loss: ExtraLoss | None
    device: Any  # where the model came from (and goes back to)
    step: int = 0
    by_kind: Counter = field(default_factory=Counter)
    token_loss: TokenLoss | None = None
    on_policy: "OnPolicy | None" = None
    fused: dict = field(default_factory=dict)  # the frozen weights of fused projections (harness.model.fast_lora)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


def method_hooks(method) -> dict:
    """``train``'s keyword arguments for a method's hooks into the loss, the model and the step."""
    return {"extra_loss": method.extra_loss, "prepare": method.prepare_model, "token_loss": method.token_loss,
            "sample_step": method.sample_step, "samples_per_prompt": method.samples_per_prompt()}


def train(
    model,
    tokenizer,
    examples: list[TrainingExample],
    budget: Budget,
    lora: LoRASettings,
    workdir: Path,
    seed: int,
    extra_loss: ExtraLoss | None = None,
    label: str = "training",
    record: dict | None = None,
    prepare: Callable[[Any, Any, int], None] | None = None,
    token_loss: TokenLoss | None = None,
    sample_step: SampleStep | None = None,
    samples_per_prompt: int = 1,
    compute: ComputeTarget | None = None,
    snapshot_every: int = 0,
    tracker=None,
) -> TrainResult:
    """Fine-tune ``model`` on ``examples`` under ``budget``; resumes from ``workdir/state``.

    ``budget.equalise == "tokens"`` trains until ``budget.target_tokens`` target tokens are
    reached, else exactly ``budget.steps`` steps. ``extra_loss(model, batch, outputs)``
    (batch: input_ids, attention_mask, weights) is added to each micro-batch's loss,
    weighted like that micro-batch's tokens. ``prepare(model, tokenizer, seed)`` runs once
    the adapter is attached (seeded), before the optimiser takes the trainable parameters.
    The stats hold steps, examples_seen, target_tokens (tokens with loss weight > 0) and
    target_tokens_by_kind, total_tokens (non-padding), padded_tokens, padding_share, wall_s,
    peak_mem_mb, per-step losses (and extra_losses), the final lr, resumed_from_step and
    trainable_params; ``record`` adds the caller's own fields. With ``budget.equalise ==
    "compute"`` the steps are the number whose FLOPs, with the data building and ``prepare``,
    come closest to what the baseline's examples cost in ``budget.steps`` steps (``compute``).
    ``snapshot_every``: the weights after every N steps (before the last) are kept under
    ``workdir/trajectory`` for a trajectory; keeping them changes nothing in the training.
    ``tracker`` (``harness.run.tracking.Tracker``) receives each step's loss and learning rate.
    ``token_loss`` replaces the NLL per token; with ``sample_step`` the training is on-policy
    (``harness.model.onpolicy``).
    """
    workdir = Path(workdir)
    finished = load_trained(model, workdir)
    if finished is not None:
        return TrainResult(finished, json.loads((workdir / STATS_FILE).read_text()))
    if not examples:
        raise ValueError("train() needs at least one example")
    items = [tokenise_example(tokenizer, ex, budget.max_length) for ex in examples]
    if not any(item.target_count() for item in items):  # else a training of zero losses: a silent no-op
        raise UserError(f"No training example has a response token within budget.max_length ({budget.max_length}) "
                        f"({label}: the prompts fill it); raise budget.max_length.")
    on_policy = start_on_policy(sample_step, examples, tokenizer, samples_per_prompt, budget, label)
    session = _setup(model, tokenizer, items, budget, lora, workdir, seed, extra_loss, prepare, label, compute)
    session.token_loss, session.on_policy = token_loss, on_policy
    session.stats = on_policy.begin(session.world, session.stats, label) if on_policy else session.stats
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    started, wall_before = time.time(), session.stats["wall_s"]
    session.model.train()
    main = session.accelerator.is_main_process
    # only the main process shows progress (a bar of total 0 draws nothing)
    with _training_threads(session.model), progress_bar(label, total=session.total_steps if main else 0) as bar:
        bar.advance(session.step)
        while session.step < session.total_steps:
            loss, tokens = _step(session, pad_id)
            session.stats["wall_s"] = wall_before + time.time() - started
            bar.advance(1, tokens=tokens, extra=f"loss {loss:.3f}")
            if tracker is not None and main:
                extra = session.stats.get("extra_losses") or [None]
                tracker.log({"train/loss": loss, "train/lr": session.stats["lr"], "train/extra_loss": extra[-1]}, session.step)
            if snapshot_every > 0 and session.step % snapshot_every == 0 and session.step < session.total_steps:
                if main:
                    save_snapshot(workdir, session.accelerator.unwrap_model(session.model), session.step, save_result)
                session.accelerator.wait_for_everyone()
            if budget.save_every > 0 and session.step % budget.save_every == 0 and session.step < session.total_steps:
                if main:
                    save_state(workdir, session.accelerator.unwrap_model(session.model), session.optimizer, session.step,
                               budget.batch_size, session.identity, session.stats)
                session.accelerator.wait_for_everyone()
    return _finish(session, workdir, record)


def adamw(params: list, budget: Budget):
    """AdamW; on a CPU with fp32 parameters one fused kernel over all of them (torch's default
    there: ~24 ms a step against ~5 for the 420 adapter matrices of SmolLM2-135M)."""
    fused = bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params) or None
    return torch.optim.AdamW(params, lr=budget.learning_rate, weight_decay=budget.weight_decay, fused=fused)


def _setup(model, tokenizer, items: list[TokenisedExample], budget: Budget, lora: LoRASettings, workdir: Path, seed: int,
           extra_loss: ExtraLoss | None, prepare, label: str, compute: ComputeTarget | None = None) -> _Session:
    """The adapter attached and seeded, the optimiser, the accelerator, and the statistics, from a
    saved state when one belongs to this training."""
    device = next(model.parameters()).device
    accelerator = _accelerator(budget, device)
    world = accelerator.num_processes
    if budget.batch_size % (budget.grad_accum * world):
        raise UserError(
            f"--batch-size ({budget.batch_size}) must be divisible by grad_accum ({budget.grad_accum}) "
            f"x processes ({world}); the global batch is split evenly between the processes."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    total_steps = steps_for_tokens(items, budget, seed) if budget.equalise == "tokens" else budget.steps
    identity = state_identity(items, budget, lora, seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # adapter initialisation and dropout
    if budget.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = attach_adapter(model, lora, workdir)
    install(model)
    with metering(Meter()) as prepared:  # e.g. EWC's Fisher: counted afresh when a training resumes
        if prepare is not None:
            prepare(model, tokenizer, seed)
    params = list(trainable(model).values())
    optimizer = adamw(params, budget)
    stats: dict[str, Any] = {
        "steps": 0, "schedule_steps": total_steps, "examples_seen": 0, "target_tokens": 0, "total_tokens": 0,
        "padded_tokens": 0, "padding_share": 0.0, "wall_s": 0.0, "peak_mem_mb": 0.0, "losses": [],
        "lr": 0.0, "resumed_from_step": None, "target_tokens_by_kind": {},
        "trainable_params": sum(p.numel() for p in params), "examples": len(items),
    }
    if extra_loss is not None:
        stats["extra_losses"] = []
    step = 0
    resumed = load_state(workdir, model, optimizer, identity)
    if resumed is not None:
        step, stats = resumed
        stats["resumed_from_step"] = step
        log.info("%s: resuming from step %d of %d", label, step, total_steps)
    stats["processes"] = world
    stats["flops"] = {"prepare": prepared.record(), "steps": stats.get("flops", {}).get("steps", Meter().record())}
    if budget.equalise == "compute":
        if compute is None:
            raise ValueError("budget.equalise='compute' needs train(compute=ComputeTarget(...))")
        total_steps, target = _steps_for_compute(model, tokenizer, items, budget, seed, world, extra_loss is None, compute,
                                                 compute.data_flops + prepared.total())
        stats["schedule_steps"], stats["compute_target"] = total_steps, target
    model, optimizer = accelerator.prepare(model, optimizer)
    return _Session(model, optimizer, accelerator, items, budget, seed, total_steps, identity, stats, extra_loss, device, step,
                    Counter(stats["target_tokens_by_kind"]))


def _step(s: _Session, pad_id: int) -> tuple[float, int]:
    """One optimiser step over the step's micro-batches of this process; (loss, tokens) of the
    whole step, summed over processes."""
    budget, accelerator, world, rank = s.budget, s.accelerator, s.world, s.accelerator.process_index
    device = accelerator.device if world > 1 else s.device
    # sorting the step's examples by length keeps padding low inside each micro-batch
    meter = Meter()
    with metering(meter):  # an on-policy step's sampling counts as the step's generated FLOPs
        batch_items = sorted(_step_items(s), key=lambda it: len(it.input_ids))
    step_weight = max(sum(sum(it.weights[1:]) for it in batch_items), 1e-8)
    lr = budget.learning_rate * lr_factor(s.step, s.total_steps, budget)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    s.optimizer.zero_grad(set_to_none=True)
    mine = _chunks(batch_items, budget, world)[rank::world]  # process r takes micro-batches r, r+N, ...: disjoint, similar lengths
    # no logits for the shared prompt prefix of a micro-batch: they carry no loss, and the
    # vocabulary projection and softmax are a fifth of the compute (an extra loss sees all)
    skip_prompt_logits = s.extra_loss is None and accepts_logits_to_keep(s.model)
    sums = [0.0, 0.0, 0, 0]  # loss, extra loss, tokens, padding
    if world == 1 and s.extra_loss is None and s.token_loss is None and packable(s.model):
        # the same micro-batches packed end to end, without padding (harness.model.packing)
        sums[0], sums[2] = packed_step(s.model, mine, device, step_weight, accelerator.backward, meter, budget.bf16,
                                           s.fused)
        mine = []
    for n, chunk in enumerate(mine):
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        batch["extras"] = [item.extra for item in chunk]
        # gradients are exchanged once per step, after the last micro-batch
        with accelerator.no_sync(s.model) if n < len(mine) - 1 else contextlib.nullcontext():
            start = first_scored(batch["weights"]) if skip_prompt_logits else 0
            kwargs = {"logits_to_keep": batch["input_ids"].shape[1] - start} if start else {}
            with metering(meter):
                with fast_lora(s.model, s.fused):  # peft's LoRA layers, the scaling and sum in one product; q, k, v as one
                    outputs = s.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
                if s.token_loss is None:
                    nll_sum, weight_sum = weighted_nll(outputs.logits, batch["input_ids"][:, start:], batch["weights"][:, start:])
                else:
                    nll_sum, weight_sum = weighted_token_loss(s.token_loss, accelerator.unwrap_model(s.model), batch,
                                                              outputs.logits, start)
                # each micro-batch counts by its share of the global step's weighted tokens, so the
                # step minimises one token-level mean whatever grad_accum and the process count are
                loss = nll_sum / step_weight
                if s.extra_loss is not None:
                    extra = s.extra_loss(accelerator.unwrap_model(s.model), batch, outputs) * (weight_sum / step_weight)
                    loss = loss + extra
                    sums[1] += extra.item()
            # processes average their gradients; times N that is the sum over the global batch
            accelerator.backward(loss * world)
        sums[0] += loss.item()
        real = int(batch["attention_mask"].sum())
        sums[2] += real
        sums[3] += batch["attention_mask"].numel() - real
    spent = [float(meter.flops[k]) for k in KINDS]
    every = accelerator.gather(torch.tensor([sums + [_peak_mem_mb(device)] + spent], dtype=torch.float64, device=device)).cpu()
    if budget.max_grad_norm > 0:
        accelerator.clip_grad_norm_(s.model.parameters(), budget.max_grad_norm)
    s.optimizer.step()
    s.step += 1
    _account(s, batch_items, every, lr)
    return s.stats["losses"][-1], int(every[:, 2].sum())


def _step_items(s: _Session) -> list[TokenisedExample]:
    """The step's examples in the seeded order, or, on-policy, the sequences sampled for them."""
    return (s.on_policy.items(s.accelerator.unwrap_model(s.model), s.step, s.seed, s.budget, s.stats) if s.on_policy
            else [s.items[i] for i in step_indices(s.step, s.budget.batch_size, len(s.items), s.seed)])


def _chunks(batch_items: list[TokenisedExample], budget: Budget, world: int) -> list[list[TokenisedExample]]:
    """A step's micro-batches over every process (process r takes r, r+N, ...)."""
    micro_size = budget.batch_size // (budget.grad_accum * world)
    if world == 1:
        return length_groups(batch_items, micro_size)
    # a fixed split, so every process gets micro-batches and joins each gradient exchange
    return [batch_items[start : start + micro_size] for start in range(0, len(batch_items), micro_size)]


def _steps_for_compute(model, tokenizer, items, budget: Budget, seed: int, world: int, no_extra_loss: bool,
                       compute: ComputeTarget, spent: int) -> tuple[int, int]:
    """(steps, target): the number of steps (at least one) whose FLOPs, added to ``spent``, come
    closest to the target, what the baseline's examples cost in ``budget.steps`` steps. A step
    is counted as the hooks of ``harness.model.compute`` count it, from its micro-batches, before
    it runs: the data order is fixed by the seed, so this is exact for the passes the trainer
    makes and those a method declares (``Method.reference_passes``)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    shape, adapter = shape_of(model), adapter_flops(model)
    full = any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    head = model.get_output_embeddings()
    head_trains = head is not None and head.weight.requires_grad
    skips = accepts_logits_to_keep(model)

    def step_flops(step_items, step: int, skip: bool, passes: int) -> int:
        chosen = sorted((step_items[i] for i in step_indices(step, budget.batch_size, len(step_items), seed)),
                        key=lambda it: len(it.input_ids))
        total = 0
        for chunk in _chunks(chosen, budget, world):
            batch = collate(chunk, pad_id)
            mask = batch["attention_mask"]
            lengths = [int(n) for n in mask.sum(1)]
            start = first_scored(batch["weights"]) if skip else 0
            total += pass_flops(shape, lengths, int(mask[:, start:].sum()), adapter, trained=True, full=full, head_trains=head_trains)
            total += passes * pass_flops(shape, lengths, int(mask.sum()))
        return total

    baseline = [tokenise_example(tokenizer, ex, budget.max_length) for ex in compute.baseline]
    target = sum(step_flops(baseline, step, skips, 0) for step in range(budget.steps))
    steps, total = 1, spent + step_flops(items, 0, skips and no_extra_loss, compute.reference_passes)
    while True:
        following = total + step_flops(items, steps, skips and no_extra_loss, compute.reference_passes)
        if abs(following - target) >= abs(total - target):
            return steps, target
        steps, total = steps + 1, following


def _account(s: _Session, batch_items: list[TokenisedExample], every, lr: float) -> None:
    """The statistics after a step (``every``: loss, extra loss, tokens, padding and peak memory
    of each process)."""
    stats = s.stats
    stats["total_tokens"] += int(every[:, 2].sum())
    stats["padded_tokens"] += int(every[:, 3].sum())
    for item in batch_items:
        s.by_kind.update(kind for kind, w in zip(item.kinds[1:], item.weights[1:]) if w > 0)
        stats["target_tokens"] += item.target_count()
    stats["target_tokens_by_kind"] = dict(s.by_kind)
    stats["steps"] = s.step
    stats["examples_seen"] = s.step * s.budget.batch_size
    stats["losses"].append(every[:, 0].sum().item())
    if s.extra_loss is not None:
        stats["extra_losses"].append(every[:, 1].sum().item())
    stats["lr"] = lr
    stats["padding_share"] = stats["padded_tokens"] / max(stats["padded_tokens"] + stats["total_tokens"], 1)
    stats["peak_mem_mb"] = max(stats["peak_mem_mb"], every[:, 4].max().item())
    steps = Meter(stats["flops"]["steps"])
    for n, kind in enumerate(KINDS):  # every process's passes
        steps.add(kind, int(every[:, 5 + n].sum().item()))
    stats["flops"]["steps"] = steps.record()


def _finish(s: _Session, workdir: Path, record: dict | None) -> TrainResult:
    """The plain model back on its device; the result saved, then the statistics that mark the
    training finished, then the resumable state removed."""
    model = s.accelerator.unwrap_model(s.model, keep_fp32_wrapper=False)
    if s.budget.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    if s.accelerator.is_main_process:
        tmp = workdir / (FINAL_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_result(model, tmp, workdir)  # the adapter for LoRA, the whole model for full fine-tuning
        replace_dir(tmp, workdir / FINAL_DIR)
        s.stats |= record or {}  # the caller's extra fields, e.g. who computed it
        write_json(workdir / STATS_FILE, s.stats)
        shutil.rmtree(workdir / STATE_DIR, ignore_errors=True)
    s.accelerator.wait_for_everyone()
    return TrainResult(model.to(s.device), s.stats)
