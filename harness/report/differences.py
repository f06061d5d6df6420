"""Differences between leaderboard rows with 95% intervals, the verdict drawn from each, and
the seeds a next run needs.

A cell's interval says how precisely one row was measured; whether row A beats row B needs
the interval of the *difference* (``harness.intervals.difference_interval``: items resampled
jointly, paired by seed where both rows have the same seeds). Every fine-tuned row is
compared with its model's original, with the baseline (the plain fine-tuning row, e.g.
vanilla) and with the row it varies (an ablation's unswept method), on every main and
shown metric that has per-item statistics, and on every primary contrast of a run's
analysis plan. ``harness.report.claims`` turns the intervals into verdicts: a primary contrast's
from its group-sequential interval at the looks counted, every other one's adjusted over
the report's family. ``seeds_for_80_power`` is how many seeds per row would detect the
observed difference with 80% power at the observed variances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.config.settings import Analysis
from harness.intervals import difference_interval, seeds_for_power
from harness.report import claims

COLUMNS = ["model", "method", "versus", "suite", "metric", "difference", "ci_low", "ci_high", "significant", "p_value", "role",
           "p_adjusted", "margin", "tost_p", "tost_p_adjusted", "verdict", "adjusted_low", "adjusted_high", "looks", "interval",
           "seed_variance", "n_items", "seeds", "seeds_versus", "seeds_for_80_power", "power_note"]


@dataclass
class PlanSource:
    """A run directory as the report reads it: where its plan and looks are."""

    path: Path
    prefix: str
    manifest: dict


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


def _record(row, ref, column, iv) -> dict:
    needed, note = None, ""
    if not iv.seed_variance:
        note = "one seed on a side: seed variance not estimated"
    elif iv.estimate != 0:
        needed = seeds_for_power(iv)
        if needed is None:
            note = "not reachable by more seeds: the item noise alone is too large (more items needed)"
    return {
        "model": row.model, "method": row.label, "versus": ref.label, "suite": column.suite, "metric": column.metric,
        "difference": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "significant": iv.significant,
        "p_value": claims.p_value(iv) if iv.low is not None else None, "role": "secondary",
        "interval": iv.method, "seed_variance": iv.seed_variance, "n_items": iv.n_items, "seeds": iv.seeds,
        "seeds_versus": iv.seeds_versus, "seeds_for_80_power": needed, "power_note": note,
    }


def _analysis(sources: list[PlanSource], plans: list) -> Analysis:
    """The plan in force of the first run with one, else the first run's configured analysis."""
    if plans:
        return plans[0][1].current
    for source in sources:
        settings = (source.manifest.get("config") or {}).get("analysis")
        if settings is not None:
            return claims.analysis_of(settings, f"{source.path / 'manifest.json'} [config.analysis]")
    return Analysis()


def compute_differences(board, sources: list[PlanSource], record_looks: bool) -> tuple[pd.DataFrame, claims.Claims]:
    """Every comparison's interval and verdict; with ``record_looks`` (a rendering) a primary
    contrast at new seeds is recorded as a look, else it is only counted."""
    plans = [(source, plan) for source in sources if (plan := claims.read_plan(source.path)) is not None]
    found = claims.Claims(_analysis(sources, plans), [(source.path.name, plan) for source, plan in plans])
    records, keyed = [], {}
    for row, ref in comparisons(board):
        for column in board.columns:
            if not column.shown:
                continue
            a, b = board.cells.get((row, column.key)), board.cells.get((ref, column.key))
            if a is None or b is None or not a.stats or not b.stats:
                continue
            iv = difference_interval(a.stats, b.stats, b_fixed=ref.original, share=column.share)
            if iv is not None:
                keyed[(row, ref, column.key)] = len(records)
                records.append({**_record(row, ref, column, iv), "_iv": iv, "_margin": column.margin})
    for source, plan in plans:
        for entry, dropped in plan.contrasts():
            primary = _primary(board, source, plan, claims.Contrast.of(entry), record_looks)
            primary.notes = ([f"dropped from the plan on {dropped[:10]}"] if dropped else []) + primary.notes
            found.primary.append(primary)
            if primary.interval is None:
                continue
            row, ref, column = primary.rows
            at = keyed.get((row, ref, column.key))
            if at is None:
                at = keyed[(row, ref, column.key)] = len(records)
                records.append({**_record(row, ref, column, primary.interval), "_iv": primary.interval,
                                "_margin": column.margin})
            records[at].update(role="primary", verdict=primary.verdict, margin=primary.margin, adjusted_low=primary.low,
                               adjusted_high=primary.high, looks=len(primary.looks))
    found.family = _secondary_verdicts(records, found.analysis, "exploratory" if found.exploratory else "secondary")
    frame = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in records], columns=COLUMNS)
    return frame, found


