"""AlpacaEval: answers to open-ended instructions, judged pairwise against the set's
reference outputs by alpaca-eval's own annotator machinery.

The answers are always generated and saved (``model_outputs.json`` in alpaca-eval's
format, so they can be re-judged later with ``alpaca_eval evaluate``); the win rate
needs ``--judge``, an alpaca-eval annotator config (see ``suites._judges``), whose name
is written next to the number. A verdict the judge gives in a form its parser cannot
read is counted and left out, as alpaca-eval does.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from harness.api import (
    CacheDB,
    DataSet,
    Decoding,
    Instruction,
    Metric,
    MetricSpec,
    NotScored,
    Output,
    Request,
    Suite,
    SuiteContext,
    SuiteResult,
    cache_dir,
    generation_limit,
    sample,
    user_turn,
)
from suites._judges import config_label, import_alpaca_eval, require_alpaca_eval_config

# alpaca-eval's length-controlled GLM models each of the 805 AlpacaEval instructions by its row
ALPACA_EVAL_SIZE = 805
ALPACA_EVAL = DataSet("alpaca_eval", "alpaca_eval/alpaca_eval.json", {"instruction": "instruction", "reference": "output"},
                      hub="tatsu-lab/alpaca_eval", hub_split="eval", hub_config="alpaca_eval", optional=("reference",))


@dataclass
class AlpacaEvalOptions:
    max_new_tokens: int | None = generation_limit("Generation limit per answer")
    judge: str | None = field(
        default=None, metadata={"help": "alpaca-eval annotator config: a name from its evaluators_configs, or a folder or YAML file.",
                                "alias": "judge"}
    )
    length_controlled: bool = field(
        default=True,
        metadata={"help": "Also report alpaca-eval's length-controlled win rate (needs the full 805-instruction "
                          "AlpacaEval file and alpaca-eval's hub file df_gamed.csv)."},
    )


def judge_pairs(config: Path, pairs: list[tuple[str, str, str]], generator: str) -> list[dict]:
    """alpaca-eval's pairwise annotations of (instruction, reference, answer) triples, in order;
    an empty dict where the judge's verdict could not be read.

    Verdicts are cached on disk under the judge config's content and the triple, so an
    answer already judged (by any model, in any run) is not sent to the judge again.
    alpaca-eval's own JSON cache is not used: reloading it breaks its preprocessing under
    pandas 3 (integer preferences refuse the 1.5 it writes for identical outputs).
    """
    cache = _VerdictCache(config)
    found = {pair: cache.get(pair) for pair in set(pairs)}
    todo = sorted(pair for pair, verdict in found.items() if verdict is None)
    if todo:
        annotator = import_alpaca_eval().annotators.PairwiseAnnotator(annotators_config=str(config), caching_path=None)
        annotated = annotator.annotate_head2head(
            outputs_1=[{"instruction": i, "output": r, "generator": "reference"} for i, r, _ in todo],
            outputs_2=[{"instruction": i, "output": o, "generator": generator} for i, _, o in todo],
            is_ordered=True,
        )
        fresh = {pair: {} for pair in todo}  # unread verdicts are dropped by alpaca-eval
        for row in annotated:
            fresh[(row["instruction"], row["output_1"], row["output_2"])] = _plain(row)
        cache.put_many(fresh)
        found.update(fresh)
    return [found[pair] for pair in pairs]


def _plain(row: dict) -> dict:
    """An annotation row with JSON-ready values (numpy scalars, NaN, timestamps)."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return out


def _annotation(row) -> dict:
    annotation = json.loads(row[0])
    if not isinstance(annotation, dict):
        raise ValueError("not an annotation")
    return annotation


class _VerdictCache:
    """SQLite table of alpaca-eval annotations keyed by the judge config's files and the triple."""

    def __init__(self, config: Path):
        files = sorted(config.parent.iterdir()) if config.name == "configs.yaml" else [config]
        digest = hashlib.sha256(version("alpaca_eval").encode())
        for path in files:
            if path.is_file() and path.suffix in (".yaml", ".yml", ".txt", ".json", ".jinja"):
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
        self.judge = digest.hexdigest()
        self.db = CacheDB(cache_dir() / "alpaca_eval_verdicts.sqlite",
                          "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, annotation TEXT)")

    def _key(self, pair: tuple[str, str, str]) -> str:
        return hashlib.sha256(json.dumps([self.judge, *pair]).encode()).hexdigest()

    def get(self, pair: tuple[str, str, str]) -> dict | None:
        return self.db.lookup("SELECT annotation FROM verdicts WHERE key=?", (self._key(pair),), _annotation)

    def put_many(self, verdicts: dict[tuple[str, str, str], dict]) -> None:
        rows = [(self._key(p), json.dumps(a)) for p, a in verdicts.items()]

        def put(db):
            db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", rows)
            db.commit()

        self.db.run(put)


def win_of(preference) -> float | None:
    """alpaca-eval's preference (1: reference better, 2: model better, 0 or 1.5: tie, floats
    between for weighted judges) as the model's share of the win; None when it is no verdict."""
    if preference is None or (isinstance(preference, float) and math.isnan(preference)):
        return None
    value = 1.5 if float(preference) == 0.0 else float(preference)
    return value - 1.0 if 1.0 <= value <= 2.0 else None


