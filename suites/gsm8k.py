"""GSM8K grade-school maths: exact match of the final number.

The model sees the question and ``ANSWER_INSTRUCTION`` and decodes greedily. Its answer
is the number after the last "The answer is" (else the last number it wrote); the
reference is the number after "The answer is" in the worked answer (else after GSM8K's
own "#### "). Numbers compare as values: "$1,200.00" equals "1200".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from harness.api import (
    DataSet,
    Decoding,
    Instruction,
    ItemStats,
    MetricSpec,
    Request,
    Suite,
    SuiteContext,
    SuiteResult,
    UserError,
    generation_limit,
    sample,
    user_turn,
)

GSM8K = DataSet("gsm8k", "gsm8k/gsm8k_test.json", {"instruction": "question", "reference": "answer"},
                hub="openai/gsm8k", hub_split="test", hub_config="main")

ANSWER_INSTRUCTION = 'Solve the problem step by step, then give the final number in a last sentence "The answer is N."'

# a sign only when it does not join two numbers ("10-3"); thousands commas; decimals
_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:,\d{3})*(?:\.\d+)?|(?<![\d.])-?\.\d+")
_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


def gsm8k_prompt(question: str) -> str:
    return f"{question}\n\n{ANSWER_INSTRUCTION}"


def _canonical(number: str) -> str | None:
    """'1,200.50' -> '1200.5', '-3.0' -> '-3'; None if it is not a number."""
    try:
        value = Decimal(number.replace(",", ""))
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return _canonical(match.group()) if match else None


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return _canonical(found[-1]) if found else None


def reference_answer(text: str) -> str | None:
    """The number after "The answer is" in a worked answer, else after "#### "."""
    marker = _ANSWER_IS.search(text) or re.search(r"####", text)
    return _first_number(text[marker.end() :]) if marker else None


def predicted_answer(text: str) -> str | None:
    """The number after the last "The answer is", else the last number in the text."""
    markers = list(_ANSWER_IS.finditer(text))
    if markers:
        found = _first_number(text[markers[-1].end() :])
        if found is not None:
            return found
    return _last_number(text)


@dataclass
class GSM8KOptions:
    max_new_tokens: int | None = generation_limit("Generation limit per answer")


class GSM8KSuite(Suite):
    name = "gsm8k"
    description = "GSM8K test questions: exact match of the final number (main)."
    Options = GSM8KOptions
    data_sets = (GSM8K,)

    def metrics(self) -> list[MetricSpec]:
        return [MetricSpec("accuracy", "exact-match accuracy", True, main=True, margin=0.02)]

    def check(self) -> list[str]:
        return []

    def requests(self, ctx: SuiteContext) -> list[tuple[Request, Decoding]]:
        decoding = Decoding(max_new_tokens=self.options.max_new_tokens)
        items = sample(ctx.data.general(GSM8K), ctx.eval_size, ctx.data_seed)
        return [(Request(user_turn(gsm8k_prompt(it.prompt))), decoding) for it in items]

    def item_stats(self, outputs: list[dict]) -> dict[str, ItemStats]:
        return {"accuracy": ItemStats.mean([r["id"] for r in outputs], [r["correct"] for r in outputs])}

    def evaluate(self, ctx: SuiteContext) -> SuiteResult:
        items: list[Instruction] = sample(ctx.data.general(GSM8K), ctx.eval_size, ctx.data_seed)
        if not items:
            raise UserError(f"The gsm8k set in {ctx.data.label} is empty; give it at least one question.")
        references = [reference_answer(it.reference or "") for it in items]
        for it, ref in zip(items, references):
            if ref is None:
                raise UserError(
                    f"GSM8K item {it.id} in {ctx.data.label} has no final number in its answer "
                    "(expected 'The answer is N.' or '#### N'); fix the file."
                )
        decoding = Decoding(max_new_tokens=self.options.max_new_tokens)
        outputs = ctx.generator.generate(
            [Request(user_turn(gsm8k_prompt(it.prompt))) for it in items], decoding, label=f"gsm8k [{ctx.label}]"
        )
        predictions = [predicted_answer(o.text) for o in outputs]
        correct = [p is not None and p == r for p, r in zip(predictions, references)]

        result = SuiteResult()
        metric = result.add_mean("accuracy", correct, main=True)
        metric.note = "exact match of the final number"
        result.outputs = [
            {"id": it.id, "prompt": it.prompt, "output": o.text, "predicted": p, "reference": r, "correct": c,
             "finished": o.finished, "new_tokens": o.new_tokens}
            for it, o, p, r, c in zip(items, outputs, predictions, references, correct)
        ]
        return result
