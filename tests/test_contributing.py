"""CONTRIBUTING.md's examples (a method, a suite, a metric) run as written, in a real run on a
tiny model, and their rows and metrics reach the scores and the differences."""

from __future__ import annotations

import csv
import re
import sys
import types
from pathlib import Path

from harness.config.settings import RunConfig
from harness.plugins import registry
from harness.run.execute import Execution
from harness.run.plan import Plan, configure

GUIDE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def examples() -> dict[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    found = {}
    for block in blocks:
        marker = re.match(r"# contributing example: (\w+)\n", block)
        if marker:
            found[marker.group(1)] = block
    return found


def test_the_guide_has_a_method_a_suite_and_a_metric_of_about_twenty_lines():
    found = examples()
    assert set(found) == {"method", "suite", "metric"}
    for block in found.values():
        assert len(block.strip().splitlines()) <= 45


def test_the_guide_s_examples_run_in_a_real_run(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_registered", {group: dict(table) for group, table in registry._registered.items()})
    module = types.ModuleType("contributing_examples")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    for name in ("method", "suite", "metric"):  # the metric example extends the suite's
        exec(compile(examples()[name], f"CONTRIBUTING.md ({name})", "exec"), module.__dict__)
    cfg = RunConfig()
    configure(cfg, {"model": str(tiny_checkpoint), "methods": ["close_self", "vanilla"], "suites": ["length_ratio", "length_and_empty"],
                    "data_dir": "starter", "train_size": 4, "eval_size": 3, "seeds": [0], "out": str(tmp_path / "run"),
                    "budget": {"steps": 1, "batch_size": 2, "save_every": 0}}, "the test")
    run_dir = Execution(Plan(cfg)).run()
    with (run_dir / "scores.csv").open() as fh:
        scores = {(r["method"], r["suite"], r["metric"]): r["value"] for r in csv.DictReader(fh)}
    for row in ("original", "close_self", "vanilla"):
        assert scores[(row, "length_ratio", "ratio")] != ""
        assert float(scores[(row, "length_and_empty", "empty")]) >= 0.0
    with (run_dir / "report" / "differences.csv").open() as fh:
        differences = {(r["method"], r["versus"], r["metric"]) for r in csv.DictReader(fh)}
    assert ("close_self", "vanilla", "ratio") in differences and ("close_self", "original", "empty") in differences
    stats = (run_dir / "models" / "close_self" / "seed0" / "method_stats.json").read_text()
    assert '"self_targets"' in stats
