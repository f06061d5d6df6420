"""The report: leaderboard values (mean, interval, Δ, best or tied), missing-score reasons,
combining run directories (and refusing conflicting ones), variants and the ablation plot,
no machine paths in published files, and the HTML as a browser renders it."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.errors import UserError
from harness.report.read import SCORE_COLUMNS
from harness.report.board import build_leaderboard
from harness.report.render import render_report

PLOTS = ["tradeoff.png", "suite_translation.png", "suite_ifeval.png", "suite_retention.png", "training_loss.png"]

# row -> seed -> {metric: value}; the original has one row, seed "".
VALUES = {
    "original": {"": {"de-en/chrf++": 45.0, "de-en/bleu": 20.0, "de-en/words": 18.0, "prompt_strict": 0.40, "kl": 0.0}},
    "vanilla": {"1": {"de-en/chrf++": 50.0, "de-en/bleu": 24.0, "de-en/words": 17.0, "prompt_strict": 0.30, "kl": 0.30},
                "2": {"de-en/chrf++": 54.0, "de-en/bleu": 26.0, "de-en/words": 19.0, "prompt_strict": 0.32, "kl": 0.34}},
    "radis": {"1": {"de-en/chrf++": 48.0, "de-en/bleu": 22.0, "de-en/words": 25.0, "prompt_strict": 0.38, "kl": 0.10},
              "2": {"de-en/chrf++": 50.0, "de-en/bleu": 23.0, "de-en/words": 27.0, "prompt_strict": 0.40, "kl": 0.12}},
    "kl": {"1": {"de-en/chrf++": 47.0, "de-en/bleu": 21.0, "de-en/words": 30.0, "prompt_strict": 0.37, "kl": 0.05},
           "2": {"de-en/chrf++": 47.0, "de-en/bleu": 21.0, "de-en/words": 30.0, "prompt_strict": 0.39, "kl": 0.07}},
}
SUITE = {"de-en/chrf++": "translation", "de-en/bleu": "translation", "de-en/words": "translation",
         "prompt_strict": "ifeval", "kl": "retention"}
MAIN = {"de-en/chrf++", "prompt_strict", "kl"}
HIGHER = {"de-en/chrf++": True, "de-en/bleu": True, "de-en/words": None, "prompt_strict": True, "kl": False}
ITEM_SPREAD = {"de-en/chrf++": 8.0, "de-en/bleu": 8.0, "de-en/words": 5.0, "prompt_strict": 0.1, "kl": 0.01}
NO_JUDGE = "not scored: no judge (--judge)"
N_ITEMS = 40


def item_values(metric: str, value: float, seed: str) -> list[float]:
    """Per-item values whose mean is exactly ``value``: a shared item effect plus seed noise."""
    common = np.random.default_rng(zlib.crc32(metric.encode())).normal(0, ITEM_SPREAD[metric], N_ITEMS)  # not hash(): salted per process
    own = np.random.default_rng(int(seed or 0) + 7).normal(0, ITEM_SPREAD[metric] / 4, N_ITEMS)
    x = common + own
    return list(x - x.mean() + value)


def write_run(run_dir: Path, model: str = "tiny-a", shift: float = 0.0, methods=("vanilla", "radis", "kl"),
              rows_info: dict | None = None, tag: str = "a", values: dict | None = None, note: str = "") -> Path:
    """A run directory as `radis-bench run` writes it: scores.csv, manifest.json, unit files
    (with their keys) and per-item statistics."""
    values = values or VALUES
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in ("original",) + tuple(methods):
        base = label if label in values else "radis"
        for seed, metrics in values[base].items():
            cell = "original" if label == "original" else f"{label}-seed{seed}"
            items: dict[str, dict] = {}
            units: dict[str, dict] = {"alpaca_eval": {"metrics": [], "not_scored": [{"metric": "win_rate", "reason": NO_JUDGE}]}}
            for metric, value in metrics.items():
                value = value + shift if metric == "de-en/chrf++" else value
                rows.append({"model": model, "method": label, "seed": seed, "suite": SUITE[metric], "metric": metric,
                             "value": value, "n": N_ITEMS, "ci_low": value - 1, "ci_high": value + 1,
                             "higher_is_better": "" if HIGHER[metric] is None else HIGHER[metric],
                             "main": metric in MAIN, "note": note})
                units.setdefault(SUITE[metric], {"metrics": [], "not_scored": []})["metrics"].append(
                    {"name": metric, "value": value, "n": N_ITEMS, "ci_low": value - 1, "ci_high": value + 1,
                     "higher_is_better": HIGHER[metric], "main": metric in MAIN, "note": note})
                stats = {"kind": "mean", "ids": [str(i) for i in range(N_ITEMS)],
                         "rows": [[v, 1.0] for v in item_values(metric, value, seed)]}
                items.setdefault(SUITE[metric], {})[metric] = stats
            rows.append({"model": model, "method": label, "seed": seed, "suite": "alpaca_eval", "metric": "win_rate",
                         "value": "", "n": "", "ci_low": "", "ci_high": "", "higher_is_better": "", "main": False,
                         "note": NO_JUDGE})
            for suite, stats in items.items():
                (run_dir / "results" / cell / "items").mkdir(parents=True, exist_ok=True)
                (run_dir / "results" / cell / "items" / f"{suite}.json").write_text(json.dumps(stats))
            for suite, unit in units.items():  # the unit files scores.csv summarises, with their keys
                key = f"{cell}-{suite}" if label == "original" else f"{tag}-{cell}-{suite}"  # one original for every run
                (run_dir / "results" / cell / f"{suite}.json").write_text(json.dumps({"key": key, **unit}))
    with (run_dir / "scores.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SCORE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    described = {"vanilla": {"description": "SFT on references.", "extension": False, "options": {}, "baseline": True},
                 "radis": {"description": "Rationale distillation.", "extension": False, "options": {"rationale_weight": 1.0}},
                 "kl": {"description": "KL to the original.", "extension": True, "options": {}}}
    described.update(rows_info or {})
    manifest = {
        "name": run_dir.name, "model": {"name": model}, "config": {"model": model}, "budget": {"steps": 10},
        "methods": {label: {"method": label.split("@")[0], **described.get(label, described["radis"])} for label in methods},
        "training": {m: {s: {"losses": [2.0 - (0.05 + 0.02 * k) * i - 0.05 * int(s) for i in range(10)], "steps": 10,
                             "target_tokens": 5000, "total_tokens": 9000, "wall_s": 12.5} for s in ("1", "2")}
                     for k, m in enumerate(methods)},
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return run_dir


def main_table(md: str) -> dict[tuple[str, ...], dict[str, str]]:
    """The main-metrics table as {(model?, row name): {column header: cell}} (the model only
    when the leaderboard has several)."""
    section = md.split("## Main metrics", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    keys = 2 if header[0] == "model" else 1
    out = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[tuple(cells[:keys])] = dict(zip(header, cells))
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One rendered report shared by the read-only tests (rendering the plots takes a second or two)."""
    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "report"
    written = render_report([write_run(tmp / "run")], out)
    board = pd.read_csv(out / "leaderboard.csv")
    return out, written, board


