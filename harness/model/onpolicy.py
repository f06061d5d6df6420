"""Training on the model's own samples: what an on-policy method (``Method.sample_step``) gets
each optimiser step, and the weights it may compare the current ones with.

Each step the trainer takes ``batch_size / samples_per_prompt`` of the method's examples in the
seeded data order and hands them to ``sample_step`` as a ``TrainingStep``. Its ``sample``
generates from the weights as they are at that step (the adapter applied, no merged copy),
through the Generator's own decoding (``harness.model.generation.Decoder``: prefill, KV cache,
continuous batching), without the generation cache (the weights change every step), seeded by
(training seed, step) so that a resumed training samples what the first run did. The method
returns ``batch_size`` sequences (``sequence``: the prompt masked, the sampled tokens weighted);
the trainer trains on them with the method's ``token_loss`` under the shared budget and records
the tokens generated (``generated_tokens``, ``generated_samples``, per step, ``sampling_s``).

``WeightSnapshot`` keeps a copy of the trainable weights: taken before the first step it is
the original model for every adapter kind (with PiSSA the base alone is not), and ``follow``
makes it an exponential moving average of the training.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.config.settings import check_on_policy_budget
from harness.errors import UserError
from harness.model.examples import TokenisedExample, step_indices
from harness.model.generation import Decoder
from harness.model.prompts import request_ids, turn_end_tokens
from harness.plugins.method import TrainingExample
from harness.plugins.requests import Decoding


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of a training step: a function of (training seed, step) only."""
    return int(hashlib.sha256(f"{seed}/{step}".encode()).hexdigest()[:8], 16)


@dataclass
class TrainingStep:
    """One optimiser step of an on-policy method: its prompts, the model as it is now and a sampler."""

    examples: list[TrainingExample]  # the step's examples (prompt and reference), in the seeded data order
    indices: list[int]  # their positions in the method's examples
    model: Any  # the model being trained, adapter applied
    tokenizer: Any
    step: int
    seed: int  # the step's sampling seed (``step_seed``)
    max_length: int  # budget.max_length: a sequence is cut there
    stats: dict[str, float] = field(default_factory=dict)  # the method's numbers for this step (kept per step)
    generated_tokens: int = 0
    generated_samples: int = 0

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The ids of a chat prompt up to the assistant turn, as the trainer tokenises prompts."""
        return request_ids(self.tokenizer, messages)

    def end_of_turn(self) -> list[int]:
        """The tokens that close an assistant turn (appended to a sample that finished)."""
        return turn_end_tokens(self.tokenizer)

    def sample(self, prompts: list[list[int]], decoding: Decoding) -> list[tuple[list[int], bool]]:
        """(token ids, finished) sampled for each prompt from the current weights (dropout off), seeded by
        the step; the end-of-turn token is not among the ids. New tokens are capped so that prompt and sample
        fit ``max_length``."""
        limits = [max(1, min(decoding.max_new_tokens, self.max_length - len(p))) for p in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            out = Decoder(self.model, self.tokenizer).sample(prompts, decoding, self.seed, limits)
        finally:
            self.model.train(was_training)
        self.generated_tokens += sum(len(ids) for ids, _ in out)
        self.generated_samples += len(out)
        return out

    def sequence(self, prompt: list[int], completion: list[int], weight: float, extra: dict | None = None,
                 kind: str = "sampled") -> TokenisedExample:
        """A sequence to train on: ``prompt`` (no loss), then ``completion`` with loss weight ``weight``
        per token, cut at ``max_length``; ``extra`` reaches ``token_loss`` as its row's ``batch["extras"]``."""
        ids = (list(prompt) + list(completion))[: self.max_length]
        weights = ([0.0] * len(prompt) + [float(weight)] * len(completion))[: self.max_length]
        kinds = ([None] * len(prompt) + [kind] * len(completion))[: self.max_length]
        return TokenisedExample(ids, weights, kinds, extra)


SampleStep = Callable[[TrainingStep], list[TokenisedExample]]


@dataclass
class OnPolicy:
    """An on-policy method's part of a training: its step (``Method.sample_step``), the examples it
    samples for and how many sequences it trains on per prompt."""

    sample_step: SampleStep
    examples: list[TrainingExample]
    tokenizer: Any
    per_prompt: int = 1

    def begin(self, world: int, stats: dict, label: str) -> dict:
        """The training's statistics with the on-policy counts (a resumed state keeps its own)."""
        if world > 1:
            raise UserError(f"{label}: a method that samples during training runs on one process; launch it without "
                            "accelerate's several processes.")
        return on_policy_stats() | stats

    def items(self, model, step: int, seed: int, budget, stats: dict) -> list[TokenisedExample]:
        """The sequences sampled for this step's examples (``sampled_items``)."""
        return sampled_items(self.sample_step, self.examples, model, self.tokenizer, step, seed, budget.batch_size,
                             self.per_prompt, budget.max_length, stats)


def start_on_policy(sample_step, examples, tokenizer, per_prompt: int, budget, label: str) -> OnPolicy | None:
    """The on-policy part of a training with its budget checked; None without ``sample_step``."""
    if sample_step is None:
        return None
    check_on_policy_budget(budget, per_prompt, label)
    return OnPolicy(sample_step, examples, tokenizer, per_prompt)


def on_policy_stats() -> dict:
    """The statistics an on-policy training adds to ``train_stats.json`` (and so to the manifest)."""
    return {"generated_tokens": 0, "generated_samples": 0, "generated_tokens_per_step": [], "sampling_s": 0.0,
            "step_stats": {}}


def sampled_items(sample_step: SampleStep, examples: list[TrainingExample], model, tokenizer, step: int, seed: int,
                  batch_size: int, per_prompt: int, max_length: int, stats: dict) -> list[TokenisedExample]:
    """The sequences one on-policy step trains on, with what was generated for them added to ``stats``."""
    indices = step_indices(step, batch_size // per_prompt, len(examples), seed)
    ctx = TrainingStep([examples[i] for i in indices], indices, model, tokenizer, step, step_seed(seed, step), max_length)
    started = time.time()
    items = sample_step(ctx)
    if len(items) != batch_size:
        raise ValueError(f"sample_step returned {len(items)} sequences for a step of {batch_size}")
    stats["sampling_s"] += time.time() - started
    stats["generated_tokens"] += ctx.generated_tokens
    stats["generated_samples"] += ctx.generated_samples
    stats["generated_tokens_per_step"].append(ctx.generated_tokens)
    for name, value in ctx.stats.items():
        stats["step_stats"].setdefault(name, []).append(value)
    return items


class WeightSnapshot:
    """A copy of a model's trainable weights, run in place of the current ones (``used_by``). (torch is
    imported where it is used: plugins import this through ``harness.api`` when they are listed.)

    Taken before the first step it is the original model, whatever the adapter kind; ``follow``
    moves it towards the current weights (an exponential moving average)."""

    def __init__(self, model):
        self.values = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def used_by(self, model):
        """``model`` with these weights, without gradients or dropout, until the block ends."""
        import torch

        params = dict(model.named_parameters())
        current, was_training = {}, model.training
        model.eval()
        try:
            with torch.no_grad():
                for name, value in self.values.items():
                    current[name] = params[name].data
                    params[name].data = value
                yield model
        finally:
            for name, data in current.items():
                params[name].data = data
            model.train(was_training)

    def follow(self, model, rate: float) -> None:
        """values ← (1 − rate)·values + rate·current weights."""
        import torch

        if rate <= 0:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.values.items():
                value.lerp_(params[name].detach().to(value.dtype), rate)
