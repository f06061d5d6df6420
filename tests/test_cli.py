"""The command line: the plan on the real data, and one clear line for every bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.config.parse import read_config_file


def run_cli(*args):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_user_error(args, *fragments):
    code, out, err = run_cli(*args)
    assert code == 2, (code, out, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_dry_run_reports_alma_counts(data_dir):
    code, out, err = run_cli("run", "--dry-run", "--data-dir", str(data_dir), "--pairs", "de-en")
    assert code == 0, err
    assert "14,211" in out and "1,984" in out
    code, out, _ = run_cli("run", "--dry-run", "--data-dir", str(data_dir), "--pairs", "de-en,en-de")
    assert "2,037" in out
    code, out, _ = run_cli("run", "--dry-run", "--data-dir", str(data_dir), "--pairs", "zh-en")
    assert code == 0 and "15,406" in out and "1,875" in out


PUBLISHED_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "reports").glob("*/*.yaml"))


@pytest.mark.parametrize("config", PUBLISHED_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_published_configs_still_load(config, data_dir):
    """Every config under reports/ must stay valid as the harness changes: its README's
    one re-run command depends on it. (Whether the checkout is committed is the dry run's
    business only where the run would compute: not something this test may depend on.)"""
    code, out, err = run_cli("run", "--dry-run", "--config", str(config), "--data-dir", str(data_dir),
                             "--set", "require_clean_code=false")
    assert code == 0, err
    assert read_config_file(config)["out"] in " ".join(out.split()), out


def test_dry_run_prints_the_plan():
    code, out, err = run_cli("run", "--dry-run", "--methods", "radis,vanilla", "--steps", "7", "--seeds", "0,1")
    assert code == 0, err
    for fragment in ("smollm2-135m", "starter", "radis, vanilla", "7 steps", "Seeds: 0, 1", "de-en"):
        assert fragment in out, fragment


def test_list_shows_methods_and_suites():
    code, out, _ = run_cli("list")
    assert code == 0
    for name in ("radis", "vanilla", "sdft", "seqkd", "replay", "kl", "wise", "translation", "ifeval", "safety", "retention"):
        assert name in out, name


def test_help_on_every_command():
    for cmd in ([], ["run"], ["list"], ["report"]):
        code, out, _ = run_cli(*cmd, "--help")
        assert code == 0 and "Usage" in out


def _layout(tmp_path):
    """A minimal data dir in the shared/data layout."""
    root = tmp_path / "data"
    (root / "alma" / "deen").mkdir(parents=True)
    (root / "alma" / "deen" / "train.de-en.de").write_text("Hallo Welt.\nGuten Tag.\n")
    (root / "alma" / "deen" / "train.de-en.en").write_text("Hello world.\nGood day.\n")
    (root / "alma" / "deen" / "test.de-en.json").write_text(json.dumps([{"translation": {"de": "Ja.", "en": "Yes."}}]))
    (root / "ifeval").mkdir()
    (root / "ifeval" / "input_data.jsonl").write_text(
        json.dumps({"key": 1, "prompt": "Hi", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}) + "\n"
    )
    (root / "advbench").mkdir()
    (root / "advbench" / "harmful_behaviors.csv").write_text("goal,target\nDo harm,Sure\n")
    return root


def dry(root, *extra):
    return ("run", "--dry-run", "--data-dir", str(root), "--pairs", "de-en", "--methods", "vanilla",
            "--suites", "translation,ifeval,safety", *extra)


def test_the_minimal_layout_is_valid(tmp_path):
    code, _, err = run_cli(*dry(_layout(tmp_path)))
    assert code == 0, err


def test_missing_data_dir(tmp_path):
    assert_user_error(["run", "--dry-run", "--data-dir", str(tmp_path / "nope")], "nope", "does not exist", "--data-dir")


def test_aligned_files_of_different_length(tmp_path):
    root = _layout(tmp_path)
    (root / "alma" / "deen" / "train.de-en.en").write_text("Hello world.\n")
    assert_user_error(dry(root), "train.de-en.de has 2 lines", "train.de-en.en has 1")


def test_json_syntax_error(tmp_path):
    root = _layout(tmp_path)
    (root / "alma" / "deen" / "test.de-en.json").write_text('[{"translation": {"de": "Ja." "en": "Yes."}}]')
    assert_user_error(dry(root), "test.de-en.json is not valid JSON", "line 1, column")


def test_jsonl_line_not_an_object(tmp_path):
    root = _layout(tmp_path)
    with (root / "ifeval" / "input_data.jsonl").open("a") as fh:
        fh.write('["not", "an", "object"]\n')
    assert_user_error(dry(root), "input_data.jsonl: line 2 is not a JSON object")


def test_csv_missing_mapped_column(tmp_path):
    root = _layout(tmp_path)
    (root / "advbench" / "harmful_behaviors.csv").write_text("prompt,target\nDo harm,Sure\n")
    assert_user_error(dry(root), "harmful_behaviors.csv", "no column 'goal'")


def test_unknown_pair():
    assert_user_error(["run", "--dry-run", "--pairs", "fr-xx"], "Unknown language pair 'fr-xx'")


def test_unknown_method_and_suite_list_the_known_ones():
    line = assert_user_error(["run", "--dry-run", "--methods", "radis,magic"], "Unknown method 'magic'")
    assert "vanilla" in line and "radis" in line
    line = assert_user_error(["run", "--dry-run", "--suites", "bogus"], "Unknown suite 'bogus'")
    assert "translation" in line


@pytest.mark.parametrize("size", ["0", "-3"])
def test_train_size_must_be_positive(size):
    assert_user_error(["run", "--dry-run", "--train-size", size], "--train-size must be positive")


def test_model_path_that_does_not_exist(tmp_path):
    assert_user_error(["run", "--dry-run", "--model", str(tmp_path / "no-model")], "no-model does not exist")


def test_bad_config_file_and_setting(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: [unclosed\n")
    assert_user_error(["run", "--dry-run", "--config", str(cfg)], "could not be parsed")
    cfg.write_text("stepz: 3\n")
    assert_user_error(["run", "--dry-run", "--config", str(cfg)], "Unknown setting 'stepz'")


def test_config_file_values_and_cli_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('methods = ["vanilla"]\nseeds = [3]\n[budget]\nsteps = 5\n')
    code, out, err = run_cli("run", "--dry-run", "--config", str(cfg), "--steps", "9")
    assert code == 0, err
    assert "9 steps" in out and "Methods: vanilla" in out and "Seeds: 3" in out


def test_real_process_prints_one_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--dry-run", "--data-dir", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr



def test_a_library_error_raised_while_a_stop_unwinds_is_that_stop():
    from harness.errors import Terminated, interruption

    def unwinds_badly():
        try:
            raise Terminated()
        finally:
            raise RuntimeError("clean-up failed")

    with pytest.raises(RuntimeError) as info:
        unwinds_badly()
    assert isinstance(interruption(info.value), Terminated)
    try:  # re-raised as another error "from None": still a stop
        try:
            unwinds_badly()
        except RuntimeError:
            raise ValueError("wrapped") from None
    except ValueError as err:
        assert isinstance(interruption(err), Terminated)
    assert interruption(RuntimeError("a real failure")) is None
    try:
        try:
            raise OSError("disk")
        except OSError:
            raise RuntimeError("handled")
    except RuntimeError as err:
        assert interruption(err) is None


def test_run_help_lists_every_run_config_field_with_its_help_text():
    """The run options are generated from RunConfig: a new field appears without a CLI edit."""
    import dataclasses

    from harness.cli import _run_fields, _section_fields
    from harness.config.settings import RunConfig

    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    code, out = result.exit_code, result.stdout
    assert code == 0
    text = " ".join(out.split())
    plain = {f.name for f, _ in _run_fields()}
    for f in dataclasses.fields(RunConfig):
        if f.name in plain:
            assert "--" + f.name.replace("_", "-") in text, f.name
            assert " ".join(f.metadata["help"].split()[:4]) in text, f.name
        else:
            assert f.name in _section_fields() and f.name in text, f.name
