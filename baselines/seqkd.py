"""Self sequence-level KD: the original model translates each training source, and the
model is trained on its own translations instead of the references."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import UserError
from harness.generation import Decoding, Request
from harness.methods import Method, MethodContext, Segment, TrainingExample
from harness.prompts import EXTRACTION_RULES, extract_translation, translation_prompt, user_turn


@dataclass
class SeqKDOptions:
    max_new_tokens: int = field(default=256, metadata={"help": "Generation limit of the original model's translations (greedy)."})
    extraction: str = field(default="first_paragraph", metadata={"help": "How the translation is cut from the output: first_paragraph, first_line or full."})


class SeqKD(Method):
    name = "seqkd"
    description = "Self sequence-level KD: train on the original model's own greedy translations."
    citation = "Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016 (self-distillation: the original is the teacher)"
    Options = SeqKDOptions
    generation_in_target = "replaces"

    def check(self) -> None:
        if self.options.extraction not in EXTRACTION_RULES:
            raise UserError(f"seqkd.extraction '{self.options.extraction}' is unknown; use one of {', '.join(EXTRACTION_RULES)}.")
        if self.options.max_new_tokens <= 0:
            raise UserError(f"seqkd.max_new_tokens must be positive, got {self.options.max_new_tokens}.")

    def original_requests(self, ctx: MethodContext) -> list[tuple[Request, Decoding]]:
        decoding = Decoding(max_new_tokens=self.options.max_new_tokens)
        return [(Request(user_turn(translation_prompt(p))), decoding) for p in ctx.pairs]

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        messages = [user_turn(translation_prompt(p)) for p in ctx.pairs]
        decoding = Decoding(max_new_tokens=self.options.max_new_tokens)
        outputs = ctx.original.generate_many(self.original_requests(ctx), label="seqkd: self-translations")
        examples, fallbacks = [], 0
        for pair, turn, output in zip(ctx.pairs, messages, outputs):
            target = extract_translation(output.text, self.options.extraction)
            if not target:
                target, fallbacks = pair.reference, fallbacks + 1
            examples.append(TrainingExample(turn, [Segment(target)]))
        ctx.stats.update(decoding=decoding.key(), empty_outputs_replaced_by_reference=fallbacks)
        return examples
