"""Every check a run makes before any compute (the dry run makes the same ones): the run
directory, the suites' and methods' options, the data each reads and its sizes, the model,
and, for published runs, that the code is committed."""

from __future__ import annotations

import os
from typing import Any

from harness import versions
from harness.data.sources import MissingData, sample
from harness.errors import UserError
from harness.model.loading import check_model


def check_plan(plan, missing_ok: bool = False) -> dict:
    """Check everything the run needs and return every size it will use, read from the
    real files (also kept as ``plan.sizes``). With ``missing_ok`` (the dry run) a direction or
    set whose data is missing is listed under ``missing`` with the error a real run would
    stop with."""
    _check_out(plan)
    for suite in plan.suites.values():
        suite.check_ranges()
    notes = [f"{name}: {note}" for name, suite in plan.suites.items() for note in suite.check()]
    translation, general, missing = {}, {}, {}
    for d in plan.directions:
        try:
            train, test = plan.data.translation(d, "train"), plan.data.translation(d, "test")
        except MissingData as err:
            if not missing_ok:
                raise
            missing[d.name] = str(err)
            continue
        if not train or not test:
            raise UserError(f"The {d.name} {'training' if not train else 'test'} data in {plan.data.label} is empty; "
                            "give it at least one pair.")
        used = sample(train, plan.cfg.train_size, plan.cfg.data_seed)
        translation[d.name] = {
            "train_available": len(train), "train_used": len(used),
            "train_chars_used": sum(len(p.source) + len(p.reference) for p in used),
            "test_available": len(test), "test_used": len(sample(test, plan.size(plan.task_suite()), plan.cfg.data_seed)),
        }
    readers: dict[str, tuple[Any, list[str]]] = {}
    for name, suite in plan.suites.items():
        for spec in suite.uses_data():
            readers.setdefault(spec.name, (spec, []))[1].append(name)
    for label, method in plan.methods.items():
        for spec in method.uses_data():
            readers.setdefault(spec.name, (spec, []))
    for name, (spec, suites) in sorted(readers.items()):
        try:
            rows = plan.data.general(spec)
        except MissingData as err:
            if not missing_ok:
                raise
            missing[name] = str(err)
            continue
        if not rows:
            raise UserError(f"The {name} set in {plan.data.label} is empty; give it at least one row.")
        sizes = [plan.size(s) for s in suites]
        general[name] = {"available": len(rows),
                         "used": len(sample(rows, None if None in sizes else max(sizes), plan.cfg.data_seed)) if suites else None}
    sizes = {"model": check_model(plan.cfg.model), "data": plan.data.label, "pairs": translation, "general": general}
    if missing:
        sizes["missing"] = missing
    if notes:
        sizes["notes"] = notes
    plan.sizes = sizes
    return sizes

def _check_out(plan) -> None:
    out = plan.run_dir
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; give a run directory (it is created if missing).")
    parent = next((p for p in [out, *out.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, so the run directory cannot be created there; choose another --out.")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {parent} is not writable; choose another --out.")


def refuse_uncommitted_code(plan, status: dict) -> None:
    """With ``require_clean_code``, stop before any compute when a unit is to be computed
    while radis-bench's source has uncommitted changes (reused units are fine)."""
    if not plan.cfg.require_clean_code or not (status["todo_train"] or status["todo_eval"]):
        return
    changes = versions.source_changes()
    if changes:
        shown = ", ".join(line[3:] for line in changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise UserError(f"require_clean_code is set and radis-bench's source has uncommitted changes ({shown}); "
                        "commit or stash them before computing units, or unset require_clean_code.")
