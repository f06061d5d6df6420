"""How the process's C heap gives memory back (glibc on Linux).

Torch's CPU tensors come from ``malloc``. glibc serves a block above its mmap threshold with a
fresh ``mmap`` and returns it to the system when freed, and it shrinks the heap's top as soon as
more than the trim threshold lies free there. Both thresholds start small and grow with what the
process frees, so a run whose tensors change size from pass to pass (prefill passes of 2 to 70
prompts, packed training steps, KL batches) keeps giving memory back and faulting it in again,
page by page. Measured on the published configuration's 67 longest prompts, prefilled in
their 7 passes three times in one process: 11.2-12.9 s after the first call, 8.4-8.7 s with the
thresholds fixed as below (benchmarks/README.md, "Third round"). The arithmetic is the same, bit
for bit: only where memory comes from changes.

``keep_heap`` fixes the mmap threshold at glibc's largest (32 MiB: smaller blocks come from the
heap) and the trim threshold at 256 MiB (at most that much freed memory stays with the process).
It leaves the heap alone where a ``MALLOC_*`` or ``GLIBC_TUNABLES`` environment variable already
says how, and off glibc."""

from __future__ import annotations

import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 256 * 2**20


def keep_heap() -> bool:
    """Fix glibc's thresholds for this process (module docstring); whether they were set."""
    if not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ or any(
            name.startswith("MALLOC_") for name in os.environ):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # mallopt returns 1 on success; musl's is a stub that returns 0
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
