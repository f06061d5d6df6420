"""A training identical to one already done in the run (wise = vanilla's training, then
interpolation) is done once and copied."""

from __future__ import annotations

import json

from test_run import cli


def _args(model, out, methods):
    return ["run", "--model", str(model), "--methods", methods, "--suites", "gsm8k", "--seeds", "0", "--train-size", "8",
            "--eval-size", "3", "--steps", "3", "--batch-size", "4", "--out", str(out), "--set", "max_new_tokens=6"]


def test_wise_reuses_vanillas_training_but_not_kls(tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    result = cli(_args(tiny_checkpoint, run_dir, "vanilla,kl,wise"), {"RADIS_BENCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "reused: training wise seed 0 is identical to vanilla's" in log
    assert "training: kl seed 0" in log and "training: wise seed 0 (" not in log
    models = run_dir / "models"
    vanilla = json.loads((models / "vanilla/seed0/train_stats.json").read_text())
    wise = json.loads((models / "wise/seed0/train_stats.json").read_text())
    kl = json.loads((models / "kl/seed0/train_stats.json").read_text())
    assert wise.pop("shared_with") == "vanilla seed 0" and "shared_with" not in kl
    assert wise == vanilla
    assert kl["losses"] != vanilla["losses"]
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (models / "wise/seed0/final" / name).read_bytes() == (models / "vanilla/seed0/final" / name).read_bytes()
    assert json.loads((models / "wise/seed0/method_stats.json").read_text())["training_shared_with"] == "vanilla"
    # the interpolated model is evaluated as its own unit, not as a copy of vanilla's
    units = {m: json.loads((run_dir / "results" / f"{m}-seed0" / "gsm8k.json").read_text()) for m in ("vanilla", "wise")}
    assert units["wise"]["key"] != units["vanilla"]["key"] and units["wise"]["method"] == "wise"
