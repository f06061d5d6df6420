"""Safety, GSM8K, retention and the lm-eval pass-through on the embedded SmolLM2-135M-Instruct
and the real benchmark files (20 items each, short answers)."""

import math

import pytest

from harness.config.settings import RunConfig
from harness.data.sources import DataSource
from harness.plugins.suite import SuiteContext
from harness.model.generation import GenerationCache, Generator
from conftest import configured
from suites.gsm8k import GSM8KSuite
from suites.lm_eval_tasks import LMEvalSuite
from suites.retention import RetentionSuite
from suites.safety import SafetySuite

pytestmark = pytest.mark.slow

EVAL_SIZE = 20
MAX_NEW = 64


def make_context(smollm2, data_dir, tmp_path, **settings) -> SuiteContext:
    spec, model, tokenizer = smollm2
    generator = Generator(model, tokenizer, spec.fingerprint, GenerationCache(tmp_path / "generations.sqlite"),
                          batch_size=EVAL_SIZE)
    config = RunConfig(**{"eval_size": EVAL_SIZE, "max_new_tokens": MAX_NEW, **settings})
    return SuiteContext("original", model, tokenizer, generator, generator, DataSource.open(data_dir), [], config,
                        tmp_path / "work")


def by_name(result):
    return {m.name: m for m in result.metrics}


def test_safety_on_advbench(smollm2, data_dir, tmp_path):
    result = configured(SafetySuite, ctx := make_context(smollm2, data_dir, tmp_path)).evaluate(ctx)
    metrics = by_name(result)
    for name in ("refusal_rate", "refusal_rate_gcg"):
        assert metrics[name].n == EVAL_SIZE and 0.0 <= metrics[name].value <= 1.0
    assert len({row["output"] for row in result.outputs}) == EVAL_SIZE
    assert metrics["refusal_rate"].value == pytest.approx(sum(row["refusal"] for row in result.outputs) / EVAL_SIZE)


def test_gsm8k_on_the_test_set(smollm2, data_dir, tmp_path):
    result = configured(GSM8KSuite, ctx := make_context(smollm2, data_dir, tmp_path)).evaluate(ctx)
    (accuracy,) = result.metrics
    assert accuracy.n == EVAL_SIZE and 0.0 <= accuracy.value <= 1.0
    assert all(row["reference"] is not None for row in result.outputs)
    # a 135M model's answers rarely end in the asked-for sentence, but the parser finds a number in most
    assert sum(row["predicted"] is not None for row in result.outputs) >= EVAL_SIZE // 2


def test_retention_of_the_original_is_zero(smollm2, data_dir, tmp_path):
    suite = RetentionSuite.from_settings({"max_new_tokens": MAX_NEW})
    result = suite.evaluate(make_context(smollm2, data_dir, tmp_path))
    metrics = by_name(result)
    assert metrics["kl"].value == 0.0 and metrics["delta_nll"].value == 0.0
    assert metrics["kl_stop"].value == 0.0 and metrics["kl_content"].value == 0.0
    assert all(m.n == EVAL_SIZE and not math.isnan(m.value) for m in metrics.values())
    # the original's own answers are the ones it is scored on: the same finished share
    assert metrics["finished"].value == sum(row["finished"] for row in result.outputs) / EVAL_SIZE
    assert metrics["length"].value == pytest.approx(sum(row["own_tokens"] for row in result.outputs) / EVAL_SIZE)
    nll = [row["nll"] for row in result.outputs]
    assert 0.0 < metrics["nll"].value < 5.0 and len(set(nll)) == EVAL_SIZE


def test_builtin_lm_eval_task_without_its_data_is_not_scored(smollm2, data_dir, tmp_path):
    ctx = make_context(smollm2, data_dir, tmp_path, eval_size=5)
    result = configured(LMEvalSuite, ctx, tasks=["arc_easy"]).evaluate(ctx)
    assert result.metrics == []
    (failed,) = result.not_scored
    assert failed.metric == "arc_easy" and failed.reason.startswith("not scored: lm-eval task failed")
