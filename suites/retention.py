"""Retention: how far the evaluated model has moved from the original on general prompts,
with no judge, at any model scale.

Definition. Take a seeded sample (``--eval-size``, ``--data-seed``) of a general
instruction set (option ``instruction_set``, default AlpacaEval). The ORIGINAL model
answers each instruction greedily (``max_new_tokens``, cached). Each answer is
teacher-forced, in the chat template, through the evaluated model and through the
original. The scored tokens are the answer's tokens plus the end-of-turn token when the
answer finished (an answer cut at the limit has none; one left with no token at all is
left out). Per item:

- ``nll``: mean negative log-likelihood of the scored tokens under the evaluated model;
- ``nll_original``: the same under the original;
- ``delta_nll`` = ``nll`` - ``nll_original``, and ``abs_delta_nll`` = its absolute value;
- ``kl``: mean over the scored positions of the full-vocabulary
  KL(original || evaluated) between the two models' next-token distributions.

Each metric is the mean of its per-item values, with a bootstrap CI over items.

Ranking uses ``kl`` (lower is better). The NLL alone can reward the wrong thing: a model
trained on its own greedy text (RaDis rationales) sharpens towards its mode and can score
*below* the original's NLL (METHODS.md measured 0.672 against the original's 0.768),
which is a change, not retention. KL from the original is zero only for an unchanged
distribution and grows with any change, sharpening included. For the original model
itself ``kl`` and ``delta_nll`` are exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.data import GENERAL_SETS, Instruction, sample
from harness.errors import UserError
from harness.evaluation import ItemStats, Suite, SuiteContext, SuiteResult
from harness.generation import Decoding, Output, Request
from harness.prompts import end_of_turn_ids, render_chat, user_turn
from harness.registry import register_suite


@dataclass
class RetentionOptions:
    instruction_set: str = field(
        default="alpaca_eval", metadata={"help": "General instruction set whose prompts the original model answers."}
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Length limit of the original model's answers."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per teacher-forced forward pass."})


@dataclass
class ScoredItem:
    nll: float
    nll_original: float
    kl: float
    tokens: int


def end_of_turn_text(tokenizer) -> str:
    """The text the chat template puts after an assistant answer, cut after the end-of-turn
    token (``<|im_end|>`` for ChatML); the tokenizer's eos when the template shows none."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    prompt = render_chat(tokenizer, probe[:1]) + "y"
    full = tokenizer.apply_chat_template(probe, tokenize=False)
    if full.startswith(prompt):
        tail = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        stops = set(end_of_turn_ids(tokenizer))
        for i, token in enumerate(tail):
            if token in stops:
                return tokenizer.decode(tail[: i + 1])
    return tokenizer.eos_token


def teacher_forced_sequences(tokenizer, prompts: list[str], outputs: list[Output]) -> list[tuple[list[int], int]]:
    """(token ids, number of scored tokens at the end) for each prompt and answer."""
    end = tokenizer(end_of_turn_text(tokenizer), add_special_tokens=False)["input_ids"]
    sequences = []
    for prompt, output in zip(prompts, outputs):
        context = tokenizer(render_chat(tokenizer, user_turn(prompt)), add_special_tokens=False)["input_ids"]
        answer = tokenizer(output.text, add_special_tokens=False)["input_ids"] + (end if output.finished else [])
        sequences.append((context + answer, len(answer)))
    return sequences


def _response_log_probs(model, batch: list[tuple[list[int], int]], pad_id: int):
    """Log-softmax over the vocabulary at each scored position (predicting the scored tokens)
    and the scored token ids, per sequence."""
    import torch

    from harness.training import accepts_logits_to_keep

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    device = next(model.parameters()).device
    # logits from the first scored position on: the prompts' would be computed and dropped
    first = max(min(len(ids) - scored for ids, scored in batch) - 1, 0)
    kwargs = {"logits_to_keep": width - first} if first and accepts_logits_to_keep(model) else {}
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs).logits.float()
    offset = width - logits.shape[1]  # logits[:, i] belongs to position offset + i
    out = []
    for row, (ids, scored) in enumerate(batch):
        start = len(ids) - scored  # position t predicts token t + 1
        out.append((torch.log_softmax(logits[row, start - 1 - offset : len(ids) - 1 - offset], dim=-1),
                    torch.tensor(ids[start:], device=device)))
    return out


