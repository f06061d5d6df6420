"""Every check a run makes before any compute (the dry run makes the same ones): the run
directory, the suites' and methods' options, the data each reads and its sizes, the model
and the ranges that depend on its shape, and, for published runs, that the code is committed."""

from __future__ import annotations

import importlib.util
from typing import Any

from harness import versions
from harness.data.sources import MissingData, sample
from harness.errors import UserError
from harness.model.loading import check_model
from harness.model.shape import fewest_tokens, model_shape
from harness.paths import check_output_folder


def check_plan(plan, missing_ok: bool = False) -> dict:
    """Check everything the run needs and return every size it will use, read from the
    real files (also kept as ``plan.sizes``). With ``missing_ok`` (the dry run) a direction or
    set whose data is missing is listed under ``missing`` with the error a real run would
    stop with."""
    _check_out(plan)
    if plan.cfg.generation_backend == "vllm" and not _installed("vllm"):  # (whether torch sees a GPU needs torch, which
        # a dry run does not import: the real run checks that before any compute)
        raise UserError("generation_backend=vllm needs the vllm package, which is not installed; install it with "
                        "`pip install 'radis-bench[gpu]'` on a CUDA machine, or use --set generation_backend=transformers.")
    if plan.cfg.device == "cuda":  # asked for by name: worth importing torch for, in a dry run too
        import torch

        if not torch.cuda.is_available():
            raise UserError("device=cuda was asked for, but torch sees no CUDA GPU; use device=auto or cpu.")
    for suite in plan.suites.values():
        suite.check_ranges()
    notes = [f"{name}: {note}" for name, suite in plan.suites.items() for note in suite.check()]
    notes += _unused_settings(plan)
    translation, general, missing, sources = {}, {}, {}, []
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
        sources += [p.source for p in used]
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
    # ranges that name the model's shape: from its config.json and weight headers, no weights loaded;
    # a real run fetches or converts the model first, a dry run reads only what is local
    shape = model_shape(plan.spec.path if not missing_ok else plan.cfg.model)
    if shape is not None:
        plan.check_model_shape(shape)
        _check_room_for_responses(plan, plan.spec.path if not missing_ok else plan.cfg.model, sources)
    else:
        notes.append(f"the model's config.json is not local yet ({plan.cfg.model}): the ranges that depend on its shape "
                     "(layers, vocabulary, context, adapter targets) are checked when the run has it, before any compute")
    if missing:
        sizes["missing"] = missing
    if notes:
        sizes["notes"] = notes
    plan.sizes = sizes
    return sizes

def _unused_settings(plan) -> list[str]:
    """A note for each method's or suite's settings given (on the command line or in a config
    file) for a method or suite this run does not have: they are not used, nor checked."""
    methods = {entry.method for entry in plan.entries.values()}
    notes = []
    for kind, given, present in (("method", plan.cfg.method_options, methods), ("suite", plan.cfg.suite_options, set(plan.suites))):
        for name in sorted(set(given) - present):
            if given[name]:
                settings = ", ".join(f"{name}.{key}" for key in given[name])
                notes.append(f"{settings} not used: {name} is not among this run's {kind}s ({', '.join(sorted(present))})")
    return notes


def _check_room_for_responses(plan, model: str, sources: list[str]) -> None:
    """A budget.max_length that the shortest training prompt fills alone trains on no response
    token: a silent no-op. The source sentence is counted alone (the real prompt, with its
    instruction and chat template, is longer), so this never refuses a length that would train."""
    floor = fewest_tokens(model, sources)
    if floor is None:
        return
    for label, budget in plan.budgets.items():
        if budget.max_length <= floor:
            raise UserError(f"{plan._where(plan.entries[label], 'budget')}.max_length {budget.max_length} leaves no room for a "
                            f"response: the shortest training source alone takes {floor} tokens of this model, before the "
                            "prompt's instruction and chat template; raise budget.max_length.")


def _installed(package: str) -> bool:
    """Whether ``package`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # already imported without a spec (a stand-in module)
        return True


def _check_out(plan) -> None:
    check_output_folder(plan.run_dir, "--out", "run directory")


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
