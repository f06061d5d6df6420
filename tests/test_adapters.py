"""The adapter as a variable (issue 33): lora.kind (lora, rslora, dora, pissa, full) on the tiny
model, how it enters unit keys (the default leaves them as they were), sweeps over it, and the
methods that refuse kinds their hooks do not handle."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import pandas as pd
from conftest import build_tiny_model

from baselines.vanilla import Vanilla
from harness.config.settings import ADAPTER_KINDS, Budget, LoRASettings, check_lora, lora_key
from harness.errors import UserError
from harness.model.adapters import attach_adapter
from harness.model.checkpoints import load_snapshot, load_trained
from harness.model.onpolicy import WeightSnapshot
from harness.model.training import train
from harness.report.board import row_adapter
from test_methods import context
from test_run import cli
from test_variants import plan_of

BUDGET = Budget(steps=3, batch_size=4, learning_rate=2e-2, warmup_ratio=0.0, save_every=0, max_length=160)
PROBE = torch.tensor([[1, 5, 7, 9, 11, 13]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def test_the_default_kind_leaves_every_key_as_it_was_and_full_has_one_spelling():
    before = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": LoRASettings().target_modules, "full_finetune": False}
    assert lora_key(LoRASettings()) == before  # what keys hashed before lora.kind existed
    assert lora_key(LoRASettings(kind="full")) == lora_key(LoRASettings(full_finetune=True)) == {**before, "full_finetune": True}
    assert lora_key(LoRASettings(kind="dora")) == {**before, "kind": "dora"}
    assert LoRASettings(full_finetune=True).adapter == "full"
    with pytest.raises(UserError, match="kind 'qlora' is unknown"):
        check_lora(LoRASettings(kind="qlora"), "lora")
    with pytest.raises(UserError, match="contradicts kind=dora"):
        check_lora(LoRASettings(kind="dora", full_finetune=True), "lora")


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_every_kind_starts_at_the_original_trains_and_reloads_onto_a_fresh_original(tiny_tokenizer, tmp_path, kind):
    original = logits(build_tiny_model(tiny_tokenizer))
    lora = LoRASettings(r=4, alpha=8, kind=kind)
    attached = attach_adapter(build_tiny_model(tiny_tokenizer), lora, tmp_path / "start")
    assert torch.allclose(logits(attached), original, atol=1e-5)  # every kind starts at the original model
    names = [n for n, p in attached.named_parameters() if p.requires_grad]
    if kind == "full":
        assert len(names) == len(list(attached.parameters()))
    else:
        assert all("lora_" in n for n in names) and any("lora_magnitude_vector" in n for n in names) == (kind == "dora")
        layer = attached.base_model.model.model.layers[0].self_attn.q_proj
        assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4) if kind == "rslora" else 8 / 4)
    result = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, Vanilla().build_training_examples(context(None)), BUDGET,
                   lora, tmp_path / "run", seed=0)
    trained = logits(result.model)
    assert not torch.allclose(trained, original, atol=1e-4)
    reloaded = load_trained(build_tiny_model(tiny_tokenizer), tmp_path / "run")
    assert torch.allclose(logits(reloaded), trained, atol=1e-5)  # PiSSA's result is saved as plain LoRA on the original


def test_a_pissa_trajectory_point_reloads_onto_a_fresh_original_as_the_weights_of_its_step(tiny_tokenizer, tmp_path):
    """A trajectory keeps the weights every N steps; PiSSA's are kept converted, as its result is."""
    examples = Vanilla().build_training_examples(context(None))
    lora = LoRASettings(r=4, alpha=8, kind="pissa")
    one = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, examples, dataclasses.replace(BUDGET, steps=1), lora,
                tmp_path / "one", seed=0)
    two = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, examples, dataclasses.replace(BUDGET, steps=2), lora,
                tmp_path / "two", seed=0, snapshot_every=1)
    point = logits(load_snapshot(build_tiny_model(tiny_tokenizer), tmp_path / "two", 1))
    assert torch.allclose(point, logits(one.model), atol=1e-5)  # step 1 of two is the whole of one (same lr at step 0)
    assert not torch.allclose(point, logits(two.model), atol=1e-4)
    for kept in (tmp_path / "two" / "trajectory" / "step1", tmp_path / "two" / "final"):  # as vLLM can serve it on the original
        assert not str(json.loads((kept / "adapter_config.json").read_text())["init_lora_weights"]).startswith("pissa"), kept