def value(board: pd.DataFrame, method: str, metric: str, column: str):
    hit = board[(board["method"] == method) & (board["metric"] == metric)]
    assert len(hit) == 1, (method, metric)
    return hit[column].iloc[0]


def test_original_first_then_rows_with_extension_label(report):
    out, written, board = report
    assert set(written) == {"leaderboard.csv", "leaderboard.md", "leaderboard.html", "differences.csv", *PLOTS}
    assert list(main_table((out / "leaderboard.md").read_text())) == [("original",), ("vanilla",), ("radis",), ("kl (extension)",)]
    assert list(dict.fromkeys(board["method"])) == ["original", "vanilla", "radis", "kl"]


def test_mean_interval_and_signed_delta(report):
    out, _, board = report
    assert value(board, "vanilla", "de-en/chrf++", "mean") == pytest.approx(52.0)
    assert value(board, "vanilla", "de-en/chrf++", "seed_values") == "1=50;2=54"
    assert value(board, "vanilla", "de-en/chrf++", "delta") == pytest.approx(52.0 - 45.0)
    assert value(board, "vanilla", "prompt_strict", "delta") == pytest.approx(0.31 - 0.40)
    # two seeds 4 points apart: the interval carries that spread (t with 1 df), far beyond the items' noise
    low, high = value(board, "vanilla", "de-en/chrf++", "ci_low"), value(board, "vanilla", "de-en/chrf++", "ci_high")
    original = value(board, "original", "de-en/chrf++", "ci_high") - value(board, "original", "de-en/chrf++", "ci_low")
    assert low < 52.0 - 8 and high > 52.0 + 8 and high - low > 3 * original
    assert "seed t (2 seeds)" in value(board, "vanilla", "de-en/chrf++", "interval")
    # the original has no seeds: item noise only, and that is its whole uncertainty
    assert value(board, "original", "de-en/chrf++", "seed_variance_estimated") == True  # noqa: E712
    assert 42.0 < value(board, "original", "de-en/chrf++", "ci_low") < 45.0 < value(board, "original", "de-en/chrf++", "ci_high") < 48.0
    row = main_table((out / "leaderboard.md").read_text())[("vanilla",)]
    assert row["seeds"] == "2" and row["translation de-en/chrf++ ↑"].startswith("≈52.0 [")
    delta = re.fullmatch(r"\+7\.0 \[(\S+), (\S+)\]", row["Δ chrf++"])  # two seeds: not significant, no *
    assert delta and float(delta[1]) < 0 < float(delta[2])


