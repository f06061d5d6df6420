"""What methods and suites share: their settings as an ``Options`` dataclass (in their unit
keys and the manifest), the ranges those settings may take, declared on the fields and
checked in one place before any compute, and the generation limit, declared once.

A field's metadata may give ``help`` (shown by ``--help`` and the docs), a range (``above``,
``min``, ``below``, ``max``: exclusive and inclusive bounds), ``run_default`` (a run setting
the option takes when left unset, e.g. ``max_new_tokens``), ``alias`` (a run-level name that
sets it) and ``before`` (the value that does what the code did before the option existed,
for unit keys made then: ``harness.run.keys``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from harness.config.parse import apply_settings
from harness.errors import UserError


@dataclass
class NoOptions:
    pass


def generation_limit(help: str, default: int | None = None, run_default: bool = True) -> Any:
    """The generation-limit field, always positive. A suite's takes the run's ``max_new_tokens``
    when unset (None); a method's (``run_default=False``) has a default of its own."""
    if not run_default:
        return field(default=default, metadata={"help": help, "above": 0})
    unset = "default" if default is None else "None"
    return field(default=default, metadata={"help": f"{help} ({unset}: the run's max_new_tokens).", "above": 0,
                                            "run_default": "max_new_tokens"})


RANGES = {"above": (lambda v, b: v > b, "above"), "min": (lambda v, b: v >= b, "at least"),
          "below": (lambda v, b: v < b, "below"), "max": (lambda v, b: v <= b, "at most")}


def check_ranges(options: Any, owner: str) -> None:
    """One sentence for the first option outside the range its field declares."""
    for f in fields(options):
        value = getattr(options, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        bounds = [(kind, f.metadata[kind]) for kind in RANGES if kind in f.metadata]
        if bounds and not all(RANGES[kind][0](value, bound) for kind, bound in bounds):
            wanted = " and ".join(f"{RANGES[kind][1]} {bound:g}" for kind, bound in bounds)
            wanted = "positive" if wanted == "above 0" else wanted
            raise UserError(f"{owner}.{f.name} must be {wanted}, got {value:g}.")


def options_before_versions(options) -> dict | None:
    """An options dataclass as unit keys hashed it before code versions existed (key schemes
    1 and 2, ``harness.run.keys``): without the fields added since, which declare in their
    metadata (``before``) the value that does what the code did without them. None when a
    field holds another value: no unit made before then computed this."""
    out = dataclasses.asdict(options)
    for f in fields(options):
        if "before" in f.metadata:
            if out[f.name] != f.metadata["before"]:
                return None
            out.pop(f.name)
    return out


class Configurable:
    """The part of a method or a suite that is its settings and what it reads."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    data_sets: ClassVar[tuple] = ()  # general-ability sets (``harness.data.sources.DataSet``) it may read
    # the version of its code, in its unit keys: bump it when a change moves what it computes on
    # purpose (``harness.versions``)
    version: ClassVar[int] = 1

    @classmethod
    def parse_options(cls, settings: dict | None, where: str):
        options = cls.Options()
        apply_settings(options, settings or {}, where)
        return options

    def options_dict(self) -> dict:
        return dataclasses.asdict(self.options)

    def options_before_versions(self) -> dict | None:
        """The options as unit keys hashed them before code versions existed, or None when no
        unit made then computed what these options compute (``harness.run.keys``)."""
        return options_before_versions(self.options)

    def check_ranges(self) -> None:
        """The ranges the options' fields declare (the engine calls it before ``check``)."""
        check_ranges(self.options, self.name)

    def uses_data(self) -> list:
        """The data sets this configured plugin reads (default: every declared one)."""
        return list(self.data_sets)
