"""EAFT, entropy-adaptive fine-tuning (extension): vanilla's data, each target token's NLL
weighted by the model's own normalised predictive entropy at that position.

Diao et al., "Entropy-Adaptive Fine-Tuning: Resolving Confident Conflicts to Mitigate
Forgetting", arXiv 2601.02151; code PRIS-CV/EAFT, merged into LLaMA-Factory (``use_eaft_loss``).

The loss is Σ_t H̃_t^α · NLL_t over the target tokens, divided by their number. H̃_t is the
entropy of the model's next-token distribution restricted to its top ``top_k`` tokens
(renormalised), divided by ln ``top_k`` so it lies in [0, 1]; it is computed from the current
logits and carries no gradient. Tokens the model is sure of yet told otherwise (low entropy,
low probability: the paper's "confident conflicts") barely move it; where it is unsure the
token trains as in SFT. As in the reference code: top_k 20, α 1, the weight detached, the sum
divided by the number of target tokens (not by the sum of weights, so EAFT's steps are smaller
than SFT's). The code divides by 3.0 (ln 20 = 2.996 rounded); here by ln top_k itself.
``top_k: 0`` takes the entropy over the whole vocabulary, divided by ln |V| (the paper's formula).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from baselines.vanilla import reference_examples
from harness.api import Method, MethodContext, TrainingExample


@dataclass
class EAFTOptions:
    alpha: float = field(default=1.0, metadata={"help": "Exponent of the normalised entropy weight (0: plain SFT).", "min": 0})
    top_k: int = field(default=20, metadata={"help": "Entropy over the top-k next-token probabilities, renormalised and divided by "
                                                     "ln k (reference code: 20); 0: the whole vocabulary, divided by ln |V|.",
                                             "min": 0})


def entropy_weights(logits, top_k: int, alpha: float):
    """(H_k / ln k)^α of each position's next-token distribution (``logits`` [..., vocab]), detached."""
    import torch

    with torch.no_grad():
        logits = logits.float()
        k = logits.shape[-1] if top_k <= 0 or top_k >= logits.shape[-1] else top_k
        if k < logits.shape[-1]:
            logits = logits.topk(k, dim=-1).values
        logp = torch.log_softmax(logits, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        return (entropy / math.log(k)).clamp(min=0.0) ** alpha


class EAFT(Method):
    name = "eaft"
    description = ("Extension (not in the paper): vanilla SFT with each target token's loss weighted by the model's own "
                   "normalised entropy there (EAFT).")
    citation = "Diao et al., Entropy-Adaptive Fine-Tuning: Resolving Confident Conflicts to Mitigate Forgetting, 2026 (arXiv 2601.02151)"
    extension = True
    Options = EAFTOptions

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        ctx.stats.update(alpha=self.options.alpha, top_k=self.options.top_k)
        return reference_examples(ctx)

    def token_loss(self, model, batch: dict, logits):
        import torch

        targets = batch["input_ids"][:, batch["start"] + 1 :]
        logits = logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                reduction="none").view_as(targets)
        return entropy_weights(logits, self.options.top_k, self.options.alpha) * nll