def test_best_only_when_significantly_ahead_otherwise_tied(report):
    _, _, board = report
    # retention KL: kl's two seeds are both 0.05 below radis's: significantly best (lower is better)
    kl = board[board["metric"] == "kl"].set_index("method")
    assert kl["best"].to_dict() == {"original": False, "vanilla": False, "radis": False, "kl": True}
    # chrF++: seeds 4 points apart leave vanilla, radis and kl indistinguishable: tied, none best
    chrf = board[board["metric"] == "de-en/chrf++"].set_index("method")
    assert not chrf["best"].any() and chrf["tied"].to_dict() == {"original": False, "vanilla": True, "radis": True, "kl": True}
    assert not board[board["metric"] == "de-en/words"][["best", "tied"]].any().any()  # neutral: output length


def test_differences_have_intervals_and_the_seeds_power_needs(report):
    out, _, _ = report
    diffs = pd.read_csv(out / "differences.csv")
    pairs = set(zip(diffs["method"], diffs["versus"]))
    assert {("vanilla", "original"), ("radis", "original"), ("radis", "vanilla"), ("kl", "vanilla")} <= pairs
    assert ("vanilla", "vanilla") not in pairs
    kl = diffs[(diffs["method"] == "radis") & (diffs["versus"] == "vanilla") & (diffs["metric"] == "kl")].iloc[0]
    assert kl["difference"] == pytest.approx(-0.21) and kl["significant"] and "paired by seed" in kl["interval"]
    assert kl["seeds_for_80_power"] >= 2
    md = (out / "leaderboard.md").read_text()
    assert "## Differences" in md and "| radis − vanilla |" in md and "80% power" in md


def test_missing_score_reason_in_md_and_html(report):
    out, _, board = report
    md = (out / "leaderboard.md").read_text()
    assert f"alpaca_eval/win_rate: {NO_JUDGE}" in md
    assert f"alpaca_eval/win_rate: {NO_JUDGE}" in (out / "leaderboard.html").read_text()
    assert pd.isna(value(board, "radis", "win_rate", "mean"))
    assert value(board, "radis", "win_rate", "note") == NO_JUDGE


def test_two_runs_combine_into_one_leaderboard(tmp_path):
    first = write_run(tmp_path / "a", model="tiny-a")
    second = write_run(tmp_path / "b", model="tiny-b", shift=10.0, methods=("vanilla",), tag="b")
    scores = pd.read_csv(second / "scores.csv", dtype=str, keep_default_na=False)
    scores[scores["suite"] != "retention"].to_csv(second / "scores.csv", index=False)
    render_report([first, second, first], tmp_path / "out")  # a repeated directory adds nothing
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert main_table(md)[("tiny-b", "vanilla")]["retention kl ↓"].startswith("—")
    assert "retention/kl: no score in these runs" in md
    assert list(main_table(md)) == [("tiny-a", "original"), ("tiny-a", "vanilla"), ("tiny-a", "radis"),
                                    ("tiny-a", "kl (extension)"), ("tiny-b", "original"), ("tiny-b", "vanilla")]
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    b = board[(board["model"] == "tiny-b") & (board["metric"] == "de-en/chrf++")].set_index("method")
    assert b["mean"].to_dict() == {"original": 55.0, "vanilla": 62.0} and b["delta"]["vanilla"] == pytest.approx(7.0)


