"""The versions of the code that computes a run's units, and whether that code is committed.

A unit (a training, an evaluation) is reused while its key is unchanged; keys hash the
settings and the data, and since issue 30 also the version of every piece of code that
computes the unit. Bump a version when a change moves what that code computes *on
purpose*: per-step losses, generated tokens, scores. The golden test
(``tests/test_golden.py``) pins the per-step losses and scores of a tiny deterministic run
and fails when they move while the versions stand still. A change that only makes code
faster or clearer, with results equal to the golden test's tolerance, keeps its version.

The engine's own pieces are versioned here (the numbers are torch-free so a dry run can
compute keys); each method and suite declares its own ``version`` class attribute.

Units computed before versions existed (key schemes 1 and 2, ``harness.run.keys``) were
made by code whose version is unknown: they are reused as version-1 code only with a
warning in every run that uses them, and never once any version that applies to them has
moved past 1.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# harness/model/training.py: tokenisation of examples, the loss, the optimiser loop and schedule.
# 2 (issue 36): packed passes on a CPU, q/k/v as one product, fused AdamW: equal up to rounding
TRAINER = 2
# harness/model/generation.py with harness/model/fast_llama.py and harness/model/attention.py (and the vLLM
# backend, which shares prompts and cache keys): what a model generates for a request
GENERATOR = 1

SOURCE_ROOT = Path(__file__).resolve().parent.parent
# everything in the checkout but published reports and prose can change a unit's result
NOT_CODE = (":(exclude)reports", ":(exclude,glob)**/*.md")


def training_code(method) -> dict:
    """The code versions a training of ``method`` depends on: the trainer, the method and,
    when the method builds its data by generating with the original model or samples during
    training, the generator."""
    code = {"trainer": TRAINER, "method": type(method).version}
    if method.generates_with_original() or method.sample_step is not None:
        code["generator"] = GENERATOR
    return code


def evaluation_code(suite) -> dict:
    """The code versions an evaluation by ``suite`` depends on (the evaluated model's own
    training is in its model key)."""
    return {"suite": type(suite).version, "generator": GENERATOR}


def all_first(code: dict) -> bool:
    """Whether every version in ``code`` is still 1, the code that unversioned units were made by."""
    return all(v == 1 for v in code.values())


def source_changes(root: Path = SOURCE_ROOT) -> list[str] | None:
    """Uncommitted changes to the code a unit's result can depend on, as ``git status
    --porcelain`` lines (untracked files included); None when radis-bench does not run from a
    git checkout (an installed package: its version is recorded instead). Reports and run
    directories inside the checkout are not code and do not count."""
    try:
        inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                                timeout=10)
        if inside.returncode != 0 or Path(inside.stdout.strip()).resolve() != root.resolve():
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", ".", *NOT_CODE],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if status.returncode != 0:
        return None
    return [line for line in status.stdout.splitlines() if line.strip()]
