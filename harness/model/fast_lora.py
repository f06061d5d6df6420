"""peft's LoRA linear layers, faster and equal up to rounding (issue 36).

``_lora_forward``: peft computes a LoRA layer as ``result + lora_B(lora_A(x)) * scaling``:
after the second small product, a multiplication and an addition over the whole [tokens, out]
result, and in the backward pass the multiplication again: three passes over memory per layer
and micro-batch, 210 layers in SmolLM2-135M. Here the same layer runs as ``result.addmm_(low,
lora_Bᵀ, alpha=scaling)`` on the 2-D product: the sum lands in the result in place with the
scaling applied once, and the backward pass scales the small [tokens, r] and [r, out]
gradients instead of the large one. Where the scaling is a power of two (alpha/r = 2 by
default) the result is bit for bit peft's; the gradients are equal up to rounding, since the
input's gradient now sums the base and adapter pieces in another order (tests/test_training.py).
The change is made on the 2-D product itself: made on a view of it, autograd copies the whole
gradient back through the view (four [tokens, 1536] copies per MLP and step).

``_Group`` (with a ``fused`` dict from the caller): q, k and v read the same input, so they run
as one product of 576 -> 960 at SmolLM2-135M's widths, their adapters as one A product and one
block-diagonal B product; k's and v's 192 columns are the least efficient products of a step.
Equal to the separate products up to rounding (the input gradient sums over 960 columns in one
product), not bit for bit. Gate and up are not fused: at 1536 columns each they already run
near the machine's rate, and the concatenation of their [tokens, 3072] gradient in the
backward pass cost more than the larger product saved (measured, benchmarks/README.md).

Only plain LoRA qualifies (``_plain_lora``: LoRA or rsLoRA, one active adapter, no dropout, no
bias of its own, not merged, no DoRA); each call checks again that the adapter is on and no
autocast is active, else it runs peft's own forward.
"""

from __future__ import annotations

import contextlib
import functools


GROUPS = (("q_proj", "k_proj", "v_proj"),)  # projections that read the same input


@contextlib.contextmanager
def fast_lora(model, fused: dict | None = None):
    """Inside the block, ``model``'s plain LoRA layers run ``_lora_forward`` (not under gradient
    checkpointing, whose recomputation in the backward pass runs after the block). With
    ``fused`` (a dict the caller keeps for as long as the frozen weights stand: their
    concatenations), the projections of one input (q, k and v, ``GROUPS``) run as one product
    (``_Group``)."""
    modules = list(model.modules())
    checkpointed = any(getattr(m, "gradient_checkpointing", False) is True for m in modules)
    layers = [] if checkpointed else [m for m in modules if _plain_lora(m)]
    groups = [] if checkpointed or fused is None else _groups(modules, fused)
    for module in layers:
        module.forward = functools.partial(_lora_forward, module)
    for group in groups:
        group.install()
    try:
        yield
    finally:
        for module in layers + [m for group in groups for m in group.members]:
            vars(module).pop("forward", None)


def _groups(modules: list, fused: dict) -> list:
    """The fusable groups of ``modules``' children (``GROUPS``): every member a plain LoRA layer of
    one adapter and scaling, or every member a plain frozen ``nn.Linear``; same input width and
    dtype, no bias."""
    out = []
    for parent in modules:
        for names in GROUPS:
            members = [getattr(parent, name, None) for name in names]
            if all(m is not None for m in members) and _fusable(members):
                out.append(_Group(members, fused))
    return out


def _fusable(members: list) -> bool:
    import torch

    if all(_plain_lora(m) for m in members):
        names = {m.active_adapters[0] for m in members}
        if len(names) != 1 or len({m.scaling[next(iter(names))] for m in members}) != 1:
            return False
        bases = [m.base_layer for m in members]
    elif all(type(m) is torch.nn.Linear for m in members):
        bases = members
    else:
        return False
    return (all(b.bias is None and not b.weight.requires_grad and not b._forward_hooks and not b._forward_pre_hooks
                and "forward" not in vars(b) for b in bases)
            and len({(b.in_features, b.weight.dtype, b.weight.device) for b in bases}) == 1)


