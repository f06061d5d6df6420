"""Trajectories (issue 35): checkpoints every ``eval_every`` steps evaluated as units of their
own, reused on a re-run, leaving the training and the final scores as they are; the report's
series and plot."""

from __future__ import annotations

import csv
import json

from harness.report.board import build_leaderboard
from harness.report.trajectory import trajectory_series
from test_run import cli


def _args(model, out, *extra):
    return ["run", "--model", str(model), "--methods", "vanilla,radis", "--suites", "translation,retention,gsm8k",
            "--seeds", "0,1", "--train-size", "8", "--eval-size", "3", "--steps", "6", "--batch-size", "4", "--out", str(out),
            "--set", "max_new_tokens=6", "--set", "radis.max_new_tokens=6", "--set", "retention.max_new_tokens=6",
            "--set", "translation.max_new_tokens=6", *extra]


def _final_scores(run_dir):
    with (run_dir / "scores.csv").open() as fh:
        return [row for row in csv.DictReader(fh)]


def test_checkpoints_are_units_that_change_nothing_else(tiny_checkpoint, tmp_path):
    with_points, without = tmp_path / "with", tmp_path / "without"
    dry = cli(_args(tiny_checkpoint, with_points, "--eval-every", "2", "--dry-run"), {"RADIS_BENCH_CACHE": str(tmp_path / "cache-a")})
    assert dry.returncode == 0 and "8 checkpoints x 2 suites (translation, retention) = 16 evaluation units" in dry.stdout, dry.stdout
    first = cli(_args(tiny_checkpoint, with_points, "--eval-every", "2"), {"RADIS_BENCH_CACHE": str(tmp_path / "cache-a")})
    assert first.returncode == 0, first.stderr[-3000:]
    plain = cli(_args(tiny_checkpoint, without), {"RADIS_BENCH_CACHE": str(tmp_path / "cache-b")})
    assert plain.returncode == 0, plain.stderr[-3000:]

    # the checkpoints at steps 2 and 4 are units on the trajectory suites (not gsm8k), the last step is the cell's own
    for label in ("vanilla", "radis"):
        for seed in (0, 1):
            for step in (2, 4):
                point = with_points / "results" / f"{label}-seed{seed}@step{step}"
                assert sorted(p.name for p in point.glob("*.json")) == ["retention.json", "translation.json"]
                unit = json.loads((point / "retention.json").read_text())
                assert unit["step"] == step and unit["seed"] == seed
            assert not (with_points / "results" / f"{label}-seed{seed}@step6").exists()
            # the training is the same with and without its checkpoints kept
            a = json.loads((with_points / "models" / label / f"seed{seed}" / "train_stats.json").read_text())
            b = json.loads((without / "models" / label / f"seed{seed}" / "train_stats.json").read_text())
            assert a["losses"] == b["losses"]
            final = "final/adapter_model.safetensors"
            assert (with_points / "models" / label / f"seed{seed}" / final).read_bytes() == \
                (without / "models" / label / f"seed{seed}" / final).read_bytes()
    assert _final_scores(with_points) == _final_scores(without)
    assert not (without / "trajectories.csv").exists() and not (without / "report" / "trajectories.csv").exists()

    again = cli(_args(tiny_checkpoint, with_points, "--eval-every", "2"), {"RADIS_BENCH_CACHE": str(tmp_path / "cache-a")})
    log = again.stdout + again.stderr
    assert again.returncode == 0 and "0 units computed, 31 reused" in log, log[-2000:]  # 15 + 8 points x 2 suites

    with (with_points / "trajectories.csv").open() as fh:
        points = list(csv.DictReader(fh))
    assert {(r["method"], r["step"]) for r in points if r["metric"] == "kl"} == (
        {("original", "0")} | {(m, s) for m in ("vanilla", "radis") for s in ("2", "4", "6")})
    board = build_leaderboard([with_points])
    series = trajectory_series(board)
    kl = series[(series["suite"] == "retention") & (series["metric"] == "kl")]
    for label in ("vanilla", "radis"):
        line = kl[kl["method"] == label].set_index("step")
        assert list(line.index) == [0, 2, 4, 6]
        row = next(r for r in board.rows if r.label == label)
        column = next(c for c in board.columns if c.key == "retention/kl")
        assert line.loc[6, "mean"] == board.cell(row, column).mean  # the last point is the leaderboard's cell
        assert line.loc[0, "mean"] == 0.0  # the original against itself
        seeds = [float(r["value"]) for r in points if r["method"] == label and r["step"] == "4" and r["metric"] == "kl"]
        assert line.loc[4, "mean"] == sum(seeds) / 2 and line.loc[4, "n_seeds"] == 2
        assert line.loc[4, "ci_low"] <= line.loc[4, "mean"] <= line.loc[4, "ci_high"]
    report = with_points / "report"
    assert (report / "trajectories.csv").is_file() and (report / "trajectory_retention_kl.png").is_file()
    assert "trajectory_retention_kl.png" in (report / "leaderboard.md").read_text()
