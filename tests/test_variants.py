"""Ablations as first-class rows: variants on the command line and in config files, sweeps
that expand into variants, their own keys and folders, --only on a variant, and the key of
an evaluation depending only on what its suite reads."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from harness.config.settings import RunConfig
from harness.errors import UserError
from harness.run.plan import Plan, configure, parse_entry
from test_run import cli, read_scores


def plan_of(model, **settings) -> Plan:
    cfg = RunConfig()
    configure(cfg, {"model": str(model), **settings}, "test")
    return Plan(cfg)


def test_variant_specs_parse():
    plain = parse_entry("radis")
    assert (plain.label, plain.method, plain.options) == ("radis", "radis", {})
    auto = parse_entry("radis@rationale_weight=0.5")
    assert (auto.label, auto.method, auto.options) == ("radis@rationale_weight=0.5", "radis", {"rationale_weight": "0.5"})
    named = parse_entry("lam05:radis@rationale_weight=0.5@budget.lr=1e-4@lora.r=8@seeds=0+1")
    assert (named.label, named.options, named.budget, named.lora, named.seeds) == (
        "lam05", {"rationale_weight": "0.5"}, {"learning_rate": "1e-4"}, {"r": "8"}, [0, 1])
    entry = parse_entry({"label": "radis-lam0.5", "method": "radis", "rationale_weight": 0.5, "budget": {"steps": 4}})
    assert (entry.label, entry.method, entry.options, entry.budget) == ("radis-lam0.5", "radis", {"rationale_weight": 0.5}, {"steps": 4})
    with pytest.raises(UserError, match="must look like @option=value"):
        parse_entry("radis@rationale_weight")


def test_a_variant_takes_the_runs_options_of_its_method_then_its_own(tiny_checkpoint):
    plan = plan_of(tiny_checkpoint, methods=["radis", "half:radis@rationale_weight=0.5"],
                   method_options={"radis": {"max_new_tokens": 12}})
    assert plan.methods["half"].options.max_new_tokens == 12 and plan.methods["half"].options.rationale_weight == 0.5
    assert plan.methods["radis"].options.rationale_weight == 1.0
    assert plan.entries["half"].varies == "radis"
    assert plan.keys.train_key("half", 0) != plan.keys.train_key("radis", 0)


def test_a_sweep_expands_the_product_of_its_axes(tiny_checkpoint):
    plan = plan_of(tiny_checkpoint, methods=["vanilla", "radis"],
                   sweep={"radis.rationale_weight": [0, 0.5, 1], "radis.rationale_fraction": [0.5, 1]})
    swept = [label for label, e in plan.entries.items() if e.sweep]
    # 3 x 2 combinations; (1, 1) is radis itself
    assert len(swept) == 5 and "radis@rationale_weight=1@rationale_fraction=1" not in swept
    assert "radis@rationale_weight=0@rationale_fraction=0.5" in swept
    assert all(plan.entries[label].varies == "radis" for label in swept)
    budget = plan_of(tiny_checkpoint, methods=["vanilla"], sweep={"vanilla.budget.lr": ["1e-4", "1e-3"]})
    assert budget.budgets["vanilla@budget.lr=1e-4"].learning_rate == 1e-4
    assert budget.budget_differs("vanilla@budget.lr=1e-4") == ["budget.learning_rate 0.0001 (shared 0.0002)"]
    assert budget.budget_differs("vanilla") == []


def test_the_dry_run_prints_the_grid(tiny_checkpoint):
    from harness.cli import app

    result = CliRunner().invoke(app, ["run", "--dry-run", "--model", str(tiny_checkpoint), "--methods", "vanilla,radis",
                                      "--sweep", "radis.rationale_weight=0,0.5,1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "radis@rationale_weight=0 " in result.output and "radis@rationale_weight=0.5" in result.output
    assert "radis@rationale_weight=1 " not in result.output  # the unswept row is that point
    assert "GPU hours (estimate)" in result.output


@pytest.mark.parametrize("methods, says", [
    ("radis,nope@x=1", "Unknown method 'nope'"),
    ("radis@no_such_option=1", "Unknown setting 'no_such_option'"),
    ("radis,radis", "appears twice"),
    ("a/b:radis", "cannot name a folder"),
    ("original:vanilla", "cannot name a folder"),
    ("x-seed1:vanilla", "cannot name a folder"),
    ("radis@rationale_weight=-1", "rationale_weight must be 0 or more"),
    ("vanilla@budget.lr=-1", "method 'vanilla@budget.lr=-1': budget.learning_rate must be positive"),
    ("vanilla@lora.r=0", "method 'vanilla@lora.r=0': lora.r must be positive"),
    ("vanilla@budget.nope=1", "Unknown setting 'nope'"),
])
def test_bad_variants_are_one_line_and_exit_2(tiny_checkpoint, methods, says):
    from harness.cli import app

    result = CliRunner().invoke(app, ["run", "--dry-run", "--model", str(tiny_checkpoint), "--methods", methods])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], result.output


def test_a_variant_is_a_row_everywhere(tiny_checkpoint, tmp_path):
    """Its own folders and keys, --only on it, its rows in scores, manifest and report."""
    run_dir = tmp_path / "run"
    env = {"RADIS_BENCH_CACHE": str(tmp_path / "cache")}
    args = ["run", "--model", str(tiny_checkpoint), "--methods", "vanilla,fast:vanilla@budget.lr=0.01", "--suites", "retention",
            "--train-size", "8", "--eval-size", "4", "--steps", "2", "--batch-size", "4", "--out", str(run_dir),
            "--set", "retention.max_new_tokens=6"]
    only = cli(args + ["--only", "method=fast"], env)
    assert only.returncode == 0, only.stderr[-3000:]
    assert (run_dir / "models" / "fast" / "seed0" / "train_stats.json").exists()
    assert (run_dir / "results" / "fast-seed0" / "retention.json").exists()
    assert not (run_dir / "models" / "vanilla").exists()
    full = cli(args, env)
    assert full.returncode == 0, full.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["keys"]["fast"]["0"] != manifest["keys"]["vanilla"]["0"]
    assert manifest["methods"]["fast"]["budget_differs"] == ["budget.learning_rate 0.01 (shared 0.0002)"]
    assert manifest["methods"]["fast"]["varies"] == "vanilla"
    assert {r["method"] for r in read_scores(run_dir)} == {"original", "vanilla", "fast"}
    md = (run_dir / "report" / "leaderboard.md").read_text()
    assert "| fast †" in md and "fast − vanilla" in md


def test_an_evaluation_key_holds_only_what_its_suite_reads(tiny_checkpoint):
    """--comet-model is translation's setting: changing it re-scores translation, nothing else."""
    settings = dict(methods=["vanilla"], suites=["translation", "ifeval", "retention"])
    a = plan_of(tiny_checkpoint, **settings, comet_model="Unbabel/wmt22-comet-da")
    b = plan_of(tiny_checkpoint, **settings, comet_model="Unbabel/eamt22-cometinho-da")
    key = a.keys.train_key("vanilla", 0)
    assert key == b.keys.train_key("vanilla", 0)
    assert a.keys.eval_key(key, "translation") != b.keys.eval_key(key, "translation")
    assert a.keys.eval_key(key, "ifeval") == b.keys.eval_key(key, "ifeval")
    assert a.keys.eval_key(key, "retention") == b.keys.eval_key(key, "retention")
    # the run's default generation limit reaches only the suites that take it
    c = plan_of(tiny_checkpoint, **settings, comet_model="Unbabel/wmt22-comet-da", max_new_tokens=64,
                suite_options={"retention": {"max_new_tokens": 128}})
    assert c.keys.eval_key(key, "retention") == a.keys.eval_key(key, "retention") and c.keys.eval_key(key, "ifeval") != a.keys.eval_key(key, "ifeval")
