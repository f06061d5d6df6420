"""Elastic weight consolidation towards the original model (extension): vanilla SFT plus
``weight`` · Σ_j F_j (θ_j − θ_j⁰)² over the trainable parameters, θ⁰ their values at the
start (the original model) and F the diagonal empirical Fisher information of the original
on general instructions: the original model's own greedy answers to Alpaca prompts.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017
(arXiv 1612.00796).

Where the harness differs: EWC anchors a network's weights after an earlier task, with the
Fisher of that task's data; here the "earlier task" is the chat model's general ability,
whose data nobody has, so the Fisher is estimated on the original's answers to
``fisher_samples`` Alpaca prompts (the squared gradient of each answer's mean token NLL,
averaged over answers), computed in ``prepare_model`` with the adapter attached and before
any step. With LoRA the trainable parameters are the adapters and θ⁰ is their start: lora_B
= 0, so the delta B·A is 0, and since the gradient of lora_A vanishes while B = 0 its Fisher
is 0 too: the penalty is a Fisher-weighted L2 on lora_B. The Fisher is divided by its mean
over the trainable entries (``normalise``, default on) so that ``weight`` does not depend
on the model's size or loss scale (the raw mean is logged to run.log). One task, one LoRA
run under the shared budget.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from baselines.replay import ALPACA
from baselines.vanilla import reference_examples
from harness.api import (
    DataSet,
    Decoding,
    Method,
    MethodContext,
    Request,
    Segment,
    TrainingExample,
    UserError,
    collate,
    data_set,
    generation_limit,
    tokenise_example,
    user_turn,
    weighted_nll,
)

log = logging.getLogger("radis_bench")


@dataclass
class EWCOptions:
    weight: float = field(default=1.0, metadata={"help": "Weight of the penalty sum F_j (theta_j - theta_j^0)^2 added to the NLL.", "min": 0})
    fisher_set: str = field(default="alpaca", metadata={"help": "General instruction set whose prompts the original answers for the Fisher (a declared data set)."})
    fisher_samples: int = field(default=32, metadata={"help": "Instructions (seeded sample) the Fisher is estimated on.", "above": 0})
    max_new_tokens: int = generation_limit("Generation limit of the original's answers (greedy).", default=128, run_default=False)
    normalise: bool = field(default=True, metadata={"help": "Divide the Fisher by its mean over the trainable entries (weight becomes scale-free)."})


class EWC(Method):
    name = "ewc"
    description = "Extension (not in the paper): vanilla SFT plus an EWC penalty, Fisher-weighted distance of the adapter from its start (the original model)."
    citation = "Kirkpatrick et al., Overcoming catastrophic forgetting in neural networks, PNAS 2017 (arXiv 1612.00796)"
    extension = True
    Options = EWCOptions
    data_sets = (ALPACA,)

    def __init__(self, options=None):
        super().__init__(options)
        self._answers: list[TrainingExample] | None = None
        self._max_length = 512
        self._tokenizer = None
        self._anchor = None
        self._fisher = None

    def check(self) -> None:
        self.uses_data()  # an unknown fisher_set fails here; the numbers' ranges are declared on the options

    def uses_data(self) -> list[DataSet]:
        return [data_set(self.options.fisher_set)]

    def _instructions(self, ctx: MethodContext) -> list:
        pool = list(ctx.data.general(self.uses_data()[0]))
        if not pool:
            raise UserError(f"The {self.options.fisher_set} set has no instructions to estimate ewc's Fisher on; choose another ewc.fisher_set.")
        n = min(self.options.fisher_samples, len(pool))
        return random.Random(ctx.seed).sample(pool, n)

    def original_requests(self, ctx: MethodContext) -> list[tuple[Request, Decoding]]:
        decoding = Decoding(max_new_tokens=self.options.max_new_tokens)
        return [(Request(user_turn(i.prompt)), decoding) for i in self._instructions(ctx)]

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        requests = self.original_requests(ctx)
        outputs = ctx.original.generate_many(requests, label="ewc: the original's answers for the Fisher")
        # the answers as the trainer would put them in: the generated ids where known, the end of turn if it ended
        self._answers = [TrainingExample(r.messages, [Segment(o.text, ids=o.token_ids) if o.token_ids else Segment(o.text)],
                                         source="fisher", end_of_turn=o.finished)
                         for (r, _), o in zip(requests, outputs) if o.text.strip() or o.token_ids]
        if not self._answers:
            raise UserError("The original model gave only empty answers to ewc's Fisher prompts; raise ewc.max_new_tokens or choose another ewc.fisher_set.")
        self._max_length = ctx.budget.max_length
        self._tokenizer = getattr(ctx.original, "tokenizer", None)
        self._fisher = self._anchor = None
        ctx.stats.update(weight=self.options.weight, fisher_set=self.options.fisher_set, fisher_answers=len(self._answers),
                         decoding=requests[0][1].key(), normalise=self.options.normalise)
        return reference_examples(ctx)

    # the penalty ----------------------------------------------------------------------------
    def prepare_model(self, model, tokenizer, seed: int) -> None:
        """θ⁰ and the diagonal empirical Fisher at the start, before any optimiser step."""
        import torch

        if self._answers is None:
            raise UserError("ewc's Fisher needs the original's answers: build_training_examples runs before training.")
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        device = next(model.parameters()).device
        fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        was_training = model.training
        model.eval()  # no dropout: the estimate draws no random numbers, so training's RNG stream is vanilla's
        used = 0
        for example in self._answers:
            item = tokenise_example(tokenizer, example, self._max_length)
            if not item.target_count():
                continue
            batch = {k: v.to(device) for k, v in collate([item], pad).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total, count = weighted_nll(logits, batch["input_ids"], batch["weights"])
            grads = torch.autograd.grad(total / count, list(params.values()), allow_unused=True)
            for (name, _), grad in zip(params.items(), grads):
                if grad is not None:
                    fisher[name] += grad.detach().float() ** 2
            used += 1
        model.train(was_training)
        if not used:
            raise UserError("None of ewc's Fisher answers fits in budget.max_length; raise budget.max_length.")
        entries = sum(f.numel() for f in fisher.values())
        mean = sum(float(f.sum()) for f in fisher.values()) / (used * max(entries, 1))
        scale = 1.0 / (used * mean) if self.options.normalise and mean > 0 else 1.0 / used
        self._fisher = {n: f * scale for n, f in fisher.items()}  # float32
        self._anchor = {n: p.detach().clone() for n, p in params.items()}
        nonzero = sum(int((f > 0).sum()) for f in fisher.values())
        self.fisher_summary = {"fisher_mean": mean, "fisher_answers_used": used, "fisher_nonzero_share": nonzero / max(entries, 1)}
        log.info("ewc: Fisher from %d answers, raw mean %.3g, %.0f%% of %d entries nonzero", used, mean,
                 100 * nonzero / max(entries, 1), entries)

    def extra_loss(self, model, batch: dict, outputs):
        import torch

        if self._fisher is None:  # a caller that did not run prepare_model: estimate at the first step
            if self._tokenizer is None:
                raise UserError("ewc's penalty needs prepare_model (the Fisher and the starting weights) before training.")
            self.prepare_model(model, self._tokenizer, 0)
        penalty = outputs.logits.new_zeros((), dtype=torch.float32)
        for name, param in model.named_parameters():
            fisher = self._fisher.get(name)
            if fisher is not None and param.requires_grad:
                penalty = penalty + (fisher * (param.float() - self._anchor[name].float()) ** 2).sum()
        return self.options.weight * penalty
