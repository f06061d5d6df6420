"""A decode step for plain Llama models on a CPU, without transformers' module stack.

While decoding, every step runs the whole model on one new token per sequence. At the
CPU batch cap (128 sequences) the matrix products of the embedded SmolLM2-135M take about
half of a step through ``model(...)``; much of the rest is not arithmetic: ~1,100 operations
per step, most of them small element-wise ones, each of which wakes the second OpenMP thread (with
``OMP_WAIT_POLICY=PASSIVE``, which the CLI sets, a wake costs ~70 µs against ~6 µs of
work on a [128, 576] tensor), plus transformers' per-layer Python (mask construction,
cache objects, keyword plumbing). ``FastLlama.decode`` runs the same arithmetic, in the
same order and on the same weights, as ``LlamaForCausalLM.forward`` with radis-bench's
single-query attention (``harness.model.attention``): the RMSNorms, rotary embedding, SiLU
products and residual additions run on one thread (no wake-ups), the matrix products and
the attention over the cache on all of them, and keys and values are written in place into
the Generator's preallocated cache tensors. Logits are bit-for-bit those of the
transformers path (tests/test_generation.py), so greedy outputs and cache keys are unchanged.

Only an unmodified ``LlamaForCausalLM`` on a CPU qualifies (``FastLlama.of``): no adapters
or wrappers, plain ``nn.Linear`` projections, SiLU, no tensor-parallel slicing, no hooks.
Everything else keeps the transformers path; prompts are always prefilled through
``model(...)`` (for a qualifying model its passes write into one preallocated cache,
``Generator._prefill_in_place``).
"""

from __future__ import annotations

from harness.model.attention import single_query_attention


class _OneThread:
    """Runs a block on one thread (small element-wise work: no OpenMP wake-up), then
    restores the thread count."""

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        if self.before != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        if self.before != 1:
            torch.set_num_threads(self.before)


class FastLlama:
    """Decode steps of one plain ``LlamaForCausalLM`` (see the module docstring)."""

    def __init__(self, model):
        self.model = model
        config = model.config
        inner = model.model
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.final_norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.head = (model.lm_head.weight, model.lm_head.bias)
        self.layers = []
        for layer in inner.layers[: config.num_hidden_layers]:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append({
                "in_norm": (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                "post_norm": (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                "q": (attn.q_proj.weight, attn.q_proj.bias), "k": (attn.k_proj.weight, attn.k_proj.bias),
                "v": (attn.v_proj.weight, attn.v_proj.bias), "o": (attn.o_proj.weight, attn.o_proj.bias),
                "gate": (mlp.gate_proj.weight, mlp.gate_proj.bias), "up": (mlp.up_proj.weight, mlp.up_proj.bias),
                "down": (mlp.down_proj.weight, mlp.down_proj.bias), "scaling": attn.scaling,
            })

    @classmethod
    def of(cls, model) -> "FastLlama | None":
        """A ``FastLlama`` for ``model`` if it is a plain Llama on a CPU, else None."""
        try:
            import torch
            from transformers.models.llama import modeling_llama as ml
        except ImportError:  # pragma: no cover
            return None
        if type(model) is not ml.LlamaForCausalLM or type(model.model) is not ml.LlamaModel:
            return None
        config = model.config
        if (getattr(config, "pretraining_tp", 1) != 1 or config.hidden_act != "silu" or model.training
                or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", "radis_cpu_decode")
                or getattr(model, "hf_quantizer", None) is not None or getattr(model, "peft_config", None)):
            return None
        params = list(model.parameters())
        if not params or any(p.device.type != "cpu" or p.dtype != params[0].dtype for p in params):
            return None
        if params[0].dtype not in (torch.float32, torch.float64):  # half-precision CPU paths: keep transformers'
            return None
        allowed = {ml.LlamaForCausalLM, ml.LlamaModel, ml.LlamaDecoderLayer, ml.LlamaAttention, ml.LlamaMLP,
                   ml.LlamaRMSNorm, ml.LlamaRotaryEmbedding, torch.nn.Linear, torch.nn.Embedding, torch.nn.ModuleList,
                   torch.nn.SiLU}
        for module in model.modules():
            if type(module) not in allowed and type(module).__name__ != "SiLUActivation":
                return None
            # FLOP counting's hooks (harness.model.compute) only count: the Generator counts its answers itself
            pre_hooks = [h for h in module._forward_pre_hooks.values() if not getattr(h, "counts_flops", False)]
            if module._forward_hooks or pre_hooks or getattr(module, "_hf_hook", None) is not None:
                return None
        for layer in model.model.layers:
            if type(layer.mlp.act_fn).__name__ not in ("SiLU", "SiLUActivation"):
                return None
        if model.model.rotary_emb.rope_type not in ("default", "linear", "llama3"):  # no dynamic / per-length updates
            return None
        return cls(model)

    @staticmethod
    def _norm(hidden, weight_eps):
        """``LlamaRMSNorm.forward``, operation for operation."""
        import torch

        weight, eps = weight_eps
        dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + eps)
        return weight * hidden.to(dtype)

    @staticmethod
    def _rotate(x, cos, sin):
        import torch

        half = x.shape[-1] // 2
        return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)

    def decode(self, tokens, attention_mask, positions, cache):
        """Logits [batch, vocab] for one new token per sequence (``tokens``, ``positions``:
        [batch]); ``attention_mask`` [batch, width] covers the cache and the new token;
        ``cache`` is the Generator's ``GrowingCache``, grown in place by one position."""
        import torch
        import torch.nn.functional as F

        one = _OneThread()
        batch = tokens.shape[0]
        layers = self.layers
        with torch.inference_mode():
            with one:
                hidden = F.embedding(tokens[:, None], self.embed)  # [batch, 1, hidden]
                cos, sin = self.rotary(hidden, positions[:, None])
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
                allowed = attention_mask.bool()[:, None, None, :]
                if bool(allowed.all()):
                    allowed = None  # as transformers' mask builder: nothing to mask
                x = self._norm(hidden, layers[0]["in_norm"])
            for index, w in enumerate(layers):
                q = F.linear(x, *w["q"]).view(batch, 1, self.heads, self.head_dim).transpose(1, 2)
                k = F.linear(x, *w["k"]).view(batch, 1, self.kv_heads, self.head_dim).transpose(1, 2)
                v = F.linear(x, *w["v"]).view(batch, 1, self.kv_heads, self.head_dim).transpose(1, 2)
                with one:
                    q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
                keys, values = cache.layers[index].update(k, v)
                out = single_query_attention(q, keys, values, allowed, w["scaling"])
                out = F.linear(out.reshape(batch, 1, -1).contiguous(), *w["o"])
                with one:
                    hidden = hidden + out
                    x = self._norm(hidden, w["post_norm"])
                gate, up = F.linear(x, *w["gate"]), F.linear(x, *w["up"])
                with one:
                    gate = F.silu(gate) * up
                out = F.linear(gate, *w["down"])
                with one:
                    hidden = hidden + out
                    x = self._norm(hidden, layers[index + 1]["in_norm"] if index + 1 < len(layers) else self.final_norm)
            return F.linear(x, *self.head)[:, -1, :]
