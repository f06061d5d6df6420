import contextlib
import copy
import json
import warnings

import pytest
import torch

from harness.config.settings import RunConfig
from harness.data.sources import DataSource
from harness.errors import UserError
from harness.plugins.suite import SuiteContext
from harness.plugins.requests import Decoding, Output, Request
from harness.model.generation import GenerationCache, Generator
from harness.model.prompts import render_chat, turn_end_tokens, user_turn
from suites.retention import RetentionSuite, divergences, teacher_forced_sequences

from conftest import build_tiny_model

INSTRUCTIONS = [
    "Hello",
    "How are you today? Tell me about the weather in Berlin.",
    "Guten Morgen",
    "Translate this from German to English: Das Haus ist groß.",
]


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    (root / "alpaca_eval").mkdir(parents=True)
    rows = [{"instruction": text, "output": "reference"} for text in INSTRUCTIONS]
    (root / "alpaca_eval" / "alpaca_eval.json").write_text(json.dumps(rows), encoding="utf-8")
    return root


def make_context(model, original, tokenizer, root, tmp_path, original_model_fn=None) -> SuiteContext:
    cache = GenerationCache(tmp_path / "generations.sqlite")
    original_generator = Generator(original, tokenizer, "original", cache, batch_size=4)
    generator = Generator(model, tokenizer, "evaluated", cache, batch_size=4)
    config = RunConfig(eval_size=None)
    return SuiteContext("m", model, tokenizer, generator, original_generator, DataSource.open(root), [], config,
                        tmp_path / "work", original_model_fn)


def run(ctx, **options):
    result = RetentionSuite.from_settings({"max_new_tokens": 12, "batch_size": 3, **options}).evaluate(ctx)
    return {m.name: m for m in result.metrics}, result


def test_original_against_itself_is_exactly_zero(tiny_model, tiny_tokenizer, data_root, tmp_path):
    metrics, result = run(make_context(tiny_model, tiny_model, tiny_tokenizer, data_root, tmp_path))
    assert metrics["kl"].value == 0.0 and metrics["delta_nll"].value == 0.0 and metrics["abs_delta_nll"].value == 0.0
    assert metrics["kl"].main and metrics["kl"].higher_is_better is False
    assert metrics["nll"].value == metrics["nll_original"].value > 0
    assert all(m.n == len(INSTRUCTIONS) for m in metrics.values())
    assert len({row["nll"] for row in result.outputs}) == len(INSTRUCTIONS)  # items differ


