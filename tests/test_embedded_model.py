"""The embedded SmolLM2-135M-Instruct works offline after conversion from its GGUF file."""

import pytest

from harness.plugins.requests import Decoding, Request
from harness.model.generation import GenerationCache, Generator
from harness.model.prompts import user_turn

pytestmark = pytest.mark.slow


def test_tokenizer_special_tokens_are_fixed(smollm2):
    _, model, tok = smollm2
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    assert model.config.eos_token_id == 2 and model.generation_config.eos_token_id == 2


def test_chat_reply_is_short_complete_and_deterministic(smollm2, tmp_path):
    spec, model, tok = smollm2
    question = [Request(user_turn("What is the capital of France?"))]
    first = Generator(model, tok, spec.fingerprint, GenerationCache(tmp_path / "a.sqlite")).generate(question, Decoding(max_new_tokens=64))[0]
    second = Generator(model, tok, spec.fingerprint, GenerationCache(tmp_path / "b.sqlite")).generate(question, Decoding(max_new_tokens=64))[0]
    assert first.text.strip()
    assert "Paris" in first.text
    assert first.finished and first.new_tokens < 64  # stopped at <|im_end|>, not at the limit
    assert first.text == second.text and not second.cached


def test_fingerprint_is_stable(smollm2):
    from harness.model.loading import resolve_model

    spec, _, _ = smollm2
    assert resolve_model("smollm2-135m").fingerprint == spec.fingerprint


def test_the_fast_decode_step_gives_stock_generate_s_tokens_on_the_real_weights(smollm2, tmp_path):
    """``harness.model.fast_llama`` is kept for its measured speed (benchmarks/README.md): on the
    real SmolLM2 weights the Generator (fast decode, shared prefix, batched prefill) gives the
    tokens of transformers' own greedy ``generate``, one prompt at a time."""
    import torch

    from harness.model.fast_llama import FastLlama
    from harness.model.prompts import request_ids

    spec, model, tok = smollm2
    assert FastLlama.of(model) is not None  # the real model takes the fast path
    questions = ["What is the capital of France?", "Translate to German: The house is big.", "Name three colours.",
                 "Write one sentence about the sea."]
    outputs = Generator(model, tok, spec.fingerprint, GenerationCache(tmp_path / "g.sqlite"), batch_size=4).generate(
        [Request(user_turn(q)) for q in questions], Decoding(max_new_tokens=24))
    for question, output in zip(questions, outputs):
        ids = torch.tensor([request_ids(tok, user_turn(question))])
        with torch.inference_mode():
            stock = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        if stock and stock[-1] == tok.eos_token_id:
            stock = stock[:-1]
        assert output.token_ids == stock, question
