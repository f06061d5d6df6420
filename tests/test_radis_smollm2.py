"""RaDis on the embedded SmolLM2-135M-Instruct and real ALMA de-en pairs: the original
model's rationales are real continuations of the references, and they are generated once."""

from __future__ import annotations

import pytest

from harness.config.settings import Budget
from harness.data.sources import DataSource, sample
from harness.data.records import Direction
from harness.model.generation import GenerationCache, Generator
from harness.plugins.method import MethodContext
from harness.model.prompts import request_ids
from harness.model.examples import tokenise_example
from radis.rationale import RaDis, RaDisOptions

pytestmark = pytest.mark.slow


def test_smollm2_rationales_continue_the_reference_and_are_cached(smollm2, data_dir, tmp_path):
    spec, model, tokenizer = smollm2
    data = DataSource.open(data_dir)
    pairs = sample(data.translation(Direction("de", "en"), "train"), 16, seed=0)
    method = RaDis(RaDisOptions(max_new_tokens=64))

    def build():
        original = Generator(model, tokenizer, spec.fingerprint, GenerationCache(tmp_path / "generations.sqlite"))
        ctx = MethodContext(pairs=pairs, original=original, data=data, budget=Budget(), seed=0)
        return method.build_training_examples(ctx), original, ctx.stats

    examples, original, stats = build()
    assert original.stats.generated == 16
    assert [ex.response[0].text for ex in examples] == [p.reference for p in pairs]
    rationales = [ex.response[2].text for ex in examples if len(ex.response) == 3]
    assert len(rationales) == 16 and all(r.strip() for r in rationales)
    assert len(set(rationales)) >= 12  # a 135M model repeats a stock remark now and then
    assert not any("Translate this from" in r for r in rationales)
    assert stats["rationales_kept"] == 16 and stats["mean_rationale_words"] > 5

    # the rationale was generated from exactly the ids the trainer puts before it: SmolLM2's
    # single "\n\n" token ends that context, and the trainer puts in the generated tokens
    requests = method.original_requests(MethodContext(pairs=pairs, original=None, data=data, budget=Budget(), seed=0))
    blank_line = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    assert len(blank_line) == 1
    for (request, _), example in zip(requests, examples):
        context = request_ids(tokenizer, request.messages, request.assistant_prefix)
        trained = tokenise_example(tokenizer, example, 4096).input_ids
        assert trained[: len(context)] == context and context[-1] == blank_line[0]
        assert trained[len(context) : len(context) + len(example.response[2].ids)] == example.response[2].ids

    again, cached, _ = build()
    assert cached.stats.cache_hits == 16 and cached.stats.generated == 0
    assert [ex.response for ex in again] == [ex.response for ex in examples]
