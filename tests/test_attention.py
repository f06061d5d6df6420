"""Single-query CPU attention: the same numbers as transformers' SDPA path."""

from __future__ import annotations

import copy

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from harness.model.attention import NAME, decode_attention, use_decode_attention
from harness.plugins.requests import Decoding, Request
from harness.model.generation import GenerationCache, Generator


class _Grouped(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def test_matches_sdpa_with_grouped_heads_and_padding():
    torch.manual_seed(0)
    batch, heads, kv_heads, width, dim = 5, 9, 3, 37, 16
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(batch, kv_heads, width, dim), torch.randn(batch, kv_heads, width, dim)
    mask = torch.ones(batch, 1, 1, width, dtype=torch.bool)
    for row, pad in enumerate([0, 3, 10, 36, 1]):  # left padding of different widths
        mask[row, :, :, :pad] = False
    ours, _ = decode_attention(_Grouped(), query, key, value, mask, scaling=dim ** -0.5)
    ref, _ = sdpa_attention_forward(_Grouped(), query, key, value, mask, scaling=dim ** -0.5)
    assert ours.shape == ref.shape == (batch, 1, heads, dim)
    assert torch.allclose(ours, ref, atol=1e-5)
    # more than one query (a prompt) goes to SDPA unchanged
    prompt = torch.randn(batch, heads, 4, dim)
    causal = torch.ones(batch, 1, 4, width, dtype=torch.bool)
    assert torch.equal(decode_attention(_Grouped(), prompt, key, value, causal)[0],
                       sdpa_attention_forward(_Grouped(), prompt, key, value, causal)[0])


def test_generator_switches_a_cpu_model_and_greedy_outputs_match_hf_generate(tiny_model, tiny_tokenizer, tmp_path):
    reference = copy.deepcopy(tiny_model)
    generator = Generator(tiny_model, tiny_tokenizer, "tiny", cache=GenerationCache(tmp_path / "c.sqlite"))
    assert tiny_model.config._attn_implementation == NAME and reference.config._attn_implementation == "sdpa"
    prompts = [f"Say something about the number {i}." for i in range(6)]
    outputs = generator.generate([Request([{"role": "user", "content": p}]) for p in prompts], Decoding(max_new_tokens=12))
    for prompt, output in zip(prompts, outputs):
        text = generator.prompt_text(Request([{"role": "user", "content": prompt}]))
        ids = tiny_tokenizer(text, return_tensors="pt", add_special_tokens=False, return_token_type_ids=False)
        with torch.inference_mode():
            out = reference.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=generator.stop_ids,
                                     pad_token_id=tiny_tokenizer.pad_token_id)
        expected = out[0, ids["input_ids"].shape[1]:].tolist()
        expected = [t for t in expected if t not in generator.stop_ids]
        assert tiny_tokenizer.decode(expected, skip_special_tokens=True) == output.text
    use_decode_attention(None)  # no model (e.g. a remote backend): nothing to switch
