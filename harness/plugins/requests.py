"""What a method or suite asks of a model, and what it gets back: a ``Request`` (chat turns
and an optional start of the answer) decoded under a ``Decoding``, answered by an ``Output``.
The generators (``harness.model.generation``, ``harness.model.vllm_backend``) take these, and
their cache keys are built from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; part of every cache key."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    top_k: int = 0  # 0: no top-k filter

    def key(self) -> dict:
        d = asdict(self)
        if not self.do_sample:
            d.update(temperature=None, top_p=None, seed=None)
        if not self.do_sample or not self.top_k:
            d.pop("top_k")  # keys of decodings without it stay what they were before it existed
        return d


@dataclass
class Request:
    """One generation: chat messages, and optionally text the assistant turn starts with."""

    messages: list[dict]
    assistant_prefix: str = ""


@dataclass
class Output:
    text: str
    new_tokens: int
    finished: bool  # stopped at end of turn rather than at max_new_tokens
    cached: bool = False
    token_ids: list[int] | None = None  # the generated tokens (end of turn excluded); None in older cache rows
