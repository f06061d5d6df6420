"""On-task KL: the retention suite's divergence, measured on the training task's own inputs.

RL's Razor (Shenfeld, Pari and Agrawal 2025, arXiv 2509.04259) finds forgetting predicted by
KL(original || fine-tuned) on the *new task's* inputs rather than on general ones: a method
that learns the task while moving the model little there forgets little elsewhere. This suite
measures exactly retention's quantities (``suites.retention``: ``kl`` with its stop and
content parts, the NLL change, the model's own finished share and length) on held-out
prompts of the task: the translation prompts of the run's test sets, the same seeded sample
the translation suite scores (at this suite's size), and the original's greedy translations
of them. Those answers and the evaluated model's own are the translation suite's requests
at the same limit, so with both suites in a run they are generated once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.api import SuiteContext, UserError, generation_limit, sample, translation_prompt
from suites.retention import DivergenceSuite


@dataclass
class TaskKLOptions:
    max_new_tokens: int | None = generation_limit("Length limit of the original's translations")
    batch_size: int = field(default=8, metadata={"help": "Sequences per teacher-forced forward pass at most.", "above": 0})


class TaskKLSuite(DivergenceSuite):
    name = "task_kl"
    description = ("Judge-free distance from the original on its own translations of held-out test sources "
                   "(RL's Razor's on-task KL): KL split into stopping and content, NLL change, own finished share.")
    Options = TaskKLOptions
    uses_directions = True
    version = 2  # 2 (issue 36): the teacher-forced passes of retention's version 3
    note = "KL(original || evaluated) per answer token, on the original's greedy translations of held-out test sources"

    def prompts(self, ctx: SuiteContext) -> list[tuple[str, str]]:
        items = []
        for direction in ctx.directions:
            pairs = ctx.data.translation(direction, "test")
            if not pairs:
                raise UserError(f"The {direction.name} test set in {ctx.data.label} is empty; give it at least one pair.")
            items += [(f"{direction.name}/{i}", translation_prompt(p))
                      for i, p in sample(list(enumerate(pairs)), ctx.eval_size, ctx.data_seed)]
        return items