def test_after_pissa_the_original_is_the_starting_snapshot_not_the_base_with_the_adapter_off(tiny_tokenizer, tmp_path):
    original = logits(build_tiny_model(tiny_tokenizer))
    model = attach_adapter(build_tiny_model(tiny_tokenizer), LoRASettings(r=4, alpha=8, kind="pissa"), tmp_path)
    start = WeightSnapshot(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.3)
    with start.used_by(model):
        assert torch.allclose(logits(model), original, atol=1e-5)
    with model.disable_adapter():
        assert not torch.allclose(logits(model), original, atol=1e-3)  # the residual weights alone


def test_a_sweep_over_kinds_makes_rows_of_their_own_marked_as_another_adapter(tiny_checkpoint):
    plan = plan_of(tiny_checkpoint, methods=["vanilla"], sweep={"vanilla.lora.kind": ["lora", "dora", "full"]})
    assert list(plan.entries) == ["vanilla", "vanilla@lora.kind=dora", "vanilla@lora.kind=full"]  # lora is the row itself
    assert plan.loras["vanilla@lora.kind=dora"].adapter == "dora"
    assert plan.budget_differs("vanilla@lora.kind=full") == ["lora.kind full (shared lora)"]
    assert plan.budget_differs("vanilla") == []
    keys = {plan.keys.train_key(label, 0) for label in plan.entries}
    assert len(keys) == 3
    old = plan_of(tiny_checkpoint, methods=["vanilla"], lora={"full_finetune": True})
    full = plan_of(tiny_checkpoint, methods=["vanilla"], lora={"kind": "full"})
    assert old.keys.train_key("vanilla", 0) == full.keys.train_key("vanilla", 0)
    explicit = plan_of(tiny_checkpoint, methods=["vanilla"], lora={"kind": "lora"})
    assert explicit.keys.train_key("vanilla", 0) == plan.keys.train_key("vanilla", 0)
    # a sweep names its row; one axis per row sweeps the kind of several
    with pytest.raises(UserError, match="names no row"):
        plan_of(tiny_checkpoint, methods=["vanilla"], sweep={"lora.kind": ["lora", "dora"]})
    every = plan_of(tiny_checkpoint, methods=["vanilla", "grpo@group_size=2"],
                    sweep={"vanilla.lora.kind": ["lora", "dora", "full"], "grpo@group_size=2.lora.kind": ["lora", "dora", "full"]})
    assert list(every.entries) == ["vanilla", "grpo@group_size=2", "vanilla@lora.kind=dora", "vanilla@lora.kind=full",
                                   "grpo@group_size=2@lora.kind=dora", "grpo@group_size=2@lora.kind=full"]
    assert every.entries["grpo@group_size=2@lora.kind=full"].varies == "grpo@group_size=2"
    assert every.methods["grpo@group_size=2@lora.kind=full"].options.group_size == 2
    assert {label: every.loras[label].adapter for label in every.entries} == {
        "vanilla": "lora", "grpo@group_size=2": "lora", "vanilla@lora.kind=dora": "dora", "vanilla@lora.kind=full": "full",
        "grpo@group_size=2@lora.kind=dora": "dora", "grpo@group_size=2@lora.kind=full": "full"}
    assert every.keys.train_key("vanilla@lora.kind=dora", 0) == plan.keys.train_key("vanilla@lora.kind=dora", 0)
    assert {r["label"]: r["adapter"] for r in every.describe_rows()}["vanilla@lora.kind=full"] == "full"


