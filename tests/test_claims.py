"""harness/report/claims.py and how the report uses it: the analysis plan and its amendments, looks
counted by the harness with group-sequential intervals, adjusted verdicts (different,
equivalent, not resolved), and tables that do not depend on rounding residue."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_report import write_run

from harness.report import claims
from harness.config.settings import Analysis, check_analysis
from harness.config.parse import apply_settings
from harness.errors import UserError
from harness.report.board import build_leaderboard
from harness.report.render import render_report

PRIMARY = {"a": "radis", "b": "vanilla", "metric": "retention/kl", "direction": "lower"}
PLAN = {"primary": [PRIMARY], "seeds": 6}
KL_VANILLA = [0.30, 0.27, 0.33, 0.29, 0.31, 0.28]
KL_GAP = [0.020, 0.035, 0.010, 0.030, 0.015, 0.025]  # radis = vanilla - gap, seed by seed


def values(seeds: int, same_kl_row: bool = False) -> dict:
    """Scores of the original, vanilla and radis (and kl, equal to vanilla when asked) at ``seeds`` seeds."""
    def metrics(kl: float, chrf: float, prompt: float) -> dict:
        return {"de-en/chrf++": chrf, "de-en/bleu": 20.0, "de-en/words": 18.0, "prompt_strict": prompt, "kl": kl}

    out = {"original": {"": metrics(0.0, 45.0, 0.40)},
           "vanilla": {str(k): metrics(KL_VANILLA[k], 50.0 + k, 0.30 + 0.01 * (k % 2)) for k in range(seeds)},
           "radis": {str(k): metrics(KL_VANILLA[k] - KL_GAP[k], 49.0 + k, 0.30 + 0.01 * (k % 2)) for k in range(seeds)}}
    if same_kl_row:
        out["kl"] = out["vanilla"]
    return out


def analysis(**settings) -> Analysis:
    found = Analysis()
    apply_settings(found, settings, "the test")
    check_analysis(found, "the test")
    return found


def primary_row(out: Path) -> pd.Series:
    diffs = pd.read_csv(out / "differences.csv")
    found = diffs[(diffs["method"] == "radis") & (diffs["versus"] == "vanilla") & (diffs["metric"] == "kl")]
    assert len(found) == 1
    return found.iloc[0]


# The plan ---------------------------------------------------------------------------------------

def test_the_plan_is_written_once_and_a_change_is_a_dated_amendment(tmp_path):
    run = write_run(tmp_path / "run", methods=("vanilla", "radis"), values=values(3))
    assert claims.record_plan(run, analysis(**PLAN)).startswith("analysis plan recorded")
    original = (run / "analysis" / "plan.json").read_text()
    assert json.loads(original)["units_scored"] == len(list((run / "results").glob("*/*.json"))) > 0
    assert claims.record_plan(run, analysis(**PLAN)) is None  # the same plan: nothing to record
    assert not (run / "analysis" / "amendments.json").exists()
    changed = dict(PLAN, alpha=0.01, primary=[dict(PRIMARY, metric="translation/de-en/chrf++")])
    assert "amended" in claims.record_plan(run, analysis(**changed))
    assert (run / "analysis" / "plan.json").read_text() == original  # never rewritten
    amendments = json.loads((run / "analysis" / "amendments.json").read_text())
    assert len(amendments) == 1 and amendments[0]["analysis"]["alpha"] == 0.01
    plan = claims.read_plan(run)
    assert plan.current.alpha == 0.01
    # the dropped contrast is still reported, with the date it was dropped
    assert [(c["metric"], bool(dropped)) for c, dropped in plan.contrasts()] == [("retention/kl", True),
                                                                                ("translation/de-en/chrf++", False)]
    md = (render_report([run], tmp_path / "out")["leaderboard.md"]).read_text()
    assert "## Claims" in md and "Analysis plan of `run`, recorded" in md and "Amended" in md and "alpha 0.05 → 0.01" in md
    assert "primary + radis − vanilla translation/de-en/chrf++ (lower)" in md and "dropped from the plan on" in md
    assert "after" in md and "units had been scored (not a pre-registration)" in md


def test_no_plan_is_exploratory_above_every_contrast(tmp_path):
    run = write_run(tmp_path / "run", methods=("vanilla", "radis"), values=values(3))
    written = render_report([run], tmp_path / "out")
    md, page = written["leaderboard.md"].read_text(), written["leaderboard.html"].read_text()
    assert md.index("**Exploratory**") < md.index("## Main metrics")
    assert md.count("**Exploratory**") == 2 and page.count("<b>Exploratory</b>") == 2  # the claims and the differences
    diffs = pd.read_csv(written["differences.csv"])
    assert set(diffs["role"]) == {"exploratory"} and diffs["verdict"].notna().all() and diffs["p_adjusted"].notna().all()


@pytest.mark.parametrize("settings, message", [
    ({"primary": [{"a": "radis", "b": "vanilla"}], "seeds": 3}, "keys a, b, metric"),
    ({"primary": [{"a": "radis", "b": "radis", "metric": "retention/kl"}], "seeds": 3}, "two different row labels"),
    ({"primary": [{"a": "radis", "b": "vanilla", "metric": "kl"}], "seeds": 3}, "SUITE/METRIC"),
    ({"primary": [dict(PRIMARY, direction="down")], "seeds": 3}, "direction 'down'"),
    ({"primary": [PRIMARY]}, "exactly one of seeds"),
    ({"primary": [PRIMARY], "seeds": 3, "looks": 4}, "exactly one of seeds"),
    ({"alpha": 1.5}, "alpha must be positive and below 1"),
    ({"spending": "linear"}, "spending 'linear'"),
    ({"secondary": "bonferroni"}, "secondary 'bonferroni'"),
    ({"margins": {"kl": -1}}, "margins must map"),
])
def test_a_bad_plan_is_one_sentence_naming_the_fix(settings, message):
    with pytest.raises(UserError, match=message):
        analysis(**settings)


def test_rows_and_metrics_are_checked_against_the_run():
    class Suite:
        def metrics(self):
            return [type("Spec", (), {"name": "kl"})()]

    plan = type("Plan", (), {"entries": {"vanilla": 0, "radis": 0}, "suites": {"retention": Suite()}})()
    claims.check_against_plan(analysis(**PLAN), plan)
    for contrast, message in ((dict(PRIMARY, a="sdft"), "row 'sdft'"), (dict(PRIMARY, a="original"), "row 'original'"),
                              (dict(PRIMARY, metric="ifeval/prompt_strict"), "'ifeval' is not among"),
                              (dict(PRIMARY, metric="retention/nll"), "retention does not score")):
        with pytest.raises(UserError, match=message):
            claims.check_against_plan(analysis(primary=[contrast], seeds=6), plan)
    claims.check_against_plan(analysis(primary=[dict(PRIMARY, b="original")], seeds=6), plan)


# Looks ------------------------------------------------------------------------------------------

def test_three_renders_at_growing_seeds_are_three_looks_and_widen_the_adjusted_interval(tmp_path):
    run = tmp_path / "run"
    for seeds in (2, 4, 6):
        write_run(run, methods=("vanilla", "radis"), values=values(seeds))
        if seeds == 2:
            claims.record_plan(run, analysis(**PLAN))
        render_report([run], tmp_path / f"out{seeds}")
    looks = [json.loads(line) for line in (run / "analysis" / "looks.jsonl").read_text().splitlines()]
    assert [look["seeds"] for look in looks] == [[2, 2], [4, 4], [6, 6]]
    assert all(look["contrast"] == {"a": "radis", "b": "vanilla", "metric": "retention/kl"} for look in looks)
    three = primary_row(tmp_path / "out6")
    assert three["role"] == "primary" and three["looks"] == 3

    # the same data read once: at full information the adjusted interval is the nominal one
    once = write_run(tmp_path / "once", methods=("vanilla", "radis"), values=values(6))
    claims.record_plan(once, analysis(**PLAN))
    one = primary_row(render_report([once], tmp_path / "out-once")["differences.csv"].parent)
    assert one["looks"] == 1 and (one["adjusted_low"], one["adjusted_high"]) == pytest.approx((one["ci_low"], one["ci_high"]))
    assert (three["ci_low"], three["ci_high"]) == pytest.approx((one["ci_low"], one["ci_high"]))
    assert three["adjusted_low"] < one["adjusted_low"] and three["adjusted_high"] > one["adjusted_high"]
    # the boundary of the third look: O'Brien-Fleming-type spending at t = 1/3, 2/3, 1, as a t quantile at the df
    board = build_leaderboard([run])
    (found,) = board.claims.primary
    assert found.boundary == pytest.approx(1.9930, abs=2e-4)
    iv = found.interval
    half = stats.t.isf(stats.norm.sf(1.9930), iv.df) * iv.se
    assert (three["adjusted_low"], three["adjusted_high"]) == pytest.approx((iv.estimate - half, iv.estimate + half), rel=1e-4)


def test_two_primary_contrasts_share_alpha(tmp_path):
    """Two primary contrasts each spend alpha/2 (Bonferroni): at one look each adjusted
    interval is the nominal 97.5% interval, wider than with one primary contrast."""
    second = {"a": "radis", "b": "vanilla", "metric": "translation/de-en/chrf++"}
    run = write_run(tmp_path / "run", methods=("vanilla", "radis"), values=values(6))
    claims.record_plan(run, analysis(primary=[PRIMARY, second], seeds=6))
    both = primary_row(render_report([run], tmp_path / "both")["differences.csv"].parent)
    alone = write_run(tmp_path / "alone", methods=("vanilla", "radis"), values=values(6))
    claims.record_plan(alone, analysis(**PLAN))
    one = primary_row(render_report([alone], tmp_path / "one")["differences.csv"].parent)
    assert claims.primary_alpha(analysis(primary=[PRIMARY, second], seeds=6)) == 0.025
    assert (both["ci_low"], both["ci_high"]) == pytest.approx((one["ci_low"], one["ci_high"]))
    assert both["adjusted_low"] < one["adjusted_low"] and both["adjusted_high"] > one["adjusted_high"]
    (found, _) = build_leaderboard([run]).claims.primary
    half = stats.t.isf(0.025 / 2, found.interval.df) * found.interval.se
    assert (both["adjusted_low"], both["adjusted_high"]) == pytest.approx(
        (found.interval.estimate - half, found.interval.estimate + half), rel=1e-4)


def test_rendering_the_same_seeds_again_is_the_same_look_and_the_same_bytes(tmp_path):
    run = write_run(tmp_path / "run", methods=("vanilla", "radis"), values=values(4))
    claims.record_plan(run, analysis(**PLAN))
    first = render_report([run], tmp_path / "a")
    second = render_report([run], tmp_path / "b")
    assert len((run / "analysis" / "looks.jsonl").read_text().splitlines()) == 1
    for name in ("differences.csv", "leaderboard.csv", "leaderboard.md", "leaderboard.html"):
        assert first[name].read_bytes() == second[name].read_bytes(), name


def test_a_run_directory_that_cannot_be_written_still_renders_and_says_so(tmp_path, monkeypatch, caplog):
    run = write_run(tmp_path / "run", methods=("vanilla", "radis"), values=values(3))
    claims.record_plan(run, analysis(**PLAN))

    real_open = Path.open

    def refuse(path, mode="r", *args, **kwargs):  # root may write anywhere: refuse the looks file itself
        if path.name == "looks.jsonl" and "a" in mode:
            raise PermissionError(13, "Permission denied")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with caplog.at_level(logging.WARNING, logger="radis_bench"):
        written = render_report([run], tmp_path / "out")
    monkeypatch.undo()
    (line,) = [r.getMessage() for r in caplog.records]
    assert "could not be recorded" in line and "\n" not in line
    assert primary_row(written["differences.csv"].parent)["looks"] == 1  # counted, though not recorded
    assert not (run / "analysis" / "looks.jsonl").exists()
    assert "not recorded: the run directory is not writable" in written["leaderboard.md"].read_text()


def test_looks_beyond_the_plan_replan_its_maximum():
    look = lambda *seeds: claims.Look(seeds, "")
    plan = analysis(**PLAN)
    times, overrun = claims.fractions([look(2, 2), look(4, 4), look(6, 6)], plan)
    assert times == pytest.approx([1 / 3, 2 / 3, 1]) and not overrun
    times, overrun = claims.fractions([look(3, 3), look(6, 6), look(12, 12)], plan)
    assert times == pytest.approx([0.25, 0.5, 1]) and overrun
    assert claims.fractions([look(3, None)], plan)[0] == [0.5]  # against the original: A's seeds
    assert claims.information((3, 27)) == pytest.approx(5.4)  # Welch sides: the harmonic mean
    by_looks = analysis(primary=[PRIMARY], looks=4)
    assert claims.fractions([look(2, 2), look(3, 3)], by_looks)[0] == pytest.approx([0.25, 0.5])
    assert claims.fractions([look(k, k) for k in range(2, 8)], by_looks) == (pytest.approx([k / 6 for k in range(1, 7)]), True)


# Verdicts ---------------------------------------------------------------------------------------

def test_holm_and_benjamini_hochberg_adjust_as_published():
    p = [0.01, 0.04, 0.03, 0.005]
    assert claims.adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert claims.adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert claims.adjust([], "holm").size == 0


def test_tost_and_the_margins():
    iv = type("Iv", (), {"estimate": 0.1, "se": 0.2, "df": 30.0})()
    assert claims.tost_p(iv, 1.0) == pytest.approx(stats.t.sf(4.5, 30.0))  # the nearer margin decides
    assert claims.p_value(iv) == pytest.approx(2 * stats.t.sf(0.5, 30.0))
    assert claims.margin_for("retention/kl", {}, 0.01) == 0.01 and claims.margin_for("translation/de-en/words", {}, None) is None
    assert claims.margin_for("retention/kl", {"kl": 0.02}, 0.01) == 0.02
    assert claims.margin_for("retention/kl", {"retention/kl": 0.03, "kl": 0.02}, 0.01) == 0.03
    assert claims.margin_for("retention/kl", {"kl": 0}, 0.01) is None


def test_the_report_distinguishes_the_three_verdicts(tmp_path):
    run = write_run(tmp_path / "run", methods=("vanilla", "radis"), values=values(6))
    claims.record_plan(run, analysis(**PLAN, margins={"prompt_strict": 0.2}))
    written = render_report([run], tmp_path / "out")
    diffs = pd.read_csv(written["differences.csv"])
    verdicts = {(r.method, r.versus, r.metric): r.verdict for r in diffs.itertuples()}
    assert verdicts[("radis", "vanilla", "kl")] == "different"  # the primary contrast, at its one look
    assert verdicts[("radis", "vanilla", "prompt_strict")] == "equivalent"  # identical on every item: inside +-0.2
    assert verdicts[("radis", "vanilla", "de-en/words")] == "not resolved"  # no margin: equal, yet never equivalent
    assert verdicts[("radis", "vanilla", "de-en/chrf++")] == "different"  # 1 point lower at every seed and item
    secondary = diffs[diffs["role"] == "secondary"]
    assert len(secondary) == len(diffs) - 1 and (secondary["p_adjusted"] >= secondary["p_value"]).all()
    assert pd.isna(diffs.loc[diffs["metric"] == "de-en/words", "margin"]).all()
    # the suites' own margins (MetricSpec.margin), where the plan sets none
    assert set(diffs.loc[diffs["metric"] == "de-en/chrf++", "margin"]) == {1.0} and set(diffs.loc[diffs["metric"] == "kl", "margin"]) == {0.01}
    assert set(diffs.loc[diffs["metric"] == "prompt_strict", "margin"]) == {0.2}
    md, page = written["leaderboard.md"].read_text(), written["leaderboard.html"].read_text()
    row = next(line for line in md.split("## Differences")[1].splitlines() if line.startswith("| radis − vanilla |"))
    assert "≡" in row and "*" in row
    assert "| radis − vanilla | retention/kl | lower | 6 vs 6 | -0.023 |" in md and "≡ equivalent" in page


# Rounding residue -------------------------------------------------------------------------------

def _binary_refusals(run: Path) -> None:
    """Every cell refuses the same 2 of 40 prompt_strict items: a share of 0/1 items that never differs."""
    for path in (run / "results").glob("*/items/ifeval.json"):
        stats_ = json.loads(path.read_text())
        stats_["prompt_strict"]["rows"] = [[1.0 if i < 2 else 0.0, 1.0] for i in range(len(stats_["prompt_strict"]["ids"]))]
        path.write_text(json.dumps(stats_))
    scores = pd.read_csv(run / "scores.csv", dtype=str, keep_default_na=False)
    scores.loc[scores["metric"] == "prompt_strict", "value"] = "0.05"
    scores.to_csv(run / "scores.csv", index=False)
    for path in (run / "results").glob("*/ifeval.json"):  # and the units scores.csv summarises
        unit = json.loads(path.read_text())
        unit["metrics"] = [{**m, "value": 0.05} if m["name"] == "prompt_strict" else m for m in unit["metrics"]]
        path.write_text(json.dumps(unit))


def _perturbed(run: Path, target: Path) -> Path:
    """A copy of the run whose non-integer item statistics moved by 1e-15 relative (another
    machine's summation order); counts stay integers."""
    shutil.copytree(run, target)
    rng = np.random.default_rng(0)
    for path in (target / "results").glob("*/items/*.json"):
        found = json.loads(path.read_text())
        for st in found.values():
            rows = np.asarray(st["rows"], dtype=float)
            wiggle = 1 + rng.choice([-1e-15, 1e-15], rows.shape)
            st["rows"] = np.where(rows == np.round(rows), rows, rows * wiggle).tolist()
        path.write_text(json.dumps(found))
    return target


def test_tables_are_the_same_bytes_after_a_1e_15_perturbation(tmp_path):
    run = write_run(tmp_path / "run", methods=("vanilla", "radis", "kl"), values=values(3, same_kl_row=True))
    _binary_refusals(run)
    first = render_report([run], tmp_path / "a")
    second = render_report([_perturbed(run, tmp_path / "copy")], tmp_path / "b")
    for name in ("differences.csv", "leaderboard.csv"):
        assert first[name].read_bytes() == second[name].read_bytes(), name
    diffs = pd.read_csv(first["differences.csv"])
    same = diffs[(diffs["method"] == "kl") & (diffs["versus"] == "vanilla")].set_index("metric")
    # identical rows: a continuous metric's interval is exactly [0, 0]; a 0/1 share's is never of width 0
    assert (same.loc["kl", "difference"], same.loc["kl", "ci_low"], same.loc["kl", "ci_high"]) == (0, 0, 0)
    assert same.loc["prompt_strict", "ci_low"] < 0 < same.loc["prompt_strict", "ci_high"]
    board = pd.read_csv(first["leaderboard.csv"])
    original = board[(board["method"] == "original") & (board["metric"] == "prompt_strict")].iloc[0]
    assert 0 < original["ci_low"] < 0.05 < original["ci_high"] < 1  # 2 of 40: a score interval inside [0, 1]


def test_a_plan_in_a_combined_report_names_its_own_rows(tmp_path):
    """With a label prefix the rows are b-radis and b-vanilla; the plan and its looks keep
    the run's own labels, so the next report of that run alone counts the same look."""
    first = write_run(tmp_path / "a", methods=("vanilla", "radis"), values=values(3))
    second = write_run(tmp_path / "b", methods=("vanilla", "radis"), values=values(4), tag="b")
    claims.record_plan(second, analysis(**PLAN))
    written = render_report([first, second], tmp_path / "out", prefixes={str(second): "b-"})
    diffs = pd.read_csv(written["differences.csv"])
    (row,) = diffs[diffs["role"] == "primary"].itertuples()
    assert (row.method, row.versus, row.metric, row.looks) == ("b-radis", "b-vanilla", "kl", 1)
    (look,) = [json.loads(line) for line in (second / "analysis" / "looks.jsonl").read_text().splitlines()]
    assert look["contrast"] == {"a": "radis", "b": "vanilla", "metric": "retention/kl"} and look["seeds"] == [4, 4]
    render_report([second], tmp_path / "alone")
    assert len((second / "analysis" / "looks.jsonl").read_text().splitlines()) == 1
