"""What the trainer trains on, computed without a model: examples tokenised once (prompt
masked, response spans weighted, the end of turn with its own weight), batches of them, the
token-weighted loss, the seeded data order and the learning-rate schedule. torch is imported
where a tensor is made, so plugins (EWC's Fisher) and planning use these without it."""

from __future__ import annotations

import bisect
import functools
import inspect
import itertools
import math
import random
from dataclasses import dataclass

from harness.config.settings import Budget
from harness.errors import UserError
from harness.model.prompts import render_chat, turn_end_tokens
from harness.plugins.method import TrainingExample


@dataclass
class TokenisedExample:
    input_ids: list[int]
    weights: list[float]  # loss weight of predicting each token; 0 for the prompt
    kinds: list[str | None]  # the segment kind of each response token, None for the prompt
    extra: dict | None = None  # what an on-policy method attached to a sampled sequence (its token_loss reads it)

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


def collate(items: list[TokenisedExample], pad_id: int) -> dict:
    """Right-padded input_ids, attention_mask and weights (0 on padding), as tensors."""
    import torch

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


def weighted_nll(logits, input_ids, weights) -> tuple:
    """(Σ w·nll, Σ w) over predicted tokens; token t is predicted from position t-1.

    The loss of a batch is their ratio: a token-level weighted mean, so with all weights 1
    it is the ordinary causal-LM loss over the response.
    """
    import torch

    logits = logits.float()
    batch, width, vocab = logits.shape
    # the last position predicts nothing: its target is ignored (a zero loss and gradient) rather
    # than its logits cut off, which would copy the [batch, width - 1, vocab] rest, and zero-fill
    # and copy it again in the backward pass (per row the same log-softmax: bit for bit the same)
    targets = torch.nn.functional.pad(input_ids[:, 1:], (0, 1), value=-100)
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, vocab), targets.reshape(-1), reduction="none", ignore_index=-100
    ).view(batch, width)[:, :-1]
    w = weights[:, 1:].to(nll.dtype)
    return (w * nll).sum(), w.sum()


def weighted_token_loss(token_loss, model, batch: dict, logits, start: int) -> tuple:
    """(Σ w·loss, Σ w) with a method's per-token loss in place of the NLL (``Method.token_loss``):
    ``logits`` begin at position ``start``, the loss covers the tokens after it."""
    per_token = token_loss(model, {**batch, "start": start}, logits)
    w = batch["weights"][:, start + 1 :].to(per_token.dtype)
    return (w * per_token).sum(), w.sum()


def first_scored(weights) -> int:
    """The last position before any token of the micro-batch carries loss (logits before
    it predict nothing that counts)."""
    scored = (weights[:, 1:] > 0).any(dim=0).nonzero()
    return max(int(scored[0]) if len(scored) else 0, 0)


def accepts_logits_to_keep(model) -> bool:
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


def steps_for_tokens(items: list[TokenisedExample], budget: Budget, seed: int) -> int:
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
