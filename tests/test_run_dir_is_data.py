"""A run directory and the caches are data, never code (issue 37): a malicious pickle planted
wherever radis-bench reads one runs nothing; the file is named and recomputed, or left out.
(The resumable training state's files have their own test in test_training.py.)"""

from __future__ import annotations

import json
import pickle
import shutil
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from test_damaged import finished  # noqa: F401  (the module's finished tiny run)
from test_run import cli


class Planted:
    """If ever unpickled, creates ``marker``: proof that loading ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_planted_in_every_file_of_a_run_directory_runs_nothing(finished, tmp_path):  # noqa: F811
    import torch

    from harness.cli import app

    source, args, env = finished
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    marker = tmp_path / "ran"
    blob = pickle.dumps(Planted(marker))
    # weights: a pickled adapter where safetensors were, and safetensors that are a pickle
    (run_dir / "models/kl/seed0/final/adapter_model.safetensors").unlink()
    torch.save(Planted(marker), run_dir / "models/kl/seed0/final/adapter_model.bin")
    (run_dir / "models/vanilla/seed0/final/adapter_model.safetensors").write_bytes(blob)
    for cell in ("kl-seed0", "vanilla-seed0"):  # an evaluation to redo, so that the weights are read
        (run_dir / f"results/{cell}/retention.json").unlink()
    # units, statistics, outputs, training files, the original's hidden states
    for rel in ("results/original/retention.json", "results/vanilla-seed0/items/translation.json",
                "models/vanilla/seed1/train_stats.json", "models/kl/seed1/examples.jsonl", "manifest.json"):
        (run_dir / rel).write_bytes(blob)
    (hidden,) = (run_dir / "work/shared/retention").glob("original-hidden-*.npy")
    np.save(hidden, np.array([Planted(marker)], dtype=object), allow_pickle=True)
    args = [a if a != str(source) else str(run_dir) for a in args]

    result = cli(args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()
    said = " ".join(result.stderr.split())
    for rel in ("models/kl/seed0/final cannot be loaded", "models/vanilla/seed0/final cannot be loaded",
                "results/original/retention.json cannot be read", "vanilla-seed0/items/translation.json cannot be read",
                "models/vanilla/seed1/train_stats.json cannot be read", f"{hidden.name} or its index cannot be read"):
        assert rel in said, rel
    columns = lambda path: [line.split(",")[:9] for line in path.read_text(encoding="utf-8").splitlines()]
    assert columns(run_dir / "scores.csv") == columns(source / "scores.csv")  # recomputed, the same numbers

    # what report and rescore read: the scores, the manifest, the outputs, the analysis record
    (run_dir / "outputs/kl-seed0/translation.jsonl").write_bytes(blob)
    rescored = CliRunner().invoke(app, ["rescore", str(run_dir), "--suite", "translation", "--option", "extraction",
                                        "--values", "full", "--out", str(tmp_path / "rescored")], env={"COLUMNS": "400"})
    assert rescored.exit_code == 0 and "outputs/kl-seed0/translation.jsonl cannot be read" in rescored.output
    for rel in ("manifest.json", "scores.csv", "analysis/plan.json"):
        path = run_dir / rel
        path.parent.mkdir(exist_ok=True)
        kept = path.read_bytes() if path.exists() else None
        path.write_bytes(blob)
        reported = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "board")], env={"COLUMNS": "400"})
        lines = [line for line in reported.output.splitlines() if line.strip()]
        assert reported.exit_code == 2 and len(lines) == 1 and rel in lines[0], reported.output
        path.write_bytes(kept) if kept is not None else path.unlink()
    assert not marker.exists()


def test_a_pickle_planted_in_a_cache_row_runs_nothing_and_counts_as_missing(tmp_path, monkeypatch):
    from harness.model import comet
    from harness.model.generation import GenerationCache
    from harness.plugins.requests import Output
    from suites._judges import _JudgmentCache
    from suites.alpaca_eval import _VerdictCache

    marker = tmp_path / "ran"
    blob = pickle.dumps(Planted(marker))

    def plant(path, table, values):
        with sqlite3.connect(path) as db:
            db.execute(f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * len(values))})", values)

    generations = GenerationCache(tmp_path / "generations.sqlite")
    for row in (("k", blob, 3, 1, None), ("k", "text", 3, 1, blob), ("k", "text", blob, 1, None), ("k", "text", 3, 1, '["x"]')):
        plant(generations.path, "generations", row)
        assert generations.get("k") is None
    generations.put_many([("k", Output("text", 3, True, token_ids=[1, 2, 3]))])
    assert generations.get("k").token_ids == [1, 2, 3]

    judgments = _JudgmentCache()
    plant(judgments.db.path, "judgments", ("k", blob))
    assert judgments.get("k") is None
    judgments.put_many({"k": "Rating: [[7]]"})
    assert judgments.get("k") == "Rating: [[7]]"

    config = tmp_path / "judge.yaml"
    config.write_text("judge:\n  fn_completions: openai_completions\n")
    verdicts = _VerdictCache(config)
    pair = ("instruction", "reference", "answer")
    for value in (blob, json.dumps([1, 2]), "not json"):
        plant(verdicts.db.path, "verdicts", (verdicts._key(pair), value))
        assert verdicts.get(pair) is None
    verdicts.put_many({pair: {"preference": 2}})
    assert verdicts.get(pair) == {"preference": 2}

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"a checkpoint")

    class Scores:
        def predict(self, data, **kwargs):
            return type("Prediction", (), {"scores": [0.25] * len(data)})()

    monkeypatch.setattr(comet, "_load_comet", lambda path: Scores())
    scorer = comet.CometScorer(str(ckpt), 8)
    triple = ("source", "translation", "reference")
    plant(scorer.db.path, "scores", (scorer._key(triple), blob))
    assert scorer.score([triple]) == [pytest.approx(25.0)]  # the planted row counted as missing: scored anew
    assert not marker.exists()
