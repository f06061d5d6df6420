"""The five extension methods of issue 20 (s3ft, freeze, hft, merge, ewc): each one's defining
behaviour on the tiny random model, their listing, and how they enter a real run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model

from baselines.vanilla import Vanilla
from harness.config.settings import Budget, LoRASettings
from harness.data.sources import DataSource
from harness.errors import UserError
from harness.model.generation import GenerationCache, Generator
from harness.model.checkpoints import load_trained
from harness.model.training import train
from test_methods import ALPACA, FakeGenerator, context, pair_of

BUDGET = Budget(steps=6, batch_size=4, learning_rate=2e-2, warmup_ratio=0.0, save_every=0, max_length=160)
LORA = LoRASettings(r=4, alpha=8)  # all linear projections of both layers


def run_training(method, tokenizer, workdir, ctx=None, seed=0):
    """``method``'s training of the tiny model under BUDGET, with its hooks, as the engine calls it."""
    model = build_tiny_model(tokenizer)
    examples = method.build_training_examples(ctx or context(None))
    return train(model, tokenizer, examples, BUDGET, LORA, workdir, seed=seed, extra_loss=method.extra_loss,
                 prepare=method.prepare_model, label=method.name)


def merged_state(peft_model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in peft_model.merge_and_unload().state_dict().items()}


@pytest.fixture
def alpaca_data(tmp_path):
    (tmp_path / "data" / "alpaca").mkdir(parents=True)
    (tmp_path / "data" / "alpaca" / "alpaca_train.json").write_text(json.dumps(ALPACA))
    return DataSource.open(tmp_path / "data")


# --- s3ft ---------------------------------------------------------------------------------------

SELF = {  # the original's translations: right, close, wrong, empty
    "The house is big.": "The house is big.",
    "I have a dog.": "I have a dog!\n\nDog means Hund.",
    "Good morning!": "Bananas are yellow.",
    "I have a cat and a dog.": "",
    "The weather is nice today.": "The weather is nice today, yes.",
    "How are you?": "Where is the station?",
}


def test_s3ft_threshold_zero_is_seqkd_and_above_100_is_vanilla():
    from baselines.s3ft import S3FT, S3FTOptions
    from baselines.seqkd import SeqKD

    def original():
        return FakeGenerator(lambda r: SELF[pair_of(r).reference])

    seqkd = [ex.response_text for ex in SeqKD().build_training_examples(context(original()))]
    vanilla = [ex.response_text for ex in Vanilla().build_training_examples(context(None))]
    every = context(original())
    assert [ex.response_text for ex in S3FT(S3FTOptions(threshold=0)).build_training_examples(every)] == seqkd
    none = context(original())
    assert [ex.response_text for ex in S3FT(S3FTOptions(threshold=100.01)).build_training_examples(none)] == vanilla
    assert every.stats["self_target_share"] == pytest.approx(5 / 6) and none.stats["self_target_share"] == 0.0
    assert every.stats["empty_outputs_replaced_by_reference"] == 1

    ctx = context(original())
    examples = S3FT().build_training_examples(ctx)  # chrF >= 50
    assert [ex.response_text for ex in examples] == [
        "The house is big.", "I have a dog!", "Good morning!", "I have a cat and a dog.",
        "The weather is nice today, yes.", "How are you?",
    ]
    assert ctx.stats["self_targets"] == 3 and ctx.stats["self_target_share"] == 0.5
    assert ctx.stats["judge"] == "chrf" and ctx.stats["threshold"] == 50.0
    assert [ex.messages for ex in examples] == [ex.messages for ex in Vanilla().build_training_examples(context(None))]
    (requests, decoding), = ctx.original.calls  # seqkd's requests, planned ahead
    assert requests == [r for r, _ in S3FT().original_requests(context(None))] and decoding.max_new_tokens == 256


