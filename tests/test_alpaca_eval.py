import json
from pathlib import Path

import pytest
import yaml

from harness.config.settings import RunConfig
from harness.data.sources import DataSource
from harness.data.records import parse_directions
from harness.errors import UserError
from harness.plugins.suite import SuiteContext
from harness.plugins.requests import Decoding, Output, Request
from harness.model.generation import GenerationCache, Generator
from harness.model.prompts import user_turn
from conftest import configured
from suites.alpaca_eval import AlpacaEvalSuite, win_of

ROWS = [
    {"instruction": "Name a primary colour.", "output": "Red is a primary colour."},
    {"instruction": "What is two plus two?", "output": "Two plus two is four."},
    {"instruction": "Give a synonym for happy.", "output": "Joyful."},
    {"instruction": "Say hello in German.", "output": "Hallo!"},
    {"instruction": "Name a fruit that is yellow.", "output": "A banana."},
]

PROMPT = "Which answer is better?\nInstruction: {instruction}\nOutput (a): {output_1}\nOutput (b): {output_2}\nBest:"


def write_judge(folder: Path, model_path: Path, outputs_to_match: dict) -> Path:
    """An alpaca-eval annotator config that runs a local checkpoint with huggingface_local_completions."""
    folder.mkdir(parents=True)
    (folder / "prompt.txt").write_text(PROMPT)
    config = {folder.name: {
        "prompt_template": f"{folder.name}/prompt.txt",  # alpaca-eval resolves it from the config's parent folder
        "fn_completions": "huggingface_local_completions",
        "completions_kwargs": {"model_name": str(model_path), "max_new_tokens": 6, "do_sample": False},
        "fn_completion_parser": "regex_parser",
        "completion_parser_kwargs": {"outputs_to_match": outputs_to_match},
        "batch_size": 1,
    }}
    (folder / "configs.yaml").write_text(yaml.safe_dump(config))
    return folder


def make_ctx(tmp_path, model, tokenizer, judge=None) -> SuiteContext:
    data = tmp_path / "data"
    (data / "alpaca_eval").mkdir(parents=True)
    (data / "alpaca_eval" / "alpaca_eval.json").write_text(json.dumps(ROWS))
    generator = Generator(model, tokenizer, "under-test", GenerationCache(tmp_path / "g.sqlite"), batch_size=8)
    return SuiteContext(label="vanilla/seed0", model=model, tokenizer=tokenizer, generator=generator,
                        original_generator=generator, data=DataSource.open(data), directions=parse_directions("de-en"),
                        config=RunConfig(eval_size=None, max_new_tokens=12, suite_options={"alpaca_eval": {"judge": judge}}), workdir=tmp_path / "work")


def prefill(ctx: SuiteContext, answers: list[str]) -> None:
    gen = ctx.generator
    gen.cache.put_many([
        (gen.key(gen.prompt_text(Request(user_turn(row["instruction"]))), Decoding(max_new_tokens=12)),
         Output(text, len(text.split()), True))
        for row, text in zip(ROWS, answers)
    ])


ANSWERS = ["Blue.", "Four.", "Glad, cheerful or content.", "Guten Tag!", "Lemons are yellow."]


def test_without_a_judge_answers_are_saved_and_not_scored(tiny_model, tiny_tokenizer, tmp_path):
    ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer)
    prefill(ctx, ANSWERS)
    result = configured(AlpacaEvalSuite, ctx).evaluate(ctx)
    assert [(n.metric, n.reason) for n in result.not_scored] == [("win_rate", "not scored: no judge (--judge)")]
    assert [row["output"] for row in result.outputs] == ANSWERS
    assert [row["reference"] for row in result.outputs] == [r["output"] for r in ROWS]
    saved = json.loads((ctx.workdir / "model_outputs.json").read_text())
    assert saved == [{"instruction": r["instruction"], "output": a, "generator": "vanilla/seed0"} for r, a in zip(ROWS, ANSWERS)]
    length = next(m for m in result.metrics if m.name == "avg_length")
    assert length.value == pytest.approx(sum(map(len, ANSWERS)) / 5) and length.higher_is_better is None


