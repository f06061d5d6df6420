"""Render a leaderboard and plots from one or more run directories.

``render_report`` reads each run's ``scores.csv`` (long form, one row per model, row label,
seed, suite and metric), ``manifest.json`` (the rows: method, variant settings, budget;
the suites' metric declarations; training losses) and the per-item statistics beside each
unit, and writes into one folder:

    leaderboard.csv    one row per (model, row, metric): mean, per-seed values, interval,
                       Δ against the model's original with its interval, best / tied flags
    differences.csv    every row against its original, the baseline (plain fine-tuning) and
                       the row it varies, and every primary contrast of a run's analysis plan,
                       with intervals, adjusted verdicts and the seeds 80% power would need
    leaderboard.md     the tables people read: claims, main metrics, other metrics, differences
    leaderboard.html   the same, self-contained (inline CSS, plots as data URIs)
    *.png              see ``harness.plots``

Intervals come from ``harness.intervals``: item bootstrap plus a training-seed t term,
paired by seed where two rows share their seeds; verdicts from ``harness.claims`` (a
rendering at new seed counts records a look at each primary contrast). Several run
directories combine into one leaderboard; two runs that hold the same row and seed computed
differently are refused unless one gets a label prefix (``prefixes``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.store import write_atomic

SCORE_COLUMNS = ["model", "method", "seed", "suite", "metric", "value", "n", "ci_low", "ci_high", "higher_is_better", "main", "note"]
ORIGINAL = "original"
NOT_RUN = "no score in these runs (the suite was not run for this model and row)"
ONE_SEED = "one training seed: the interval covers item noise only, seed variance not estimated"
INTERVALS = ("95% intervals: a bootstrap over test items (2000 draws, the same draw for every seed and for both sides "
             "of a difference) combined with the spread over training seeds (t, with Satterthwaite degrees of freedom in which "
             "the seed part enters with its share to the first power; paired by seed where two rows have the same seeds; a share "
             "of 0/1 items gets a score interval inside [0, 1], a difference of two at least one discordant item's variance; "
             "harness/intervals.py).")
_FLAGS = {"true": True, "1": True, "false": False, "0": False, "": None}
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.+@=-]+/)+[\w.+@=-]*")
_WRITTEN_TO = re.compile(r",? written to " + _ABSOLUTE_PATH.pattern)


def public(text: str) -> str:
    """A note as it may be published: no absolute path of the machine that wrote it. A clause
    saying where a file was written names only that machine's cache and is dropped, so units
    made before and after a suite stopped saying it share one note."""
    return _ABSOLUTE_PATH.sub("<local path>", _WRITTEN_TO.sub("", text))


@dataclass(frozen=True)
class Row:
    model: str
    label: str
    method: str  # the registered method ('original' for the original model)
    extension: bool = False
    varies: str | None = None  # the row this one is a variant of
    baseline: bool = False  # plain fine-tuning, the reference of every other row
    budget_differs: tuple[str, ...] = ()
    sweep: tuple[tuple[str, str], ...] = ()  # (axis, value) of a row made by a sweep

    @property
    def name(self) -> str:
        return f"{self.label} (extension)" if self.extension else self.label

    @property
    def original(self) -> bool:
        return self.label == ORIGINAL


@dataclass(frozen=True)
class Column:
    suite: str
    metric: str
    main: bool
    higher_is_better: bool | None
    shown: bool  # in the table of other metrics
    unit: str
    role: str = "general"  # the suite's role: "task" (the skill taught) or "general"
    share: bool = False  # a share of 0/1 items (harness.intervals.is_share): score intervals, a floor for differences
    margin: float | None = None  # the suite's equivalence margin for it (MetricSpec.margin)

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.metric}"

    @property
    def arrow(self) -> str:
        return {True: " ↑", False: " ↓", None: ""}[self.higher_is_better]


@dataclass
class Cell:
    mean: float | None = None
    seeds: dict[str, float] = field(default_factory=dict)  # per-seed values
    interval: object = None  # harness.intervals.Interval of the mean, when item statistics exist
    ci_low: float | None = None
    ci_high: float | None = None
    n_items: float | None = None
    delta: float | None = None  # against the same model's original
    delta_interval: object = None
    best: bool = False  # significantly ahead of every other row (adjusted)
    tied: bool = False  # not significantly behind the top one (which is not best)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, dict] = field(default_factory=dict)  # seed -> item statistics

    @property
    def one_seed(self) -> bool:
        return self.interval is not None and not self.interval.seed_variance


@dataclass
class Leaderboard:
    title: str
    rows: list[Row]
    columns: list[Column]
    cells: dict[tuple[Row, str], Cell]
    scores: pd.DataFrame
    manifests: list[dict]
    differences: pd.DataFrame
    descriptions: dict[str, tuple[str, str]]  # label -> (description, citation)
    claims: object = None  # harness.differences.Claims: the plan, the primary contrasts, the secondary family

    def verdict(self, row: Row, versus: str, column: Column) -> str | None:
        """The verdict of a row against another on a column, as differences.csv holds it."""
        found = self.differences[(self.differences["model"] == row.model) & (self.differences["method"] == row.label)
                                 & (self.differences["versus"] == versus) & (self.differences["suite"] == column.suite)
                                 & (self.differences["metric"] == column.metric)]
        return found["verdict"].iloc[0] if len(found) else None

    def cell(self, row: Row, column: Column) -> Cell:
        return self.cells.get((row, column.key), Cell())

    @property
    def main(self) -> list[Column]:
        return [c for c in self.columns if c.main]

    @property
    def others(self) -> list[Column]:
        return [c for c in self.columns if c.shown and not c.main]

    @property
    def several_models(self) -> bool:
        return len({r.model for r in self.rows}) > 1


def render_report(run_dirs: list[Path], out_dir: Path, title: str | None = None, general_metric: str | None = None,
                  prefixes: dict[str, str] | None = None) -> dict[str, Path]:
    """Write the leaderboard (csv, md, html), the differences and the plots for ``run_dirs``
    into ``out_dir``; ``prefixes`` maps a run directory (as given) to a prefix for its row
    labels. ``general_metric`` ("suite/metric") is the only y axis of the trade-off plot
    (default: every general suite's main metric). Returns the written paths by file name."""
    from harness.plots import all_plots

    board = build_leaderboard(run_dirs, title, prefixes, record_looks=True)
    out_dir = Path(out_dir)
    plots = all_plots(board, general_metric)
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

@dataclass
class _Run:
    path: Path
    prefix: str
    scores: pd.DataFrame
    manifest: dict


def build_leaderboard(run_dirs: list[Path], title: str | None = None, prefixes: dict[str, str] | None = None,
                      record_looks: bool = False) -> Leaderboard:
    """The leaderboard of ``run_dirs``; ``record_looks``: it is rendered, so a primary contrast at
    new seeds is a look recorded in its run directory (``harness.claims``)."""
    if not run_dirs:
        raise UserError("No run directory given; pass at least one folder written by `radis-bench run`.")
    prefixes = prefixes or {}
    unknown = [p for p in prefixes if p not in map(str, run_dirs)]
    if unknown:
        raise UserError(f"--prefix names {unknown[0]}, which is not one of the run directories given; use --prefix RUN_DIR=PREFIX.")
    runs = []
    for run_dir in map(Path, run_dirs):
        scores = _read_scores(run_dir)
        prefix = prefixes.get(str(run_dir), "")
        if prefix:
            scores["method"] = [m if m == ORIGINAL else prefix + m for m in scores["method"]]
        runs.append(_Run(run_dir, prefix, scores, {**(_read_manifest(run_dir) or {}), "_prefix": prefix}))
    _refuse_conflicts(runs)
    scores = pd.concat([r.scores for r in runs], ignore_index=True)
    scores = scores.drop_duplicates(["model", "method", "seed", "suite", "metric"], ignore_index=True)
    if scores.empty:
        raise UserError(f"{', '.join(map(str, run_dirs))}: scores.csv has no rows yet; let `radis-bench run` score a model first.")
    rows, descriptions = _rows(scores, runs)
    stats = _item_stats(runs)
    columns = _columns(scores, runs, stats)
    cells = _cells(scores, rows, columns, stats)
    names = list(dict.fromkeys(r.manifest.get("name") for r in runs if r.manifest.get("name")))
    titles = list(dict.fromkeys((r.manifest.get("config") or {}).get("title") for r in runs))
    title = title or (titles[0] if len(runs) == 1 and titles[0] else None)  # a run's own title, as `run` renders it
    title = title or ("radis-bench leaderboard" + (f": {', '.join(names)}" if names else ""))
    from harness.differences import PlanSource, compute_differences

    board = Leaderboard(title, rows, columns, cells, scores, [r.manifest for r in runs], pd.DataFrame(), descriptions)
    board.differences, board.claims = compute_differences(board, [PlanSource(r.path, r.prefix, r.manifest) for r in runs],
                                                          record_looks)
    _mark_best(board)
    return board


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
    typed["run"] = str(run_dir)
    typed["cell"] = [ORIGINAL if m == ORIGINAL else f"{m}-seed{s}" for m, s in zip(typed["method"], typed["seed"])]
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


def _unit_key(run: _Run, cell: str, suite: str) -> str | None:
    found = _read_json(run.path / "results" / cell / f"{suite}.json")
    return found.get("key") if isinstance(found, dict) else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _unprefixed(run: _Run, label: str) -> str:
    return label[len(run.prefix):] if run.prefix and label.startswith(run.prefix) else label


def _refuse_conflicts(runs: list[_Run]) -> None:
    """Two runs holding the same row, seed and suite computed under different unit keys
    would silently replace each other's numbers: refuse with the settings that differ."""
    seen: dict[tuple, tuple[_Run, str | None]] = {}
    for run in runs:
        units = run.scores[["model", "method", "seed", "suite", "cell"]].drop_duplicates()
        for model, label, seed, suite, cell in units.itertuples(index=False):
            own_cell = cell if label == ORIGINAL else f"{_unprefixed(run, label)}-seed{seed}"
            key = _unit_key(run, own_cell, suite)
            earlier = seen.setdefault((model, label, seed, suite), (run, key))
            if earlier[0] is not run and earlier[1] != key:
                what = f"{label}" + (f" seed {seed}" if seed != "" else "")
                raise UserError(f"{earlier[0].path} and {run.path} both hold {what} on {suite} ({model}) computed differently "
                                f"({_settings_diff(earlier[0], run, _unprefixed(run, label), suite)}); give one run a label "
                                f"prefix, e.g. --prefix {run.path}=v2-, or report them apart.")


def _settings_diff(a: _Run, b: _Run, label: str, suite: str) -> str:
    def flat(obj, prefix=""):
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix.rstrip("."): json.dumps(obj, sort_keys=True, default=str)}

    def settings(run: _Run) -> dict:
        m = run.manifest
        row = (m.get("methods") or {}).get(label, {})
        return flat({"options": row.get("options"), "budget": m.get("budget"), "lora": m.get("lora"),
                     "suite": ((m.get("suites") or {}).get(suite) or {}).get("options"), "data": (m.get("data") or {}).get("file_sha256"),
                     "model": (m.get("model") or {}).get("fingerprint"), "config": {k: (m.get("config") or {}).get(k) for k in
                                                                                   ("train_size", "eval_size", "suite_sizes", "data_seed", "pairs", "max_new_tokens")}})
    sa, sb = settings(a), settings(b)
    differing = [k for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
    if not differing:
        return "their unit keys differ; the manifests do not say why"
    shown = [f"{k}: {sa.get(k, '—')} vs {sb.get(k, '—')}" for k in differing[:4]]
    return "; ".join(shown) + (f"; and {len(differing) - 4} more" if len(differing) > 4 else "")


# The rows and columns -------------------------------------------------------------------------

def _baseline_name() -> str | None:
    """The registered baseline method, for manifests written before rows declared it."""
    try:
        from harness import registry

        cls = registry.baseline_method()
    except UserError:
        return None
    return cls.name if cls is not None else None


def _rows(scores: pd.DataFrame, runs: list[_Run]) -> tuple[list[Row], dict[str, tuple[str, str]]]:
    """The original first for each model, then its rows in manifest order, extensions last."""
    info: dict[str, dict] = {}
    renamed: dict[str, str] = {}  # prefixed label -> its label in its own run
    baseline = None
    for run in runs:
        for label, row in (run.manifest.get("methods") or {}).items():
            row = row or {}
            full = run.prefix + label
            varies = row.get("varies")
            info.setdefault(full, {**row, "varies": run.prefix + varies if varies else None})
            if run.prefix:
                renamed[full] = label
            if row.get("baseline"):
                baseline = baseline or full
    for full, label in renamed.items():  # a prefixed row is compared with the same row of another run
        if info[full]["varies"] is None and label in info:
            info[full]["varies"] = label
    fallback = _baseline_name()
    described = {}
    ordered = [label for label, row in info.items() if not row.get("extension")] + [l for l, r in info.items() if r.get("extension")]
    ordered += [m for m in dict.fromkeys(scores["method"]) if m not in ordered and m != ORIGINAL]
    present = set(zip(scores["model"], scores["method"]))
    rows = []
    for model in dict.fromkeys(scores["model"]):
        if (model, ORIGINAL) in present:
            rows.append(Row(model, ORIGINAL, ORIGINAL))
        for label in ordered:
            if (model, label) not in present:
                continue
            row = info.get(label, {})
            method = row.get("method") or label
            is_baseline = bool(row.get("baseline")) if "baseline" in row else (baseline is None and method == fallback and label == method)
            rows.append(Row(model, label, method, bool(row.get("extension")), row.get("varies"), is_baseline,
                            tuple(row.get("budget_differs") or ()), tuple(sorted((row.get("sweep") or {}).items()))))
            described.setdefault(label, (str(row.get("description", "")), str(row.get("citation", ""))))
    return rows, described


def _declared(runs: list[_Run], suite: str) -> tuple[dict[str, dict], str]:
    """A suite's metric declarations and role: from a manifest, else from the installed suite.
    A manifest written before suites declared equivalence margins takes the installed suite's."""
    try:
        from harness import registry

        cls = registry.get_suite(suite)
        installed, role = {m.name: m.to_dict() for m in cls().metrics()}, cls.role
    except (UserError, TypeError):
        installed, role = {}, "general"
    for run in runs:
        found = (run.manifest.get("suites") or {}).get(suite) or {}
        if found.get("metrics"):
            return ({m["name"]: {"margin": installed.get(m["name"], {}).get("margin"), **m} for m in found["metrics"]},
                    found.get("role", "general"))
    return installed, role


def _columns(scores: pd.DataFrame, runs: list[_Run], stats: dict[tuple, dict]) -> list[Column]:
    """Main metrics first (suites in the order they were scored), then the shown ones, then the rest."""
    from harness.intervals import is_share

    suites = list(dict.fromkeys(scores["suite"]))
    declared = {suite: _declared(runs, suite) for suite in suites}
    scored_main = set(scores.loc[scores["main"].astype(bool), "suite"])
    columns = []
    for (suite, metric), group in scores.groupby(["suite", "metric"], sort=False):
        specs, role = declared[suite]
        spec = specs.get(metric.rsplit("/", 1)[-1], {})
        directions = group["higher_is_better"].dropna()
        higher = bool(directions.mode().iloc[0]) if len(directions) else spec.get("higher_is_better")
        # a suite whose main metric is not scored still shows it (with the reason) where it would be
        main = bool(group["main"].any()) or (suite not in scored_main and bool(spec.get("main")))
        share = is_share([st for (_, _, s, m), seeds in stats.items() if (s, m) == (suite, metric) for st in seeds.values()])
        columns.append(Column(suite, metric, main, higher, main or bool(spec.get("shown")), spec.get("unit") or metric, role, share,
                              spec.get("margin")))
    return sorted(columns, key=lambda c: (not c.main, not c.shown, suites.index(c.suite)))


def _item_stats(runs: list[_Run]) -> dict[tuple, dict]:
    """(model, label, suite, metric) -> {seed: item statistics}, wherever a run holds them."""
    found: dict[tuple, dict] = {}
    for run in runs:
        units = run.scores[["model", "method", "seed", "suite"]].drop_duplicates()
        for model, label, seed, suite in units.itertuples(index=False):
            cell = ORIGINAL if label == ORIGINAL else f"{_unprefixed(run, label)}-seed{seed}"
            stats = _read_json(run.path / "results" / cell / "items" / f"{suite}.json") or {}
            for metric, st in stats.items():
                found.setdefault((model, label, suite, metric), {})[str(seed)] = st
    return found


def _cells(scores: pd.DataFrame, rows: list[Row], columns: list[Column], stats: dict) -> dict[tuple[Row, str], Cell]:
    from harness.intervals import difference_interval, mean_interval, settled

    by_key = {key: group for key, group in scores.groupby(["model", "method", "suite", "metric"], sort=False)}
    cells = {}
    for row in rows:
        for column in columns:
            group = by_key.get((row.model, row.label, column.suite, column.metric))
            if group is not None:
                cells[(row, column.key)] = _cell(group, stats.get((row.model, row.label, column.suite, column.metric), {}),
                                                 row.original, column.share, mean_interval)
    for column in columns:
        for model in dict.fromkeys(r.model for r in rows):
            original = cells.get((Row(model, ORIGINAL, ORIGINAL), column.key))
            if original is None or original.mean is None:
                continue
            for row in rows:
                cell = cells.get((row, column.key))
                if row.model != model or row.original or cell is None or cell.mean is None:
                    continue
                cell.delta = settled(cell.mean - original.mean, max(abs(cell.mean), abs(original.mean)))
                if cell.stats and original.stats:
                    cell.delta_interval = difference_interval(cell.stats, original.stats, b_fixed=True, share=column.share)
    return cells


def _cell(group: pd.DataFrame, stats: dict, fixed: bool, share: bool, mean_interval) -> Cell:
    scored = group[group["value"].notna()]
    cell = Cell(seeds={str(s): float(v) for s, v in zip(scored["seed"], scored["value"])})
    if len(scored):
        cell.mean = statistics.fmean(scored["value"])
        cell.n_items = float(scored["n"].dropna().mean()) if scored["n"].notna().any() else None
        usable = {s: st for s, st in stats.items() if s in cell.seeds}
        if usable and len(usable) == len(cell.seeds):
            cell.stats = usable
            cell.interval = mean_interval(usable, fixed=fixed, share=share)
        if cell.interval is not None and cell.interval.low is not None:
            cell.ci_low, cell.ci_high = cell.interval.low, cell.interval.high
        elif len(scored) == 1:  # one unit and no item statistics: the suite's own interval
            cell.ci_low, cell.ci_high = scored["ci_low"].iloc[0], scored["ci_high"].iloc[0]
            cell.ci_low = None if pd.isna(cell.ci_low) else float(cell.ci_low)
            cell.ci_high = None if pd.isna(cell.ci_high) else float(cell.ci_high)
    partial = bool(len(scored)) and len(scored) < len(group)
    for seed, value, note in zip(group["seed"], group["value"], group["note"]):
        text = public(note) if not pd.isna(value) else public(note or "not scored (no reason recorded)")
        if pd.isna(value) and partial:
            text = f"seed {seed}: {text}"
        if text and text not in cell.notes:
            cell.notes.append(text)
    return cell


def _mark_best(board: Leaderboard) -> None:
    """In each column with a direction, the top fine-tuned row of each model is best only
    when it is significantly ahead of every other fine-tuned row, its comparisons adjusted
    together by the report's rule (Holm by default); otherwise every row not significantly
    behind the top is marked tied."""
    from harness.claims import adjust, p_value
    from harness.intervals import difference_interval

    analysis = board.claims.analysis
    for column in board.columns:
        if column.higher_is_better is None:
            continue
        for model in dict.fromkeys(r.model for r in board.rows):
            scored = [board.cells[(r, column.key)] for r in board.rows
                      if r.model == model and not r.original and (r, column.key) in board.cells
                      and board.cells[(r, column.key)].mean is not None]
            if len(scored) < 2 or not all(c.stats for c in scored):
                continue
            scored.sort(key=lambda c: c.mean, reverse=column.higher_is_better)
            top = scored[0]
            found = [difference_interval(top.stats, cell.stats, share=column.share) for cell in scored[1:]]
            p = adjust([p_value(iv) if iv is not None and iv.low is not None else 1.0 for iv in found], analysis.secondary)
            behind = [bool(q < analysis.alpha) for q in p]
            if all(behind):
                top.best = True
                continue
            for cell, is_behind in zip(scored, [False] + behind):
                cell.tied = not is_behind


# Rendering ------------------------------------------------------------------------------------

def decimals(board: Leaderboard, column: Column) -> int:
    """One precision per column, from the size of its numbers (chrF++ 45.2, accuracy 0.412)."""
    means = [abs(c.mean) for r in board.rows if (c := board.cell(r, column)).mean is not None]
    typical = statistics.median(means) if means else 0.0
    return 1 if typical >= 10 else 2 if typical >= 1 else 3 if typical >= 0.01 or typical == 0 else 4


def fmt(value: float, digits: int, signed: bool = False) -> str:
    value = round(value, digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def interval_text(low, high, digits: int, signed: bool = False) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return ""
    return f"[{fmt(low, digits, signed)}, {fmt(high, digits, signed)}]"


class _Notes:
    def __init__(self):
        self.texts: list[str] = []

    def number(self, text: str) -> int:
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text) + 1


@dataclass
class _Text:
    value: str  # "19.0" or "—"
    ci: str
    delta: str  # "+5.0 [+3.6, +6.5]*" or ""
    delta_sign: int  # +1 better, -1 worse, 0 neutral or none
    mark: str  # "best", "tied" or ""
    notes: list[int]
    hover: str  # per-seed values


def _text(board: Leaderboard, row: Row, column: Column, notes: _Notes) -> _Text:
    if (row, column.key) not in board.cells:
        return _Text("—", "", "", 0, "", [notes.number(f"{column.key}: {NOT_RUN}")], "")
    cell = board.cell(row, column)
    marks = [notes.number(f"{column.key}: {text}") for text in cell.notes]
    if cell.mean is None:
        return _Text("—", "", "", 0, "", marks, "")
    d = decimals(board, column)
    ci = interval_text(cell.ci_low, cell.ci_high, d) + (" ‡" if cell.one_seed else "")
    if cell.one_seed:
        marks.append(notes.number(f"‡ {ONE_SEED}"))
    delta, sign = "", 0
    if cell.delta is not None:
        iv = cell.delta_interval
        delta = fmt(cell.delta, d, signed=True)
        if iv is not None:
            delta += f" {interval_text(iv.low, iv.high, d, signed=True)}{MARKS.get(board.verdict(row, ORIGINAL, column), '')}"
        if column.higher_is_better is not None and round(cell.delta, d) != 0:
            sign = 1 if (cell.delta > 0) == column.higher_is_better else -1
    hover = "seeds: " + ", ".join(f"{s}: {fmt(v, d)}" for s, v in cell.seeds.items()) if len(cell.seeds) > 1 else ""
    return _Text(fmt(cell.mean, d), ci, delta, sign, "best" if cell.best else "tied" if cell.tied else "", marks, hover)


def _row_name(row: Row, notes: _Notes) -> str:
    name = row.name
    if row.budget_differs:
        name += f" †{notes.number('† budget differs from the shared one (the equal-budget comparison does not hold for this row): ' + '; '.join(row.budget_differs))}"
    return name


def _seeds(board: Leaderboard, row: Row) -> str:
    found = {s for (r, _), c in board.cells.items() if r == row for s in c.seeds}
    return "—" if row.original else str(len(found))


def legend(board: Leaderboard) -> list[str]:
    mains = ", ".join(f"{c.key}{c.arrow}" for c in board.main)
    return [
        "Each cell: the mean over training seeds and its 95% interval; Δ: the row minus the same model's original, "
        "with its interval (* different, ≡ equivalent, after adjustment: see Differences).",
        INTERVALS,
        f"Main metric of each suite: {mains}. ↑ higher is better, ↓ lower is better, no arrow: neither.",
        "Bold: the best fine-tuned row of a column, significantly ahead of every other one (adjusted together); ≈: tied "
        "for best (the top row does not beat these significantly).",
    ]


def _value(text: _Text, markdown: bool = True) -> str:
    if text.mark == "best":
        return f"**{text.value}**" if markdown else text.value
    return f"≈{text.value}" if text.mark == "tied" else text.value


def _md_table(board: Leaderboard, columns: list[Column], notes: _Notes, with_delta: bool) -> list[str]:
    header = (["model"] if board.several_models else []) + ["method", "seeds"]
    for c in columns:
        header.append(f"{c.suite} {c.metric}{c.arrow}")
        if with_delta:
            header.append(f"Δ {c.metric.rsplit('/', 1)[-1]}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * (len(header) - len(columns) * (2 if with_delta else 1))
             + "---:|" * (len(columns) * (2 if with_delta else 1))]
    for row in board.rows:
        cells = ([row.model] if board.several_models else []) + [_row_name(row, notes), _seeds(board, row)]
        for c in columns:
            t = _text(board, row, c, notes)
            cells.append(" ".join(p for p in [_value(t), t.ci] + [f"[{n}]" for n in t.notes] if p))
            if with_delta:
                cells.append(t.delta)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def leaderboard_markdown(board: Leaderboard, plots: list[str]) -> str:
    notes = _Notes()
    lines = [f"# {board.title}", "", *[f"- {line}" for line in legend(board)], "", *claims_markdown(board), "## Main metrics", ""]
    lines += _md_table(board, board.main, notes, with_delta=True)
    if board.others:
        lines += ["", "## Other metrics", ""] + _md_table(board, board.others, notes, with_delta=False)
    if notes.texts:
        lines += ["", "Notes:", ""] + [f"- [{i}] {text}" for i, text in enumerate(notes.texts, 1)]
    lines += ["", *differences_markdown(board), *methods_markdown(board), *training_markdown(board)]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)


