"""The leaderboard as data: its rows (the original, then every method and variant of each
model), columns (each suite's metrics, as the suites declare them), cells (the mean over
seeds with its interval, its difference to the original) and the best or tied rows of a
column; differences and claims come from ``harness.report.differences``.

Intervals come from ``harness.intervals``: item bootstrap plus a training-seed t term,
paired by seed where two rows share their seeds; verdicts from ``harness.report.claims`` (a
rendering at new seed counts records a look at each primary contrast)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.intervals import difference_interval, is_share, mean_interval, settled
from harness.plugins import registry
from harness.report.claims import adjust, p_value
from harness.report.differences import PlanSource, compute_differences
from harness.report.read import Run, item_stats, public, read_runs
from harness.store import ORIGINAL


ADAPTER_MARKS = {"rslora": "rsLoRA", "dora": "DoRA", "pissa": "PiSSA", "full": "full FT"}  # plain LoRA is unmarked


def row_adapter(shared: dict | None, row: dict) -> str:
    """A row's adapter kind from its manifest: its own record, else the run's adapter settings with the
    row's own ``lora.*`` over them (manifests before lora.kind knew only ``full_finetune``)."""
    if row.get("adapter"):
        return str(row["adapter"])
    own = {k.split(".", 1)[1]: v for k, v in (row.get("own_settings") or {}).items() if k.startswith("lora.")}
    settings = {**(shared or {}), **own}
    full = str(settings.get("full_finetune", False)).lower() in ("true", "1")
    return "full" if full else str(settings.get("kind") or "lora")


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
    adapter: str = "lora"  # what trained: lora, rslora, dora, pissa or full (LoRASettings.adapter)

    @property
    def marked(self) -> str:
        """The label with its adapter where that is not plain LoRA: every table shows it."""
        return self.label if self.adapter == "lora" or self.original else f"{self.label} [{ADAPTER_MARKS.get(self.adapter, self.adapter)}]"

    @property
    def name(self) -> str:
        return f"{self.marked} (extension)" if self.extension else self.marked

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
    damage: list[str] = field(default_factory=list)  # files of the run this cell could not use (one note per file)
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
    claims: object = None  # harness.report.differences.Claims: the plan, the primary contrasts, the secondary family
    paths: list = field(default_factory=list)  # the run directories, in the order of ``manifests``
    memo: dict = field(default_factory=dict, repr=False, compare=False)  # what is read from the runs once per board

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

    @property
    def marks_adapters(self) -> bool:
        """Whether a row trained something other than plain LoRA (then the tables say which adapter each row
        trained; reports of LoRA rows only render as they always did)."""
        return any(r.adapter != "lora" for r in self.rows if not r.original)

    def adapter_of(self, model: str, label: str) -> str:
        """A row's adapter kind ('' for the original)."""
        found = next((r for r in self.rows if (r.model, r.label) == (model, label)), None)
        return "" if found is None or found.original else found.adapter


def build_leaderboard(run_dirs: list[Path], title: str | None = None, prefixes: dict[str, str] | None = None,
                      record_looks: bool = False) -> Leaderboard:
    """The leaderboard of ``run_dirs``; ``record_looks``: it is rendered, so a primary contrast at
    new seeds is a look recorded in its run directory (``harness.report.claims``)."""
    runs = read_runs(run_dirs, prefixes or {})
    scores = pd.concat([r.scores for r in runs], ignore_index=True)
    scores = scores.drop_duplicates(["model", "method", "seed", "suite", "metric"], ignore_index=True)
    if scores.empty:
        raise UserError(f"{', '.join(map(str, run_dirs))}: scores.csv has no rows yet; let `radis-bench run` score a model first.")
    rows, descriptions = _rows(scores, runs)
    stats = item_stats(runs)
    columns = _columns(scores, runs, stats)
    cells = _cells(scores, rows, columns, stats)
    _note_damage(cells, rows, columns, [d for r in runs for d in r.damage])
    names = list(dict.fromkeys(r.manifest.get("name") for r in runs if r.manifest.get("name")))
    titles = list(dict.fromkeys((r.manifest.get("config") or {}).get("title") for r in runs))
    title = title or (titles[0] if len(runs) == 1 and titles[0] else None)  # a run's own title, as `run` renders it
    title = title or ("radis-bench leaderboard" + (f": {', '.join(names)}" if names else ""))

    board = Leaderboard(title, rows, columns, cells, scores, [r.manifest for r in runs], pd.DataFrame(), descriptions,
                        paths=[r.path for r in runs])
    board.differences, board.claims = compute_differences(board, [PlanSource(r.path, r.prefix, r.manifest) for r in runs],
                                                          record_looks)
    _mark_best(board)
    return board


