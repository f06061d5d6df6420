"""When forgetting happens (issue 35): every row's scores along training, from the checkpoints
a run with ``eval_every`` evaluated (its ``trajectories.csv``), with the same seed-aware
interval as the leaderboard's cells at every step."""

from __future__ import annotations

import io
import statistics
from pathlib import Path

import pandas as pd

from harness.intervals import mean_interval
from harness.report.board import Leaderboard, prefixes_of
from harness.progress import warn
from harness.report.read import TRAJECTORY_COLUMNS
from harness.store import ORIGINAL, Unreadable, load_json

SERIES_COLUMNS = ["model", "method", "suite", "metric", "step", "mean", "ci_low", "ci_high", "n_seeds", "higher_is_better"]


def read_trajectories(board: Leaderboard) -> pd.DataFrame:
    """Every run's trajectory points (none for runs without ``eval_every``), row labels prefixed."""
    frames = []
    for path, prefix in zip(board.paths, prefixes_of(board)):
        file = path / "trajectories.csv"
        if not file.is_file():
            continue
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)[TRAJECTORY_COLUMNS]
        frame["run"] = str(path)
        frame["label"] = [m if m == ORIGINAL else prefix + m for m in frame["method"]]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TRAJECTORY_COLUMNS + ["run", "label"])


def main_metrics(board: Leaderboard) -> list[tuple[str, str]]:
    """(suite, metric) of the trajectory points that are their suite's main metrics."""
    points = read_trajectories(board)
    main = points[points["main"].str.lower() == "true"]
    return list(dict.fromkeys(zip(main["suite"], main["metric"])))


def trajectory_series(board: Leaderboard) -> pd.DataFrame:
    """One row per (model, row, suite, metric, step): the mean over seeds and the interval that
    combines item and seed noise (``harness.intervals.mean_interval``) where every seed's item
    statistics are there; the original's point (step 0) is drawn at the start of every row."""
    points = read_trajectories(board)
    points = points[points["value"] != ""]
    records = []
    for (model, label, suite, metric, step), group in points.groupby(["model", "label", "suite", "metric", "step"], sort=False):
        values = {seed: float(v) for seed, v in zip(group["seed"], group["value"])}
        stats = {}
        for seed, cell, run in zip(group["seed"], group["cell"], group["run"]):
            try:
                found = (load_json(Path(run) / "results" / cell / "items" / f"{suite}.json") or {}).get(metric)
            except Unreadable as err:  # named, never a silent gap
                warn(f"{err}; the interval of {label} at step {step} on {suite} is left out (`radis-bench run` rewrites it).")
                found = None
            if found is not None:
                stats[seed] = found
        low = high = None
        if len(stats) == len(values):
            iv = mean_interval(stats, fixed=label == ORIGINAL)
            low, high = iv.low, iv.high
        records.append({"model": model, "method": label, "suite": suite, "metric": metric, "step": int(step),
                        "mean": statistics.fmean(values.values()), "ci_low": low, "ci_high": high, "n_seeds": len(values),
                        "higher_is_better": group["higher_is_better"].iloc[0]})
    frame = pd.DataFrame(records, columns=SERIES_COLUMNS)
    original = frame[frame["method"] == ORIGINAL]
    starts = [dict(r, method=label) for label in frame["method"].unique() if label != ORIGINAL
              for r in original.to_dict("records") if r["model"] in set(frame.loc[frame["method"] == label, "model"])]
    frame = pd.concat([frame[frame["method"] != ORIGINAL], pd.DataFrame(starts, columns=SERIES_COLUMNS)], ignore_index=True)
    return frame.sort_values(["model", "method", "suite", "metric", "step"], kind="stable", ignore_index=True)


def trajectories_csv(board: Leaderboard) -> str | None:
    series = trajectory_series(board)
    if series.empty:
        return None
    buf = io.StringIO()
    series.to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue()
