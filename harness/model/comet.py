"""COMET (Rei et al. 2020, unbabel-comet): segment scores of (source, translation, reference)
triples from a local checkpoint or a hub name, cached on disk. Shared by what scores
translations (the translation suite) and what judges them (the s3ft method)."""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import re
from pathlib import Path

from harness.errors import UserError
from harness.model.loading import check_model, looks_like_path
from harness.paths import cache_dir, check_file
from harness.store import CacheDB


def comet_label(name: str) -> str:
    """How a COMET checkpoint is named in published tables: a hub name as it is, a local
    checkpoint by its folder or file name (never the path of the machine that scored it)."""
    if not looks_like_path(name):
        return name
    path = Path(name).expanduser()
    return f"local checkpoint {path.parent.parent.name if path.name == 'model.ckpt' else path.name}"


class CometUnavailable(Exception):
    """The COMET checkpoint could not be found or loaded; the message says why."""


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
COMET_FIX = ("give a COMET .ckpt file, a folder holding checkpoints/model.ckpt, or a COMET model name such as "
             "Unbabel/wmt22-comet-da")


@functools.lru_cache(maxsize=1)
def comet_names() -> tuple[str, ...]:
    """The checkpoint names unbabel-comet knows besides hub ids (its ``available_legacy_metrics``),
    read from its source without importing it: importing comet imports torch and Lightning,
    which a dry run does not."""
    spec = importlib.util.find_spec("comet")
    source = Path(spec.origin).parent / "models" / "download_utils.py" if spec and spec.origin else None
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (AttributeError, OSError, SyntaxError, UnicodeDecodeError):
        return ()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "available_legacy_metrics" for t in node.targets):
            try:
                return tuple(sorted(ast.literal_eval(node.value)))
            except ValueError:
                return ()
    return ()


def _checkpoint_archive(path: Path) -> bool:
    """Whether ``path`` looks like what torch.save writes (a zip archive, or the older format
    torch wrote before 1.6), read from its first bytes only."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def check_comet(name: str, what: str) -> str | None:
    """A COMET setting checked without a network call or loading anything: a local path must
    be a readable .ckpt file or a folder holding checkpoints/model.ckpt; any other name must
    be a hub id (noted: from the local hub cache or fetched on first use) or one of
    unbabel-comet's own names. Returns a note for the plan, or None."""
    if looks_like_path(name) or name.endswith(".ckpt"):
        path = Path(name).expanduser()
        if path.is_dir():
            if not (path / "checkpoints" / "model.ckpt").exists():
                raise UserError(f"{what} {path} holds no checkpoints/model.ckpt; {COMET_FIX}.")
            path = path / "checkpoints" / "model.ckpt"
        check_file(path, what, COMET_FIX)
        if not _checkpoint_archive(path):
            raise UserError(f"{what} {path} is not a COMET checkpoint (no PyTorch .ckpt archive); {COMET_FIX}.")
        return None
    if name in comet_names():
        return f"COMET model {name} (an unbabel-comet name; fetched on first use)"
    if HUB_ID.fullmatch(name):
        return f"COMET model {check_model(name, what, chat=False).removeprefix('hub model ')}"
    own = f", or one of unbabel-comet's own names such as {', '.join(comet_names()[:2])}" if comet_names() else ""
    raise UserError(f"{what} '{name}' is neither a local COMET checkpoint nor a COMET model name (a hub id such as "
                    f"Unbabel/wmt22-comet-da{own}); check the name or the path.")


def comet_checkpoint(name: str) -> Path:
    """A local ``.ckpt`` file, a folder holding ``checkpoints/model.ckpt``, or a hub name
    that unbabel-comet fetches (from the local hub cache when offline)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        ckpt = path / "checkpoints" / "model.ckpt"
        if not ckpt.is_file():
            raise CometUnavailable(f"the folder {path} holds no checkpoints/model.ckpt")
        return ckpt
    from comet import download_model

    try:
        return Path(download_model(name))
    except Exception as err:  # offline, unknown name, broken download: all mean "no COMET"
        raise CometUnavailable(f"it is no local checkpoint and fetching it failed ({type(err).__name__})") from None


@functools.lru_cache(maxsize=1)  # a 2.3 GB checkpoint is loaded once per process, not once per evaluated model
def _load_comet(ckpt: str):
    from comet import load_from_checkpoint

    with _quiet_lightning():
        return load_from_checkpoint(ckpt)


@contextlib.contextmanager
def _quiet_lightning():
    """Silence the banners Lightning and COMET log on every load and predict."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "comet")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _score(row) -> float:
    if type(row[0]) not in (int, float):
        raise ValueError("not a score")
    return float(row[0])


class CometScorer:
    """COMET segment scores (x100) of (source, translation, reference) triples, cached on
    disk under the checkpoint's identity so a re-run scores nothing twice."""

    def __init__(self, name: str, batch_size: int):
        self.name = name
        self.batch_size = batch_size
        self.ckpt = comet_checkpoint(name)
        stat = self.ckpt.stat()
        self.identity = f"{self.ckpt.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        self.db = CacheDB(cache_dir() / "comet_scores.sqlite", "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score REAL)")

    def _key(self, triple: tuple[str, str, str]) -> str:
        return hashlib.sha256(json.dumps([self.identity, *triple]).encode()).hexdigest()

    def score(self, triples: list[tuple[str, str, str]]) -> list[float]:
        keys = [self._key(t) for t in triples]
        found = {}
        for key in set(keys):
            score = self.db.lookup("SELECT score FROM scores WHERE key=?", (key,), _score)
            if score is not None:
                found[key] = score
        todo = {k: t for k, t in zip(keys, triples) if k not in found}
        if todo:
            import torch

            try:
                model = _load_comet(str(self.ckpt))
            except Exception as err:
                raise CometUnavailable(f"loading {self.ckpt} failed ({type(err).__name__}: {err})") from None
            data = [{"src": s, "mt": m, "ref": r} for s, m, r in todo.values()]
            with _quiet_lightning():
                pred = model.predict(data, batch_size=self.batch_size, gpus=1 if torch.cuda.is_available() else 0,
                                     progress_bar=False)
            new = {k: 100.0 * float(s) for k, s in zip(todo, pred.scores)}
            def put(db):
                db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?)", list(new.items()))
                db.commit()

            self.db.run(put)
            found.update(new)
        return [found[k] for k in keys]
