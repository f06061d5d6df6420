"""MT-Bench: two-turn questions, the second asked after the model's own first answer, each
turn rated 1-10 by a judge with FastChat's single-answer grading prompts.

As in FastChat's ``llm_judge``: math, reasoning and coding questions are graded against
reference answers (``mt_bench/reference_answer_gpt-4.jsonl`` next to the questions) when
the data dir has them, a rating is read from "[[r]]" (else "[r]") in the judge's reply,
replies without one are dropped, and the score is the mean over questions of their rated
turns (FastChat's mean over all rated turns when every turn is rated). The
judge is an OpenAI-compatible chat model named by ``--judge`` (see ``suites._judges``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.api import (
    DataSet,
    Decoding,
    Instruction,
    Metric,
    MetricSpec,
    NotScored,
    Request,
    Suite,
    SuiteContext,
    SuiteResult,
    UserError,
    generation_limit,
    read_records,
    sample,
    user_turn,
)
from suites._judges import ChatJudge, JudgeUnavailable, chat_judge, chat_model

MT_BENCH = DataSet("mt_bench", "mt_bench/question.jsonl", {"id": "question_id", "turns": "turns", "category": "category"},
                   hub="HuggingFaceH4/mt_bench_prompts", hub_split="train", optional=("category",))

NEED_REF_CATEGORIES = ("math", "reasoning", "coding")

# The single-answer grading prompts of lm-sys FastChat, fastchat/llm_judge/data/judge_prompts.jsonl
# (Apache-2.0): name -> (system prompt, user prompt template).
_RATE = ("you must rate the response on a scale of 1 to 10 by strictly following this format: "
         "\"[[rating]]\", for example: \"Rating: [[5]]\".")
JUDGE_PROMPTS = {
    "single-v1": (
        "You are a helpful assistant.",
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
        "assistant to the user question displayed below. Your evaluation should consider factors such as the "
        "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
        "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
        f"{_RATE}\n\n[Question]\n{{question}}\n\n[The Start of Assistant's Answer]\n{{answer}}\n"
        "[The End of Assistant's Answer]",
    ),
    "single-math-v1": (
        "You are a helpful assistant.",
        "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
        "assistant to the user question displayed below. Your evaluation should consider correctness and "
        "helpfulness. You will be given a reference answer and the assistant's answer. Begin your evaluation by "
        "comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as "
        f"objective as possible. After providing your explanation, {_RATE}\n\n[Question]\n{{question}}\n\n"
        "[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
    ),
    "single-v1-multi-turn": (
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
        "the user question displayed below. Your evaluation should consider factors such as the helpfulness, "
        "relevance, accuracy, depth, creativity, and level of detail of the response. You evaluation should focus "
        "on the assistant's answer to the second user question. Begin your evaluation by providing a short "
        f"explanation. Be as objective as possible. After providing your explanation, {_RATE}\n\n",
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
        "{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
        "<|The End of Assistant A's Conversation with User|>",
    ),
    "single-math-v1-multi-turn": (
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
        "the user question. Your evaluation should consider correctness and helpfulness. You will be given a "
        "reference answer and the assistant's answer. You evaluation should focus on the assistant's answer to the "
        "second question. Begin your evaluation by comparing the assistant's answer with the reference answer. "
        f"Identify and correct any mistakes. Be as objective as possible. After providing your explanation, {_RATE}\n\n",
        "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n{ref_answer_1}\n\n"
        "### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n"
        "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
        "{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
        "<|The End of Assistant A's Conversation with User|>",
    ),
}

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(judgment: str) -> float | None:
    """FastChat's rule: the first "[[r]]", else the first "[r]"; None when there is neither."""
    match = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    return float(match.group(1)) if match else None


def judge_messages(item: Instruction, answers: list[str], turn: int, references: list[str] | None) -> list[dict]:
    """The judge's conversation for one turn (0 or 1) of one question."""
    name = ("single-math-v1" if references else "single-v1") + ("-multi-turn" if turn == 1 else "")
    system, template = JUDGE_PROMPTS[name]
    fields = {"question": item.turns[0], "answer": answers[0], "question_1": item.turns[0], "answer_1": answers[0]}
    if turn == 1:
        fields.update(question_2=item.turns[1], answer_2=answers[1])
    for i, reference in enumerate(references or []):
        fields[f"ref_answer_{i + 1}"] = reference
    return [{"role": "system", "content": system}, {"role": "user", "content": template.format(**fields)}]


@dataclass
class MTBenchOptions:
    max_new_tokens: int | None = generation_limit("Generation limit per turn")
    judge: str | None = field(
        default=None, metadata={"help": "An OpenAI-compatible chat model name, or an alpaca-eval config naming one.", "alias": "judge"}
    )
    reference_answers: str = field(
        default="mt_bench/reference_answer_gpt-4.jsonl",
        metadata={"help": "Reference answers for math/reasoning/coding, relative to the data dir ('' to grade without)."},
    )
    judge_max_tokens: int = field(default=2048, metadata={"help": "Reply limit of the judge (FastChat's).", "above": 0})
    judge_workers: int = field(default=4, metadata={"help": "Judge requests sent at once.", "above": 0})


