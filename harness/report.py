"""Render a leaderboard and plots from one or more run directories.

``render_report`` reads each run's ``scores.csv`` (long form, one row per model, method,
seed, suite and metric) and ``manifest.json`` (methods, training losses and budgets),
and writes into one folder:

    leaderboard.csv    long form: one row per (model, method, metric) with mean, std,
                       CI, delta against the model's original and a ``best`` flag
    leaderboard.md     the table people read, plus footnotes for every missing score
    leaderboard.html   the same, self-contained (inline CSS, plots as data URIs)
    tradeoff.png       translation gain against general-ability change
    suite_<suite>.png  each suite's main metric per method with 95% CI error bars
    training_loss.png  loss curves per method, mean over seeds

Several run directories combine into one leaderboard: their score rows concatenate.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.differences import COLUMNS as DIFFERENCE_COLUMNS, compute_differences
from harness.errors import UserError
from harness.store import write_atomic

SCORE_COLUMNS = ["model", "method", "seed", "suite", "metric", "value", "n", "ci_low", "ci_high", "higher_is_better", "main", "note"]
ORIGINAL = "original"
TRANSLATION = "translation"
DEFAULT_GENERAL = "ifeval/prompt_strict"
FALLBACK_GENERAL = "retention/kl"
NOT_RUN = "no score in these runs (the suite was not run for this model and method)"
# Secondary metrics that get a column in the md/html table (by the last part of their
# name); leaderboard.csv keeps every metric.
SHOWN_METRICS = frozenset({
    "chrf++", "bleu", "comet", "words", "words_raw", "prompt_strict", "inst_strict",
    "kl", "delta_nll", "refusal_rate", "refusal_rate_gcg", "accuracy", "win_rate",
})
UNITS = {
    "chrf++": "chrF++ (0-100)",
    "bleu": "BLEU (0-100)",
    "comet": "COMET",
    "words": "words per translation",
    "words_raw": "words per raw output",
    "prompt_strict": "IFEval prompt-level strict accuracy",
    "prompt_loose": "IFEval prompt-level loose accuracy",
    "inst_strict": "IFEval instruction-level strict accuracy",
    "inst_loose": "IFEval instruction-level loose accuracy",
    "kl": "KL(original || fine-tuned), nats/token",
    "nll": "NLL of the original's answers, nats/token",
    "delta_nll": "NLL change, nats/token",
    "abs_delta_nll": "|NLL change|, nats/token",
    "refusal_rate": "refusal rate on AdvBench",
    "refusal_rate_gcg": "refusal rate on AdvBench + GCG suffix",
    "accuracy": "exact-match accuracy",
    "win_rate": "win rate vs reference",
}
CSV_COLUMNS = ["model", "method", "label", "extension", "suite", "metric", "main", "higher_is_better", "mean", "std",
               "n_seeds", "ci_low", "ci_high", "n_items", "delta", "best", "note"]
_FLAGS = {"true": True, "1": True, "false": False, "0": False, "": None}


@dataclass(frozen=True)
class Row:
    model: str
    method: str
    extension: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} (extension)" if self.extension else self.method


@dataclass(frozen=True)
class Column:
    suite: str
    metric: str
    main: bool
    higher_is_better: bool | None
    shown: bool  # gets a column in the md/html table

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.metric}"

    @property
    def arrow(self) -> str:
        return {True: " ↑", False: " ↓", None: ""}[self.higher_is_better]


@dataclass
class Cell:
    mean: float | None = None
    std: float | None = None  # only with at least two scored seeds
    n_seeds: int = 0
    ci_low: float | None = None
    ci_high: float | None = None
    n_items: float | None = None
    delta: float | None = None  # against the same model's original
    best: bool = False
    notes: list[str] = field(default_factory=list)  # reasons for missing seeds, judge names


@dataclass
class Leaderboard:
    title: str
    rows: list[Row]
    columns: list[Column]
    cells: dict[tuple[Row, str], Cell]
    scores: pd.DataFrame  # per-seed rows, typed and deduplicated
    manifests: list[dict]
    differences: pd.DataFrame = field(default_factory=pd.DataFrame)  # harness.differences.COLUMNS

    def cell(self, row: Row, column: Column) -> Cell:
        return self.cells.get((row, column.key), Cell())

    @property
    def shown(self) -> list[Column]:
        return [c for c in self.columns if c.shown]


def render_report(run_dirs: list[Path], out_dir: Path, title: str | None = None,
                  general_metric: str | None = None) -> dict[str, Path]:
    """Write the leaderboard (csv, md, html) and plots for ``run_dirs`` into ``out_dir``.

    ``general_metric`` ("suite/metric") is the y axis of the trade-off plot; by default
    IFEval ``prompt_strict``, else the retention KL. Returns the written paths by file name.
    """
    board = build_leaderboard(run_dirs, title)
    out_dir = Path(out_dir)
    plots = {"tradeoff.png": plot_tradeoff(board, general_metric)}
    for suite in dict.fromkeys(c.suite for c in board.columns if c.main):
        plots[f"suite_{_safe_name(suite)}.png"] = plot_suite(board, suite)
    plots["training_loss.png"] = plot_training_loss(board)
    plots = {name: png for name, png in plots.items() if png is not None}
    files = {
        "leaderboard.csv": leaderboard_csv(board).encode(),
        "differences.csv": differences_csv(board).encode(),
        "leaderboard.md": leaderboard_markdown(board, list(plots)).encode(),
        "leaderboard.html": leaderboard_html(board, plots).encode(),
        **plots,
    }
    written = {}
    for name, data in files.items():
        written[name] = out_dir / name
        write_atomic(out_dir / name, data)
    return written


# Loading ------------------------------------------------------------------------------------

def build_leaderboard(run_dirs: list[Path], title: str | None = None) -> Leaderboard:
    if not run_dirs:
        raise UserError("No run directory given; pass at least one folder written by `radis-bench run`.")
    frames, manifests = [], []
    for run_dir in map(Path, run_dirs):
        frames.append(_read_scores(run_dir))
        manifest = _read_manifest(run_dir)
        if manifest is not None:
            manifests.append(manifest)
    scores = _resolve_duplicates(pd.concat(frames, ignore_index=True))
    if scores.empty:
        raise UserError(f"{', '.join(map(str, run_dirs))}: scores.csv has no rows yet; let `radis-bench run` score a model first.")
    rows = _rows(scores, manifests)
    columns = _columns(scores)
    cells = _cells(scores, rows, columns)
    names = list(dict.fromkeys(m.get("name") for m in manifests if m.get("name")))
    title = title or ("radis-bench leaderboard" + (f": {', '.join(names)}" if names else ""))
    differences = compute_differences(list(zip(map(Path, run_dirs), frames)), scores,
                                      [(c.suite, c.metric) for c in columns if c.shown])
    return Leaderboard(title, rows, columns, cells, scores, manifests, differences)


def _read_scores(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "scores.csv"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a scored run directory (no scores.csv); pass the --out folder of `radis-bench run`.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable CSV ({err}); restore it or re-run `radis-bench run` to rewrite it.") from None
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}; a scores.csv has the columns {','.join(SCORE_COLUMNS)}.")
    frame = frame[SCORE_COLUMNS].apply(lambda col: col.str.strip())
    typed = frame[["model", "method", "seed", "suite", "metric", "note"]].copy()
    for name in ("value", "n", "ci_low", "ci_high"):
        typed[name] = _numbers(frame[name], name, path)
    typed["higher_is_better"] = _flags(frame["higher_is_better"], "higher_is_better", path)
    typed["main"] = _flags(frame["main"], "main", path).map(bool)
    return typed


def _numbers(texts: pd.Series, name: str, path: Path) -> pd.Series:
    numbers = pd.to_numeric(texts.where(texts != ""), errors="coerce").astype(float)
    bad = numbers.isna() & (texts != "") & (texts.str.lower() != "nan")
    if bad.any():
        line = int(bad.idxmax()) + 2
        raise UserError(f"{path} line {line}: {name} '{texts[bad].iloc[0]}' is not a number; fix or delete that row.")
    return numbers


def _flags(texts: pd.Series, name: str, path: Path) -> pd.Series:
    lowered = texts.str.lower()
    bad = ~lowered.isin(list(_FLAGS))
    if bad.any():
        line = int(bad.idxmax()) + 2
        raise UserError(f"{path} line {line}: {name} '{texts[bad].iloc[0]}' is not True, False or empty; fix or delete that row.")
    return pd.Series([_FLAGS[t] for t in lowered], index=texts.index, dtype=object)


def _read_manifest(run_dir: Path) -> dict | None:
    """The run's manifest, or None when the run has not written one (no labels or curves then)."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); restore it or re-run `radis-bench run` to rewrite it.") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} must hold a JSON object; restore it or re-run `radis-bench run` to rewrite it.")
    return manifest


