"""FLOPs counted from token counts and the model's shape (issue 34).

Every forward pass a run makes through a loaded model is counted by a hook on its decoder
(training steps, the methods' extra passes such as KL's original beside each step or EWC's
Fisher, suites' scoring passes); generation is counted per answer from its prompt length,
its new tokens and whether it finished, cached or not, so a row's cost is the method's cost
and not what this machine happened to have cached. The formulas (README, "What a row
costs"), for a decoder of L layers, width d, h query heads and g key/value heads of size
e, MLP width f, vocabulary V:

- matmul per token: 2·L·(d·h·e + 2·d·g·e + h·e·d + 3·d·f) + 2·d·V (the last for the logits);
- attention per layer and query: 4·h·e·k, k the keys it is computed against (the whole
  block a sequence is processed in, as the kernels compute it, plus the cache);
- adapters per token: 2·r·(in + out) per LoRA module;
- backward: input gradients as much as the forward's matmuls, attention twice its forward,
  and the weight gradients of what is trained (adapters: their forward again; full
  fine-tuning: the matmuls again);
- a generated answer of n new tokens after a prompt of p: the prompt's forward (logits at its
  last position only) and one single-token step per fed-back token (n if it ended its turn,
  n − 1 if it reached the limit), each against the prompt and what came before.

Embeddings, norms, activations and softmax are not counted (under 1% at these shapes).
``tests/test_compute.py`` checks the counts against torch's FlopCounterMode.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

KINDS = ("trained", "forward", "generated")  # forward+backward passes, forward-only passes, generation
PACKED = "radis_packed_lengths"  # a forward's keyword: the lengths of sequences packed end to end (harness.model.packing)


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int

    @classmethod
    def of(cls, config) -> "Shape":
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        head_dim = get("head_dim") or hidden // heads
        return cls(layers=get("num_hidden_layers"), hidden=hidden, heads=heads, kv_heads=get("num_key_value_heads") or heads,
                   head_dim=head_dim, mlp=get("intermediate_size"), vocab=get("vocab_size"))

    @property
    def layer_matmul(self) -> int:
        """FLOPs of one token through one layer's projections."""
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return 2 * (d * q + 2 * d * kv + q * d + 3 * d * self.mlp)

    @property
    def logits(self) -> int:
        return 2 * self.hidden * self.vocab

    def attention(self, queries: int, keys: int) -> int:
        """FLOPs of ``queries`` queries against ``keys`` keys in every layer (scores and mixing)."""
        return 4 * self.layers * self.heads * self.head_dim * queries * keys

    def forward(self, tokens: int, keys: int, adapter: int = 0) -> dict:
        """Parts of the layers' forward over ``tokens`` new tokens of one sequence against
        ``keys`` keys (the logits are counted apart, where they are computed)."""
        return {"matmul": tokens * self.layers * self.layer_matmul, "attention": self.attention(tokens, keys),
                "adapter": tokens * adapter}

    def generation(self, prompt: int, new_tokens: int, finished: bool, adapter: int = 0) -> int:
        """FLOPs of generating one answer (see the module's docstring)."""
        total = _sum(self.forward(prompt, prompt, adapter=adapter)) + self.logits
        steps = new_tokens if finished else max(new_tokens - 1, 0)
        # step j (1..steps) feeds one token against prompt + j keys
        total += steps * (self.layers * self.layer_matmul + self.logits + adapter)
        total += self.attention(1, 1) * (steps * prompt + steps * (steps + 1) // 2)
        return total


def _sum(parts: dict) -> int:
    return sum(parts.values())


def backward(parts: dict, full: bool) -> int:
    """FLOPs of the backward of a forward with these parts."""
    if full:
        return 2 * parts["matmul"] + 2 * parts["attention"] + 2 * parts["adapter"]
    return parts["matmul"] + 2 * parts["attention"] + 2 * parts["adapter"]


def pass_flops(shape: Shape, lengths: list[int], logits: int, adapter: int = 0, trained: bool = False, full: bool = False,
               head_trains: bool = False) -> int:
    """FLOPs of one pass over sequences of these lengths (no padding) with ``logits`` positions'
    logits, as the hooks below count it: with its backward when ``trained``."""
    total = 0
    for n in lengths:
        parts = shape.forward(n, n, adapter=adapter)
        total += _sum(parts) + (backward(parts, full) if trained else 0)
    return total + logits * shape.logits * ((3 if head_trains else 2) if trained else 1)


# --- the meter: what the current unit has spent -----------------------------------------------

class Meter:
    """FLOPs by kind (``KINDS``) of one unit; ``start`` carries what an interrupted unit had
    counted before it resumed."""

    def __init__(self, start: dict | None = None):
        self.flops = {k: int((start or {}).get(k, 0)) for k in KINDS}

    def add(self, kind: str, flops: int) -> None:
        self.flops[kind] += int(flops)

    def total(self) -> int:
        return sum(self.flops.values())

    def record(self) -> dict:
        return {**self.flops, "total": self.total()}


_METER: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("radis_bench_meter", default=None)
_PAUSED: contextvars.ContextVar[bool] = contextvars.ContextVar("radis_bench_meter_paused", default=False)


@contextlib.contextmanager
def metering(meter: Meter):
    """Count every forward pass and generation inside the block into ``meter``."""
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


@contextlib.contextmanager
def uncounted():
    """The passes inside are counted another way (a generator counts its answers itself)."""
    token = _PAUSED.set(True)
    try:
        yield
    finally:
        _PAUSED.reset(token)


def counting() -> bool:
    """Whether a meter is counting here."""
    return _METER.get() is not None


def count_generation(shape: Shape | None, prompts: list[int], outputs, adapter: int = 0) -> None:
    """Add the answers ``outputs`` (``new_tokens``, ``finished``) to prompts of these lengths."""
    meter = _METER.get()
    if meter is None or shape is None:
        return
    meter.add("generated", sum(shape.generation(p, o.new_tokens, o.finished, adapter) for p, o in zip(prompts, outputs)))


# --- the hook on a model's decoder ----------------------------------------------------------

def _decoder(model):
    """The module that runs the layers (LlamaModel and kin), through peft's and the LM's wrappers."""
    for module in model.modules():
        if hasattr(module, "layers") and hasattr(module, "embed_tokens"):
            return module
    return None


def adapter_flops(model) -> int:
    """Forward FLOPs per token of the LoRA modules that are active in ``model``."""
    total = 0
    for module in model.modules():
        a, b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not a or not b or getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
            continue
        for name in getattr(module, "active_adapters", list(a.keys())):
            if name in a and name in b:
                r, n_in = a[name].weight.shape
                total += 2 * r * (n_in + b[name].weight.shape[0])
    return total


def shape_of(model) -> Shape | None:
    config = getattr(model, "config", None)
    try:
        return Shape.of(config) if config is not None else None
    except (TypeError, AttributeError):
        return None


def install(model) -> None:
    """Count ``model``'s forward passes into the current meter (idempotent; free when no meter
    is set): a hook on its decoder counts the layers, one on its output layer the logits of the
    positions that are not padding."""
    import torch

    decoder, head = _decoder(model), model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    shape = shape_of(model)
    if decoder is None or head is None or shape is None or getattr(decoder, "_radis_bench_counted", False):
        return
    decoder._radis_bench_counted = True
    last = {"mask": None}

    def layers(module, args, kwargs):
        meter = _METER.get()
        if meter is None or _PAUSED.get():
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        batch, queries = (ids.shape if ids is not None else embeds.shape[:2])
        mask = kwargs.get("attention_mask")
        if kwargs.get(PACKED) is not None:  # sequences packed end to end, each attending to itself
            new = keys = list(kwargs[PACKED])
            last["mask"] = None
        elif mask is not None and mask.dim() == 2:
            new, keys = mask[:, -queries:].sum(1).tolist(), mask.sum(1).tolist()
            last["mask"] = mask[:, -queries:]
        else:
            past = kwargs.get("past_key_values")
            seen = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
            new, keys = [queries] * batch, [queries + seen] * batch
            last["mask"] = None
        adapter = adapter_flops(module)
        trained = torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())
        full = trained and any(p.requires_grad for n, p in module.named_parameters() if "lora_" not in n)
        for n, k in zip(new, keys):
            parts = shape.forward(int(n), int(k), adapter=adapter)
            meter.add("trained" if trained else "forward", _sum(parts) + (backward(parts, full) if trained else 0))

    def logits(module, args):
        meter = _METER.get()
        if meter is None or _PAUSED.get():
            return
        hidden = args[0]
        mask = last["mask"]
        if hidden.dim() == 3 and mask is not None and mask.shape[0] == hidden.shape[0] and mask.shape[1] >= hidden.shape[1]:
            positions = int(mask[:, -hidden.shape[1]:].sum())  # the decoder's pass: padding left out
        else:  # e.g. retention applies the output layer to stored hidden states, one row per position
            positions = hidden.numel() // hidden.shape[-1]
        flops = positions * shape.logits
        if torch.is_grad_enabled() and hidden.requires_grad:  # input gradients, and the weights' when they train
            meter.add("trained", flops * (3 if module.weight.requires_grad else 2))
        else:
            meter.add("forward", flops)

    layers.counts_flops = logits.counts_flops = True  # they change nothing: fast paths may go around them
    decoder.register_forward_pre_hook(layers, with_kwargs=True)
    head.register_forward_pre_hook(logits)
