"""WiSE-FT weight interpolation (extension): θ = (1 − α)·θ_original + α·θ_fine-tuned.

With LoRA the fine-tuned weights are the original plus the adapter's delta B·A, so the
interpolation is the delta scaled by α, done by scaling every lora_B."""

from __future__ import annotations

from dataclasses import dataclass, field

from baselines.vanilla import reference_examples
from harness.api import Method, MethodContext, TrainingExample


@dataclass
class WiSEOptions:
    alpha: float = field(default=0.5, metadata={"help": "Interpolation weight of the fine-tuned model (0 = original, 1 = fine-tuned).", "min": 0, "max": 1})


class WiSE(Method):
    name = "wise"
    description = "Extension (not in the paper): vanilla SFT, then WiSE-FT interpolation between the original and fine-tuned weights."
    citation = "Wortsman et al., Robust fine-tuning of zero-shot models, CVPR 2022 (arXiv 2109.01903)"
    extension = True
    Options = WiSEOptions
    # scaling lora_B interpolates only where the delta is scale·B·A on the original weights
    adapter_kinds = ("lora", "rslora", "full")

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        ctx.stats["alpha"] = self.options.alpha
        return reference_examples(ctx)

    def after_training(self, model, original_state: dict | None = None):
        import torch

        alpha = self.options.alpha
        with torch.no_grad():
            if hasattr(model, "peft_config"):
                for module in model.modules():
                    for delta in (getattr(module, "lora_B", {}), getattr(module, "lora_embedding_B", {})):
                        for value in delta.values():
                            (value.weight if isinstance(value, torch.nn.Module) else value).mul_(alpha)
                return model
            if original_state is None:
                raise ValueError("wise needs original_state (the weights before training) after full fine-tuning")
            for name, param in model.named_parameters():
                param.mul_(alpha).add_(original_state[name].to(param.device, param.dtype), alpha=1.0 - alpha)
        return model
