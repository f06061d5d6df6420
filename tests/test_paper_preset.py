"""The shipped `paper` preset: an offline dry run prints the plan and a GPU-hours estimate, and exits 2 where
the data lacks pairs (a real run would stop there)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner


def dry_run(*args):
    from harness.cli import app

    return CliRunner().invoke(app, ["run", *args], env={"HF_HUB_OFFLINE": "1", "COLUMNS": "200"})


def test_paper_dry_run_offline_lists_missing_pairs_and_gpu_hours_then_exits_2(data_dir):
    # the conftest socket guard fails any network connection made in-process
    result = dry_run("--config", "paper", "--data-dir", str(data_dir), "--dry-run")
    assert result.exit_code == 2, result.output  # the real run would stop at the missing pairs: so does the dry run
    out = result.output
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: ") and "lacks data for cs-en, ru-en, en-cs, en-ru" in last and "Traceback" not in out
    assert "mistralai/Mistral-7B-Instruct-v0.2" in out
    assert "not in local cache; would be downloaded" in out or "in the local hub cache" in out
    for direction in ("de-en", "en-de", "zh-en", "en-zh"):
        assert direction in out
    assert "Missing data: cs-en, ru-en, en-cs, en-ru" in out  # ../shared/data holds de and zh only
    assert "radis, vanilla, sdft, seqkd, replay" in out and "translation, ifeval, alpaca_eval, mt_bench, safety" in out
    assert "GPU hours (estimate): ~" in out and "7.24B parameters" in out


def test_paper_llama2_extends_paper(data_dir):
    result = dry_run("--config", "paper-llama2", "--data-dir", str(data_dir), "--pairs", "de-en,en-de", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "meta-llama/Llama-2-7b-chat-hf" in result.output and "Missing data" not in result.output
    assert "6.74B parameters" in result.output and "Seeds: 0, 1, 2" in result.output


def test_real_run_with_missing_pairs_stops_with_one_line(data_dir, tmp_path):
    result = dry_run("--config", "paper", "--data-dir", str(data_dir), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: No data for pair cs-en") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_unknown_preset_names_the_presets():
    result = dry_run("--config", "papers", "--dry-run")
    assert result.exit_code == 2 and "presets: paper, paper-llama2" in result.output


def test_params_from_config_matches_the_measured_model():
    from harness.run.estimate import MEASURED_PARAMS, params_from_config

    mistral = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 32000,
               "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False}
    assert params_from_config(mistral) == MEASURED_PARAMS


def test_the_estimate_counts_only_the_units_to_compute(tiny_checkpoint, tmp_path):
    from harness.config.settings import RunConfig
    from harness.config.parse import apply_settings
    from harness.run.estimate import estimate
    from harness.run.checks import check_plan
    from harness.run.plan import Plan
    from harness.run.units import pending_units

    cfg = RunConfig()
    apply_settings(cfg, {"model": str(tiny_checkpoint), "methods": ["vanilla", "radis"], "seeds": [0, 1],
                         "out": str(tmp_path / "run")}, "test")
    plan = Plan(cfg)
    sizes = check_plan(plan, missing_ok=True)
    everything = estimate(plan, sizes)
    assert everything.train_tokens > 0 and everything.gen_tokens > 0
    assert estimate(plan, sizes, pending_units(plan)).train_tokens == everything.train_tokens  # a new run directory
    suites = list(plan.suites)
    half = estimate(plan, sizes, {"todo_train": [("vanilla", 1), ("radis", 1)],
                                  "todo_eval": {"vanilla-seed1": suites, "radis-seed1": suites}})
    assert half.train_tokens * 2 == pytest.approx(everything.train_tokens, rel=1e-6)
    assert 0 < half.gen_tokens < everything.gen_tokens
    nothing = estimate(plan, sizes, {"todo_train": [], "todo_eval": {}})
    assert (nothing.train_tokens, nothing.gen_tokens) == (0, 0)