def leaderboard_csv(board: Leaderboard) -> str:
    records = []
    for row in board.rows:
        for column in board.columns:
            if (row, column.key) not in board.cells:
                continue
            cell = board.cell(row, column)
            iv, div = cell.interval, cell.delta_interval
            records.append({
                "model": row.model, "method": row.label, "label": row.name, "base_method": row.method,
                "extension": row.extension, "varies": row.varies or "", "budget_differs": "; ".join(row.budget_differs),
                "suite": column.suite, "metric": column.metric, "main": column.main,
                "higher_is_better": "" if column.higher_is_better is None else column.higher_is_better,
                "mean": cell.mean, "n_seeds": len(cell.seeds),
                "seed_values": ";".join(f"{s}={v:.6g}" for s, v in cell.seeds.items()),
                "std": statistics.stdev(cell.seeds.values()) if len(cell.seeds) > 1 else None,
                "ci_low": cell.ci_low, "ci_high": cell.ci_high, "interval": iv.method if iv is not None else "",
                "seed_variance_estimated": "" if iv is None else iv.seed_variance, "n_items": cell.n_items,
                "delta": cell.delta, "delta_low": div.low if div is not None else None,
                "delta_high": div.high if div is not None else None, "best": cell.best, "tied": cell.tied,
                "note": "; ".join(cell.notes),
            })
    columns = ["model", "method", "label", "base_method", "extension", "varies", "budget_differs", "suite", "metric",
               "main", "higher_is_better", "mean", "n_seeds", "seed_values", "std", "ci_low", "ci_high", "interval",
               "seed_variance_estimated", "n_items", "delta", "delta_low", "delta_high", "best", "tied", "note"]
    return pd.DataFrame(records, columns=columns).to_csv(index=False, lineterminator="\n", float_format="%.6g")


