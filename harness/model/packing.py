"""Padding-free training passes on a CPU (issue 36): a step's sequences end to end in one row.

A training step on a CPU spends most of its time in the matrix products of the projections,
and those run faster the more rows they get at once (at SmolLM2-135M's widths a product of
150 rows runs at about half the rate of one of 1,000). The trainer used to cut a step into
micro-batches of similar length, padded to their longest example (``length_groups``); here
the same micro-batches are packed end to end into one sequence of the step's real tokens:
every projection, norm and activation runs once over all of them, no padding is computed,
and attention runs sequence by sequence (``packed_attention``: causal, on that sequence's own
keys; RoPE positions restart at 0 for each). The logits are computed at exactly the positions
the padded pass computed them (each micro-batch's positions from its first scored one;
``first_scored``), so the FLOPs counted (``harness.model.compute``) and planned
(``budget.equalise: compute``) are unchanged, and the loss is the same token-weighted NLL:
equal to the padded passes' up to floating-point rounding (tests/test_training.py;
``benchmarks/training_compare.py``). The LoRA layers run as ``harness.model.fast_lora`` runs
them (q, k and v as one product); a frozen head and the NLL run a slice of positions at a
time (``_HeadNLL``), keeping no [positions, vocab] tensor.

Rounding, not bits: the step's weight gradients are now sums over all its tokens in one
product instead of per micro-batch, and attention runs unpadded, so the trained weights differ
from the padded passes' in the last bits (per-step losses on the embedded model within 5e-7
relative), which moves the golden tiny run's retention scores (``kl_stop`` by 3e-3 relative):
this path changes results at the golden test's tolerance and came with trainer version 2
(``harness.versions``).

Only where that holds it is used (``packable``): one process on a CPU, a Llama whose attention
goes through transformers' attention interface (SDPA), no dropout anywhere (its random masks
would be drawn over other shapes), no gradient checkpointing, the plain NLL (no method's extra
or per-token loss, which read the padded [batch, length] logits).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from harness.model.compute import PACKED, metering
from harness.model.fast_lora import fast_lora

NAME = "radis_cpu_packed"  # the attention implementation of a packed pass
MAX_TOKENS = 4096  # tokens per packed pass at most (whole micro-batches; bounds activation memory)
_registered = False


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                     **kwargs):
    """Causal attention of each packed sequence over its own keys: ``query`` [1, heads, tokens,
    dim], ``key``/``value`` [1, kv_heads, tokens, dim]; returns [1, tokens, heads, dim]."""
    import torch

    lengths = kwargs[PACKED]
    # Split, not sliced: a split's backward pass is one concatenation of the pieces' gradients,
    # where each slice's would fill a zero tensor of the whole pack's size (slice backward was
    # 9.5% of a profiled step). Key and value heads are read by their query heads in the kernel
    # (enable_gqa), not copied.
    outs = [torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                             is_causal=q.shape[2] > 1, enable_gqa=True).transpose(1, 2)
            for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))]
    return torch.cat(outs, dim=1), None


def _no_mask(*args, **kwargs):
    return None  # each sequence attends causally to its own keys (``packed_attention``)


def packable(model) -> bool:
    """Whether ``model`` trains the same packed: a Llama on a CPU with SDPA attention and no dropout."""
    import torch

    from harness.model.examples import accepts_logits_to_keep

    config = getattr(model, "config", None)
    params = list(model.parameters())
    return (getattr(config, "model_type", None) == "llama" and accepts_logits_to_keep(model)
            and getattr(config, "_attn_implementation", None) in ("sdpa", "radis_cpu_decode")
            and not getattr(config, "attention_dropout", 0.0) and bool(params)
            and all(p.device.type == "cpu" for p in params)
            and not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
            # its recomputation in the backward pass would run after ``packed_passes``
            and not any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()))


@contextlib.contextmanager
def packed_passes(model, fused: dict | None = None):
    """The model's forward passes inside take packed input (``Pack.inputs``); the attention
    implementation is restored afterwards."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(NAME, packed_attention)
        AttentionMaskInterface.register(NAME, _no_mask)
        _registered = True
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        with fast_lora(model, fused):
            yield
    finally:
        config._attn_implementation = before


@dataclass
class Pack:
    inputs: dict  # the model's keyword arguments
    targets: object  # [kept positions]: the token each kept position predicts (any where none)
    weights: object  # [kept positions]: its loss weight (0 where none)
    tokens: int

    def weighted_nll(self, logits) -> tuple:
        """(Σ w·nll, Σ w) over the kept positions (``logits`` [1, kept, vocab])."""
        import torch

        nll = torch.nn.functional.cross_entropy(logits[0].float(), self.targets, reduction="none")
        return (self.weights * nll).sum(), self.weights.sum()


