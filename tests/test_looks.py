"""scripts/looks.py: a contrast at every look taken at the data (95% and Bonferroni over the
looks), and the differences whose verdict changes when paired on the seeds two rows share."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from test_report import write_run

from harness.intervals import difference_interval

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "looks.py"
spec = importlib.util.spec_from_file_location("looks", SCRIPT)
looks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(looks)

VANILLA_KL = [0.30, 0.40, 0.20, 0.35, 0.25, 0.45]
RADIS_GAP = [0.050, 0.060, 0.040, 0.055, 0.045, 0.050]  # radis - vanilla = -gap at each seed
MERGE_GAP = [0.020, 0.022, 0.018]  # merge is vanilla's seeds 0-2 made a little closer


def _metrics(kl: float, chrf: float) -> dict:
    return {"de-en/chrf++": chrf, "de-en/bleu": 20.0, "de-en/words": 18.0, "prompt_strict": 0.35, "kl": kl}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    values = {
        "original": {"": _metrics(0.0, 45.0)},
        "vanilla": {str(k): _metrics(kl, 50.0 + k) for k, kl in enumerate(VANILLA_KL)},
        "radis": {str(k): _metrics(kl - g, 49.0 + k) for k, (kl, g) in enumerate(zip(VANILLA_KL, RADIS_GAP))},
        "merge": {str(k): _metrics(VANILLA_KL[k] - g, 50.0 + k) for k, g in enumerate(MERGE_GAP)},
    }
    return write_run(tmp_path_factory.mktemp("looks") / "run", methods=("vanilla", "radis", "merge"), values=values)


def _stats(run: Path, label: str, seeds: range, suite: str = "retention", metric: str = "kl") -> dict:
    return {str(k): json.loads((run / "results" / f"{label}-seed{k}" / "items" / f"{suite}.json").read_text())[metric]
            for k in seeds}


def test_looks_reads_the_contrast_at_each_look_at_both_levels(run, capsys):
    looks.main([str(run), "looks", "radis", "vanilla", "3,6", "--metrics", "retention/kl"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| seeds | retention/kl ↓ 95% | retention/kl 97.5% |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 3", "| 6"]
    for line, k in zip(lines[2:], (3, 6)):
        a, b = _stats(run, "radis", range(k)), _stats(run, "vanilla", range(k))
        iv, wide = difference_interval(a, b), difference_interval(a, b, level=0.975)
        assert iv.paired and iv.seeds == k
        assert wide.low < iv.low < iv.estimate < iv.high < wide.high
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")[1:]]
        assert cells == [f"{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]",
                         f"{wide.estimate:+.3f} [{wide.low:+.3f}, {wide.high:+.3f}]"]
        assert f"{-sum(RADIS_GAP[:k]) / k:+.3f}" == cells[0].split()[0]


def test_looks_defaults_to_the_main_metrics_and_refuses_missing_seeds(run, capsys):
    looks.main([str(run), "looks", "radis", "vanilla", "2,4,6"])
    header = capsys.readouterr().out.splitlines()[0]
    assert "translation/de-en/chrf++ ↑ 95%" in header and "retention/kl 98.33%" in header and "bleu" not in header
    with pytest.raises(SystemExit, match="lacks one of the seeds 0..6"):
        looks.main([str(run), "looks", "radis", "vanilla", "3,7"])
    with pytest.raises(SystemExit, match="'sdft' is not one row"):
        looks.main([str(run), "looks", "sdft", "vanilla", "3"])
    with pytest.raises(SystemExit, match="seed counts"):
        looks.main([str(run), "looks", "radis", "vanilla", "three"])


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