def test_perturbed_model_moves_away(tiny_model, tiny_tokenizer, data_root, tmp_path):
    perturbed = copy.deepcopy(tiny_model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ctx = make_context(perturbed, tiny_model, tiny_tokenizer, data_root, tmp_path,
                       original_model_fn=lambda: contextlib.nullcontext(tiny_model))
    metrics, result = run(ctx)
    assert metrics["kl"].value > 0 and metrics["abs_delta_nll"].value > 0
    assert all(row["kl"] > 0 for row in result.outputs)
    assert metrics["delta_nll"].value == pytest.approx(metrics["nll"].value - metrics["nll_original"].value)
    assert metrics["kl"].ci_low <= metrics["kl"].value <= metrics["kl"].ci_high
    # the evaluated model answers each instruction once itself: its finished share and length
    assert ctx.generator.stats.generated == len(INSTRUCTIONS)
    own = ctx.generator.generate([Request(user_turn(p)) for p in INSTRUCTIONS], Decoding(max_new_tokens=12))
    assert metrics["finished"].value == pytest.approx(sum(o.finished for o in own) / len(own))
    assert metrics["length"].value == pytest.approx(sum(o.new_tokens for o in own) / len(own))
    assert [row["own_output"] for row in result.outputs] == [o.text for o in own]


def test_stop_and_content_parts_add_up_to_the_kl_and_match_their_definition(tiny_model, tiny_tokenizer, data_root, tmp_path):
    perturbed = copy.deepcopy(tiny_model)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ctx = make_context(perturbed, tiny_model, tiny_tokenizer, data_root, tmp_path,
                       original_model_fn=lambda: contextlib.nullcontext(tiny_model))
    metrics, result = run(ctx)
    for row in result.outputs:
        assert row["kl_stop"] > 0 and row["kl_content"] > 0
        assert abs(row["kl_stop"] + row["kl_content"] - row["kl"]) < 1e-6
    assert metrics["kl_stop"].value + metrics["kl_content"].value == pytest.approx(metrics["kl"].value, abs=1e-6)

    # the definition, position by position: Bernoulli KL of stopping (+ which stop token) and
    # the KL of the renormalised rest weighted by the original's probability of going on
    torch.manual_seed(3)
    log_p = torch.log_softmax(torch.randn(5, 11) * 3, -1)
    log_q = torch.log_softmax(torch.randn(5, 11) * 3, -1)
    stops = [2, 7]
    kl, kl_stop, kl_content = divergences(log_p, log_q, stops)
    p, q = log_p.double().exp(), log_q.double().exp()
    go = [i for i in range(11) if i not in stops]
    p_s, q_s = p[:, stops].sum(-1), q[:, stops].sum(-1)
    bernoulli = p_s * (p_s / q_s).log() + (1 - p_s) * ((1 - p_s) / (1 - q_s)).log()
    within = (p[:, stops] / p_s[:, None] * ((p[:, stops] / p_s[:, None]) / (q[:, stops] / q_s[:, None])).log()).sum(-1)
    rest_p, rest_q = p[:, go] / (1 - p_s[:, None]), q[:, go] / (1 - q_s[:, None])
    content = (1 - p_s) * (rest_p * (rest_p / rest_q).log()).sum(-1)
    assert torch.allclose(kl_stop.double(), bernoulli + p_s * within, atol=1e-5)
    assert torch.allclose(kl_content.double(), content, atol=1e-5)
    assert torch.allclose(kl.double(), (p * (p / q).log()).sum(-1), atol=1e-5)


def test_the_original_s_generated_ids_are_scored_not_its_retokenised_text(tiny_tokenizer):
    text = "I am fine"
    canonical = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    # the same text in other pieces: one token per character, as a sampler could have produced
    pieces = tiny_tokenizer.convert_ids_to_tokens(canonical)
    at = next(i for i, piece in enumerate(pieces) if len(piece) > 1)
    split = canonical[:at] + [tiny_tokenizer.convert_tokens_to_ids(c) for c in pieces[at]] + canonical[at + 1:]
    assert tiny_tokenizer.decode(split) == text and split != canonical
    (ids, scored), (ids_text, scored_text) = teacher_forced_sequences(
        tiny_tokenizer, ["Hello", "Hello"], [Output(text, len(split), False, token_ids=split), Output(text, 3, False)])
    assert ids[-scored:] == split and ids_text[-scored_text:] == canonical


@pytest.mark.parametrize("init_lora_weights, moved", [(True, False), (False, True)])
def test_lora_adapter_is_compared_with_the_adapter_disabled(tiny_tokenizer, data_root, tmp_path, init_lora_weights, moved):
    from peft import LoraConfig, get_peft_model

    original = build_tiny_model(tiny_tokenizer)
    adapted = get_peft_model(build_tiny_model(tiny_tokenizer),
                             LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=init_lora_weights))
    metrics, _ = run(make_context(adapted, original, tiny_tokenizer, data_root, tmp_path))
    # B = 0 (peft's default init) leaves the model unchanged, so the KL is exactly zero
    assert (metrics["kl"].value > 0) is moved
    assert (metrics["delta_nll"].value != 0) is moved


def test_scored_tokens_are_the_answer_and_end_of_turn(tiny_model, tiny_tokenizer):
    end_id = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert turn_end_tokens(tiny_tokenizer) == [end_id]
    finished, cut = teacher_forced_sequences(
        tiny_tokenizer, ["Hello", "Hello"], [Output("I am fine", 3, True), Output("I am fine", 3, False)]
    )
    prompt_ids = tiny_tokenizer(render_chat(tiny_tokenizer, user_turn("Hello")), add_special_tokens=False)["input_ids"]
    ids, scored = finished
    assert ids[: len(prompt_ids)] == prompt_ids and ids[-1] == end_id
    assert tiny_tokenizer.decode(ids[-scored:]) == "I am fine<|im_end|>"
    assert cut[1] == scored - 1 and cut[0] == ids[:-1]


def test_batched_nll_matches_an_unpadded_forward_pass(tiny_model, tiny_tokenizer, data_root, tmp_path):
    ctx = make_context(tiny_model, tiny_model, tiny_tokenizer, data_root, tmp_path)
    _, result = run(ctx)
    answers = ctx.original_generator.generate([Request(user_turn(p)) for p in INSTRUCTIONS], Decoding(max_new_tokens=12))
    sequences = teacher_forced_sequences(tiny_tokenizer, INSTRUCTIONS, answers)
    for (ids, scored), row in zip(sequences, result.outputs):
        labels = torch.tensor([[-100] * (len(ids) - scored) + ids[-scored:]])
        with torch.no_grad():
            loss = tiny_model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        assert row["nll"] == pytest.approx(loss, abs=1e-5) and row["tokens"] == scored


def test_an_instruction_set_that_is_not_one_is_a_user_error():
    with pytest.raises(UserError, match="advbench"):
        RetentionSuite.from_settings({"instruction_set": "advbench"}).check()
    with pytest.raises(UserError, match="no_such_set"):
        RetentionSuite.from_settings({"instruction_set": "no_such_set"}).check()


