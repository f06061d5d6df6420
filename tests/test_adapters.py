"""The adapter as a variable (issue 33): lora.kind (lora, rslora, dora, pissa, full) on the tiny
model, how it enters unit keys (the default leaves them as they were), sweeps over it, and the
methods that refuse kinds their hooks do not handle."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import build_tiny_model

from baselines.vanilla import Vanilla
from harness.config.settings import ADAPTER_KINDS, Budget, LoRASettings, check_lora, lora_key
from harness.errors import UserError
from harness.model.adapters import attach_adapter
from harness.model.checkpoints import load_trained
from harness.model.onpolicy import WeightSnapshot
from harness.model.training import train
from test_methods import context
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
