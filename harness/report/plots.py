"""The report's plots, drawn from a ``harness.report.board.Leaderboard``:

    tradeoff.png                the task suite's gain (x) against each general suite's change (y)
    suite_<suite>.png           each suite's main metric per row with its 95% interval
    training_loss.png           loss curves per row, mean over seeds
    ablation_<row>_<axis>.png   a swept setting on x, each main metric with its interval on y,
                                the unswept row and the baseline as reference lines
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from harness.errors import UserError
from harness.report.board import Column, Leaderboard, Row, training_runs
from harness.report.compute import pareto_points
from harness.report.text import safe_name
from harness.report.trajectory import drift_metric, gain_and_drift, main_metrics, trajectory_series
from harness.store import ORIGINAL


def all_plots(board: Leaderboard, general_metric: str | None = None) -> dict[str, bytes]:
    plots = {"tradeoff.png": plot_tradeoff(board, general_metric)}
    for suite in dict.fromkeys(c.suite for c in board.main):
        plots[f"suite_{safe_name(suite)}.png"] = plot_suite(board, suite)
    plots["training_loss.png"] = plot_training_loss(board)
    plots["pareto.png"] = plot_pareto(board)
    plots.update(plot_trajectories(board))
    plots["trajectory_drift_vs_gain.png"] = plot_drift_gain(board)
    plots.update(ablation_plots(board))
    return {name: png for name, png in plots.items() if png is not None}


def colours(board: Leaderboard) -> dict[str, str]:
    """One colour per row label, the same in every plot; the original is black."""
    labels = [l for l in dict.fromkeys(r.label for r in board.rows) if l != ORIGINAL]
    palette = [f"C{i}" for i in range(10)] if len(labels) <= 10 else [f"tab20:{i}" for i in range(20)]
    from matplotlib import colormaps

    def colour(i: int):
        name = palette[i % len(palette)]
        return colormaps["tab20"](int(name.split(":")[1])) if name.startswith("tab20:") else name

    return {ORIGINAL: "black", **{label: colour(i) for i, label in enumerate(labels)}}


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _task_column(board: Leaderboard) -> Column | None:
    return next((c for c in board.main if c.role == "task"), None)


def _general_columns(board: Leaderboard, general_metric: str | None) -> list[Column]:
    keys = {c.key: c for c in board.columns}
    if general_metric is not None:
        if general_metric not in keys:
            raise UserError(f"general_metric '{general_metric}' is not in the scores; choose one of {', '.join(keys)}.")
        scored = [k for k, c in keys.items() if any(board.cell(r, c).delta is not None for r in board.rows)]
        if general_metric not in scored:  # else the trade-off plot would be left out without a word
            raise UserError(f"general_metric '{general_metric}' has no score of a fine-tuned row against the original in these "
                            f"runs (not scored, or not run); choose one of {', '.join(scored) or 'none'}.")
        return [keys[general_metric]]
    return [c for c in board.main if c.role != "task" and c.higher_is_better is not None
            and any(board.cell(r, c).delta is not None for r in board.rows)]


def _delta(board: Leaderboard, row: Row, column: Column, sign: float):
    """(Δ, lower error, upper error) of a row against its original, sign-flipped if asked."""
    cell = board.cell(row, column)
    if cell.delta is None:
        return None
    iv = cell.delta_interval
    low, high = (iv.low, iv.high) if iv is not None and iv.low is not None else (cell.delta, cell.delta)
    values = sorted([sign * low, sign * high])
    return sign * cell.delta, sign * cell.delta - values[0], values[1] - sign * cell.delta


def plot_tradeoff(board: Leaderboard, general_metric: str | None = None) -> bytes | None:
    """The task suite's gain over the original (x) against each general suite's change (y),
    one point per row with 95% intervals of both differences."""
    task, generals = _task_column(board), _general_columns(board, general_metric)
    if task is None or not generals:
        return None
    rows = [r for r in board.rows if not r.original]
    colour = colours(board)
    several = board.several_models
    fig = Figure(figsize=(6.4 * len(generals), 5.6))
    axes = fig.subplots(1, len(generals), squeeze=False)[0]
    drawn = False
    for ax, general in zip(axes, generals):
        sign = -1.0 if general.higher_is_better is False else 1.0
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.plot([0], [0], marker="*", ms=15, color="black", ls="none", zorder=3)
        ax.annotate("original", (0, 0), textcoords="offset points", xytext=(6, -12), fontsize=8)
        for row in rows:
            x, y = _delta(board, row, task, 1.0), _delta(board, row, general, sign)
            if x is None or y is None:
                continue
            drawn = True
            label = row.name if not several else f"{row.name} [{row.model}]"
            ax.errorbar(x[0], y[0], xerr=[[x[1]], [x[2]]], yerr=[[y[1]], [y[2]]], fmt="o", ms=6, color=colour[row.label],
                        capsize=3, lw=1, label=label, zorder=3)
            ax.annotate(row.label, (x[0], y[0]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xlabel(f"task gain: Δ {task.key} over the original")
        flipped = " (sign flipped: up = closer to the original)" if sign < 0 else ""
        ax.set_ylabel(f"Δ {general.key} over the original{flipped}")
        ax.set_title(f"{task.metric} gain vs {general.suite} change", fontsize=10)
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(6, len(labels)), bbox_to_anchor=(0.5, -0.02 - 0.025 * (len(labels) // 6)))
    fig.suptitle("Translation gain against general-ability change (mean over seeds, bars = 95% intervals)", fontsize=11)
    return png(fig)


def plot_pareto(board: Leaderboard) -> bytes | None:
    """Task gain (x) against retention (y, up = closer to the original), each row's compute to
    train as its marker's area; the rows no other row beats on all three are ringed."""
    points = pareto_points(board)
    if not points:
        return None
    colour = colours(board)
    largest = max(p["flops"] for p in points) or 1.0
    fig = Figure(figsize=(7.2, 5.6))
    ax = fig.subplots()
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    for p in points:
        area = 40 + 600 * p["flops"] / largest
        ax.scatter([p["gain"]], [p["retention"]], s=area, color=colour.get(p["label"], "grey"), alpha=0.7,
                   edgecolors="black" if not p["dominated"] else "none", linewidths=2, label=p["name"], zorder=3)
        ax.annotate(f"{p['label']} ({p['flops']:.2g})", (p["gain"], p["retention"]), textcoords="offset points",
                    xytext=(6, 5), fontsize=7)
    ax.set_xlabel(f"task gain: Δ {points[0]['task']} over the original")
    ax.set_ylabel(f"Δ {points[0]['general']} over the original (up = closer to the original)")
    ax.set_title("Gain, retention and compute: area = FLOPs to train; ringed = not dominated", fontsize=10)
    ax.grid(alpha=0.3)
    return png(fig)


