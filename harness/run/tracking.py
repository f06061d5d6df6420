"""Live logging (issue 35): training losses and trajectory metrics sent to one of accelerate's
trackers when ``log_with`` names it, one tracker run per training unit, named by its row label
and seed, under ``<run>/logs`` for the trackers that write files. Nothing is logged without it."""

from __future__ import annotations

from pathlib import Path

from harness.run.distributed import distributed


class Tracker:
    """One tracker run (``name``) of ``kind`` (``tensorboard``, ``wandb``, ...), on the main process."""

    def __init__(self, kind: str, run_dir: Path, name: str):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        cls = LOGGER_TYPE_TO_CLASS[kind]
        self.tracker = cls(name, Path(run_dir) / "logs") if cls.requires_logging_directory else cls(name)
        self.tracker.start()

    def log(self, values: dict, step: int) -> None:
        self.tracker.log({k: float(v) for k, v in values.items() if v is not None}, step=step)

    def finish(self) -> None:
        self.tracker.finish()


def tracker(plan, label: str, seed: int) -> Tracker | None:
    """The tracker run of a training unit, None when the run logs nowhere (or this process is not the main one)."""
    if not plan.cfg.log_with:
        return None
    if distributed():
        import torch.distributed as dist

        if dist.get_rank() != 0:
            return None
    return Tracker(plan.cfg.log_with, plan.run_dir, f"{label}-seed{seed}")
