"""A damaged run directory is never used silently (issue 37): `report` and `rescore` name every
unit, per-item statistics or outputs file they cannot read, leave it out and say in the report
which numbers and intervals that cost; `report` checks scores.csv against the unit files; `run`
names them and recomputes what it cannot read; a garbled lock file is no obstacle."""

from __future__ import annotations

import csv
import shutil

import pytest
from typer.testing import CliRunner

from test_run import cli

ARGS = ["--methods", "vanilla,kl", "--suites", "translation,retention", "--seeds", "0,1", "--train-size", "8",
        "--eval-size", "4", "--steps", "2", "--batch-size", "4", "--set", "max_new_tokens=8",
        "--set", "retention.max_new_tokens=8", "--set", "translation.max_new_tokens=8"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_checkpoint):
    """A finished tiny run: two methods, two seeds, two suites."""
    root = tmp_path_factory.mktemp("finished")
    env = {"RADIS_BENCH_CACHE": str(root / "cache")}
    args = ["run", "--model", str(tiny_checkpoint), "--out", str(root / "run"), *ARGS]
    result = cli(args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", args, env


@pytest.fixture
def run_dir(finished, tmp_path):
    """A copy of the finished run to damage."""
    shutil.copytree(finished[0], tmp_path / "run")
    return tmp_path / "run"


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def report(run_dir, out, *extra):
    from harness.cli import app

    return CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out), *extra], env={"COLUMNS": "400"})


def board(folder) -> dict[tuple[str, str, str], dict]:
    with (folder / "leaderboard.csv").open(encoding="utf-8") as fh:
        return {(r["method"], r["suite"], r["metric"]): r for r in csv.DictReader(fh)}


def warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("warning:")]


def test_a_truncated_item_statistics_file_is_named_and_the_intervals_it_costs_are_noted(run_dir, tmp_path):
    intact = report(run_dir, tmp_path / "intact")
    assert intact.exit_code == 0 and not warnings(intact.output), intact.output
    truncate(run_dir / "results" / "kl-seed0" / "items" / "retention.json")
    result = report(run_dir, tmp_path / "board")
    assert result.exit_code == 0, result.output
    (line,) = warnings(result.output)
    assert "results/kl-seed0/items/retention.json cannot be read (not valid JSON at line" in line
    assert "the intervals of kl on retention that need it are left out" in line
    before, after = board(tmp_path / "intact"), board(tmp_path / "board")
    assert before.keys() == after.keys()
    note = "seed 0's per-item statistics results/kl-seed0/items/retention.json cannot be read"
    for key, row in after.items():
        method, suite, _ = key
        assert row["mean"] == before[key]["mean"]  # no number changed
        if (method, suite) == ("kl", "retention"):
            assert row["ci_low"] == row["ci_high"] == row["delta_low"] == ""
            assert note in row["note"] and "no intervals for this row on retention" in row["note"]
        elif suite == "retention":  # the other rows keep their intervals; no row of a column is marked best or tied
            assert {k: v for k, v in row.items() if k not in ("best", "tied")} == \
                {k: v for k, v in before[key].items() if k not in ("best", "tied")} and row["tied"] == row["best"] == "False"
        else:
            assert row == before[key]  # every other suite's rows keep their intervals and verdicts
    assert before[("kl", "retention", "kl")]["ci_low"] != ""
    md = (tmp_path / "board" / "leaderboard.md").read_text(encoding="utf-8")
    assert sum(note in line for line in md.splitlines() if line.startswith("- [")) == 1  # one note, for every cell it touched
    assert "per-item statistics results/kl-seed0/items/retention.json cannot be read" in \
        (tmp_path / "board" / "leaderboard.html").read_text(encoding="utf-8")


def test_a_truncated_unit_file_is_left_out_of_the_report_and_noted(run_dir, tmp_path):
    truncate(run_dir / "results" / "kl-seed0" / "translation.json")
    result = report(run_dir, tmp_path / "board")
    assert result.exit_code == 0, result.output
    (line,) = warnings(result.output)
    assert "results/kl-seed0/translation.json cannot be read" in line and "its scores are left out of the report" in line
    rows = board(tmp_path / "board")
    chrf = rows[("kl", "translation", "de-en/chrf++")]
    assert chrf["n_seeds"] == "1" and chrf["seed_values"].startswith("1=")  # seed 1 only
    assert "seed 0's unit left out: results/kl-seed0/translation.json cannot be read" in chrf["note"]
    assert rows[("kl", "retention", "kl")]["n_seeds"] == "2" and "left out" not in rows[("kl", "retention", "kl")]["note"]


