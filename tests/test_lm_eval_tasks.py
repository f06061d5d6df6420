"""The lm-eval pass-through, run for real and offline: a task YAML over a local JSON file,
found through the suite's include_path."""

import json

import pytest

from harness.config.settings import RunConfig
from harness.data.sources import DataSource
from harness.errors import UserError
from harness.plugins.suite import NotScored, SuiteContext
from conftest import configured
from suites.lm_eval_tasks import LMEvalSuite, task_metrics

TASK_YAML = """\
task: tiny_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

HUB_TASK_YAML = """\
task: tiny_hub
dataset_path: nobody/not-downloadable-offline
output_type: multiple_choice
test_split: test
doc_to_text: "{{question}}"
doc_to_target: 0
doc_to_choice: ["a", "b"]
metric_list:
  - metric: acc
"""


@pytest.fixture
def task_dir(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    rows = [{"question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1), "a dog"], "answer": i % 3}
            for i in range(6)]
    data = folder / "tiny_sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "tiny_sums.yaml").write_text(TASK_YAML.format(data=data), encoding="utf-8")
    (folder / "tiny_hub.yaml").write_text(HUB_TASK_YAML, encoding="utf-8")
    return folder


def make_context(model, tokenizer, tmp_path, tasks, eval_size=4) -> SuiteContext:
    config = RunConfig(eval_size=eval_size, suite_options={"lm_eval": {"tasks": tasks}})
    return SuiteContext("m", model, tokenizer, None, None, DataSource.open(None), [], config, tmp_path / "work")


def suite(task_dir, ctx):
    return configured(LMEvalSuite, ctx, include_path=str(task_dir), batch_size=2)


def test_no_tasks_is_not_run(tiny_model, tiny_tokenizer, tmp_path):
    result = configured(LMEvalSuite, ctx := make_context(tiny_model, tiny_tokenizer, tmp_path, [])).evaluate(ctx)
    assert result.metrics == [] and result.not_scored == [NotScored("lm_eval", "not run: no --lm-eval-tasks")]


def test_local_task_runs_and_failures_are_not_scored(tiny_model, tiny_tokenizer, tmp_path, task_dir):
    ctx = make_context(tiny_model, tiny_tokenizer, tmp_path, ["tiny_sums", "tiny_hub"])
    result = suite(task_dir, ctx).evaluate(ctx)

    (acc,) = result.metrics
    assert acc.name == "tiny_sums/acc" and acc.main and acc.higher_is_better is True
    assert acc.n == 4 and 0.0 <= acc.value <= 1.0
    assert acc.ci_low <= acc.value <= acc.ci_high
    # the accuracy is the share of documents whose highest-likelihood choice is the target
    assert [row["id"] for row in result.outputs] == [f"tiny_sums/{i}" for i in range(4)]
    picks = [max(range(3), key=lambda c: row["output"][c][0]) == row["target"] for row in result.outputs]
    assert [row["acc"] for row in result.outputs] == [float(p) for p in picks]
    assert acc.value == pytest.approx(sum(picks) / 4)
    assert result.outputs[0]["prompt"] == "Question: What is 0 plus 0?\nAnswer:"

    (failed,) = result.not_scored
    assert failed.metric == "tiny_hub" and failed.reason.startswith("not scored: lm-eval task failed")


def test_the_adapter_is_evaluated(tiny_tokenizer, tmp_path, task_dir):
    from peft import LoraConfig, get_peft_model

    from conftest import build_tiny_model

    base = build_tiny_model(tiny_tokenizer)
    plain = suite(task_dir, ctx := make_context(base, tiny_tokenizer, tmp_path, ["tiny_sums"])).evaluate(ctx)
    adapted_model = get_peft_model(build_tiny_model(tiny_tokenizer),
                                   LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted = suite(task_dir, ctx := make_context(adapted_model, tiny_tokenizer, tmp_path, ["tiny_sums"])).evaluate(ctx)
    assert [r["output"] for r in adapted.outputs] != [r["output"] for r in plain.outputs]


def test_missing_include_path_is_a_user_error(tiny_model, tiny_tokenizer, tmp_path):
    ctx = make_context(tiny_model, tiny_tokenizer, tmp_path, ["tiny_sums"])
    with pytest.raises(UserError, match="include_path"):
        configured(LMEvalSuite, ctx, include_path=str(tmp_path / "nowhere")).evaluate(ctx)


def test_metrics_keep_filters_and_turn_stderr_into_a_ci():
    results = {"alias": "t", "sample_len": 10, "exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.1,
               "acc,none": 0.25, "acc_stderr,none": "N/A"}
    metrics = {m.name: m for m in task_metrics("t", results, {"exact_match": True, "acc": True}, 10)}
    assert set(metrics) == {"t/exact_match[strict-match]", "t/acc"}
    em = metrics["t/exact_match[strict-match]"]
    assert (em.value, em.n) == (0.5, 10)
    assert em.ci_low == pytest.approx(0.5 - 0.196) and em.ci_high == pytest.approx(0.5 + 0.196)
    assert metrics["t/acc"].ci_low is None
