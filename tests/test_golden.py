"""The golden test: results are tied to the code versions that compute them (issue 30).

A tiny deterministic run (a tiny random model built here, two methods, two suites, the
starter data) is computed end to end, and its per-step training losses and every score are
compared with ``golden/tiny_run.json``, recorded together with the code versions of
``harness.versions`` and of the methods and suites that produced them:
- the versions are unchanged and the numbers moved: the test fails. Some code changed what
  it computes; bump the version of that code (``harness/versions.py``, or the method's or
  suite's ``version``), so that every unit it computed is recomputed, then re-record;
- a version moved: the test fails until the golden values are recorded again for the new
  versions, which makes the change visible in review:

      .venv/bin/python tests/test_golden.py --record

Tolerance: 1e-6 relative. On the machine the values were recorded on the run is bit-for-bit
reproducible (one training thread for a model this small, greedy decoding); the margin
covers another CPU's kernels without hiding a real change of the loss (the step-0 loss
moved by 3e-6 relative when the trainer changed between two v2 units, issue 30).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_run.json"
METHODS = ["vanilla", "radis"]
SUITES = ["translation", "retention"]
RELATIVE = 1e-6


def build_model(tokenizer):
    """A tiny Llama with untied, small random weights: unlike the tied test model (which
    repeats its last token), it writes varied text, so RaDis gets real rationales."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, initializer_range=0.02)
    return LlamaForCausalLM(config).eval()


def code_versions() -> dict:
    from harness.plugins import registry
    from harness import versions

    return {"trainer": versions.TRAINER, "generator": versions.GENERATOR,
            "methods": {m: registry.get_method(m).version for m in METHODS},
            "suites": {s: registry.get_suite(s).version for s in SUITES}}


def tiny_run(root: Path) -> dict:
    """Per-step losses of each method and every score of the tiny run computed in ``root``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import build_tiny_tokenizer

    from harness.config.settings import RunConfig
    from harness.config.parse import apply_settings
    from harness.run.execute import Execution
    from harness.run.plan import Plan

    tokenizer = build_tiny_tokenizer()
    checkpoint = root / "model"
    build_model(tokenizer).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    cfg = RunConfig()
    apply_settings(cfg, {
        "model": str(checkpoint), "methods": METHODS, "suites": SUITES, "data_dir": "starter", "train_size": 8,
        "eval_size": 4, "seeds": [0], "max_new_tokens": 12, "out": str(root / "run"),
        "budget": {"steps": 4, "batch_size": 4, "max_length": 96, "save_every": 0, "learning_rate": 0.01},
        "method_options": {"radis": {"max_new_tokens": 12}},
        "suite_options": {"retention": {"max_new_tokens": 12}},
    }, "the golden run")
    run_dir = Execution(Plan(cfg)).run()
    losses = {m: json.loads((run_dir / "models" / m / "seed0" / "train_stats.json").read_text())["losses"] for m in METHODS}
    with (run_dir / "scores.csv").open() as fh:
        scores = {f"{r['method']}/{r['suite']}/{r['metric']}": float(r["value"]) for r in csv.DictReader(fh) if r["value"]}
    return {"losses": losses, "scores": scores}


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= RELATIVE * max(abs(a), abs(b), 1e-3)


def moved(got: dict, want: dict) -> list[str]:
    """What differs between two results beyond the tolerance, one line each."""
    out = []
    for method, expected in want["losses"].items():
        actual = got["losses"].get(method, [])
        if len(actual) != len(expected) or not all(map(_close, actual, expected)):
            out.append(f"{method} per-step losses {actual} (recorded {expected})")
    for name in sorted(set(want["scores"]) | set(got["scores"])):
        a, b = got["scores"].get(name), want["scores"].get(name)
        if a is None or b is None or not _close(a, b):
            out.append(f"{name} = {a} (recorded {b})")
    return out


def test_tiny_run_matches_the_values_recorded_for_these_code_versions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recorded = json.loads(GOLDEN.read_text())
    versions = code_versions()
    assert recorded["code"] == versions, (
        f"code versions are {versions}, the golden values were recorded for {recorded['code']}: record them again "
        "with `.venv/bin/python tests/test_golden.py --record` and commit tests/golden/tiny_run.json")
    result = tiny_run(tmp_path)
    differences = moved(result, recorded)
    assert not differences, ("results moved while the code versions stood still; bump the version of the code that "
                             "changed (harness/versions.py, or the method's or suite's `version`), then re-record:\n"
                             + "\n".join(differences))


def test_the_tiny_run_trains_real_rationales_and_distinct_models():
    """What makes the golden run worth pinning: RaDis trains on rationales, so its losses
    differ from vanilla's, and every pinned score is a number."""
    recorded = json.loads(GOLDEN.read_text())
    assert recorded["losses"]["radis"] != recorded["losses"]["vanilla"]
    assert len(recorded["losses"]["vanilla"]) == 4
    assert {"original/retention/kl", "radis/retention/kl_stop", "vanilla/translation/de-en/chrf++"} <= set(recorded["scores"])
    assert recorded["scores"]["original/retention/kl"] == 0.0 and recorded["scores"]["radis/retention/kl"] > 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        raise SystemExit("usage: python tests/test_golden.py --record")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RADIS_BENCH_CACHE"] = str(Path(tmp) / "cache")
        os.chdir(tmp)
        result = tiny_run(Path(tmp))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"code": code_versions(), **result}, indent=1, sort_keys=True) + "\n")
    print(f"recorded {GOLDEN}")