def test_judged_end_to_end_by_a_local_model_through_alpaca_evals_annotator(tiny_model, tiny_tokenizer, tiny_checkpoint,
                                                                           tmp_path, monkeypatch):
    """A weak judge: the tiny random checkpoint, run by alpaca-eval's huggingface_local_completions
    decoder; its parser reads any non-empty reply as 'Output (a)', so the verdicts come from
    alpaca-eval's own seeded swapping of the two outputs."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-never-written")
    judge = write_judge(tmp_path / "judges" / "tiny_judge", tiny_checkpoint, {1: r"^[\s\S]+$"})
    ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer, judge=str(judge))
    prefill(ctx, ANSWERS)
    result = configured(AlpacaEvalSuite, ctx).evaluate(ctx)

    metrics = {m.name: m for m in result.metrics}
    win = metrics["win_rate"]
    assert win.main and win.n == 5 and metrics["unparsed_verdicts"].value == 0
    assert win.note.startswith("judge=tiny_judge (alpaca-eval annotator; model ") and str(tiny_checkpoint) in win.note
    assert [row["preference"] for row in result.outputs] and all(row["preference"] in (1.0, 2.0) for row in result.outputs)
    assert win.value == pytest.approx(sum(row["preference"] - 1 for row in result.outputs) / 5)
    # alpaca-eval's own metric on the same verdicts, in percent
    from alpaca_eval.metrics import get_winrate

    assert win.value * 100 == pytest.approx(get_winrate([{"preference": r["preference"]} for r in result.outputs])["win_rate"])
    assert [n.metric for n in result.not_scored] == ["length_controlled_win_rate"]  # a 5-row set, not the 805
    saved = json.loads((ctx.workdir / "annotations.json").read_text())
    assert [a["preference"] for a in saved] == [row["preference"] for row in result.outputs]
    written = "".join(p.read_text() for p in ctx.workdir.iterdir()) + json.dumps([vars(m) for m in result.metrics])
    assert "sk-test-secret" not in written + json.dumps(result.outputs)

    # a second evaluation reuses the cached verdicts: no judge model is loaded
    import alpaca_eval.decoders.huggingface_local as hf_local

    monkeypatch.setattr(hf_local, "huggingface_local_completions", lambda *a, **k: pytest.fail("judge asked again"))
    again = configured(AlpacaEvalSuite, ctx).evaluate(ctx)
    assert {m.name: m.value for m in again.metrics}["win_rate"] == win.value


def test_unreadable_verdicts_are_counted_and_none_means_not_scored(tiny_model, tiny_tokenizer, tiny_checkpoint, tmp_path):
    judge = write_judge(tmp_path / "judges" / "strict_judge", tiny_checkpoint,
                        {1: r"Output \(a\)", 2: r"Output \(b\)"})  # the random checkpoint never says this
    ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer, judge=str(judge / "configs.yaml"))
    prefill(ctx, ANSWERS)
    result = configured(AlpacaEvalSuite, ctx).evaluate(ctx)
    metrics = {m.name: m for m in result.metrics}
    assert metrics["unparsed_verdicts"].value == 5 and "win_rate" not in metrics
    assert [n.metric for n in result.not_scored] == ["win_rate"]
    assert "gave no readable verdict for any of 5 items" in result.not_scored[0].reason
    assert all(row["win"] is None for row in result.outputs)


def test_unknown_judge_is_a_user_error(tiny_model, tiny_tokenizer, tmp_path):
    ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer, judge="no_such_annotator_config")
    prefill(ctx, ANSWERS)
    with pytest.raises(UserError, match="not an alpaca-eval annotator config"):
        configured(AlpacaEvalSuite, ctx).evaluate(ctx)


def test_preferences_map_to_win_shares():
    assert [win_of(p) for p in (1, 2, 1.5, 0, 1.25, None, float("nan"), 3)] == [0.0, 1.0, 0.5, 0.5, 0.25, None, None, None]


def test_length_controlled_win_rate_on_the_805_instruction_set(tiny_model, tiny_tokenizer, tiny_checkpoint, tmp_path,
                                                               monkeypatch):
    """Offline, alpaca-eval cannot fetch the hub file its length-control GLM needs: not scored.
    With a stand-in for that file (two 'gamed' baselines over the 805 rows) the real GLM runs."""
    import numpy as np
    import pandas as pd

    rows = [{"instruction": f"Instruction number {i}.", "output": f"Reference answer {i}."} for i in range(805)]
    data = tmp_path / "data" / "alpaca_eval"
    data.mkdir(parents=True)
    (data / "alpaca_eval.json").write_text(json.dumps(rows))
    judge = write_judge(tmp_path / "judges" / "tiny_judge", tiny_checkpoint, {1: r"^[\s\S]+$"})
    generator = Generator(tiny_model, tiny_tokenizer, "under-test", GenerationCache(tmp_path / "g.sqlite"), batch_size=12)
    ctx = SuiteContext(label="original", model=tiny_model, tokenizer=tiny_tokenizer, generator=generator,
                       original_generator=generator, data=DataSource.open(tmp_path / "data"),
                       directions=parse_directions("de-en"),
                       config=RunConfig(eval_size=12, max_new_tokens=4, suite_options={"alpaca_eval": {"judge": str(judge)}}), workdir=tmp_path / "work")

    offline = configured(AlpacaEvalSuite, ctx).evaluate(ctx)
    assert [n.metric for n in offline.not_scored] == ["length_controlled_win_rate"]
    assert "df_gamed.csv" in offline.not_scored[0].reason

    rng = np.random.default_rng(0)
    gamed = pd.DataFrame({
        "model": np.repeat(["gamed_long", "gamed_short"], 805), "index": np.tile(np.arange(805), 2),
        "preference": rng.uniform(size=1610), "std_delta_len": rng.normal(size=1610),
        "instruction_difficulty": np.tile(rng.normal(size=805), 2), "not_gamed_baseline": False,
    })
    gamed.to_csv(tmp_path / "df_gamed.csv", index=False)
    import alpaca_eval.metrics.glm_winrate as glm

    monkeypatch.setattr(glm, "hf_hub_download", lambda **kwargs: str(tmp_path / "df_gamed.csv"))
    result = configured(AlpacaEvalSuite, ctx).evaluate(ctx)
    metrics = {m.name: m for m in result.metrics}
    assert result.not_scored == [] and metrics["win_rate"].value == {m.name: m.value for m in offline.metrics}["win_rate"]
    lc = metrics["length_controlled_win_rate"]
    assert 0.0 <= lc.value <= 1.0 and lc.n == 12 and lc.note.startswith("judge=tiny_judge")
