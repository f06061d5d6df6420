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