def _resolve_duplicates(scores: pd.DataFrame) -> pd.DataFrame:
    """Drop repeated rows; where one score was written twice, keep a scored row over a
    not-scored one, then the later one (the later run directory, the later line)."""
    scores = scores.drop_duplicates(ignore_index=True)
    key = ["model", "method", "seed", "suite", "metric"]
    ranked = scores.assign(_scored=scores["value"].notna(), _order=range(len(scores)))
    ranked = ranked.sort_values(["_scored", "_order"], kind="stable")
    kept = ranked.drop_duplicates(key, keep="last").sort_values("_order")
    return kept.drop(columns=["_scored", "_order"]).reset_index(drop=True)


# The table ----------------------------------------------------------------------------------

def _rows(scores: pd.DataFrame, manifests: list[dict]) -> list[Row]:
    """The original first for each model, then its methods, extensions last, in manifest order."""
    described: dict[str, bool] = {}
    for manifest in manifests:
        for name, info in (manifest.get("methods") or {}).items():
            described.setdefault(name, bool((info or {}).get("extension")))
    order = [ORIGINAL] + [m for m, ext in described.items() if not ext] + [m for m, ext in described.items() if ext]
    order += [m for m in dict.fromkeys(scores["method"]) if m not in order]
    present = set(zip(scores["model"], scores["method"]))
    return [Row(model, method, described.get(method, False))
            for model in dict.fromkeys(scores["model"]) for method in order if (model, method) in present]


