"""A training's files: its resumable state (trainable weights, optimiser, RNG as JSON, step
and statistics, saved atomically every ``budget.save_every`` steps under ``state/``), its
result (``final/``: the adapter, or the whole model after full fine-tuning) and
``train_stats.json``, written last, which marks it finished. Everything read back is
tensors or JSON: a run directory is data that may come from elsewhere, never code."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from harness.config.settings import Budget, LoRASettings, lora_key
from harness.model.examples import TokenisedExample
from harness.store import write_json
from harness import versions

log = logging.getLogger("radis_bench")

STATE_DIR = "state"


FINAL_DIR = "final"


TRAJECTORY_DIR = "trajectory"  # the weights at the steps a trajectory evaluates (step<N>/), kept after training


STATS_FILE = "train_stats.json"


def replace_dir(tmp: Path, target: Path) -> None:
    """Swap a finished temp folder in; a crash in between leaves ``<target>.old`` to fall back on."""
    old = target.with_name(target.name + ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def state_identity(items: list[TokenisedExample], budget: Budget, lora: LoRASettings, seed: int) -> str:
    """What a saved state belongs to: the exact token ids and weights, budget, adapter settings
    and seed (and the trainer version). Not a unit key (those are ``harness.run.keys``): it
    only keeps a resumed training from continuing a state saved for other data."""
    blob = json.dumps([[i.input_ids, i.weights] for i in items] + [asdict(budget), lora_key(lora), seed] + (
        [versions.TRAINER] if versions.TRAINER > 1 else []), default=list)  # a state saved by another trainer version is not resumed
    return hashlib.sha256(blob.encode()).hexdigest()


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_state(workdir: Path, model, optimizer, step: int, batch_size: int, signature: str, stats: dict) -> None:
    tmp = workdir / (STATE_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({n: p.detach().cpu() for n, p in trainable(model).items()}, tmp / "trainable.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    write_json(tmp / "rng.json", rng_state())
    write_json(tmp / "progress.json", {"step": step, "position": step * batch_size, "signature": signature, "stats": stats})
    replace_dir(tmp, workdir / STATE_DIR)


def load_state(workdir: Path, model, optimizer, signature: str) -> tuple[int, dict] | None:
    """Restore a saved state into ``model`` and ``optimizer``; (step, stats) or None."""
    folder = next((d for d in (workdir / STATE_DIR, workdir / (STATE_DIR + ".old")) if (d / "progress.json").exists()), None)
    if folder is None:
        return None
    params = trainable(model)
    try:
        progress = json.loads((folder / "progress.json").read_text())
        # run directories are shared and published: tensors and JSON only, nothing that could run code
        saved = torch.load(folder / "trainable.pt", map_location="cpu", weights_only=True)
        optimizer_state = torch.load(folder / "optimizer.pt", map_location=next(iter(params.values())).device,
                                     weights_only=True)
        rng = json.loads((folder / "rng.json").read_text())
    except Exception as err:  # any unreadable, damaged or foreign file: the state is not used, training starts over
        log.warning("%s is not a readable training state (%s); starting over", folder, str(err).splitlines()[0][:200])
        return None
    if progress.get("signature") != signature or set(saved) != set(params):
        log.warning("%s holds the state of a different training (data, budget or adapter changed); starting over", folder)
        return None
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(optimizer_state)
    set_rng_state(rng)
    return progress["step"], progress["stats"]


def rng_state() -> dict:
    """Python's, numpy's and torch's random states as JSON (a resumed training continues them)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def load_trained(model, workdir: Path):
    """The trained model if ``workdir`` holds a finished training with its weights, else None
    (a published run directory keeps a training's statistics but not its weights).

    ``model`` must be a fresh copy of the base model; a LoRA result is attached to it."""
    workdir = Path(workdir)
    if not (workdir / STATS_FILE).exists():
        return None
    return _load_weights(model, workdir / FINAL_DIR)


def save_snapshot(workdir: Path, model, step: int, save=None) -> None:
    """The weights after ``step`` steps (an adapter, or the whole model), for a trajectory;
    ``save(model, folder, workdir)`` writes them (``harness.model.adapters.save_result``: a PiSSA
    adapter converted to plain LoRA on the original weights), else ``save_pretrained``."""
    target = Path(workdir) / TRAJECTORY_DIR / f"step{step}"
    if target.is_dir():
        return
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if save is not None:
        save(model, tmp, workdir)
    else:
        model.save_pretrained(tmp)
    replace_dir(tmp, target)


def snapshot_steps(workdir: Path) -> list[int]:
    """The steps whose weights a training kept for its trajectory."""
    folder = Path(workdir) / TRAJECTORY_DIR
    names = [p.name for p in folder.glob("step*") if p.is_dir()] if folder.is_dir() else []
    return sorted(int(n[4:]) for n in names if n[4:].isdigit())


def load_snapshot(model, workdir: Path, step: int):
    """``model`` (a fresh copy of the base) with the weights kept at ``step``, or None."""
    return _load_weights(model, Path(workdir) / TRAJECTORY_DIR / f"step{step}")


def _load_weights(model, final: Path):
    if not (final / "adapter_config.json").exists() and not any(final.glob("*.safetensors")):
        return None
    if (final / "adapter_config.json").exists():
        from peft import PeftModel

        if not (final / "adapter_model.safetensors").is_file():  # peft would fall back to a .bin, i.e. torch.load
            raise ValueError(f"{final} has no adapter_model.safetensors; adapters are read only as safetensors")
        return PeftModel.from_pretrained(model, final).eval()
    from safetensors.torch import load_file

    for shard in sorted(final.glob("*.safetensors")):
        # tied weights (e.g. lm_head = embeddings) are saved once and missing here by design
        unexpected = model.load_state_dict(load_file(shard), strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{shard} has weights this model lacks: {unexpected[:3]}")
    return model.eval()
