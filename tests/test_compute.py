"""FLOPs counted from token counts and the model's shape (issue 34): the counts against torch's
own FlopCounterMode on a tiny model, and a run whose every unit records them by kind, with the
compute table and the Pareto view built from them."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import build_tiny_model
from harness.model.compute import Meter, Shape, install, metering
from harness.model.generation import GenerationCache, Generator
from harness.plugins.requests import Decoding, Request
from harness.report.board import build_leaderboard
from harness.report.compute import pareto_points, row_compute
from test_run import cli


def _eager_model(tokenizer):
    model = build_tiny_model(tokenizer)
    model.config._attn_implementation = "eager"  # attention as matmuls, which FlopCounterMode counts
    install(model)
    return model


def test_the_formulas_on_a_hand_computed_shape():
    shape = Shape(layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, mlp=16, vocab=10)
    # q 8x8, k and v 8x4 each, o 8x8, MLP 3 x 8x16: 2 FLOPs per weight per token
    assert shape.layer_matmul == 2 * (64 + 32 + 32 + 64 + 384)
    assert shape.attention(3, 5) == 4 * 2 * 2 * 4 * 3 * 5
    # a prompt of 3, 2 new tokens that reached the limit: the prompt's pass (logits at its end),
    # then one single-token step against 4 keys
    expected = 3 * 2 * shape.layer_matmul + shape.attention(3, 3) + shape.logits \
        + (2 * shape.layer_matmul + shape.logits + shape.attention(1, 4))
    assert shape.generation(3, 2, finished=False) == expected
    # it ended its turn instead: the second token is fed back too (against 5 keys)
    assert shape.generation(3, 2, finished=True) == expected + 2 * shape.layer_matmul + shape.logits + shape.attention(1, 5)


def test_forward_and_training_passes_agree_with_the_flop_counter(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_eager_model(tiny_tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(0, len(tiny_tokenizer), (3, 40))
    mask = torch.ones_like(ids)
    with torch.no_grad(), FlopCounterMode(display=False) as counter, metering(Meter()) as meter:
        model(input_ids=ids, attention_mask=mask)
    assert meter.flops["trained"] == 0 and meter.flops["generated"] == 0
    assert meter.flops["forward"] == pytest.approx(counter.get_total_flops(), rel=0.01)
    model.train()
    with FlopCounterMode(display=False) as counter, metering(Meter()) as meter:
        model(input_ids=ids, attention_mask=mask).logits.float().pow(2).mean().backward()
    assert meter.flops["forward"] == 0 and meter.flops["trained"] > 2 * counter.get_total_flops() / 3
    assert meter.flops["trained"] == pytest.approx(counter.get_total_flops(), rel=0.10)
    # padding is not counted: the same rows with 10 padded positions each cost less
    mask[:, -10:] = 0
    with torch.no_grad(), metering(Meter()) as padded:
        model(input_ids=ids, attention_mask=mask)
    with torch.no_grad(), metering(Meter()) as short:
        model(input_ids=ids[:, :30], attention_mask=torch.ones_like(ids[:, :30]))
    assert padded.flops["forward"] == short.flops["forward"]


def test_generation_agrees_with_the_flop_counter_and_a_cached_answer_costs_the_same(tiny_tokenizer, tmp_path):
    from harness.model.fast_llama import FastLlama

    model = _eager_model(tiny_tokenizer)
    assert FastLlama.of(model) is not None  # counting's hooks leave the fast decode path open
    requests = [Request(messages=[{"role": "user", "content": "hello there, how are you"}])]
    for fast in (True, False):
        generator = Generator(model, tiny_tokenizer, "fingerprint", cache=GenerationCache(tmp_path / f"cache{fast}.sqlite"))
        generator.FAST_DECODE = fast
        with FlopCounterMode(display=False) as counter, metering(Meter()) as meter:
            out = generator.generate(requests, Decoding(max_new_tokens=20))
        assert out[0].new_tokens > 0 and meter.flops["forward"] == 0
        assert meter.flops["generated"] == pytest.approx(counter.get_total_flops(), rel=0.01)
        with FlopCounterMode(display=False) as counter, metering(Meter()) as again:
            generator.generate(requests, Decoding(max_new_tokens=20))
        assert counter.get_total_flops() == 0  # from the cache: nothing computed here
        assert again.flops == meter.flops  # but the answer is the method's cost all the same


def test_a_run_counts_every_unit_and_reports_its_compute(tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", "--model", str(tiny_checkpoint), "--methods", "vanilla,kl,radis", "--suites", "translation,retention",
            "--seeds", "0", "--train-size", "8", "--eval-size", "3", "--steps", "3", "--batch-size", "4", "--out", str(run_dir),
            "--set", "max_new_tokens=6", "--set", "radis.max_new_tokens=6", "--set", "retention.max_new_tokens=6", "--set", "translation.max_new_tokens=6"]
    result = cli(args, {"RADIS_BENCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    models = run_dir / "models"
    train = {m: json.loads((models / m / "seed0" / "train_stats.json").read_text())["flops"] for m in ("vanilla", "kl", "radis")}
    data = {m: json.loads((models / m / "seed0" / "method_stats.json").read_text())["data_flops"] for m in ("vanilla", "kl", "radis")}
    assert data["vanilla"]["total"] == 0 and data["kl"]["total"] == 0
    assert data["radis"]["generated"] > 0 and data["radis"]["total"] == data["radis"]["generated"]  # its rationales
    for m in ("vanilla", "kl", "radis"):
        assert train[m]["steps"]["trained"] > 0 and train[m]["steps"]["generated"] == 0
    assert train["vanilla"]["steps"]["forward"] == 0
    assert train["kl"]["steps"]["forward"] > 0  # the original beside every step
    for cell in ("original", "vanilla-seed0", "kl-seed0", "radis-seed0"):
        for suite in ("translation", "retention"):
            flops = json.loads((run_dir / "results" / cell / f"{suite}.json").read_text())["flops"]
            assert flops["generated"] > 0 and flops["trained"] == 0
        # retention scores the original's answers under both models
        assert json.loads((run_dir / "results" / cell / "retention.json").read_text())["flops"]["forward"] > 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["compute"]) == {"original", "vanilla-seed0", "kl-seed0", "radis-seed0"}
    assert manifest["compute"]["kl-seed0"]["training"] == train["kl"]

    board = build_leaderboard([run_dir])
    found = row_compute(board)
    model = board.rows[0].model
    assert found[(model, "radis")].data == data["radis"]["total"]
    assert found[(model, "kl")].to_train == sum(part["total"] for part in train["kl"].values())
    assert found[(model, "original")].to_train is None and found[(model, "original")].evaluation > 0
    md = (run_dir / "report" / "leaderboard.md").read_text()
    assert "## Compute (FLOPs, mean over seeds)" in md and "pareto.png" in md
    assert "Compute (FLOPs, mean over seeds)" in (run_dir / "report" / "leaderboard.html").read_text()
    points = {p["label"]: p for p in pareto_points(board)}
    assert set(points) == {"vanilla", "kl", "radis"}
    assert points["kl"]["flops"] == found[(model, "kl")].to_train
    # a row beaten on gain, retention and compute by another is dominated; the others are not
    for p in points.values():
        beaten = any(q is not p and q["gain"] >= p["gain"] and q["retention"] >= p["retention"] and q["flops"] <= p["flops"]
                     and (q["gain"], q["retention"], q["flops"]) != (p["gain"], p["retention"], p["flops"]) for q in points.values())
        assert p["dominated"] == beaten
    assert not all(p["dominated"] for p in points.values())
    # vanilla is cheaper to train than kl (kl runs the original beside every step)
    assert points["vanilla"]["flops"] < points["kl"]["flops"]


def test_equal_compute_gives_every_row_the_baselines_flops_within_one_step(tiny_checkpoint, tmp_path):
    """budget.equalise=compute: vanilla trains its steps; radis pays for its rationales and kl for
    the original beside every step with fewer steps; every row's measured total (data building,
    preparation, steps) is within one of its steps of the target."""
    run_dir = tmp_path / "run"
    args = ["run", "--model", str(tiny_checkpoint), "--methods", "vanilla,kl,radis", "--suites", "gsm8k",
            "--seeds", "0", "--train-size", "8", "--eval-size", "2", "--steps", "6", "--batch-size", "2", "--budget", "compute",
            "--out", str(run_dir), "--set", "max_new_tokens=4", "--set", "radis.max_new_tokens=24"]
    dry = cli(args + ["--dry-run"], {"RADIS_BENCH_CACHE": str(tmp_path / "cache")})
    assert dry.returncode == 0 and "Compute budget:" in dry.stdout, dry.stdout + dry.stderr
    result = cli(args, {"RADIS_BENCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    stats, totals = {}, {}
    for m in ("vanilla", "kl", "radis"):
        workdir = run_dir / "models" / m / "seed0"
        stats[m] = json.loads((workdir / "train_stats.json").read_text())
        data = json.loads((workdir / "method_stats.json").read_text())["data_flops"]["total"]
        flops = stats[m]["flops"]
        totals[m] = data + flops["prepare"]["total"] + flops["steps"]["total"]
    target = stats["vanilla"]["compute_target"]
    assert {s["compute_target"] for s in stats.values()} == {target}
    assert stats["vanilla"]["steps"] == 6 and totals["vanilla"] == target  # the baseline's own cost
    assert stats["kl"]["steps"] < 6 and stats["radis"]["steps"] < 6
    for m in ("kl", "radis"):
        per_step = stats[m]["flops"]["steps"]["total"] / stats[m]["steps"]
        assert abs(totals[m] - target) <= per_step, (m, totals[m], target, per_step)


def test_the_output_layer_on_stored_hidden_states_counts_one_row_per_position(tiny_tokenizer):
    """Retention applies the output layer to hidden states it kept (n positions x width): n
    positions' logits, not n x width."""
    model = _eager_model(tiny_tokenizer)
    shape = Shape.of(model.config)
    head = model.get_output_embeddings()
    with torch.no_grad(), FlopCounterMode(display=False) as counter, metering(Meter()) as meter:
        model(input_ids=torch.randint(0, 50, (2, 9)), attention_mask=torch.ones(2, 9, dtype=torch.long))
        head(torch.randn(7, shape.hidden))
    assert meter.flops["forward"] == 18 * (shape.layers * shape.layer_matmul + shape.logits) + 2 * shape.attention(9, 9) \
        + 7 * shape.logits
    assert meter.flops["forward"] == pytest.approx(counter.get_total_flops(), rel=0.01)
