"""suite_sizes: one suite scores fewer items than eval_size, and its unit key says so."""

from __future__ import annotations

import json
from pathlib import Path

from test_run import cli


def _config(tmp_path: Path, model: Path, sizes: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"model: {model}\nmethods: [vanilla]\nsuites: [safety, gsm8k]\nseeds: [0]\ntrain_size: 8\neval_size: 6\n"
        f"out: {tmp_path / 'run'}\ntitle: Tiny sizes\nmax_new_tokens: 8\nbudget: {{steps: 2, batch_size: 4}}\nsuite_sizes: {sizes}\n"
    )
    return path


def _metric(run_dir: Path, label: str, suite: str, name: str) -> dict:
    unit = json.loads((run_dir / "results" / label / f"{suite}.json").read_text())
    return next(m for m in unit["metrics"] if m["name"] == name) | {"key": unit["key"]}


def test_suite_size_limits_one_suite_and_enters_its_key(tiny_checkpoint, tmp_path):
    env = {"RADIS_BENCH_CACHE": str(tmp_path / "cache")}
    result = cli(["run", "--config", str(_config(tmp_path, tiny_checkpoint, "{safety: 3}"))], env)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "run"
    for label in ("original", "vanilla-seed0"):
        assert _metric(run_dir, label, "safety", "refusal_rate")["n"] == 3
        assert _metric(run_dir, label, "gsm8k", "accuracy")["n"] == 6
    assert (run_dir / "report" / "leaderboard.md").read_text().startswith("# Tiny sizes\n")
    safety_key = _metric(run_dir, "original", "safety", "refusal_rate")["key"]
    gsm8k_key = _metric(run_dir, "original", "gsm8k", "accuracy")["key"]

    # another size for safety redoes safety only
    result = cli(["run", "--config", str(_config(tmp_path, tiny_checkpoint, "{safety: 4}"))], env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _metric(run_dir, "original", "safety", "refusal_rate")["n"] == 4
    assert _metric(run_dir, "original", "safety", "refusal_rate")["key"] != safety_key
    assert _metric(run_dir, "original", "gsm8k", "accuracy")["key"] == gsm8k_key
    assert "0 units computed" not in result.stdout and "reused: training vanilla" in result.stdout + result.stderr


def test_suite_size_for_a_suite_not_in_the_run_is_one_line(tiny_checkpoint, tmp_path):
    result = cli(["run", "--config", str(_config(tmp_path, tiny_checkpoint, "{ifeval: 3}")), "--dry-run"])
    assert result.returncode == 2
    assert "suite_sizes names 'ifeval'" in result.stderr and "Traceback" not in result.stderr
    result = cli(["run", "--config", str(_config(tmp_path, tiny_checkpoint, "{safety: 0}")), "--dry-run"])
    assert result.returncode == 2
    assert "suite_sizes must map suite names to positive numbers" in result.stderr and "Traceback" not in result.stderr
