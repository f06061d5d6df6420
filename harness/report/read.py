"""Reading run directories for a report: each run's ``scores.csv`` (long form, one row per
model, row label, seed, suite and metric), its ``manifest.json`` (the rows: method, variant
settings, budget; the suites' metric declarations; training losses) and the per-item
statistics beside each unit. Two runs that hold the same row and seed computed differently
are refused unless one gets a label prefix."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.store import ORIGINAL

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
class Run:
    path: Path
    prefix: str
    scores: pd.DataFrame
    manifest: dict


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
        scores = read_scores(run_dir)
        prefix = prefixes.get(str(run_dir), "")
        if prefix:
            scores["method"] = [m if m == ORIGINAL else prefix + m for m in scores["method"]]
        runs.append(Run(run_dir, prefix, scores, {**(read_manifest(run_dir) or {}), "_prefix": prefix}))
    refuse_conflicts(runs)
    return runs


def read_scores(run_dir: Path) -> pd.DataFrame:
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
    found = read_json_or_none(run.path / "results" / cell / f"{suite}.json")
    return found.get("key") if isinstance(found, dict) else None


def read_json_or_none(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


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
    """(model, label, suite, metric) -> {seed: item statistics}, wherever a run holds them."""
    found: dict[tuple, dict] = {}
    for run in runs:
        units = run.scores[["model", "method", "seed", "suite"]].drop_duplicates()
        for model, label, seed, suite in units.itertuples(index=False):
            cell = ORIGINAL if label == ORIGINAL else f"{unprefixed(run, label)}-seed{seed}"
            stats = read_json_or_none(run.path / "results" / cell / "items" / f"{suite}.json") or {}
            for metric, st in stats.items():
                found.setdefault((model, label, suite, metric), {})[str(seed)] = st
    return found