def differences_csv(board: Leaderboard) -> str:
    from harness.differences import COLUMNS

    buf = io.StringIO()
    board.differences.reindex(columns=COLUMNS).to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue()


def _difference_cells(board: Leaderboard, columns: list[Column]) -> list[tuple[str, str, str, list[str]]]:
    diffs = board.differences
    if diffs.empty:
        return []
    keyed = {(r.model, r.method, r.versus, r.suite, r.metric): r for r in diffs.itertuples(index=False)}
    out = []
    for model, method, versus in dict.fromkeys(zip(diffs["model"], diffs["method"], diffs["versus"])):
        texts = []
        for c in columns:
            r = keyed.get((model, method, versus, c.suite, c.metric))
            if r is None:
                texts.append("—")
                continue
            d = decimals(board, c)
            text = fmt(r.difference, d, signed=True) + f" {interval_text(r.ci_low, r.ci_high, d, signed=True)}"
            text += MARKS.get(r.verdict, "")
            text += "" if r.seed_variance else " ‡"
            if not pd.isna(r.seeds_for_80_power):
                text += f" ({int(r.seeds_for_80_power)})"
            elif r.power_note:
                text += " (—)"
            texts.append(text.strip())
        out.append((model, method, versus, texts))
    return out


MARKS = {"different": "*", "equivalent": "≡"}  # the verdicts after adjustment; "not resolved" has none
DIFFERENCES_NOTE = ("Each cell: the row minus the reference (its original, the baseline, or the row it varies), mean over "
                    "training seeds, [95% interval], then the verdict after adjustment (see Claims): * different, "
                    "≡ equivalent within the metric's margin, no mark: not resolved; ‡ one training seed on a side "
                    "(seed variance not estimated); (N): seeds per row that would give 80% power to detect this difference "
                    "at the observed variances (—: not reachable by more seeds, the item noise alone is too large).")


