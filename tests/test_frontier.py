"""The 2025–26 frontier methods of issue 33 on the tiny random model, on values: EAFT's weight
and loss, STM's mask, OPSD's teacher and divergence, GRPO's rewards, advantages and loss
(against TRL's GRPOTrainer on the same batch), and the trainer's on-policy steps (sampled from
the current weights, seeded, recorded, resumable)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import build_tiny_model

from baselines.eaft import EAFT, EAFTOptions, entropy_weights
from baselines.grpo import GRPO, GRPOOptions, group_advantages
from baselines.opsd import OPSD, OPSDOptions, TEMPLATE, divergence
from baselines.stm import STM, STMOptions
from baselines.vanilla import Vanilla
from harness.config.settings import Budget, LoRASettings
from harness.model.adapters import attach_adapter
from harness.model.examples import collate, tokenise_example
from harness.model.generation import Decoder
from harness.model.onpolicy import TrainingStep, WeightSnapshot
from harness.model.prompts import request_ids, turn_end_tokens, user_turn
from harness.model.training import method_hooks, train
from harness.plugins.requests import Decoding
from test_methods import context

BUDGET = Budget(steps=4, batch_size=4, learning_rate=2e-2, warmup_ratio=0.0, save_every=0, max_length=160)
LORA = LoRASettings(r=4, alpha=8)


def references(tokenizer):
    return Vanilla().build_training_examples(context(None))


def batch_of(items, tokenizer, start: int = 0) -> dict:
    batch = collate(items, tokenizer.pad_token_id)
    return {**batch, "extras": [item.extra for item in items], "start": start}


def trained_lora(tokenizer, seed: int = 0):
    """A tiny model with a LoRA adapter that has moved (lora_B random), its start kept in a snapshot."""
    model = attach_adapter(build_tiny_model(tokenizer), LORA, None)
    start = WeightSnapshot(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model, start


# --- EAFT -----------------------------------------------------------------------------------------

def entropy_by_hand(logits: list[float], k: int) -> float:
    top = sorted(logits, reverse=True)[:k]
    z = sum(math.exp(v) for v in top)
    probs = [math.exp(v) / z for v in top]
    return -sum(p * math.log(p) for p in probs) / math.log(k)


def test_eaft_weight_is_the_top_k_entropy_over_ln_k_raised_to_alpha_and_detached():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]], requires_grad=True)
    weight = entropy_weights(logits, 3, 1.0)
    assert not weight.requires_grad
    assert float(weight[0]) == pytest.approx(entropy_by_hand([2.0, 1.0, 0.5, -1.0, 0.0], 3), rel=1e-6)
    assert float(entropy_weights(logits, 3, 2.0)[0]) == pytest.approx(entropy_by_hand([2.0, 1.0, 0.5, -1.0, 0.0], 3) ** 2, rel=1e-6)
    assert float(entropy_weights(logits, 0, 1.0)[0]) == pytest.approx(entropy_by_hand([2.0, 1.0, 0.5, -1.0, 0.0], 5), rel=1e-6)
    assert float(entropy_weights(torch.zeros(1, 8), 4, 1.0)[0]) == pytest.approx(1.0)  # uniform: the largest weight


def test_eaft_loss_of_each_target_token_is_its_entropy_weight_times_its_nll(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    item = tokenise_example(tiny_tokenizer, references(tiny_tokenizer)[0], 160)
    batch = batch_of([item], tiny_tokenizer)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    loss = EAFT(EAFTOptions(top_k=20)).token_loss(model, batch, logits)
    ids = item.input_ids
    for t in range(1, len(ids)):
        row = logits[0, t - 1].tolist()
        nll = -(row[ids[t]] - math.log(sum(math.exp(v) for v in row)))
        assert float(loss[0, t - 1]) == pytest.approx(entropy_by_hand(row, 20) * nll, rel=1e-4), t


def test_eaft_with_alpha_zero_trains_exactly_as_vanilla(tiny_tokenizer, tmp_path):
    """Weight 1 everywhere: the trainer's per-token-loss path computes what its NLL path does."""
    examples = references(tiny_tokenizer)
    vanilla = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, examples, BUDGET, LORA, tmp_path / "v", seed=0)
    flat = EAFT(EAFTOptions(alpha=0.0))
    eaft = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, examples, BUDGET, LORA, tmp_path / "e", seed=0,
                 **method_hooks(flat))
    assert eaft.stats["losses"] == pytest.approx(vanilla.stats["losses"], rel=1e-6)
    weighted = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, examples, BUDGET, LORA, tmp_path / "w", seed=0,
                     **method_hooks(EAFT()))
    assert all(w < v for w, v in zip(weighted.stats["losses"], vanilla.stats["losses"]))  # weights below 1


