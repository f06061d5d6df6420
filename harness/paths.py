"""Where radis-bench keeps things outside the repository."""

import os
from pathlib import Path


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