def test_s3ft_comet_judge_needs_a_usable_checkpoint(tmp_path):
    from baselines.s3ft import S3FT, S3FTOptions

    with pytest.raises(UserError, match="needs s3ft.comet_model"):
        S3FT(S3FTOptions(judge="comet")).check()
    with pytest.raises(UserError, match="judge 'bleu' is unknown"):
        S3FT(S3FTOptions(judge="bleu")).check()
    method = S3FT(S3FTOptions(judge="comet", comet_model=str(tmp_path)))
    with pytest.raises(UserError, match="holds no checkpoints/model.ckpt"):  # before any compute
        method.check()
    with pytest.raises(UserError, match="holds no checkpoints/model.ckpt"):
        method.build_training_examples(context(FakeGenerator(lambda r: "x")))


# --- freeze -------------------------------------------------------------------------------------


def test_freeze_leaves_the_bottom_layers_bit_identical(tiny_tokenizer, tmp_path):
    from baselines.freeze import Freeze, FreezeOptions, layer_index

    original = {n: p.detach().clone() for n, p in build_tiny_model(tiny_tokenizer).state_dict().items()}
    method = Freeze(FreezeOptions(k=1))
    result = run_training(method, tiny_tokenizer, tmp_path / "freeze")
    lora = {n: p for n, p in result.model.named_parameters() if "lora_" in n}
    top = sum(p.numel() for n, p in lora.items() if layer_index(n) == 1)
    assert 0 < top < sum(p.numel() for p in lora.values())
    assert result.stats["trainable_params"] == top == method.trainable_params and method.frozen_layers == 1
    assert all(float(p.detach().abs().sum()) == 0.0 for n, p in lora.items() if "lora_B" in n and layer_index(n) == 0)

    merged = merged_state(result.model)
    bottom = [n for n in merged if layer_index(n) == 0]
    assert bottom and all(torch.equal(merged[n], original[n]) for n in bottom)
    assert any(not torch.equal(merged[n], original[n]) for n in merged if layer_index(n) == 1 and "proj" in n)

    vanilla = run_training(Vanilla(), tiny_tokenizer, tmp_path / "vanilla")
    assert result.stats["trainable_params"] < vanilla.stats["trainable_params"]
    assert result.stats["losses"] != vanilla.stats["losses"]


def test_freeze_k_from_fraction_and_its_limits(tiny_tokenizer, tmp_path):
    from baselines.freeze import Freeze, FreezeOptions, layer_index

    assert Freeze(FreezeOptions(fraction=0.5)).first_trained_layer(2) == 1
    assert Freeze().first_trained_layer(30) == 7  # a quarter of SmolLM2-135M's 30 layers
    assert Freeze(FreezeOptions(k=3, fraction=0.9)).first_trained_layer(30) == 3  # k wins
    with pytest.raises(UserError, match="leaves nothing to train"):
        run_training(Freeze(FreezeOptions(k=2)), tiny_tokenizer, tmp_path / "all")
    with pytest.raises(UserError, match="fraction"):
        Freeze(FreezeOptions(fraction=1.0)).check_ranges()
    assert layer_index("base_model.model.model.layers.12.mlp.up_proj.lora_A.default.weight") == 12
    assert layer_index("model.embed_tokens.weight") is None


# --- hft ----------------------------------------------------------------------------------------


