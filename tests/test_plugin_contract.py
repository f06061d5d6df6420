"""The plugin contract: the engine names no built-in method or suite, plugins load lazily
through entry points (no torch for `list` or a dry run), duplicate names are refused, and a
third-party suite with its own data set and a method that needs general data run in a real
`radis-bench run` from a package installed in the test."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.plugins import registry
from harness.errors import UserError
from test_run import cli, read_scores

ROOT = Path(__file__).resolve().parent.parent


def builtin_names() -> set[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    return set(project["radis_bench.methods"]) | set(project["radis_bench.suites"])


# Literals that equal a plugin's name but are not one: ALMA's JSON field holding a pair, and the
# field names the first key scheme hashed (harness/run/keys.py reproduces its keys).
NOT_PLUGIN_NAMES = {("data.py", "translation"), ("migrate.py", "lm_eval"), ("migrate.py", "replay"),
                    # files of the published reports' data dir, whose digests the migration checks
                    ("migrate.py", "alpaca_eval/alpaca_eval.json"), ("migrate.py", "ifeval/input_data.jsonl")}


def test_the_engine_names_no_builtin_method_or_suite():
    """Only pyproject.toml's entry points register the built-ins; harness/ never names one
    (as a string, or as the first part of a metric or option name like 'ifeval/prompt_strict')."""
    names = builtin_names()
    assert {"radis", "vanilla", "translation", "retention"} <= names
    found = []
    for path in sorted((ROOT / "harness").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (path.name, node.value) not in NOT_PLUGIN_NAMES:
                head = node.value.split("/", 1)[0].split(".", 1)[0]
                if node.value in names or (head in names and head != node.value and len(node.value) < 60
                                           and not any(c.isspace() for c in node.value)):
                    found.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert not found, found


def test_list_and_dry_run_import_no_torch(tmp_path):
    code = textwrap.dedent("""
        import sys
        from typer.testing import CliRunner
        from harness.cli import app
        listed = CliRunner().invoke(app, ["list"])
        assert listed.exit_code == 0, listed.output
        planned = CliRunner().invoke(app, ["run", "--dry-run", "--methods", "radis,vanilla,sdft,seqkd,replay,kl,wise",
                                           "--suites", "translation,ifeval,safety,retention,gsm8k,alpaca_eval,mt_bench"])
        assert planned.exit_code == 0, planned.output
        print("torch" in sys.modules, "transformers" in sys.modules, "peft" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RADIS_BENCH_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "False", "False"]


def test_list_shows_citations():
    from typer.testing import CliRunner

    from harness.cli import app

    out = CliRunner().invoke(app, ["list"], env={"COLUMNS": "250"}).output
    assert "arXiv 2410.13944" in out and "Yang et al." in out


def test_a_duplicate_name_and_a_class_that_is_no_plugin_are_refused(monkeypatch):
    from harness.plugins.method import Method

    monkeypatch.setattr(registry, "_registered", {g: dict(t) for g, t in registry._registered.items()})
    registry.get_method("vanilla")

    class Impostor(Method):
        name = "vanilla"
        description = "another vanilla"

    with pytest.raises(UserError, match=r"Two methods are named 'vanilla': baselines\.vanilla\.Vanilla and .*Impostor"):
        registry.register_method(Impostor)

    class NotAMethod:
        name = "stray"

    with pytest.raises(UserError, match="not a Method subclass"):
        registry.register_method(NotAMethod)


PLUGIN = '''
"""A third-party package: a suite with its own data set, a method that needs general data."""
from dataclasses import dataclass, field

from harness.data.sources import DataSet, sample
from harness.plugins.suite import ItemStats, MetricSpec, Suite, SuiteResult
from harness.plugins.requests import Decoding, Request
from harness.plugins.method import Method, Segment, TrainingExample
from harness.model.prompts import translation_prompt, user_turn

RIDDLES = DataSet("riddles", "riddles/riddles.jsonl", {"instruction": "question", "reference": "answer"})


@dataclass
class RiddleOptions:
    max_new_tokens: int | None = field(default=None, metadata={"run_default": "max_new_tokens"})


class RiddleSuite(Suite):
    name = "riddles"
    description = "plugin test: answers that contain the expected word"
    Options = RiddleOptions
    data_sets = (RIDDLES,)

    def metrics(self):
        return [MetricSpec("hit_rate", "share of answers containing the expected word", True, main=True)]

    def requests(self, ctx):
        items = sample(ctx.data.general(RIDDLES), ctx.eval_size, ctx.data_seed)
        return [(Request(user_turn(it.prompt)), Decoding(max_new_tokens=self.options.max_new_tokens)) for it in items]

    def evaluate(self, ctx):
        items = sample(ctx.data.general(RIDDLES), ctx.eval_size, ctx.data_seed)
        outputs = ctx.generator.generate_many(self.requests(ctx), label="riddles")
        hits = [it.reference.lower() in out.text.lower() for it, out in zip(items, outputs)]
        result = SuiteResult()
        result.add_mean("hit_rate", hits, main=True)
        result.outputs = [{"id": it.id, "output": o.text, "hit": h} for it, o, h in zip(items, outputs, hits)]
        return result

    def item_stats(self, outputs):
        return {"hit_rate": ItemStats.mean([r["id"] for r in outputs], [r["hit"] for r in outputs])}


class RiddleReplay(Method):
    name = "riddle_replay"
    description = "plugin test: translation pairs plus the riddles as replay"
    data_sets = (RIDDLES,)

    def build_training_examples(self, ctx):
        riddles = [TrainingExample(user_turn(it.prompt), [Segment(it.reference, 1.0, "replay")], source="replay")
                   for it in ctx.data.general(RIDDLES)]
        return [TrainingExample(user_turn(translation_prompt(p)), [Segment(p.reference)]) for p in ctx.pairs] + riddles
'''


