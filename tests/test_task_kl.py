"""The on-task KL suite: retention's divergence on the original's translations of held-out
test sources, sharing the translation suite's generations."""

from __future__ import annotations

import contextlib
import copy
import json

import pytest
import torch

from harness.config.settings import RunConfig
from harness.data.sources import DataSource
from harness.data.records import parse_directions
from harness.plugins.suite import SuiteContext
from harness.model.generation import GenerationCache, Generator
from suites.task_kl import TaskKLSuite
from suites.translation import TranslationSuite

DE_EN = [("Das Haus ist groß.", "The house is big."), ("Ich habe einen Hund.", "I have a dog."),
         ("Guten Morgen!", "Good morning!"), ("Das Wetter ist heute schön.", "The weather is nice today.")]


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    (root / "alma" / "deen").mkdir(parents=True)
    rows = [{"translation": {"de": s, "en": t}} for s, t in DE_EN]
    (root / "alma" / "deen" / "test.de-en.json").write_text(json.dumps(rows), encoding="utf-8")
    return root


def context(model, original, tokenizer, data, tmp_path) -> SuiteContext:
    cache = GenerationCache(tmp_path / "generations.sqlite")
    return SuiteContext("m", model, tokenizer, Generator(model, tokenizer, "evaluated", cache, batch_size=4),
                        Generator(original, tokenizer, "original", cache, batch_size=4), DataSource.open(data),
                        parse_directions("de-en"), RunConfig(eval_size=None, max_new_tokens=10), tmp_path / "work",
                        lambda: contextlib.nullcontext(original))


def test_on_task_kl_scores_held_out_translations_and_shares_the_translation_suites_answers(tiny_model, tiny_tokenizer,
                                                                                            data, tmp_path):
    moved = copy.deepcopy(tiny_model)
    torch.manual_seed(4)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ctx = context(moved, tiny_model, tiny_tokenizer, data, tmp_path)
    defaults = {"max_new_tokens": ctx.config.max_new_tokens}
    TranslationSuite.from_settings({}, defaults).evaluate(ctx)
    own_before = ctx.generator.stats.generated
    suite = TaskKLSuite.from_settings({}, defaults)
    ctx.original_generator.generate_many(suite.original_requests(ctx))  # the engine generates the original's answers ahead
    original_before = ctx.original_generator.stats.generated
    result = suite.evaluate(ctx)
    # the evaluated model's own answers are the translation suite's: nothing generated again
    assert ctx.generator.stats.generated == own_before == len(DE_EN)
    assert ctx.original_generator.stats.generated == original_before
    metrics = {m.name: m for m in result.metrics}
    assert metrics["kl"].value > 0 and metrics["kl"].n == len(DE_EN)
    assert metrics["kl_stop"].value + metrics["kl_content"].value == pytest.approx(metrics["kl"].value, abs=1e-6)
    assert [r["id"] for r in result.outputs] == [f"de-en/{i}" for i in range(len(DE_EN))]
    assert "German: Das Haus ist groß." in result.outputs[0]["prompt"]
    assert set(suite.item_stats(result.outputs)) >= {"kl", "kl_stop", "kl_content", "finished", "length"}


def test_on_task_kl_of_the_original_is_zero(tiny_model, tiny_tokenizer, data, tmp_path):
    ctx = context(tiny_model, tiny_model, tiny_tokenizer, data, tmp_path)
    metrics = {m.name: m for m in TaskKLSuite.from_settings({}, {"max_new_tokens": 10}).evaluate(ctx).metrics}
    assert metrics["kl"].value == metrics["kl_stop"].value == metrics["kl_content"].value == 0.0
    assert TaskKLSuite.uses_directions and TaskKLSuite.compares_with_original
