"""What each row cost (issue 34): the FLOPs its units counted (``harness.model.compute``, kept
in the manifest's ``compute``), a table of them, and the rows that no other row beats on task
gain, retention and compute together (the Pareto view)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from harness.report.board import Column, Leaderboard, prefixes_of
from harness.store import ORIGINAL


@dataclass
class RowCompute:
    """Mean FLOPs over a row's seeds: building its training data, training it (preparation and
    steps), evaluating it on every suite."""

    data: float | None
    training: float | None
    evaluation: float | None
    seeds: int

    @property
    def to_train(self) -> float | None:
        """Data building and training: what the method costs before any evaluation."""
        if self.data is None and self.training is None:
            return None
        return (self.data or 0.0) + (self.training or 0.0)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def row_compute(board: Leaderboard) -> dict[tuple[str, str], RowCompute]:
    """(model, row label) -> its mean FLOPs, for the rows whose units counted them."""
    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    for manifest, prefix in zip(board.manifests, prefixes_of(board)):
        model = str((manifest.get("config") or {}).get("model") or (manifest.get("model") or {}).get("name") or "")
        for cell, entry in (manifest.get("compute") or {}).items():
            label = ORIGINAL if cell == ORIGINAL else prefix + cell.rsplit("-seed", 1)[0]
            parts = per.setdefault((model, label), {"data": [], "training": [], "evaluation": []})
            if "data" in entry:
                parts["data"].append(float(entry["data"]["total"]))
            if "training" in entry:
                parts["training"].append(float(sum(part["total"] for part in entry["training"].values())))
            if "evaluation" in entry:
                parts["evaluation"].append(float(sum(part["total"] for part in entry["evaluation"].values())))
    return {key: RowCompute(_mean(p["data"]), _mean(p["training"]), _mean(p["evaluation"]),
                            max(len(p["training"]), len(p["evaluation"]))) for key, p in per.items()}


def flops_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}".replace("e+", "e")


COMPUTE_NOTE = ("Counted from token counts and the model's shape (README, \"What a row costs\"): data building is "
                "what the method generates with the original before training; training is its steps and any "
                "preparation (EWC's Fisher); evaluation is every suite's generation and scoring passes.")


def compute_table(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the compute table (no rows for runs whose units did not count)."""
    found = row_compute(board)
    header = (["model"] if board.several_models else []) + ["method", "data building", "training", "to train", "evaluation"]
    rows = []
    for row in board.rows:
        c = found.get((row.model, row.label))
        if c is not None:
            rows.append(([row.model] if board.several_models else []) + [row.name] + [
                flops_text(v) for v in (c.data, c.training, c.to_train, c.evaluation)])
    return header, rows


def compute_markdown(board: Leaderboard) -> list[str]:
    header, rows = compute_table(board)
    if not rows:
        return []
    labels = len(header) - 4
    return (["## Compute (FLOPs, mean over seeds)", "", COMPUTE_NOTE, "", "| " + " | ".join(header) + " |",
             "|" + "---|" * labels + "---:|" * 4] + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def retention_column(board: Leaderboard) -> Column | None:
    """The general column the Pareto view uses: retention's main metric, else the first general one."""
    generals = [c for c in board.main if c.role != "task" and c.higher_is_better is not None]
    return next((c for c in generals if c.suite == "retention"), generals[0] if generals else None)


def pareto_points(board: Leaderboard) -> list[dict]:
    """One point per trained row with a task gain, a retention change and a compute count: gain
    (Δ task metric over the original), retention (Δ of the retention column, signed so that up
    is closer to the original), flops (to train), and whether another row is at least as good
    on all three and better on one (``dominated``)."""
    task = next((c for c in board.main if c.role == "task"), None)
    general = retention_column(board)
    if task is None or general is None:
        return []
    sign = -1.0 if general.higher_is_better is False else 1.0
    found = row_compute(board)
    points = []
    for row in board.rows:
        gain, kept = board.cell(row, task).delta, board.cell(row, general).delta
        cost = found.get((row.model, row.label))
        if row.original or gain is None or kept is None or cost is None or cost.to_train is None:
            continue
        points.append({"model": row.model, "label": row.label, "name": row.name, "gain": gain, "retention": sign * kept,
                       "flops": cost.to_train, "task": task.key, "general": general.key})
    for p in points:
        p["dominated"] = any(q is not p and q["gain"] >= p["gain"] and q["retention"] >= p["retention"]
                             and q["flops"] <= p["flops"] and (q["gain"], q["retention"], q["flops"]) != (p["gain"], p["retention"], p["flops"])
                             for q in points)
    return points
