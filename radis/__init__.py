"""RaDis: rationale distillation (Wu et al., ACL Findings 2025)."""

from radis import rationale  # noqa: F401  (registers the method)