def claims_section(board: Leaderboard):
    """The claims section (``harness.claims.describe``) with numbers as their columns print them."""
    from harness.claims import describe

    digits = {c.key: decimals(board, c) for c in board.columns}
    return describe(board.claims, lambda value, key, signed: fmt(value, digits.get(key, 3), signed))


def claims_markdown(board: Leaderboard) -> list[str]:
    if board.claims.exploratory and board.differences.empty:
        return []  # nothing is compared: nothing is claimed
    section = claims_section(board)
    lines = ["## Claims", ""] + [line for p in section.paragraphs for line in (p, "")]
    if section.rows:
        lines += ["| " + " | ".join(section.header) + " |", "|" + "---|" * 3 + "---:|" * 5 + "---|"]
        lines += ["| " + " | ".join(row) + " |" for row in section.rows] + [""]
    return lines + [f"- {note}" for note in section.notes] + ([""] if section.notes else [])


def differences_markdown(board: Leaderboard) -> list[str]:
    columns = board.main
    rows = _difference_cells(board, columns)
    if not rows:
        return []
    header = (["model"] if board.several_models else []) + ["difference"] + [f"{c.key}{c.arrow}" for c in columns]
    exploratory = ["**Exploratory** (no analysis plan): every contrast below.", ""] if board.claims.exploratory else []
    lines = ["## Differences", "", *exploratory, DIFFERENCES_NOTE, "", INTERVALS, "", "| " + " | ".join(header) + " |",
             "|" + "---|" * (len(header) - len(columns)) + "---:|" * len(columns)]
    for model, method, versus, texts in rows:
        lines.append("| " + " | ".join(([model] if board.several_models else []) + [f"{method} − {versus}"] + texts) + " |")
    return lines + ["", "Every shown metric's differences are in differences.csv.", ""]


