"""The suite interface: a suite scores one model and returns metrics, per-item outputs
and, for anything it could not score, the reason.

A suite is a class registered with ``@register_suite`` that sets ``name`` and
``description``, optionally an ``Options`` dataclass, and implements ``evaluate``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness.config import RunConfig, apply_settings
from harness.data import DataSource, Direction
from harness.generation import Decoding, Generator, Request
from harness.stats import bootstrap_ci


@dataclass
class Metric:
    name: str
    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    higher_is_better: bool | None = True  # None: neither (e.g. output length)
    main: bool = False  # the suite's headline number
    note: str = ""  # e.g. the judge that produced a win rate


@dataclass
class NotScored:
    metric: str
    reason: str


@dataclass
class SuiteResult:
    metrics: list[Metric] = field(default_factory=list)
    not_scored: list[NotScored] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)  # one JSON object per item

    def add_mean(self, name: str, values: list[float], *, main: bool = False, higher_is_better: bool | None = True,
                 seed: int = 0) -> Metric:
        """Add the mean of per-item values with its 95% bootstrap CI."""
        values = [float(v) for v in values]
        low, high = bootstrap_ci(values, seed=seed)
        metric = Metric(name, sum(values) / len(values) if values else float("nan"), len(values), low, high,
                        higher_is_better, main)
        self.metrics.append(metric)
        return metric


@dataclass
class SuiteContext:
    """Everything a suite may use to score one model."""

    label: str  # "original" or "<method>/seed<k>"
    model: Any  # the evaluated model (a PeftModel when an adapter is on)
    tokenizer: Any
    generator: Generator  # the evaluated model, through the generation cache
    original_generator: Generator
    data: DataSource
    directions: list[Direction]
    config: RunConfig
    workdir: Path  # this suite's folder for this model (artefacts beyond outputs)
    original_model_fn: Any = None  # () -> context manager yielding the original model
    size: int | None = None  # this suite's items (config.suite_sizes); None: config.eval_size

    @property
    def eval_size(self) -> int | None:
        return self.size if self.size is not None else self.config.eval_size

    @property
    def data_seed(self) -> int:
        return self.config.data_seed

    def original_model(self):
        """Context manager giving the frozen original model (the adapter disabled when possible)."""
        if self.original_model_fn is not None:
            return self.original_model_fn()
        if hasattr(self.model, "disable_adapter"):
            return _yield_after(self.model.disable_adapter(), self.model)
        return contextlib.nullcontext(self.model)


@contextlib.contextmanager
def _yield_after(manager, value):
    with manager:
        yield value


@dataclass
class NoOptions:
    pass


class Suite:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_settings(cls, settings: dict | None) -> "Suite":
        options = cls.Options()
        apply_settings(options, settings or {}, f"suite_options [{cls.name}]")
        return cls(options)

    def options_dict(self) -> dict:
        return dataclasses.asdict(self.options)

    def requests(self, ctx: SuiteContext) -> list[tuple[Request, Decoding]]:
        """The generations ``evaluate`` will ask of ``ctx.generator`` (optional). The runner
        generates every pending suite's requests to one model in one batch first, so
        ``evaluate`` then finds them in the cache; a suite that returns none loses nothing."""
        return []

    def evaluate(self, ctx: SuiteContext) -> SuiteResult:
        raise NotImplementedError

    def item_stats(self, outputs: list[dict]) -> dict[str, "ItemStats"]:
        """Per-item additive statistics of this suite's metrics, from ``evaluate``'s
        outputs (optional). The report resamples them (paired over items, and over seeds)
        for the confidence interval of a difference between two methods."""
        return {}


@dataclass
class ItemStats:
    """A metric as a function of per-item vectors summed over items: ``mean`` is
    sum(x)/sum(n) over rows [x, n]; ``chrf`` and ``bleu:<tokenize>`` are sacrebleu's corpus
    scores of summed sufficient statistics. No text: safe to publish beside the scores."""

    kind: str
    ids: list[str]
    rows: list[list[float]]

    @classmethod
    def mean(cls, ids, values) -> "ItemStats":
        return cls("mean", [str(i) for i in ids], [[float(v), 1.0] for v in values])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "ids": self.ids, "rows": self.rows}
