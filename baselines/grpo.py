"""GRPO with a translation reward (extension): on-policy RL, the model's own samples scored
against the reference.

Shao et al., "DeepSeekMath" (GRPO), 2024 (arXiv 2402.03300), as run by RL's Razor (Shenfeld,
Pari, Agrawal, "RL's Razor: Why Online Reinforcement Learning Forgets Less", 2025, arXiv
2509.04259); TRL's GRPOTrainer (0.25) is the reference implementation, and the tests compare
this one's advantages and loss with it on the same batch.

Each step takes ``batch_size / group_size`` translation prompts and samples ``group_size``
answers to each from the current weights (temperature 1, TRL's default). Each answer's reward
is its sentence chrF against the reference / 100 (sacrebleu, as the translation suite), plus its
COMET score / 100 when ``comet_model`` names a checkpoint (TRL adds several rewards with weight
1). The advantage of an answer is its reward minus its group's mean, divided by the group's
standard deviation + 1e-4 (``scale_rewards``: group, batch or none, as TRL). The loss of a
sampled token is −min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A) + β·KL, ρ the ratio of its probability now
and at sampling (1 in value: every step samples afresh and takes one optimiser step, TRL's
num_iterations=1) and KL the k3 estimate exp(r − p) − (r − p) − 1 of the token's divergence
from the original model (r, p its log-probabilities under the original and now; the original's
weights as they were before the first step, whatever the adapter kind). ``loss_type`` dapo
(TRL 0.25's default) divides by the step's sampled tokens, grpo averages each answer's tokens,
then the answers. β defaults to 0.04 (the GRPO paper; TRL 0.25 defaults to 0, no reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from baselines.vanilla import reference_examples
from harness.api import (
    EXTRACTION_RULES,
    CometScorer,
    CometUnavailable,
    Decoding,
    Method,
    MethodContext,
    TrainingExample,
    TrainingStep,
    UserError,
    WeightSnapshot,
    extract_translation,
    generation_limit,
)

SCALES = ("group", "batch", "none")
LOSS_TYPES = ("dapo", "grpo")


@dataclass
class GRPOOptions:
    group_size: int = field(default=4, metadata={"help": "Answers sampled per prompt (TRL's num_generations); budget.batch_size "
                                                         "answers per step.", "min": 2})
    beta: float = field(default=0.04, metadata={"help": "Weight of the KL term to the original model (GRPO paper 0.04; TRL 0.25: 0).",
                                                "min": 0})
    epsilon: float = field(default=0.2, metadata={"help": "Clipping range of the probability ratio.", "above": 0})
    scale_rewards: str = field(default="group", metadata={"help": "Divide advantages by the group's reward spread (group), the "
                                                                  "step's (batch) or not at all (none)."})
    loss_type: str = field(default="dapo", metadata={"help": "dapo: mean over the step's sampled tokens (TRL 0.25's default); grpo: "
                                                             "mean over each answer's tokens, then over answers."})
    mask_truncated: bool = field(default=False, metadata={"help": "Train on no token of an answer cut at max_new_tokens (DAPO)."})
    max_new_tokens: int = generation_limit("Longest answer, in tokens.", default=128, run_default=False)
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (the log-probabilities are taken at it too, as TRL).",
                                                      "above": 0})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass.", "above": 0, "max": 1})
    top_k: int = field(default=0, metadata={"help": "Top-k filter of the sampling (0: none).", "min": 0})
    extraction: str = field(default="full", metadata={"help": "What of an answer the reward scores: full (all of it), first_paragraph "
                                                              "or first_line."})
    comet_model: str | None = field(default=None, metadata={"help": "A COMET checkpoint (hub name or local path): its score / 100 is "
                                                                    "added to the reward."})
    comet_batch_size: int = field(default=16, metadata={"help": "COMET batch size.", "above": 0})


def group_advantages(rewards, group: int, scale: str):
    """(reward − its group's mean) / (spread + 1e-4), the spread the group's (or the whole step's) sample
    standard deviation, or 1 with ``scale`` none (TRL's GRPOTrainer)."""
    import torch

    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    grouped = rewards.view(-1, group)
    advantages = rewards - grouped.mean(dim=1).repeat_interleave(group)
    if scale == "none":
        return advantages
    spread = grouped.std(dim=1).repeat_interleave(group) if scale == "group" else rewards.std().expand_as(rewards)
    return advantages / (spread + 1e-4)


class GRPO(Method):
    name = "grpo"
    description = ("Extension (not in the paper): GRPO, on-policy RL on the model's own sampled translations with a sentence-chrF "
                   "(optionally + COMET) reward against the reference and a KL term to the original.")
    citation = ("Shao et al., DeepSeekMath (GRPO), 2024 (arXiv 2402.03300); as in Shenfeld, Pari, Agrawal, RL's Razor: Why Online "
                "Reinforcement Learning Forgets Less, 2025 (arXiv 2509.04259)")
    extension = True
    Options = GRPOOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._reference: WeightSnapshot | None = None
        self._sources: list[str] = []
        self._comet = None

    def check(self) -> None:
        o = self.options
        if o.scale_rewards not in SCALES:
            raise UserError(f"grpo.scale_rewards '{o.scale_rewards}' is unknown; use one of {', '.join(SCALES)}.")
        if o.loss_type not in LOSS_TYPES:
            raise UserError(f"grpo.loss_type '{o.loss_type}' is unknown; use one of {', '.join(LOSS_TYPES)}.")
        if o.extraction not in EXTRACTION_RULES:
            raise UserError(f"grpo.extraction '{o.extraction}' is unknown; use one of {', '.join(EXTRACTION_RULES)}.")

    def samples_per_prompt(self) -> int:
        return self.options.group_size

    def decoding(self) -> Decoding:
        o = self.options
        return Decoding(max_new_tokens=o.max_new_tokens, do_sample=True, temperature=o.temperature, top_p=o.top_p, top_k=o.top_k)

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        o = self.options
        self._sources = [p.source for p in ctx.pairs]
        ctx.stats.update(decoding=self.decoding().key(), group_size=o.group_size, beta=o.beta, epsilon=o.epsilon,
                         scale_rewards=o.scale_rewards, loss_type=o.loss_type,
                         reward="chrf" + (f"+comet:{o.comet_model}" if o.comet_model else ""))
        return reference_examples(ctx)

    def prepare_model(self, model, tokenizer, seed: int) -> None:
        self._reference = WeightSnapshot(model) if self.options.beta > 0 else None  # the original, for the KL term

    def rewards(self, answers: list[str], references: list[str], sources: list[str]) -> list[float]:
        """chrF / 100 of each answer against its reference, plus COMET / 100 with ``comet_model``."""
        from sacrebleu.metrics import CHRF

        o = self.options
        answers = [extract_translation(a, o.extraction) for a in answers]
        chrf = CHRF()
        scores = [chrf.sentence_score(a, [r]).score / 100 if a else 0.0 for a, r in zip(answers, references)]
        if o.comet_model:
            try:
                self._comet = self._comet or CometScorer(o.comet_model, o.comet_batch_size)
                comet = self._comet.score(list(zip(sources, answers, references)))
            except CometUnavailable as err:
                raise UserError(f"grpo.comet_model cannot use the COMET checkpoint '{o.comet_model}': {err}.") from None
            scores = [s + c / 100 for s, c in zip(scores, comet)]
        return scores

    def sample_step(self, step: TrainingStep) -> list:
        o, group = self.options, self.options.group_size
        if o.beta > 0 and self._reference is None:
            raise UserError("grpo's KL term needs prepare_model (the original weights) before training.")
        prompts = [step.prompt_ids(ex.messages) for ex in step.examples for _ in range(group)]
        samples = step.sample(prompts, self.decoding())
        references = [ex.response_text for ex in step.examples for _ in range(group)]
        sources = [self._sources[i] if i < len(self._sources) else "" for i in step.indices for _ in range(group)]
        answers = [step.tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in samples]
        rewards = self.rewards(answers, references, sources)
        advantages = group_advantages(rewards, group, o.scale_rewards).tolist()
        end = step.end_of_turn()
        sequences = []
        for prompt, (ids, finished), advantage in zip(prompts, samples, advantages):
            completion = (ids + end if finished else ids)[: max(step.max_length - len(prompt), 0)]
            weight = 0.0 if o.mask_truncated and not finished else 1.0 if o.loss_type == "dapo" else 1.0 / max(len(completion), 1)
            sequences.append(step.sequence(prompt, completion, weight, {"advantage": advantage}))
        step.stats.update(reward=sum(rewards) / len(rewards), finished_share=sum(f for _, f in samples) / len(samples),
                          sample_tokens=sum(len(ids) for ids, _ in samples) / len(samples))
        return sequences

    def token_logps(self, logits, targets):
        """log π(token) at the sampling temperature."""
        import torch

        logp = torch.log_softmax(logits.float() / self.options.temperature, dim=-1)
        return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def token_loss(self, model, batch: dict, logits):
        import torch

        o, start = self.options, batch["start"]
        targets = batch["input_ids"][:, start + 1 :]
        logp = self.token_logps(logits[:, :-1], targets)
        advantage = torch.tensor([e["advantage"] for e in batch["extras"]], dtype=logp.dtype, device=logp.device)[:, None]
        ratio = torch.exp(logp - logp.detach())  # the samples are this step's: 1, with the policy gradient's gradient
        loss = -torch.min(ratio * advantage, ratio.clamp(1 - o.epsilon, 1 + o.epsilon) * advantage)
        if self._reference is not None:
            keep = {"logits_to_keep": logits.shape[1]} if start else {}
            with self._reference.used_by(model):
                reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **keep).logits
            gap = self.token_logps(reference[:, :-1], targets) - logp
            loss = loss + o.beta * (torch.exp(gap) - gap - 1)
        return loss
