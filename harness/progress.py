"""Rich console and progress bars (items done/total, tokens/s, ETA) shared by every stage."""

from __future__ import annotations

import contextlib
import logging
import os
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
log = logging.getLogger("radis_bench")


def warn(message: str) -> None:
    """One line on stderr (and in run.log during a run): something was not used, or was
    redone, and why; the run or report goes on."""
    console.print(f"[bold yellow]warning:[/bold yellow] {escape(message)}", soft_wrap=True, highlight=False)
    if log.hasHandlers():  # run.log during a run; else logging's last resort would print the line a second time
        log.warning("%s", message)


def _line_every() -> float:
    """Seconds between plain progress lines when stderr is no terminal (a log file, a
    batch job), where a live bar would only show at the end."""
    try:
        return float(os.environ.get("RADIS_BENCH_PROGRESS_EVERY", "60"))
    except ValueError:
        return 60.0


class _Bar:
    def __init__(self, progress: Progress | None, task, unit: str, label: str = "", total: int = 0):
        self.progress, self.task, self.unit = progress, task, unit
        self.label, self.total, self.done = label, total, 0
        self.tokens = 0
        self.started = self.last_line = time.time()
        self.lines = progress is not None and not console.is_terminal

    def advance(self, n: int = 1, tokens: int = 0, **fields) -> None:
        self.tokens += tokens
        self.done += n
        now = time.time()
        rate = self.tokens / max(now - self.started, 1e-6)
        if self.progress is not None:
            self.progress.update(self.task, advance=n, rate=f"{rate:,.0f} {self.unit}/s" if self.tokens else "", **fields)
        if self.lines and now - self.last_line >= _line_every() and self.done < self.total:
            self.last_line = now
            elapsed = now - self.started
            # a generation wave finishes its items late: until one is done there is no estimate
            eta = f"{elapsed / self.done * (self.total - self.done):.0f}s" if self.done else "unknown"
            speed = f", {rate:,.0f} {self.unit}/s" if self.tokens else ""
            extra = f" {fields['extra']}" if fields.get("extra") else ""
            message = f"{self.label}: {self.done}/{self.total}{speed}{extra}, {elapsed:.0f}s elapsed, ETA {eta}"
            console.print(message, markup=False, highlight=False)
            log.info("%s", message)


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
        bar = _Bar(progress, task, unit, label, total)
        yield bar
    log.info("%s: %d items in %.1fs (%d %s)", label, total, time.time() - bar.started, bar.tokens, unit)
