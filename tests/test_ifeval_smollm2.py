import math

import pytest

from harness.config.settings import RunConfig
from harness.data.sources import DataSource
from harness.data.records import parse_directions
from harness.plugins.suite import SuiteContext
from harness.model.generation import GenerationCache, Generator
from conftest import configured
from suites.ifeval import IFEvalSuite


@pytest.mark.slow
def test_smollm2_on_20_real_ifeval_prompts(smollm2, data_dir, tmp_path):
    spec, model, tokenizer = smollm2
    generator = Generator(model, tokenizer, spec.fingerprint, GenerationCache(tmp_path / "g.sqlite"), batch_size=20)
    ctx = SuiteContext(label="original", model=model, tokenizer=tokenizer, generator=generator,
                       original_generator=generator, data=DataSource.open(data_dir),
                       directions=parse_directions("de-en"), config=RunConfig(eval_size=20, max_new_tokens=128),
                       workdir=tmp_path / "work")
    result = configured(IFEvalSuite, ctx).evaluate(ctx)

    metrics = {m.name: m for m in result.metrics}
    for name in ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose"):
        assert 0.0 <= metrics[name].value <= 1.0 and not math.isnan(metrics[name].value), name
    assert metrics["prompt_strict"].n == 20 and metrics["inst_strict"].n >= 20
    assert metrics["prompt_loose"].value >= metrics["prompt_strict"].value
    assert metrics["inst_loose"].value >= metrics["inst_strict"].value
    assert len(result.outputs) == 20 and len({row["output"] for row in result.outputs}) > 1
    verdicts = [x for row in result.outputs for x in row["inst_loose"]]
    assert any(verdicts) and not all(verdicts)  # the checkers discriminate between answers
    print({name: round(m.value, 3) for name, m in metrics.items()})
