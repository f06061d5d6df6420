"""Baseline methods: vanilla, seqkd, sdft, replay, and the kl / wise extensions."""

from baselines import kl, replay, sdft, seqkd, vanilla, wise  # noqa: F401  (each registers its method)