def test_hft_trains_exactly_the_seeded_half(tiny_tokenizer, tmp_path):
    from baselines.hft import HFT, choose_half, unit_of

    original = {n: p.detach().clone() for n, p in build_tiny_model(tiny_tokenizer).state_dict().items()}
    method = HFT()
    result = run_training(method, tiny_tokenizer, tmp_path / "hft")
    params = dict(result.model.named_parameters())
    units = sorted({unit_of(n) for n in params if "lora_" in n})
    assert len(units) == 14  # 7 projections x 2 layers
    chosen = method.trained_modules
    # within each layer: 2 of the 4 attention projections, 1 or 2 of the 3 MLP projections
    for layer in (0, 1):
        attention = [u for u in chosen if f"layers.{layer}.self_attn." in u]
        mlp = [u for u in chosen if f"layers.{layer}.mlp." in u]
        assert len(attention) == 2 and len(mlp) in (1, 2)
    moved = {unit_of(n) for n, p in params.items() if "lora_B" in n and float(p.detach().abs().sum()) > 0}
    assert moved == set(chosen)  # every chosen module trained, no other one
    lora = {n: p for n, p in params.items() if "lora_" in n}
    assert result.stats["trainable_params"] == sum(p.numel() for n, p in lora.items() if unit_of(n) in chosen)

    merged = merged_state(result.model)
    frozen = [n for n in merged if any(n.startswith(u.replace("base_model.model.", "", 1) + ".") for u in units if u not in chosen)]
    assert frozen and all(torch.equal(merged[n], original[n]) for n in frozen)

    # the choice is a function of the seed
    assert choose_half(units, 0) == chosen == choose_half(list(reversed(units)), 0)
    assert choose_half(units, 1) != chosen or choose_half(units, 2) != chosen
    again = HFT()
    run_training(again, tiny_tokenizer, tmp_path / "hft-again")
    assert again.trained_modules == chosen
    other = HFT()
    run_training(other, tiny_tokenizer, tmp_path / "hft-seed1", seed=1)
    assert other.trained_modules == choose_half(units, 1)


def test_hft_fraction_one_trains_everything():
    from baselines.hft import HFT, HFTOptions, choose_half

    units = [f"m.layers.{i}.self_attn.{p}" for i in range(3) for p in "qkvo"]
    assert choose_half(units, 0, 1.0) == sorted(units)
    assert len(choose_half(units, 0, 0.5)) == 6
    with pytest.raises(UserError, match="hft.fraction"):
        HFT(HFTOptions(fraction=0.0)).check_ranges()


# --- merge --------------------------------------------------------------------------------------


def test_merge_with_density_one_and_alpha_one_is_vanilla(tiny_tokenizer, tmp_path):
    from baselines.merge import Merge, MergeOptions

    run_training(Vanilla(), tiny_tokenizer, tmp_path / "vanilla")

    def trained():
        return load_trained(build_tiny_model(tiny_tokenizer), tmp_path / "vanilla")

    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    vanilla = trained().merge_and_unload()
    for mode in ("ties", "dare"):
        merged = Merge(MergeOptions(mode=mode, density=1.0, alpha=1.0)).after_training(trained())
        assert not hasattr(merged, "peft_config")
        state, expected = merged.state_dict(), vanilla.state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[n], expected[n]) for n in state)
        with torch.no_grad():
            assert torch.equal(merged(input_ids=ids).logits, vanilla(input_ids=ids).logits)

    # nothing of the delta: the original
    base = build_tiny_model(tiny_tokenizer).state_dict()
    nothing = Merge(MergeOptions(alpha=0.0)).after_training(trained()).state_dict()
    assert all(torch.equal(nothing[n], base[n]) for n in base)