class AlpacaEvalSuite(Suite):
    name = "alpaca_eval"
    description = "AlpacaEval instructions: win rate against the reference outputs by an alpaca-eval judge (--judge)."
    Options = AlpacaEvalOptions
    data_sets = (ALPACA_EVAL,)

    def metrics(self) -> list[MetricSpec]:
        return [
            MetricSpec("win_rate", "win rate vs the reference outputs", True, main=True),
            MetricSpec("length_controlled_win_rate", "length-controlled win rate", True, shown=True),
            MetricSpec("avg_length", "characters per answer", None),
            MetricSpec("unparsed_verdicts", "verdicts the judge's parser could not read", False),
            MetricSpec("finished", "share of answers that ended before the limit", None),
        ]

    def check(self) -> list[str]:
        if self.options.judge:
            require_alpaca_eval_config(self.options.judge)
        return []

    def requests(self, ctx: SuiteContext) -> list[tuple[Request, Decoding]]:
        decoding = Decoding(max_new_tokens=self.options.max_new_tokens)
        return [(Request(user_turn(item.prompt)), decoding) for item in sample(ctx.data.general(ALPACA_EVAL), ctx.eval_size, ctx.data_seed)]

    def evaluate(self, ctx: SuiteContext) -> SuiteResult:
        every: list[Instruction] = ctx.data.general(ALPACA_EVAL)
        items: list[Instruction] = sample(every, ctx.eval_size, ctx.data_seed)
        outputs = ctx.generator.generate_many(self.requests(ctx), label=f"alpaca_eval [{ctx.label}]")
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        (ctx.workdir / "model_outputs.json").write_text(json.dumps(
            [{"instruction": it.prompt, "output": out.text, "generator": ctx.label} for it, out in zip(items, outputs)],
            ensure_ascii=False, indent=1), encoding="utf-8")

        result = SuiteResult()
        result.add_mean("avg_length", [len(out.text) for out in outputs], higher_is_better=None).note = "characters"
        result.add_mean("finished", [out.finished for out in outputs], higher_is_better=None)
        rows = [{"id": it.id, "instruction": it.prompt, "output": out.text, "reference": it.reference,
                 "finished": out.finished, "new_tokens": out.new_tokens} for it, out in zip(items, outputs)]
        result.outputs.extend(rows)
        if not self.options.judge:
            result.not_scored.append(NotScored("win_rate", "not scored: no judge (--judge)"))
            return result
        self._judge(ctx, items, outputs, rows, len(every), result)
        return result

    def _judge(self, ctx: SuiteContext, items: list[Instruction], outputs: list[Output], rows: list[dict],
               set_size: int, result: SuiteResult) -> None:
        config = require_alpaca_eval_config(self.options.judge)
        label = config_label(config)
        pairs = [(it, out, row) for it, out, row in zip(items, outputs, rows) if it.reference is not None]
        if not pairs:
            result.not_scored.append(NotScored("win_rate", f"not scored: the alpaca_eval set in {ctx.data.label} has no reference outputs"))
            return
        annotations = judge_pairs(config, [(it.prompt, it.reference, out.text) for it, out, _ in pairs], ctx.label)
        (ctx.workdir / "annotations.json").write_text(json.dumps(annotations, ensure_ascii=False, indent=1),
                                                      encoding="utf-8")
        wins: list[float] = []
        judged: dict[int, dict] = {}  # row of the item in the set -> its annotation, for length control
        for (it, _, row), annotation in zip(pairs, annotations):
            row["preference"] = annotation.get("preference")
            row["win"] = win_of(row["preference"])
            if row["win"] is not None:
                wins.append(row["win"])
                judged[int(it.id) if it.id.isdigit() else -1 - len(judged)] = annotation
        unparsed = len(pairs) - len(wins)
        result.metrics.append(Metric("unparsed_verdicts", float(unparsed), len(pairs), higher_is_better=False,
                                     note=f"judge={label}; verdicts the judge's parser could not read"))
        if not wins:
            result.not_scored.append(NotScored("win_rate", f"not scored: judge {label} gave no readable verdict for any of {len(pairs)} items"))
            return
        note = (f"judge={label}; share of wins (ties half) vs the set's reference outputs; "
                f"{unparsed} of {len(pairs)} verdicts unreadable")
        result.add_mean("win_rate", wins, main=True).note = note
        if self.options.length_controlled:
            self._length_controlled(judged, set_size, label, result)

    def _length_controlled(self, judged: dict[int, dict], set_size: int, label: str, result: SuiteResult) -> None:
        name = "length_controlled_win_rate"
        if set_size != ALPACA_EVAL_SIZE or min(judged) < 0:
            result.not_scored.append(NotScored(name, f"not scored: alpaca-eval's length control models the {ALPACA_EVAL_SIZE} "
                                                     f"AlpacaEval instructions by row, and this set has {set_size}"))
            return
        import pandas as pd
        from alpaca_eval.metrics import get_length_controlled_winrate

        frame = pd.DataFrame(list(judged.values()), index=list(judged))
        # a cached verdict may have been asked for another model with the same answer
        frame["generator_1"], frame["generator_2"] = "reference", "model"
        try:
            lc = get_length_controlled_winrate(frame, save_weights_dir=None, is_add_glm_preference_inplace=False)
        except OSError as err:  # the hub file is fetched (or found in the hub cache) on first use
            result.not_scored.append(NotScored(name, f"not scored: alpaca-eval could not get its hub file df_gamed.csv "
                                                     f"({type(err).__name__}; offline?)"))
            return
        result.metrics.append(Metric(name, lc["length_controlled_winrate"] / 100, len(frame),
                                     note=f"judge={label}; alpaca-eval's length_controlled_v1 GLM"))
