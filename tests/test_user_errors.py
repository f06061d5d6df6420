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
    no_configs = tmp_path / "judge_folder"  # a folder where an annotator config folder was meant
    no_configs.mkdir()
    (no_configs / "notes.txt").write_text("no configs.yaml here")
    bad_yaml = tmp_path / "judge.yaml"
    bad_yaml.write_text("annotator: [unclosed\n")
    local_judge = tmp_path / "local_judge.yaml"
    local_judge.write_text("local_judge:\n  fn_completions: huggingface_local_completions\n  completions_kwargs: {model_name: x}\n")
    plans = {}
    for name, contrast in (("plan_row", "{a: nope, b: vanilla, metric: retention/kl}"),
                           ("plan_metric", "{a: radis, b: vanilla, metric: retention/nope}"),
                           ("plan_suite", "{a: radis, b: original, metric: gsm8k/accuracy}")):
        plans[name] = tmp_path / f"{name}.yaml"
        plans[name].write_text(f"analysis:\n  primary: [{contrast}]\n  seeds: 3\n")
    return {"file": str(a_file), "no_weights": str(no_weights), "broken": str(broken), "empty": str(empty_data),
            "misaligned": str(misaligned), "missing": str(tmp_path / "nowhere" / "x.ckpt"), "tmp": str(tmp_path),
            "model": str(tiny_checkpoint), "no_configs": str(no_configs), "bad_yaml": str(bad_yaml),
            "local_judge": str(local_judge), **{name: str(path) for name, path in plans.items()}}


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
    (["--comet-model", "{tmp}"], "holds no checkpoints/model.ckpt"),
    (["--suites", "alpaca_eval", "--judge", "{missing}"], "does not exist; give the name of an alpaca-eval annotator config"),
    (["--suites", "alpaca_eval", "--judge", "no_such_annotator"], "'no_such_annotator' is not an alpaca-eval annotator config"),
    (["--suites", "mt_bench", "--judge", "{missing}"], "does not exist; give the name of an alpaca-eval annotator config"),
    (["--safety-classifier", "{no_weights}"], "holds no weights"),
    (["--safety-classifier", "{broken}"], "config.json is not valid JSON"),
    (["--model", "{no_weights}"], "holds no weights"),
    (["--model", "{file}"], "--model {file} is a file, not a folder"),
    (["--out", "{file}"], "is a file, not a folder"),
    (["--out", "{file}/run"], "is a file, so the run directory cannot be created there"),
    (["--data-dir", "{empty}"], "is empty"),
    (["--data-dir", "{misaligned}"], "differ in length"),
    (["--data-dir", "{missing}"], "does not exist"),
    (["--lr", "-1"], "budget.learning_rate must be positive"),
    (["--steps", "0"], "steps must be positive"),
    (["--batch-size", "6", "--set", "budget.grad_accum=4"], "must be divisible by grad_accum"),
    (["--set", "budget.warmup_ratio=1.5"], "warmup_ratio must be at least 0 and below 1"),
    (["--set", "budget.schedule=exponential"], "schedule 'exponential' is unknown"),
    (["--set", "lora.r=0"], "lora.r must be positive"),
    (["--set", "lora.dropout=1"], "dropout must be at least 0 and below 1"),
    (["--seeds", "0,0"], "--seeds must be distinct"),
    (["--seeds", "x"], "not a valid"),
    (["--eval-size", "0"], "--eval-size must be positive"),
    (["--set", "max_new_tokens=0"], "--max-new-tokens must be positive"),
    (["--set", "nope.setting=1"], "'nope' is not a method, a suite"),
    (["--set", "ifeval.colour=red"], "Unknown setting 'colour'"),
    (["--suites", "translation,nope"], "Unknown suite 'nope'"),
    (["--suites", ""], "--suites is empty"),
    (["--pairs", "de-fr"], "Unknown language pair 'de-fr'"),
    (["--sweep", "radis=0,1"], "--sweep 'radis=0,1' must look like METHOD.option"),
    (["--sweep", "radis.no_such=0,1"], "Unknown setting 'no_such'"),
    (["--sweep", "nope.x=0,1"], "Unknown method 'nope'"),
    (["--set", "lm_eval.include_path={missing}", "--suites", "lm_eval"], "lm_eval.include_path {missing} does not exist"),
    (["--set", "lm_eval.include_path={file}", "--suites", "lm_eval"], "lm_eval.include_path {file} is a file, not a folder"),
    (["--only", "method=nope"], "'nope' is not one of this run's methods"),
    (["--backend", "tensorrt"], "generation_backend 'tensorrt' is unknown"),
    (["--set", "device=tpu"], "device must be auto, cpu or cuda"),
    (["--config", "{tmp}"], "is a folder, not a file"),
    (["--methods", "vanilla@seeds=a+b"], "seeds 'a+b' must be whole numbers"),
    (["--set", "radis.end_of_turn_weight=-1"], "end_of_turn_weight must be 0 or more"),
    (["--set", "sdft.top_k=-1"], "sdft.top_k must be 0 or more"),
    (["--set", "sdft.temperature=0"], "sdft.temperature must be positive"),
    (["--set", "task_kl.batch_size=0", "--suites", "task_kl"], "task_kl.batch_size must be positive, got 0"),
    (["--set", "analysis.alpha=1.5"], "analysis.alpha must be positive and below 1"),
    (["--set", "analysis.secondary=bonferroni"], "secondary 'bonferroni' is unknown"),
    (["--config", "{plan_row}"], "analysis.primary names row 'nope', which is not a row of this run"),
    (["--config", "{plan_metric}"], "which retention does not score"),
    (["--config", "{plan_suite}"], "'gsm8k' is not among this run's suites"),
    # issue 37: ranges on every option, those that depend on the model's shape (the tiny model: 2 layers, a vocabulary
    # of 381, a context of 512, hidden size 32), names an external library must know, paths of every kind
    (["--methods", "s3ft", "--set", "s3ft.threshold=150"], "s3ft.threshold must be between 0 and 100, got 150"),
    (["--methods", "vanilla,s:s3ft@threshold=101"], "s3ft.threshold must be between 0 and 100, got 101"),
    (["--methods", "freeze", "--set", "freeze.k=5"], "freeze.k must be at least 0 and below 2 (the model's num_hidden_layers)"),
    (["--methods", "freeze", "--sweep", "freeze.k=0,9"], "freeze.k must be at least 0 and below 2"),
    (["--methods", "freeze", "--set", "freeze.fraction=1"], "freeze.fraction must be at least 0 and below 1"),
    (["--methods", "sdft", "--set", "sdft.top_k=5000"], "sdft.top_k must be at least 0 and below 381 (the model's vocab_size)"),
    (["--set", "budget.max_length=4096"], "budget.max_length must be positive and at most 512 (the model's max_position_embeddings)"),
    (["--set", "max_new_tokens=100000"], "--max-new-tokens must be positive and at most 512"),
    (["--set", "translation.max_new_tokens=1000"], "translation.max_new_tokens must be positive and at most 512"),
    (["--methods", "radis", "--set", "radis.max_new_tokens=1000"], "radis.max_new_tokens must be positive and at most 512"),
    (["--set", "lora.r=64"], "lora.r must be positive and at most 32 (the model's hidden_size)"),
    (["--methods", "vanilla,big:vanilla@lora.r=128"], "method 'big': lora.r must be positive and at most 32"),
    (["--set", "lora.target_modules=w_pack"], "lora.target_modules names no module of this model (w_pack)"),
    (["--set", "lora.alpha=0"], "lora.alpha must be positive"),
    (["--methods", "hft", "--set", "hft.fraction=0"], "hft.fraction must be positive and at most 1"),
    (["--methods", "merge", "--set", "merge.density=1.5"], "merge.density must be positive and at most 1"),
    (["--methods", "merge", "--set", "merge.alpha=-1"], "merge.alpha must be 0 or more"),
    (["--methods", "ewc", "--set", "ewc.fisher_samples=0"], "ewc.fisher_samples must be positive"),
    (["--methods", "ewc", "--set", "ewc.weight=-1"], "ewc.weight must be 0 or more"),
    (["--set", "radis.top_p=0"], "radis.top_p must be positive and at most 1"),
    (["--set", "radis.max_repetition=2"], "radis.max_repetition must be between 0 and 1"),
    (["--set", "radis.min_rationale_words=-3"], "radis.min_rationale_words must be 0 or more"),
    (["--suites", "mt_bench", "--set", "mt_bench.judge_workers=0"], "mt_bench.judge_workers must be positive"),
    (["--suites", "lm_eval", "--set", "lm_eval.num_fewshot=-1"], "lm_eval.num_fewshot must be 0 or more"),
    (["--set", "budget.weight_decay=-0.1"], "budget.weight_decay must be 0 or more"),
    (["--set", "budget.save_every=-1"], "budget.save_every must be 0 or more"),
    (["--set", "budget.target_tokens=0"], "budget.target_tokens must be positive"),
    (["--set", "gen_batch_size=-1"], "--gen-batch-size must be 0 or more"),
    (["--set", "data_seed=-1"], "--data-seed must be 0 or more"),
    (["--seeds", "0,-1"], "--seeds must be 0 or more, got -1"),
    (["--train-size", "0"], "--train-size must be positive"),
    (["--set", "analysis.looks=0"], "analysis.looks must be at least 1"),
    (["--methods", "s3ft", "--set", "s3ft.judge=comet", "--set", "s3ft.comet_model={tmp}"], "holds no checkpoints/model.ckpt"),
    (["--suites", "lm_eval", "--lm-eval-tasks", "hellaswg"], "'hellaswg', which lm-eval does not know (close: hellaswag"),
    (["--comet-model", "wmt22-comet-da"], "'wmt22-comet-da' is neither a local COMET checkpoint nor a COMET model name"),
    (["--comet-model", "{missing}"], "--comet-model {missing} does not exist; give a COMET .ckpt file"),
    (["--suites", "mt_bench", "--judge", "{local_judge}"], "not an OpenAI-compatible chat model"),
    (["--suites", "alpaca_eval", "--judge", "{no_configs}"], "is a folder without configs.yaml"),
    (["--suites", "alpaca_eval", "--judge", "{bad_yaml}"], "is not valid YAML"),
    (["--data-dir", "{file}"], "--data-dir {file} is a file, not a folder"),
    (["--safety-classifier", "{file}"], "--safety-classifier {file} is a file, not a folder"),
    (["--config", "{missing}"], "does not exist"),
    # issue 37, the second list: values no setting means, repeats, partial names, a command line that is not one
    (["--methods", "radis", "--set", "radis.rationale_weight=inf"], "radis.rationale_weight must be a finite number, got inf"),
    (["--methods", "kl", "--set", "kl.kl_weight=1e400"], "kl.kl_weight must be a finite number, got inf"),
    (["--pairs", "de-en,de-en"], "--pairs names de-en twice"),
    (["--methods", "radis", "--sweep", "radis.rationale_weight=0,1", "--sweep", "radis.rationale_weight=0.5"],
     "--sweep gives the axis radis.rationale_weight twice"),
    (["--methods", "vanilla@nope=1"], "Unknown setting 'nope' in method 'vanilla@nope=1'; it has no settings."),
    (["--set", "lora.target_modules=q_proj,nope"], "lora.target_modules names nope, which this model does not have"),
    (["--set", "budget.max_length=2"], "budget.max_length 2 leaves no room for a response"),
    (["--methods", "vanilla,short:vanilla@budget.max_length=3"], "method 'short': budget.max_length 3 leaves no room for a response"),
    (["--set", "translation.comet_model={file}"], "--comet-model {file} is not a COMET checkpoint (no PyTorch .ckpt archive)"),
    (["--gen-batch-size", "abc"], "Invalid value for '--gen-batch-size'"),
    (["--steps", "x"], "Invalid value for '--steps'"),
    (["--no-such-option"], "No such option: --no-such-option"),
    (["--sweep", "budget.steps=1,2"], "Sweep axis 'budget.steps' names no row: a sweep varies one row's settings, so give the "
                                      "row first, e.g. vanilla.budget.steps=1,2"),
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
        assert len(lines) == 1 and lines[0].startswith("error: ") and says.format(**bad_inputs) in lines[0], (mode, result.output[-2000:])
        assert "Traceback" not in result.output
    assert not (bad_inputs["tmp"] and __import__("pathlib").Path(bad_inputs["tmp"], "run", "manifest.json").exists())