class MTBenchSuite(Suite):
    name = "mt_bench"
    description = "MT-Bench two-turn questions, each turn rated 1-10 by an OpenAI-compatible judge (--judge)."
    Options = MTBenchOptions
    data_sets = (MT_BENCH,)

    def metrics(self) -> list[MetricSpec]:
        return [
            MetricSpec("score", "MT-Bench score (1-10)", True, main=True, margin=0.25),
            MetricSpec("score_turn1", "MT-Bench first-turn score", True, margin=0.25),
            MetricSpec("score_turn2", "MT-Bench second-turn score", True, margin=0.25),
            MetricSpec("unparsed_ratings", "judge replies without a rating", False),
            MetricSpec("finished", "share of answers that ended before the limit", None),
        ]

    def check(self) -> list[str]:
        if self.options.judge:
            chat_model(self.options.judge)  # a config path that is not one, or one that serves no chat model
        return []

    def planned_generations(self, ctx: SuiteContext) -> list[int]:
        items = sample(ctx.data.general(MT_BENCH), ctx.eval_size, ctx.data_seed)
        return [self.options.max_new_tokens] * sum(len(it.turns[:2]) for it in items)

    def evaluate(self, ctx: SuiteContext) -> SuiteResult:
        items: list[Instruction] = sample(ctx.data.general(MT_BENCH), ctx.eval_size, ctx.data_seed)
        decoding = Decoding(max_new_tokens=self.options.max_new_tokens)
        first = ctx.generator.generate([Request(user_turn(it.turns[0])) for it in items], decoding,
                                       label=f"mt_bench turn 1 [{ctx.label}]")
        two_turn = [i for i, it in enumerate(items) if len(it.turns) > 1]
        second = ctx.generator.generate(
            [Request([{"role": "user", "content": items[i].turns[0]}, {"role": "assistant", "content": first[i].text},
                      {"role": "user", "content": items[i].turns[1]}]) for i in two_turn],
            decoding, label=f"mt_bench turn 2 [{ctx.label}]",
        )
        outs = {i: [first[i]] for i in range(len(items))}
        for i, out in zip(two_turn, second):
            outs[i].append(out)

        result = SuiteResult()
        for i, it in enumerate(items):
            result.outputs.append({"id": it.id, "category": it.category, "turns": list(it.turns),
                                   "answers": [o.text for o in outs[i]], "finished": [o.finished for o in outs[i]],
                                   "new_tokens": [o.new_tokens for o in outs[i]]})
        result.add_mean("finished", [o.finished for i in outs for o in outs[i]], higher_is_better=None)
        if not self.options.judge:
            result.not_scored.append(NotScored("score", "not scored: no judge (--judge)"))
            return result
        try:
            judge = chat_judge(self.options.judge)
            self._judge(ctx, judge, items, result)
        except JudgeUnavailable as err:
            result.not_scored.append(NotScored("score", f"not scored: {err}"))
        return result

    def _judge(self, ctx: SuiteContext, judge: ChatJudge, items: list[Instruction], result: SuiteResult) -> None:
        references = self._references(ctx)
        asks: list[tuple[int, int]] = []  # (item, turn)
        conversations = []
        for i, (it, row) in enumerate(zip(items, result.outputs)):
            refs = references.get(it.id) if it.category in NEED_REF_CATEGORIES else None
            for turn in range(len(row["answers"])):
                asks.append((i, turn))
                conversations.append(judge_messages(it, row["answers"], turn, refs))
        replies = judge.complete_many(conversations, self.options.judge_max_tokens, self.options.judge_workers)
        for row in result.outputs:
            row["judgments"], row["ratings"] = [], []
        for (i, _), reply in zip(asks, replies):
            result.outputs[i]["judgments"].append(reply)
            result.outputs[i]["ratings"].append(parse_rating(reply))

        ratings = [r for row in result.outputs for r in row["ratings"]]
        unparsed = sum(r is None for r in ratings)
        result.metrics.append(Metric("unparsed_ratings", float(unparsed), len(ratings), higher_is_better=False,
                                     note=f"judge={judge.label}; replies without a [[rating]]"))
        per_question = [[r for r in row["ratings"] if r is not None] for row in result.outputs]
        if not any(per_question):
            result.not_scored.append(NotScored("score", f"not scored: judge {judge.label} gave no readable rating in {len(ratings)} replies"))
            return
        guided = "reference-guided for math/reasoning/coding" if references else "no reference answers found, all graded without"
        note = f"judge={judge.label}; FastChat single-answer grading 1-10, {guided}; {unparsed} of {len(ratings)} replies unreadable"
        # a question's score is the mean of its rated turns, so the CI resamples questions
        result.add_mean("score", [sum(r) / len(r) for r in per_question if r], main=True).note = note
        for turn in (0, 1):
            values = [row["ratings"][turn] for row in result.outputs
                      if len(row["ratings"]) > turn and row["ratings"][turn] is not None]
            if values:
                result.add_mean(f"score_turn{turn + 1}", values).note = note

    def _references(self, ctx: SuiteContext) -> dict[str, list[str]]:
        """Reference answers by question id, from the data dir (none on the hub or without the file)."""
        rel = self.options.reference_answers
        if not rel or ctx.data.root is None or not (ctx.data.root / rel).is_file():
            return {}
        path = ctx.data.root / rel
        references = {}
        for n, row in enumerate(read_records(path), start=1):
            try:
                references[str(row["question_id"])] = [str(t) for t in row["choices"][0]["turns"]]
            except (KeyError, IndexError, TypeError):
                raise UserError(f"{path}: row {n} needs question_id and choices[0].turns, as FastChat's "
                                "reference answer files have; fix the file.") from None
        return references
