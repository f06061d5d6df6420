"""Half Fine-Tuning (extension): vanilla's data, but only a seeded random half of the
adapted modules is trained; the other half keeps the original weights.

Hui et al., "HFT: Half Fine-Tuning for Large Language Models" (arXiv 2404.18466): in each
transformer layer half of the self-attention and half of the feed-forward matrices are
updated and the rest frozen, so the frozen half keeps what the model knew while the other
half learns the new task.

Where the harness differs: the paper fine-tunes all weights and draws a new half at each
stage of continual learning; here there is one task and a LoRA adapter, so one draw, made
in ``prepare_model`` from the training seed: within every group of sibling modules (e.g.
``layers.3.self_attn``'s q/k/v/o projections, ``layers.3.mlp``'s gate/up/down) a random
``fraction`` of the adapted modules is trained (an odd group gets the extra module by a
seeded coin) and the rest keep their adapter at its start (lora_B = 0: no delta). Under
lora.full_finetune the units are the modules' own weights. Same budget as vanilla.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

from baselines.vanilla import reference_examples
from harness.api import Method, MethodContext, TrainingExample, UserError

log = logging.getLogger("radis_bench")


def unit_of(param_name: str) -> str:
    """The module a trainable parameter belongs to: the LoRA layer for
    ``...q_proj.lora_A.default.weight`` (``...q_proj``), the owning module otherwise
    (``...q_proj.weight`` -> ``...q_proj``, under full fine-tuning)."""
    parts = param_name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_"):
            return ".".join(parts[:i])
    return ".".join(parts[:-1]) or param_name


def choose_half(units: list[str], seed: int, fraction: float = 0.5) -> list[str]:
    """A seeded draw of ``fraction`` of the units within every group of siblings (same parent
    name); a fractional count is rounded up or down by a seeded coin."""
    groups: dict[str, list[str]] = {}
    for unit in sorted(set(units)):
        groups.setdefault(unit.rsplit(".", 1)[0] if "." in unit else "", []).append(unit)
    rng = random.Random(f"hft-{seed}")
    chosen = []
    for parent in sorted(groups):
        members = groups[parent]
        want = fraction * len(members)
        count = math.floor(want) + (1 if rng.random() < want - math.floor(want) else 0)
        chosen += rng.sample(members, count)
    return sorted(chosen)


@dataclass
class HFTOptions:
    fraction: float = field(default=0.5, metadata={"help": "Share of the adapted modules trained in each group of sibling modules (HFT: a half).",
                                                          "above": 0, "max": 1})


class HFT(Method):
    name = "hft"
    description = "Extension (not in the paper): Half Fine-Tuning: a seeded random half of the adapted modules is trained, the rest keep the original weights."
    citation = "Hui et al., HFT: Half Fine-Tuning for Large Language Models (arXiv 2404.18466)"
    extension = True
    Options = HFTOptions

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        ctx.stats["fraction"] = self.options.fraction
        return reference_examples(ctx)

    def prepare_model(self, model, tokenizer, seed: int) -> None:
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        units = sorted({unit_of(n) for n, _ in trainable})
        chosen = set(choose_half(units, seed, self.options.fraction))
        if not chosen:
            raise UserError(f"hft.fraction={self.options.fraction} trains none of the {len(units)} adapted modules; raise it.")
        for name, param in trainable:
            if unit_of(name) not in chosen:
                param.requires_grad_(False)
        self.trained_modules = sorted(chosen)
        left = sum(p.numel() for _, p in trainable if p.requires_grad)
        log.info("hft: %d of %d adapted modules trained (seed %d), %d trainable parameters", len(chosen), len(units), seed, left)
