"""When forgetting happens (issue 35): every row's scores along training, from the checkpoints
a run with ``eval_every`` evaluated (its ``trajectories.csv``), with the same seed-aware
interval as the leaderboard's cells at every step."""

from __future__ import annotations

import io
import statistics
from pathlib import Path

import pandas as pd
from scipy import stats

from harness.intervals import mean_interval
from harness.report.board import Leaderboard, prefixes_of
from harness.progress import warn
from harness.report.read import TRAJECTORY_COLUMNS
from harness.store import ORIGINAL, Unreadable, load_json

SERIES_COLUMNS = ["model", "method", "suite", "metric", "step", "mean", "ci_low", "ci_high", "n_seeds", "higher_is_better"]


def _once(board: Leaderboard, name: str, compute):
    """``compute(board)`` once per board: the series is read and its intervals drawn once for the
    CSV, the plots and the summary."""
    key = f"trajectory/{name}"
    if key not in board.memo:
        board.memo[key] = compute(board)
    return board.memo[key].copy()


def read_trajectories(board: Leaderboard) -> pd.DataFrame:
    return _once(board, "points", _read_trajectories)


def trajectory_series(board: Leaderboard) -> pd.DataFrame:
    return _once(board, "series", _trajectory_series)


def _read_trajectories(board: Leaderboard) -> pd.DataFrame:
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


def _trajectory_series(board: Leaderboard) -> pd.DataFrame:
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


SUMMARY_COLUMNS = ["model", "method", "suite", "metric", "seeds", "final_drift", "half_step", "half_low", "half_high",
                   "area", "area_low", "area_high"]


def gain_and_drift(board: Leaderboard) -> pd.DataFrame:
    """Per row and step, the task gain over the original (the training task's main metric) and
    the drift of the drift metric (``drift_metric``), means over seeds: the drift-versus-gain path."""
    chosen = drift_metric(board)
    task = next((c for c in board.main if c.role == "task"), None)
    series = trajectory_series(board)
    if chosen is None or task is None or series.empty:
        return pd.DataFrame(columns=["model", "method", "step", "gain", "drift"])
    keyed = series.set_index(["model", "method", "suite", "metric", "step"])["mean"]
    records = []
    for (model, label, step), _ in series.groupby(["model", "method", "step"], sort=False):
        try:
            gain = keyed[(model, label, task.suite, task.metric, step)] - keyed[(model, label, task.suite, task.metric, 0)]
            drift = keyed[(model, label, *chosen, step)] - keyed[(model, label, *chosen, 0)]
        except KeyError:
            continue
        records.append({"model": model, "method": label, "step": step, "gain": gain, "drift": drift})
    return pd.DataFrame(records, columns=["model", "method", "step", "gain", "drift"])


def drift_metric(board: Leaderboard) -> tuple[str, str] | None:
    """The metric whose drift the summary follows: retention's main metric when the trajectory
    has it, else the first main metric of a trajectory suite that is not the training task."""
    metrics = main_metrics(board)
    task = {c.suite for c in board.main if c.role == "task"}
    return next((m for m in metrics if m[0] == "retention"), next((m for m in metrics if m[0] not in task), None))


def _seed_interval(values: list[float]) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return None, None
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return statistics.fmean(values) - half, statistics.fmean(values) + half


def half_step(steps: list[int], drift: list[float]) -> float | None:
    """The first step (linearly interpolated) at which the drift reaches half its final value."""
    target = drift[-1] / 2
    if drift[-1] == 0:
        return None
    for (s0, d0), (s1, d1) in zip(zip(steps, drift), zip(steps[1:], drift[1:])):
        if (d1 - target) * (1 if drift[-1] > 0 else -1) >= 0:
            return s0 + (s1 - s0) * ((target - d0) / (d1 - d0) if d1 != d0 else 1.0)
    return float(steps[-1])


def area(steps: list[int], drift: list[float]) -> float:
    """The area under the drift curve divided by the last step: the mean drift over training."""
    total = sum((s1 - s0) * (d0 + d1) / 2 for s0, s1, d0, d1 in zip(steps, steps[1:], drift, drift[1:]))
    return total / steps[-1] if steps[-1] else 0.0


def trajectory_summary(board: Leaderboard) -> pd.DataFrame:
    """Per row: the final drift of the drift metric from the original, the step at which half of
    it was reached and the area under the drift curve (its mean over training), each the mean
    over seeds with a 95% t-interval over seeds (item noise not included; none at one seed)."""
    chosen = drift_metric(board)
    points = read_trajectories(board)
    if chosen is None or points.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    suite, metric = chosen
    points = points[(points["suite"] == suite) & (points["metric"] == metric) & (points["value"] != "")]
    records = []
    for model, of_model in points.groupby("model", sort=False):
        start = of_model[of_model["label"] == ORIGINAL]
        if start.empty:
            continue
        base = float(start["value"].iloc[0])
        for label, rows in of_model[of_model["label"] != ORIGINAL].groupby("label", sort=False):
            halves, areas, finals = [], [], []
            for _, curve in rows.groupby("seed", sort=False):
                curve = curve.assign(step=curve["step"].astype(int)).sort_values("step")
                steps = [0] + list(curve["step"])
                drift = [0.0] + [float(v) - base for v in curve["value"]]
                finals.append(drift[-1])
                areas.append(area(steps, drift))
                found = half_step(steps, drift)
                if found is not None:
                    halves.append(found)
            records.append({"model": model, "method": label, "suite": suite, "metric": metric, "seeds": len(finals),
                            "final_drift": statistics.fmean(finals),
                            "half_step": statistics.fmean(halves) if halves else None,
                            **dict(zip(("half_low", "half_high"), _seed_interval(halves))),
                            "area": statistics.fmean(areas), **dict(zip(("area_low", "area_high"), _seed_interval(areas)))})
    return pd.DataFrame(records, columns=SUMMARY_COLUMNS)


def summary_markdown(board: Leaderboard) -> list[str]:
    summary = trajectory_summary(board)
    if summary.empty:
        return []

    def shown(value, low, high, spec):
        if value is None or pd.isna(value):
            return "—"
        return f"{value:{spec}}" + (f" [{low:{spec}}, {high:{spec}}]" if low is not None and not pd.isna(low) else "")

    suite, metric = summary["suite"].iloc[0], summary["metric"].iloc[0]
    lines = ["## Trajectories", "",
             f"Drift of {suite} {metric} from the original along training (`trajectories.csv`, the `trajectory_*` plots): "
             "its final value, the step at which half of it was reached, and the area under the drift curve divided by "
             "the last step (the mean drift over training). Mean over seeds with a 95% interval over seeds (item noise "
             "not included; none at one seed).", "",
             "| " + " | ".join((["model"] if board.several_models else []) + ["method", "seeds", "final drift",
                                                                             "half of it at step", "mean drift"]) + " |",
             "|---|" + ("---|" if board.several_models else "") + "---:|" * 4]
    for r in summary.itertuples():
        cells = ([r.model] if board.several_models else []) + [r.method, str(r.seeds), f"{r.final_drift:.3g}",
                                                               shown(r.half_step, r.half_low, r.half_high, ".1f"),
                                                               shown(r.area, r.area_low, r.area_high, ".3g")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]
