"""Baseline methods: vanilla, seqkd, sdft, replay, and the kl / wise extensions."""
