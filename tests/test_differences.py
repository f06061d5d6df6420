"""Differences between rows in a real run's report (the intervals themselves: test_intervals.py)."""

from __future__ import annotations

import csv

from test_run import cli


def test_report_shows_differences_with_cis(tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    result = cli(["run", "--model", str(tiny_checkpoint), "--methods", "vanilla,sdft", "--suites", "retention,safety",
                  "--seeds", "0,1", "--train-size", "8", "--eval-size", "6", "--steps", "3", "--batch-size", "4",
                  "--out", str(run_dir), "--set", "max_new_tokens=6", "--set", "retention.max_new_tokens=6",
                  "--set", "sdft.max_new_tokens=6", "--set", "budget.learning_rate=0.01"],
                 {"RADIS_BENCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "results" / "vanilla-seed1" / "items" / "retention.json").exists()
    with (run_dir / "report" / "differences.csv").open() as fh:
        rows = {(r["method"], r["versus"], r["suite"], r["metric"]): r for r in csv.DictReader(fh)}
    kl = rows[("vanilla", "original", "retention", "kl")]
    # the original's KL to itself is 0 on every item: the difference is vanilla's mean KL, all positive
    vanilla_kl = [float(r["value"]) for r in csv.DictReader((run_dir / "scores.csv").open())
                  if r["method"] == "vanilla" and r["metric"] == "kl"]
    assert abs(float(kl["difference"]) - sum(vanilla_kl) / 2) < 1e-6
    assert kl["significant"] == "True" and 0 < float(kl["ci_low"]) <= float(kl["difference"]) <= float(kl["ci_high"])
    assert kl["n_items"] == "6" and kl["seeds"] == "2" and kl["seeds_versus"] == "1"
    assert ("sdft", "vanilla", "retention", "kl") in rows and ("vanilla", "vanilla", "retention", "kl") not in rows
    markdown = (run_dir / "report" / "leaderboard.md").read_text()
    assert "## Differences" in markdown and "| vanilla − original |" in markdown and "sdft − vanilla" in markdown
    assert "<h2>Differences</h2>" in (run_dir / "report" / "leaderboard.html").read_text()
