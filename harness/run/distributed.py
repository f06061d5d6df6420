"""Multi-process launches (``accelerate launch -m harness run ...``): the main process (rank 0)
does the whole run; the other processes only join each training, which it announces with the
examples, the budget and the method (its options and any state it built), and wait in between."""

from __future__ import annotations

from pathlib import Path

from harness.config.settings import launched_processes
from harness.model.training import train


def distributed() -> bool:
    if launched_processes()[1] <= 1:
        return False
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    # GPUs talk over NCCL, CPU processes over gloo; the waits span whole evaluations
    PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=24))
    return True


def tell(message) -> None:
    """Announce a training to the other processes; None ends the run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list([message], src=0)


def follow(plan, models, units) -> Path:
    """A process other than the main one: join every announced training until the run ends."""
    import torch.distributed as dist

    while True:
        message = [None]
        dist.broadcast_object_list(message, src=0)
        if message[0] is None:
            return plan.run_dir
        label, seed, examples, budget, method, compute, snapshot_every = message[0]
        base, tokenizer = models.load_base()
        train(base, tokenizer, examples, budget, plan.loras[label], units.workdir(label, seed), seed,
              extra_loss=method.extra_loss, prepare=method.prepare_model, label=f"train {label} s{seed}", compute=compute,
              snapshot_every=snapshot_every)
