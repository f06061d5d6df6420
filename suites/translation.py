"""Translation quality on the WMT22 test sets: BLEU, chrF++, COMET and output length.

The model gets the method-neutral ALMA prompt in its chat template and decodes greedily
with room for a rationale (RaDis-trained models append one); the raw output is kept and
the translation is cut from it by the recorded extraction rule (``translation.extraction``,
alias ``--extraction``). Corpus metrics get a 95% bootstrap CI over sentences; COMET is
scored only with a checkpoint (``translation.comet_model``, alias ``--comet-model``), is
then the main metric (the paper's), and its segment scores are cached on disk. BLEU uses
sacrebleu's tokenizer for the target language ('zh' for Chinese, 'ja-mecab' for
Japanese, '13a' otherwise). With several directions, ``avg/<metric>`` is the mean over
directions, with per-item statistics grouped by direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

from harness.api import (
    EXTRACTION_RULES,
    CometScorer,
    CometUnavailable,
    Decoding,
    Direction,
    ItemStats,
    Metric,
    MetricSpec,
    NotScored,
    Output,
    Request,
    Suite,
    SuiteContext,
    SuiteResult,
    TranslationPair,
    UserError,
    bootstrap_ci_of,
    check_comet,
    comet_label,
    extract_translation,
    generation_limit,
    interruption,
    parse_directions,
    sample,
    translation_prompt,
    user_turn,
)


@dataclass
class TranslationOptions:
    max_new_tokens: int | None = generation_limit("Generation limit per sentence")
    extraction: str = field(
        default="first_paragraph",
        metadata={"help": "How the translation is cut from the output: first_paragraph, first_line or full.", "alias": "extraction"},
    )
    comet_model: str | None = field(
        default=None, metadata={"help": "COMET checkpoint: a hub name, a local .ckpt or its folder.", "alias": "comet_model"}
    )
    comet_batch_size: int = field(default=8, metadata={"help": "Sentences per COMET forward pass.", "above": 0})


# --- BLEU and chrF++ ------------------------------------------------------------------

BLEU_TOKENIZERS = {"zh": "zh", "ja": "ja-mecab"}  # sacrebleu's tokenizers for targets without spaces


def bleu_tokenizer(tgt_lang: str) -> str:
    """sacrebleu's convention: 'zh' for Chinese, 'ja-mecab' for Japanese, '13a' otherwise."""
    return BLEU_TOKENIZERS.get(tgt_lang, "13a")


@dataclass
class CorpusScore:
    value: float
    ci: tuple[float | None, float | None]


@dataclass
class CorpusScores:
    bleu: CorpusScore
    chrf: CorpusScore  # chrF++ (character n-grams plus word bigrams)
    sentence_chrf: list[float]


def score_corpus(hypotheses: list[str], references: list[str], tgt_lang: str, n_boot: int = 1000,
                 seed: int = 0) -> CorpusScores:
    """Corpus BLEU and chrF++ with bootstrap CIs, and sentence chrF++.

    Sentences are turned into sacrebleu's sufficient statistics once; a resample's score
    is computed from their sum, as sacrebleu's own paired bootstrap does.
    """
    scores = {}
    sentence_chrf: list[float] = []
    for key, metric in (("bleu", BLEU(tokenize=bleu_tokenizer(tgt_lang))), ("chrf", CHRF(word_order=2))):
        stats = metric._extract_corpus_statistics(hypotheses, [references])

        def corpus(rows, metric=metric):
            return metric._compute_score_from_stats(np.sum(rows, axis=0).tolist()).score

        scores[key] = CorpusScore(corpus(stats), bootstrap_ci_of(stats, corpus, n_boot=n_boot, seed=seed))
        if key == "chrf":
            sentence_chrf = [metric._compute_score_from_stats(s).score for s in stats]
    return CorpusScores(scores["bleu"], scores["chrf"], sentence_chrf)


# --- the suite --------------------------------------------------------------------------


@dataclass
class _Item:
    direction: Direction
    index: int  # position in the test file, so ids stay stable across --eval-size
    pair: TranslationPair
    output: Output
    translation: str
    comet: float | None = None