def _primary(board, source: PlanSource, plan, contrast: claims.Contrast, record: bool):
    """A primary contrast at this rendering: a look when its seeds are new. The plan and its
    looks name the run's own rows; in a combined report they carry the run's prefix."""
    current = plan.current
    model = (source.manifest.get("config") or {}).get("model")
    rows = {r.label: r for r in board.rows if model is None or r.model == model}
    column = next((c for c in board.columns if c.key == contrast.metric), None)
    margin = claims.margin_for(contrast.metric, current.margins, column.margin if column is not None else None)
    row = rows.get(source.prefix + contrast.a)
    ref = rows.get(contrast.b if contrast.b == "original" else source.prefix + contrast.b)
    cells = [board.cells.get((r, column.key)) if r is not None and column is not None else None for r in (row, ref)]
    iv = None
    if all(c is not None and c.stats for c in cells):
        iv = difference_interval(cells[0].stats, cells[1].stats, b_fixed=ref.original, share=column.share)
    if iv is None:
        found = claims.Primary(contrast, source.path.name, None, margin=margin)
        found.notes.append("not scored yet: no look")
        return found
    seeds = (len(cells[0].stats), None if ref.original else len(cells[1].stats))
    looks = claims.looks_of(source.path, contrast)
    taken = [look.seeds for look in looks]
    if seeds in taken:
        looks = looks[:taken.index(seeds) + 1]
    else:
        recorded = claims.record_look(source.path, contrast, seeds) if record else None
        note = "not recorded: the run directory is not writable" if record else "this reading, not a rendering"
        looks = looks + [recorded or claims.Look(seeds, "", note)]
    found = claims.assess_primary(contrast, iv, looks, current, margin, source.path.name)
    found.rows = (row, ref, column)
    return found


def _secondary_verdicts(records: list[dict], analysis: Analysis, role: str) -> int:
    """Adjusted p values and verdicts of every contrast that is not primary; the family's size."""
    family = [r for r in records if r["role"] != "primary" and r["p_value"] is not None]
    for r in records:
        if r["role"] != "primary":
            r.update(role=role, verdict=claims.NOT_RESOLVED)
    for r, p in zip(family, claims.adjust([r["p_value"] for r in family], analysis.secondary)):
        r["p_adjusted"] = p
    with_margin = []
    for r in family:
        r["margin"] = claims.margin_for(f"{r['suite']}/{r['metric']}", analysis.margins, r["_margin"])
        if r["margin"] is not None:
            r["tost_p"] = claims.tost_p(r["_iv"], r["margin"])
            with_margin.append(r)
    for r, p in zip(with_margin, claims.adjust([r["tost_p"] for r in with_margin], analysis.secondary)):
        r["tost_p_adjusted"] = p
    for r in family:
        if r["p_adjusted"] < analysis.alpha:
            r["verdict"] = claims.DIFFERENT
        elif not math.isnan(r.get("tost_p_adjusted", math.nan)) and r["tost_p_adjusted"] < analysis.alpha:
            r["verdict"] = claims.EQUIVALENT
    return len(family)