def test_merge_trims_or_drops_each_modules_delta(tiny_tokenizer, tmp_path):
    from baselines.merge import Merge, MergeOptions

    run_training(Vanilla(), tiny_tokenizer, tmp_path / "vanilla")
    model = load_trained(build_tiny_model(tiny_tokenizer), tmp_path / "vanilla")
    name = "base_model.model.model.layers.1.self_attn.q_proj"
    delta = dict(model.named_modules())[name].get_delta_weight("default").detach().clone()
    base = build_tiny_model(tiny_tokenizer).state_dict()["model.layers.1.self_attn.q_proj.weight"]

    def new_delta(options):
        model = load_trained(build_tiny_model(tiny_tokenizer), tmp_path / "vanilla")
        return Merge(options).after_training(model).state_dict()["model.layers.1.self_attn.q_proj.weight"] - base

    ties = new_delta(MergeOptions(mode="ties", density=0.25, alpha=0.5))
    kept = ties != 0
    assert kept.sum() == round(0.25 * delta.numel())
    assert delta[kept].abs().min() >= delta[~kept].abs().max()  # the largest magnitudes survive
    assert torch.allclose(ties[kept], 0.5 * delta[kept], atol=1e-6)

    dare = new_delta(MergeOptions(mode="dare", density=0.5, seed=3))
    kept = dare != 0
    assert 0.3 < kept.float().mean() < 0.7
    assert torch.allclose(dare[kept], delta[kept] / 0.5, atol=1e-6)
    assert torch.equal(new_delta(MergeOptions(mode="dare", density=0.5, seed=3)), dare)  # seeded
    assert not torch.equal(new_delta(MergeOptions(mode="dare", density=0.5, seed=4)), dare)
    plain = new_delta(MergeOptions(mode="dare", density=0.5, seed=3, rescale=False))
    assert torch.allclose(plain, dare * 0.5, atol=1e-6)

    full = build_tiny_model(tiny_tokenizer)
    start = {n: p.detach().clone() for n, p in full.named_parameters()}
    with torch.no_grad():
        for param in full.parameters():
            param.add_(torch.randn_like(param))
    Merge(MergeOptions(density=0.5)).after_training(full, original_state=start)
    changed = [(p != start[n]).float().mean().item() for n, p in full.named_parameters()]
    assert all(0.45 < share < 0.55 for share in changed)


def test_merge_trains_as_vanilla_does():
    """No hook into the loss or the model: the engine copies vanilla's training (like wise)."""
    from baselines.merge import Merge
    from harness.plugins.method import Method

    method = Merge()
    assert method.extra_loss is None and type(method).prepare_model is Method.prepare_model
    assert [(e.messages, e.response) for e in method.build_training_examples(context(None))] == \
        [(e.messages, e.response) for e in Vanilla().build_training_examples(context(None))]
    with pytest.raises(UserError, match="merge.density"):
        Merge(Merge.Options(density=0.0)).check_ranges()


# --- ewc ----------------------------------------------------------------------------------------


def ewc_context(tokenizer, data, tmp_path):
    original = Generator(build_tiny_model(tokenizer), tokenizer, "tiny", GenerationCache(tmp_path / "generations.sqlite"), batch_size=8)
    return context(original, data)


def test_ewc_with_weight_zero_gives_vanillas_losses(tiny_tokenizer, alpaca_data, tmp_path):
    from baselines.ewc import EWC, EWCOptions

    vanilla = run_training(Vanilla(), tiny_tokenizer, tmp_path / "vanilla")
    ctx = ewc_context(tiny_tokenizer, alpaca_data, tmp_path)
    method = EWC(EWCOptions(weight=0.0, max_new_tokens=8))
    zero = run_training(method, tiny_tokenizer, tmp_path / "ewc0", ctx)
    assert zero.stats["losses"] == pytest.approx(vanilla.stats["losses"], rel=1e-5)
    assert zero.stats["extra_losses"] == [0.0] * BUDGET.steps
    assert ctx.stats["fisher_answers"] == 3 and method.fisher_summary["fisher_answers_used"] == 3

    strong = EWC(EWCOptions(weight=50.0, max_new_tokens=8))
    pulled = run_training(strong, tiny_tokenizer, tmp_path / "ewc50", ewc_context(tiny_tokenizer, alpaca_data, tmp_path))
    assert pulled.stats["losses"] != pytest.approx(vanilla.stats["losses"], rel=1e-3)
    assert pulled.stats["extra_losses"][0] == 0.0 and pulled.stats["extra_losses"][-1] > 0

    def b_norm(model):
        return sum(float((p.detach() ** 2).sum()) for n, p in model.named_parameters() if "lora_B" in n)

    assert b_norm(pulled.model) < b_norm(vanilla.model)  # held closer to the original's delta of 0


