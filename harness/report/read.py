"""Reading run directories for a report: each run's ``scores.csv`` (long form, one row per
model, row label, seed, suite and metric), its ``manifest.json`` (the rows: method, variant
settings, budget; the suites' metric declarations; training losses) and the per-item
statistics beside each unit. Two runs that hold the same row and seed computed differently
are refused unless one gets a label prefix.

Nothing damaged is used silently. ``scores.csv`` is a summary of the unit files
(``results/<cell>/<suite>.json``), rewritten after every unit; each unit it lists is read and
compared with it: a unit file that cannot be read is left out (its rows too), one whose
numbers differ from scores.csv's wins (the summary is stale or edited), and a per-item
statistics file that cannot be read leaves its intervals out. Each is one warning line on
stderr and a note in the report (``Damage``) saying which numbers and intervals it cost."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.paths import check_file, check_folder
from harness.progress import warn
from harness.store import ORIGINAL, Unreadable, load_json

TRAJECTORY_COLUMNS = ["model", "method", "seed", "step", "suite", "metric", "value", "n", "higher_is_better", "main", "cell"]
SCORE_COLUMNS = ["model", "method", "seed", "suite", "metric", "value", "n", "ci_low", "ci_high", "higher_is_better", "main", "note"]


_FLAGS = {"true": True, "1": True, "false": False, "0": False, "": None}


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.+@=-]+/)+[\w.+@=-]*")


_WRITTEN_TO = re.compile(r",? written to " + _ABSOLUTE_PATH.pattern)


def public(text: str) -> str:
    """A note as it may be published: no absolute path of the machine that wrote it. A clause
    saying where a file was written names only that machine's cache and is dropped, so units
    made before and after a suite stopped saying it share one note."""
    return _ABSOLUTE_PATH.sub("<local path>", _WRITTEN_TO.sub("", text))


@dataclass
class Damage:
    """A file of a run directory the report could not use as it stands, and what that cost:
    ``kind`` "unit" (unreadable: its scores are left out), "items" (unreadable per-item
    statistics: no intervals for its row on its suite) or "differs" (scores.csv disagreed
    with it: the unit file's numbers are shown; ``why`` says how)."""

    model: str
    label: str  # the row as the report shows it (with the run's prefix)
    seed: str
    suite: str
    path: str  # within the run directory
    why: str
    kind: str

    def note(self, original: bool = False) -> str:
        """The note on the cells it touched (``original``: a cell of another row whose Δ lost its interval)."""
        whose = "the original's" if self.label == ORIGINAL else f"seed {self.seed}'s"
        if self.kind == "unit":
            return (f"{whose} unit left out: {self.path} cannot be read ({self.why}); `radis-bench run` recomputes it")
        if self.kind == "differs":
            return f"scores.csv disagreed with {whose} unit {self.path} ({self.why}); the unit's numbers are shown"
        if original:
            return f"no interval for Δ: the original's per-item statistics {self.path} cannot be read ({self.why})"
        return (f"no intervals for this row on {self.suite} (nor its Δ and its differences with other rows, and no row of "
                f"these columns is marked best or tied): {whose} per-item statistics {self.path} cannot be read ({self.why}); "
                "`radis-bench run` rewrites them")


@dataclass
class Run:
    path: Path
    prefix: str
    scores: pd.DataFrame
    manifest: dict
    units: dict = field(default_factory=dict)  # (cell, suite) -> the unit file as read
    damage: list[Damage] = field(default_factory=list)


def read_runs(run_dirs: list[Path], prefixes: dict[str, str]) -> list[Run]:
    """Every run directory's scores, manifest and label prefix; two runs holding one row and
    seed computed differently are refused."""
    if not run_dirs:
        raise UserError("No run directory given; pass at least one folder written by `radis-bench run`.")
    unknown = [p for p in prefixes if p not in map(str, run_dirs)]
    if unknown:
        raise UserError(f"--prefix names {unknown[0]}, which is not one of the run directories given; use --prefix RUN_DIR=PREFIX.")
    runs = []
    for run_dir in map(Path, run_dirs):
        run = Run(run_dir, prefixes.get(str(run_dir), ""), read_scores(run_dir), {})
        run.manifest = {**(read_manifest(run_dir) or {}), "_prefix": run.prefix}
        check_units(run)
        if run.prefix:
            run.scores["method"] = [m if m == ORIGINAL else run.prefix + m for m in run.scores["method"]]
            for d in run.damage:
                d.label = d.label if d.label == ORIGINAL else run.prefix + d.label
        runs.append(run)
    refuse_conflicts(runs)
    return runs


def read_scores(run_dir: Path) -> pd.DataFrame:
    check_folder(run_dir, "Run directory", "give the --out folder of `radis-bench run`")
    path = run_dir / "scores.csv"
    if not path.exists():
        raise UserError(f"{run_dir} is not a scored run directory (no scores.csv); pass the --out folder of `radis-bench run`.")
    check_file(path, "scores file", "restore it or re-run `radis-bench run` to rewrite it")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a readable CSV ({str(err).strip().splitlines()[-1]}); restore it or re-run "
                        "`radis-bench run` to rewrite it.") from None
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}; a scores.csv has the columns {','.join(SCORE_COLUMNS)}.")
    return _typed(frame[SCORE_COLUMNS], path, run_dir)