class _Group:
    """Projections of one input run as one: the first member's call computes ``x @ [W₁; W₂; …]ᵀ``
    (the frozen weights concatenated once, kept in ``fused``) and, with LoRA, the adapters'
    ``x @ [A₁; A₂; …]ᵀ`` and one product with their B's side by side (block-diagonal), added
    in place with the shared scaling; each later member's call on the same input returns its
    columns. Fewer, larger products: with q, k and v (576 -> 576, 192, 192 at SmolLM2-135M's
    widths) as one, a packed training step of the published shapes ran ~1.07x faster (8 steps:
    275 -> 295 tokens/s, one run each). A call on another input, with the adapter off or
    merged, under autocast or in another dtype, runs the member as before."""

    def __init__(self, members: list, fused: dict):
        self.members, self.fused, self.pending = members, fused, None
        self.lora = hasattr(members[0], "base_layer")
        self.bases = [m.base_layer for m in members] if self.lora else members

    def install(self):
        self.members[0].forward = self.first
        for i, member in enumerate(self.members[1:], 1):
            member.forward = functools.partial(self.later, i)

    def weight(self):
        import torch

        key = tuple(id(b) for b in self.bases)
        stamp = tuple((b.weight.data_ptr(), b.weight._version) for b in self.bases)
        kept = self.fused.get(key)
        if kept is None or kept[0] != stamp:
            kept = self.fused[key] = (stamp, torch.cat([b.weight for b in self.bases]))
        return kept[1]

    def _own(self, i, x, *args, **kwargs):
        member = self.members[i]
        if self.lora:
            return _lora_forward(member, x, *args, **kwargs)
        return type(member).forward(member, x, *args, **kwargs)

    def first(self, x, *args, **kwargs):
        import torch
        import torch.nn.functional as F

        self.pending = None
        if args or kwargs or torch.is_autocast_enabled(x.device.type) or x.dtype != self.bases[0].weight.dtype:
            return self._own(0, x, *args, **kwargs)
        adapters = False
        if self.lora:
            if any(m.merged for m in self.members):
                return self._own(0, x, *args, **kwargs)
            adapters = not any(m.disable_adapters for m in self.members)
        flat = x.reshape(-1, x.shape[-1])
        y = F.linear(flat, self.weight())
        if adapters:  # in place on the 2-D product, as ``_lora_forward``
            name = self.members[0].active_adapters[0]
            a = torch.cat([m.lora_A[name].weight for m in self.members])
            b = torch.block_diag(*[m.lora_B[name].weight for m in self.members])
            y.addmm_(F.linear(flat, a), b.t(), alpha=self.members[0].scaling[name])
        outs = y.view(*x.shape[:-1], y.shape[-1]).split([b.out_features for b in self.bases], dim=-1)
        self.pending = (x, [None, *outs[1:]])
        return outs[0]

    def later(self, i, x, *args, **kwargs):
        pending = self.pending
        if pending is not None and pending[0] is x and not args and not kwargs and pending[1][i] is not None:
            out, pending[1][i] = pending[1][i], None
            if all(o is None for o in pending[1][1:]):
                self.pending = None  # nothing held past its last reader
            return out
        return self._own(i, x, *args, **kwargs)


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
    flat = x.reshape(-1, x.shape[-1])
    result = F.linear(flat, base.weight, base.bias)
    # in place: the base product's output is saved by nothing for its backward pass; on the 2-D
    # product itself, not a view of it (whose in-place change would copy the gradient back)
    result.addmm_(F.linear(flat, module.lora_A[name].weight), module.lora_B[name].weight.t(), alpha=module.scaling[name])
    return result.view(*x.shape[:-1], result.shape[-1])
