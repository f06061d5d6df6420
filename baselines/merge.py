"""TIES / DARE merging of the fine-tuned delta back onto the original (extension): vanilla
SFT, then the task vector (fine-tuned minus original weights) is sparsified and added back
to the original at weight ``alpha``. Post-hoc like ``wise``: it trains exactly as vanilla
does, so the harness copies vanilla's training when both are in a run.

TIES-Merging: Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
NeurIPS 2023 (arXiv 2306.01708): trim each task vector to its top-``density`` entries by
magnitude, elect a sign per entry, and average the entries that agree with it, scaled by λ
(``alpha``). DARE: Yu et al., "Language Models are Super Mario: Absorbing Abilities from
Homologous Models as a Free Lunch", ICML 2024 (arXiv 2311.03099): drop each delta entry
with probability 1 − ``density`` and rescale the rest by 1 / ``density``.

Where the harness differs: there is one task vector, not several, so TIES' sign election
and disjoint mean are trivial (every kept entry agrees with itself); what remains, and is
the substance here, is trimming each module's delta to its top-``density`` magnitudes and
scaling it. With LoRA the delta of a module is its B·A·scale, merged into a dense weight
(a trimmed or dropped delta is no longer low-rank), so the result is a plain model rather
than base + adapter; under lora.full_finetune the delta is every weight's change. Trimming
is per module (per weight tensor), as in mergekit and peft. DARE's random drop is seeded
by ``merge.seed`` (``after_training`` sees no training seed). ``density`` 1 with ``alpha`` 1
gives vanilla's weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from baselines.vanilla import reference_examples
from harness.api import Method, MethodContext, TrainingExample, UserError

MODES = ("ties", "dare")


@dataclass
class MergeOptions:
    mode: str = field(default="ties", metadata={"help": "ties (keep each module's top-density delta entries by magnitude) or dare (drop entries at random)."})
    density: float = field(default=0.2, metadata={"help": "Share of each module's delta entries kept (TIES k, DARE 1 - drop rate).", "above": 0, "max": 1})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the sparsified delta added to the original (TIES' lambda; 1 = as trained).", "min": 0})
    rescale: bool = field(default=True, metadata={"help": "dare: divide the kept entries by density (DARE's rescale); ties never rescales."})
    seed: int = field(default=0, metadata={"help": "Seed of DARE's random drop.", "why_no_range": "any whole number seeds the draw (it is hashed)"})


def sparsify(delta, mode: str, density: float, rescale: bool, generator=None):
    """One task vector's entries after TIES trimming or DARE drop-and-rescale."""
    import torch

    if density >= 1.0:
        return delta
    if mode == "ties":
        keep = int(round(density * delta.numel()))
        if keep <= 0:
            return torch.zeros_like(delta)
        threshold = delta.abs().flatten().float().kthvalue(delta.numel() - keep + 1).values
        # ties at the threshold may keep a few more than `keep`; TIES' own top-k does the same
        return delta * (delta.abs() >= threshold.to(delta.dtype))
    kept = torch.rand(delta.shape, generator=generator, device="cpu").to(delta.device) < density
    out = delta * kept
    return out / density if rescale and density > 0 else out


def _generator(seed: int, name: str):
    import torch

    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class Merge(Method):
    name = "merge"
    description = "Extension (not in the paper): vanilla SFT, then TIES / DARE sparsification of the fine-tuned delta, added back to the original."
    citation = ("Yadav et al., TIES-Merging, NeurIPS 2023 (arXiv 2306.01708); "
                "Yu et al., DARE, ICML 2024 (arXiv 2311.03099)")
    extension = True
    Options = MergeOptions
    # the delta is B·A·scale on the original weights: not under DoRA, nor after PiSSA's initialisation
    adapter_kinds = ("lora", "rslora", "full")

    def check(self) -> None:
        o = self.options
        if o.mode not in MODES:
            raise UserError(f"merge.mode '{o.mode}' is unknown; use one of {', '.join(MODES)}.")

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        o = self.options
        ctx.stats.update(mode=o.mode, density=o.density, alpha=o.alpha, rescale=o.rescale if o.mode == "dare" else None)
        return reference_examples(ctx)

    def _new_delta(self, name: str, delta):
        o = self.options
        return o.alpha * sparsify(delta, o.mode, o.density, o.rescale, _generator(o.seed, name) if o.mode == "dare" else None)

    def after_training(self, model, original_state: dict | None = None):
        import torch

        with torch.no_grad():
            if hasattr(model, "peft_config"):
                from peft.tuners.lora import LoraLayer

                for name, module in model.named_modules():
                    if not isinstance(module, LoraLayer):
                        continue
                    for adapter in module.active_adapters:
                        if adapter not in module.lora_A and adapter not in getattr(module, "lora_embedding_A", {}):
                            continue
                        if adapter in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(adapter):
                            raise UserError("merge handles plain LoRA adapters only (no DoRA or lora_bias); unset those lora settings.")
                        weight = module.get_base_layer().weight
                        weight.data += self._new_delta(name, module.get_delta_weight(adapter)).to(weight.dtype)
                return model.unload()  # the adapters' deltas are in the base weights now
            if original_state is None:
                raise ValueError("merge needs original_state (the weights before training) after full fine-tuning")
            for name, param in model.named_parameters():
                start = original_state[name].to(param.device, param.dtype)
                param.copy_(start + self._new_delta(name, param - start))
        return model
