"""Rich console and progress bars (items done/total, tokens/s, ETA) shared by every stage."""

from __future__ import annotations

import contextlib
import logging
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
log = logging.getLogger("radis_bench")


class _Bar:
    def __init__(self, progress: Progress | None, task, unit: str):
        self.progress, self.task, self.unit = progress, task, unit
        self.tokens = 0
        self.started = time.time()

    def advance(self, n: int = 1, tokens: int = 0, **fields) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.time() - self.started, 1e-6)
        if self.progress is not None:
            self.progress.update(self.task, advance=n, rate=f"{rate:,.0f} {self.unit}/s" if self.tokens else "", **fields)


@contextlib.contextmanager
def progress_bar(label: str, total: int, unit: str = "tok"):
    """A transient progress bar; a no-op when nothing is to be done."""
    if total <= 0:
        yield _Bar(None, None, unit)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(label, total=total, rate="", extra="")
        bar = _Bar(progress, task, unit)
        yield bar
    log.info("%s: %d items in %.1fs (%d %s)", label, total, time.time() - bar.started, bar.tokens, unit)
