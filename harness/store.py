"""The run directory: its layout (the one description of it), atomic writes, its locks, and
the content-addressed caches' database.

Layout of a run directory::

    manifest.json              every setting incl. defaults, versions, git commit, hardware, data hashes,
                               budgets, tokens trained, times, what each model generated anew
    scores.csv                 long form: model,method,seed,suite,metric,value,n,ci_low,ci_high,...
    run.log                    what ran and what was reused
    models/<label>/seed<k>/    a training: unit_key.txt, examples.jsonl, method_stats.json, state/
                               (resumable), final/ (the adapter or weights), train_stats.json (written
                               last: the training is finished)
    results/<cell>/<suite>.json        one evaluation unit (its key and code versions inside)
    results/<cell>/items/<suite>.json  its per-item statistics (ids and numbers, no text)
    outputs/<cell>/<suite>.jsonl       its per-item outputs
    work/<cell>/<suite>/       artefacts a suite keeps beyond its outputs
    work/shared/<suite>/       work a suite does once per run (retention: the original's hidden states)
    analysis/                  plan.json, amendments.json, looks.jsonl (``harness.report.claims``)
    report/                    leaderboard.md/.csv/.html, differences.csv and plots
    rescore/                   ``radis-bench rescore`` comparisons
    locks/<cell>.lock          held by the process computing that cell (``run --only``)
    .lock, .state.lock         the run directory's lock and the short lock around shared files

A cell is ``original`` (``ORIGINAL``) or ``<label>-seed<k>``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.errors import UserError

ORIGINAL = "original"  # the original model's cell: results/original/, its leaderboard row


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


class Unreadable(Exception):
    """A run-directory file that is there but cannot be read as what it should be (truncated,
    not JSON, not UTF-8, a folder, no permission): ``path`` and ``why`` in a few words. The
    caller says what it does instead: a run recomputes the unit, a report leaves it out."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} cannot be read ({why})")
        self.path, self.why = Path(path), why


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise Unreadable(path, "not UTF-8 text") from None
    except IsADirectoryError:
        raise Unreadable(path, "a folder, not a file") from None
    except OSError as err:
        raise Unreadable(path, err.strerror or type(err).__name__) from None