def test_report_mistakes_are_one_line(tmp_path):
    from harness.cli import app

    for args, says in ((["report", str(tmp_path)], "no scores.csv"),
                       (["report", str(tmp_path), "--prefix", "oops"], "no scores.csv")):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output


def test_device_cuda_without_a_gpu_is_caught_by_the_dry_run_too(bad_inputs, monkeypatch):
    import torch

    from harness.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for mode in (["--dry-run"], []):
        result = CliRunner().invoke(app, _args(bad_inputs, ["--set", "device=cuda"]) + mode)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, (mode, result.output[-2000:])
        assert "device=cuda was asked for, but torch sees no CUDA GPU" in lines[0]


def test_a_command_line_that_does_not_parse_is_one_line():
    from harness.cli import app

    for args, says in ((["rn"], "No such command 'rn'"), (["report"], "Missing argument"),
                       (["rescore", "somewhere"], "Missing option '--suite'"), (["list", "extra"], "unexpected extra argument")):
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.output


def test_settings_of_a_method_or_suite_the_run_does_not_have_are_noted_not_dropped_silently(bad_inputs):
    from harness.cli import app

    args = _args(bad_inputs, ["--methods", "vanilla", "--suites", "translation", "--set", "radis.rationale_weight=0.5",
                              "--set", "ifeval.max_new_tokens=0", "--dry-run"])
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "Note: radis.rationale_weight not used: radis is not among this run's methods (vanilla)" in result.output
    assert "Note: ifeval.max_new_tokens not used: ifeval is not among this run's suites (translation)" in result.output