def test_conflicting_runs_are_refused_and_a_label_prefix_keeps_both(tmp_path):
    """Two runs that configured radis differently hold 'radis seed 1': never silently one of them."""
    first = write_run(tmp_path / "a")
    other = {"radis": {"description": "Rationale distillation.", "options": {"rationale_weight": 0.5}}}
    halved = {**VALUES, "radis": {s: {**m, "de-en/chrf++": m["de-en/chrf++"] + 1} for s, m in VALUES["radis"].items()}}
    second = write_run(tmp_path / "b", methods=("radis",), rows_info=other, tag="b", values=halved)
    with pytest.raises(UserError) as refused:
        build_leaderboard([first, second])
    message = str(refused.value)
    assert str(first) in message and str(second) in message and "radis seed 1" in message
    assert "options.rationale_weight: 1.0 vs 0.5" in message and "--prefix" in message
    render_report([first, second], tmp_path / "out", prefixes={str(second): "half-"})
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    chrf = board[board["metric"] == "de-en/chrf++"].set_index("method")["mean"].to_dict()
    assert chrf["radis"] == pytest.approx(49.0) and chrf["half-radis"] == pytest.approx(50.0)
    # the prefixed row is compared with the same row of the other run, as a variant is
    diffs = pd.read_csv(tmp_path / "out" / "differences.csv")
    versus = diffs[(diffs["method"] == "half-radis") & (diffs["metric"] == "de-en/chrf++")].set_index("versus")
    assert versus.loc["radis", "difference"] == pytest.approx(1.0)
    # the original is the same unit in both runs here: kept once
    assert (board["method"] == "original").sum() == len(board[board["method"] == "original"]["metric"].unique())


def test_variant_rows_differences_and_the_ablation_plot(tmp_path):
    from harness.report.plots import ablation_series

    variants = {
        "radis@rationale_weight=0": {"description": "RaDis variant", "varies": "radis", "sweep": {"rationale_weight": "0"},
                                     "options": {"rationale_weight": 0.0}},
        "radis@rationale_weight=0.5": {"description": "RaDis variant", "varies": "radis", "sweep": {"rationale_weight": "0.5"},
                                       "options": {"rationale_weight": 0.5},
                                       "budget_differs": ["budget.learning_rate 0.0001 (shared 0.001)"]},
    }
    run = write_run(tmp_path / "run", methods=("vanilla", "radis", *variants), rows_info=variants)
    written = render_report([run], tmp_path / "out")
    assert "ablation_radis_rationale_weight.png" in written
    with Image.open(written["ablation_radis_rationale_weight.png"]) as image:
        assert image.format == "PNG"
    board = build_leaderboard([run])
    (points,) = ablation_series(board).values()
    assert sorted(x for x, _, _ in points) == ["0", "0.5", "1.0"]  # one point per swept value, the unswept row at its own
    diffs = pd.read_csv(tmp_path / "out" / "differences.csv")
    versus = set(diffs[diffs["method"] == "radis@rationale_weight=0"]["versus"])
    assert versus == {"original", "vanilla", "radis"}
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "radis@rationale_weight=0.5 †" in md and "budget differs from the shared one" in md


