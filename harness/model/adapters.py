"""What a training trains (``lora.kind``): every weight (``full``) or a peft adapter, plain LoRA
(``lora``, scale alpha/r), rank-stabilised LoRA (``rslora``, scale alpha/√r; Kalajdzievski 2023),
DoRA (``dora``: magnitude and direction apart; Liu et al. 2024) or LoRA initialised from the
weights' principal singular vectors (``pissa``; Meng et al. 2024).

Every kind starts at the original model: LoRA, rsLoRA and DoRA add nothing while lora_B is 0;
PiSSA moves the top-r singular part of each weight into the adapter and leaves the residual in
the base, so base + adapter is the original (up to rounding) but the base with the adapter off
is not. That is why a PiSSA result is saved converted to a plain LoRA adapter on the original
weights (peft's ``path_initial_model_for_weight_conversion``, rank 2r): a saved result always
loads onto a fresh copy of the original model, and serves on vLLM as base + adapter.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.config.settings import LoRASettings
from harness.errors import UserError

PISSA_START = "pissa_start"  # the PiSSA adapter as it started, in the training's folder (for the conversion)


def attach_adapter(model, lora: LoRASettings, workdir: Path | None = None):
    """``model`` ready to train as ``lora`` says: every weight trainable, or wrapped in a peft adapter."""
    if lora.adapter == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in lora.target_modules if m in present]
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(
            f"None of the LoRA target modules {', '.join(lora.target_modules)} exist in this model; "
            f"set lora.target_modules to some of: {', '.join(linear)}."
        )
    variant = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True},
               "pissa": {"init_lora_weights": "pissa"}}[lora.adapter]
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        task_type="CAUSAL_LM", **variant)
    model = get_peft_model(model, config)
    if lora.adapter == "pissa" and workdir is not None:
        _save_pissa_start(model, Path(workdir) / PISSA_START)
    return model


def _save_pissa_start(model, folder: Path) -> None:
    """The adapter as it starts, marked as plainly initialised, so that loading it for the conversion
    does not decompose the weights again (peft's recipe)."""
    config = model.peft_config["default"]
    config.init_lora_weights = True
    try:
        model.save_pretrained(folder)
    finally:
        config.init_lora_weights = "pissa"


def save_result(model, folder: Path, workdir: Path) -> None:
    """The trained result into ``folder``: the whole model after full fine-tuning, else the adapter
    (a PiSSA adapter converted to plain LoRA on the original weights)."""
    start = Path(workdir) / PISSA_START
    config = getattr(model, "peft_config", {}).get("default")
    if config is not None and str(config.init_lora_weights).startswith("pissa"):
        model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(start))
        return
    model.save_pretrained(folder)
