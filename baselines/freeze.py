"""Freeze, the remedy for "spurious forgetting" (extension): vanilla's data, but only the
layers from ``k`` up are trained; the bottom layers keep the original weights.

Zheng et al., "Spurious Forgetting in Continual Learning of Language Models", ICLR 2025
(arXiv 2501.13453): much of what looks like forgetting after fine-tuning is a loss of task
alignment rather than of knowledge, and it is driven by updates of the bottom layers;
freezing them while the upper layers learn the new task keeps the old alignment.

Where the harness differs: the paper freezes the bottom layers (and the embeddings) during
sequential full fine-tuning over several tasks; here there is one task and a LoRA adapter,
so the adapters of layers below ``k`` are frozen at their start (lora_B = 0: no delta) in
``prepare_model``. The budget is unchanged (same steps, batch and learning rate); the
trainer records the trainable parameter count (``trainable_params`` in the training
statistics). Parameters outside the numbered layers (e.g. embeddings under
lora.full_finetune) stay trainable. The default fraction (a quarter of the layers) is
this harness's choice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from baselines.vanilla import reference_examples
from harness.api import Method, MethodContext, TrainingExample, UserError

log = logging.getLogger("radis_bench")

_LAYER = re.compile(r"\.(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """The transformer layer a parameter or module belongs to: the first numbered part of
    its name (``model.layers.3.self_attn.q_proj`` -> 3), None outside the layers."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def layer_count(model, names: list[str]) -> int:
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None) if config is not None else None
    if isinstance(count, int) and count > 0:
        return count
    found = [i for i in (layer_index(n) for n in names) if i is not None]
    if not found:
        raise UserError("This model's parameters carry no layer numbers (like model.layers.3....); freeze cannot tell its bottom layers.")
    return max(found) + 1


@dataclass
class FreezeOptions:
    k: int | None = field(default=None, metadata={"help": "Train only layers k and above (0-based); unset: from fraction.",
                                                       "min": 0, "below": "num_hidden_layers"})
    fraction: float = field(default=0.25, metadata={"help": "Share of the layers, from the bottom, kept frozen when k is unset.", "min": 0, "below": 1})


class Freeze(Method):
    name = "freeze"
    description = "Extension (not in the paper): vanilla SFT with the bottom layers frozen (adapters only on layers >= k)."
    citation = "Zheng et al., Spurious Forgetting in Continual Learning of Language Models, ICLR 2025 (arXiv 2501.13453)"
    extension = True
    Options = FreezeOptions

    def first_trained_layer(self, layers: int) -> int:
        o = self.options
        k = o.k if o.k is not None else int(o.fraction * layers)
        if k >= layers:
            raise UserError(f"freeze.k={k} leaves nothing to train: the model has {layers} layers (0 to {layers - 1}); choose a smaller k.")
        return k

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        ctx.stats.update(k=self.options.k, fraction=None if self.options.k is not None else self.options.fraction)
        return reference_examples(ctx)

    def prepare_model(self, model, tokenizer, seed: int) -> None:
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        layers = layer_count(model, [n for n, _ in trainable])
        k = self.first_trained_layer(layers)
        frozen = 0
        for name, param in trainable:
            index = layer_index(name)
            if index is not None and index < k:
                param.requires_grad_(False)
                frozen += param.numel()
        left = sum(p.numel() for _, p in trainable) - frozen
        self.frozen_layers, self.trainable_params = k, left
        log.info("freeze: layers 0-%d of %d frozen (%d parameters), %d trainable", k - 1, layers, frozen, left)