def score_answers(model, original_model_fn, tokenizer, sequences: list[tuple[list[int], int]],
                  batch_size: int) -> list[ScoredItem | None]:
    """NLL under both models and KL(original || evaluated) for each teacher-forced answer;
    None for an answer with no tokens to score (empty and cut at the limit).

    The original model's context is entered once per batch so that only one batch of
    full-vocabulary distributions is held at a time.
    """
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scored: list[ScoredItem | None] = [None] * len(sequences)
    todo = [i for i, (_, n) in enumerate(sequences) if n > 0]
    with torch.no_grad():
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            batch = [sequences[i] for i in rows]
            with original_model_fn() as original:
                reference = _response_log_probs(original, batch, pad_id)
            evaluated = _response_log_probs(model, batch, pad_id)
            for i, (log_q, targets), (log_p, _) in zip(rows, evaluated, reference):
                log_p = log_p.to(log_q.device)
                scored[i] = ScoredItem(
                    nll=-log_q.gather(1, targets[:, None]).mean().item(),
                    nll_original=-log_p.gather(1, targets[:, None]).mean().item(),
                    kl=(log_p.exp() * (log_p - log_q)).sum(-1).mean().item(),
                    tokens=len(targets),
                )
    return scored


@register_suite
class RetentionSuite(Suite):
    name = "retention"
    description = "Judge-free distance from the original on its own answers: KL (main, lower is better) and NLL change."
    Options = RetentionOptions

    def requests(self, ctx: SuiteContext) -> list[tuple[Request, Decoding]]:
        # the answers come from the original model: batched with others only when it is the one evaluated
        if ctx.generator is not ctx.original_generator:
            return []
        return [(Request(user_turn(it.prompt)), Decoding(max_new_tokens=self.options.max_new_tokens)) for it in self._items(ctx)]

    def _items(self, ctx: SuiteContext) -> list[Instruction]:
        opts = self.options
        spec = GENERAL_SETS.get(opts.instruction_set)
        if spec is None or spec.kind != "instruction":
            known = ", ".join(n for n, s in GENERAL_SETS.items() if s.kind == "instruction")
            raise UserError(f"retention.instruction_set '{opts.instruction_set}' is not an instruction set; use one of {known}.")
        items: list[Instruction] = sample(ctx.data.general(opts.instruction_set), ctx.eval_size, ctx.data_seed)
        if not items:
            raise UserError(f"The {opts.instruction_set} set in {ctx.data.label} is empty; give it at least one instruction.")
        return items

    def item_stats(self, outputs: list[dict]) -> dict[str, ItemStats]:
        scored = [r for r in outputs if "kl" in r]
        ids = [r["id"] for r in scored]
        stats = {name: ItemStats.mean(ids, [r[name] for r in scored]) for name in ("kl", "nll", "delta_nll")}
        stats["abs_delta_nll"] = ItemStats.mean(ids, [abs(r["delta_nll"]) for r in scored])
        return stats

    def evaluate(self, ctx: SuiteContext) -> SuiteResult:
        opts = self.options
        items = self._items(ctx)
        prompts = [it.prompt for it in items]
        answers = ctx.original_generator.generate(
            [Request(user_turn(p)) for p in prompts], Decoding(max_new_tokens=opts.max_new_tokens),
            label="retention answers [original]",
        )
        sequences = teacher_forced_sequences(ctx.tokenizer, prompts, answers)
        scores = score_answers(ctx.model, ctx.original_model, ctx.tokenizer, sequences, opts.batch_size)

        kept = [s for s in scores if s is not None]
        result = SuiteResult()
        kl = result.add_mean("kl", [s.kl for s in kept], main=True, higher_is_better=False)
        kl.note = "KL(original || evaluated) per answer token, on the original's greedy answers"
        result.add_mean("nll", [s.nll for s in kept], higher_is_better=None)
        result.add_mean("nll_original", [s.nll_original for s in kept], higher_is_better=None)
        delta = result.add_mean("delta_nll", [s.nll - s.nll_original for s in kept], higher_is_better=None)
        delta.note = "below 0 is sharpening towards the original's own answers, not better retention"
        result.add_mean("abs_delta_nll", [abs(s.nll - s.nll_original) for s in kept], higher_is_better=False)
        for it, p, a, s in zip(items, prompts, answers, scores):
            row = {"id": it.id, "prompt": p, "output": a.text, "finished": a.finished}
            if s is not None:
                row.update(tokens=s.tokens, nll=s.nll, nll_original=s.nll_original, delta_nll=s.nll - s.nll_original, kl=s.kl)
            result.outputs.append(row)
        return result
