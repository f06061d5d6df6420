"""SDFT (Yang et al. 2024, "Self-Distillation Bridges Distribution Gap in Language Model
Fine-Tuning"): the original model rewrites each reference in its own words, and the model
is trained on the rewrites. Not the on-policy SDFT of Shenfeld et al. (TRL's SDFTTrainer).

The rewrite prompt is sail-sg/sdft's ``alpaca_distill_using`` template, sent as one user
turn so it works with any chat template. Rewrites are rejected (the reference is kept) as
in its ``eval/gen_distilled_data.py``, plus a recorded chrF floor as the translation check.
The rewrites are sampled as the reference code samples them (it passes no decoding flags, so
LLaMA-Factory's defaults apply: temperature 0.95, top-p 0.7, top-k 50), seeded by the
training seed; ``do_sample: false`` gives the greedy rewrites of radis-bench before issue 30.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sacrebleu.metrics import CHRF

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

DISTILL_PROMPT = (
    "Below are an instruction that describes a task along with a reference answer. "
    "Using the reference answer as a guide, write your own response.\n\n"
    "### Instruction:\n{instruction}\n\n### Reference Answer:\n{reference}\n\n### Response:\n"
)
# sail-sg/sdft rejects rewrites that talk about the reference or about themselves
REJECTED_PHRASES = ("reference answer", "your response", "my response", "your own response", "now it's your turn")


@dataclass
class SDFTOptions:
    chrf_floor: float = field(default=50.0, metadata={"help": "Keep a rewrite only if its chrF (0-100) against the reference reaches this.", "min": 0, "max": 100})
    max_new_tokens: int = generation_limit("Generation limit of the rewrites.", default=256, run_default=False)
    extraction: str = field(default="first_paragraph", metadata={"help": "How the translation is cut from a rewrite: first_paragraph, first_line or full."})
    # sail-sg/sdft generates its rewrites with LLaMA-Factory's default decoding (GeneratingArguments:
    # do_sample, temperature 0.95, top-p 0.7, top-k 50); seeded by the training seed here
    do_sample: bool = field(default=True, metadata={"help": "Sample the rewrites (the reference code's decoding); false: greedy."})
    temperature: float = field(default=0.95, metadata={"help": "Sampling temperature (with do_sample).", "above": 0})
    top_p: float = field(default=0.7, metadata={"help": "Nucleus sampling mass (with do_sample).", "above": 0, "max": 1})
    top_k: int = field(default=50, metadata={"help": "Top-k filter (with do_sample; 0 = off).", "min": 0, "below": "vocab_size"})


def mentions_reference(text: str) -> bool:
    lowered = text.lower()
    return any(phrase in lowered for phrase in REJECTED_PHRASES) or lowered.lstrip().startswith("your turn")


class SDFT(Method):
    name = "sdft"
    description = ("Self-distillation fine-tuning (Yang et al. 2024), off-policy: train on the original model's rewrites of the "
                   "references, made before training (not `opsd`, Shenfeld et al.'s on-policy self-distillation).")
    citation = "Yang et al., Self-Distillation Bridges Distribution Gap in Language Model Fine-Tuning, ACL 2024 (arXiv 2402.13669)"
    Options = SDFTOptions
    generation_in_target = "replaces"

    def options_before_versions(self) -> dict | None:
        # until issue 30 the rewrites were greedy and these four options did not exist
        out = self.options_dict()
        for name in ("do_sample", "temperature", "top_p", "top_k"):
            out.pop(name)
        return None if self.options.do_sample else out

    def decoding(self, ctx: MethodContext) -> Decoding:
        o = self.options
        return Decoding(max_new_tokens=o.max_new_tokens, do_sample=o.do_sample, temperature=o.temperature, top_p=o.top_p,
                        top_k=o.top_k, seed=ctx.seed)

    def check(self) -> None:
        o = self.options  # the numbers' ranges are declared on the options
        if o.extraction not in EXTRACTION_RULES:
            raise UserError(f"sdft.extraction '{o.extraction}' is unknown; use one of {', '.join(EXTRACTION_RULES)}.")

    def original_requests(self, ctx: MethodContext) -> list[tuple[Request, Decoding]]:
        decoding = self.decoding(ctx)
        return [(Request(user_turn(DISTILL_PROMPT.format(instruction=translation_prompt(pair), reference=pair.reference))), decoding)
                for pair in ctx.pairs]

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        o = self.options
        prompts = [translation_prompt(p) for p in ctx.pairs]
        decoding = self.decoding(ctx)
        outputs = ctx.original.generate_many(self.original_requests(ctx), label="sdft: rewrites")
        chrf = CHRF()
        examples, by_phrase, by_chrf, kept_scores = [], 0, 0, []
        for pair, prompt, output in zip(ctx.pairs, prompts, outputs):
            target = pair.reference
            rewrite = extract_translation(output.text, o.extraction)
            score = chrf.sentence_score(rewrite, [pair.reference]).score if rewrite else 0.0
            if mentions_reference(output.text):
                by_phrase += 1
            elif score < o.chrf_floor:
                by_chrf += 1
            else:
                target = rewrite
                kept_scores.append(score)
            examples.append(TrainingExample(user_turn(prompt), [Segment(target)]))
        ctx.stats.update(
            decoding=decoding.key(),
            chrf_floor=o.chrf_floor,
            rewrites_kept=len(kept_scores),
            kept_share=len(kept_scores) / len(outputs) if outputs else 0.0,
            rejected_by_phrase=by_phrase,
            rejected_by_chrf=by_chrf,
            mean_kept_chrf=sum(kept_scores) / len(kept_scores) if kept_scores else None,
        )
        return examples
