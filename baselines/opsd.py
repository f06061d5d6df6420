"""On-policy self-distillation (extension): the model learns from its own samples, scored by
itself shown the reference.

Shenfeld, Damani, Hübotter, Agrawal, "Self-Distillation Enables Continual Learning", 2026
(arXiv 2601.19897; code idanshen/Self-Distillation; in newer TRL as ``trl.experimental.sdft``
SDFTTrainer). Not Yang et al.'s SDFT (``sdft`` here), which trains off-policy on the
original's rewrites made before training.

Every step the student (the current weights) samples one answer to each of the step's
translation prompts. The teacher is the same network with the demonstration in its prompt:
the translation prompt, then the reference (``teacher_template``, the paper's template without
"including the thinking process", which a translation has none of). Teacher and student read
the sampled tokens, each after its own prompt, and the loss is the divergence between their
next-token distributions at every sampled position, over the whole vocabulary, averaged over
each sample's tokens and then over the step's samples (the official code's and TRL's
normalisation). The teacher carries no gradient.

Choices where the sources differ (all options):
- ``alpha``: which divergence, as TRL's ``distillation_alpha``: 1 (default) the reverse
  KL(student ‖ teacher), the objective the paper states; 0 the forward KL(teacher ‖ student),
  the official code's default; between, the generalised Jensen-Shannon divergence with that
  weight (TRL's default is 0.5, on the student's top-100 tokens; here always the whole vocabulary);
- ``teacher_ema``: the teacher's weights. 0 (default): the original model, frozen (TRL's
  default teacher, "base"; with LoRA that is the model with the adapter off, but a snapshot of
  the starting weights is the original for every adapter kind, PiSSA and full fine-tuning
  included); r > 0: each step the teacher moves r of the way to the current weights (the
  official code: 0.01, every step); 1: the current weights.
Sampling: temperature 1, no top-p/top-k (TRL's defaults), at most ``max_new_tokens``; an answer
that ended is trained with its end-of-turn token. TRL's importance-sampling clip corrects for
samples older than the weights; here every step samples afresh, so it is 1 and left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from baselines.vanilla import reference_examples
from harness.api import (
    Decoding,
    Method,
    MethodContext,
    TrainingExample,
    TrainingStep,
    UserError,
    WeightSnapshot,
    generation_limit,
    user_turn,
)

TEMPLATE = "{prompt}\n\nThis is an example for a response to the question:\n{reference}\n\nNow answer with a response of your own."


@dataclass
class OPSDOptions:
    alpha: float = field(default=1.0, metadata={"help": "Divergence, as TRL's distillation_alpha: 1 reverse KL(student || teacher) "
                                                        "(the paper), 0 forward KL(teacher || student) (the official code), "
                                                        "between: generalised JSD.", "min": 0, "max": 1})
    teacher_ema: float = field(default=0.0, metadata={"help": "Teacher weights: 0 the frozen original, r > 0 an exponential moving "
                                                              "average moving r per step (official code 0.01), 1 the current weights.",
                                                      "min": 0, "max": 1})
    teacher_template: str = field(default=TEMPLATE, metadata={"help": "The teacher's user turn, from {prompt} (the translation prompt) "
                                                                      "and {reference}."})
    max_new_tokens: int = generation_limit("Longest sample, in tokens.", default=128, run_default=False)
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature.", "above": 0})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass.", "above": 0, "max": 1})
    top_k: int = field(default=0, metadata={"help": "Top-k filter of the sampling (0: none).", "min": 0})


def divergence(student_logp, teacher_logp, alpha: float):
    """Per-position divergence of two log-distributions [..., vocab] (TRL's distillation_alpha):
    alpha 0 KL(teacher ‖ student), 1 KL(student ‖ teacher), between α·KL(t ‖ m) + (1 − α)·KL(s ‖ m)
    with m = (1 − α)·s + α·t."""
    import torch

    def kl(p_log, q_log):  # KL(p ‖ q)
        return (p_log.exp() * (p_log - q_log)).sum(-1)

    if alpha == 0.0:
        return kl(teacher_logp, student_logp)
    if alpha == 1.0:
        return kl(student_logp, teacher_logp)
    mixture = torch.logsumexp(torch.stack([student_logp + math.log(1 - alpha), teacher_logp + math.log(alpha)]), 0)
    return alpha * kl(teacher_logp, mixture) + (1 - alpha) * kl(student_logp, mixture)


class OPSD(Method):
    name = "opsd"
    description = ("Extension (not in the paper): on-policy self-distillation — the model samples, and trains towards itself shown "
                   "the reference (Shenfeld et al. 2026; not `sdft`, Yang et al.'s off-policy rewrites).")
    citation = "Shenfeld, Damani, Hübotter, Agrawal, Self-Distillation Enables Continual Learning, 2026 (arXiv 2601.19897)"
    extension = True
    Options = OPSDOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._teacher: WeightSnapshot | None = None

    def check(self) -> None:
        try:
            self.options.teacher_template.format(prompt="", reference="")
        except (KeyError, IndexError, ValueError) as err:
            raise UserError(f"opsd.teacher_template may name only {{prompt}} and {{reference}}: {err!r}.") from None

    def decoding(self) -> Decoding:
        o = self.options
        return Decoding(max_new_tokens=o.max_new_tokens, do_sample=True, temperature=o.temperature, top_p=o.top_p, top_k=o.top_k)

    def teacher_messages(self, example: TrainingExample) -> list[dict]:
        prompt = example.messages[-1]["content"]
        return example.messages[:-1] + user_turn(self.options.teacher_template.format(prompt=prompt, reference=example.response_text))

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        o = self.options
        ctx.stats.update(decoding=self.decoding().key(), alpha=o.alpha, teacher_ema=o.teacher_ema, teacher_template=o.teacher_template)
        return reference_examples(ctx)

    def prepare_model(self, model, tokenizer, seed: int) -> None:
        self._teacher = WeightSnapshot(model)  # the starting weights: the original model

    def sample_step(self, step: TrainingStep) -> list:
        if self._teacher is None:
            raise UserError("opsd's teacher needs prepare_model (the starting weights) before training.")
        if step.step > 0:  # the teacher after the previous step's update
            self._teacher.follow(step.model, self.options.teacher_ema)
        prompts = [step.prompt_ids(ex.messages) for ex in step.examples]
        samples = step.sample(prompts, self.decoding())
        end = step.end_of_turn()
        sequences, lengths = [], []
        for example, prompt, (ids, finished) in zip(step.examples, prompts, samples):
            completion = (ids + end if finished else ids)[: max(step.max_length - len(prompt), 0)]
            lengths.append(len(completion))
            sequences.append(step.sequence(prompt, completion, 1.0 / max(len(completion), 1),
                                           {"teacher": step.prompt_ids(self.teacher_messages(example))}))
        step.stats["sample_tokens"] = sum(lengths) / len(lengths)
        step.stats["finished_share"] = sum(f for _, f in samples) / len(samples)
        return sequences

    def token_loss(self, model, batch: dict, logits):
        import torch

        start, weights, ids = batch["start"], batch["weights"], batch["input_ids"]
        student = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts tokens start+1 ...
        rows = [(weights[r] > 0).nonzero().flatten() for r in range(len(ids))]  # each sample's token positions
        teacher_ids = [extra["teacher"] + ids[r, pos].tolist() for r, (extra, pos) in enumerate(zip(batch["extras"], rows))]
        width = max(map(len, teacher_ids))
        pad = torch.zeros((len(ids), width), dtype=torch.long, device=ids.device)
        mask = torch.zeros_like(pad)
        for r, seq in enumerate(teacher_ids):
            pad[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        with self._teacher.used_by(model):
            teacher_logits = model(input_ids=pad, attention_mask=mask).logits
        out = student.new_zeros(student.shape[:2])
        for r, (extra, pos) in enumerate(zip(batch["extras"], rows)):
            if len(pos) == 0:
                continue
            first = len(extra["teacher"]) - 1  # the teacher position that predicts the sample's first token
            teacher = torch.log_softmax(teacher_logits[r, first : first + len(pos)].float(), dim=-1)
            out[r, pos - start - 1] = divergence(student[r, pos - start - 1], teacher, self.options.alpha)
        return out