def _full_forward_reference(model, original, tokenizer, sequences):
    """What retention computed before the original's side was cached: both models' logits from
    a full forward pass of each answer."""
    out = []
    for ids, scored in sequences:
        if not scored:
            out.append(None)
            continue
        x = torch.tensor([ids])
        with torch.no_grad():
            log_q = torch.log_softmax(model(input_ids=x).logits[0, len(ids) - scored - 1 : len(ids) - 1].float(), -1)
            log_p = torch.log_softmax(original(input_ids=x).logits[0, len(ids) - scored - 1 : len(ids) - 1].float(), -1)
        targets = torch.tensor(ids[len(ids) - scored:])
        nll = -log_q.gather(1, targets[:, None]).mean().item()
        nll_o = -log_p.gather(1, targets[:, None]).mean().item()
        out.append((nll, nll_o, (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()))
    return out


def test_the_cached_original_gives_the_full_forward_numbers_and_is_computed_once(tiny_tokenizer, data_root, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    import suites.retention as retention

    original = build_tiny_model(tiny_tokenizer, seed=0)
    adapted = get_peft_model(copy.deepcopy(original), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ctx = make_context(adapted, original, tiny_tokenizer, data_root, tmp_path)
    ctx.shared_dir = tmp_path / "shared"
    _, result = run(ctx)
    answers = ctx.original_generator.generate([Request(user_turn(p)) for p in INSTRUCTIONS], Decoding(max_new_tokens=12))
    expected = _full_forward_reference(adapted, original, tiny_tokenizer, teacher_forced_sequences(tiny_tokenizer, INSTRUCTIONS, answers))
    for row, want in zip(result.outputs, expected):
        assert want is not None and "kl" in row
        assert abs(row["nll"] - want[0]) < 1e-5 and abs(row["nll_original"] - want[1]) < 1e-5 and abs(row["kl"] - want[2]) < 1e-5
    (stored,) = ctx.shared_dir.glob("original-hidden-*.npy")
    scored = sum(row["tokens"] for row in result.outputs)
    assert stored.stat().st_size == pytest.approx(scored * original.config.hidden_size * 4, abs=256)  # float32 + npy header

    passes = []
    real = retention.scored_hidden
    monkeypatch.setattr(retention, "scored_hidden", lambda model, *args: passes.append(model) or real(model, *args))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, again = run(ctx)
    assert not [w for w in seen if "not writable" in str(w.message)]  # the read-only memory map is copied, not wrapped
    assert passes and all(model is adapted for model in passes)  # the original's side came from disk
    assert [r["kl"] for r in again.outputs] == [r["kl"] for r in result.outputs]


def test_teacher_forced_states_match_one_sequence_at_a_time(tiny_model, tiny_tokenizer):
    """``Prefill.hidden`` (longest first, the shared start once, passes of similar length, at
    most ``most`` sequences each) gives each sequence's own unpadded states at its scored
    positions, also where sequences share their whole context and the first answer tokens (the
    shared start then ends before the first position kept)."""
    from harness.model.prefill import Prefill

    _vary(tiny_model)
    context = [tiny_tokenizer.bos_token_id or 1] + list(range(5, 25))  # 21 shared tokens: a shared start
    sequences = [(context + [30, 31, 32], 3), (context + [30, 31, 40, 41], 4), (context + [50], 1),
                 (context[:12] + [60] * 30, 25), (context + list(range(70, 80)), 10)]
    prefill = Prefill(tiny_model, tiny_tokenizer)
    passes = []
    decoder = tiny_model.get_decoder()
    forward = decoder.forward
    decoder.forward = lambda *a, **k: passes.append(tuple(k["input_ids"].shape)) or forward(*a, **k)
    try:
        with torch.no_grad():
            states = prefill.hidden(sequences, most=2)
    finally:
        del decoder.forward
    assert passes[0] == (1, 12)  # the start all five share, once
    assert max(rows for rows, _ in passes[1:]) <= 2 and sum(rows for rows, _ in passes[1:]) == len(sequences)
    with torch.no_grad():
        for (ids, scored), got in zip(sequences, states):
            alone = decoder(input_ids=torch.tensor([ids])).last_hidden_state[0, len(ids) - scored - 1 : len(ids) - 1]
            assert got.shape == alone.shape and torch.allclose(got, alone, atol=1e-5)


def _vary(model):
    torch.manual_seed(4)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)


def test_the_original_s_own_evaluation_reads_its_stored_states(tiny_model, tiny_tokenizer, data_root, tmp_path, monkeypatch):
    """Evaluating the original computes its states once (for the store) and reads them back:
    every divergence is exactly 0 with no second pass."""
    import suites.retention as retention

    passes = []
    real = retention.scored_hidden
    monkeypatch.setattr(retention, "scored_hidden", lambda model, *args: passes.append(model) or real(model, *args))
    ctx = make_context(tiny_model, tiny_model, tiny_tokenizer, data_root, tmp_path)
    ctx.shared_dir = tmp_path / "shared"
    metrics, _ = run(ctx)
    assert len(passes) == 1
    assert metrics["kl"].value == metrics["kl_stop"].value == metrics["kl_content"].value == 0.0
    assert metrics["nll"].value == metrics["nll_original"].value > 0
