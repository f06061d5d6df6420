"""KL regulariser (extension, LwF-style): vanilla SFT plus the token-level
KL(original ‖ fine-tuned) on the response positions, the original being the base model
with the LoRA adapter switched off."""

from __future__ import annotations

from dataclasses import dataclass, field

from baselines.vanilla import reference_examples
from harness.api import Method, MethodContext, TrainingExample, UserError


@dataclass
class KLOptions:
    kl_weight: float = field(default=0.5, metadata={"help": "Weight of the KL(original ‖ fine-tuned) term added to the NLL.", "min": 0})


def response_kl(reference_logits, logits, weights):
    """Mean KL(reference ‖ current) over the positions that predict a weighted token."""
    import torch

    mask = weights[:, 1:] > 0
    ref = torch.log_softmax(reference_logits[:, :-1][mask].float(), dim=-1)
    cur = torch.log_softmax(logits[:, :-1][mask].float(), dim=-1)
    if ref.shape[0] == 0:
        return logits.sum() * 0.0
    return (ref.exp() * (ref - cur)).sum(-1).mean()


class KL(Method):
    name = "kl"
    description = "Extension (not in the paper): vanilla SFT plus a KL penalty towards the frozen original model."
    citation = "Learning without Forgetting (Li & Hoiem, ECCV 2016), as a token-level KL to the frozen original"
    extension = True
    Options = KLOptions
    # the original is the base with the adapter off: not so after PiSSA's initialisation, and no adapter under full
    adapter_kinds = ("lora", "rslora", "dora")

    reference_passes = 1  # the original beside every micro-batch

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        ctx.stats["kl_weight"] = self.options.kl_weight
        return reference_examples(ctx)

    def extra_loss(self, model, batch: dict, outputs):
        import torch

        if not hasattr(model, "disable_adapter"):
            raise UserError("The kl method needs a LoRA adapter (the original model is the base with the adapter off); unset lora.full_finetune or drop kl.")
        with torch.no_grad(), model.disable_adapter():
            reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return self.options.kl_weight * response_kl(reference, outputs.logits, batch["weights"])
