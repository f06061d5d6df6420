"""Where radis-bench keeps things outside the repository, and the checks of the paths a user
gives (a file, a folder to read, a folder to write)."""

import os
from pathlib import Path

from harness.errors import UserError


def cache_dir() -> Path:
    """Root of converted models and the generation cache (``RADIS_BENCH_CACHE``)."""
    root = os.environ.get("RADIS_BENCH_CACHE") or Path.home() / ".cache" / "radis-bench"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_cache_dir() -> Path:
    """Converted embedded models (``RADIS_BENCH_MODELS``, default ``<cache>/models``)."""
    env = os.environ.get("RADIS_BENCH_MODELS")
    path = Path(env).expanduser() if env else cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_data_dir() -> Path:
    """The shared benchmark data used by tests and CI (``RADIS_BENCH_DATA``)."""
    env = os.environ.get("RADIS_BENCH_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


STARTER_DATA = Path(__file__).resolve().parent / "data" / "starter"


# --- paths a user gives: checked for kind and permission before use, one sentence each ------


def check_file(path: str | Path, what: str, fix: str) -> Path:
    """A file to be read: it exists, is a file and is readable; ``what`` names the setting
    (``--config``), ``fix`` says what to give instead ("give the YAML file itself")."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{what} {path} does not exist; {fix}.")
    if not path.is_file():
        raise UserError(f"{what} {path} is a folder, not a file; {fix}.")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path} cannot be read (permission denied); fix its permissions or {fix}.")
    return path


def check_folder(path: str | Path, what: str, fix: str) -> Path:
    """A folder to be read: it exists, is a folder and its files can be listed and read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{what} {path} does not exist; {fix}.")
    if not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; {fix}.")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be read (permission denied); fix its permissions or {fix}.")
    return path


def check_output_folder(path: str | Path, what: str, noun: str = "folder") -> Path:
    """A folder to be written, created if missing: no file in its place or on its way, and
    the nearest part that exists is writable."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; give a {noun} (it is created if missing).")
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{what} {path}: {parent} is a file, so the {noun} cannot be created there; choose another {what}.")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {parent} is not writable; choose another {what}.")
    return path
