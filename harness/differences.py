"""Differences between leaderboard rows with 95% intervals and the seeds a next run needs.

A cell's interval says how precisely one row was measured; whether row A beats row B needs
the interval of the *difference* (``harness.intervals.difference_interval``: items resampled
jointly, paired by seed where both rows have the same seeds). Every fine-tuned row is
compared with its model's original, with the baseline (the plain fine-tuning row, e.g.
vanilla) and with the row it varies (an ablation's unswept method), on every main and
shown metric that has per-item statistics. ``seeds_for_80_power`` is how many seeds per
row would detect the observed difference with 80% power at the observed variances.
"""

from __future__ import annotations

import pandas as pd

COLUMNS = ["model", "method", "versus", "suite", "metric", "difference", "ci_low", "ci_high", "significant", "interval",
           "seed_variance", "n_items", "seeds", "seeds_versus", "seeds_for_80_power", "power_note"]


def comparisons(board) -> list[tuple]:
    """(row, reference row) pairs: original, baseline, and the varied row, without repeats."""
    out = []
    for model in dict.fromkeys(r.model for r in board.rows):
        rows = [r for r in board.rows if r.model == model]
        by_label = {r.label: r for r in rows}
        original = by_label.get("original")
        baseline = next((r for r in rows if r.baseline), None)
        for row in rows:
            if row.original:
                continue
            refs = [original, baseline if baseline is not row else None, by_label.get(row.varies) if row.varies else None]
            for ref in dict.fromkeys(r for r in refs if r is not None):
                out.append((row, ref))
    return out


def compute_differences(board) -> pd.DataFrame:
    from harness.intervals import difference_interval, seeds_for_power

    records = []
    for row, ref in comparisons(board):
        for column in board.columns:
            if not column.shown:
                continue
            a, b = board.cells.get((row, column.key)), board.cells.get((ref, column.key))
            if a is None or b is None or not a.stats or not b.stats:
                continue
            iv = difference_interval(a.stats, b.stats, b_fixed=ref.original)
            if iv is None:
                continue
            needed, note = None, ""
            if not iv.seed_variance:
                note = "one seed on a side: seed variance not estimated"
            elif iv.estimate != 0:
                needed = seeds_for_power(iv)
                if needed is None:
                    note = "not reachable by more seeds: the item noise alone is too large (more items needed)"
            records.append({
                "model": row.model, "method": row.label, "versus": ref.label, "suite": column.suite, "metric": column.metric,
                "difference": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "significant": iv.significant,
                "interval": iv.method, "seed_variance": iv.seed_variance, "n_items": iv.n_items, "seeds": iv.seeds,
                "seeds_versus": iv.seeds_versus, "seeds_for_80_power": needed, "power_note": note,
            })
    return pd.DataFrame(records, columns=COLUMNS)
