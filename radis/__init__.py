"""RaDis: rationale distillation (Wu et al., ACL Findings 2025). The method is `radis.rationale.RaDis`."""
