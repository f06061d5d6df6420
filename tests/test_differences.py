"""Differences between rows in a real run's report (the intervals themselves: test_intervals.py)."""

from __future__ import annotations

import csv
import json

from test_run import cli

PLAN = """analysis:
  primary: [{a: vanilla, b: original, metric: retention/kl, direction: higher}]
  seeds: 2
  alpha: %s
"""


def _run(tiny_checkpoint, tmp_path, run_dir, alpha: str = "0.05"):
    config = tmp_path / f"analysis-{alpha}.yaml"
    config.write_text(PLAN % alpha)
    return cli(["run", "--config", str(config), "--model", str(tiny_checkpoint), "--methods", "vanilla,sdft",
                "--suites", "retention,safety", "--seeds", "0,1", "--train-size", "8", "--eval-size", "6", "--steps", "3",
                "--batch-size", "4", "--out", str(run_dir), "--set", "max_new_tokens=6", "--set", "retention.max_new_tokens=6",
                "--set", "sdft.max_new_tokens=6", "--set", "budget.learning_rate=0.01"],
               {"RADIS_BENCH_CACHE": str(tmp_path / "cache")})


def test_report_shows_differences_with_cis(tiny_checkpoint, tmp_path):
    """One tiny run with an analysis plan: the differences, their verdicts, the plan written
    before the first unit, a look per new information state, an amendment when the plan changes."""
    run_dir = tmp_path / "run"
    result = _run(tiny_checkpoint, tmp_path, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "analysis plan recorded (1 primary contrasts, 0 units scored before it)" in result.stderr
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

    assert kl["role"] == "primary" and kl["looks"] == "1" and kl["verdict"] in ("different", "not resolved")
    assert float(kl["adjusted_low"]) == float(kl["ci_low"])  # one look at the planned seeds: the nominal interval
    assert {r["role"] for key, r in rows.items() if key != ("vanilla", "original", "retention", "kl")} == {"secondary"}
    assert json.loads((run_dir / "analysis" / "plan.json").read_text())["analysis"]["primary"][0]["metric"] == "retention/kl"
    assert "Analysis plan of `run`, recorded" in markdown and "before any unit was scored" in markdown

    # the same config again: nothing computed, no new look, no amendment
    again = _run(tiny_checkpoint, tmp_path, run_dir)
    assert again.returncode == 0 and "0 units computed" in again.stderr, again.stderr[-3000:]
    assert len((run_dir / "analysis" / "looks.jsonl").read_text().splitlines()) == 1
    assert not (run_dir / "analysis" / "amendments.json").exists()
    # another alpha: a dated amendment, shown with the original plan
    amended = _run(tiny_checkpoint, tmp_path, run_dir, alpha="0.01")
    assert amended.returncode == 0 and "analysis plan amended" in amended.stderr, amended.stderr[-3000:]
    markdown = (run_dir / "report" / "leaderboard.md").read_text()
    assert "Analysis plan of `run`, recorded" in markdown and "Amended" in markdown and "alpha 0.05 → 0.01" in markdown
