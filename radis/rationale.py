"""RaDis: the original model explains the reference translation, and the model is trained
on the reference followed by that rationale (Wu et al., ACL Findings 2025).

The reference, then a separator, is put into the assistant turn as a prefix; the frozen
original model's continuation is the rationale. The target is y ⊕ separator ⊕ r, with
weight λ on the rationale tokens (the separator counts as rationale).

The separator is a choice the paper leaves open. The default blank line matters twice:
SmolLM2-135M-Instruct ended its turn right after 14 of 16 ALMA de-en references without
it (two continued the sentence itself), while with it all 16 went on to remarks about the
translation; and the default extraction rule (text before the first blank line) then cuts
exactly the translation from a RaDis-trained model's output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from harness.errors import UserError
from harness.generation import Decoding, Request
from harness.methods import Method, MethodContext, Segment, TrainingExample
from harness.prompts import translation_prompt, user_turn
from harness.registry import register_method


@dataclass
class RaDisOptions:
    rationale_weight: float = field(default=1.0, metadata={"help": "Loss weight λ of rationale tokens (reference tokens weigh 1)."})
    rationale_fraction: float = field(default=1.0, metadata={"help": "Share of training pairs (seeded draw) that get a rationale; the rest train on the reference only."})
    separator: str = field(default="\n\n", metadata={"help": "Text between the reference and the rationale (part of the generation prefix and of the rationale span)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest rationale, in tokens."})
    do_sample: bool = field(default=False, metadata={"help": "Sample rationales instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with do_sample)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (with do_sample)."})
    min_rationale_words: int = field(default=0, metadata={"help": "Reject rationales with fewer words (0 = off)."})
    max_repetition: float = field(default=1.0, metadata={"help": "Reject rationales whose share of repeated word 4-grams exceeds this (1.0 = off)."})


def repetition_share(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0 for texts shorter than n words)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


@register_method
class RaDis(Method):
    name = "radis"
    description = "Rationale distillation: train on the reference followed by the original model's own explanation of it."
    Options = RaDisOptions

    def _check(self) -> None:
        o = self.options
        if not 0.0 <= o.rationale_fraction <= 1.0:
            raise UserError(f"radis.rationale_fraction must be between 0 and 1, got {o.rationale_fraction}.")
        if o.rationale_weight < 0:
            raise UserError(f"radis.rationale_weight must be 0 or more, got {o.rationale_weight}.")
        if o.max_new_tokens <= 0:
            raise UserError(f"radis.max_new_tokens must be positive, got {o.max_new_tokens}.")

    def _rejects(self, rationale: str) -> bool:
        o = self.options
        if o.min_rationale_words and len(rationale.split()) < o.min_rationale_words:
            return True
        return repetition_share(rationale) > o.max_repetition

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        self._check()
        o = self.options
        messages = [user_turn(translation_prompt(p)) for p in ctx.pairs]
        chosen = sorted(random.Random(ctx.seed).sample(range(len(ctx.pairs)), round(o.rationale_fraction * len(ctx.pairs))))
        decoding = Decoding(max_new_tokens=o.max_new_tokens, do_sample=o.do_sample, temperature=o.temperature, top_p=o.top_p, seed=ctx.seed)
        requests = [Request(messages[i], assistant_prefix=ctx.pairs[i].reference + o.separator) for i in chosen]
        outputs = ctx.original.generate(requests, decoding, label="radis: rationales")
        rationale_of = {}
        for i, output in zip(chosen, outputs):
            if output.text.strip() and not self._rejects(output.text):
                rationale_of[i] = output.text

        examples = []
        for i, (pair, turn) in enumerate(zip(ctx.pairs, messages)):
            response = [Segment(pair.reference, 1.0, "target")]
            if i in rationale_of:
                response.append(Segment(o.separator + rationale_of[i], o.rationale_weight, "rationale"))
            examples.append(TrainingExample(turn, response))

        kept = list(rationale_of.values())
        ctx.stats.update(
            decoding=decoding.key(),
            separator=o.separator,
            rationales_generated=len(outputs),
            rationales_kept=len(kept),
            mean_rationale_words=sum(len(r.split()) for r in kept) / len(kept) if kept else 0.0,
            finished_share=sum(out.finished for out in outputs) / len(outputs) if outputs else 0.0,
        )
        return examples
