"""The method interface: a method says what data and loss it trains on; the harness
owns how (one trainer, one generator, one budget). Methods never run a training loop.

A method is a ``Method`` subclass, registered as an entry point (see ``harness.plugins.registry``),
that sets ``name`` and ``description``, optionally an ``Options`` dataclass (its settings,
recorded in the manifest and part of its unit keys) and implements
``build_training_examples``. It declares what the engine plans and checks before any
compute: ``data_sets`` it reads, ``check`` of its options, and ``original_requests``, the
generations it asks of the frozen original model (generated in one wide batch with the
original's other work, then found in the cache). Optional hooks: ``extra_loss`` (called
by the trainer on every micro-batch), ``prepare_model`` (after the adapter is attached,
before the optimiser is built) and ``after_training``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness.config.settings import Budget
from harness.data.records import TranslationPair
from harness.data.sources import DataSource
from harness.plugins.options import Configurable
from harness.plugins.requests import Decoding, Request


@dataclass
class Segment:
    """A span of the assistant response with its loss weight.

    The trainer tokenises consecutive text segments as one text (each token weighted by
    the segment its first character falls in), so splitting a response into segments never
    changes its tokens. A segment with ``ids`` is put in as exactly those tokens, e.g. a
    continuation the original model generated after the preceding text.
    """

    text: str
    weight: float = 1.0
    kind: str = "target"  # "target", "rationale", "replay", ... (for token accounting)
    ids: list[int] | None = None


@dataclass
class TrainingExample:
    """Chat turns before the trained response, then the response as weighted spans.

    The trainer masks the prompt, tokenises the response, and appends the chat template's
    end-of-turn marker unless ``end_of_turn`` is False, with the weight ``end_weight`` (by
    default the last span's).
    """

    messages: list[dict]
    response: list[Segment]
    source: str = "task"
    end_of_turn: bool = True
    end_weight: float | None = None  # the end-of-turn tokens' loss weight; None: the last span's

    @property
    def response_text(self) -> str:
        return "".join(s.text for s in self.response)


@dataclass
class MethodContext:
    """What a method may use to build its data. ``original`` is None while planning."""

    pairs: list[TranslationPair]
    original: Any  # the frozen original model's generator (harness.model.generation), through its cache
    data: DataSource
    budget: Budget
    seed: int
    stats: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest


class Method(Configurable):
    citation: ClassVar[str] = ""  # the paper, shown by `radis-bench list`
    extension: ClassVar[bool] = False  # beyond the paper's set of methods
    is_baseline: ClassVar[bool] = False  # the plain fine-tuning every other method is compared with
    # how the original model's generations enter the training targets, for the cost estimate:
    # "none", "replaces" (the reference) or "appended" (after the reference)
    generation_in_target: ClassVar[str] = "none"

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_settings(cls, settings: dict | None, where: str | None = None) -> "Method":
        return cls(cls.parse_options(settings, where or f"method_options [{cls.name}]"))

    def generates_with_original(self) -> bool:
        """Whether the method builds its data with the original model's generations."""
        return type(self).original_requests is not Method.original_requests

    def check(self) -> None:
        """Raise ``UserError`` for options that cannot work beyond their declared ranges
        (checked first, ``check_ranges``); called before any compute."""

    def original_requests(self, ctx: MethodContext) -> list[tuple[Request, Decoding]]:
        """What ``build_training_examples`` will ask of the original model (from the pairs
        and the options alone): planned, estimated and generated ahead in one batch."""
        return []

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        raise NotImplementedError

    # Optional: an extra loss term added to the trainer's loss on each micro-batch.
    # ``batch`` holds input_ids, attention_mask, weights; ``outputs`` the model outputs.
    extra_loss = None
    # Forward passes of the original (the adapter off, no backward) that ``extra_loss`` makes over
    # each micro-batch (kl: 1), so that ``budget.equalise: compute`` can count a step before it runs.
    reference_passes: ClassVar[int] = 0

    def prepare_model(self, model, tokenizer, seed: int) -> None:
        """Called once the adapter is attached and seeded, before the optimiser is built:
        e.g. freeze some trainable parameters, or record the starting point of a penalty."""

    def after_training(self, model, original_state: dict | None = None):
        """Post-process the trained model (e.g. weight interpolation); returns the model."""
        return model