# --- STM ------------------------------------------------------------------------------------------

def test_stm_masks_exactly_the_target_tokens_whose_perplexity_under_the_original_exceeds_the_threshold(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    examples = references(tiny_tokenizer)
    nlls = []  # by hand, one example at a time: NLL of each response token under the original
    for ex in examples:
        item = tokenise_example(tiny_tokenizer, ex, 160)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([item.input_ids])).logits[0], -1)
        start = len(request_ids(tiny_tokenizer, ex.messages))
        nlls.append([(t, -float(logp[t - 1, item.input_ids[t]])) for t in range(start, len(item.input_ids))])
    values = sorted(n for row in nlls for _, n in row)
    middle = len(values) // 2
    threshold = math.exp((values[middle - 1] + values[middle]) / 2)  # about half the tokens above it, none at it
    ctx = context(None)
    ctx.original, ctx.original_model = Decoder(model, tiny_tokenizer), model
    masked = STM(STMOptions(threshold=threshold)).build_training_examples(ctx)
    for ex, stm_ex, row in zip(examples, masked, nlls):
        plain, item = tokenise_example(tiny_tokenizer, ex, 160), tokenise_example(tiny_tokenizer, stm_ex, 160)
        assert item.input_ids == plain.input_ids  # the same tokens, end of turn included
        assert [item.weights[t] for t, _ in row] == [0.0 if n > math.log(threshold) else 1.0 for _, n in row]
        assert not any(item.weights[: row[0][0]])  # the prompt stays out of the loss
    above = len(values) - middle
    assert ctx.stats["masked_tokens"] == above and ctx.stats["target_tokens"] == len(values)
    assert ctx.stats["masked_share"] == pytest.approx(above / len(values))


# --- OPSD -----------------------------------------------------------------------------------------

def divergence_by_hand(student: list[float], teacher: list[float], alpha: float) -> float:
    """KL(t ‖ s) at alpha 0, KL(s ‖ t) at 1, else α·KL(t ‖ m) + (1 − α)·KL(s ‖ m), m = (1 − α)·s + α·t (the
    generalised JSD of TRL's newer SDFT trainer, ``distillation_alpha``)."""
    def norm(row):
        z = sum(math.exp(v) for v in row)
        return [math.exp(v) / z for v in row]

    s, t = norm(student), norm(teacher)

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)

    if alpha == 0:
        return kl(t, s)
    if alpha == 1:
        return kl(s, t)
    m = [(1 - alpha) * a + alpha * b for a, b in zip(s, t)]
    return alpha * kl(t, m) + (1 - alpha) * kl(s, m)