def _columns(scores: pd.DataFrame) -> list[Column]:
    """Main metrics first (suites in the order they were scored), then the others."""
    suites = list(dict.fromkeys(scores["suite"]))
    columns = []
    for (suite, metric), group in scores.groupby(["suite", "metric"], sort=False):
        directions = group["higher_is_better"].dropna()
        higher = bool(directions.mode().iloc[0]) if len(directions) else None
        main = bool(group["main"].any())
        columns.append(Column(suite, metric, main, higher, main or metric.rsplit("/", 1)[-1] in SHOWN_METRICS))
    return sorted(columns, key=lambda c: (not c.main, not c.shown, suites.index(c.suite)))


def _cells(scores: pd.DataFrame, rows: list[Row], columns: list[Column]) -> dict[tuple[Row, str], Cell]:
    by_key = {key: group for key, group in scores.groupby(["model", "method", "suite", "metric"], sort=False)}
    cells = {}
    for row in rows:
        for column in columns:
            group = by_key.get((row.model, row.method, column.suite, column.metric))
            if group is not None:
                cells[(row, column.key)] = _cell(group)
    for column in columns:
        for model in dict.fromkeys(r.model for r in rows):
            model_rows = [r for r in rows if r.model == model]
            original = cells.get((Row(model, ORIGINAL), column.key))
            for row in model_rows:
                cell = cells.get((row, column.key))
                if row.method != ORIGINAL and cell and cell.mean is not None and original and original.mean is not None:
                    cell.delta = cell.mean - original.mean
            _mark_best([cells.get((r, column.key)) for r in model_rows if r.method != ORIGINAL], column.higher_is_better)
    return cells


def _cell(group: pd.DataFrame) -> Cell:
    scored = group[group["value"].notna()]
    values = scored["value"].tolist()
    cell = Cell(n_seeds=len(values))
    if values:
        cell.mean = statistics.fmean(values)
        cell.std = statistics.stdev(values) if len(values) >= 2 else None
        cell.ci_low = _mean_or_none(scored["ci_low"])
        cell.ci_high = _mean_or_none(scored["ci_high"])
        cell.n_items = _mean_or_none(scored["n"])
    partial = bool(values) and len(values) < len(group)
    for seed, value, note in zip(group["seed"], group["value"], group["note"]):
        if pd.isna(value):
            text = note or "not scored (no reason recorded)"
            if partial:
                text = f"seed {seed}: {text}"
        else:
            text = note
        if text and text not in cell.notes:
            cell.notes.append(text)
    return cell


