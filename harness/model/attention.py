"""Single-query attention for decoding on a CPU.

While decoding, each step attends one new query per sequence to the whole KV cache. With
grouped-query attention (SmolLM2: 9 query heads share 3 key/value heads) transformers'
SDPA path first copies every cached key and value once per query head (``repeat_kv``) —
on a CPU that copy and the kernel's fixed cost were about three quarters of a decode step
at batch 64. Here the queries of a group are multiplied with their shared keys directly:
the same softmax(q·kᵀ/√d)·v, no copy. Prompts (more than one query) and every non-CPU
device keep transformers' SDPA path.
"""

from __future__ import annotations

NAME = "radis_cpu_decode"
_registered = False


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or query.device.type != "cpu" or dropout or kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    return single_query_attention(query, key, value, attention_mask, scaling), None


def single_query_attention(query, key, value, attention_mask=None, scaling=None):
    """softmax(q·kᵀ·scaling)·v for one query per sequence: ``query`` [batch, heads, 1, dim],
    ``key``/``value`` [batch, kv_heads, width, dim], ``attention_mask`` None or [batch, 1, 1,
    ≥ width] (boolean, True = attend, or additive); returns [batch, 1, heads, dim]."""
    import torch

    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # the query heads of each key/value head
    scores = torch.matmul(q, key.transpose(-1, -2)) * (scaling if scaling is not None else dim ** -0.5)
    if attention_mask is not None:  # [batch, 1, 1, width]: boolean (True = attend) or additive
        mask = attention_mask[:, :, :, : key.shape[-2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(torch.softmax(scores, dim=-1), value)  # [batch, kv_heads, group, dim]
    return out.reshape(batch, 1, heads, dim)


def use_decode_attention(model) -> None:
    """Switch a model that runs on a CPU with SDPA to ``decode_attention``."""
    global _registered
    if not hasattr(model, "set_attn_implementation") or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    if next(model.parameters()).device.type != "cpu":
        return
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, decode_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    model.set_attn_implementation(NAME)