def methods_markdown(board: Leaderboard) -> list[str]:
    if not board.descriptions:
        return []
    lines = ["## Methods", ""]
    for label, (description, citation) in board.descriptions.items():
        lines.append(f"- **{label}**: {description}" + (f" ({citation})" if citation else ""))
    return lines + [""]


def training_runs(board: Leaderboard) -> list[tuple[str, str, list[dict]]]:
    """(model, row label, per-seed training statistics) of every trained row."""
    runs: dict[tuple[str, str], dict[str, dict]] = {}
    for manifest, prefix in zip(board.manifests, _prefixes(board)):
        model = str((manifest.get("config") or {}).get("model") or (manifest.get("model") or {}).get("name") or "")
        for label, seeds in (manifest.get("training") or {}).items():
            for seed, stats in (seeds or {}).items():
                if isinstance(stats, dict):
                    runs.setdefault((model, prefix + label), {})[str(seed)] = stats
    order = {(r.model, r.label): i for i, r in enumerate(board.rows)}
    keys = sorted((k for k in runs if k in order), key=lambda k: order[k])
    return [(model, label, list(runs[(model, label)].values())) for model, label in keys]


def _prefixes(board: Leaderboard) -> list[str]:
    return [m.get("_prefix", "") for m in board.manifests]


