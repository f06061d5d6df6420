"""The one trainer every method goes through: same budget, same loop, complete resumable state.

Read top to bottom: examples are tokenised once (prompt masked, response spans weighted),
the adapter is attached, then each optimiser step takes ``budget.batch_size`` examples in
a seeded order, groups them by length into ``grad_accum`` micro-batches, and minimises the
token-weighted mean NLL of the step (plus a method's optional extra loss). Every
``budget.save_every`` steps the whole state (trainable weights, optimiser, RNG, step,
statistics) is saved atomically under ``workdir/state``; a rerun resumes from it and
ends with the same weights. ``workdir/final`` holds the result and
``workdir/train_stats.json``, written last, marks the training finished.

Under ``accelerate launch`` (or torchrun) the same loop runs on every process through an
``accelerate.Accelerator``: the global batch stays ``budget.batch_size``, each process takes
every N-th of the step's micro-batches, the loss keeps the global step's token count as its
denominator and is scaled by N because the processes average their gradients, so the update
equals the one-process update. Only the main process writes files.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import hashlib
import json
import logging
import math
import os
import random
import resource
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from harness.config import Budget, LoRASettings, launched_processes
from harness.errors import UserError
from harness.methods import TrainingExample
from harness.progress import progress_bar
from harness.store import write_json
from harness.versions import TRAINER
from harness.prompts import render_chat, turn_end_tokens

log = logging.getLogger("radis_bench")

STATE_DIR = "state"
FINAL_DIR = "final"
STATS_FILE = "train_stats.json"

ExtraLoss = Callable[[Any, dict, Any], torch.Tensor]


@dataclass
class TrainResult:
    model: Any  # a peft PeftModel (LoRA) or the fully fine-tuned model
    stats: dict  # JSON-able accounting of what was trained (see ``train``)


# --- tokenisation and loss ----------------------------------------------------------------


@dataclass
class TokenisedExample:
    input_ids: list[int]
    weights: list[float]  # loss weight of predicting each token; 0 for the prompt
    kinds: list[str | None]  # the segment kind of each response token, None for the prompt

    def target_count(self) -> int:
        """Tokens that carry loss (the first token is never predicted)."""
        return sum(1 for w in self.weights[1:] if w > 0)


def tokenise_example(tokenizer, example: TrainingExample, max_length: int) -> TokenisedExample:
    """Prompt = the chat template up to the assistant turn; response = each run of text
    segments tokenised as one text (a token takes the weight and kind of the segment its
    first character is in), a segment with ``ids`` put in as those tokens; then the chat
    template's end-of-turn tokens with the last segment's weight (unless the example has
    none). The end of the result is truncated to ``max_length``.

    A generation that continued an assistant prefix started from ``request_ids(messages,
    prefix)``: the prompt's ids and the prefix's own, which is what this gives for text
    segments equal to the prefix followed by the continuation's ``ids``."""
    prompt = tokenizer(render_chat(tokenizer, example.messages), add_special_tokens=False)["input_ids"]
    ids, weights, kinds = list(prompt), [0.0] * len(prompt), [None] * len(prompt)
    run: list = []

    def flush() -> None:
        if not run:
            return
        if not getattr(tokenizer, "is_fast", False):  # no character offsets: segment by segment
            pieces = [(tokenizer(s.text, add_special_tokens=False)["input_ids"], s) for s in run]
            tokens = [(token, segment) for piece, segment in pieces for token in piece]
        else:
            ends = list(itertools.accumulate(len(s.text) for s in run))
            encoded = tokenizer("".join(s.text for s in run), add_special_tokens=False, return_offsets_mapping=True)
            tokens = [(token, run[min(bisect.bisect_right(ends, start), len(run) - 1)])
                      for token, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"])]
        for token, segment in tokens:
            ids.append(token)
            weights.append(float(segment.weight))
            kinds.append(segment.kind)
        run.clear()

    for segment in example.response:
        if segment.ids is None:
            run.append(segment)
            continue
        flush()
        ids.extend(segment.ids)
        weights.extend([float(segment.weight)] * len(segment.ids))
        kinds.extend([segment.kind] * len(segment.ids))
    flush()
    if example.end_of_turn:
        last = example.response[-1]
        end = turn_end_tokens(tokenizer)
        ids.extend(end)
        weights.extend([float(last.weight if example.end_weight is None else example.end_weight)] * len(end))
        kinds.extend(["end"] * len(end))
    return TokenisedExample(ids[:max_length], weights[:max_length], kinds[:max_length])


def example_token_weights(tokenizer, example: TrainingExample, max_length: int) -> tuple[list[int], list[float]]:
    """The token ids the trainer sees for ``example`` and the loss weight of each."""
    item = tokenise_example(tokenizer, example, max_length)
    return item.input_ids, item.weights


def collate(items: list[TokenisedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and weights (0 on padding)."""
    width = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    weights = torch.zeros((len(items), width), dtype=torch.float32)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        input_ids[row, :n] = torch.tensor(item.input_ids)
        attention_mask[row, :n] = 1
        weights[row, :n] = torch.tensor(item.weights)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "weights": weights}


def weighted_nll(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ w·nll, Σ w) over predicted tokens; token t is predicted from position t-1.

    The loss of a batch is their ratio: a token-level weighted mean, so with all weights 1
    it is the ordinary causal-LM loss over the response.
    """
    logits = logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
    ).view_as(input_ids[:, 1:])
    w = weights[:, 1:].to(nll.dtype)
    return (w * nll).sum(), w.sum()


def _first_scored(weights: torch.Tensor) -> int:
    """The last position before any token of the micro-batch carries loss (logits before
    it predict nothing that counts)."""
    scored = (weights[:, 1:] > 0).any(dim=0).nonzero()
    return max(int(scored[0]) if len(scored) else 0, 0)


def accepts_logits_to_keep(model) -> bool:
    import inspect

    inner = getattr(model, "module", model)  # DDP wraps the model
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def length_groups(items: list[TokenisedExample], max_size: int, max_padding: float = 0.1) -> list[list[TokenisedExample]]:
    """Split length-sorted examples into micro-batches of at most ``max_size`` whose padding
    stays within ``max_padding`` of the tokens each processes (a longer example that would
    pad the group beyond it starts a new one). On a CPU, padded tokens cost as much as
    real ones, so fewer of them is time saved; the loss is unchanged (each micro-batch
    counts by its share of the step's weighted tokens)."""
    groups: list[list[TokenisedExample]] = []
    current: list[TokenisedExample] = []
    real = 0
    for item in items:
        n = len(item.input_ids)
        width = max([n] + [len(c.input_ids) for c in current])
        if current and (len(current) >= max_size or 1 - (real + n) / (width * (len(current) + 1)) > max_padding):
            groups.append(current)
            current, real = [], 0
        current.append(item)
        real += n
    if current:
        groups.append(current)
    return groups


# --- data order and schedule -----------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    return tuple(order)


def step_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Example indices of one optimiser step: a seeded permutation per epoch, epochs cycled.

    A pure function of the position, so resuming needs only the step number."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        out.append(_epoch_order(n, seed, epoch)[offset])
    return out


def lr_factor(step: int, total_steps: int, budget: Budget) -> float:
    """Linear warm-up over ``warmup_ratio`` of the steps, then cosine, linear or constant decay."""
    warmup = round(budget.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    if budget.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if budget.schedule == "linear":
        return 1.0 - progress
    return 1.0


def _steps_for_tokens(items: list[TokenisedExample], budget: Budget, seed: int) -> int:
    """Steps until the trained target tokens reach ``budget.target_tokens``.

    The data order is fixed by the seed, so this is exact rather than an estimate, and the
    schedule ends where training ends."""
    if budget.target_tokens is None:
        raise ValueError("budget.target_tokens must be set when equalise='tokens' (see target_tokens_in_steps)")
    if not any(item.target_count() for item in items):
        raise UserError("No training example has a response token within budget.max_length; raise budget.max_length.")
    steps, done = 0, 0
    while done < budget.target_tokens:
        done += sum(items[i].target_count() for i in step_indices(steps, budget.batch_size, len(items), seed))
        steps += 1
    return steps


def target_tokens_in_steps(tokenizer, examples: list[TrainingExample], budget: Budget, seed: int) -> int:
    """Target tokens ``budget.steps`` steps train on (e.g. vanilla's, to equalise tokens by)."""
    items = [tokenise_example(tokenizer, ex, budget.max_length) for ex in examples]
    return sum(
        items[i].target_count()
        for step in range(budget.steps)
        for i in step_indices(step, budget.batch_size, len(items), seed)
    )


# --- model preparation ----------------------------------------------------------------------


def _attach_adapter(model, lora: LoRASettings):
    if lora.full_finetune:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in lora.target_modules if m in present]
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(
            f"None of the LoRA target modules {', '.join(lora.target_modules)} exist in this model; "
            f"set lora.target_modules to some of: {', '.join(linear)}."
        )
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


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


# --- atomic files and resumable state --------------------------------------------------------


def _replace_dir(tmp: Path, target: Path) -> None:
    """Swap a finished temp folder in; a crash in between leaves ``<target>.old`` to fall back on."""
    old = target.with_name(target.name + ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _signature(items: list[TokenisedExample], budget: Budget, lora: LoRASettings, seed: int) -> str:
    """What a saved state belongs to: the exact data, budget, adapter settings and seed."""
    blob = json.dumps([[i.input_ids, i.weights] for i in items] + [asdict(budget), asdict(lora), seed] + (
        [TRAINER] if TRAINER > 1 else []), default=list)  # a state saved by another trainer version is not resumed
    return hashlib.sha256(blob.encode()).hexdigest()


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _save_state(workdir: Path, model, optimizer, step: int, batch_size: int, signature: str, stats: dict) -> None:
    tmp = workdir / (STATE_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({n: p.detach().cpu() for n, p in _trainable(model).items()}, tmp / "trainable.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    write_json(tmp / "rng.json", rng_state())
    write_json(tmp / "progress.json", {"step": step, "position": step * batch_size, "signature": signature, "stats": stats})
    _replace_dir(tmp, workdir / STATE_DIR)


def _load_state(workdir: Path, model, optimizer, signature: str) -> tuple[int, dict] | None:
    """Restore a saved state into ``model`` and ``optimizer``; (step, stats) or None."""
    folder = next((d for d in (workdir / STATE_DIR, workdir / (STATE_DIR + ".old")) if (d / "progress.json").exists()), None)
    if folder is None:
        return None
    params = _trainable(model)
    try:
        progress = json.loads((folder / "progress.json").read_text())
        # run directories are shared and published: tensors and JSON only, nothing that could run code
        saved = torch.load(folder / "trainable.pt", map_location="cpu", weights_only=True)
        optimizer_state = torch.load(folder / "optimizer.pt", map_location=next(iter(params.values())).device,
                                     weights_only=True)
        rng = json.loads((folder / "rng.json").read_text())
    except Exception as err:  # any unreadable, damaged or foreign file: the state is not used, training starts over
        log.warning("%s is not a readable training state (%s); starting over", folder, str(err).splitlines()[0][:200])
        return None
    if progress.get("signature") != signature or set(saved) != set(params):
        log.warning("%s holds the state of a different training (data, budget or adapter changed); starting over", folder)
        return None
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(optimizer_state)
    set_rng_state(rng)
    return progress["step"], progress["stats"]


def rng_state() -> dict:
    """Python's, numpy's and torch's random states as JSON (a resumed training continues them)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def load_trained(model, workdir: Path):
    """The trained model if ``workdir`` holds a finished training with its weights, else None
    (a published run directory keeps a training's statistics but not its weights).

    ``model`` must be a fresh copy of the base model; a LoRA result is attached to it."""
    workdir = Path(workdir)
    final = workdir / FINAL_DIR
    if not (workdir / STATS_FILE).exists():
        return None
    if not (final / "adapter_config.json").exists() and not any(final.glob("*.safetensors")):
        return None
    if (final / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, final).eval()
    from safetensors.torch import load_file

    for shard in sorted(final.glob("*.safetensors")):
        # tied weights (e.g. lm_head = embeddings) are saved once and missing here by design
        unexpected = model.load_state_dict(load_file(shard), strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{shard} has weights this model lacks: {unexpected[:3]}")
    return model.eval()


# --- the loop ---------------------------------------------------------------------------------


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
) -> TrainResult:
    """Fine-tune ``model`` on ``examples`` under ``budget``; resumes from ``workdir/state``.

    ``budget.equalise == "tokens"`` trains until ``budget.target_tokens`` target tokens are
    reached, else exactly ``budget.steps`` steps. ``extra_loss(model, batch, outputs)``
    (batch: input_ids, attention_mask, weights) is added to each micro-batch's loss,
    weighted like that micro-batch's tokens. ``prepare(model, tokenizer, seed)`` runs once
    the adapter is attached (seeded), before the optimiser takes the trainable parameters. The stats hold steps, examples_seen,
    target_tokens (tokens with loss weight > 0) and target_tokens_by_kind, total_tokens
    (non-padding), padded_tokens, padding_share, wall_s, peak_mem_mb, per-step losses
    (and extra_losses), the final lr, resumed_from_step and trainable_params.
    """
    workdir = Path(workdir)
    finished = load_trained(model, workdir)
    if finished is not None:
        return TrainResult(finished, json.loads((workdir / STATS_FILE).read_text()))
    if not examples:
        raise ValueError("train() needs at least one example")
    device = next(model.parameters()).device
    accelerator = _accelerator(budget, device)
    world, rank = accelerator.num_processes, accelerator.process_index
    if budget.batch_size % (budget.grad_accum * world):
        raise UserError(
            f"--batch-size ({budget.batch_size}) must be divisible by grad_accum ({budget.grad_accum}) "
            f"x processes ({world}); the global batch is split evenly between the processes."
        )
    workdir.mkdir(parents=True, exist_ok=True)

    items = [tokenise_example(tokenizer, ex, budget.max_length) for ex in examples]
    total_steps = _steps_for_tokens(items, budget, seed) if budget.equalise == "tokens" else budget.steps
    signature = _signature(items, budget, lora, seed)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # adapter initialisation and dropout
    if budget.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = _attach_adapter(model, lora)
    if prepare is not None:
        prepare(model, tokenizer, seed)
    params = list(_trainable(model).values())
    optimizer = torch.optim.AdamW(params, lr=budget.learning_rate, weight_decay=budget.weight_decay)
    stats: dict[str, Any] = {
        "steps": 0, "schedule_steps": total_steps, "examples_seen": 0, "target_tokens": 0, "total_tokens": 0,
        "padded_tokens": 0, "padding_share": 0.0, "wall_s": 0.0, "peak_mem_mb": 0.0, "losses": [],
        "lr": 0.0, "resumed_from_step": None, "target_tokens_by_kind": {},
        "trainable_params": sum(p.numel() for p in params), "examples": len(items),
    }
    if extra_loss is not None:
        stats["extra_losses"] = []
    step = 0
    resumed = _load_state(workdir, model, optimizer, signature)
    if resumed is not None:
        step, stats = resumed
        stats["resumed_from_step"] = step
        log.info("%s: resuming from step %d of %d", label, step, total_steps)

    stats["processes"] = world
    model, optimizer = accelerator.prepare(model, optimizer)
    train_device = accelerator.device if world > 1 else device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    micro_size = budget.batch_size // (budget.grad_accum * world)
    # no logits for the shared prompt prefix of a micro-batch: they carry no loss, and the
    # vocabulary projection and softmax are a fifth of the compute (an extra loss sees all)
    skip_prompt_logits = extra_loss is None and accepts_logits_to_keep(model)
    by_kind = Counter(stats["target_tokens_by_kind"])
    session_start, wall_before = time.time(), stats["wall_s"]
    model.train()
    # only the main process shows progress (a bar of total 0 draws nothing)
    with _training_threads(model), progress_bar(label, total=total_steps if accelerator.is_main_process else 0) as bar:
        bar.advance(step)
        while step < total_steps:
            # sorting the step's examples by length keeps padding low inside each micro-batch
            batch_items = sorted(
                (items[i] for i in step_indices(step, budget.batch_size, len(items), seed)), key=lambda it: len(it.input_ids)
            )
            step_weight = max(sum(sum(it.weights[1:]) for it in batch_items), 1e-8)
            lr = budget.learning_rate * lr_factor(step, total_steps, budget)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            step_loss, step_extra, step_tokens, step_padded = 0.0, 0.0, 0, 0
            if world == 1:
                chunks = length_groups(batch_items, micro_size)
            else:  # a fixed split, so every process gets micro-batches and joins each gradient exchange
                chunks = [batch_items[start : start + micro_size] for start in range(0, len(batch_items), micro_size)]
            mine = chunks[rank::world]  # process r takes micro-batches r, r+N, ...: disjoint, similar lengths
            for n, chunk in enumerate(mine):
                batch = {k: v.to(train_device) for k, v in collate(chunk, pad_id).items()}
                # gradients are exchanged once per step, after the last micro-batch
                with accelerator.no_sync(model) if n < len(mine) - 1 else contextlib.nullcontext():
                    start = _first_scored(batch["weights"]) if skip_prompt_logits else 0
                    kwargs = {"logits_to_keep": batch["input_ids"].shape[1] - start} if start else {}
                    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
                    nll_sum, weight_sum = weighted_nll(outputs.logits, batch["input_ids"][:, start:], batch["weights"][:, start:])
                    # each micro-batch counts by its share of the global step's weighted tokens, so the
                    # step minimises one token-level mean whatever grad_accum and the process count are
                    loss = nll_sum / step_weight
                    if extra_loss is not None:
                        extra = extra_loss(accelerator.unwrap_model(model), batch, outputs) * (weight_sum / step_weight)
                        loss = loss + extra
                        step_extra += extra.item()
                    # processes average their gradients; times N that is the sum over the global batch
                    accelerator.backward(loss * world)
                step_loss += loss.item()
                real = int(batch["attention_mask"].sum())
                step_tokens += real
                step_padded += batch["attention_mask"].numel() - real
            local = [[step_loss, step_extra, step_tokens, step_padded, _peak_mem_mb(train_device)]]
            every = accelerator.gather(torch.tensor(local, dtype=torch.float64, device=train_device)).cpu()
            step_loss, step_extra = every[:, 0].sum().item(), every[:, 1].sum().item()
            step_tokens, step_padded = int(every[:, 2].sum()), int(every[:, 3].sum())
            stats["total_tokens"] += step_tokens
            stats["padded_tokens"] += step_padded
            if budget.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), budget.max_grad_norm)
            optimizer.step()
            step += 1

            for item in batch_items:
                by_kind.update(kind for kind, w in zip(item.kinds[1:], item.weights[1:]) if w > 0)
                stats["target_tokens"] += item.target_count()
            stats["target_tokens_by_kind"] = dict(by_kind)
            stats["steps"] = step
            stats["examples_seen"] = step * budget.batch_size
            stats["losses"].append(step_loss)
            if extra_loss is not None:
                stats["extra_losses"].append(step_extra)
            stats["lr"] = lr
            stats["padding_share"] = stats["padded_tokens"] / max(stats["padded_tokens"] + stats["total_tokens"], 1)
            stats["wall_s"] = wall_before + time.time() - session_start
            stats["peak_mem_mb"] = max(stats["peak_mem_mb"], every[:, 4].max().item())
            bar.advance(1, tokens=step_tokens, extra=f"loss {step_loss:.3f}")
            if budget.save_every > 0 and step % budget.save_every == 0 and step < total_steps:
                if accelerator.is_main_process:
                    _save_state(workdir, accelerator.unwrap_model(model), optimizer, step, budget.batch_size, signature, stats)
                accelerator.wait_for_everyone()

    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if budget.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
    if accelerator.is_main_process:
        tmp = workdir / (FINAL_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)  # the adapter for LoRA, the whole model for full fine-tuning
        _replace_dir(tmp, workdir / FINAL_DIR)
        stats |= record or {}  # the caller's extra fields, e.g. who computed it
        write_json(workdir / STATS_FILE, stats)
        shutil.rmtree(workdir / STATE_DIR, ignore_errors=True)
    accelerator.wait_for_everyone()
    return TrainResult(model.to(device), stats)
