import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness.config.settings import RunConfig
from harness.errors import UserError
from harness.data.sources import DataSource
from harness.data.records import parse_directions
from harness.plugins.suite import SuiteContext
from harness.model.generation import GenerationCache, Generator
from suites._judges import chat_judge
from conftest import configured
from suites.mt_bench import MTBenchSuite, parse_rating

QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it about snow."]},
    {"question_id": 2, "category": "math", "turns": ["What is 3 + 4?", "And times 2?"]},
    {"question_id": 3, "category": "roleplay", "turns": ["Pretend to be a cat.", "Now be a dog."]},
]
REFERENCES = [{"question_id": 2, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["7", "14"]}]}]
SECRET = "sk-test-secret-never-written"


class FakeJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions endpoint answering with the server's fixed reply."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.server.status != 200:
            self.send_error(self.server.status)
            return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": self.server.reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    server.seen, server.reply, server.status = [], "The answer is fine. Rating: [[7]]", 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("RADIS_BENCH_JUDGE_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("RADIS_BENCH_JUDGE_API_KEY", SECRET)
    yield server
    server.shutdown()
    server.server_close()


def make_ctx(tmp_path, model, tokenizer, judge=None, references=True) -> SuiteContext:
    data = tmp_path / "data"
    (data / "mt_bench").mkdir(parents=True)
    (data / "mt_bench" / "question.jsonl").write_text("\n".join(json.dumps(q) for q in QUESTIONS))
    if references:
        (data / "mt_bench" / "reference_answer_gpt-4.jsonl").write_text(json.dumps(REFERENCES[0]))
    generator = Generator(model, tokenizer, "under-test", GenerationCache(tmp_path / "g.sqlite"), batch_size=8)
    return SuiteContext(label="original", model=model, tokenizer=tokenizer, generator=generator,
                        original_generator=generator, data=DataSource.open(data), directions=parse_directions("de-en"),
                        config=RunConfig(eval_size=None, max_new_tokens=6, suite_options={"mt_bench": {"judge": judge}}), workdir=tmp_path / "work")


def test_parse_rating_follows_fastchat():
    assert parse_rating("Rating: [[7]]") == 7.0
    assert parse_rating("[[8.5]] and later [[2]]") == 8.5
    assert parse_rating("I give it [6].") == 6.0  # FastChat's fallback pattern
    assert parse_rating("Rating: 9/10") is None


def test_without_a_judge_both_turns_are_answered_and_not_scored(tiny_model, tiny_tokenizer, tmp_path):
    ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer)
    result = configured(MTBenchSuite, ctx).evaluate(ctx)
    assert [(n.metric, n.reason) for n in result.not_scored] == [("score", "not scored: no judge (--judge)")]
    assert [row["id"] for row in result.outputs] == ["1", "2", "3"]
    assert all(len(row["answers"]) == 2 for row in result.outputs)
    # two generate calls: 3 first turns, then 3 second turns that include the model's first answer
    assert ctx.generator.stats.generated == 6


def test_fake_loopback_judge_rates_every_turn(tiny_model, tiny_tokenizer, tmp_path, judge_server):
    ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer, judge="judge-model-x")
    result = configured(MTBenchSuite, ctx).evaluate(ctx)

    metrics = {m.name: m for m in result.metrics}
    assert metrics["score"].main and metrics["score"].value == 7.0 and metrics["score"].n == 3
    assert metrics["score_turn1"].value == 7.0 and metrics["score_turn2"].value == 7.0
    assert metrics["unparsed_ratings"].value == 0
    assert metrics["score"].note.startswith(f"judge=judge-model-x at http://127.0.0.1:{judge_server.server_address[1]}/v1")
    assert "reference-guided" in metrics["score"].note
    assert all(row["ratings"] == [7.0, 7.0] for row in result.outputs)

    seen = judge_server.seen
    assert len(seen) == 6 and {s["path"] for s in seen} == {"/v1/chat/completions"}
    assert all(s["auth"] == f"Bearer {SECRET}" for s in seen)
    assert {s["body"]["model"] for s in seen} == {"judge-model-x"} and {s["body"]["temperature"] for s in seen} == {0}
    prompts = [s["body"]["messages"] for s in seen]
    math_second = next(m for m in prompts if "And times 2?" in m[1]["content"])
    assert "### Reference answer:\n14" in math_second[1]["content"] and "correctness" in math_second[0]["content"]
    writing_first = next(m for m in prompts if "[Question]\nWrite a haiku about rain." in m[1]["content"])
    assert writing_first[0]["content"] == "You are a helpful assistant."
    rows = {row["id"]: row for row in result.outputs}
    assert rows["1"]["answers"][0] in writing_first[1]["content"]
    assert any(rows["1"]["answers"][1] in m[1]["content"] and "Now make it about snow." in m[1]["content"] for m in prompts)
    assert SECRET not in json.dumps(result.outputs) + json.dumps([vars(m) for m in result.metrics])

    # the judgments are cached: a second evaluation sends nothing
    again = configured(MTBenchSuite, ctx).evaluate(ctx)
    assert len(judge_server.seen) == 6 and {m.name: m.value for m in again.metrics}["score"] == 7.0


def test_unreadable_ratings_and_endpoint_errors_are_not_scored(tiny_model, tiny_tokenizer, tmp_path, judge_server):
    judge_server.reply = "Looks good to me."
    ctx = make_ctx(tmp_path, tiny_model, tiny_tokenizer, judge="judge-model-x", references=False)
    result = configured(MTBenchSuite, ctx).evaluate(ctx)
    assert {m.name: m.value for m in result.metrics}["unparsed_ratings"] == 6
    assert [n.metric for n in result.not_scored] == ["score"] and "no readable rating in 6 replies" in result.not_scored[0].reason

    judge_server.status = 401
    ctx = make_ctx(tmp_path / "other", tiny_model, tiny_tokenizer, judge="judge-model-y", references=False)
    result = configured(MTBenchSuite, ctx).evaluate(ctx)
    assert [n.metric for n in result.not_scored] == ["score"]
    assert "answered HTTP 401" in result.not_scored[0].reason and SECRET not in result.not_scored[0].reason


def test_judge_from_an_alpaca_eval_config(tmp_path, monkeypatch):
    monkeypatch.delenv("RADIS_BENCH_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    judge = chat_judge("weighted_alpaca_eval_gpt4_turbo")  # alpaca-eval's own config, openai_completions
    assert (judge.model, judge.base_url) == ("gpt-4-1106-preview", "https://api.openai.com/v1")
    local = tmp_path / "local_judge"
    local.mkdir()
    (local / "configs.yaml").write_text("local_judge:\n  fn_completions: huggingface_local_completions\n"
                                        "  completions_kwargs: {model_name: /models/x}\n")
    with pytest.raises(UserError, match="not an OpenAI-compatible chat model"):
        chat_judge(str(local))
    with pytest.raises(UserError, match="not an OpenAI-compatible chat model"):  # before any compute
        MTBenchSuite.from_settings({"judge": str(local)}).check()