@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.5])
def test_opsd_loss_is_the_divergence_from_the_model_shown_the_reference_with_the_adapter_off(tiny_tokenizer, alpha):
    model, _ = trained_lora(tiny_tokenizer)
    with torch.no_grad():  # prepare_model sees the start: the adapter adds nothing yet
        saved = {n: p.clone() for n, p in model.named_parameters() if "lora_B" in n}
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.zero_()
    method = OPSD(OPSDOptions(alpha=alpha, max_new_tokens=6))
    method.prepare_model(model, tiny_tokenizer, 0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in saved:
                p.copy_(saved[n])
    examples = references(tiny_tokenizer)[:3]
    step = TrainingStep(examples, [0, 1, 2], model, tiny_tokenizer, 0, 7, 160)
    sequences = method.sample_step(step)
    assert step.generated_samples == 3 and step.generated_tokens > 0
    batch = batch_of(sequences, tiny_tokenizer)
    model.train()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = method.token_loss(model, batch, logits)
    for r, (ex, seq) in enumerate(zip(examples, sequences)):
        prompt = request_ids(tiny_tokenizer, ex.messages)
        completion = seq.input_ids[len(prompt):]
        assert seq.input_ids[: len(prompt)] == prompt and seq.weights == [0.0] * len(prompt) + [1 / len(completion)] * len(completion)
        teacher_prompt = request_ids(tiny_tokenizer, user_turn(TEMPLATE.format(prompt=ex.messages[0]["content"],
                                                                                 reference=ex.response_text)))
        with torch.no_grad():
            student = model(input_ids=torch.tensor([prompt + completion])).logits[0]
            with model.disable_adapter():
                teacher = model(input_ids=torch.tensor([teacher_prompt + completion])).logits[0]
        for k in range(len(completion)):
            expected = divergence_by_hand(student[len(prompt) + k - 1].tolist(), teacher[len(teacher_prompt) + k - 1].tolist(), alpha)
            assert float(loss[r, len(prompt) + k - 1].detach()) == pytest.approx(expected, rel=1e-4, abs=1e-7), (r, k)


def test_opsd_cannot_be_compared_with_trl_here_the_pinned_trl_has_no_sdft_trainer():
    """The pinned trl 0.25.1 (transformers < 4.58 for unbabel-comet) has GRPOTrainer but no
    ``trl.experimental.sdft`` (its SDFTTrainer came later), so no step of it can run beside opsd's.
    What can be compared is the formula: opsd's ``divergence`` is the newer trainer's
    (``distillation_alpha``: 0 forward KL, 1 reverse KL, between the generalised JSD), checked
    by hand above and against torch's own KL here."""
    import trl

    assert trl.__version__ == "0.25.1"
    with pytest.raises(ImportError), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "You are importing from 'trl.experimental'"
        import trl.experimental.sdft  # noqa: F401
    torch.manual_seed(0)
    s, t = torch.log_softmax(torch.randn(5, 11), -1), torch.log_softmax(torch.randn(5, 11), -1)
    kl = torch.nn.functional.kl_div
    assert torch.allclose(divergence(s, t, 0.0), kl(s, t, reduction="none", log_target=True).sum(-1), atol=1e-6)
    assert torch.allclose(divergence(s, t, 1.0), kl(t, s, reduction="none", log_target=True).sum(-1), atol=1e-6)


def test_an_ema_teacher_moves_by_its_rate_towards_the_current_weights(tiny_tokenizer):
    model, start = trained_lora(tiny_tokenizer)
    name, before = next((n, v.clone()) for n, v in start.values.items() if "lora_B" in n)
    start.follow(model, 0.25)
    now = dict(model.named_parameters())[name].detach()
    assert torch.allclose(start.values[name], 0.75 * before + 0.25 * now)


# --- GRPO -----------------------------------------------------------------------------------------

def test_grpo_advantages_are_rewards_normalised_within_their_group():
    rewards = [0.1, 0.5, 0.2, 0.9, 0.3, 0.3]
    spread = math.sqrt(2 * 0.2 ** 2)  # sample standard deviation of (0.1, 0.5)
    expected = [-0.2 / (spread + 1e-4), 0.2 / (spread + 1e-4), -0.35 / (math.sqrt(2 * 0.35 ** 2) + 1e-4),
                0.35 / (math.sqrt(2 * 0.35 ** 2) + 1e-4), 0.0, 0.0]
    assert group_advantages(rewards, 2, "group").tolist() == pytest.approx(expected, rel=1e-5)
    assert group_advantages(rewards, 2, "none").tolist() == pytest.approx([-0.2, 0.2, -0.35, 0.35, 0, 0], abs=1e-6)
    std = torch.tensor(rewards).std().item()
    assert group_advantages(rewards, 3, "batch").tolist() == pytest.approx(
        [(r - m) / (std + 1e-4) for r, m in zip(rewards, [0.8 / 3] * 3 + [1.5 / 3] * 3)], rel=1e-5)


def test_grpo_reward_is_sentence_chrf_over_100():
    from sacrebleu.metrics import CHRF

    rewards = GRPO().rewards(["The house is big.", "The house is small.", ""], ["The house is big."] * 3, [""] * 3)
    assert rewards == pytest.approx([1.0, CHRF().sentence_score("The house is small.", ["The house is big."]).score / 100, 0.0])


def test_grpo_samples_groups_of_answers_weighted_by_the_loss_type(tiny_tokenizer):
    model, _ = trained_lora(tiny_tokenizer)
    examples = references(tiny_tokenizer)[:2]
    for loss_type in ("dapo", "grpo"):
        method = GRPO(GRPOOptions(group_size=3, max_new_tokens=5, loss_type=loss_type, beta=0.0))
        step = TrainingStep(examples, [0, 1], model, tiny_tokenizer, 3, 11, 160)
        sequences = method.sample_step(step)
        prompts = [request_ids(tiny_tokenizer, ex.messages) for ex in examples for _ in range(3)]
        assert [s.input_ids[: len(p)] for s, p in zip(sequences, prompts)] == prompts
        advantages = [s.extra["advantage"] for s in sequences]
        assert sum(advantages[:3]) == pytest.approx(0, abs=1e-5) and sum(advantages[3:]) == pytest.approx(0, abs=1e-5)
        for seq, prompt in zip(sequences, prompts):
            n = len(seq.input_ids) - len(prompt)
            assert set(seq.weights[len(prompt):]) == {1.0 if loss_type == "dapo" else 1 / n}
        assert step.generated_samples == 6 and 0 <= step.stats["reward"] <= 1


def test_grpo_advantages_and_loss_equal_trl_grpo_trainers_on_the_same_batch(tiny_tokenizer, tmp_path):
    """TRL 0.25.1's GRPOTrainer scores the same prompts, completions and rewards: its advantages,
    its loss (clipped ratio, k3 KL to the reference model, DAPO normalisation) and its gradient
    equal this method's, the reference being the original weights on both sides."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    build_tiny_model(tiny_tokenizer).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    examples = references(tiny_tokenizer)[:2]
    prompts = [request_ids(tiny_tokenizer, ex.messages) for ex in examples for _ in range(2)]
    end = turn_end_tokens(tiny_tokenizer)
    completions = [[5, 6, 7] + end, [8, 9], [10, 11, 12, 13, 14, 15], [16] + end]
    rewards = [0.1, 0.5, 0.2, 0.9]
    trl_model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    method = GRPO(GRPOOptions(group_size=2, beta=0.04))
    ours.requires_grad_(True)
    method.prepare_model(ours, tiny_tokenizer, 0)  # the reference: the original weights
    torch.manual_seed(1)
    with torch.no_grad():  # both policies move away from the reference alike
        for a, b in zip(trl_model.parameters(), ours.parameters()):
            a.add_(0.05 * torch.randn_like(a))
            b.copy_(a)

    args = GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, num_generations=2, beta=0.04,
                      max_completion_length=8, report_to=[], use_cpu=True, max_steps=1)
    def chrf_stand_in(completions, **kwargs):  # the rewards of the four completions, fixed
        return rewards

    trainer = GRPOTrainer(model=trl_model, reward_funcs=chrf_stand_in, args=args,
                          train_dataset=Dataset.from_dict({"prompt": [ex.messages for ex in examples]}), processing_class=tiny_tokenizer)
    trainer.ref_model.load_state_dict(AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict())
    trainer._generate_single_turn = lambda _: (prompts, completions, None, None)
    scored = trainer._generate_and_score_completions([{"prompt": ex.messages} for ex in examples for _ in range(2)])
    assert scored["advantages"].tolist() == pytest.approx(group_advantages(rewards, 2, "group").tolist(), rel=1e-6)
    trl_loss = trainer._compute_loss(trainer.model, scored)
    trl_loss.backward()

    step = TrainingStep(examples, [0, 1], ours, tiny_tokenizer, 0, 0, 160)
    sequences = [step.sequence(p, c, 1.0, {"advantage": a}) for p, c, a in zip(prompts, completions, scored["advantages"].tolist())]
    batch = batch_of(sequences, tiny_tokenizer)
    logits = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_token = method.token_loss(ours, batch, logits)
    weights = batch["weights"][:, 1:]
    loss = (weights * per_token).sum() / weights.sum()  # the trainer's step: Σ w·loss / the step's weighted tokens
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(trl_loss.detach()), rel=1e-5)
    for (name, a), b in zip(trl_model.named_parameters(), ours.parameters()):  # TRL pads prompts on the left: rounding
        assert float((a.grad - b.grad).norm()) <= 1e-4 * float(a.grad.norm()), name


# --- the trainer's on-policy steps ------------------------------------------------------------------

def test_in_training_samples_come_from_the_adapter_applied_model(tiny_tokenizer):
    model, _ = trained_lora(tiny_tokenizer)
    prompts = [request_ids(tiny_tokenizer, ex.messages) for ex in references(tiny_tokenizer)[:3]]
    step = TrainingStep([], [], model, tiny_tokenizer, 0, 3, 160)
    greedy = Decoding(max_new_tokens=8)
    sampled = step.sample(prompts, greedy)
    merged = attach_adapter(build_tiny_model(tiny_tokenizer), LORA, None)
    merged.load_state_dict(model.state_dict())
    assert Decoder(merged.merge_and_unload(), tiny_tokenizer).sample(prompts, greedy, 0) == sampled
    assert Decoder(build_tiny_model(tiny_tokenizer), tiny_tokenizer).sample(prompts, greedy, 0) != sampled  # the adapter counts
    assert step.generated_tokens == sum(len(ids) for ids, _ in sampled)


def test_samples_drawn_inside_a_meter_count_once_as_generated_flops(tiny_tokenizer):
    from harness.model.compute import Meter, metering, shape_of

    model = build_tiny_model(tiny_tokenizer)
    prompts = [request_ids(tiny_tokenizer, ex.messages) for ex in references(tiny_tokenizer)[:3]]
    with metering(Meter()) as meter:
        sampled = Decoder(model, tiny_tokenizer).sample(prompts, Decoding(max_new_tokens=5, do_sample=True), 0)
    expected = sum(shape_of(model).generation(len(p), len(ids), done, 0) for p, (ids, done) in zip(prompts, sampled))
    assert meter.flops["generated"] == expected > 0  # from the lengths, as the Generator counts its answers
    assert meter.flops["forward"] == meter.flops["trained"] == 0  # the decode passes themselves are not counted again


def test_on_policy_training_is_seeded_recorded_and_resumes_to_the_same_result(tiny_tokenizer, tmp_path):
    budget = Budget(steps=4, batch_size=4, learning_rate=2e-2, warmup_ratio=0.0, save_every=2, max_length=160)
    examples = references(tiny_tokenizer)

    def run(folder, method, stop_at=None):
        hooks = method_hooks(method)
        sample = hooks["sample_step"]

        def stopping(step):
            if step.step == stop_at:
                raise KeyboardInterrupt
            return sample(step)

        hooks["sample_step"] = stopping
        return train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, examples, budget, LORA, folder, seed=3, **hooks)

    first = run(tmp_path / "a", OPSD(OPSDOptions(max_new_tokens=6)))
    stats = first.stats
    assert len(stats["generated_tokens_per_step"]) == 4 and sum(stats["generated_tokens_per_step"]) == stats["generated_tokens"]
    assert stats["generated_samples"] == 16 and stats["generated_tokens"] > 0 and stats["sampling_s"] > 0
    assert len(stats["step_stats"]["sample_tokens"]) == 4
    again = run(tmp_path / "b", OPSD(OPSDOptions(max_new_tokens=6)))
    assert again.stats["losses"] == stats["losses"] and again.stats["generated_tokens_per_step"] == stats["generated_tokens_per_step"]
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "c", OPSD(OPSDOptions(max_new_tokens=6)), stop_at=3)
    resumed = run(tmp_path / "c", OPSD(OPSDOptions(max_new_tokens=6)))
    assert resumed.stats["resumed_from_step"] == 2
    assert resumed.stats["losses"] == pytest.approx(stats["losses"], rel=1e-6)
    assert resumed.stats["generated_tokens_per_step"] == stats["generated_tokens_per_step"]


def test_grpo_steps_take_batch_over_group_prompts_and_train_on_the_batch(tiny_tokenizer, tmp_path):
    method = GRPO(GRPOOptions(group_size=2, max_new_tokens=4))
    result = train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, references(tiny_tokenizer), BUDGET, LORA, tmp_path, seed=0,
                   **method_hooks(method))
    assert result.stats["generated_samples"] == 4 * BUDGET.batch_size
    assert len(result.stats["step_stats"]["reward"]) == 4 and result.stats["examples_seen"] == 16
    with pytest.raises(Exception, match="divisible by the 3 sequences"):
        train(build_tiny_model(tiny_tokenizer), tiny_tokenizer, references(tiny_tokenizer), BUDGET, LORA, tmp_path / "x", seed=0,
              **method_hooks(GRPO(GRPOOptions(group_size=3))))


# --- what `radis-bench list` says ---------------------------------------------------------------

FRONTIER = {"opsd": "2601.19897", "grpo": "2402.03300", "eaft": "2601.02151", "stm": "2501.14315"}


def test_list_shows_the_four_with_their_papers_and_tells_sdft_from_opsd():
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.plugins import registry

    out = CliRunner().invoke(app, ["list"], env={"COLUMNS": "250"}).output
    rows, name = {}, None
    for line in out.splitlines():  # a method's row and its citation line below it
        if line.startswith("│"):
            first, text = (cell.strip() for cell in line.split("│")[1:3])
            name = first or name
            rows[name] = f"{rows.get(name, '')} {text}"
    for method, arxiv in FRONTIER.items():
        cls = registry.get_method(method)
        module = __import__(cls.__module__, fromlist=["_"])
        assert f"arXiv {arxiv}" in rows[method] and arxiv in module.__doc__ and "(extension)" in rows[method], method
    assert "2509.04259" in rows["grpo"]  # RL's Razor, which runs GRPO against SFT
    assert "on-policy" in rows["opsd"] and "Shenfeld" in rows["opsd"] and "not `sdft`" in rows["opsd"]
    assert "off-policy" in rows["sdft"] and "Yang et al." in rows["sdft"] and "not `opsd`" in rows["sdft"]
