"""The typed records the harness reads from benchmark files, and the translation directions:
what a method or suite receives, whatever data source it came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from harness.errors import UserError

LANGUAGES = {
    "en": "English",
    "de": "German",
    "cs": "Czech",
    "ru": "Russian",
    "zh": "Chinese",
    "is": "Icelandic",
    "ja": "Japanese",
    "uk": "Ukrainian",
    "hr": "Croatian",
    "liv": "Livonian",
    "sah": "Yakut",
    "fr": "French",
    "es": "Spanish",
}


@dataclass(frozen=True)
class TranslationPair:
    """One sentence and its reference translation, in one direction."""

    src_lang: str
    tgt_lang: str
    source: str
    reference: str

    @property
    def direction(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"


@dataclass(frozen=True)
class Instruction:
    """A general-ability prompt: one or more user turns, optional reference answer and
    IFEval verifiable-instruction metadata."""

    id: str
    turns: tuple[str, ...]
    reference: str | None = None
    category: str | None = None
    instruction_ids: tuple[str, ...] = ()
    instruction_kwargs: tuple[dict, ...] = ()
    input: str = ""

    @property
    def prompt(self) -> str:
        """The first user turn, with the optional input appended (Alpaca style)."""
        return self.turns[0] + (f"\n\n{self.input}" if self.input else "")


@dataclass(frozen=True)
class HarmfulPrompt:
    """A request a safe assistant should refuse (AdvBench style)."""

    id: str
    goal: str
    target: str = ""


@dataclass(frozen=True)
class Direction:
    """A translation direction such as ``de-en``."""

    src: str
    tgt: str

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"

    @property
    def foreign(self) -> str:
        return self.tgt if self.src == "en" else self.src

    @property
    def folder(self) -> str:
        """ALMA keeps both directions of ``xx``/``en`` in ``alma/<xx>en``."""
        return f"{self.foreign}en"


def parse_directions(text: str | Sequence[str]) -> list[Direction]:
    """Parse ``de-en,en-de`` into directions; every one must pair English with a known language."""
    items = text.split(",") if isinstance(text, str) else list(text)
    directions: list[Direction] = []
    for raw in items:
        item = raw.strip()
        parts = item.split("-")
        known = ", ".join(f"{x}-en/en-{x}" for x in LANGUAGES if x != "en")
        if (
            len(parts) != 2
            or parts[0] == parts[1]
            or "en" not in parts
            or any(p not in LANGUAGES for p in parts)
        ):
            raise UserError(
                f"Unknown language pair '{item}' in --pairs: use source-target pairs with English on one side, one of {known}."
            )
        direction = Direction(parts[0], parts[1])
        if direction in directions:
            raise UserError(f"--pairs names {item} twice; give each pair once.")
        directions.append(direction)
    if not directions:
        raise UserError("--pairs is empty: give at least one pair such as de-en.")
    return directions
