"""Vanilla SFT: train on (translation prompt -> reference)."""

from __future__ import annotations

from harness.api import Method, MethodContext, Segment, TrainingExample, translation_prompt, user_turn


def reference_examples(ctx: MethodContext) -> list[TrainingExample]:
    """The plain fine-tuning data: each pair's translation prompt and its reference."""
    return [TrainingExample(user_turn(translation_prompt(p)), [Segment(p.reference)]) for p in ctx.pairs]


class Vanilla(Method):
    name = "vanilla"
    description = "Supervised fine-tuning on the reference translations."
    is_baseline = True

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        return reference_examples(ctx)
