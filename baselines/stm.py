"""STM, selective token masking (extension): vanilla's data with the target tokens the original
model finds surprising left out of the loss.

Wu et al., "Mitigating Forgetting in LLM Fine-Tuning via Low-Perplexity Token Learning", 2025
(arXiv 2501.14315); code appier-research/robust-llm-finetunes (generate_stm_training_data.py,
collate_fn.py, train_with_mask.py).

Before training, the frozen original model reads every example teacher-forced, exactly the token
ids the trainer trains on (the chat prompt, the reference, the end of turn, cut at
budget.max_length), and each response token whose perplexity exp(NLL) under it exceeds
``threshold`` gets loss weight 0 (the reference code's "highest" rule, threshold 2.5 in
train_with_mask.py: NLL above ln 2.5 ≈ 0.92). The masked tokens stay in the input; the loss is
the mean NLL of the others. The mask is computed once, when the examples are built, and lives in
them: each response is written as runs of token ids with weight 1 or 0 (``examples.jsonl``), so
it is part of the training unit and its key. The share masked is recorded (``masked_share``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from baselines.vanilla import reference_examples
from harness.api import Method, MethodContext, Segment, TrainingExample, UserError, collate, request_ids, tokenise_example

BATCH = 8  # examples per forward pass of the original


@dataclass
class STMOptions:
    threshold: float = field(default=2.5, metadata={"help": "Perplexity exp(NLL) under the original above which a target token is "
                                                            "left out of the loss (reference code: 2.5).", "above": 1})


def token_nlls(model, tokenizer, items: list) -> list[list[float]]:
    """NLL under ``model`` of every token of each tokenised example given the ones before it (0.0 for the first)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(items), BATCH):
        chunk = items[start : start + BATCH]
        batch = collate(chunk, pad)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch["input_ids"][:, 1:].to(device),
                                                reduction="none").cpu()
        out += [[0.0] + nll[row, : len(item.input_ids) - 1].tolist() for row, item in enumerate(chunk)]
    return out


def masked_example(example: TrainingExample, tokenizer, item, nlls: list[float], limit: float) -> tuple[TrainingExample, int]:
    """``example`` as the exact token runs the trainer trains on, weight 0 where the NLL exceeds ``limit``;
    and how many tokens that masked."""
    start = len(request_ids(tokenizer, example.messages))
    runs: list[tuple[float, str, list[int]]] = []
    masked = 0
    for token, weight, kind, nll in zip(item.input_ids[start:], item.weights[start:], item.kinds[start:], nlls[start:]):
        keep = weight > 0 and nll <= limit
        masked += weight > 0 and not keep
        key = (weight if keep else 0.0, kind)
        if runs and runs[-1][:2] == key:
            runs[-1][2].append(token)
        else:
            runs.append((*key, [token]))
    response = [Segment(tokenizer.decode(ids), weight, kind or "target", ids=ids) for weight, kind, ids in runs]
    # the end of turn is among the runs already (and scored like any other token)
    return TrainingExample(example.messages, response, example.source, end_of_turn=False), masked


class STM(Method):
    name = "stm"
    description = ("Extension (not in the paper): vanilla SFT without the loss of target tokens whose perplexity under the "
                   "original model is above a threshold (STM).")
    citation = "Wu et al., Mitigating Forgetting in LLM Fine-Tuning via Low-Perplexity Token Learning, 2025 (arXiv 2501.14315)"
    extension = True
    Options = STMOptions

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        examples = reference_examples(ctx)
        tokenizer = getattr(ctx.original, "tokenizer", None)
        if ctx.original_model is None or tokenizer is None:
            raise UserError("stm scores the references with the original model, which this context does not hold.")
        items = [tokenise_example(tokenizer, ex, ctx.budget.max_length) for ex in examples]
        limit = math.log(self.options.threshold)
        out, masked = [], 0
        for example, item, nlls in zip(examples, items, token_nlls(ctx.original_model, tokenizer, items)):
            if item.target_count() == 0:  # nothing of the response fits budget.max_length: as vanilla
                out.append(example)
                continue
            example, count = masked_example(example, tokenizer, item, nlls, limit)
            out.append(example)
            masked += count
        targets = sum(item.target_count() for item in items)
        ctx.stats.update(threshold=self.options.threshold, masked_tokens=masked, target_tokens=targets,
                         masked_share=masked / targets if targets else 0.0)
        return out
