"""peft's LoRA linear layers with the adapter's scaling and sum folded into one product (issue 36).

peft computes a LoRA layer as ``result + lora_B(lora_A(x)) * scaling``: after the second small
product, a multiplication and an addition over the whole [tokens, out] result, and in the
backward pass the multiplication again: three passes over memory per layer and micro-batch,
210 layers in SmolLM2-135M. ``fast_lora`` runs the same layer as ``result.addmm_(low,
lora_Bᵀ, alpha=scaling)``: the product's sum lands in the result in place with the scaling
applied once, and the backward pass scales the small [tokens, r] and [r, out] gradients instead
of the large one. Where the scaling is a power of two (alpha/r = 2 by default) this is bit for
bit peft's result and gradients (tests/test_training.py); otherwise equal up to rounding. A
layer of the published shapes (976 tokens, 576 -> 1536) ran its forward and backward 1.04-1.16x
faster; a whole training step, where element-wise work of every kind is under a fifth of the
time, 1.02-1.03x (benchmarks/training_compare.py, on a busy 2-core machine).

Only plain LoRA qualifies (``_plain_lora``: LoRA or rsLoRA, one active adapter, no dropout, no
bias of its own, not merged, no DoRA); each call checks again that the adapter is on and no
autocast is active, else it runs peft's own forward.
"""

from __future__ import annotations

import contextlib
import functools


@contextlib.contextmanager
def fast_lora(model):
    """Inside the block, ``model``'s plain LoRA layers run ``_lora_forward`` (not under gradient
    checkpointing, whose recomputation in the backward pass runs after the block)."""
    modules = list(model.modules())
    checkpointed = any(getattr(m, "gradient_checkpointing", False) is True for m in modules)
    layers = [] if checkpointed else [m for m in modules if _plain_lora(m)]
    for module in layers:
        module.forward = functools.partial(_lora_forward, module)
    try:
        yield
    finally:
        for module in layers:
            del module.forward


def _plain_lora(module) -> bool:
    import torch

    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:  # pragma: no cover
        return False
    if type(module) is not Linear or "forward" in vars(module) or len(module.active_adapters) != 1:
        return False
    name = module.active_adapters[0]
    base = module.base_layer
    return (name in module.lora_A and name not in getattr(module, "lora_variant", {}) and type(base) is torch.nn.Linear
            and isinstance(module.lora_dropout[name], torch.nn.Identity) and module.lora_B[name].bias is None
            and not base._forward_hooks and not base._forward_pre_hooks
            and module.lora_A[name].weight.dtype == module.lora_B[name].weight.dtype == base.weight.dtype)


def _lora_forward(module, x, *args, **kwargs):
    """peft's forward of a plain LoRA layer (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    base = module.base_layer
    if (args or kwargs or module.disable_adapters or module.merged or torch.is_autocast_enabled(x.device.type)
            or x.dtype != base.weight.dtype):
        return type(module).forward(module, x, *args, **kwargs)
    name = module.active_adapters[0]
    result = F.linear(x, base.weight, base.bias)
    low = F.linear(x, module.lora_A[name].weight)
    # in place: the base product's output is saved by nothing for its backward pass
    result.view(-1, result.shape[-1]).addmm_(low.reshape(-1, low.shape[-1]), module.lora_B[name].weight.t(),
                                             alpha=module.scaling[name])
    return result
