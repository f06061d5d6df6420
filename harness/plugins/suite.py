"""The suite interface: a suite scores one model and returns metrics, per-item outputs
and, for anything it could not score, the reason.

A suite is a ``Suite`` subclass, registered as an entry point (see ``harness.plugins.registry``),
that sets ``name`` and ``description``, optionally an ``Options`` dataclass, and
implements ``evaluate``. It declares what the engine would otherwise have to know about
it: the ``data_sets`` it reads, its ``metrics`` (unit, direction, main, shown), the
external models it needs as its own options (checked by ``check`` before any compute),
and the generations it asks of the evaluated model (``requests``) and of the original
(``original_requests``), which the engine decodes in one wide batch and plans and
estimates from. An option whose field metadata names ``run_default`` takes that run
setting when left unset (e.g. ``max_new_tokens``); one with an ``alias`` can be set by a
run-level name (``--comet-model`` sets ``translation.comet_model``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness.config.settings import RunConfig
from harness.data.records import Direction
from harness.data.sources import DataSource
from harness.intervals import bootstrap_ci
from harness.plugins.options import Configurable
from harness.plugins.requests import Decoding, Request


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


@dataclass(frozen=True)
class MetricSpec:
    """What a suite says about one of its metrics. ``name`` is the metric's last part: a
    spec "chrf++" covers "de-en/chrf++" and "avg/chrf++"."""

    name: str
    unit: str
    higher_is_better: bool | None = True  # None: neither (e.g. output length)
    main: bool = False  # the suite's headline number
    shown: bool = False  # in the leaderboard's table of other metrics (leaderboard.csv keeps every metric)
    margin: float | None = None  # the largest difference still called "no difference" (harness.report.claims); None: never

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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

    label: str  # "original" or "<label>-seed<k>"
    model: Any = None  # the evaluated model (merged weights); None while planning
    tokenizer: Any = None
    generator: Any = None  # the evaluated model's generator (harness.model.generation), through its cache
    original_generator: Any = None
    data: DataSource | None = None
    directions: list[Direction] = field(default_factory=list)
    config: RunConfig | None = None
    workdir: Path | None = None  # this suite's folder for this model (artefacts beyond outputs)
    original_model_fn: Any = None  # () -> context manager yielding the original model
    size: int | None = None  # this suite's items (config.suite_sizes); None: config.eval_size
    shared_dir: Path | None = None  # this suite's folder for the whole run (work done once for every model)

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


class Suite(Configurable):
    # "task": scores the skill being taught (its main metric is the trade-off plot's x axis);
    # "general": an ability that should not be lost
    role: ClassVar[str] = "general"
    uses_directions: ClassVar[bool] = False  # reads the run's translation directions
    compares_with_original: ClassVar[bool] = False  # its scores depend on the original model too

    def __init__(self, options: Any = None, defaults: dict | None = None):
        """``defaults``: the run settings that options left unset and naming a ``run_default``
        take (resolved once, here; the run's defaults when not given)."""
        self.options = options if options is not None else self.Options()
        self.defaulted: set[str] = set()  # options that took their run setting
        if defaults is None:
            defaults = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}
        for f in dataclasses.fields(self.options):
            source = f.metadata.get("run_default")
            if source and getattr(self.options, f.name) is None and defaults.get(source) is not None:
                setattr(self.options, f.name, defaults[source])
                self.defaulted.add(f.name)

    @classmethod
    def from_settings(cls, settings: dict | None, defaults: dict | None = None) -> "Suite":
        """The suite with ``settings``, unset options resolved from ``defaults`` (see __init__)."""
        return cls(cls.parse_options(settings, f"suite_options [{cls.name}]"), defaults)

    def legacy_options(self) -> dict | None:
        """The options as the first key scheme hashed them (run-level settings not yet moved
        into suites, defaults not yet resolved), to migrate run directories made by it; None
        as for ``options_before_versions``."""
        out = self.options_before_versions()
        if out is None:
            return None
        for f in dataclasses.fields(self.options):
            if f.name not in out:
                continue
            if f.metadata.get("alias"):
                out.pop(f.name)
            elif f.name in self.defaulted:
                out[f.name] = None
        return out

    def metrics(self) -> list[MetricSpec]:
        """The metrics this configured suite reports (units, directions, main, shown)."""
        return []

    def check(self) -> list[str]:
        """Raise ``UserError`` for options or named external resources (judge, checkpoint,
        classifier) that cannot work beyond their declared ranges (checked first,
        ``check_ranges``); return notes for the plan (e.g. "not in the local hub cache").
        Called before any compute."""
        return []

    def requests(self, ctx: SuiteContext) -> list[tuple[Request, Decoding]]:
        """The generations ``evaluate`` will ask of ``ctx.generator``. The engine decodes
        every pending suite's requests to one model in one batch first, so ``evaluate``
        then finds them in the cache; the plan and the cost estimate count them."""
        return []

    def original_requests(self, ctx: SuiteContext) -> list[tuple[Request, Decoding]]:
        """Generations ``evaluate`` asks of the original model whichever model it scores
        (generated once per run, with the original's own work)."""
        return []

    def planned_generations(self, ctx: SuiteContext) -> list[int]:
        """Generation limits of everything one evaluated model generates (for the estimate);
        by default those of ``requests``."""
        return [decoding.max_new_tokens for _, decoding in self.requests(ctx)]

    def evaluate(self, ctx: SuiteContext) -> SuiteResult:
        raise NotImplementedError

    def score_outputs(self, outputs: list[dict]) -> SuiteResult | None:
        """The metrics of saved per-item outputs under this suite's options, generating
        nothing (optional; ``radis-bench rescore`` uses it). None: the suite cannot."""
        return None

    def item_stats(self, outputs: list[dict]) -> dict[str, "ItemStats"]:
        """Per-item additive statistics of this suite's metrics, from ``evaluate``'s
        outputs (optional). The report resamples them (paired over items, and over seeds)
        for the confidence interval of a difference between two methods."""
        return {}


@dataclass
class ItemStats:
    """A metric as a function of per-item vectors summed over items: ``mean`` is
    sum(x)/sum(n) over rows [x, n]; ``chrf`` and ``bleu:<tokenize>`` are sacrebleu's corpus
    scores of summed sufficient statistics. With ``groups`` (one label per item, e.g. the
    translation direction) the metric is the mean over groups of each group's metric. No
    text: safe to publish beside the scores."""

    kind: str
    ids: list[str]
    rows: list[list[float]]
    groups: list[str] | None = None

    @classmethod
    def mean(cls, ids, values) -> "ItemStats":
        return cls("mean", [str(i) for i in ids], [[float(v), 1.0] for v in values])

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "ids": self.ids, "rows": self.rows}
        if self.groups is not None:
            out["groups"] = self.groups
        return out