@pytest.mark.parametrize("method,kind", [("kl", "pissa"), ("kl", "full"), ("wise", "dora"), ("merge", "pissa")])
def test_a_method_refuses_before_any_compute_a_kind_its_hooks_do_not_handle(tiny_checkpoint, method, kind):
    with pytest.raises(UserError, match=f"not lora.kind={kind}"):
        plan_of(tiny_checkpoint, methods=[f"{method}@lora.kind={kind}"])
    assert dataclasses.replace(LoRASettings(), kind=kind).adapter == kind


def test_an_on_policy_row_is_checked_against_its_budget_before_any_compute(tiny_checkpoint):
    with pytest.raises(UserError, match="divisible by the 3 sequences"):
        plan_of(tiny_checkpoint, methods=["grpo@group_size=3"])
    with pytest.raises(UserError, match="equalise=tokens cannot set the steps"):
        plan_of(tiny_checkpoint, methods=["opsd"], budget={"equalise": "tokens"})
    with pytest.raises(UserError, match="equalise=compute cannot set the steps"):
        plan_of(tiny_checkpoint, methods=["vanilla", "grpo"], budget={"equalise": "compute"})
    assert plan_of(tiny_checkpoint, methods=["vanilla", "grpo@budget.equalise=steps"], budget={"equalise": "compute"})


def test_a_rows_adapter_is_read_from_manifests_old_and_new():
    assert row_adapter({"r": 16, "full_finetune": False}, {}) == "lora"  # before lora.kind
    assert row_adapter({"r": 16, "full_finetune": True}, {}) == "full"
    assert row_adapter({"r": 16, "full_finetune": False}, {"own_settings": {"lora.full_finetune": "true"}}) == "full"
    assert row_adapter({"kind": "lora", "full_finetune": False}, {"own_settings": {"lora.kind": "dora"}}) == "dora"
    assert row_adapter({"kind": "pissa", "full_finetune": False}, {"own_settings": {}}) == "pissa"  # the run's shared kind
    assert row_adapter({"kind": "lora"}, {"adapter": "rslora", "own_settings": {}}) == "rslora"  # the row's own record wins


