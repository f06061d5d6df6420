"""Self sequence-level KD: the original model translates each training source, and the
model is trained on its own translations instead of the references."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.api import (
    EXTRACTION_RULES,
    Decoding,
    Method,
    MethodContext,
    Request,
    Segment,
    TrainingExample,
    UserError,
    extract_translation,
    generation_limit,
    translation_prompt,
    user_turn,
)


@dataclass
class SeqKDOptions:
    max_new_tokens: int = generation_limit("Generation limit of the original model's translations (greedy).", default=256, run_default=False)
    extraction: str = field(default="first_paragraph", metadata={"help": "How the translation is cut from the output: first_paragraph, first_line or full."})


class SeqKD(Method):
    name = "seqkd"
    description = "Self sequence-level KD: train on the original model's own greedy translations."
    citation = "Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016 (self-distillation: the original is the teacher)"
    Options = SeqKDOptions
    generation_in_target = "replaces"

    def check(self) -> None:
        check_self_translation_options(self.name, self.options)

    def original_requests(self, ctx: MethodContext) -> list[tuple[Request, Decoding]]:
        return self_translation_requests(ctx, self.options.max_new_tokens)

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        translations = self_translations(self, ctx)
        examples, fallbacks = [], 0
        for pair, target in zip(ctx.pairs, translations):
            if not target:
                target, fallbacks = pair.reference, fallbacks + 1
            examples.append(TrainingExample(user_turn(translation_prompt(pair)), [Segment(target)]))
        ctx.stats.update(decoding=Decoding(max_new_tokens=self.options.max_new_tokens).key(),
                         empty_outputs_replaced_by_reference=fallbacks)
        return examples


def check_self_translation_options(name: str, options) -> None:
    """The options every self-translating method has: ``max_new_tokens`` and ``extraction``."""
    if options.extraction not in EXTRACTION_RULES:
        raise UserError(f"{name}.extraction '{options.extraction}' is unknown; use one of {', '.join(EXTRACTION_RULES)}.")


def self_translation_requests(ctx: MethodContext, max_new_tokens: int) -> list[tuple[Request, Decoding]]:
    """The original model's greedy translation request for every training source."""
    decoding = Decoding(max_new_tokens=max_new_tokens)
    return [(Request(user_turn(translation_prompt(p))), decoding) for p in ctx.pairs]


def self_translations(method: Method, ctx: MethodContext) -> list[str]:
    """The original model's translation of every training source, cut by ``method.options.extraction``
    ("" where nothing is left)."""
    outputs = ctx.original.generate_many(method.original_requests(ctx), label=f"{method.name}: self-translations")
    return [extract_translation(out.text, method.options.extraction) for out in outputs]
