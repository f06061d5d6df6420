"""The ranges settings may take, declared on their dataclass fields and checked by one
function, for the run's settings (``RunConfig``, ``Budget``, ``LoRASettings``, ``Analysis``)
and every method's and suite's options alike.

A field's metadata may declare bounds: ``above`` and ``below`` (exclusive), ``min`` and
``max`` (inclusive). A bound is a number, or the name of a number in the model's shape
(``MODEL_SHAPE``: ``num_hidden_layers``, ``vocab_size``, ``max_position_embeddings``,
``hidden_size``), which is known once the model's config.json is read
(``harness.model.shape``, no weights loaded): such a bound is checked when the shape is
given and skipped before. A list or tuple of numbers (``seeds``) has each item checked.
A numeric field that takes any value says why in ``why_no_range`` instead (e.g. a seed of
a random draw); ``tests/test_ranges.py`` holds every registered option to one of the two.
"""

from __future__ import annotations

import math
import operator
from dataclasses import Field, fields
from typing import Any

from harness.errors import UserError

BOUNDS = {"above": (operator.gt, "above"), "min": (operator.ge, "at least"),
          "below": (operator.lt, "below"), "max": (operator.le, "at most")}
# the numbers of a model's shape a bound may name (read from its config.json by harness.model.shape)
MODEL_SHAPE = ("num_hidden_layers", "vocab_size", "max_position_embeddings", "hidden_size")


def declared_bounds(f: Field) -> list[tuple[str, float | str]]:
    """The bounds a field declares, as (kind, number or model-shape name)."""
    return [(kind, f.metadata[kind]) for kind in BOUNDS if kind in f.metadata]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def range_text(bounds: list[tuple[str, float, str]]) -> str:
    """'positive', '0 or more', 'between 0 and 1', 'at least 0 and below 30 (the model's num_hidden_layers)'."""
    kinds = [kind for kind, _, _ in bounds]
    plain = all(not why for _, _, why in bounds)
    if plain and bounds == [("above", 0, "")]:
        return "positive"
    if plain and bounds == [("min", 0, "")]:
        return "0 or more"
    if plain and kinds == ["min", "max"]:
        return f"between {bounds[0][1]:g} and {bounds[1][1]:g}"
    parts = [f"{BOUNDS[kind][1]} {bound:g}{why}" for kind, bound, why in bounds]
    return " and ".join(["positive" if part == "above 0" else part for part in parts])


def setting_name(owner: str, name: str) -> str:
    """How a message names a field: ``radis.rationale_weight``, ``budget.steps``; a run
    setting (no owner) by its command-line option, ``--eval-size``."""
    return f"{owner}.{name}" if owner else "--" + name.replace("_", "-")


def check_ranges(settings: Any, owner: str, shape: dict | None = None) -> None:
    """One sentence for the first value outside the range its field declares; bounds that
    name the model's shape are checked only with ``shape``."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, float) and not math.isfinite(item):  # inf passes a lower bound; no setting means it
                raise UserError(f"{setting_name(owner, f.name)} must be a finite number, got {item:g}.")
        bounds = []
        for kind, bound in declared_bounds(f):
            if not isinstance(bound, str):
                bounds.append((kind, bound, ""))
            elif shape is not None and _is_number(shape.get(bound)):
                bounds.append((kind, shape[bound], f" (the model's {bound})"))
        if not bounds:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if _is_number(item) and not all(BOUNDS[kind][0](item, bound) for kind, bound, _ in bounds):
                raise UserError(f"{setting_name(owner, f.name)} must be {range_text(bounds)}, got {item:g}.")