def test_a_sweep_over_kinds_runs_and_every_table_marks_each_rows_adapter(tiny_checkpoint, tmp_path):
    """`--sweep vanilla.lora.kind=lora,dora,full` end to end on the tiny model, with an on-policy row: the
    rows are marked as another adapter in the leaderboard (md, csv, html), the differences (md, csv,
    html) and the training table; full fine-tuning trains every weight and its peak memory is
    recorded; the tokens opsd generated while training are in each unit's stats and the manifest."""
    run_dir = tmp_path / "run"
    result = cli(["run", "--model", str(tiny_checkpoint), "--methods", "vanilla,opsd", "--suites", "retention",
                  "--train-size", "8", "--eval-size", "4", "--steps", "2", "--batch-size", "4", "--out", str(run_dir),
                  "--set", "retention.max_new_tokens=6", "--set", "budget.learning_rate=0.01", "--set", "opsd.max_new_tokens=6",
                  "--sweep", "vanilla.lora.kind=lora,dora,full", "--sweep", "opsd.lora.kind=lora,dora,full"],
                 {"RADIS_BENCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    kinds = {"vanilla": "lora", "vanilla@lora.kind=dora": "dora", "vanilla@lora.kind=full": "full",
             "opsd": "lora", "opsd@lora.kind=dora": "dora",
             "opsd@lora.kind=full": "full"}
    assert {label: row["adapter"] for label, row in manifest["methods"].items()} == kinds
    training = {label: seeds["0"] for label, seeds in manifest["training"].items()}
    n_params = sum(p.numel() for p in build_tiny_model_like(tiny_checkpoint).parameters())
    for label, kind in kinds.items():
        stats = training[label]
        assert stats == json.loads((run_dir / "models" / label / "seed0" / "train_stats.json").read_text())  # per unit
        assert (stats["trainable_params"] == n_params) == (kind == "full") and stats["peak_mem_mb"] > 0
        if label.startswith("opsd"):  # 2 steps x 4 samples, each 1..6 tokens
            assert stats["generated_samples"] == 8 and 8 <= stats["generated_tokens"] <= 48
            assert sum(stats["generated_tokens_per_step"]) == stats["generated_tokens"]
            assert stats["flops"]["steps"]["generated"] > 0  # the samples are part of the step's compute
        else:
            assert "generated_tokens" not in stats and stats["flops"]["steps"]["generated"] == 0
    assert training["vanilla@lora.kind=dora"]["trainable_params"] > training["vanilla"]["trainable_params"]  # + magnitudes
    assert len({json.dumps(manifest["keys"][label]["0"]) for label in kinds}) == len(kinds)

    report = run_dir / "report"
    md = (report / "leaderboard.md").read_text()
    assert "A row's adapter after its name" in md
    names = {"vanilla": "vanilla", "vanilla@lora.kind=dora": "vanilla@lora.kind=dora [DoRA]",
             "vanilla@lora.kind=full": "vanilla@lora.kind=full [full FT]", "opsd": "opsd",
             "opsd@lora.kind=dora": "opsd@lora.kind=dora [DoRA]",
             "opsd@lora.kind=full": "opsd@lora.kind=full [full FT]"}
    main_table = md.split("## Main metrics", 1)[1].split("##", 1)[0]
    train_table = md.split("## Training", 1)[1].split("##", 1)[0]
    for table in (main_table, train_table):
        shown = [line.split(" | ")[0 if table is main_table else 1].lstrip("| ") for line in table.splitlines()
                 if line.startswith("| ") and " original " not in line and not line.startswith(("| method", "| model"))]
        # the name, then " (extension)" for opsd, then † where the adapter is not the shared one
        assert [name.split(" (extension)")[0].split(" †")[0] for name in shown] == list(names.values())
        assert [name.endswith(("†3", "†4")) for name in shown] == [kind != "lora" for kind in kinds.values()] or table is train_table
    differences = md.split("## Differences", 1)[1].split("## Methods", 1)[0]
    assert "| vanilla@lora.kind=full [full FT] − vanilla |" in differences
    assert "| opsd@lora.kind=dora [DoRA] − opsd |" in differences
    header = next(line for line in train_table.splitlines() if line.startswith("| model")).split(" | ")
    for line in train_table.splitlines():
        for label in ("vanilla", "opsd"):
            if f"| {label} |" in line or f"| {label} (extension) |" in line:  # "—": nothing generated
                generated = line.split(" | ")[header.index("generated tokens")]
                assert generated == (f"{training[label]['generated_tokens']:,}" if label.startswith("opsd") else "—"), line

    board = pd.read_csv(report / "leaderboard.csv", keep_default_na=False)
    assert dict(zip(board["method"], board["adapter"])) == {"original": "", **kinds}
    assert dict(zip(board["method"], board["label"]))["vanilla@lora.kind=full"] == "vanilla@lora.kind=full [full FT]"
    diffs = pd.read_csv(report / "differences.csv", keep_default_na=False)
    assert list(diffs.columns[:5]) == ["model", "method", "versus", "adapter", "versus_adapter"]
    assert all(a == kinds[m] for m, a in zip(diffs["method"], diffs["adapter"]))
    assert all(a == kinds.get(v, "") for v, a in zip(diffs["versus"], diffs["versus_adapter"]))
    assert {"full", "dora", "lora"} <= set(diffs["adapter"]) and "" in set(diffs["versus_adapter"])  # versus the original

    page = (report / "leaderboard.html").read_text()
    for name in names.values():  # the main and other metrics, the differences and the training table
        assert page.count(f">{name}") >= (3 if name == "vanilla" else 4), name
    assert "vanilla@lora.kind=full [full FT] − vanilla" in page.replace("&minus;", "−")
    assert "A row&#x27;s adapter after its name" in page or "A row's adapter after its name" in page


def build_tiny_model_like(checkpoint):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint)
