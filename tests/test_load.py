"""Under load and faults (issue 37): four cells of one tiny run as separate processes on one run
directory at once, one of them SIGKILLed mid-training and restarted; the run directory ends
complete, every unit once, with the scores of a single uninterrupted process."""

from __future__ import annotations

import csv
import json

import pytest

from test_run import cli, kill_when

ARGS = ["--methods", "vanilla,kl", "--suites", "translation,retention", "--seeds", "0,1", "--train-size", "8",
        "--eval-size", "4", "--steps", "6", "--batch-size", "4", "--set", "budget.save_every=2",
        "--set", "max_new_tokens=8", "--set", "retention.max_new_tokens=8", "--set", "translation.max_new_tokens=8"]
CELLS = ["original", "vanilla-seed0", "vanilla-seed1", "kl-seed0", "kl-seed1"]
SUITES = ["translation", "retention"]


def rows(run_dir) -> list[dict]:
    with (run_dir / "scores.csv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_four_cells_at_once_one_killed_and_restarted_end_as_one_process(tiny_checkpoint, tmp_path):
    reference = cli(["run", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "single"), *ARGS],
                    {"RADIS_BENCH_CACHE": str(tmp_path / "cache-single")})
    assert reference.returncode == 0, reference.stderr[-3000:]

    run_dir, env = tmp_path / "run", {"RADIS_BENCH_CACHE": str(tmp_path / "cache")}  # one cache shared by all four
    cell = lambda only: ["run", "--model", str(tiny_checkpoint), "--out", str(run_dir), *ARGS, "--only", only]
    victim = "method=kl,seed=1"
    procs = {only: cli(cell(only), env, wait=False)
             for only in ("method=original", "method=vanilla", "method=kl,seed=0", victim)}
    state = run_dir / "models" / "kl" / "seed1" / "state"
    kill_when(procs[victim], lambda: state.exists() and not (state.parent / "train_stats.json").exists())
    assert not (run_dir / "models" / "kl" / "seed1" / "train_stats.json").exists()  # killed mid-training
    procs[victim] = cli(cell(victim), env, wait=False)  # restarted while the others still run (or are done)
    for only, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{only}: {err[-3000:]}"
    assert json.loads((state.parent / "train_stats.json").read_text())["resumed_from_step"] > 0

    # every unit present, once
    assert sorted(p.name for p in (run_dir / "results").iterdir()) == sorted(CELLS)
    for name in CELLS:
        assert sorted(p.name for p in (run_dir / "results" / name).glob("*.json")) == sorted(f"{s}.json" for s in SUITES)
    ours, theirs = rows(run_dir), rows(tmp_path / "single")
    keys = [(r["method"], r["seed"], r["suite"], r["metric"]) for r in ours]
    assert len(keys) == len(set(keys))
    assert keys == [(r["method"], r["seed"], r["suite"], r["metric"]) for r in theirs]
    # the manifest is complete, whichever process wrote it last
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["cells"]) == set(CELLS)
    assert {label: sorted(seeds) for label, seeds in manifest["training"].items()} == {"vanilla": ["0", "1"], "kl": ["0", "1"]}
    assert all(stats for seeds in manifest["training"].values() for stats in seeds.values())
    # the scores of a single uninterrupted process
    for a, b in zip(ours, theirs):
        for column in ("value", "n", "ci_low", "ci_high"):
            if a[column] and b[column]:
                assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-4, abs=1e-6), (a, b)
            else:
                assert a[column] == b[column], (a, b)
    # and nothing is left to compute
    again = cli(["run", "--model", str(tiny_checkpoint), "--out", str(run_dir), *ARGS], env)
    assert again.returncode == 0 and "0 units computed" in again.stderr, again.stderr[-3000:]
