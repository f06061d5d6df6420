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


def bootstrap_ci_of(items, statistic_fn, n_boot: int = 200, seed: int = 0,
                    level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of a corpus-level statistic (BLEU, chrF, ...).

    ``statistic_fn`` maps a resampled list of ``items`` (drawn with replacement, same
    size) to a number. Pass per-sentence sufficient statistics as items so each
    resample is a cheap sum rather than a fresh scoring pass. ``(None, None)`` for
    fewer than two items.
    """
    items = list(items)
    if len(items) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(items), size=(n_boot, len(items)))
    values = np.array([statistic_fn([items[i] for i in row]) for row in draws], dtype=float)
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