def test_ewc_fisher_is_zero_on_lora_a_and_the_penalty_starts_at_zero(tiny_tokenizer, alpaca_data, tmp_path):
    from peft import LoraConfig, get_peft_model

    from baselines.ewc import EWC, EWCOptions

    method = EWC(EWCOptions(max_new_tokens=8))
    ctx = ewc_context(tiny_tokenizer, alpaca_data, tmp_path)
    method.build_training_examples(ctx)
    requests = method.original_requests(context(None, alpaca_data))  # planned without the original model
    assert sorted(r.messages[0]["content"] for r, _ in requests) == sorted(
        a["instruction"] + (f"\n\n{a['input']}" if a["input"] else "") for a in ALPACA)
    model = get_peft_model(build_tiny_model(tiny_tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    method.prepare_model(model, tiny_tokenizer, 0)
    assert all(float(f.abs().sum()) == 0.0 for n, f in method._fisher.items() if "lora_A" in n)
    b = [f for n, f in method._fisher.items() if "lora_B" in n]
    assert b and all(float(f.sum()) > 0 for f in b)
    total = sum(f.numel() for f in method._fisher.values())
    assert sum(float(f.sum()) for f in method._fisher.values()) / total == pytest.approx(1.0, rel=1e-4)  # normalised
    assert all(p.grad is None for p in model.parameters())  # the estimate leaves no gradients behind
    outputs = model(input_ids=torch.tensor([[1, 5, 9]]))
    assert float(method.extra_loss(model, {}, outputs)) == 0.0
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
    assert float(method.extra_loss(model, {}, outputs)) > 0
    with pytest.raises(UserError, match="ewc.weight"):
        EWC(EWCOptions(weight=-1.0)).check_ranges()


# --- listing and a real run ---------------------------------------------------------------------

NEW = {"s3ft": "2409.04787", "freeze": "2501.13453", "hft": "2404.18466", "merge": "2306.01708", "ewc": "1612.00796"}


def test_list_shows_the_five_with_citations():
    from typer.testing import CliRunner

    from harness.plugins import registry
    from harness.cli import app

    out = CliRunner().invoke(app, ["list"], env={"COLUMNS": "250"}).output
    for name, arxiv in NEW.items():
        cls = registry.get_method(name)
        module = __import__(cls.__module__, fromlist=["_"])
        assert cls.extension and arxiv in cls.citation and arxiv in module.__doc__ and "differs" in module.__doc__
        row = next(line for line in out.splitlines() if line.startswith("│") and line.split("│")[1].strip() == name)
        assert "(extension)" in row
        assert f"arXiv {arxiv}" in out
    assert "2311.03099" in out  # DARE


def test_merge_reuses_vanillas_training_and_freeze_trains_fewer_parameters(tiny_checkpoint, tmp_path):
    from test_run import cli

    run_dir = tmp_path / "run"
    args = ["run", "--model", str(tiny_checkpoint), "--methods", "vanilla,merge,freeze", "--suites", "gsm8k", "--seeds", "0",
            "--train-size", "8", "--eval-size", "3", "--steps", "3", "--batch-size", "4", "--out", str(run_dir),
            "--set", "max_new_tokens=6", "--set", "freeze.k=1"]
    result = cli(args, {"RADIS_BENCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "reused: training merge seed 0 is identical to vanilla's" in log
    assert "training: freeze seed 0 (" in log
    models = run_dir / "models"
    stats = {m: json.loads((models / m / "seed0" / "train_stats.json").read_text()) for m in ("vanilla", "merge", "freeze")}
    assert stats["merge"]["shared_with"] == "vanilla seed 0"
    assert stats["freeze"]["trainable_params"] < stats["vanilla"]["trainable_params"]
    units = {m: json.loads((run_dir / "results" / f"{m}-seed0" / "gsm8k.json").read_text()) for m in ("vanilla", "merge")}
    assert units["merge"]["key"] != units["vanilla"]["key"]
