"""Confidence intervals."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean; ``(None, None)`` for fewer than two values."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
