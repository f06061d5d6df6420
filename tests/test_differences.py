"""CIs of differences between methods: the paired item-and-seed bootstrap, and the report."""

from __future__ import annotations

import csv

import numpy as np
from sacrebleu.metrics import CHRF

from harness.differences import difference, finalize
from test_run import cli


def _mean_stats(values, ids=None):
    ids = ids or [str(i) for i in range(len(values))]
    return {"kind": "mean", "ids": ids, "rows": [[float(v), 1.0] for v in values]}


def test_identical_methods_differ_by_exactly_zero():
    a = [_mean_stats(np.random.default_rng(s).random(50)) for s in range(3)]
    result = difference(a, a)
    assert result["difference"] == 0.0
    assert result["ci_low"] <= 0.0 <= result["ci_high"] and not result["significant"]


def test_paired_shift_is_found_and_its_ci_covers_it():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 200)  # item difficulty dominates the spread: pairing removes it
    a = [_mean_stats(base + 0.1 + rng.normal(0, 0.05, 200)) for _ in range(3)]
    b = [_mean_stats(base + rng.normal(0, 0.05, 200)) for _ in range(3)]
    result = difference(a, b)
    assert abs(result["difference"] - 0.1) < 0.02
    assert result["significant"] and 0.05 < result["ci_low"] < 0.1 < result["ci_high"] < 0.15
    # unpaired, the same shift would hide in the items' spread of ~1/sqrt(200) = 0.07 per mean
    assert result["ci_high"] - result["ci_low"] < 0.07


def test_items_are_matched_by_id_not_position():
    a = [_mean_stats([1.0, 2.0, 3.0], ["x", "y", "z"])]
    b = [_mean_stats([3.0, 1.0, 2.0], ["z", "x", "y"])]
    assert difference(a, b)["difference"] == 0.0


def test_corpus_chrf_from_summed_statistics_matches_sacrebleu():
    hyps = ["the cat sat on the mat", "a dog barks", "hello world"]
    refs = ["the cat sat on a mat", "the dog barked", "hello there world"]
    chrf = CHRF(word_order=2)
    rows = np.asarray(chrf._extract_corpus_statistics(hyps, [refs]), dtype=float)
    assert abs(finalize("chrf", rows.sum(axis=0)) - chrf.corpus_score(hyps, [refs]).score) < 1e-9


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
