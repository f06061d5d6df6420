"""Cells of a grid (`run --only`): separate processes into one run directory, one leaderboard."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from test_run import cli, read_scores, run_args

SUITES = "translation,retention"


def cell_args(model, out, only, methods="radis,vanilla"):
    args = run_args(model, out, methods=methods)
    args[args.index("--suites") + 1] = SUITES
    return args + ["--only", only]


def test_parse_only_selects_cells():
    from harness.run.plan import parse_only

    methods = ["radis", "vanilla", "sdft"]
    seeds = {"radis": [0, 1], "vanilla": [0, 1], "sdft": [0, 1]}.__getitem__
    assert parse_only(["method=radis,seed=1"], methods, seeds) == ["radis-seed1"]
    assert parse_only(["method=original"], methods, seeds) == ["original"]
    assert parse_only(["method=vanilla+radis"], methods, seeds) == ["radis-seed0", "vanilla-seed0", "radis-seed1", "vanilla-seed1"]
    assert parse_only(["seed=0", "method=original"], methods, seeds) == ["original", "radis-seed0", "vanilla-seed0", "sdft-seed0"]
    assert parse_only(["method=original+sdft,seed=1"], methods, seeds) == ["original", "sdft-seed1"]
    # a row with its own seeds (a variant at fewer seeds): only those
    few = {"radis": [0, 1], "radis@rationale_weight=0.5": [1]}.__getitem__
    labels = ["radis", "radis@rationale_weight=0.5"]
    assert parse_only(["method=radis@rationale_weight=0.5"], labels, few) == ["radis@rationale_weight=0.5-seed1"]
    assert parse_only(["seed=1"], labels, few) == ["radis-seed1", "radis@rationale_weight=0.5-seed1"]


@pytest.mark.parametrize("only, says", [
    ("method=nope", "'nope' is not one of this run's methods"),
    ("method=radis,seed=7", "seed '7' is not one of this run's seeds"),
    ("seed=x", "seed 'x' is not one of this run's seeds"),
    ("radis", "is not valid; use method=LABEL"),
    ("method=radis,colour=red", "is not valid"),
    ("method=", "is not valid"),
    ("method=original,seed=0", "the original model has no seed"),
])
def test_bad_only_is_one_line_and_exit_2(tiny_checkpoint, tmp_path, only, says):
    from harness.cli import app

    result = CliRunner().invoke(app, cell_args(tiny_checkpoint, tmp_path / "run", only) + ["--dry-run"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --only") and says in lines[0], result.output


def test_busy_cell_and_full_run_next_to_cells_exit_2(tiny_checkpoint, tmp_path):
    from harness.cli import app
    from harness.store import CellLock, RunLock

    run_dir = tmp_path / "run"
    with RunLock(run_dir, shared=True), CellLock(run_dir, "radis-seed0"):
        same = CliRunner().invoke(app, cell_args(tiny_checkpoint, run_dir, "method=radis"))
        full = CliRunner().invoke(app, cell_args(tiny_checkpoint, run_dir, "method=radis")[:-2])
    assert same.exit_code == 2 and "Cell radis-seed0 of run directory" in same.output and "being computed by radis-bench process" in same.output
    assert full.exit_code == 2 and "in use by cells of a grid" in full.output
    assert not (run_dir / "results").exists()


def test_cells_in_separate_processes_make_one_leaderboard(tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    env = {"RADIS_BENCH_CACHE": str(tmp_path / "cache")}
    procs = {only: cli(cell_args(tiny_checkpoint, run_dir, only), env, wait=False)
             for only in ("method=original", "method=radis,seed=0", "method=vanilla")}
    errs = {}
    for only, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{only}: {err[-3000:]}"
        errs[only] = err
    # each process computed its own cell and nothing else
    assert "evaluating: original on translation" in errs["method=original"]
    assert "training:" not in errs["method=original"]
    for only, own, other in (("method=radis,seed=0", "radis", "vanilla"), ("method=vanilla", "vanilla", "radis")):
        # (the tiny model's rationales are all rejected, so radis trains exactly as vanilla: whichever
        # process finishes first trains, the other may copy its identical training)
        trained = f"training: {own} seed 0" in errs[only] or f"reused: training {own} seed 0 is identical" in errs[only]
        assert trained and f"evaluating: {own}-seed0 on retention" in errs[only]
        mine = errs[only].split("Main metrics")[0]  # the summary table lists every method
        assert f"{other} seed" not in mine and f"{other}-seed" not in mine and "evaluating: original" not in mine
    assert sorted(p.name for p in (run_dir / "results").iterdir()) == ["original", "radis-seed0", "vanilla-seed0"]
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == ["radis", "vanilla"]
    # the shared files hold every cell, whichever process wrote them last
    scores = read_scores(run_dir)
    assert {(r["method"], r["suite"]) for r in scores} == {(m, s) for m in ("original", "radis", "vanilla") for s in SUITES.split(",")}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["training"]) == {"radis", "vanilla"}
    assert set(manifest["cells"]) == {"original", "radis-seed0", "vanilla-seed0"}
    assert {"eval original translation", "eval radis-seed0 translation", "eval vanilla-seed0 retention"} <= set(manifest["timings"])
    report = cli(["report", str(run_dir), "--out", str(tmp_path / "board")], env)
    assert report.returncode == 0, report.stderr
    with (tmp_path / "board" / "leaderboard.csv").open() as fh:
        board = list(csv.DictReader(fh))
    assert {r["method"] for r in board} == {"original", "radis", "vanilla"}
    assert {(r["method"], r["suite"]) for r in board} == {(m, s) for m in ("original", "radis", "vanilla") for s in SUITES.split(",")}
    assert (run_dir / "report" / "leaderboard.csv").read_text() == (tmp_path / "board" / "leaderboard.csv").read_text()
    # a full run afterwards finds every unit done and recomputes nothing
    again = cli(cell_args(tiny_checkpoint, run_dir, "method=radis")[:-2], env)
    assert again.returncode == 0 and "0 units computed" in again.stderr, again.stderr[-3000:]
