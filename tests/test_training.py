"""The trainer: tokenisation and loss weights, token accounting, schedule, budgets,
saving and loading, and exact resumption after a hard kill."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model

from harness.config.settings import Budget, LoRASettings
from harness.data.records import TranslationPair
from harness.errors import UserError
from harness.plugins.method import Segment, TrainingExample
from harness.model.prompts import render_chat, translation_prompt, user_turn
from harness.model.examples import example_token_weights, lr_factor, step_indices, target_tokens_in_steps
from harness.model.checkpoints import load_trained
from harness.model.training import train

PAIRS = [
    TranslationPair("de", "en", "Das Haus ist groß.", "The house is big."),
    TranslationPair("de", "en", "Ich habe einen Hund.", "I have a dog."),
    TranslationPair("de", "en", "Guten Morgen!", "Good morning!"),
    TranslationPair("de", "en", "Ich habe eine Katze und einen Hund.", "I have a cat and a dog."),
    TranslationPair("de", "en", "Das Wetter ist heute schön.", "The weather is nice today."),
    TranslationPair("de", "en", "Wie geht es dir?", "How are you?"),
]


def vanilla_examples() -> list[TrainingExample]:
    return [TrainingExample(user_turn(translation_prompt(p)), [Segment(p.reference)]) for p in PAIRS]


def budget(**overrides) -> Budget:
    settings = dict(steps=6, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, save_every=0, max_length=128)
    return Budget(**{**settings, **overrides})


def adapter_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_prompt_is_masked_and_each_segment_keeps_its_weight(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = user_turn(translation_prompt(PAIRS[0]))
    example = TrainingExample(messages, [Segment("The house is big.", 1.0), Segment(" I have a dog.", 0.25, "rationale")])
    ids, weights = example_token_weights(tok, example, max_length=512)
    prompt = tok(render_chat(tok, messages), add_special_tokens=False)["input_ids"]
    reference = tok("The house is big.", add_special_tokens=False)["input_ids"]
    rationale = tok(" I have a dog.", add_special_tokens=False)["input_ids"]
    assert ids == prompt + reference + rationale + [tok.eos_token_id]
    assert weights == [0.0] * len(prompt) + [1.0] * len(reference) + [0.25] * len(rationale) + [0.25]

    cut_ids, cut_weights = example_token_weights(tok, example, max_length=len(prompt) + 3)
    assert cut_ids == prompt + reference[:3]
    assert cut_weights == [0.0] * len(prompt) + [1.0] * 3


def test_data_order_is_a_seeded_permutation_per_epoch():
    epoch = [i for step in range(3) for i in step_indices(step, 2, 6, seed=0)]
    assert sorted(epoch) == list(range(6))
    assert step_indices(0, 6, 6, seed=0) == epoch
    assert step_indices(0, 6, 6, seed=1) != epoch
    assert sorted(step_indices(1, 6, 6, seed=0)) == list(range(6))  # the second epoch cycles


def test_schedule_warms_up_then_decays():
    cosine = Budget(warmup_ratio=0.25, schedule="cosine")
    factors = [lr_factor(s, 8, cosine) for s in range(8)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(a > b for a, b in zip(factors[2:], factors[3:])) and factors[-1] > 0
    assert lr_factor(5, 8, Budget(warmup_ratio=0.0, schedule="linear")) == pytest.approx(1 - 5 / 8)
    assert lr_factor(7, 8, Budget(warmup_ratio=0.0, schedule="constant")) == 1.0


def test_training_lowers_loss_and_accounts_tokens(tiny_model, tiny_tokenizer, tmp_path):
    examples = vanilla_examples()
    b = budget(steps=12)
    result = train(tiny_model, tiny_tokenizer, examples, b, LoRASettings(r=4, alpha=8), tmp_path, seed=0)
    stats = result.stats
    losses = stats["losses"]
    assert len(losses) == stats["steps"] == 12 and stats["examples_seen"] == 48
    assert sum(losses[-3:]) < sum(losses[:3])

    tokenised = [example_token_weights(tiny_tokenizer, ex, b.max_length) for ex in examples]
    order = [i for s in range(12) for i in step_indices(s, 4, len(examples), 0)]
    expected_targets = sum(sum(w > 0 for w in tokenised[i][1]) for i in order)
    assert stats["target_tokens"] == expected_targets
    # every example ends with one end-of-turn token, counted apart from the response's own
    assert stats["target_tokens_by_kind"] == {"target": expected_targets - 12 * 4, "end": 12 * 4}
    assert stats["total_tokens"] == sum(len(tokenised[i][0]) for i in order)
    assert stats["padding_share"] == pytest.approx(stats["padded_tokens"] / (stats["padded_tokens"] + stats["total_tokens"]))
    assert stats["padding_share"] == 0 == stats["padded_tokens"]  # packed (harness.model.packing)
    assert stats["trainable_params"] == sum(p.numel() for n, p in result.model.named_parameters() if "lora_" in n)
    assert stats["resumed_from_step"] is None and stats["peak_mem_mb"] > 0

    assert json.loads((tmp_path / "train_stats.json").read_text()) == stats
    assert (tmp_path / "final" / "adapter_config.json").exists()
    assert not (tmp_path / "state").exists()


def test_gradient_accumulation_gives_the_same_update(tiny_tokenizer, tmp_path):
    """The loss is a token-level mean over the whole step, however it is split."""
    runs = []
    for accum in (1, 2):
        result = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, vanilla_examples(), budget(steps=3, grad_accum=accum),
                       LoRASettings(r=4), tmp_path / f"accum{accum}", seed=0)
        runs.append(adapter_weights(result.model))
    assert runs[0].keys() == runs[1].keys()
    for name in runs[0]:
        assert torch.allclose(runs[0][name], runs[1][name], atol=1e-6), name


def test_token_budget_trains_until_the_target_is_reached(tiny_model, tiny_tokenizer, tmp_path):
    examples = vanilla_examples()
    after_three = target_tokens_in_steps(tiny_tokenizer, examples, budget(steps=3), seed=0)
    b = budget(equalise="tokens", target_tokens=after_three + 1)
    stats = train(tiny_model, tiny_tokenizer, examples, b, LoRASettings(r=4), tmp_path, seed=0).stats
    assert stats["steps"] == stats["schedule_steps"] == 4
    assert stats["target_tokens"] >= after_three + 1


def test_finished_training_is_loaded_not_repeated(tiny_tokenizer, tmp_path):
    assert load_trained(build_tiny_model(tiny_tokenizer), tmp_path) is None
    first = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, vanilla_examples(), budget(steps=2), LoRASettings(r=4), tmp_path, seed=0)
    loaded = load_trained(build_tiny_model(tiny_tokenizer), tmp_path)
    trained = adapter_weights(first.model)
    assert trained.keys() == adapter_weights(loaded).keys()
    assert all(torch.equal(trained[n], adapter_weights(loaded)[n]) for n in trained)
    again = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, vanilla_examples(), budget(steps=2), LoRASettings(r=4), tmp_path, seed=0)
    assert again.stats == first.stats


def test_full_finetuning_trains_and_reloads_every_weight(tiny_tokenizer, tmp_path):
    original = build_tiny_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in original.named_parameters()}
    result = train(original, tiny_tokenizer, vanilla_examples(), budget(steps=2), LoRASettings(full_finetune=True), tmp_path, seed=0)
    assert result.stats["trainable_params"] == sum(p.numel() for p in before.values())
    assert all(not torch.equal(before[n], p) for n, p in result.model.named_parameters())
    loaded = load_trained(build_tiny_model(tiny_tokenizer), tmp_path)
    for name, param in result.model.named_parameters():
        assert torch.equal(param, dict(loaded.named_parameters())[name]), name


def test_lora_targets_missing_from_the_model_are_skipped(tiny_model, tiny_tokenizer, tmp_path):
    lora = LoRASettings(r=4, target_modules=("q_proj", "w_pack"))
    result = train(tiny_model, tiny_tokenizer, vanilla_examples(), budget(steps=1), lora, tmp_path, seed=0)
    assert {n.split(".")[-4] for n in adapter_weights(result.model)} == {"q_proj"}


def test_lora_without_any_known_target_is_a_user_error(tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(UserError, match="target modules w_pack exist"):
        train(tiny_model, tiny_tokenizer, vanilla_examples(), budget(steps=1), LoRASettings(target_modules=("w_pack",)), tmp_path, seed=0)


RESUMABLE_RUN = '''
import sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from harness.config.settings import Budget, LoRASettings
from harness.plugins.method import Segment, TrainingExample
from harness.model.prompts import user_turn
from harness.model.training import train


def run(checkpoint, workdir, delay):
    def slow_zero(model, batch, outputs):  # leaves the loss unchanged, gives time to kill the run
        time.sleep(delay)
        return torch.zeros(())

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    examples = [
        TrainingExample(user_turn(f"Translate: Das Haus Nummer {i} ist groß."), [Segment(f"The house number {i} is big.")])
        for i in range(5)
    ]
    budget = Budget(steps=6, batch_size=4, grad_accum=2, learning_rate=1e-2, save_every=2, max_length=96)
    return train(model, tokenizer, examples, budget, LoRASettings(r=4, dropout=0.1), workdir, seed=3, extra_loss=slow_zero)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], float(sys.argv[3]))
'''


def test_a_killed_training_resumes_to_the_same_weights(tiny_checkpoint, tmp_path):
    script = tmp_path / "resumable_run.py"
    script.write_text(RESUMABLE_RUN)
    workdir = tmp_path / "interrupted"
    command = [sys.executable, str(script), str(tiny_checkpoint), str(workdir), "0.4"]
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)
    deadline = time.time() + 120
    while not (workdir / "state" / "progress.json").exists():
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        assert time.time() < deadline, "no state was saved in time"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (workdir / "train_stats.json").exists()

    spec = importlib.util.spec_from_file_location("resumable_run", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    resumed = module.run(str(tiny_checkpoint), workdir, 0.0).stats
    assert resumed["resumed_from_step"] in (2, 4) and resumed["steps"] == 6
    uninterrupted = module.run(str(tiny_checkpoint), tmp_path / "uninterrupted", 0.0)
    assert uninterrupted.stats["resumed_from_step"] is None

    from safetensors.torch import load_file

    a = load_file(workdir / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "uninterrupted" / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert resumed["losses"] == pytest.approx(uninterrupted.stats["losses"], abs=1e-6)
    assert resumed["target_tokens"] == uninterrupted.stats["target_tokens"]


def test_bf16_and_gradient_checkpointing_train_close_to_the_plain_run(tiny_tokenizer, tmp_path):
    """budget.bf16 (accelerate mixed precision) and budget.gradient_checkpointing change how,
    not what, is trained; the returned model is plain again (no autocast, no checkpointing)."""
    plain = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, vanilla_examples(), budget(steps=2), LoRASettings(r=4), tmp_path / "plain", seed=0)
    checkpointed = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, vanilla_examples(), budget(steps=2, gradient_checkpointing=True),
                         LoRASettings(r=4), tmp_path / "checkpointed", seed=0)
    assert checkpointed.stats["losses"] == pytest.approx(plain.stats["losses"], rel=1e-5)
    assert not checkpointed.model.base_model.model.is_gradient_checkpointing
    mixed = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, vanilla_examples(), budget(steps=2, bf16=True),
                  LoRASettings(r=4), tmp_path / "bf16", seed=0)
    assert mixed.stats["losses"] == pytest.approx(plain.stats["losses"], rel=2e-2)
    assert mixed.stats["losses"] != plain.stats["losses"]  # autocast really ran in bf16
    assert mixed.model(torch.tensor([[1, 2, 3]])).logits.dtype == torch.float32


def test_length_groups_bound_padding_and_size():
    from harness.model.examples import TokenisedExample, length_groups

    lengths = [10, 11, 12, 30, 31, 33, 90, 95, 100, 101, 102, 200]
    items = [TokenisedExample([1] * n, [1.0] * n, [None] * n) for n in lengths]
    groups = length_groups(items, max_size=4)
    assert [len(it.input_ids) for g in groups for it in g] == lengths  # order kept, nothing dropped
    assert all(len(g) <= 4 for g in groups)
    for g in groups:
        width = max(len(it.input_ids) for it in g)
        assert 1 - sum(len(it.input_ids) for it in g) / (width * len(g)) <= 0.1
    assert [len(g) for g in groups] == [3, 3, 4, 1, 1]
    assert length_groups(items[:3], max_size=1) == [[items[0]], [items[1]], [items[2]]]


def test_loss_without_prompt_logits_is_the_same(tiny_model, tiny_tokenizer):
    """Logits only from the first scored position give the loss of the full logits."""
    import torch

    from harness.plugins.method import Segment, TrainingExample
    from harness.model.examples import accepts_logits_to_keep, first_scored, collate, tokenise_example, weighted_nll

    examples = [TrainingExample([{"role": "user", "content": "a b c d e f g h"}], [Segment("x y z")]),
                TrainingExample([{"role": "user", "content": "a b c d e"}], [Segment("x y z w v")])]
    items = [tokenise_example(tiny_tokenizer, ex, 96) for ex in examples]
    batch = collate(items, tiny_tokenizer.pad_token_id)
    start = first_scored(batch["weights"])
    prompt_lengths = [it.weights.index(next(w for w in it.weights if w > 0)) for it in items]
    assert start == min(prompt_lengths) - 1 > 0
    assert accepts_logits_to_keep(tiny_model)
    with torch.no_grad():
        full = weighted_nll(tiny_model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits, batch["input_ids"], batch["weights"])
        kept = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          logits_to_keep=batch["input_ids"].shape[1] - start).logits
        part = weighted_nll(kept, batch["input_ids"][:, start:], batch["weights"][:, start:])
    assert kept.shape[1] == batch["input_ids"].shape[1] - start
    assert torch.allclose(full[0], part[0], rtol=1e-5) and torch.equal(full[1], part[1])


class _Planted:
    """A pickle that, if unpickled, creates a file: a run directory must never execute it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("planted", ["trainable.pt", "optimizer.pt", "rng.json"])