def load_json(path: Path, kind: type = dict) -> Any | None:
    """The JSON value of ``path`` (a ``kind``, a JSON object by default); None when the file is
    absent; ``Unreadable`` when it is there but damaged."""
    text = _text(Path(path))
    if text is None:
        return None
    if not text.strip():
        raise Unreadable(path, "empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise Unreadable(path, f"not valid JSON at line {err.lineno}, column {err.colno}; truncated?") from None
    if not isinstance(value, kind):
        raise Unreadable(path, f"a JSON {type(value).__name__}, not a JSON {'object' if kind is dict else kind.__name__}")
    return value


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file written by ``write_jsonl``; [] when it is absent;
    ``Unreadable`` when a line is not a JSON object (e.g. the file was cut mid-line)."""
    text = _text(Path(path))
    rows = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise Unreadable(path, f"line {number} is not valid JSON; truncated?") from None
        if not isinstance(row, dict):
            raise Unreadable(path, f"line {number} is not a JSON object")
        rows.append(row)
    return rows


def read_json(path: Path) -> Any | None:
    """A JSON file, or None when it is absent or cannot be read: for files whose loss costs
    nothing but their content (a manifest rewritten from the units); units use ``load_json``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


class _Flock:
    """An ``flock`` on a file: exclusive or shared, failing at once or waiting."""

    def __init__(self, path: Path, exclusive: bool = True, wait: bool = False):
        self.path, self.exclusive, self.wait = path, exclusive, wait
        self.fh = None

    def busy(self, holder: str) -> str:  # the one-line message when the lock is taken
        return f"{self.path} is in use by {holder}."

    def __enter__(self):
        # the file's content is only the holder's name for messages: a truncated or garbled one
        # (a crash, a copy) locks as well as any, and is rewritten below
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a+", encoding="utf-8", errors="replace")
        except OSError as err:
            raise UserError(f"The lock file {self.path} cannot be opened ({err.strerror or type(err).__name__}); remove what "
                            "is in its place or choose another --out.") from None
        mode = (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | (0 if self.wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(self.fh, mode)
        except BlockingIOError:
            self.fh.seek(0)
            text = self.fh.read().strip()
            holder = text if re.fullmatch(r"radis-bench process \d+", text) else "another radis-bench process"
            self.fh.close()
            raise UserError(self.busy(holder)) from None
        self.fh.seek(0)
        self.fh.truncate()  # shared holders leave it empty: no stale name from a killed holder
        if self.exclusive:
            self.fh.write(f"radis-bench process {os.getpid()}")
            self.fh.flush()
        return self

    def __exit__(self, *exc):
        if self.exclusive:
            self.fh.truncate(0)  # no stale holder name for the next message
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


class RunLock(_Flock):
    """The lock on a run directory. A full run holds it exclusively, so a second run gets a
    clear error; cells (``run --only``) hold it shared, so they run side by side but never
    next to a full run of the same directory."""

    def __init__(self, run_dir: Path, shared: bool = False):
        super().__init__(run_dir / ".lock", exclusive=not shared)

    def busy(self, holder: str) -> str:
        if not self.exclusive or holder != "another radis-bench process":
            return f"Run directory {self.path.parent} is in use by {holder}; wait for it to finish or choose another --out."
        return (f"Run directory {self.path.parent} is in use by cells of a grid (run --only); "
                "wait for them to finish or choose another --out.")


class CellLock(_Flock):
    """One cell of a run (the original model, or one method and seed), held while a process
    computes it; a second process asking for the same cell gets a clear error."""

    def __init__(self, run_dir: Path, label: str):
        super().__init__(run_dir / "locks" / f"{label}.lock")
        self.label = label

    def busy(self, holder: str) -> str:
        return (f"Cell {self.label} of run directory {self.path.parent.parent} is being computed by {holder}; "
                "leave it to that process or choose other --only cells.")


class StateLock(_Flock):
    """Short lock, waited for, around rewriting the run's shared files (manifest, scores, report)."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir / ".state.lock", wait=True)


DAMAGED = ("file is not a database", "database disk image is malformed", "malformed database schema")


class CacheDB:
    """The SQLite file of one content-addressed cache (generations, judge replies, COMET
    scores): values are plain columns or JSON text, never serialised Python objects; WAL journaling, so a
    process killed while writing leaves the committed rows readable. A damaged file (a
    truncated copy, a disk error) is never fatal: it is set aside as ``<name>.damaged-<time>``
    with a warning and the cache starts empty, which only costs recomputation."""

    def __init__(self, path: Path, *schema: str, migrate=None):
        self.path, self.schema, self.migrate = Path(path), schema, migrate
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run(lambda db: None)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("PRAGMA journal_mode=WAL")
        for statement in self.schema:
            db.execute(statement)
        if self.migrate is not None:
            self.migrate(db)
        db.commit()
        return db

    def run(self, use):
        """``use(connection)``, with the file set aside and started afresh once if it is damaged."""
        for attempt in (0, 1):
            try:
                if getattr(self, "db", None) is None:
                    self.db = self._open()
                return use(self.db)
            except sqlite3.DatabaseError as err:
                if attempt or not any(sign in str(err) for sign in DAMAGED):
                    raise
                self._set_aside(err)

    def lookup(self, query: str, params: tuple, decode):
        """``decode(row)`` of the row ``query`` finds; None when there is none, or when the row
        is not what this cache writes (a value of another type, text that is no JSON: a damaged
        or planted row), which then counts as missing and is written anew. Nothing read here is
        ever deserialised as a Python object or run."""
        row = self.run(lambda db: db.execute(query, params).fetchone())
        if row is None:
            return None
        try:
            return decode(row)
        except (TypeError, ValueError, UnicodeDecodeError, KeyError, AttributeError) as err:
            logging.getLogger("radis_bench").warning("%s holds a row that is not what it writes (%s); it counts as missing",
                                                     self.path, type(err).__name__)
            return None

    def _set_aside(self, err: Exception) -> None:
        if getattr(self, "db", None) is not None:
            self.db.close()
        self.db = None
        aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{self.path}{suffix}")
            if part.exists():
                os.replace(part, f"{aside}{suffix}")
        logging.getLogger("radis_bench").warning("%s was damaged (%s); set aside as %s, the cache starts empty",
                                                 self.path, err, aside.name)
