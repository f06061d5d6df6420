"""What methods and suites share: their settings as an ``Options`` dataclass (in their unit
keys and the manifest), the ranges those settings may take, declared on the fields and
checked in one place before any compute, and the generation limit, declared once.

A field's metadata may give ``help`` (shown by ``--help`` and the docs), a range (``above``,
``min``, ``below``, ``max``: exclusive and inclusive bounds; a bound may instead name a
number of the model's shape, ``num_hidden_layers``, ``vocab_size``,
``max_position_embeddings`` or ``hidden_size``, checked once the model's config.json is read,
still before any compute: ``harness.config.ranges``), ``why_no_range`` (for a number that
takes any value, the reason: every numeric option declares a range or this),
``run_default`` (a run setting the option takes when left unset, e.g. ``max_new_tokens``),
``alias`` (a run-level name that sets it) and ``before`` (the value that does what the code
did before the option existed, for unit keys made then: ``harness.run.keys``). Ranges and
other metadata are not part of unit keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from harness.config.parse import apply_settings
from harness.config.ranges import check_ranges


@dataclass
class NoOptions:
    pass


# a generation limit is positive and fits the model's context
LIMIT_RANGE = {"above": 0, "max": "max_position_embeddings"}


def generation_limit(help: str, default: int | None = None, run_default: bool = True) -> Any:
    """The generation-limit field: positive and within the model's context; it changes what is
    generated (``generation``: a rescore of saved outputs cannot vary it). A suite's takes
    the run's ``max_new_tokens`` when unset (None); a method's (``run_default=False``) has a
    default of its own."""
    if not run_default:
        return field(default=default, metadata={"help": help, **LIMIT_RANGE, "generation": True})
    unset = "default" if default is None else "None"
    return field(default=default, metadata={"help": f"{help} ({unset}: the run's max_new_tokens).", **LIMIT_RANGE,
                                            "run_default": "max_new_tokens", "generation": True})


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

    def check_ranges(self, shape: dict | None = None) -> None:
        """The ranges the options' fields declare (the engine calls it before ``check``, and
        again with the model's ``shape`` for bounds that name it)."""
        check_ranges(self.options, self.name, shape)

    def uses_data(self) -> list:
        """The data sets this configured plugin reads (default: every declared one)."""
        return list(self.data_sets)