def packs(groups: list, device, max_tokens: int = MAX_TOKENS):
    """Packed passes over a step's micro-batches (``groups`` of ``TokenisedExample``), whole
    micro-batches of at most ``max_tokens`` tokens each (a longer one alone)."""
    current, size = [], 0
    for group in groups:
        n = sum(len(item.input_ids) for item in group)
        if current and size + n > max_tokens:
            yield _pack(current, device)
            current, size = [], 0
        current.append(group)
        size += n
    if current:
        yield _pack(current, device)


def _pack(groups: list, device) -> Pack:
    import torch

    from harness.model.examples import first_scored

    ids, positions, lengths, keep, targets, weights = [], [], [], [], [], []
    for group in groups:
        width = max(len(item.input_ids) for item in group)
        scored = torch.zeros((len(group), width))
        for row, item in enumerate(group):
            scored[row, : len(item.weights)] = torch.tensor(item.weights)
        start = first_scored(scored)  # the padded pass's first logit position for this micro-batch
        for item in group:
            n, offset = len(item.input_ids), len(ids)
            ids += item.input_ids
            positions += range(n)
            lengths.append(n)
            keep += range(offset + start, offset + n)
            targets += item.input_ids[start + 1 :] + [0] * (n > start)  # the last position predicts nothing
            weights += item.weights[start + 1 :] + [0.0] * (n > start)
    inputs = {"input_ids": torch.tensor([ids], device=device), "position_ids": torch.tensor([positions], device=device),
              "logits_to_keep": torch.tensor(keep, dtype=torch.long, device=device), PACKED: lengths}
    return Pack(inputs, torch.tensor(targets, device=device), torch.tensor(weights, dtype=torch.float32, device=device),
                len(ids))


CHUNK = 128  # positions per slice of the vocabulary head: [128, 49,152] fp32 is 25 MB, under glibc's 32-MB mmap ceiling


class _HeadNLL(torch.autograd.Function):
    """Σ w·nll of a frozen, bias-free vocabulary head over ``hidden`` [positions, width], computed
    ``CHUNK`` positions at a time: each slice's logits, log-softmax and their gradient, w·(softmax
    − onehot)·head, live only while the slice is computed, so no [positions, vocab] tensor is
    kept for the backward pass (nor allocated fresh, page by page, in it); only the gradient
    of ``hidden`` is."""

    @staticmethod
    def forward(ctx, hidden, head, targets, weights):
        total = hidden.new_zeros((), dtype=torch.float32)
        grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], CHUNK):
            end = min(start + CHUNK, hidden.shape[0])
            logits = (hidden[start:end] @ head.t()).float()
            probs = torch.log_softmax(logits, dim=-1)
            rows, w = targets[start:end, None], weights[start:end, None]
            total += (w[:, 0] * -probs.gather(1, rows)[:, 0]).sum()
            probs = probs.exp_().scatter_add_(1, rows, torch.full_like(w, -1.0)).mul_(w)  # d(w·nll)/d logits
            grad[start:end] = probs.to(head.dtype) @ head
        ctx.save_for_backward(grad.to(hidden.dtype))
        return total

    @staticmethod
    def backward(ctx, upstream):
        (grad,) = ctx.saved_tensors
        return grad * upstream, None, None, None


def packed_step(model, groups: list, device, step_weight: float, backward, meter, mixed: bool = False,
                fused: dict | None = None) -> tuple[float, int]:
    """Forward and ``backward`` of a step's micro-batches packed (``packs``), each pass's loss its
    weighted NLL over ``step_weight``, FLOPs counted into ``meter``; (summed loss, tokens).
    A frozen head without bias runs as ``_HeadNLL`` (its FLOPs counted here, as the head's hook
    would count them: the kept positions' logits and their input gradients), unless the training
    is ``mixed`` precision (accelerate's autocast wraps the model's own forward only)."""
    from harness.model.compute import shape_of

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings()
    sliced_head = not mixed and head.bias is None and not head.weight.requires_grad and hasattr(lm, "model")
    loss_sum, tokens = 0.0, 0
    for pack in packs(groups, device):
        with metering(meter), packed_passes(model, fused):
            if sliced_head:
                inputs = {k: v for k, v in pack.inputs.items() if k != "logits_to_keep"}
                hidden = lm.model(**inputs).last_hidden_state[0, pack.inputs["logits_to_keep"]]
                meter.add("trained", 2 * hidden.shape[0] * shape_of(lm).logits)
                loss = _HeadNLL.apply(hidden, head.weight, pack.targets, pack.weights) / step_weight
            else:
                loss = pack.weighted_nll(model(**pack.inputs).logits)[0] / step_weight
        backward(loss)
        loss_sum, tokens = loss_sum + loss.item(), tokens + pack.tokens
    return loss_sum, tokens