def plot_trajectories(board: Leaderboard) -> dict[str, bytes]:
    """Per main metric of the trajectory suites: every row's mean over seeds along training (step
    0 is the original), its band the interval of item and seed noise at each step."""
    series = trajectory_series(board)
    if series.empty:
        return {}
    colour = colours(board)
    several = board.several_models
    plots = {}
    for suite, metric in main_metrics(board):
        part = series[(series["suite"] == suite) & (series["metric"] == metric)]
        if part.empty:
            continue
        fig = Figure(figsize=(7.2, 5.0))
        ax = fig.subplots()
        for (model, label), line in part.groupby(["model", "method"], sort=False):
            name = label if not several else f"{label} [{model}]"
            ax.plot(line["step"], line["mean"], marker="o", ms=4, color=colour.get(label, "grey"), label=name)
            banded = line.dropna(subset=["ci_low", "ci_high"])
            if len(banded):
                ax.fill_between(banded["step"], banded["ci_low"], banded["ci_high"], color=colour.get(label, "grey"), alpha=0.15)
        better = {"True": " (higher is better)", "False": " (lower is better)"}.get(str(part["higher_is_better"].iloc[0]), "")
        ax.set_xlabel("optimiser step (0: the original)")
        ax.set_ylabel(f"{suite} {metric}{better}")
        ax.set_title(f"{suite} {metric} along training (mean over seeds, bands = 95% intervals)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots[f"trajectory_{safe_name(suite)}_{safe_name(metric)}.png"] = png(fig)
    return plots


def plot_drift_gain(board: Leaderboard) -> bytes | None:
    """Along training: task gain (x) against drift from the original (y), one line per row from
    the original (0, 0) to its last step (means over seeds)."""
    path = gain_and_drift(board)
    if path.empty:
        return None
    suite, metric = drift_metric(board)
    task = next(c for c in board.main if c.role == "task")
    colour = colours(board)
    fig = Figure(figsize=(7.2, 5.4))
    ax = fig.subplots()
    for (model, label), line in path.groupby(["model", "method"], sort=False):
        line = line.sort_values("step")
        name = label if not board.several_models else f"{label} [{model}]"
        ax.plot(line["gain"], line["drift"], marker="o", ms=4, color=colour.get(label, "grey"), label=name)
        last = line.iloc[-1]
        ax.annotate(f"step {int(last['step'])}", (last["gain"], last["drift"]), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"task gain: Δ {task.key} over the original")
    ax.set_ylabel(f"drift: Δ {suite}/{metric} from the original")
    ax.set_title("Drift against gain along training (mean over seeds; each point a checkpoint)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def plot_suite(board: Leaderboard, suite: str) -> bytes | None:
    """The suite's main metric(s) per row as bars with 95% interval error bars."""
    columns = [c for c in board.main if c.suite == suite]
    rows = [r for r in board.rows if any(board.cell(r, c).mean is not None for c in columns)]
    if not rows:
        return None
    colour = colours(board)
    fig = Figure(figsize=(max(6.0, 1.5 + 0.45 * len(rows) * len(columns)), 4.6))
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
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
        label = row.name if not board.several_models else f"{row.name} [{row.model}]"
        ax.bar(positions, heights, width * 0.95, color=colour[row.label], edgecolor="white", label=label)
        # error bars drawn apart from the bars: bar(yerr=2xN) trips a NumPy deprecation in matplotlib
        ax.errorbar(positions, heights, yerr=np.array(errors), fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(range(len(columns)), [f"{c.metric}{c.arrow}" for c in columns])
    ax.set_ylabel(columns[0].unit if len({c.unit for c in columns}) == 1 else "score")
    ax.set_title(f"{suite}: main metric per row (mean over seeds, error bars = 95% interval)", fontsize=10)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def plot_training_loss(board: Leaderboard) -> bytes | None:
    """Training loss per optimiser step for each row, mean over seeds with a ± std band."""
    runs = [(model, label, [r["losses"] for r in stats if r.get("losses")]) for model, label, stats in training_runs(board)]
    runs = [r for r in runs if r[2]]
    if not runs:
        return None
    colour = colours(board)
    names = {r.label: r.name for r in board.rows}
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    models = list(dict.fromkeys(model for model, _, _ in runs))
    for model, label, losses in runs:
        length = max(len(l) for l in losses)
        padded = np.full((len(losses), length), np.nan)
        for i, curve in enumerate(losses):
            padded[i, :len(curve)] = curve
        mean, std = np.nanmean(padded, axis=0), np.nanstd(padded, axis=0)
        steps = np.arange(1, length + 1)
        name = names.get(label, label) if len(models) == 1 else f"{names.get(label, label)} [{model}]"
        c = colour.get(label, "grey")
        ax.plot(steps, mean, color=c, lw=1.4, ls="-" if models.index(model) == 0 else "--",
                label=f"{name} ({len(losses)} seed{'s' if len(losses) > 1 else ''})")
        if len(losses) > 1:
            ax.fill_between(steps, mean - std, mean + std, color=c, alpha=0.12, lw=0)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (the row's objective)")
    ax.set_title("Training loss per row (mean over seeds, band = ± std)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return png(fig)


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _base_value(board: Leaderboard, base: str, axis: str):
    """The setting an unswept row trains with on ``axis`` (from the run's manifest)."""
    for manifest in board.manifests:
        row = (manifest.get("methods") or {}).get(base[len(manifest.get("_prefix", "")):] if base.startswith(manifest.get("_prefix", "")) else base)
        if row is None:
            continue
        section, dot, name = axis.partition(".")
        if dot and section in ("budget", "lora"):
            own = (row.get("own_settings") or {}).get(axis)
            return own if own is not None else (manifest.get(section) or {}).get(name)
        return (row.get("options") or {}).get(axis)
    return None


def ablation_series(board: Leaderboard) -> dict[tuple[str, str, str], list[tuple[str, Row, tuple]]]:
    """(model, unswept row, axis) -> its points: (value on the axis, the row, the other swept
    axes' values); the unswept row sits at its own value."""
    groups: dict[tuple[str, str, str], list] = {}
    for row in board.rows:
        for axis, value in row.sweep:
            groups.setdefault((row.model, row.varies or row.method, axis), []).append(
                (value, row, tuple((k, x) for k, x in row.sweep if k != axis)))
    for (model, base_label, axis), points in groups.items():
        base = next((r for r in board.rows if r.model == model and r.label == base_label), None)
        if base is not None:
            points.append((str(_base_value(board, base_label, axis)), base, ()))
    return groups


def ablation_plots(board: Leaderboard) -> dict[str, bytes]:
    """One plot per swept axis of a row: the swept value on x (the unswept row at its own
    value), each main metric with its 95% interval on y, the unswept row and the baseline
    as horizontal reference lines."""
    out = {}
    for (model, base_label, axis), points in ablation_series(board).items():
        rows = {r.label: r for r in board.rows if r.model == model}
        base = rows.get(base_label)
        baseline = next((r for r in rows.values() if r.baseline), None)
        columns = [c for c in board.main if any(board.cell(r, c).mean is not None for _, r, _ in points)]
        if not columns:
            continue
        numeric = all(_number(x) is not None for x, _, _ in points)
        categories = list(dict.fromkeys(x for x, _, _ in points))
        fig = Figure(figsize=(4.2 * len(columns), 3.9), layout="constrained")  # y labels clear of the next panel
        axes = fig.subplots(1, len(columns), squeeze=False)[0]
        for ax, column in zip(axes, columns):
            series: dict[tuple, list] = {}
            for x, row, rest in points:
                cell = board.cell(row, column)
                if cell.mean is None:
                    continue
                series.setdefault(rest, []).append((_number(x) if numeric else categories.index(x), cell))
            for n, (rest, found) in enumerate(sorted(series.items())):
                found.sort(key=lambda p: p[0])
                xs, ys = [p[0] for p in found], [p[1].mean for p in found]
                err = [[max(c.mean - c.ci_low, 0) if c.ci_low is not None else 0 for _, c in found],
                       [max(c.ci_high - c.mean, 0) if c.ci_high is not None else 0 for _, c in found]]
                name = ", ".join(f"{k}={v}" for k, v in rest) or axis
                ax.errorbar(xs, ys, yerr=err, fmt="o-", ms=5, capsize=3, lw=1.2, color=f"C{n}", label=name)
            for ref, style in ((base, "-"), (baseline, "--")):
                if ref is not None and board.cell(ref, column).mean is not None:
                    ax.axhline(board.cell(ref, column).mean, color="grey", ls=style, lw=1,
                               label=f"{ref.label} ({'unswept' if ref is base else 'baseline'})")
            if not numeric:
                ax.set_xticks(range(len(categories)), categories)
            ax.set_xlabel(axis)
            ax.set_ylabel(f"{column.key}{column.arrow}")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{base_label}: {axis} (mean over seeds, error bars = 95% interval)", fontsize=10)
        out[f"ablation_{safe_name(base_label)}_{safe_name(axis)}.png"] = png(fig)
    return out