def _baseline_name() -> str | None:
    """The registered baseline method, for manifests written before rows declared it."""
    try:
        cls = registry.baseline_method()
    except UserError:
        return None
    return cls.name if cls is not None else None


def _rows(scores: pd.DataFrame, runs: list[Run]) -> tuple[list[Row], dict[str, tuple[str, str]]]:
    """The original first for each model, then its rows in manifest order, extensions last."""
    info: dict[str, dict] = {}
    renamed: dict[str, str] = {}  # prefixed label -> its label in its own run
    baseline = None
    for run in runs:
        for label, row in (run.manifest.get("methods") or {}).items():
            row = row or {}
            full = run.prefix + label
            varies = row.get("varies")
            info.setdefault(full, {**row, "varies": run.prefix + varies if varies else None,
                                   "adapter": row_adapter(run.manifest.get("lora"), row)})
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
                            tuple(row.get("budget_differs") or ()), tuple(sorted((row.get("sweep") or {}).items())),
                            str(row.get("adapter") or "lora")))
            described.setdefault(label, (str(row.get("description", "")), str(row.get("citation", ""))))
    return rows, described


def _declared(runs: list[Run], suite: str) -> tuple[dict[str, dict], str]:
    """A suite's metric declarations and role: from a manifest, else from the installed suite.
    A manifest written before suites declared equivalence margins takes the installed suite's."""
    try:
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


def _columns(scores: pd.DataFrame, runs: list[Run], stats: dict[tuple, dict]) -> list[Column]:
    """Main metrics first (suites in the order they were scored), then the shown ones, then the rest."""
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


def _cells(scores: pd.DataFrame, rows: list[Row], columns: list[Column], stats: dict) -> dict[tuple[Row, str], Cell]:
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


def _note_damage(cells: dict, rows: list[Row], columns: list[Column], damage: list) -> None:
    """A note, in every cell of its row and suite, for each file the report could not use
    (``harness.report.read.Damage``); the original's unreadable statistics also cost every
    other row its Δ interval on that suite."""
    for d in damage:
        for row in rows:
            if row.model != d.model or (row.label != d.label and not (d.kind == "items" and d.label == ORIGINAL)):
                continue
            for column in columns:
                if column.suite == d.suite:
                    cell = cells.setdefault((row, column.key), Cell())
                    note = d.note(original=row.label != d.label)
                    if note not in cell.damage:
                        cell.damage.append(note)


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


def training_runs(board: Leaderboard) -> list[tuple[str, str, list[dict]]]:
    """(model, row label, per-seed training statistics) of every trained row."""
    runs: dict[tuple[str, str], dict[str, dict]] = {}
    for manifest, prefix in zip(board.manifests, prefixes_of(board)):
        model = str((manifest.get("config") or {}).get("model") or (manifest.get("model") or {}).get("name") or "")
        for label, seeds in (manifest.get("training") or {}).items():
            for seed, stats in (seeds or {}).items():
                if isinstance(stats, dict):
                    runs.setdefault((model, prefix + label), {})[str(seed)] = stats
    order = {(r.model, r.label): i for i, r in enumerate(board.rows)}
    keys = sorted((k for k in runs if k in order), key=lambda k: order[k])
    return [(model, label, list(runs[(model, label)].values())) for model, label in keys]


def prefixes_of(board: Leaderboard) -> list[str]:
    return [m.get("_prefix", "") for m in board.manifests]