def test_scores_csv_is_checked_against_the_unit_files_it_summarises(run_dir, tmp_path):
    intact = report(run_dir, tmp_path / "intact")
    scores = (run_dir / "scores.csv").read_text(encoding="utf-8").splitlines()
    edited = []
    for line in scores:
        cells = next(csv.reader([line]))
        if cells[1:5] == ["vanilla", "1", "retention", "kl"]:
            cells[5] = "0.5"
        edited.append(cells)
    with (run_dir / "scores.csv").open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(edited)
    result = report(run_dir, tmp_path / "board")
    assert result.exit_code == 0 and intact.exit_code == 0, result.output
    (line,) = warnings(result.output)
    assert "scores.csv disagrees with results/vanilla-seed1/retention.json (kl value: 0.5 in scores.csv" in line
    before, after = board(tmp_path / "intact"), board(tmp_path / "board")
    for key, row in after.items():
        assert {k: v for k, v in row.items() if k != "note"} == {k: v for k, v in before[key].items() if k != "note"}
    assert "scores.csv disagreed with seed 1's unit" in after[("vanilla", "retention", "kl")]["note"]


def test_run_names_what_it_cannot_read_and_recomputes_it(finished, run_dir, tmp_path):
    _, args, env = finished
    args = [a if a != str(finished[0]) else str(run_dir) for a in args]
    truncate(run_dir / "results" / "kl-seed0" / "translation.json")  # a unit: recomputed
    truncate(run_dir / "results" / "vanilla-seed1" / "items" / "retention.json")  # statistics: rewritten from the outputs
    truncate(run_dir / "results" / "kl-seed1" / "items" / "translation.json")  # ... and without outputs: the unit again
    (run_dir / "outputs" / "kl-seed1" / "translation.jsonl").unlink()
    truncate(run_dir / "models" / "kl" / "seed1" / "train_stats.json")  # a training: trained again
    (run_dir / ".lock").write_bytes(b"\x80\x04\x95garbled lock")  # a lock file's content is no obstacle
    (run_dir / ".state.lock").write_bytes(b"")
    result = cli(args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    said = " ".join(result.stderr.split())  # rich wraps long lines
    assert "vanilla-seed1/items/retention.json cannot be read (not valid JSON" in said and \
        "rewriting it from outputs/vanilla-seed1/retention.jsonl" in said
    assert "kl-seed0/translation.json cannot be read" in said and "evaluation kl-seed0 on translation counts as not" in said
    assert "kl-seed1/items/translation.json cannot be read" in said and "evaluation kl-seed1 on translation counts" in said
    assert "seed1/train_stats.json cannot be read" in said and "training kl seed 1 counts as not finished; recomputing" in said
    assert "3 units computed" in said  # two evaluations and a training; everything else reused
    columns = slice(0, 9)
    rows = lambda path: [line.split(",")[columns] for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows(run_dir / "scores.csv") == rows(finished[0] / "scores.csv")
    for rel in ("results/kl-seed0/translation.json", "results/vanilla-seed1/items/retention.json", "models/kl/seed1/train_stats.json"):
        assert (run_dir / rel).read_text(encoding="utf-8").rstrip().endswith("}"), rel
    again = cli(args, env)
    assert again.returncode == 0 and "warning" not in again.stderr and "0 units computed" in again.stderr


def test_rescore_leaves_out_outputs_it_cannot_read(run_dir, tmp_path):
    from harness.cli import app

    truncate(run_dir / "outputs" / "kl-seed0" / "translation.jsonl", keep=0.7)
    result = CliRunner().invoke(app, ["rescore", str(run_dir), "--suite", "translation", "--option", "extraction",
                                      "--values", "first_line", "--out", str(tmp_path / "rescored")], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    (line,) = warnings(result.output)
    assert "outputs/kl-seed0/translation.jsonl cannot be read (line" in line and "kl-seed0 is left out of the comparison" in line
    md = (tmp_path / "rescored" / "translation-extraction.md").read_text(encoding="utf-8")
    assert "Left out (their saved outputs cannot be read):" in md and "- kl-seed0: outputs/kl-seed0/translation.jsonl" in md
    scored = (tmp_path / "rescored" / "translation-extraction.csv").read_text(encoding="utf-8")
    assert "kl-seed1" in scored and "kl-seed0" not in scored


def test_a_damaged_analysis_record_is_an_error_never_a_fresh_plan(run_dir, tmp_path):
    (run_dir / "analysis").mkdir()
    (run_dir / "analysis" / "plan.json").write_text('{"recorded": "2026-', encoding="utf-8")
    result = report(run_dir, tmp_path / "board")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "analysis/plan.json cannot be read" in lines[0], result.output
    assert "restore it from version control" in lines[0]


@pytest.mark.parametrize("command, says", [
    (["report", "{run}", "--out", "{file}"], "--out {file} is a file, not a folder"),
    (["report", "{file}"], "Run directory {file} is a file, not a folder"),
    (["report", "{run}", "{tmp}/nowhere"], "Run directory {tmp}/nowhere does not exist"),
    (["report", "{run}", "--out", "{file}/board"], "is a file, so the report folder cannot be created there"),
    (["rescore", "{file}", "--suite", "translation", "--option", "extraction", "--values", "full"], "is a file, not a folder"),
    (["rescore", "{run}", "--suite", "translation", "--option", "extraction", "--values", "full", "--out", "{file}"],
     "--out {file} is a file, not a folder"),
    (["report", "{run}", "{run}/"], "Run directory {run} is given twice"),
    (["report", "{run}", "--prefix", "{run}=a-", "--prefix", "{run}=b-"], "--prefix names {run} twice"),
    (["rescore", "{run}", "--suite", "translation", "--option", "extraction", "--values", "full,full"], "--values lists full twice"),
    (["rescore", "{run}", "--suite", "translation", "--option", "max_new_tokens", "--values", "4"],
     "translation.max_new_tokens changes what the model generates"),
    (["rescore", "{run}", "--suite", "translation", "--option", "comet_model", "--values", "nope"],
     "--comet-model 'nope' is neither a local COMET checkpoint nor a COMET model name"),
])
def test_report_and_rescore_mistakes_are_one_line(run_dir, tmp_path, command, says):
    from harness.cli import app

    names = {"run": str(run_dir), "file": str(tmp_path / "a_file"), "tmp": str(tmp_path)}
    (tmp_path / "a_file").write_text("not a folder")
    result = CliRunner().invoke(app, [c.format(**names) for c in command], env={"COLUMNS": "400"})
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and says.format(**names) in lines[0], result.output
    assert "Traceback" not in result.output


def test_an_unreadable_path_is_one_line(run_dir, tmp_path, monkeypatch):
    """Permissions, simulated (the tests may run as root, who reads everything)."""
    import os

    from harness.cli import app

    real = os.access
    denied = {str(run_dir), str(tmp_path / "locked")}
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: str(path) not in denied and real(path, mode, **kw))
    (tmp_path / "locked").mkdir()
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 2 and f"Run directory {run_dir} cannot be read (permission denied)" in result.output
    result = CliRunner().invoke(app, ["run", "--dry-run", "--out", str(tmp_path / "locked" / "run")])
    assert result.exit_code == 2 and f"{tmp_path / 'locked'} is not writable; choose another --out" in result.output
    result = CliRunner().invoke(app, ["run", "--dry-run", "--data-dir", str(run_dir)])
    assert result.exit_code == 2 and f"--data-dir {run_dir} cannot be read (permission denied)" in result.output


def test_a_lock_file_that_is_no_file_is_one_line(tiny_checkpoint, tmp_path):
    from harness.cli import app

    run_dir = tmp_path / "run"
    (run_dir / ".lock").mkdir(parents=True)
    result = CliRunner().invoke(app, ["run", "--model", str(tiny_checkpoint), "--out", str(run_dir), *ARGS])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines[-1].startswith("error: The lock file") and "cannot be opened" in lines[-1], result.output
    assert not (run_dir / "results").exists()