def test_a_planted_pickle_in_a_saved_state_runs_nothing_and_training_starts_over(tiny_tokenizer, tmp_path, planted,
                                                                                  monkeypatch):
    import harness.model.training as training

    real_save = training.save_state

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the state of step 2 was saved

    workdir = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(training, "save_state", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, vanilla_examples(), budget(save_every=2),
                  LoRASettings(r=4), workdir, seed=0)
    assert (workdir / "state" / "progress.json").exists() and (workdir / "state" / "rng.json").exists()
    marker = tmp_path / "ran"
    torch.save(_Planted(marker), workdir / "state" / planted)

    result = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, vanilla_examples(), budget(save_every=2),
                   LoRASettings(r=4), workdir, seed=0)
    assert not marker.exists()
    assert result.stats["resumed_from_step"] is None and result.stats["steps"] == 6
    fresh = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, vanilla_examples(), budget(save_every=2),
                  LoRASettings(r=4), tmp_path / "fresh", seed=0)
    assert result.stats["losses"] == pytest.approx(fresh.stats["losses"], abs=1e-6)


def test_a_max_length_the_prompt_fills_is_a_user_error_not_a_training_of_zero_losses(tiny_model, tiny_tokenizer, tmp_path):
    from harness.errors import UserError

    prompt = len(tiny_tokenizer(render_chat(tiny_tokenizer, user_turn(translation_prompt(PAIRS[2]))), add_special_tokens=False)["input_ids"])
    with pytest.raises(UserError, match=rf"No training example has a response token within budget.max_length \({prompt}\)"):
        train(tiny_model, tiny_tokenizer, vanilla_examples(), budget(max_length=prompt), LoRASettings(r=4), tmp_path, seed=0)
    assert not (tmp_path / "train_stats.json").exists()


