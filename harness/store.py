"""The run directory: atomic writes, the lock, and the units of work that are reused.

Layout of a run directory::

    manifest.json              every setting, versions, hashes, budgets, tokens, times
    scores.csv                 long form: model,method,seed,suite,metric,value,n,ci_low,ci_high,...
    run.log                    what ran and what was reused
    models/<method>/seed<k>/   examples.jsonl, resumable training state, final adapter
    results/<label>/<suite>.json   one finished evaluation unit (its key inside)
    outputs/<label>/<suite>.jsonl  per-item model outputs
    report/                    leaderboard.md/.csv/.html and plots
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import UserError


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file so a reader (or a crash) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class RunLock:
    """An exclusive lock on a run directory; a second process gets a clear error."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fh = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise UserError(
                f"Run directory {self.path.parent} is in use by {holder}; wait for it to finish or choose another --out."
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"radis-bench process {os.getpid()}")
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