def install_plugin(site: Path, module: str = "riddle_plugin", source: str = PLUGIN,
                   entry_points: str = "[radis_bench.suites]\nriddles = riddle_plugin:RiddleSuite\n\n"
                                       "[radis_bench.methods]\nriddle_replay = riddle_plugin:RiddleReplay\n") -> dict:
    """Install the package as pip would, by its files and metadata, into a folder put on the path."""
    site.mkdir()
    (site / f"{module}.py").write_text(source)
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_third_party_suite_and_method_run_in_a_real_run(tiny_checkpoint, tmp_path):
    from harness.paths import STARTER_DATA
    import shutil

    data = tmp_path / "data"
    shutil.copytree(STARTER_DATA, data)
    (data / "riddles").mkdir()
    riddles = [{"question": f"What has {n} legs?", "answer": word} for n, word in ((4, "dog"), (2, "bird"), (6, "ant"), (8, "spider"))]
    (data / "riddles" / "riddles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in riddles))
    env = {**install_plugin(tmp_path / "site"), "RADIS_BENCH_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    result = cli(["run", "--model", str(tiny_checkpoint), "--data-dir", str(data), "--methods", "vanilla,riddle_replay",
                  "--suites", "riddles,retention", "--train-size", "8", "--eval-size", "4", "--steps", "2", "--batch-size", "4",
                  "--out", str(run_dir), "--set", "max_new_tokens=6", "--set", "retention.max_new_tokens=6"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = read_scores(run_dir)
    assert {(r["method"], r["suite"], r["metric"]) for r in scores if r["suite"] == "riddles"} == {
        ("original", "riddles", "hit_rate"), ("vanilla", "riddles", "hit_rate"), ("riddle_replay", "riddles", "hit_rate")}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["suites"]["riddles"]["metrics"][0]["name"] == "hit_rate"
    assert "riddles/riddles.jsonl" in manifest["data"]["file_sha256"]
    examples = (run_dir / "models" / "riddle_replay" / "seed0" / "examples.jsonl").read_text()
    assert "What has 8 legs?" in examples
    md = (run_dir / "report" / "leaderboard.md").read_text()
    assert "riddles hit_rate ↑" in md


STOPPER = '''
"""A careless third-party suite: its evaluation is stopped (SIGTERM) while it runs, and it
either swallows the stop or lets a library's clean-up replace it with its own error."""
import os
import signal
import time
from dataclasses import dataclass

from harness.plugins.suite import ItemStats, MetricSpec, Suite, SuiteResult


@dataclass
class StopperOptions:
    mode: str = "swallow"


class StopperSuite(Suite):
    name = "stopper"
    description = "plugin test: stopped while it evaluates"
    Options = StopperOptions

    def metrics(self):
        return [MetricSpec("score", "always 1", True, main=True)]

    def requests(self, ctx):
        return []

    def evaluate(self, ctx):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)
        except BaseException:
            if self.options.mode == "swallow":
                pass  # e.g. a retry loop with a bare except
            else:  # torch's vmap fails an internal assert when a stop unwinds through it
                raise RuntimeError("!dynamicLayerStack.empty() INTERNAL ASSERT FAILED")
        result = SuiteResult()
        result.add_mean("score", [1.0], main=True)
        result.outputs = [{"id": "0", "score": 1.0}]
        return result

    def item_stats(self, outputs):
        return {"score": ItemStats.mean([r["id"] for r in outputs], [r["score"] for r in outputs])}
'''


@pytest.mark.parametrize("mode", ["swallow", "library_error"])
def test_a_stop_inside_a_suite_stops_the_run_and_saves_no_unit(tiny_checkpoint, tmp_path, mode):
    """SIGTERM while a suite evaluates ends the run as a stop (143, one line, no traceback)
    even when the suite's code swallows it or a library turns it into its own error on the
    way out (the CI failure: torch's vmap inside transformers' attention masks); and the
    half-done evaluation is not saved as a finished unit."""
    env = {**install_plugin(tmp_path / "site", "stopper_plugin", STOPPER,
                            "[radis_bench.suites]\nstopper = stopper_plugin:StopperSuite\n"),
           "RADIS_BENCH_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    result = cli(["run", "--model", str(tiny_checkpoint), "--methods", "vanilla", "--suites", "stopper",
                  "--train-size", "8", "--eval-size", "4", "--steps", "2", "--batch-size", "4", "--out", str(run_dir),
                  "--set", f"stopper.mode={mode}"], env)
    lines = [line for line in result.stderr.splitlines() if line.strip().startswith("error:")]
    assert result.returncode == 143, result.stderr[-3000:]
    assert lines == ["error: stopped (SIGTERM); finished stages are saved, run the same command again to resume."]
    assert "Traceback" not in result.stderr and "INTERNAL ASSERT" not in result.stderr
    assert not list(run_dir.glob("results/*/stopper.json"))
