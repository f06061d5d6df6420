"""S3FT, selective self-rehearsal (extension): the original model translates each training
source, as for ``seqkd``; where a judge finds its translation correct, that translation is
the target, otherwise the reference is.

Gupta et al., "Selective Self-to-Supervised Fine-Tuning for Generalization in Large
Language Models", NAACL Findings 2025 (arXiv 2409.04787). Training on the model's own
correct answers keeps it close to its own distribution where that costs nothing, and the
gold response teaches it the rest.

Where the harness differs: the paper judges free-form answers (exact match, or an LLM judge)
on reasoning, QA and code tasks, and for wrong answers also tries the model's own
paraphrase of the gold response before falling back to gold; here the task is translation,
the judge is a recorded similarity threshold against the reference (sentence chrF by
default, COMET when ``s3ft.comet_model`` names a checkpoint), the fallback is the reference
itself (``sdft`` covers rewrites of the reference), and training is one LoRA run under the
shared budget. With ``threshold`` 0 every usable self-translation is kept (seqkd's
targets); the threshold lies in the judges' 0-100 range (COMET's segment scores x100 stay
near it), since above it no self-translation would be kept and the method would silently
be vanilla.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from baselines.seqkd import check_self_translation_options, self_translation_requests, self_translations
from harness.api import (
    CometScorer,
    CometUnavailable,
    check_comet,
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

JUDGES = ("chrf", "comet")


@dataclass
class S3FTOptions:
    judge: str = field(default="chrf", metadata={"help": "What judges a self-translation against the reference: chrf (sentence chrF) or comet (needs comet_model)."})
    threshold: float = field(default=50.0, metadata={"help": "A self-translation scoring at least this (0-100) is the target; otherwise the reference is.",
                                                        "min": 0, "max": 100})
    comet_model: str | None = field(default=None, metadata={"help": "COMET checkpoint (hub name or local path) for judge=comet."})
    comet_batch_size: int = field(default=8, metadata={"help": "Sentences per COMET forward pass (judge=comet).", "above": 0})
    max_new_tokens: int = generation_limit("Generation limit of the original model's translations (greedy).", default=256, run_default=False)
    extraction: str = field(default="first_paragraph", metadata={"help": "How the translation is cut from the output: first_paragraph, first_line or full."})


class S3FT(Method):
    name = "s3ft"
    description = "Extension (not in the paper): selective self-rehearsal: the original model's translation where a judge finds it correct, else the reference."
    citation = "Gupta et al., Selective Self-to-Supervised Fine-Tuning for Generalization in LLMs, NAACL Findings 2025 (arXiv 2409.04787)"
    extension = True
    Options = S3FTOptions
    generation_in_target = "replaces"

    def check(self) -> None:
        o = self.options
        if o.judge not in JUDGES:
            raise UserError(f"s3ft.judge '{o.judge}' is unknown; use one of {', '.join(JUDGES)}.")
        if o.judge == "comet" and not o.comet_model:
            raise UserError("s3ft.judge=comet needs s3ft.comet_model (a COMET checkpoint: hub name or local path); or use s3ft.judge=chrf.")
        if o.judge == "comet":
            check_comet(o.comet_model, "s3ft.comet_model")
        check_self_translation_options(self.name, o)

    def original_requests(self, ctx: MethodContext) -> list[tuple[Request, Decoding]]:
        return self_translation_requests(ctx, self.options.max_new_tokens)

    def scores(self, ctx: MethodContext, translations: list[str]) -> list[float]:
        """The judge's score (0-100) of each self-translation against its reference."""
        o = self.options
        if o.judge == "chrf":
            from sacrebleu.metrics import CHRF

            chrf = CHRF()
            return [chrf.sentence_score(t, [p.reference]).score if t else 0.0 for p, t in zip(ctx.pairs, translations)]
        try:
            scorer = CometScorer(o.comet_model, o.comet_batch_size)
            return scorer.score([(p.source, t, p.reference) for p, t in zip(ctx.pairs, translations)])
        except CometUnavailable as err:
            raise UserError(f"s3ft.judge=comet cannot use the COMET checkpoint '{o.comet_model}': {err}; "
                            "give a local checkpoint path in s3ft.comet_model or use s3ft.judge=chrf.") from None

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        o = self.options
        decoding = Decoding(max_new_tokens=o.max_new_tokens)
        translations = self_translations(self, ctx)
        scores = self.scores(ctx, translations)
        examples, kept, empty = [], [], 0
        for pair, translation, score in zip(ctx.pairs, translations, scores):
            if not translation:  # nothing to rehearse (seqkd falls back to the reference too)
                target, empty = pair.reference, empty + 1
            elif score >= o.threshold:
                target = translation
                kept.append(score)
            else:
                target = pair.reference
            examples.append(TrainingExample(user_turn(translation_prompt(pair)), [Segment(target)]))
        ctx.stats.update(
            decoding=decoding.key(),
            judge=o.judge if o.judge == "chrf" else f"comet:{o.comet_model}",
            threshold=o.threshold,
            self_targets=len(kept),
            self_target_share=len(kept) / len(examples) if examples else 0.0,
            empty_outputs_replaced_by_reference=empty,
            mean_judge_score=sum(scores) / len(scores) if scores else None,
            mean_kept_score=sum(kept) / len(kept) if kept else None,
        )
        return examples