def test_fast_lora_is_pefts_forward_bit_for_bit_and_backward_up_to_rounding(tiny_tokenizer):
    """Folding LoRA's scaling (alpha/r = 2) and sum into addmm changes no bit of the logits; the
    gradients only by the order in which an input's gradient sums its pieces (the base and the
    adapter products' input gradients are summed first on the 2-D input)."""
    from harness.model.adapters import attach_adapter
    from harness.model.fast_lora import fast_lora

    model = attach_adapter(build_tiny_model(tiny_tokenizer), LoRASettings(r=4, alpha=8))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # else the adapter adds exact zeros
    ids = torch.randint(0, len(tiny_tokenizer), (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    results = []
    for fast in (False, True):
        model.zero_grad()
        with fast_lora(model) if fast else contextlib.nullcontext():
            logits = model(input_ids=ids, attention_mask=mask).logits
        logits.square().mean().backward()
        results.append([logits.detach()] + [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n])
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(*results))
    with fast_lora(model):
        assert sum("forward" in vars(m) for m in model.modules()) == 2 * 7  # q, k, v, o, gate, up, down of 2 layers
        with model.disable_adapter():  # a reference pass inside it is the original model's
            assert torch.equal(model(input_ids=ids).logits, model.get_base_model()(input_ids=ids).logits)
    assert not any("forward" in vars(m) for m in model.modules())


def test_fused_projections_are_pefts_up_to_rounding(tiny_tokenizer):
    """q, k and v run as one product (their frozen weights concatenated once, the adapters' A's
    stacked and B's side by side): logits and adapter gradients equal peft's up to rounding; a
    projection called on another input, or with the adapter off, is computed as before."""
    from harness.model.adapters import attach_adapter
    from harness.model.fast_lora import fast_lora

    model = attach_adapter(build_tiny_model(tiny_tokenizer), LoRASettings(r=4, alpha=8))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 9))
    results, kept = [], {}
    for fused in (None, kept, kept):
        model.zero_grad()
        with fast_lora(model, fused):
            logits = model(input_ids=ids).logits
        logits.square().mean().backward()
        results.append([logits.detach()] + [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n])
    assert len(kept) == 2  # one concatenation per layer, built once and reused
    peft, fused, again = results
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(peft, fused))
    assert all(torch.equal(a, b) for a, b in zip(fused, again))
    assert not all(torch.equal(a, b) for a, b in zip(peft, fused))  # the fused path did run
    attention = model.get_base_model().model.layers[0].self_attn
    x, other = torch.randn(1, 5, attention.q_proj.in_features), torch.randn(1, 5, attention.q_proj.in_features)
    with fast_lora(model, kept), torch.no_grad():
        attention.q_proj(x)
        assert torch.allclose(attention.k_proj(other), type(attention.k_proj).forward(attention.k_proj, other), atol=1e-6)
        assert torch.allclose(attention.v_proj(x), type(attention.v_proj).forward(attention.v_proj, x), atol=1e-6)
        with model.disable_adapter():  # a reference pass inside it is the original model's
            assert torch.allclose(model(input_ids=ids).logits, model.get_base_model()(input_ids=ids).logits, atol=1e-5)
    assert not any("forward" in vars(m) for m in model.modules())


