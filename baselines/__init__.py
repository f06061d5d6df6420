"""Baseline methods, one module each: vanilla, seqkd, sdft, replay, and the extensions (registered in pyproject.toml)."""
