"""RaDis: the original model explains the reference translation, and the model is trained
on the reference followed by that rationale (Wu et al., ACL Findings 2025).

The reference, then a separator, is put into the assistant turn as a prefix; the frozen
original model's continuation is the rationale. The target is y ⊕ separator ⊕ r, with
weight λ on the rationale tokens (the separator counts as rationale). The end-of-turn token
after the rationale has its own weight (``end_of_turn_weight``, default 1 like the
translation's): when it took λ, as until issue 30, λ also scaled how strongly the model
learns to stop, and λ 0 never learnt to stop after the translation at all.

Token consistency: the rationale is generated from exactly the ids the trainer puts before
it, the prompt's and the reference-plus-separator's tokenised on its own
(``harness.model.prompts.request_ids``), and the trainer puts in the generated tokens themselves.
Tokenising the reference and the separator-plus-rationale apart, as this method first did,
gave SmolLM2 "\n" "\n" where generation had seen its single "\n\n" token, and gives
SentencePiece tokenisers a stray "▁" before the rationale.

The separator is a choice the paper leaves open. The default blank line matters twice:
SmolLM2-135M-Instruct ended its turn right after 14 of 16 ALMA de-en references without
it (two continued the sentence itself), while with it all 16 went on to remarks about the
translation; and the default extraction rule (text before the first blank line) then cuts
exactly the translation from a RaDis-trained model's output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from harness.api import (
    Decoding,
    Method,
    MethodContext,
    Request,
    Segment,
    TrainingExample,
    UserError,
    generation_limit,
    translation_prompt,
    user_turn,
)

CUTOFF_RULES = ("keep", "no_end", "drop")
CUTOFF_DEFAULT = "no_end"


@dataclass
class RaDisOptions:
    rationale_weight: float = field(default=1.0, metadata={"help": "Loss weight λ of rationale tokens (reference tokens weigh 1).", "min": 0})
    end_of_turn_weight: float = field(default=1.0, metadata={"help": "Loss weight of the end-of-turn token after a rationale (default 1, the "
                                                             "translation's), so λ scales the rationale's tokens only, not how strongly "
                                                             "the model learns to stop.", "min": 0})
    rationale_fraction: float = field(default=1.0, metadata={"help": "Share of training pairs (seeded draw) that get a rationale; the rest train on the reference only.",
                                                               "min": 0, "max": 1})
    separator: str = field(default="\n\n", metadata={"help": "Text between the reference and the rationale (part of the generation prefix and of the rationale span)."})
    max_new_tokens: int = generation_limit("Longest rationale, in tokens.", default=256, run_default=False)
    do_sample: bool = field(default=False, metadata={"help": "Sample rationales instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with do_sample).", "above": 0})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (with do_sample).", "above": 0, "max": 1})
    min_rationale_words: int = field(default=0, metadata={"help": "Reject rationales with fewer words (0 = off).", "min": 0})
    max_repetition: float = field(default=1.0, metadata={"help": "Reject rationales whose share of repeated word 4-grams exceeds this (1.0 = off).",
                                                           "min": 0, "max": 1})
    cutoff: str = field(default=CUTOFF_DEFAULT, metadata={"help": "A rationale cut at max_new_tokens: 'keep' (with the end-of-turn "
                                                          "token, teaching a stop mid-sentence), 'no_end' (kept, no end-of-turn "
                                                          "token) or 'drop' (train on the reference alone)."})


def repetition_share(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0 for texts shorter than n words)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


class RaDis(Method):
    name = "radis"
    description = "Rationale distillation: train on the reference followed by the original model's own explanation of it."
    citation = "Wu et al., Boosting LLM Translation Skills without General Ability Loss via Rationale Distillation, ACL Findings 2025 (arXiv 2410.13944)"
    Options = RaDisOptions
    generation_in_target = "appended"

    def options_before_versions(self) -> dict | None:
        # until issue 30 the end of turn after a rationale took the rationale's weight λ
        out = self.options_dict()
        return out if out.pop("end_of_turn_weight") == self.options.rationale_weight else None

    def check(self) -> None:
        o = self.options  # the numbers' ranges are declared on the options
        if o.cutoff not in CUTOFF_RULES:
            raise UserError(f"radis.cutoff '{o.cutoff}' is unknown; use one of {', '.join(CUTOFF_RULES)}.")

    def _rejects(self, rationale: str) -> bool:
        o = self.options
        if o.min_rationale_words and len(rationale.split()) < o.min_rationale_words:
            return True
        return repetition_share(rationale) > o.max_repetition

    def _chosen(self, ctx: MethodContext) -> list[int]:
        """The pairs that get a rationale: a seeded draw of ``rationale_fraction`` of them."""
        n = len(ctx.pairs)
        return sorted(random.Random(ctx.seed).sample(range(n), round(self.options.rationale_fraction * n)))

    def _decoding(self, ctx: MethodContext) -> Decoding:
        o = self.options
        return Decoding(max_new_tokens=o.max_new_tokens, do_sample=o.do_sample, temperature=o.temperature, top_p=o.top_p, seed=ctx.seed)

    def original_requests(self, ctx: MethodContext) -> list[tuple[Request, Decoding]]:
        decoding = self._decoding(ctx)
        return [(Request(user_turn(translation_prompt(ctx.pairs[i])), assistant_prefix=ctx.pairs[i].reference + self.options.separator),
                 decoding) for i in self._chosen(ctx)]

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        o = self.options
        chosen = self._chosen(ctx)
        requests = self.original_requests(ctx)
        outputs = ctx.original.generate_many(requests, label="radis: rationales")
        kept = {i: out for i, out in zip(chosen, outputs) if out.text.strip() and not self._rejects(out.text)}
        cut = {i for i, out in kept.items() if not out.finished}
        examples = []
        for i, pair in enumerate(ctx.pairs):
            turn = user_turn(translation_prompt(pair))
            out = kept.get(i)
            if out is None or (i in cut and o.cutoff == "drop"):
                examples.append(TrainingExample(turn, [Segment(pair.reference, 1.0, "target")]))
                continue
            # the reference and separator are the generation's prefix; the rationale is its exact tokens
            response = [Segment(pair.reference, 1.0, "target"), Segment(o.separator, o.rationale_weight, "rationale"),
                        Segment(out.text, o.rationale_weight, "rationale", ids=out.token_ids)]
            examples.append(TrainingExample(turn, response, end_of_turn=not (i in cut and o.cutoff == "no_end"),
                                            end_weight=o.end_of_turn_weight))

        trained = [out.text for i, out in kept.items() if not (i in cut and o.cutoff == "drop")]
        ctx.stats.update(
            decoding=self._decoding(ctx).key(),
            separator=o.separator,
            cutoff=o.cutoff,
            rationales_generated=len(outputs),
            rationales_kept=len(trained),
            rationales_cut_at_limit=len(cut),
            mean_rationale_words=sum(len(r.split()) for r in trained) / len(trained) if trained else 0.0,
            finished_share=sum(out.finished for out in outputs) / len(outputs) if outputs else 0.0,
        )
        return examples