def test_training_with_fast_lora_is_pefts_up_to_rounding(tiny_tokenizer, tmp_path, monkeypatch):
    """The fast LoRA layers, unfused or with q, k and v as one product, train as peft's within
    1e-6 relative per step."""
    import harness.model.training as training
    from harness.model.fast_lora import fast_lora

    monkeypatch.setattr(training, "packable", lambda model: False)  # padded micro-batches every time

    runs = []
    for way in ("unfused", "peft", "fused"):
        monkeypatch.setattr(training, "fast_lora", {"unfused": lambda model, fused=None: fast_lora(model),
                                                    "peft": lambda model, fused=None: contextlib.nullcontext(),
                                                    "fused": fast_lora}[way])
        result = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, vanilla_examples(), budget(steps=3), LoRASettings(),
                       tmp_path / way, seed=0)
        runs.append((result.stats["losses"], adapter_weights(result.model)))
    (unfused, unfused_weights), (peft, peft_weights), (fused, fused_weights) = runs
    assert unfused == pytest.approx(peft, rel=1e-6) and fused == pytest.approx(peft, rel=1e-6)
    # Adam's normalised steps carry rounding in a near-zero gradient into the weights (up to ~8e-6 here)
    assert all(torch.allclose(w[name], peft_weights[name], rtol=1e-4, atol=3e-5) for w in (unfused_weights, fused_weights)
               for name in peft_weights)