def _mean_or_none(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(values.mean()) if len(values) else None


def _mark_best(cells: list[Cell | None], higher_is_better: bool | None) -> None:
    """Flag the best fine-tuned method(s) of one model in one column; neutral metrics have none."""
    scored = [c for c in cells if c is not None and c.mean is not None]
    if higher_is_better is None or not scored:
        return
    best = (max if higher_is_better else min)(c.mean for c in scored)
    for cell in scored:
        cell.best = math.isclose(cell.mean, best, rel_tol=1e-12, abs_tol=1e-12)


# Rendering ----------------------------------------------------------------------------------

def _decimals(board: Leaderboard, column: Column) -> int:
    """One precision per column, from the size of its numbers (chrF++ 45.2, accuracy 0.412)."""
    means = [abs(c.mean) for r in board.rows if (c := board.cell(r, column)).mean is not None]
    typical = statistics.median(means) if means else 0.0
    return 1 if typical >= 10 else 2 if typical >= 1 else 3 if typical >= 0.01 or typical == 0 else 4


def _fmt(value: float, decimals: int, signed: bool = False) -> str:
    value = round(value, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


@dataclass
class _CellText:
    value: str  # "41.0 ± 1.4" or "—"
    ci: str  # "[39.8, 42.2]" or ""
    delta: str  # "+4.3" or ""
    delta_sign: int  # +1 better, -1 worse, 0 neutral or none
    best: bool
    footnotes: list[int]


class _Footnotes:
    def __init__(self):
        self.texts: list[str] = []

    def number(self, text: str) -> int:
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text) + 1


def _cell_text(board: Leaderboard, row: Row, column: Column, notes: _Footnotes) -> _CellText:
    if (row, column.key) not in board.cells:
        return _CellText("—", "", "", 0, False, [notes.number(f"{column.key}: {NOT_RUN}")])
    cell = board.cell(row, column)
    marks = [notes.number(f"{column.key}: {text}") for text in cell.notes]
    if cell.mean is None:
        return _CellText("—", "", "", 0, False, marks)
    decimals = _decimals(board, column)
    value = _fmt(cell.mean, decimals) + (f" ± {_fmt(cell.std, decimals)}" if cell.std is not None else "")
    ci = f"[{_fmt(cell.ci_low, decimals)}, {_fmt(cell.ci_high, decimals)}]" if cell.ci_low is not None and cell.ci_high is not None else ""
    delta, sign = "", 0
    if cell.delta is not None:
        delta = _fmt(cell.delta, decimals, signed=True)
        if column.higher_is_better is not None and round(cell.delta, decimals) != 0:
            sign = 1 if (cell.delta > 0) == column.higher_is_better else -1
    return _CellText(value, ci, delta, sign, cell.best, marks)


def _legend(board: Leaderboard) -> list[str]:
    mains = ", ".join(f"{c.key}{c.arrow}" for c in board.columns if c.main)
    seeds = sorted({int(n) for n in board.scores.loc[board.scores["method"] != ORIGINAL].groupby(["model", "method"])["seed"].nunique()})
    return [
        "Cells: mean ± std over training seeds (std only with two or more seeds), the 95% bootstrap CI over items "
        "(per-seed bounds averaged), and Δ against the same model's original.",
        f"Main (headline) metric of each suite: {mains}. ↑ higher is better, ↓ lower is better, no arrow: neither.",
        "Bold: best fine-tuned method of each model in that column (the original is the reference, never marked).",
        f"Seeds per fine-tuned method: {', '.join(map(str, seeds)) or 'none'}.",
    ]


def leaderboard_csv(board: Leaderboard) -> str:
    records = []
    for row in board.rows:
        for column in board.columns:
            if (row, column.key) not in board.cells:
                continue
            cell = board.cell(row, column)
            records.append({
                "model": row.model, "method": row.method, "label": row.label, "extension": row.extension,
                "suite": column.suite, "metric": column.metric, "main": column.main,
                "higher_is_better": "" if column.higher_is_better is None else column.higher_is_better,
                "mean": cell.mean, "std": cell.std, "n_seeds": cell.n_seeds, "ci_low": cell.ci_low,
                "ci_high": cell.ci_high, "n_items": cell.n_items, "delta": cell.delta, "best": cell.best,
                "note": "; ".join(cell.notes),
            })
    return pd.DataFrame(records, columns=CSV_COLUMNS).to_csv(index=False, lineterminator="\n")


def leaderboard_markdown(board: Leaderboard, plots: list[str]) -> str:
    notes = _Footnotes()
    header = ["model", "method"] + [f"{c.key}{c.arrow}" for c in board.shown]
    lines = [f"# {board.title}", "", *[f"- {line}" for line in _legend(board)], "",
             "| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * len(board.shown)]
    for row in board.rows:
        cells = [row.model, row.label]
        for column in board.shown:
            text = _cell_text(board, row, column, notes)
            value = f"**{text.value}**" if text.best else text.value
            parts = [value, text.ci, f"(Δ {text.delta})" if text.delta else ""]
            parts += [f"[{n}]" for n in text.footnotes]
            cells.append(" ".join(p for p in parts if p))
        lines.append("| " + " | ".join(cells) + " |")
    if notes.texts:
        lines += ["", "Notes:", ""] + [f"- [{i}] {text}" for i, text in enumerate(notes.texts, 1)]
    lines += ["", *_differences_markdown(board), *_methods_markdown(board), *_training_markdown(board)]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)


DIFFERENCES_NOTE = ("Each cell: method minus the row's reference (`original` or `vanilla`), mean over training seeds, "
                    "[95% CI] from a paired bootstrap over items and seeds (1000 draws); * marks a CI that excludes 0.")


def differences_csv(board: Leaderboard) -> str:
    buf = io.StringIO()
    board.differences.reindex(columns=DIFFERENCE_COLUMNS).to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


def _differences_table(board: Leaderboard) -> tuple[list[Column], list[tuple[str, str, str, list[str]]]]:
    """The columns with differences, and per (model, method, versus) its cell texts."""
    diffs = board.differences
    if diffs.empty:
        return [], []
    keyed = {(r.model, r.method, r.versus, r.suite, r.metric): r for r in diffs.itertuples(index=False)}
    columns = [c for c in board.shown if ((diffs["suite"] == c.suite) & (diffs["metric"] == c.metric)).any()]
    rows = []
    for model, method, versus in dict.fromkeys(zip(diffs["model"], diffs["method"], diffs["versus"])):
        texts = []
        for c in columns:
            r = keyed.get((model, method, versus, c.suite, c.metric))
            if r is None:
                texts.append("—")
                continue
            d = _decimals(board, c)
            ci = f" [{_fmt(r.ci_low, d, signed=True)}, {_fmt(r.ci_high, d, signed=True)}]" if r.ci_low is not None and not pd.isna(r.ci_low) else ""
            texts.append(f"{_fmt(r.difference, d, signed=True)}{ci}{' *' if r.significant else ''}")
        rows.append((model, method, versus, texts))
    return columns, rows


def _differences_markdown(board: Leaderboard) -> list[str]:
    columns, rows = _differences_table(board)
    if not rows:
        return []
    lines = ["## Differences", "", DIFFERENCES_NOTE, "",
             "| model | difference | " + " | ".join(f"{c.key}{c.arrow}" for c in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for model, method, versus, texts in rows:
        lines.append(f"| {model} | {method} − {versus} | " + " | ".join(texts) + " |")
    return lines + [""]


def _differences_html(board: Leaderboard) -> list[str]:
    columns, rows = _differences_table(board)
    if not rows:
        return []
    esc = html.escape
    head = "<th>model</th><th>difference</th>" + "".join(f"<th>{esc(c.suite)}<br>{esc(c.metric)}{esc(c.arrow)}</th>" for c in columns)
    body = "".join(
        f'<tr><td class="model">{esc(model)}</td><td class="label">{esc(method)} − {esc(versus)}</td>'
        + "".join(f'<td class="num">{esc(t)}</td>' for t in texts) + "</tr>"
        for model, method, versus, texts in rows)
    return ["<h2>Differences</h2>", f'<p class="legend">{esc(DIFFERENCES_NOTE)}</p>',
            f'<div class="scroll"><table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>']


def _method_descriptions(board: Leaderboard) -> list[tuple[str, str]]:
    """(label, description) of every method the manifests describe."""
    described: dict[str, tuple[str, str]] = {}
    for manifest in board.manifests:
        for name, info in (manifest.get("methods") or {}).items():
            info = info or {}
            described.setdefault(name, (Row("", name, bool(info.get("extension"))).label, str(info.get("description", ""))))
    return list(described.values())


def _methods_markdown(board: Leaderboard) -> list[str]:
    methods = _method_descriptions(board)
    if not methods:
        return []
    return ["## Methods", ""] + [f"- **{label}**: {description}" for label, description in methods] + [""]


def _training_table(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Budget actually used per (model, method), averaged over seeds."""
    header = ["model", "method", "seeds", "steps", "target tokens", "total tokens", "wall s", "final loss"]
    rows = []
    labels = {r.method: r.label for r in board.rows}
    for model, method, runs in _training_runs(board):
        def mean_of(key):
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            return statistics.fmean(values) if values else None
        final = [r["losses"][-1] for r in runs if r.get("losses")]
        cells = [f"{v:,.0f}" if v is not None else "—" for v in (mean_of("steps"), mean_of("target_tokens"), mean_of("total_tokens"))]
        wall = mean_of("wall_s")
        cells.append(f"{wall:,.1f}" if wall is not None else "—")
        cells.append(f"{statistics.fmean(final):.3f}" if final else "—")
        rows.append([model, labels.get(method, method), str(len(runs))] + cells)
    return header, rows


def _training_markdown(board: Leaderboard) -> list[str]:
    header, rows = _training_table(board)
    if not rows:
        return []
    return ["## Training (mean over seeds)", "", "| " + " | ".join(header) + " |",
            "|---|---|" + "---:|" * (len(header) - 2)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _training_runs(board: Leaderboard) -> list[tuple[str, str, list[dict]]]:
    runs: dict[tuple[str, str], dict[str, dict]] = {}
    for manifest in board.manifests:
        model = str((manifest.get("model") or {}).get("name") or manifest.get("name") or "")
        for method, seeds in (manifest.get("training") or {}).items():
            for seed, stats in (seeds or {}).items():
                if isinstance(stats, dict):
                    runs.setdefault((model, method), {})[str(seed)] = stats
    order = {(r.model, r.method): i for i, r in enumerate(board.rows)}
    keys = sorted(runs, key=lambda k: order.get(k, len(order)))
    return [(model, method, list(runs[(model, method)].values())) for model, method in keys]


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 24px; color: #1d1d1f; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 18px; margin-top: 28px; }
p.legend { font-size: 13px; color: #444; margin: 2px 0; }
.scroll { overflow-x: auto; margin-top: 12px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; text-align: center; font-weight: 600; white-space: nowrap; }
td.label, td.model { white-space: nowrap; }
th.main { background: #dce8f7; }
td.num { text-align: right; white-space: nowrap; }
td.best { background: #e4f4e4; } td.best .v { font-weight: 700; }
tr.original td { background: #fafafa; } tr.original td.label { font-style: italic; }
.ci { color: #666; font-size: 11px; } .d { font-size: 11px; color: #666; }
.d.up { color: #1a7f37; } .d.down { color: #c62828; }
.missing { color: #999; } sup a { color: #555; text-decoration: none; }
ol.notes { font-size: 13px; color: #333; }
figure { margin: 16px 0; } figure img { max-width: 100%; border: 1px solid #e0e0e0; }
figcaption { font-size: 12px; color: #555; }
"""


def leaderboard_html(board: Leaderboard, plots: dict[str, bytes]) -> str:
    esc = html.escape
    notes = _Footnotes()
    head = ['<th>model</th><th>method</th>'] + [
        f'<th class="{"main" if c.main else ""}" title="{esc(UNITS.get(c.metric.rsplit("/", 1)[-1], c.metric))}">'
        f'{esc(c.suite)}<br>{esc(c.metric)}{esc(c.arrow)}</th>' for c in board.shown]
    body = []
    for row in board.rows:
        tds = [f'<td class="model">{esc(row.model)}</td>', f'<td class="label">{esc(row.label)}</td>']
        for column in board.shown:
            text = _cell_text(board, row, column, notes)
            sups = "".join(f'<sup><a href="#note{n}">[{n}]</a></sup>' for n in text.footnotes)
            if text.value == "—":
                tds.append(f'<td class="num missing">—{sups}</td>')
                continue
            ci = f'<br><span class="ci">{esc(text.ci)}</span>' if text.ci else ""
            direction = {1: " up", -1: " down", 0: ""}[text.delta_sign]
            delta = f'<br><span class="d{direction}">Δ {esc(text.delta)}</span>' if text.delta else ""
            tds.append(f'<td class="num{" best" if text.best else ""}"><span class="v">{esc(text.value)}</span>{sups}{ci}{delta}</td>')
        body.append(f'<tr class="{"original" if row.method == ORIGINAL else ""}">{"".join(tds)}</tr>')
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(board.title)}</title>",
        f"<style>{_CSS}</style></head><body>", f"<h1>{esc(board.title)}</h1>",
        *[f'<p class="legend">{esc(line)}</p>' for line in _legend(board)],
        '<div class="scroll"><table class="leaderboard">', f"<thead><tr>{''.join(head)}</tr></thead>",
        f"<tbody>{''.join(body)}</tbody></table></div>",
    ]
    if notes.texts:
        parts.append('<h2>Notes</h2><ol class="notes">' + "".join(
            f'<li id="note{i}">{esc(text)}</li>' for i, text in enumerate(notes.texts, 1)) + "</ol>")
    parts += _differences_html(board) + _methods_html(board) + _training_html(board)
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, png in plots.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}"><figcaption>{esc(name)}</figcaption></figure>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _methods_html(board: Leaderboard) -> list[str]:
    methods = _method_descriptions(board)
    if not methods:
        return []
    items = "".join(f"<li><b>{html.escape(label)}</b>: {html.escape(text)}</li>" for label, text in methods)
    return [f"<h2>Methods</h2><ul>{items}</ul>"]


def _training_html(board: Leaderboard) -> list[str]:
    header, rows = _training_table(board)
    if not rows:
        return []
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if i >= 2 else ""}">{html.escape(v)}</td>' for i, v in enumerate(r)) + "</tr>"
                   for r in rows)
    return [f"<h2>Training (mean over seeds)</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]


# Plots --------------------------------------------------------------------------------------

def _colours(board: Leaderboard) -> dict[str, str]:
    """One colour per method, the same in every plot; the original is black."""
    methods = [m for m in dict.fromkeys(r.method for r in board.rows) if m != ORIGINAL]
    palette = [f"C{i}" for i in range(10)]
    return {ORIGINAL: "black", **{m: palette[i % len(palette)] for i, m in enumerate(methods)}}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _by_seed(scores: pd.DataFrame, model: str, method: str, suite: str, metric: str) -> dict[str, float]:
    rows = scores[(scores["model"] == model) & (scores["method"] == method) & (scores["suite"] == suite)
                  & (scores["metric"] == metric) & scores["value"].notna()]
    return dict(zip(rows["seed"], rows["value"]))


def _translation_by_seed(board: Leaderboard, model: str, method: str) -> dict[str, float]:
    """chrF++ per seed: ``avg/chrf++`` when scored, else the mean of the main per-direction chrF++."""
    average = _by_seed(board.scores, model, method, TRANSLATION, "avg/chrf++")
    if average:
        return average
    per_direction = [_by_seed(board.scores, model, method, TRANSLATION, c.metric) for c in board.columns
                     if c.suite == TRANSLATION and c.main and c.metric.endswith("/chrf++")]
    seeds = set.intersection(*(set(d) for d in per_direction)) if per_direction else set()
    return {s: statistics.fmean(d[s] for d in per_direction) for s in seeds}


def _general_axis(board: Leaderboard, general_metric: str | None) -> Column | None:
    keys = {c.key: c for c in board.columns}
    if general_metric is not None:
        if general_metric not in keys:
            raise UserError(f"general_metric '{general_metric}' is not in the scores; choose one of {', '.join(keys)}.")
        return keys[general_metric]
    return keys.get(DEFAULT_GENERAL) or keys.get(FALLBACK_GENERAL)


def _gains(by_seed: dict[str, float], original: dict[str, float], sign: float) -> tuple[float, float] | None:
    if not by_seed or not original:
        return None
    base = statistics.fmean(original.values())
    gains = [sign * (v - base) for v in by_seed.values()]
    return statistics.fmean(gains), statistics.stdev(gains) if len(gains) >= 2 else 0.0


def plot_tradeoff(board: Leaderboard, general_metric: str | None = None) -> bytes | None:
    """Translation gain (x) against general-ability change (y), one point per (model, method)."""
    general = _general_axis(board, general_metric)
    if general is None:
        return None
    sign = -1.0 if general.higher_is_better is False else 1.0
    colours = _colours(board)
    models = list(dict.fromkeys(r.model for r in board.rows))
    markers = ["o", "s", "^", "D", "v", "P"]
    points = []
    for row in board.rows:
        if row.method == ORIGINAL:
            continue
        x = _gains(_translation_by_seed(board, row.model, row.method), _translation_by_seed(board, row.model, ORIGINAL), 1.0)
        y = _gains(_by_seed(board.scores, row.model, row.method, general.suite, general.metric),
                   _by_seed(board.scores, row.model, ORIGINAL, general.suite, general.metric), sign)
        if x is not None and y is not None:
            points.append((row, x, y))
    if not points:
        return None
    fig = Figure(figsize=(8, 6))
    ax = fig.add_subplot()
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.plot([0], [0], marker="*", ms=16, color="black", ls="none", label="original", zorder=3)
    ax.annotate("original", (0, 0), textcoords="offset points", xytext=(8, -14), fontsize=9)
    for row, (xm, xs), (ym, ys) in points:
        label = row.label if len(models) == 1 else f"{row.label} [{row.model}]"
        ax.errorbar(xm, ym, xerr=xs or None, yerr=ys or None, fmt=markers[models.index(row.model) % len(markers)],
                    ms=8, color=colours[row.method], capsize=4, label=label, zorder=3)
        ax.annotate(label, (xm, ym), textcoords="offset points", xytext=(8, 6), fontsize=9)
    xs_all = [0.0] + [x[0] + s * x[1] for _, x, _ in points for s in (-1, 1)]
    ys_all = [0.0] + [y[0] + s * y[1] for _, _, y in points for s in (-1, 1)]
    xpad = 0.15 * (max(xs_all) - min(xs_all) or 1.0)
    ypad = 0.15 * (max(ys_all) - min(ys_all) or abs(max(ys_all, key=abs)) or 1.0)
    xlim = (min(xs_all) - xpad, max(xs_all) + xpad)
    ylim = (min(ys_all) - ypad, max(ys_all) + ypad)
    ax.fill_between([0, xlim[1]], 0, ylim[1], color="tab:green", alpha=0.08, zorder=0)
    ax.text(xlim[1], ylim[1], "ideal: translation gain,\nno general-ability loss ", ha="right", va="top",
            fontsize=9, color="darkgreen")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    source = "avg/chrf++" if any(c.key == f"{TRANSLATION}/avg/chrf++" for c in board.columns) else "mean of main per-direction chrF++"
    ax.set_xlabel(f"translation gain over the original: Δ chrF++ ({source}, points)")
    unit = UNITS.get(general.metric.rsplit("/", 1)[-1], general.metric)
    what = f"−Δ {general.key} ({unit}; sign flipped so up = better)" if sign < 0 else f"Δ {general.key} ({unit})"
    ax.set_ylabel(f"general-ability change: {what}")
    ax.set_title("Translation gain vs general-ability change\n(mean over seeds, error bars = std over seeds)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_suite(board: Leaderboard, suite: str) -> bytes | None:
    """The suite's main metric(s) per (model, method) as grouped bars with 95% CI error bars."""
    columns = [c for c in board.columns if c.suite == suite and c.main]
    if not any(board.cell(r, c).mean is not None for r in board.rows for c in columns):
        return None
    colours = _colours(board)
    models = list(dict.fromkeys(r.model for r in board.rows))
    hatches = ["", "//", "..", "xx"]
    fig = Figure(figsize=(max(6.0, 1.2 + 0.5 * len(board.rows) * len(columns)), 4.8))
    ax = fig.add_subplot()
    width = 0.8 / len(board.rows)
    unscored = []
    for i, row in enumerate(board.rows):
        positions, heights, errors = [], [], [[], []]
        for j, column in enumerate(columns):
            cell = board.cell(row, column)
            if cell.mean is None:
                continue
            positions.append(j - 0.4 + width * (i + 0.5))
            heights.append(cell.mean)
            has_ci = cell.ci_low is not None and cell.ci_high is not None
            errors[0].append(max(cell.mean - cell.ci_low, 0.0) if has_ci else 0.0)
            errors[1].append(max(cell.ci_high - cell.mean, 0.0) if has_ci else 0.0)
        label = row.label if len(models) == 1 else f"{row.label} [{row.model}]"
        if not positions:
            unscored.append(label)
            continue
        ax.bar(positions, heights, width * 0.95, color=colours[row.method],
               hatch=hatches[models.index(row.model) % len(hatches)], edgecolor="white", label=label)
        # Error bars drawn apart from the bars: bar(yerr=2xN) trips a NumPy deprecation in matplotlib.
        ax.errorbar(positions, heights, yerr=np.array(errors), fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(range(len(columns)), [f"{c.metric}{c.arrow}" for c in columns])
    names = {c.metric.rsplit("/", 1)[-1] for c in columns}
    ax.set_ylabel(UNITS.get(next(iter(names)), next(iter(names))) if len(names) == 1 else "score")
    if unscored:
        ax.set_xlabel(f"not scored: {', '.join(unscored)} (reasons in the leaderboard notes)")
    ax.set_title(f"{suite}: main metric per method (mean over seeds, error bars = 95% CI)")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_training_loss(board: Leaderboard) -> bytes | None:
    """Training loss per optimiser step for each method, mean over seeds with a ± std band."""
    runs = [(model, method, [r["losses"] for r in stats if r.get("losses")]) for model, method, stats in _training_runs(board)]
    runs = [r for r in runs if r[2]]
    if not runs:
        return None
    colours = _colours(board)
    models = list(dict.fromkeys(model for model, _, _ in runs))
    extensions = {r.method for r in board.rows if r.extension}
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for model, method, losses in runs:
        length = max(len(l) for l in losses)
        padded = np.full((len(losses), length), np.nan)
        for i, curve in enumerate(losses):
            padded[i, :len(curve)] = curve
        mean = np.nanmean(padded, axis=0)
        std = np.nanstd(padded, axis=0)
        steps = np.arange(1, length + 1)
        label = f"{method} (extension)" if method in extensions else method
        label = label if len(models) == 1 else f"{label} [{model}]"
        colour = colours.get(method, "grey")
        ax.plot(steps, mean, color=colour, lw=1.6, ls="-" if models.index(model) == 0 else "--",
                label=f"{label} ({len(losses)} seed{'s' if len(losses) > 1 else ''})")
        if len(losses) > 1:
            ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (the method's objective)")
    ax.set_title("Training loss per method (mean over seeds, band = ± std)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


# Files --------------------------------------------------------------------------------------

def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