class TranslationSuite(Suite):
    name = "translation"
    description = "WMT22 test sets: BLEU, chrF++ (main; COMET when a checkpoint is given), and output length."
    Options = TranslationOptions
    role = "task"
    uses_directions = True

    def metrics(self) -> list[MetricSpec]:
        comet = bool(self.options.comet_model)
        return [
            MetricSpec("chrf++", "chrF++ (0-100)", True, main=not comet, shown=True, margin=1.0),
            MetricSpec("bleu", "BLEU (0-100)", True, shown=True, margin=1.0),
            MetricSpec("comet", "COMET (segment scores x100)", True, main=comet, shown=True, margin=1.0),
            MetricSpec("words", "words per translation", None, shown=True),
            MetricSpec("words_raw", "words per raw output", None, shown=True),
            MetricSpec("chars", "characters per translation", None),
            MetricSpec("chars_raw", "characters per raw output", None),
            MetricSpec("finished", "share of outputs that ended before the limit", None),
        ]

    def check(self) -> list[str]:
        o = self.options
        if o.extraction not in EXTRACTION_RULES:
            raise UserError(f"translation.extraction (--extraction) '{o.extraction}' is unknown; use one of {', '.join(EXTRACTION_RULES)}.")
        note = check_comet(o.comet_model, "--comet-model") if o.comet_model else None
        return [note] if note else []

    def legacy_options(self) -> dict | None:
        out = super().legacy_options()
        return None if out is None else {**out, "bootstrap_resamples": 200}  # the corpus CIs' resamples until 2026-12

    def _chosen(self, ctx: SuiteContext) -> list[tuple[Direction, int, TranslationPair]]:
        chosen: list[tuple[Direction, int, TranslationPair]] = []
        for direction in ctx.directions:
            pairs = ctx.data.translation(direction, "test")
            if not pairs:
                raise UserError(f"The {direction.name} test set in {ctx.data.label} is empty; give it at least one pair.")
            chosen += [(direction, i, p) for i, p in sample(list(enumerate(pairs)), ctx.eval_size, ctx.data_seed)]
        return chosen

    def requests(self, ctx: SuiteContext) -> list[tuple[Request, Decoding]]:
        decoding = Decoding(max_new_tokens=self.options.max_new_tokens)
        return [(Request(user_turn(translation_prompt(p))), decoding) for _, _, p in self._chosen(ctx)]

    def item_stats(self, outputs: list[dict]) -> dict[str, ItemStats]:
        stats: dict[str, ItemStats] = {}
        directions = list(dict.fromkeys(r["direction"] for r in outputs))
        for name in directions:
            rows = [r for r in outputs if r["direction"] == name]
            ids = [r["id"] for r in rows]
            hyps, refs = [r["translation"] for r in rows], [r["reference"] for r in rows]
            tokenize = bleu_tokenizer(name.split("-")[1])
            for metric, kind, scorer in (("chrf++", "chrf", CHRF(word_order=2)), ("bleu", f"bleu:{tokenize}", BLEU(tokenize=tokenize))):
                stats[f"{name}/{metric}"] = ItemStats(kind, ids, [list(map(float, v)) for v in scorer._extract_corpus_statistics(hyps, [refs])])
            for metric, values in (("words", [len(r["translation"].split()) for r in rows]),
                                   ("words_raw", [len(r["output"].split()) for r in rows])):
                stats[f"{name}/{metric}"] = ItemStats.mean(ids, values)
            if all("comet" in r for r in rows):
                stats[f"{name}/comet"] = ItemStats.mean(ids, [r["comet"] for r in rows])
        if len(directions) > 1:  # the mean over directions: each direction's metric, then their mean
            for metric in ("chrf++", "bleu", "comet"):
                parts = [stats.get(f"{d}/{metric}") for d in directions]
                if all(parts):  # (a BLEU score from statistics does not depend on the tokenizer that counted them)
                    stats[f"avg/{metric}"] = ItemStats(parts[0].kind, [i for p in parts for i in p.ids],
                                                       [r for p in parts for r in p.rows],
                                                       [d for d, p in zip(directions, parts) for _ in p.ids])
        return stats

    def evaluate(self, ctx: SuiteContext) -> SuiteResult:
        chosen = self._chosen(ctx)
        # one call for every direction: batches fill up across directions
        outputs = ctx.generator.generate_many(self.requests(ctx), label=f"translation [{ctx.label}]")
        return self.score_outputs([
            {"id": f"{d.name}/{i}", "direction": d.name, "source": p.source, "reference": p.reference, "output": o.text,
             "finished": o.finished, "new_tokens": o.new_tokens} for (d, i, p), o in zip(chosen, outputs)])

    def score_outputs(self, outputs: list[dict]) -> SuiteResult:
        """The metrics of saved outputs (id, direction, source, reference, raw output) under
        this suite's options, generating nothing: ``evaluate`` ends here, and ``radis-bench
        rescore`` re-scores a finished run with other options (e.g. another extraction rule)."""
        rule = self.options.extraction
        items = [_Item(parse_directions(row["direction"])[0], int(str(row["id"]).rsplit("/", 1)[-1]),
                       TranslationPair(*row["direction"].split("-"), row["source"], row["reference"]),
                       Output(row["output"], int(row.get("new_tokens", 0)), bool(row.get("finished", True))),
                       extract_translation(row["output"], rule)) for row in outputs]
        directions = list(dict.fromkeys(it.direction for it in items))
        result = SuiteResult()
        comet_reason = self._add_comet_scores(items)
        note = f"translation cut from the output by rule '{rule}'"
        several = len(directions) > 1
        main = "comet" if comet_reason is None else "chrf++"
        per_direction: dict[str, dict[str, float]] = {}
        for direction in directions:
            name = direction.name
            mine = [it for it in items if it.direction == direction]
            scores = score_corpus([it.translation for it in mine], [it.pair.reference for it in mine], direction.tgt)
            per_direction[name] = {"bleu": scores.bleu.value, "chrf++": scores.chrf.value}
            result.metrics.append(Metric(f"{name}/bleu", scores.bleu.value, len(mine), *scores.bleu.ci, note=note))
            result.metrics.append(Metric(f"{name}/chrf++", scores.chrf.value, len(mine), *scores.chrf.ci,
                                         main=not several and main == "chrf++", note=note))
            if comet_reason is None:
                comet = result.add_mean(f"{name}/comet", [it.comet for it in mine], main=not several)
                comet.note = f"{comet_label(self.options.comet_model)}, segment scores x100; {note}"
                per_direction[name]["comet"] = comet.value
            else:
                result.not_scored.append(NotScored(f"{name}/comet", comet_reason))
            for metric, values in (
                ("words_raw", [len(it.output.text.split()) for it in mine]),
                ("words", [len(it.translation.split()) for it in mine]),
                ("chars_raw", [len(it.output.text) for it in mine]),
                ("chars", [len(it.translation) for it in mine]),
                ("finished", [float(it.output.finished) for it in mine]),
            ):
                result.add_mean(f"{name}/{metric}", values, higher_is_better=None)
            for it, chrf in zip(mine, scores.sentence_chrf):
                row = {"id": f"{name}/{it.index}", "direction": name, "source": it.pair.source, "reference": it.pair.reference,
                       "output": it.output.text, "translation": it.translation, "chrf++": chrf,
                       "finished": it.output.finished, "new_tokens": it.output.new_tokens}
                if it.comet is not None:
                    row["comet"] = it.comet
                result.outputs.append(row)
        if several:
            for metric in ["chrf++", "bleu"] + (["comet"] if comet_reason is None else []):
                value = sum(d[metric] for d in per_direction.values()) / len(per_direction)
                result.metrics.append(Metric(f"avg/{metric}", value, len(items), main=metric == main,
                                             note=f"mean over {', '.join(per_direction)}"))
        return result

    def _add_comet_scores(self, items: list[_Item]) -> str | None:
        """Fill in each item's COMET score; the not-scored reason when there is none."""
        name = self.options.comet_model
        if not name:
            return "not scored: no COMET checkpoint (--comet-model)"
        try:
            scorer = CometScorer(name, self.options.comet_batch_size)
            scores = scorer.score([(it.pair.source, it.translation, it.pair.reference) for it in items])
        except CometUnavailable as err:
            if interruption(err):
                raise
            return f"not scored: could not load COMET model {comet_label(name)}: {err}"
        for it, score in zip(items, scores):
            it.comet = score
        return None
