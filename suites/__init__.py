"""Evaluation suites, one module each (registered in pyproject.toml)."""