def unit_rows(unit: dict) -> list[dict]:
    """The rows scores.csv holds for one unit file (metric, value, n, interval, direction,
    main, note), values as the unit holds them (None for empty)."""
    rows = [{"metric": m["name"], "value": m["value"], "n": m["n"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
             "higher_is_better": m["higher_is_better"], "main": m["main"], "note": m.get("note", "")} for m in unit["metrics"]]
    return rows + [{"metric": n["metric"], "value": None, "n": None, "ci_low": None, "ci_high": None, "higher_is_better": None,
                    "main": False, "note": n["reason"]} for n in unit["not_scored"]]


def check_units(run: Run) -> None:
    """Compare every unit scores.csv lists with its file (see the module's docstring): leave
    out the rows of a unit that cannot be read, take a differing unit's own numbers, and
    record both in ``run.damage`` with a warning line each."""
    scores, decisions, unchecked = run.scores, {}, 0
    for (model, method, seed, suite), group in scores.groupby(["model", "method", "seed", "suite"], sort=False):
        cell = ORIGINAL if method == ORIGINAL else f"{method}-seed{seed}"
        rel = f"results/{cell}/{suite}.json"
        try:
            unit = load_json(run.path / rel)
            if unit is not None and not (isinstance(unit.get("metrics"), list) and isinstance(unit.get("not_scored"), list)):
                raise Unreadable(run.path / rel, "no metrics: not a unit file")
            own = None if unit is None else _unit_frame(unit, group.iloc[0], run)
        except (Unreadable, KeyError, TypeError, UserError) as err:
            why = err.why if isinstance(err, Unreadable) else f"not a unit file: {type(err).__name__}"
            run.damage.append(Damage(model, method, seed, suite, rel, why, "unit"))
            warn(f"{run.path / rel} cannot be read ({why}); its scores are left out of the report "
                 "(`radis-bench run` recomputes it).")
            decisions[(model, method, seed, suite)] = None
            continue
        if unit is None:
            unchecked += 1
            continue
        run.units[(cell, suite)] = unit
        difference = _disagreement(group, own)
        if difference:
            run.damage.append(Damage(model, method, seed, suite, rel, difference, "differs"))
            warn(f"{run.path / 'scores.csv'} disagrees with {rel} ({difference}); the report shows the unit file's numbers "
                 "(`radis-bench run` rewrites scores.csv from the units).")
            decisions[(model, method, seed, suite)] = own
    if unchecked:
        warn(f"{run.path}: {unchecked} units listed in scores.csv have no unit file under results/; their numbers are used "
             "as scores.csv gives them, unchecked.")
    if decisions:  # rebuilt in scores.csv's order: row and column order follow it
        pieces, done = [], set()
        for i, key in enumerate(zip(scores["model"], scores["method"], scores["seed"], scores["suite"])):
            if key not in decisions:
                pieces.append(scores.iloc[[i]])
            elif decisions[key] is not None and key not in done:
                pieces.append(decisions[key])
                done.add(key)
        run.scores = pd.concat(pieces, ignore_index=True) if pieces else scores.iloc[0:0]


def _unit_frame(unit: dict, first: pd.Series, run: Run) -> pd.DataFrame:
    """A unit's rows typed as read_scores types scores.csv's (as its writer would print them)."""
    head = {c: first[c] for c in ("model", "method", "seed", "suite")}
    rows = [{**head, **{k: "" if v is None else str(v) for k, v in row.items()}} for row in unit_rows(unit)]
    return _typed(pd.DataFrame(rows, columns=SCORE_COLUMNS, dtype=str), run.path / "results", run.path)


def _disagreement(summary: pd.DataFrame, unit: pd.DataFrame) -> str:
    """'' when scores.csv's rows of a unit hold the unit's numbers; else the first difference, e.g.
    'de-en/chrf++: 45.1 in scores.csv, 44.9 in the unit'."""
    mine, theirs = summary.set_index("metric"), unit.set_index("metric")
    for metric in list(dict.fromkeys(list(theirs.index) + list(mine.index))):
        if metric not in mine.index or metric not in theirs.index:
            return f"{metric}: {'not in scores.csv' if metric not in mine.index else 'not in the unit'}"
        a, b = mine.loc[metric], theirs.loc[metric]
        if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
            return f"{metric}: listed twice"
        for column in ("value", "n", "ci_low", "ci_high"):
            x, y = a[column], b[column]
            if not (pd.isna(x) and pd.isna(y)) and (pd.isna(x) or pd.isna(y) or not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)):
                return f"{metric} {column}: {x:g} in scores.csv, {y:g} in the unit"
        if bool(a["main"]) != bool(b["main"]):
            return f"{metric}: main {a['main']} in scores.csv, {b['main']} in the unit"
    return ""


