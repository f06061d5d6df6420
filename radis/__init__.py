"""RaDis: rationale distillation (Wu et al., ACL Findings 2025)."""
