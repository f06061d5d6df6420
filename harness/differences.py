"""Differences between methods with 95% confidence intervals.

A leaderboard cell's CI says how precisely one model was measured; whether method A beats
method B needs the CI of the *difference*. Both were scored on the same items, so the
bootstrap is paired: each draw resamples the items once (the same draw for A and B) and,
for each method, its training seeds; a method's statistic in a draw is the mean over its
drawn seeds of the metric computed on the drawn items (corpus BLEU/chrF++ from summed
sacrebleu statistics, means as sum over count). The interval is the 2.5-97.5 percentile
of A − B over 1000 draws. The per-item statistics come from
``results/<label>/items/<suite>.json`` (written with every evaluated unit).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd

ORIGINAL = "original"
BASELINE = "vanilla"
COLUMNS = ["model", "method", "versus", "suite", "metric", "difference", "ci_low", "ci_high", "significant",
           "n_items", "seeds", "seeds_versus"]


def load_item_stats(runs: list[tuple[Path, pd.DataFrame]]) -> dict[tuple, list[dict]]:
    """(model, method, suite, metric) -> per-seed item statistics, for every scored unit
    (``runs``: each run directory with its own score rows) whose directory holds them."""
    found: dict[tuple, list[dict]] = {}
    for run_dir, scores in runs:
        for model, method, seed, suite in scores[["model", "method", "seed", "suite"]].drop_duplicates().itertuples(index=False):
            label = ORIGINAL if method == ORIGINAL else f"{method}-seed{int(seed)}"
            path = Path(run_dir) / "results" / label / "items" / f"{suite}.json"
            if path.exists():
                for metric, stats in json.loads(path.read_text(encoding="utf-8")).items():
                    found.setdefault((model, method, suite, metric), []).append(stats)
    return found


@functools.lru_cache(maxsize=None)
def _scorer(kind: str):
    from sacrebleu.metrics import BLEU, CHRF

    if kind == "chrf":
        return CHRF(word_order=2)
    if kind.startswith("bleu:"):
        return BLEU(tokenize=kind.split(":", 1)[1])
    raise ValueError(f"unknown item statistic kind {kind!r}")


def finalize(kind: str, sums: np.ndarray) -> np.ndarray:
    """The metric from summed per-item vectors; ``sums`` has the vector on its last axis."""
    if kind == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums[..., 0] / sums[..., 1]
    scorer = _scorer(kind)
    flat = sums.reshape(-1, sums.shape[-1])
    values = [scorer._compute_score_from_stats([int(round(v)) for v in row]).score for row in flat]
    return np.asarray(values, dtype=float).reshape(sums.shape[:-1])


def difference(a: list[dict], b: list[dict], n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Mean-over-seeds metric of ``a`` minus that of ``b`` with its paired bootstrap CI;
    ``a`` and ``b`` are per-seed item statistics ({kind, ids, rows}). None when they share
    no items or differ in kind."""
    kinds = {s["kind"] for s in a + b}
    if len(kinds) != 1 or not a or not b:
        return None
    kind = kinds.pop()
    ids = [i for i in a[0]["ids"] if all(i in set(s["ids"]) for s in a[1:] + b)]
    if not ids:
        return None

    def array(stats):  # [seeds, items, k] in the order of ``ids``
        return np.asarray([[dict(zip(s["ids"], s["rows"]))[i] for i in ids] for s in stats], dtype=float)

    A, B = array(a), array(b)
    point = float(finalize(kind, A.sum(axis=1)).mean() - finalize(kind, B.sum(axis=1)).mean())
    rng = np.random.default_rng(seed)
    n = len(ids)
    weights = np.zeros((n_boot, n))  # how often each item is drawn
    np.add.at(weights, (np.repeat(np.arange(n_boot), n), rng.integers(0, n, n_boot * n)), 1.0)

    def boot(X):
        per_seed = finalize(kind, np.einsum("dn,snk->sdk", weights, X))  # [seeds, draws]
        picks = rng.integers(0, X.shape[0], (n_boot, X.shape[0]))  # seeds drawn with replacement
        return per_seed[picks, np.arange(n_boot)[:, None]].mean(axis=1)

    draws = boot(A) - boot(B)
    draws = draws[np.isfinite(draws)]
    low, high = (float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))) if draws.size else (None, None)
    return {"difference": point, "ci_low": low, "ci_high": high, "n_items": n, "seeds": len(a), "seeds_versus": len(b),
            "significant": low is not None and (low > 0 or high < 0)}


def compute_differences(runs: list[tuple[Path, pd.DataFrame]], scores: pd.DataFrame,
                        metrics: list[tuple[str, str]]) -> pd.DataFrame:
    """Every method against its model's original, and every other method against vanilla,
    on ``metrics`` ((suite, metric) pairs) wherever per-item statistics exist."""
    stats = load_item_stats(runs)
    rows = []
    for model in dict.fromkeys(scores["model"]):
        methods = [m for m in dict.fromkeys(scores.loc[scores["model"] == model, "method"]) if m != ORIGINAL]
        pairs = [(m, ORIGINAL) for m in methods]
        if BASELINE in methods:
            pairs += [(m, BASELINE) for m in methods if m != BASELINE]
        for method, versus in pairs:
            for suite, metric in metrics:
                a, b = stats.get((model, method, suite, metric)), stats.get((model, versus, suite, metric))
                result = difference(a, b) if a and b else None
                if result is not None:
                    rows.append({"model": model, "method": method, "versus": versus, "suite": suite, "metric": metric, **result})
    return pd.DataFrame(rows, columns=COLUMNS)