def test_weighted_nll_is_the_cut_off_cross_entropy_bit_for_bit():
    """Ignoring the last position's target instead of cutting its logits off changes no bit of the
    loss or of the logits' gradient."""
    from harness.model.examples import weighted_nll

    torch.manual_seed(0)
    logits = (torch.randn(3, 11, 50) * 4).requires_grad_()
    ids, weights = torch.randint(0, 50, (3, 11)), torch.rand(3, 11) * (torch.rand(3, 11) > 0.3)
    cut = logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(cut.reshape(-1, 50), ids[:, 1:].reshape(-1), reduction="none").view(3, 10)
    old = (weights[:, 1:] * nll).sum()
    old_grad, = torch.autograd.grad(old, logits)
    new, total = weighted_nll(logits, ids, weights)
    new_grad, = torch.autograd.grad(new, logits)
    assert torch.equal(old, new) and torch.equal(old_grad, new_grad) and torch.equal(total, weights[:, 1:].sum())


def test_packed_steps_train_like_padded_micro_batches(tiny_tokenizer, tmp_path, monkeypatch):
    """Packing a step's micro-batches end to end changes the losses by rounding only, and no FLOP counted."""
    import harness.model.packing as packing
    import harness.model.training as training

    examples = vanilla_examples() + [TrainingExample(user_turn("a " * 40), [Segment("b c d e f g")])]
    used = []
    monkeypatch.setattr(training, "packed_step", lambda *args: used.append(1) or packing.packed_step(*args))
    runs = []
    for packed in (True, False):
        if not packed:
            monkeypatch.setattr(training, "packable", lambda model: False)
        result = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, examples, budget(steps=4, batch_size=7), LoRASettings(),
                       tmp_path / str(packed), seed=0)
        runs.append((result.stats, adapter_weights(result.model)))
    (packed, packed_weights), (padded, padded_weights) = runs
    assert len(used) == 4 and packed["padded_tokens"] == 0 < padded["padded_tokens"]
    assert packed["losses"] == pytest.approx(padded["losses"], rel=1e-6)
    assert packed["flops"] == padded["flops"] and packed["total_tokens"] == padded["total_tokens"]
    assert all(torch.allclose(packed_weights[n], padded_weights[n], rtol=1e-4, atol=1e-6) for n in padded_weights)
