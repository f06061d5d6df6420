"""Replay: mix general instruction data into the translation data at a set ratio.

The budget stays the same (steps x batch), so replayed examples take the place of
translation examples rather than adding steps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from baselines.vanilla import reference_examples
from harness.api import DataSet, Method, MethodContext, Segment, TrainingExample, UserError, data_set, user_turn

ALPACA = DataSet("alpaca", "alpaca/alpaca_train.json", {"instruction": "instruction", "input": "input", "reference": "output"},
                 hub="tatsu-lab/alpaca", hub_split="train", optional=("input",))


@dataclass
class ReplayOptions:
    replay_set: str = field(default="alpaca", metadata={"help": "General instruction set to replay (a data set some installed plugin declares, e.g. alpaca)."})
    ratio: float = field(default=0.25, metadata={"help": "Share of replayed examples in the training list.", "min": 0, "below": 1})


class Replay(Method):
    name = "replay"
    description = "Translation data mixed with replayed general instruction data (e.g. Alpaca) at a set ratio."
    citation = "experience replay of general instruction data, the baseline RaDis's reviewers asked for"
    Options = ReplayOptions
    data_sets = (ALPACA,)

    def check(self) -> None:
        self.uses_data()  # an unknown replay_set fails here; ratio's range is declared on the options

    def uses_data(self) -> list[DataSet]:
        return [data_set(self.options.replay_set)]

    def build_training_examples(self, ctx: MethodContext) -> list[TrainingExample]:
        o = self.options
        translation = reference_examples(ctx)
        wanted = round(o.ratio / (1.0 - o.ratio) * len(translation))
        pool = [i for i in ctx.data.general(self.uses_data()[0]) if i.reference] if wanted else []
        if wanted and not pool:
            raise UserError(f"The {o.replay_set} set has no instructions with reference answers to replay; choose another replay.replay_set.")
        rng = random.Random(ctx.seed)
        # without replacement while the pool is large enough, so no instruction repeats needlessly
        picked = rng.sample(pool, wanted) if wanted <= len(pool) else rng.choices(pool, k=wanted)
        replay = [TrainingExample(user_turn(i.prompt), [Segment(i.reference, 1.0, "replay")], source="replay") for i in picked]
        ctx.stats.update(replay_set=o.replay_set, replay_examples=len(replay), translation_examples=len(translation))
        return translation + replay
