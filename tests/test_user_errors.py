"""Every mistake a user can make is caught before any compute: one line, exit 2, no
traceback, from the dry run and from a real run alike (which then creates nothing)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


@pytest.fixture
def bad_inputs(tmp_path, tiny_checkpoint):
    """Paths a user may give by mistake."""
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "llama"}))
    broken = tmp_path / "broken_config"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    empty_data = tmp_path / "empty_data"
    (empty_data / "alma" / "deen").mkdir(parents=True)
    (empty_data / "alma" / "deen" / "train.de-en.de").write_text("")
    (empty_data / "alma" / "deen" / "train.de-en.en").write_text("")
    (empty_data / "alma" / "deen" / "test.de-en.json").write_text(json.dumps([{"translation": {"de": "Ja.", "en": "Yes."}}]))
    misaligned = tmp_path / "misaligned"
    (misaligned / "alma" / "deen").mkdir(parents=True)
    (misaligned / "alma" / "deen" / "train.de-en.de").write_text("a\nb\n")
    (misaligned / "alma" / "deen" / "train.de-en.en").write_text("a\n")
    (misaligned / "alma" / "deen" / "test.de-en.json").write_text(json.dumps([{"translation": {"de": "Ja.", "en": "Yes."}}]))
    plans = {}
    for name, contrast in (("plan_row", "{a: nope, b: vanilla, metric: retention/kl}"),
                           ("plan_metric", "{a: radis, b: vanilla, metric: retention/nope}"),
                           ("plan_suite", "{a: radis, b: original, metric: gsm8k/accuracy}")):
        plans[name] = tmp_path / f"{name}.yaml"
        plans[name].write_text(f"analysis:\n  primary: [{contrast}]\n  seeds: 3\n")
    return {"file": str(a_file), "no_weights": str(no_weights), "broken": str(broken), "empty": str(empty_data),
            "misaligned": str(misaligned), "missing": str(tmp_path / "nowhere" / "x.ckpt"), "tmp": str(tmp_path),
            "model": str(tiny_checkpoint), **{name: str(path) for name, path in plans.items()}}


MISTAKES = [
    (["--methods", "radis", "--set", "radis.rationale_weight=-1"], "rationale_weight must be 0 or more"),
    (["--set", "radis.rationale_fraction=2"], "rationale_fraction must be between 0 and 1"),
    (["--set", "radis.cutoff=sometimes"], "radis.cutoff 'sometimes' is unknown"),
    (["--set", "sdft.chrf_floor=120"], "chrf_floor must be between 0 and 100"),
    (["--set", "sdft.extraction=last_word"], "sdft.extraction 'last_word' is unknown"),
    (["--methods", "replay", "--set", "replay.ratio=1"], "replay.ratio must be at least 0 and below 1"),
    (["--methods", "replay", "--set", "replay.replay_set=nope"], "Unknown data set 'nope'"),
    (["--methods", "wise", "--set", "wise.alpha=2"], "wise.alpha must be between 0 and 1"),
    (["--methods", "kl", "--set", "kl.kl_weight=-0.5"], "kl.kl_weight must be 0 or more"),
    (["--set", "retention.instruction_set=advbench"], "not a set of instructions"),
    (["--set", "retention.batch_size=0"], "must be positive"),
    (["--set", "translation.max_new_tokens=0"], "translation.max_new_tokens must be positive"),
    (["--extraction", "last_line"], "--extraction) 'last_line' is unknown"),
    (["--comet-model", "{missing}"], "--comet-model"),
    (["--comet-model", "{tmp}"], "holds no checkpoints/model.ckpt"),
    (["--suites", "alpaca_eval", "--judge", "{missing}"], "is not an alpaca-eval annotator config"),
    (["--suites", "mt_bench", "--judge", "{missing}"], "does not exist"),
    (["--safety-classifier", "{no_weights}"], "holds no weights"),
    (["--safety-classifier", "{broken}"], "config.json is not valid JSON"),
    (["--model", "{no_weights}"], "holds no weights"),
    (["--model", "{file}"], "does not exist"),
    (["--out", "{file}"], "is a file, not a folder"),
    (["--out", "{file}/run"], "is a file, so the run directory cannot be created there"),
    (["--data-dir", "{empty}"], "is empty"),
    (["--data-dir", "{misaligned}"], "differ in length"),
    (["--data-dir", "{missing}"], "does not exist"),
    (["--lr", "-1"], "learning rate (--lr) must be positive"),
    (["--steps", "0"], "steps must be positive"),
    (["--batch-size", "6", "--set", "budget.grad_accum=4"], "must be positive and divisible by grad_accum"),
    (["--set", "budget.warmup_ratio=1.5"], "warmup_ratio must be at least 0 and below 1"),
    (["--set", "budget.schedule=exponential"], "schedule 'exponential' is unknown"),
    (["--set", "lora.r=0"], "r and alpha must be positive"),
    (["--set", "lora.dropout=1"], "dropout must be at least 0 and below 1"),
    (["--seeds", "0,0"], "--seeds must be distinct"),
    (["--seeds", "x"], "not a valid"),
    (["--eval-size", "0"], "--eval-size must be a positive number"),
    (["--set", "max_new_tokens=0"], "max_new_tokens must be a positive number"),
    (["--set", "nope.setting=1"], "'nope' is not a method, a suite"),
    (["--set", "ifeval.colour=red"], "Unknown setting 'colour'"),
    (["--suites", "translation,nope"], "Unknown suite 'nope'"),
    (["--suites", ""], "--suites is empty"),
    (["--pairs", "de-fr"], "Unknown language pair 'de-fr'"),
    (["--sweep", "radis=0,1"], "--sweep 'radis=0,1' must look like METHOD.option"),
    (["--sweep", "radis.no_such=0,1"], "Unknown setting 'no_such'"),
    (["--sweep", "nope.x=0,1"], "Unknown method 'nope'"),
    (["--set", "lm_eval.include_path={missing}", "--suites", "lm_eval"], "is not a folder"),
    (["--only", "method=nope"], "'nope' is not one of this run's methods"),
    (["--backend", "tensorrt"], "generation_backend 'tensorrt' is unknown"),
    (["--set", "device=tpu"], "device must be auto, cpu or cuda"),
    (["--config", "{tmp}"], "is a folder, not a file"),
    (["--methods", "vanilla@seeds=a+b"], "seeds 'a+b' must be whole numbers"),
    (["--set", "radis.end_of_turn_weight=-1"], "end_of_turn_weight must be 0 or more"),
    (["--set", "sdft.top_k=-1"], "top_k >= 0"),
    (["--set", "sdft.temperature=0"], "temperature > 0"),
    (["--set", "task_kl.batch_size=0", "--suites", "task_kl"], "task_kl.batch_size must be positive, got 0"),
    (["--set", "analysis.alpha=1.5"], "analysis: alpha must lie between 0 and 1"),
    (["--set", "analysis.secondary=bonferroni"], "secondary 'bonferroni' is unknown"),
    (["--config", "{plan_row}"], "analysis.primary names row 'nope', which is not a row of this run"),
    (["--config", "{plan_metric}"], "which retention does not score"),
    (["--config", "{plan_suite}"], "'gsm8k' is not among this run's suites"),
]


def _args(bad_inputs, extra):
    args = ["run", "--model", bad_inputs["model"], "--out", bad_inputs["tmp"] + "/run"]
    return args + [a.format(**bad_inputs) for a in extra]


@pytest.mark.parametrize("extra, says", MISTAKES, ids=[" ".join(m[0])[:60] for m in MISTAKES])
def test_a_mistake_is_one_line_and_exit_2_before_any_compute(bad_inputs, extra, says):
    from harness.cli import app

    args = _args(bad_inputs, extra)
    for mode in (["--dry-run"], []):  # the dry run checks exactly what a real run checks first
        result = CliRunner().invoke(app, args + mode)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, (mode, result.output[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], (mode, result.output[-2000:])
        assert "Traceback" not in result.output
    assert not (bad_inputs["tmp"] and __import__("pathlib").Path(bad_inputs["tmp"], "run", "manifest.json").exists())


def test_report_mistakes_are_one_line(tmp_path):
    from harness.cli import app

    for args, says in ((["report", str(tmp_path)], "no scores.csv"),
                       (["report", str(tmp_path), "--prefix", "oops"], "no scores.csv")):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
