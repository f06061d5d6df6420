"""Shared fixtures: a tiny random chat model built from a config, the real data dir,
the embedded model, and a guard that fails any network connection."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall shared cores
# Converted embedded models are reused across tests and test runs.
os.environ.setdefault("RADIS_BENCH_MODELS", str(Path.home() / ".cache" / "radis-bench" / "models"))

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own generation cache and fingerprint memo."""
    monkeypatch.setenv("RADIS_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any connection outside loopback fails the test."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            return real_connect(self, address)
        raise RuntimeError(f"test tried to reach the network: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer trained in memory, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "Translate this from German to English: German: Das Haus ist groß. English: The house is big.",
        "Hello, how are you? I am fine, thank you. The weather is nice today in Berlin.",
        "Ich habe einen Hund und eine Katze. I have a dog and a cat. Guten Morgen!",
    ] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    return fast


def build_tiny_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A tiny random chat model saved as an ordinary checkpoint folder (for `--model PATH`)."""
    path = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real public benchmark data (``RADIS_BENCH_DATA``, default ../shared/data)."""
    from harness.paths import default_data_dir

    path = default_data_dir()
    if not (path / "alma").is_dir():
        if os.environ.get("RADIS_BENCH_REQUIRE_DATA"):
            pytest.fail(f"benchmark data not found at {path} (RADIS_BENCH_REQUIRE_DATA is set)")
        pytest.skip(f"benchmark data not found at {path}: set RADIS_BENCH_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct: (spec, model, tokenizer), converted once."""
    from harness.model.loading import load_model, resolve_model

    spec = resolve_model("smollm2-135m")
    model, tokenizer = load_model(spec)
    return spec, model, tokenizer


def configured(suite_cls, ctx, **options):
    """A suite configured as a run configures it: the run's options for it (``ctx.config.suite_options``),
    these ``options``, and the run's defaults for what is left unset."""
    settings = {**ctx.config.suite_options.get(suite_cls.name, {}), **options}
    return suite_cls.from_settings(settings, {"max_new_tokens": ctx.config.max_new_tokens})