def _typed(frame: pd.DataFrame, path: Path, run_dir: Path) -> pd.DataFrame:
    """scores.csv's text columns typed: numbers, flags, the run and the cell of each row."""
    frame = frame.apply(lambda col: col.str.strip())
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


def read_manifest(run_dir: Path) -> dict | None:
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


def _unit_key(run: Run, cell: str, suite: str) -> str | None:
    return (run.units.get((cell, suite)) or {}).get("key")


def unprefixed(run: Run, label: str) -> str:
    return label[len(run.prefix):] if run.prefix and label.startswith(run.prefix) else label


def refuse_conflicts(runs: list[Run]) -> None:
    """Two runs holding the same row, seed and suite computed under different unit keys
    would silently replace each other's numbers: refuse with the settings that differ."""
    seen: dict[tuple, tuple[Run, str | None]] = {}
    for run in runs:
        units = run.scores[["model", "method", "seed", "suite", "cell"]].drop_duplicates()
        for model, label, seed, suite, cell in units.itertuples(index=False):
            own_cell = cell if label == ORIGINAL else f"{unprefixed(run, label)}-seed{seed}"
            key = _unit_key(run, own_cell, suite)
            earlier = seen.setdefault((model, label, seed, suite), (run, key))
            if earlier[0] is not run and earlier[1] != key:
                what = f"{label}" + (f" seed {seed}" if seed != "" else "")
                raise UserError(f"{earlier[0].path} and {run.path} both hold {what} on {suite} ({model}) computed differently "
                                f"({_settings_diff(earlier[0], run, unprefixed(run, label), suite)}); give one run a label "
                                f"prefix, e.g. --prefix {run.path}=v2-, or report them apart.")


def _settings_diff(a: Run, b: Run, label: str, suite: str) -> str:
    def flat(obj, prefix=""):
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix.rstrip("."): json.dumps(obj, sort_keys=True, default=str)}

    def settings(run: Run) -> dict:
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


def item_stats(runs: list[Run]) -> dict[tuple, dict]:
    """(model, label, suite, metric) -> {seed: item statistics}, wherever a run holds them; a
    statistics file that cannot be read is named (a warning and ``run.damage``) and gives none."""
    found: dict[tuple, dict] = {}
    for run in runs:
        units = run.scores[["model", "method", "seed", "suite"]].drop_duplicates()
        for model, label, seed, suite in units.itertuples(index=False):
            cell = ORIGINAL if label == ORIGINAL else f"{unprefixed(run, label)}-seed{seed}"
            rel = f"results/{cell}/items/{suite}.json"
            try:
                stats = load_json(run.path / rel) or {}
            except Unreadable as err:
                run.damage.append(Damage(model, label, seed, suite, rel, err.why, "items"))
                warn(f"{err}; the intervals of {label} on {suite} that need it are left out of the report "
                     "(`radis-bench run` rewrites it).")
                stats = {}
            for metric, st in stats.items():
                found.setdefault((model, label, suite, metric), {})[str(seed)] = st
    return found
