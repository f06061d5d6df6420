"""scripts/looks.py: the looks at a run's primary contrasts from the harness's record, the
looks a run made before the harness counted them (from git history), and the differences
whose verdict changes when paired on the seeds two rows share."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from scipy import stats
from test_report import write_run

from harness.report import claims
from harness.config.settings import Analysis
from harness.config.parse import apply_settings
from harness.intervals import difference_interval
from harness.report.render import render_report
from harness.report.sequential import boundaries

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "looks.py"
spec = importlib.util.spec_from_file_location("looks", SCRIPT)
looks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(looks)

VANILLA_KL = [0.30, 0.40, 0.20, 0.35, 0.25, 0.45]
RADIS_GAP = [0.050, 0.060, 0.040, 0.055, 0.045, 0.050]  # radis - vanilla = -gap at each seed
MERGE_GAP = [0.020, 0.022, 0.018]  # merge is vanilla's seeds 0-2 made a little closer
CONTRAST = {"a": "radis", "b": "vanilla", "metric": "retention/kl"}


def _metrics(kl: float, chrf: float) -> dict:
    return {"de-en/chrf++": chrf, "de-en/bleu": 20.0, "de-en/words": 18.0, "prompt_strict": 0.35, "kl": kl}


def _values(seeds: int = 6) -> dict:
    return {
        "original": {"": _metrics(0.0, 45.0)},
        "vanilla": {str(k): _metrics(kl, 50.0 + k) for k, kl in enumerate(VANILLA_KL[:seeds])},
        "radis": {str(k): _metrics(kl - g, 49.0 + k) for k, (kl, g) in enumerate(zip(VANILLA_KL[:seeds], RADIS_GAP))},
        "merge": {str(k): _metrics(VANILLA_KL[k] - g, 50.0 + k) for k, g in enumerate(MERGE_GAP)},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("looks") / "run", methods=("vanilla", "radis", "merge"), values=_values())


def _stats(run: Path, label: str, seeds: range, suite: str = "retention", metric: str = "kl") -> dict:
    return {str(k): json.loads((run / "results" / f"{label}-seed{k}" / "items" / f"{suite}.json").read_text())[metric]
            for k in seeds}


def test_looks_prints_each_recorded_look_with_its_nominal_and_adjusted_interval(tmp_path, capsys):
    run = write_run(tmp_path / "run", methods=("vanilla", "radis"), values=_values())
    plan = Analysis()
    apply_settings(plan, {"primary": [dict(CONTRAST, direction="lower")], "seeds": 6}, "the test")
    claims.record_plan(run, plan)
    with (run / "analysis" / "looks.jsonl").open("w") as fh:
        for k, day in ((3, "2026-12-01"), (6, "2026-12-02")):
            fh.write(json.dumps({"contrast": CONTRAST, "seeds": [k, k], "time": f"{day}T10:00:00+0000"}) + "\n")
    looks.main([str(run), "looks"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "radis − vanilla, retention/kl (lower; alpha 0.05, O'Brien–Fleming-type):"
    rows = [line for line in lines if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2
    for row, k, c in zip(rows, (3, 6), boundaries([0.5, 1.0], 0.05, "obrien_fleming")):
        iv = difference_interval(_stats(run, "radis", range(k)), _stats(run, "vanilla", range(k)))
        half = stats.t.isf(stats.norm.sf(c), iv.df) * iv.se
        cells = [cell.strip().strip("*") for cell in row.strip("|").split("|")]
        assert cells == [str(k // 3), f"{k} vs {k}", f"2026-12-0{k // 3}",
                         f"{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]", f"{c:.3f}",
                         f"{iv.estimate:+.3f} [{iv.estimate - half:+.3f}, {iv.estimate + half:+.3f}]"]
    assert not (run / "analysis" / "amendments.json").exists()
    assert len((run / "analysis" / "looks.jsonl").read_text().splitlines()) == 2  # reading is no look


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout


def test_reconstruct_reads_the_looks_from_the_history_of_the_differences(tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    run = repo / "run"
    for seeds in (2, 4, 4, 6):  # the third commit re-renders the same seeds: no new look
        write_run(run, methods=("vanilla", "radis"), values=_values(seeds))
        render_report([run], run / "report")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"{seeds} seeds")
    looks.main([str(run), "reconstruct", "radis", "vanilla", "retention/kl"])
    assert len(capsys.readouterr().out.splitlines()) == 3
    found = [json.loads(line) for line in (run / "analysis" / "looks.jsonl").read_text().splitlines()]
    commits = _git(repo, "log", "--reverse", "--format=%h").split()
    assert [f["seeds"] for f in found] == [[2, 2], [4, 4], [6, 6]]
    assert [f["note"] for f in found] == [f"reconstructed from commit {c}" for c in (commits[0], commits[1], commits[3])]
    assert all(f["contrast"] == CONTRAST for f in found)
    looks.main([str(run), "reconstruct", "radis", "vanilla", "retention/kl"])
    assert capsys.readouterr().out.strip() == "no look to add"


def test_looks_needs_a_plan_and_refuses_bad_arguments(run):
    with pytest.raises(SystemExit, match="no analysis plan"):
        looks.main([str(run), "looks"])
    with pytest.raises(SystemExit, match="usage"):
        looks.main([str(run), "reconstruct", "radis", "vanilla"])
    with pytest.raises(SystemExit, match="usage"):
        looks.main([str(run), "count"])


def test_shared_lists_the_verdicts_that_pairing_changes(run, capsys):
    looks.main([str(run), "shared"])
    out = capsys.readouterr().out.splitlines()
    kl = [line for line in out if line.startswith("- merge - vanilla, retention/kl:")]
    assert len(kl) == 1, out
    a, b = _stats(run, "merge", range(3)), _stats(run, "vanilla", range(6))
    welch, paired = difference_interval(a, b), difference_interval(a, {s: b[s] for s in a})
    assert not welch.paired and not welch.significant and paired.paired and paired.significant
    assert "unpaired (3 vs 6 seeds)" in kl[0] and "paired on 3 shared seeds" in kl[0] and kl[0].endswith("(resolved paired only)")
    assert f"{paired.estimate:+.3f} [{paired.low:+.3f}, {paired.high:+.3f}]" in kl[0]
    assert not any(line.startswith("- radis - vanilla") for line in out)  # the same seeds: paired in the report already
