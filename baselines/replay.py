"""Replay: mix general instruction data into the translation data at a set ratio.

The budget stays the same (steps x batch), so replayed examples take the place of
translation examples rather than adding steps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from harness.data import GENERAL_SETS
from harness.errors import UserError
from harness.methods import Method, MethodContext, Segment, TrainingExample
from harness.prompts import translation_prompt, user_turn
from harness.registry import register_method


@dataclass
class ReplayOptions:
    replay_set: str = field(default="alpaca", metadata={"help": "General instruction set to replay (a name known to the data loader, e.g. alpaca)."})
    ratio: float = field(default=0.25, metadata={"help": "Share of replayed examples in the training list (0 <= ratio < 1)."})


@register_method
class Replay(Method):
    name = "replay"
    description = "Translation data mixed with replayed general instruction data (e.g. Alpaca) at a set ratio."
    Options = ReplayOptions

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        o = self.options
        if not 0.0 <= o.ratio < 1.0:
            raise UserError(f"replay.ratio must be at least 0 and below 1, got {o.ratio}.")
        if o.replay_set not in GENERAL_SETS:
            raise UserError(f"replay.replay_set '{o.replay_set}' is unknown; use one of {', '.join(GENERAL_SETS)}.")
        translation = [TrainingExample(user_turn(translation_prompt(p)), [Segment(p.reference)]) for p in ctx.pairs]
        wanted = round(o.ratio / (1.0 - o.ratio) * len(translation))
        pool = [i for i in ctx.data.general(o.replay_set) if i.reference] if wanted else []
        if wanted and not pool:
            raise UserError(f"The {o.replay_set} set has no instructions with reference answers to replay; choose another replay.replay_set.")
        rng = random.Random(ctx.seed)
        # without replacement while the pool is large enough, so no instruction repeats needlessly
        picked = rng.sample(pool, wanted) if wanted <= len(pool) else rng.choices(pool, k=wanted)
        replay = [TrainingExample(user_turn(i.prompt), [Segment(i.reference, 1.0, "replay")], source="replay") for i in picked]
        ctx.stats.update(replay_set=o.replay_set, replay_examples=len(replay), translation_examples=len(translation))
        return translation + replay
