"""Retention: how far the evaluated model has moved from the original on general prompts,
with no judge, at any model scale.

Definition. Take a seeded sample (``--eval-size``, ``--data-seed``) of a general
instruction set (option ``instruction_set``, default AlpacaEval). The ORIGINAL model
answers each instruction greedily (``max_new_tokens``, cached). Each answer, as the token
ids the original generated, is teacher-forced in the chat template through the evaluated
model and through the original. The scored tokens are the answer's tokens plus the
end-of-turn token when the answer finished (an answer cut at the limit has none; one left
with no token at all is left out). Per item:

- ``nll``: mean negative log-likelihood of the scored tokens under the evaluated model;
- ``nll_original``: the same under the original;
- ``delta_nll`` = ``nll`` - ``nll_original``, and ``abs_delta_nll`` = its absolute value;
- ``kl``: mean over the scored positions of the full-vocabulary
  KL(original || evaluated) between the two models' next-token distributions;
- ``kl_stop`` and ``kl_content``: its two parts. With p, q the two distributions at a
  position and S the tokens that end a turn, KL(p||q) = KL_Bernoulli(p_S||q_S)
  + p_S KL(p|S || q|S) + (1 - p_S) KL(p' || q'), p' and q' renormalised without S. The
  first two terms are ``kl_stop`` (how differently the two models would stop here; the
  middle one is 0 when one token ends a turn), the last is ``kl_content`` (how differently
  they would go on, weighted by how likely the original goes on). They add up to ``kl``.

The evaluated model also answers the same instructions itself (same limit, greedy):
``finished`` is the share of its answers that end before the limit and ``length`` their
mean length in tokens; a model that learnt to stop early shows it here.

Each metric is the mean of its per-item values, with a bootstrap CI over items.

Ranking uses ``kl`` (lower is better). The NLL alone can reward the wrong thing: a model
trained on its own greedy text (RaDis rationales) sharpens towards its mode and can score
*below* the original's NLL (METHODS.md measured 0.672 against the original's 0.768),
which is a change, not retention. KL from the original is zero only for an unchanged
distribution and grows with any change, sharpening included. For the original model
itself every divergence is exactly 0.

Cost. The original's side is the same for every evaluated model: its final hidden states at
the scored positions are computed once per run and kept on disk (``OriginalHidden``); each
evaluation then runs only the evaluated model and applies the original's output layer (the
original's own evaluation reads its stored states: the same bits, so every divergence is 0).
The evaluated model's own answers cost one generation per instruction.

Version 2 (issue 30): scores the token ids the original generated (version 1 re-tokenised
their decoded text, which is another sequence where greedy decoding produced a
non-canonical split), and adds ``kl_stop``, ``kl_content``, ``finished`` and ``length``.

Version 3 (issue 36): the teacher-forced passes run as prompts are prefilled
(``harness.model.prefill.Prefill.hidden``): longest first, the shared chat-template start
once, passes of similar length (under 10% padding, at most ``batch_size`` sequences) instead
of ``batch_size`` sequences in request order padded to their longest (a third of the tokens
computed were padding on the published configuration). The scores move by rounding only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.api import (
    DataSet,
    Decoding,
    Instruction,
    ItemStats,
    MetricSpec,
    Output,
    Request,
    Suite,
    SuiteContext,
    SuiteResult,
    UserError,
    data_set,
    end_of_turn_ids,
    generation_limit,
    load_instructions,
    request_ids,
    sample,
    teacher_forced_states,
    turn_end_tokens,
    user_turn,
    warn,
    write_atomic,
)
from suites.alpaca_eval import ALPACA_EVAL


@dataclass
class RetentionOptions:
    instruction_set: str = field(
        default="alpaca_eval", metadata={"help": "General instruction set whose prompts the original model answers."}
    )
    max_new_tokens: int = generation_limit("Length limit of the original model's answers.", default=128, run_default=False)
    batch_size: int = field(default=8, metadata={"help": "Sequences per teacher-forced forward pass at most.", "above": 0})


@dataclass
class ScoredItem:
    nll: float
    nll_original: float
    kl: float
    kl_stop: float
    kl_content: float
    tokens: int


def teacher_forced_sequences(tokenizer, prompts: list[str], outputs: list[Output]) -> list[tuple[list[int], int]]:
    """(token ids, number of scored tokens at the end) for each prompt and answer: the
    prompt's ids as generation saw them (``request_ids``), then the answer's generated ids
    (its text re-tokenised only where an output carries none), then the end of turn when the
    answer finished."""
    end = turn_end_tokens(tokenizer)
    sequences = []
    for prompt, output in zip(prompts, outputs):
        context = request_ids(tokenizer, user_turn(prompt))
        answer = list(output.token_ids) if output.token_ids is not None else tokenizer(output.text, add_special_tokens=False)["input_ids"]
        answer += end if output.finished else []
        sequences.append((context + answer, len(answer)))
    return sequences


def divergences(log_p, log_q, stop_ids: list[int]) -> tuple:
    """Per position (rows of the [positions, vocabulary] log-probabilities of the original, p,
    and of the evaluated model, q): KL(p||q) and its stop and content parts (module docstring),
    which add up to it."""
    import torch

    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=log_p.device)
    pointwise = (log_p - log_q).mul_(log_p.exp())
    kl = pointwise.sum(-1)
    stop_part = pointwise.index_select(-1, stop).sum(-1)
    # log of the mass of the tokens that do not end the turn, under each model
    go_p, go_q = (x.index_fill(-1, stop, float("-inf")).logsumexp(-1) for x in (log_p, log_q))
    go_term = go_p.exp() * (go_p - go_q)
    kl_content = (kl - stop_part) - go_term
    kl_stop = stop_part + go_term
    return kl, kl_stop, kl_content


def _padded(batch: list[tuple[list[int], int]], pad_id: int, device):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    return input_ids.to(device), mask.to(device)


def scored_hidden(model, tokenizer, sequences: list[tuple[list[int], int]], most: int) -> list:
    """The model's final hidden states (its output layer's input) at each sequence's scored
    positions (position t predicts token t + 1), computed as prompts are prefilled
    (``Prefill.hidden``: the shared start once, passes of similar length, at most ``most``
    sequences each)."""
    return teacher_forced_states(model, tokenizer, sequences, most)


def _head_is_linear(model) -> bool:
    """Whether logits are the output layer applied to the decoder's last hidden states (Gemma-2
    soft-caps them, for one)."""
    config = getattr(model, "config", None)
    return getattr(config, "final_logit_softcapping", None) is None and hasattr(model, "get_decoder")


class OriginalHidden:
    """The original model's final hidden states at every scored position of the original's own
    answers, computed once per run and reused for every evaluated model: its next-token
    distributions are its output layer applied to them, one matrix product instead of a
    forward pass. Kept on disk in ``folder`` (hidden size x 4 bytes per scored position,
    e.g. 576 x 4 x ~96 = ~0.2 MB per answer for SmolLM2-135M) and read back one batch at a
    time, so memory stays bounded. The key covers the original model, the sequences and the
    passes they are computed in (``scored_hidden``; padding changes the last bits of a float)."""

    PASSES = "prefill"  # version 3: passes as prompts are prefilled (version 2: padded batches of batch_size)

    def __init__(self, folder: Path | None, fingerprint: str, sequences, batch_size: int):
        self.folder, self.sequences, self.batch_size = folder, sequences, batch_size
        blob = json.dumps([fingerprint, [list(s) for s in sequences], batch_size, self.PASSES])
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.rows: dict[int, Any] = {}

    def load(self, original_model_fn, tokenizer, todo: list[int]) -> None:
        import numpy as np
        import torch

        path = self.folder / f"original-hidden-{self.key}.npy" if self.folder else None
        index_path = path.with_suffix(".json") if path else None
        if path is not None and path.exists() and index_path.exists():
            try:  # arrays and JSON only (never Python objects); anything else is computed again
                found = np.load(path, mmap_mode="r", allow_pickle=False)
                offsets = json.loads(index_path.read_text(encoding="utf-8"))
                if found.ndim != 2 or not all(0 <= a <= b <= len(found) for a, b in offsets.values()):
                    raise ValueError("its rows and its index do not match")
                self.rows = {int(i): found[a:b] for i, (a, b) in offsets.items()}
                return
            except (OSError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:
                warn(f"{path} or its index cannot be read ({str(err).splitlines()[0][:120] or type(err).__name__}); "
                     "computing the original's hidden states again.")
        parts, offsets, at = [], {}, 0
        with torch.no_grad(), original_model_fn() as original:
            for i, h in zip(todo, scored_hidden(original, tokenizer, [self.sequences[i] for i in todo], self.batch_size)):
                parts.append(h.float().cpu().numpy())
                offsets[i] = (at, at + len(parts[-1]))
                at += len(parts[-1])
        stacked = np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)
        self.rows = {i: stacked[a:b] for i, (a, b) in offsets.items()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            with tmp.open("wb") as fh:
                np.save(fh, stacked)
            write_atomic(index_path, json.dumps(offsets))
            os.replace(tmp, path)


def _response_log_probs(model, batch: list[tuple[list[int], int]], pad_id: int):
    """Log-softmax at each scored position by a full forward pass (models whose logits are not
    their output layer of the last hidden states)."""
    import torch

    input_ids, mask = _padded(batch, pad_id, next(model.parameters()).device)
    logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
    return [torch.log_softmax(logits[row, len(ids) - scored - 1 : len(ids) - 1], dim=-1) for row, (ids, scored) in enumerate(batch)]


def score_answers(model, original_model_fn, tokenizer, sequences: list[tuple[list[int], int]], batch_size: int,
                  shared: Path | None = None, fingerprint: str = "original") -> list[ScoredItem | None]:
    """NLL under both models and KL(original || evaluated) with its stop and content parts
    for each teacher-forced answer; None for an answer with no tokens to score (empty and cut
    at the limit).

    The original's side comes from ``OriginalHidden`` (stored in ``shared``, the run's folder
    for this suite; in memory without one). Only one batch of full-vocabulary distributions is
    held at a time."""
    import numpy as np
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = end_of_turn_ids(tokenizer)
    scored: list[ScoredItem | None] = [None] * len(sequences)
    todo = [i for i, (_, n) in enumerate(sequences) if n > 0]
    with original_model_fn() as original:
        linear = _head_is_linear(original) and _head_is_linear(model)
        # the original evaluated (not a model whose adapter is off inside this block): its states are the stored ones
        itself = original is model and not hasattr(model, "disable_adapter")
    cache = OriginalHidden(shared, fingerprint, sequences, batch_size) if linear else None
    if cache is not None:
        cache.load(original_model_fn, tokenizer, todo)
    with torch.no_grad():
        # the evaluated model's states in the passes the original's were computed in (the original's own are stored)
        states = {} if cache is None or itself else dict(
            zip(todo, scored_hidden(model, tokenizer, [sequences[i] for i in todo], batch_size)))
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            batch = [sequences[i] for i in rows]
            if cache is not None:
                head = model.get_output_embeddings()
                with original_model_fn() as original:
                    reference_head = original.get_output_embeddings()
                    # np.array copies the read-only memory-mapped rows: torch cannot wrap them writable
                    reference = [torch.log_softmax(reference_head(torch.from_numpy(np.array(cache.rows[i])).to(
                                     head.weight.device, head.weight.dtype)).float(), dim=-1)
                                 for i in rows]
                evaluated = reference if itself else [torch.log_softmax(head(states.pop(i)).float(), dim=-1) for i in rows]
            else:
                with original_model_fn() as original:
                    reference = _response_log_probs(original, batch, pad_id)
                evaluated = _response_log_probs(model, batch, pad_id)
            for i, (ids, n), log_q, log_p in zip(rows, batch, evaluated, reference):
                targets = torch.tensor(ids[len(ids) - n :], device=log_q.device)
                log_p = log_p.to(log_q.device)
                kl, kl_stop, kl_content = divergences(log_p, log_q, stop_ids)
                scored[i] = ScoredItem(
                    nll=-log_q.gather(1, targets[:, None]).mean().item(),
                    nll_original=-log_p.gather(1, targets[:, None]).mean().item(),
                    kl=kl.mean().item(), kl_stop=kl_stop.mean().item(), kl_content=kl_content.mean().item(),
                    tokens=len(targets),
                )
    return scored


class DivergenceSuite(Suite):
    """How far the evaluated model has moved from the original on the original's own answers
    to a set of prompts (``prompts``), and how the evaluated model answers them itself."""

    Options = RetentionOptions
    compares_with_original = True
    version = 3
    note = "KL(original || evaluated) per answer token, on the original's greedy answers"

    def metrics(self) -> list[MetricSpec]:
        return [
            MetricSpec("kl", "KL(original || fine-tuned), nats/token", False, main=True, margin=0.01),
            MetricSpec("kl_stop", "the part of the KL in whether to end the turn, nats/token", False, shown=True, margin=0.01),
            MetricSpec("kl_content", "the part of the KL in what comes next when not ending, nats/token", False, shown=True,
                       margin=0.01),
            MetricSpec("finished", "share of the model's own answers that end before the limit", None, shown=True),
            MetricSpec("length", "mean length of the model's own answers, tokens", None, shown=True),
            MetricSpec("delta_nll", "NLL change of the original's answers, nats/token", None, shown=True, margin=0.01),
            MetricSpec("abs_delta_nll", "|NLL change|, nats/token", False, margin=0.01),
            MetricSpec("nll", "NLL of the original's answers, nats/token", None),
            MetricSpec("nll_original", "NLL of the original's answers under the original, nats/token", None),
        ]

    def prompts(self, ctx: SuiteContext) -> list[tuple[str, str]]:
        """(item id, prompt) of every scored item."""
        raise NotImplementedError

    def decoding(self) -> Decoding:
        return Decoding(max_new_tokens=self.options.max_new_tokens)

    def original_requests(self, ctx: SuiteContext) -> list[tuple[Request, Decoding]]:
        return [(Request(user_turn(p)), self.decoding()) for _, p in self.prompts(ctx)]

    def requests(self, ctx: SuiteContext) -> list[tuple[Request, Decoding]]:
        return self.original_requests(ctx)  # the evaluated model answers the same prompts

    def item_stats(self, outputs: list[dict]) -> dict[str, ItemStats]:
        scored = [r for r in outputs if "kl" in r]
        ids = [r["id"] for r in scored]
        stats = {name: ItemStats.mean(ids, [r[name] for r in scored])
                 for name in ("kl", "kl_stop", "kl_content", "nll", "delta_nll")}
        stats["abs_delta_nll"] = ItemStats.mean(ids, [abs(r["delta_nll"]) for r in scored])
        own = [r for r in outputs if "own_finished" in r]
        stats["finished"] = ItemStats.mean([r["id"] for r in own], [float(r["own_finished"]) for r in own])
        stats["length"] = ItemStats.mean([r["id"] for r in own], [r["own_tokens"] for r in own])
        return stats

    def evaluate(self, ctx: SuiteContext) -> SuiteResult:
        opts = self.options
        items = self.prompts(ctx)
        prompts = [p for _, p in items]
        requests = [Request(user_turn(p)) for p in prompts]
        # the ids the original generated are scored: an older cache row without them is generated again
        answers = ctx.original_generator.generate(requests, self.decoding(), label=f"{self.name} answers [original]",
                                                  require_ids=True)
        own = ctx.generator.generate(requests, self.decoding(), label=f"{self.name} answers [{ctx.label}]")
        sequences = teacher_forced_sequences(ctx.tokenizer, prompts, answers)
        scores = score_answers(ctx.model, ctx.original_model, ctx.tokenizer, sequences, opts.batch_size, ctx.shared_dir,
                               ctx.original_generator.fingerprint)

        kept = [s for s in scores if s is not None]
        result = SuiteResult()
        kl = result.add_mean("kl", [s.kl for s in kept], main=True, higher_is_better=False)
        kl.note = self.note
        result.add_mean("kl_stop", [s.kl_stop for s in kept], higher_is_better=False)
        result.add_mean("kl_content", [s.kl_content for s in kept], higher_is_better=False)
        result.add_mean("finished", [float(o.finished) for o in own], higher_is_better=None)
        result.add_mean("length", [o.new_tokens for o in own], higher_is_better=None)
        result.add_mean("nll", [s.nll for s in kept], higher_is_better=None)
        result.add_mean("nll_original", [s.nll_original for s in kept], higher_is_better=None)
        delta = result.add_mean("delta_nll", [s.nll - s.nll_original for s in kept], higher_is_better=None)
        delta.note = "below 0 is sharpening towards the original's own answers, not better retention"
        result.add_mean("abs_delta_nll", [abs(s.nll - s.nll_original) for s in kept], higher_is_better=False)
        for (item_id, p), a, mine, s in zip(items, answers, own, scores):
            row = {"id": item_id, "prompt": p, "output": a.text, "finished": a.finished,
                   "own_output": mine.text, "own_finished": mine.finished, "own_tokens": mine.new_tokens}
            if s is not None:
                row.update(tokens=s.tokens, nll=s.nll, nll_original=s.nll_original, delta_nll=s.nll - s.nll_original,
                           kl=s.kl, kl_stop=s.kl_stop, kl_content=s.kl_content)
            result.outputs.append(row)
        return result


class RetentionSuite(DivergenceSuite):
    name = "retention"
    description = ("Judge-free distance from the original on its own answers to general instructions: KL (main, lower is "
                   "better) split into stopping and content, NLL change, and the model's own finished share and length.")
    data_sets = (ALPACA_EVAL,)

    def uses_data(self) -> list[DataSet]:
        return [data_set(self.options.instruction_set)]

    def check(self) -> list[str]:
        spec = self.uses_data()[0]
        if (spec.loader or load_instructions) is not load_instructions:
            raise UserError(f"retention.instruction_set '{spec.name}' is not a set of instructions; use e.g. alpaca_eval or alpaca.")
        return []

    def prompts(self, ctx: SuiteContext) -> list[tuple[str, str]]:
        items: list[Instruction] = sample(ctx.data.general(self.uses_data()[0]), ctx.eval_size, ctx.data_seed)
        if not items:
            raise UserError(f"The {self.options.instruction_set} set in {ctx.data.label} is empty; give it at least one instruction.")
        return [(it.id, it.prompt) for it in items]