def _training_table(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    header = ["model", "method", "seeds", "steps", "trainable params", "target tokens", "total tokens", "wall s", "final loss"]
    rows = []
    names = {r.label: r.name for r in board.rows}
    for model, label, runs in training_runs(board):
        def mean_of(key):
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            return statistics.fmean(values) if values else None
        final = [r["losses"][-1] for r in runs if r.get("losses")]
        cells = [f"{v:,.0f}" if v is not None else "—" for v in
                 (mean_of("steps"), mean_of("trainable_params"), mean_of("target_tokens"), mean_of("total_tokens"))]
        wall = mean_of("wall_s")
        cells.append(f"{wall:,.1f}" if wall is not None else "—")
        cells.append(f"{statistics.fmean(final):.3f}" if final else "—")
        rows.append([model, names.get(label, label), str(len(runs))] + cells)
    return header, rows


def training_markdown(board: Leaderboard) -> list[str]:
    header, rows = _training_table(board)
    if not rows:
        return []
    return ["## Training (mean over seeds)", "", "| " + " | ".join(header) + " |",
            "|---|---|" + "---:|" * (len(header) - 2)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 24px; color: #1d1d1f; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 18px; margin-top: 28px; }
p.legend { font-size: 13px; color: #444; margin: 2px 0; }
.scroll { overflow-x: auto; margin-top: 12px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; text-align: center; font-weight: 600; }
td.label { white-space: nowrap; }
th.main { background: #dce8f7; }
td.num { text-align: right; white-space: nowrap; }
td.best { background: #e4f4e4; } td.best .v { font-weight: 700; } td.tied { background: #f3f8ec; }
tr.original td { background: #fafafa; } tr.original td.label { font-style: italic; }
.ci { color: #666; font-size: 11px; } .d { font-size: 12px; color: #666; }
.d.up { color: #1a7f37; } .d.down { color: #c62828; }
.missing { color: #999; } sup a { color: #555; text-decoration: none; }
ol.notes { font-size: 13px; color: #333; }
figure { margin: 16px 0; } figure img { max-width: 100%; border: 1px solid #e0e0e0; }
figcaption { font-size: 12px; color: #555; }
"""


def _html_table(board: Leaderboard, columns: list[Column], notes: _Notes, with_delta: bool) -> str:
    esc = html.escape
    head = (["<th>model</th>"] if board.several_models else []) + ["<th>method</th>", "<th>seeds</th>"]
    for c in columns:
        head.append(f'<th class="{"main" if c.main else ""}" title="{esc(c.unit)}">{esc(c.suite)}<br>{esc(c.metric)}{esc(c.arrow)}</th>')
        if with_delta:
            head.append(f'<th title="the row minus the same model\'s original, with its 95% interval">Δ {esc(c.metric.rsplit("/", 1)[-1])}</th>')
    body = []
    for row in board.rows:
        tds = ([f'<td class="label">{esc(row.model)}</td>'] if board.several_models else [])
        tds += [f'<td class="label">{esc(_row_name(row, notes))}</td>', f'<td class="num">{esc(_seeds(board, row))}</td>']
        for c in columns:
            t = _text(board, row, c, notes)
            sups = "".join(f'<sup><a href="#note{n}">[{n}]</a></sup>' for n in t.notes)
            if t.value == "—":
                tds.append(f'<td class="num missing">—{sups}</td>')
            else:
                ci = f'<br><span class="ci">{esc(t.ci)}</span>' if t.ci else ""
                title = f' title="{esc(t.hover)}"' if t.hover else ""
                tds.append(f'<td class="num {t.mark}"{title}><span class="v">{esc(_value(t, markdown=False))}</span>{sups}{ci}</td>')
            if with_delta:
                direction = {1: " up", -1: " down", 0: ""}[t.delta_sign]
                tds.append(f'<td class="num"><span class="d{direction}">{esc(t.delta)}</span></td>')
        body.append(f'<tr class="{"original" if row.original else ""}">{"".join(tds)}</tr>')
    return (f'<div class="scroll"><table class="leaderboard"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` of a claims paragraph as html."""
    return re.sub(r"`(.+?)`", r"<code>\1</code>", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text)))


def claims_html(board: Leaderboard) -> str:
    if board.claims.exploratory and board.differences.empty:
        return ""
    section = claims_section(board)
    parts = ["<h2>Claims</h2>"] + [f'<p class="legend">{_inline(p)}</p>' for p in section.paragraphs]
    if section.rows:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in section.header)
        body = "".join("<tr>" + "".join(f'<td class="{"label" if i < 3 else "num"}">{html.escape(v)}</td>'
                                        for i, v in enumerate(row)) + "</tr>" for row in section.rows)
        parts.append(f'<div class="scroll"><table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
    if section.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in section.notes) + "</ul>")
    return "".join(parts)


def leaderboard_html(board: Leaderboard, plots: dict[str, bytes]) -> str:
    esc = html.escape
    notes = _Notes()
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{esc(board.title)}</title>",
        f"<style>{_CSS}</style></head><body>", f"<h1>{esc(board.title)}</h1>",
        *[f'<p class="legend">{esc(line)}</p>' for line in legend(board)],
        claims_html(board), "<h2>Main metrics</h2>", _html_table(board, board.main, notes, with_delta=True),
    ]
    if board.others:
        parts += ["<h2>Other metrics</h2>", _html_table(board, board.others, notes, with_delta=False)]
    if notes.texts:
        parts.append('<h2>Notes</h2><ol class="notes">' + "".join(
            f'<li id="note{i}">{esc(text)}</li>' for i, text in enumerate(notes.texts, 1)) + "</ol>")
    rows = _difference_cells(board, board.main)
    if rows:
        head = (["<th>model</th>"] if board.several_models else []) + ["<th>difference</th>"] + [
            f"<th>{esc(c.suite)}<br>{esc(c.metric)}{esc(c.arrow)}</th>" for c in board.main]
        body = "".join("<tr>" + ("".join([f'<td class="label">{esc(m)}</td>'] if board.several_models else [])
                               + f'<td class="label">{esc(a)} − {esc(b)}</td>' + "".join(f'<td class="num">{esc(t)}</td>' for t in texts)
                               + "</tr>") for m, a, b, texts in rows)
        exploratory = '<p class="legend"><b>Exploratory</b> (no analysis plan): every contrast below.</p>' if board.claims.exploratory else ""
        parts += ["<h2>Differences</h2>", exploratory, f'<p class="legend">{esc(DIFFERENCES_NOTE)}</p>',
                  f'<div class="scroll"><table class="leaderboard"><thead><tr>{"".join(head)}</tr></thead><tbody>{body}</tbody></table></div>',
                  '<p class="legend">Every shown metric\'s differences are in differences.csv.</p>']
    if board.descriptions:
        items = "".join(f"<li><b>{esc(label)}</b>: {esc(d)}{esc(f' ({c})') if c else ''}</li>" for label, (d, c) in board.descriptions.items())
        parts.append(f"<h2>Methods</h2><ul>{items}</ul>")
    header, trows = _training_table(board)
    if trows:
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f'<td class="{"num" if i >= 2 else "label"}">{esc(v)}</td>' for i, v in enumerate(r)) + "</tr>"
                       for r in trows)
        parts.append(f"<h2>Training (mean over seeds)</h2><div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, png in plots.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}"><figcaption>{esc(name)}</figcaption></figure>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
