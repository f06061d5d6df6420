"""The method interface: a method says what data and loss it trains on; the harness
owns how (one trainer, one generator, one budget). Methods never run a training loop.

A method is a class registered with ``@register_method`` that sets ``name`` and
``description``, optionally an ``Options`` dataclass (its settings, recorded in the
manifest), and implements ``build_training_examples``. It may add ``extra_loss``
(called by the trainer on every micro-batch) and ``after_training``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness.config import Budget, apply_settings
from harness.data import DataSource, TranslationPair
from harness.generation import Generator


@dataclass
class Segment:
    """A span of the assistant response with its loss weight."""

    text: str
    weight: float = 1.0
    kind: str = "target"  # "target", "rationale", "replay", ... (for token accounting)


@dataclass
class TrainingExample:
    """Chat turns before the trained response, then the response as weighted spans.

    The trainer masks the prompt, tokenises each span, and appends the end-of-turn token
    with the weight of the last span.
    """

    messages: list[dict]
    response: list[Segment]
    source: str = "translation"

    @property
    def response_text(self) -> str:
        return "".join(s.text for s in self.response)


@dataclass
class MethodContext:
    """What a method may use to build its data."""

    pairs: list[TranslationPair]
    original: Generator  # the frozen original model, through the generation cache
    data: DataSource
    budget: Budget
    seed: int
    stats: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest


@dataclass
class NoOptions:
    pass


class Method:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    extension: ClassVar[bool] = False  # beyond the paper's set of methods
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_settings(cls, settings: dict | None) -> "Method":
        options = cls.Options()
        apply_settings(options, settings or {}, f"method_options [{cls.name}]")
        return cls(options)

    def options_dict(self) -> dict:
        return dataclasses.asdict(self.options)

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        raise NotImplementedError

    # Optional: an extra loss term added to the trainer's loss on each micro-batch.
    # ``batch`` holds input_ids, attention_mask, labels, weights; ``outputs`` the model outputs.
    extra_loss = None

    def after_training(self, model, original_state: dict | None = None):
        """Post-process the trained model (e.g. weight interpolation); returns the model."""
        return model
