"""The vLLM generation backend: backend selection, and the translation of requests to
vLLM inputs and back, against a fake ``vllm`` module (CPU). Tests that run real vLLM
need CUDA and the vllm package, and are skipped elsewhere."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import pytest

from harness.errors import UserError
from harness.plugins.requests import Decoding, Request
from harness.model.generation import GenerationCache, Generator
from harness.model.prompts import user_turn


# --- a fake vllm ------------------------------------------------------------------------
@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 16
    stop_token_ids: list = field(default_factory=list)


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeLLM:
    """Records what it is given; answers each prompt with the scripted token ids."""

    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls = []
        self.answer = None  # fn(prompt ids, params) -> (token ids, finish_reason)
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, sampling_params, lora_request))
        outs = []
        for prompt, params in zip(prompts, sampling_params):
            ids, reason = self.answer(prompt["prompt_token_ids"], params)
            completion = types.SimpleNamespace(token_ids=tuple(ids), finish_reason=reason, text="(vllm text, unused)")
            outs.append(types.SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], outputs=[completion]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, FakeSamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = FakeLoRARequest
    vllm.lora, lora.request = lora, request
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    FakeLLM.instances = []
    return vllm


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError


def set_cuda(monkeypatch, available: bool):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)


# --- selection ----------------------------------------------------------------------------
@pytest.mark.parametrize("cuda,have_vllm,expected", [
    (True, True, "vllm"), (True, False, "transformers"), (False, True, "transformers"), (False, False, "transformers"),
])
def test_auto_picks_vllm_only_with_cuda_and_the_package(monkeypatch, request, cuda, have_vllm, expected):
    from harness.model.vllm_backend import select_backend

    request.getfixturevalue("fake_vllm" if have_vllm else "no_vllm")
    set_cuda(monkeypatch, cuda)
    assert select_backend("auto") == expected
    assert select_backend("transformers") == "transformers"


def test_explicit_vllm_without_the_package_or_cuda_is_one_clear_error(monkeypatch, request):
    from harness.model.vllm_backend import select_backend

    request.getfixturevalue("no_vllm")
    set_cuda(monkeypatch, True)
    with pytest.raises(UserError, match=r"pip install 'radis-bench\[gpu\]'"):
        select_backend("vllm")
    request.getfixturevalue("fake_vllm")
    set_cuda(monkeypatch, False)
    with pytest.raises(UserError, match="CUDA"):
        select_backend("vllm")
    set_cuda(monkeypatch, True)
    assert select_backend("vllm") == "vllm"
    with pytest.raises(UserError, match="unknown"):
        select_backend("tensorrt")


def test_cli_vllm_without_the_package_exits_2_with_one_line(no_vllm, tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    result = CliRunner().invoke(app, ["run", "--model", str(tiny_checkpoint), "--methods", "vanilla", "--suites", "translation",
                                      "--out", str(tmp_path / "run"), "--set", "generation_backend=vllm"])
    assert result.exit_code == 2
    assert "generation_backend=vllm needs the vllm package" in result.output and "radis-bench[gpu]" in result.output
    assert not (tmp_path / "run" / "results").exists()  # failed before any work
    result = CliRunner().invoke(app, ["run", "--model", str(tiny_checkpoint), "--methods", "vanilla", "--suites", "translation",
                                      "--out", str(tmp_path / "run"), "--backend", "vllm"])
    assert result.exit_code == 2 and "radis-bench[gpu]" in result.output


# --- request translation ------------------------------------------------------------------
def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_requests_become_token_prompts_and_sampling_params(fake_vllm, tiny_tokenizer, tmp_path):
    from harness.model.vllm_backend import VLLMGenerator

    llm = FakeLLM(model="m")
    stop = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = {"Hello": (_ids(tiny_tokenizer, "The house") + [stop], "stop"),
               "Guten Morgen": (_ids(tiny_tokenizer, "I have a dog and a cat")[:4], "length")}
    by_prompt = {}
    llm.answer = lambda ids, params: by_prompt[tuple(ids)]
    gen = VLLMGenerator(llm, tiny_tokenizer, "tiny", GenerationCache(tmp_path / "g.sqlite"),
                        lora_path=tmp_path / "adapter", lora_id=3)
    reqs = [Request(user_turn("Hello")), Request(user_turn("Guten Morgen"), assistant_prefix="Good"), Request(user_turn("Hello"))]
    texts = [gen.prompt_text(r) for r in reqs]
    for r, t in zip(reqs[:2], texts):
        by_prompt[tuple(_ids(tiny_tokenizer, t))] = answers[r.messages[0]["content"]]

    out = gen.generate(reqs, Decoding(max_new_tokens=4))
    (prompts, params, lora), = llm.calls
    # the same chat rendering and tokenisation as the transformers backend; a repeated prompt is sent once
    assert [p["prompt_token_ids"] for p in prompts] == [_ids(tiny_tokenizer, t) for t in texts[:2]]
    assert texts[1].endswith("<|im_start|>assistant\nGood")
    assert all(p.temperature == 0.0 and p.max_tokens == 4 and p.n == 1 and p.seed is None for p in params)
    assert all(p.stop_token_ids == gen.stop_ids and stop in p.stop_token_ids for p in params)
    assert lora == FakeLoRARequest("adapter-3", 3, str(tmp_path / "adapter"))
    # outputs in request order; the stop token is not counted, as in the transformers backend
    assert [o.text for o in out] == ["The house", tiny_tokenizer.decode(answers["Guten Morgen"][0]), "The house"]
    assert [(o.new_tokens, o.finished) for o in out] == [(len(answers["Hello"][0]) - 1, True), (4, False), (len(answers["Hello"][0]) - 1, True)]
    assert gen.stats.generated == 2 and gen.stats.cache_hits == 1

    sampled = gen.generate(reqs[:1], Decoding(max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9, seed=5))
    p = llm.calls[-1][1][0]
    key = gen.key(texts[0], Decoding(max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9, seed=5))
    assert (p.temperature, p.top_p, p.seed, p.max_tokens) == (0.7, 0.9, int(key[:8], 16) ^ 5, 4)
    assert sampled[0].text == "The house"


def test_vllm_outputs_are_cached_under_the_transformers_keys(fake_vllm, tiny_model, tiny_tokenizer, tmp_path):
    """What vLLM generated, the transformers backend finds in the same cache (and vice versa)."""
    from harness.model.vllm_backend import VLLMGenerator

    cache = GenerationCache(tmp_path / "g.sqlite")
    llm = FakeLLM(model="m")
    llm.answer = lambda ids, params: (_ids(tiny_tokenizer, "Guten Morgen!") + params.stop_token_ids[:1], "stop")
    reqs = [Request(user_turn(q)) for q in ["Hello", "How are you today?", "Das Haus"]]
    decoding = Decoding(max_new_tokens=8)
    from_vllm = VLLMGenerator(llm, tiny_tokenizer, "tiny", cache).generate(reqs, decoding)

    hf = Generator(tiny_model, tiny_tokenizer, "tiny", cache)
    again = hf.generate(reqs, decoding)
    assert hf.stats.generated == 0 and hf.stats.cache_hits == 3
    assert [o.text for o in again] == [o.text for o in from_vllm] == ["Guten Morgen!"] * 3
    assert all(o.cached for o in again)

    fresh = hf.generate([Request(user_turn("Ich habe"))], decoding)  # transformers writes ...
    vllm_gen = VLLMGenerator(llm, tiny_tokenizer, "tiny", cache)
    assert vllm_gen.generate([Request(user_turn("Ich habe"))], decoding)[0].text == fresh[0].text  # ... vLLM reads
    assert vllm_gen.stats.generated == 0 and len(llm.calls) == 1


def test_run_with_vllm_serves_trained_lora_models_as_adapters(fake_vllm, monkeypatch, tiny_checkpoint, tmp_path):
    """A whole run on the fake engine: one engine with LoRA enabled, the trained model as
    base + its saved adapter, the backend recorded in the manifest."""
    from harness.config.settings import RunConfig
    from harness.config.parse import apply_settings
    from harness.run.execute import Execution
    from harness.run.plan import Plan

    set_cuda(monkeypatch, True)
    cfg = RunConfig()
    # the GPU is pretended for backend selection only: the transformers side stays on the CPU
    apply_settings(cfg, {"model": str(tiny_checkpoint), "methods": ["vanilla"], "suites": ["translation"], "device": "cpu",
                         "train_size": 4, "eval_size": 2, "out": str(tmp_path / "run"), "max_new_tokens": 6,
                         "budget": {"steps": 1, "batch_size": 2, "save_every": 1}, "lora": {"r": 4},
                         "suite_options": {"translation": {"max_new_tokens": 6}}}, "test")

    def answer(ids, params):
        return [ids[-1], ids[-2]] + params.stop_token_ids[:1], "stop"

    original_init = FakeLLM.__init__

    def init(self, **kwargs):
        original_init(self, **kwargs)
        self.answer = answer

    monkeypatch.setattr(FakeLLM, "__init__", init)
    run_dir = Execution(Plan(cfg)).run()

    engine, = FakeLLM.instances  # one engine for the original and the trained model
    assert engine.kwargs["model"] == str(tiny_checkpoint.resolve())
    assert engine.kwargs["enable_lora"] is True and engine.kwargs["max_lora_rank"] == 8  # r=4 rounded up to vLLM's smallest
    loras = [lora for _, _, lora in engine.calls]
    assert loras[0] is None  # the original model
    adapter = run_dir / "models" / "vanilla" / "seed0" / "eval_adapter"
    assert loras[-1] == FakeLoRARequest("adapter-1", 1, str(adapter))
    assert (adapter / "adapter_config.json").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["generation"]["backend"] == "vllm" and manifest["generation"]["backend_setting"] == "auto"


# --- real vLLM (CUDA machines with vllm installed) -----------------------------------------
def _real_vllm() -> bool:
    from harness.model.vllm_backend import cuda_available, vllm_importable

    return cuda_available() and vllm_importable()


needs_vllm = pytest.mark.skipif(not _real_vllm(), reason="needs a CUDA GPU and the vllm package (pip install 'radis-bench[gpu]')")
PROMPTS = ["Hello", "How are you today? I am fine.", "Das Haus", "Guten Morgen", "The weather is nice"]


def _sharpened_checkpoint(tiny_tokenizer, path):
    """The tiny model with larger random weights, so greedy answers vary and end at different lengths."""
    import torch

    from conftest import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return model


@needs_vllm
def test_real_vllm_greedy_matches_transformers(tiny_tokenizer, tmp_path):
    from harness.model.vllm_backend import VLLMGenerator, load_engine

    model = _sharpened_checkpoint(tiny_tokenizer, tmp_path / "ckpt")
    reqs = [Request(user_turn(q)) for q in PROMPTS]
    decoding = Decoding(max_new_tokens=12)
    hf = Generator(model, tiny_tokenizer, "x", GenerationCache(tmp_path / "a.sqlite")).generate(reqs, decoding)
    llm = load_engine(tmp_path / "ckpt", dtype="float32", gpu_memory_utilization=0.3, enforce_eager=True)
    out = VLLMGenerator(llm, tiny_tokenizer, "x", GenerationCache(tmp_path / "b.sqlite")).generate(reqs, decoding)
    assert [(o.text, o.new_tokens, o.finished) for o in out] == [(o.text, o.new_tokens, o.finished) for o in hf]


@needs_vllm
def test_real_vllm_lora_adapter_matches_merged_transformers(tiny_tokenizer, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from harness.model.vllm_backend import VLLMGenerator, load_engine

    base = _sharpened_checkpoint(tiny_tokenizer, tmp_path / "ckpt")
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.3)
    peft.save_pretrained(tmp_path / "adapter")
    merged = peft.merge_and_unload().eval()
    reqs = [Request(user_turn(q)) for q in PROMPTS]
    decoding = Decoding(max_new_tokens=12)
    hf = Generator(merged, tiny_tokenizer, "x+lora", GenerationCache(tmp_path / "a.sqlite")).generate(reqs, decoding)
    llm = load_engine(tmp_path / "ckpt", lora_rank=8, dtype="float32", gpu_memory_utilization=0.3, enforce_eager=True)
    gen = VLLMGenerator(llm, tiny_tokenizer, "x+lora", GenerationCache(tmp_path / "b.sqlite"), lora_path=tmp_path / "adapter")
    out = gen.generate(reqs, decoding)
    assert [o.text for o in out] == [o.text for o in hf]
