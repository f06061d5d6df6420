"""Vanilla SFT: train on (translation prompt -> reference)."""

from __future__ import annotations

from harness.methods import Method, MethodContext, Segment, TrainingExample
from harness.prompts import translation_prompt, user_turn
from harness.registry import register_method


@register_method
class Vanilla(Method):
    name = "vanilla"
    description = "Supervised fine-tuning on the reference translations."

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        return [TrainingExample(user_turn(translation_prompt(p)), [Segment(p.reference)]) for p in ctx.pairs]
