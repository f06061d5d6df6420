"""Any EleutherAI lm-evaluation-harness task, run on the in-memory model (adapter included).

Tasks come from ``--lm-eval-tasks``; option ``include_path`` adds folders of task YAML
files (lm-eval's own ``--include_path``), e.g. a task over a local JSON file for offline
use. Every numeric metric of a task is reported as ``<task>/<metric>`` (with
``[<filter>]`` appended for filters other than lm-eval's "none"), its CI taken from
lm-eval's standard error as value +- 1.96 stderr. ``--eval-size`` becomes lm-eval's
``limit`` (the first N documents, lm-eval's convention). A task that cannot run (unknown
name, data not available offline) is reported as not scored with the reason.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field

from harness.api import Metric, NotScored, Suite, SuiteContext, SuiteResult, UserError, check_folder, interruption

Z_95 = 1.96


@dataclass
class LMEvalOptions:
    tasks: list[str] = field(default_factory=list, metadata={"help": "lm-eval task names run on each model.", "alias": "lm_eval_tasks"})
    include_path: str | None = field(
        default=None, metadata={"help": "Folder of extra lm-eval task YAML files (lm-eval's --include_path)."}
    )
    batch_size: int = field(default=8, metadata={"help": "lm-eval batch size.", "above": 0})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples (default: each task's own).", "min": 0})
    apply_chat_template: bool = field(
        default=False, metadata={"help": "Wrap prompts in the model's chat template (lm-eval's default is off)."}
    )
    bootstrap_iters: int = field(
        default=1000, metadata={"help": "lm-eval bootstrap resamples for stderrs of non-mean metrics (0: none).", "min": 0}
    )


def task_manager(include_path: str | None, tasks: list[str]):
    """lm-eval's TaskManager; the built-in catalogue (some 15 s to index) is only read when a
    task is not found in ``include_path``."""
    from lm_eval.tasks import TaskManager

    if include_path:
        path = check_folder(include_path, "lm_eval.include_path", "give a folder of lm-eval task YAML files")
        own = TaskManager(include_path=str(path), include_defaults=False)
        if all(t in own.all_tasks for t in tasks):
            return own
        return TaskManager(include_path=str(path))
    return TaskManager()


def task_metrics(task: str, results: dict, higher_is_better: dict, n: int | None) -> list[Metric]:
    """Every numeric metric of one task's lm-eval results (keys 'metric,filter'), CI from
    its 'metric_stderr,filter' entry."""
    metrics = []
    for key, value in results.items():
        metric, comma, filter_name = key.partition(",")
        if not comma or metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        stderr = results.get(f"{metric}_stderr,{filter_name}")
        low = high = None
        if isinstance(stderr, (int, float)) and not isinstance(stderr, bool):  # lm-eval writes "N/A" when it has none
            low, high = value - Z_95 * stderr, value + Z_95 * stderr
        label = metric if filter_name == "none" else f"{metric}[{filter_name}]"
        metrics.append(Metric(f"{task}/{label}", float(value), n or 0, low, high, higher_is_better.get(metric),
                              note="lm-eval; CI = value +- 1.96 stderr"))
    return metrics


class LMEvalSuite(Suite):
    name = "lm_eval"
    description = "Pass-through to lm-evaluation-harness tasks (--lm-eval-tasks) on the in-memory model."
    Options = LMEvalOptions

    def check(self) -> list[str]:
        """The task names, looked up in lm-eval's task index (YAML files only: nothing is
        downloaded or run; the built-in index takes some 10 s, so only when a task is not in
        ``include_path``)."""
        o = self.options
        if not o.tasks:
            if o.include_path:
                check_folder(o.include_path, "lm_eval.include_path", "give a folder of lm-eval task YAML files")
            return ["no tasks given (--lm-eval-tasks); the suite will report 'not run'"]
        known = task_manager(o.include_path, list(o.tasks)).all_tasks
        for task in o.tasks:
            if task not in known:
                close = difflib.get_close_matches(task, known, n=3)
                hint = f" (close: {', '.join(close)})" if close else ""
                where = " nor in lm_eval.include_path" if o.include_path else ""
                raise UserError(f"lm_eval.tasks names '{task}', which lm-eval does not know{where}{hint}; check the name "
                                "(`lm-eval --tasks list`) or add its YAML file to lm_eval.include_path.")
        return []

    def evaluate(self, ctx: SuiteContext) -> SuiteResult:
        result = SuiteResult()
        tasks = list(self.options.tasks)
        if not tasks:
            result.not_scored.append(NotScored("lm_eval", "not run: no --lm-eval-tasks"))
            return result
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        opts = self.options
        manager = task_manager(opts.include_path, tasks)
        lm = HFLM(pretrained=ctx.model, tokenizer=ctx.tokenizer, batch_size=opts.batch_size)
        for task in tasks:
            try:
                out = lm_eval.simple_evaluate(
                    model=lm, tasks=[task], limit=ctx.eval_size, num_fewshot=opts.num_fewshot, task_manager=manager,
                    apply_chat_template=opts.apply_chat_template, bootstrap_iters=opts.bootstrap_iters,
                )
            except Exception as err:  # unknown task, data not reachable offline, a task's own bug: skip that task
                if interruption(err):  # a stop that surfaced as a library's error is no failed task
                    raise
                first_line = (str(err).splitlines() or [""])[0]
                result.not_scored.append(NotScored(task, f"not scored: lm-eval task failed ({type(err).__name__}: {first_line})"))
                logging.getLogger(__name__).debug("lm-eval task %s failed", task, exc_info=True)
                continue
            for name, task_results in out["results"].items():
                n = out.get("n-samples", {}).get(name, {}).get("effective")
                result.metrics += task_metrics(name, task_results, out["higher_is_better"].get(name, {}), n)
                for sample in out.get("samples", {}).get(name, []):
                    result.outputs.append(sample_row(name, sample))
        if result.metrics:
            result.metrics[0].main = True
        return result


def sample_row(task: str, sample: dict) -> dict:
    """One lm-eval logged sample as a per-item output row."""
    arguments = sample.get("arguments") or [[""]]
    row = {
        "id": f"{task}/{sample['doc_id']}",
        "task": task,
        "filter": sample.get("filter"),
        "prompt": arguments[0][0] if arguments[0] else "",
        "output": sample.get("filtered_resps"),
        "target": sample.get("target"),
    }
    row.update({m: sample[m] for m in sample.get("metrics", []) if m in sample})
    return row