def test_plots_are_valid_pngs_embedded_in_html(report):
    out, written, _ = report
    page = (out / "leaderboard.html").read_text()
    assert "<table" in page and "http://" not in page and "https://" not in page and "<script" not in page
    for name in PLOTS:
        assert written[name].stat().st_size > 0
        with Image.open(written[name]) as image:
            assert image.format == "PNG" and image.size[0] > 200 and len(image.getcolors(1 << 20) or [0, 0]) > 1
    assert page.count("data:image/png;base64,") == len(PLOTS)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_tradeoff_without_ifeval_and_an_unknown_metric(tmp_path):
    run = write_run(tmp_path / "run")
    scores = pd.read_csv(run / "scores.csv", dtype=str, keep_default_na=False)
    scores[scores["suite"] != "ifeval"].to_csv(run / "scores.csv", index=False)
    written = render_report([run], tmp_path / "out")
    assert written["tradeoff.png"].stat().st_size > 0
    with pytest.raises(UserError, match="general_metric 'mt_bench/score'"):
        render_report([run], tmp_path / "out2", general_metric="mt_bench/score")
    with pytest.raises(UserError, match="general_metric 'alpaca_eval/win_rate' has no score of a fine-tuned row"):
        render_report([run], tmp_path / "out3", general_metric="alpaca_eval/win_rate")  # not scored: no plot, said
    assert "tradeoff.png" in render_report([run], tmp_path / "out4", general_metric="retention/kl")


ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:root|home|tmp|work|Users|var|opt|srv|mnt)/")


def test_no_published_file_names_a_path_of_the_machine(tmp_path):
    run = write_run(tmp_path / "run", note="judge /root/models/judge, punkt_tab written to /root/.cache/radis-bench/nltk_data/punkt_tab")
    written = render_report([run], tmp_path / "out")
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "differences.csv"):
        text = written[name].read_text()
        assert not ABSOLUTE.search(text) and str(tmp_path) not in text, name
    board = written["leaderboard.md"].read_text()
    assert "judge <local path>" in board and "written to" not in board  # where a cache was written is not published


def test_no_committed_report_or_manifest_under_reports_names_a_path_of_the_machine():
    root = Path(__file__).resolve().parent.parent / "reports"
    found = [p for p in root.rglob("*") if (p.suffix in (".md", ".csv", ".html") and "report" in p.parts
                                            or p.name == "manifest.json")
             and ABSOLUTE.search(p.read_text(encoding="utf-8"))]
    assert not found, found


def test_the_manifest_publishes_paths_relative_to_the_cache_home_or_working_dir(tmp_path, monkeypatch):
    from harness.run.publish import portable

    monkeypatch.setenv("RADIS_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "cache").mkdir()
    monkeypatch.chdir(tmp_path / "cache")
    assert portable(str(tmp_path / "cache" / "models" / "m")) == "<radis-bench cache>/models/m"
    assert portable(str(tmp_path / "home" / "data")) == "~/data"
    assert portable(str(tmp_path / "shared" / "data")) == "../shared/data"
    assert portable("../shared/data") == "../shared/data" and portable("hub") == "hub" and portable(None) is None


def test_user_errors_name_the_input(tmp_path):
    with pytest.raises(UserError, match="missing does not exist"):
        render_report([tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(UserError, match="no scores.csv"):
        render_report([tmp_path], tmp_path / "out")
    run = write_run(tmp_path / "run")
    (run / "scores.csv").write_text("model,method\nx,y\n")
    with pytest.raises(UserError, match="lacks the column"):
        render_report([run], tmp_path / "out")
    run = write_run(tmp_path / "run2")
    text = (run / "scores.csv").read_text().replace(",45.0,", ",abc,", 1)
    (run / "scores.csv").write_text(text)
    with pytest.raises(UserError, match="value 'abc' is not a number"):
        render_report([run], tmp_path / "out")
    with pytest.raises(UserError, match="--prefix"):
        render_report([write_run(tmp_path / "run3")], tmp_path / "out", prefixes={"elsewhere": "x-"})


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not on PATH (CI installs the Debian package 'chromium')")
def test_html_renders_in_headless_chromium_at_laptop_width(report, tmp_path):
    out, _, _ = report
    url = (out / "leaderboard.html").resolve().as_uri()
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    done = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1366,900", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1366, 900)
        assert len(image.convert("RGB").getcolors(1 << 24)) > 1
    done = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert '<table class="leaderboard">' in dom and "52.0" in dom and "kl (extension)" in dom
    assert 'title="seeds: 1: 50.0, 2: 54.0"' in dom  # the seeds' spread on hover
    assert dom.count("data:image/png;base64,") == len(PLOTS)
