"""The report: leaderboard values (mean ± std, CI, Δ, best), missing-score reasons,
combining run directories, plots, and the HTML as a browser renders it."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from harness.errors import UserError
from harness.report import SCORE_COLUMNS, render_report

PLOTS = ["tradeoff.png", "suite_translation.png", "suite_ifeval.png", "suite_retention.png", "training_loss.png"]

# model -> method -> seed -> {(suite, metric): value}; the original has one row, seed "".
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
CI = {"de-en/chrf++": 1.0, "de-en/bleu": 1.0, "de-en/words": 2.0, "prompt_strict": 0.05, "kl": 0.02}  # half-widths
NO_JUDGE = "not scored: no judge (--judge)"


def write_run(run_dir: Path, model: str = "tiny-a", shift: float = 0.0, methods=("vanilla", "radis", "kl")) -> Path:
    """A run directory as the orchestrator writes it: scores.csv and manifest.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in ("original",) + tuple(methods):
        for seed, metrics in VALUES[method].items():
            for metric, value in metrics.items():
                value = value + shift if metric == "de-en/chrf++" else value
                rows.append({"model": model, "method": method, "seed": seed, "suite": SUITE[metric], "metric": metric,
                             "value": value, "n": 40, "ci_low": value - CI[metric], "ci_high": value + CI[metric],
                             "higher_is_better": "" if HIGHER[metric] is None else HIGHER[metric],
                             "main": metric in MAIN, "note": ""})
            rows.append({"model": model, "method": method, "seed": seed, "suite": "alpaca_eval", "metric": "win_rate",
                         "value": "", "n": "", "ci_low": "", "ci_high": "", "higher_is_better": "", "main": False,
                         "note": NO_JUDGE})
    with (run_dir / "scores.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SCORE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    manifest = {
        "name": run_dir.name, "model": {"name": model}, "config": {"model": model},
        "methods": {"vanilla": {"description": "SFT on references.", "extension": False, "options": {}},
                    "radis": {"description": "Rationale distillation.", "extension": False, "options": {}},
                    "kl": {"description": "KL to the original.", "extension": True, "options": {}}},
        "training": {m: {s: {"losses": [2.0 - (0.05 + 0.02 * k) * i - 0.05 * int(s) for i in range(10)], "steps": 10,
                             "target_tokens": 5000, "total_tokens": 9000, "wall_s": 12.5} for s in ("1", "2")}
                     for k, m in enumerate(methods)},
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return run_dir


def table_rows(md: str) -> dict[tuple[str, str], dict[str, str]]:
    """The markdown leaderboard as {(model, method label): {column header: cell}}."""
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "model":  # the next table (training) starts
            break
        out[(cells[0], cells[1])] = dict(zip(header, cells))
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


def test_original_first_then_methods_with_extension_label(report):
    out, written, board = report
    assert set(written) == {"leaderboard.csv", "leaderboard.md", "leaderboard.html", "differences.csv", *PLOTS}
    # these hand-written runs have no per-item statistics: no differences, no section
    assert (out / "differences.csv").read_text().splitlines() == [
        "model,method,versus,suite,metric,difference,ci_low,ci_high,significant,n_items,seeds,seeds_versus"]
    assert "## Differences" not in (out / "leaderboard.md").read_text()
    rows = list(table_rows((out / "leaderboard.md").read_text()))
    assert rows == [("tiny-a", "original"), ("tiny-a", "vanilla"), ("tiny-a", "radis"), ("tiny-a", "kl (extension)")]
    assert list(dict.fromkeys(board["method"])) == ["original", "vanilla", "radis", "kl"]


def test_mean_std_ci_and_signed_delta(report):
    out, _, board = report
    chrf = [50.0, 54.0]
    assert value(board, "vanilla", "de-en/chrf++", "mean") == pytest.approx(statistics.fmean(chrf))
    assert value(board, "vanilla", "de-en/chrf++", "std") == pytest.approx(statistics.stdev(chrf))
    assert value(board, "vanilla", "de-en/chrf++", "ci_low") == pytest.approx(51.0)
    assert value(board, "vanilla", "de-en/chrf++", "delta") == pytest.approx(52.0 - 45.0)
    assert value(board, "vanilla", "prompt_strict", "delta") == pytest.approx(0.31 - 0.40)
    # One seed: no std, the single CI shown.
    assert pd.isna(value(board, "original", "de-en/chrf++", "std"))
    md = table_rows((out / "leaderboard.md").read_text())
    assert md[("tiny-a", "vanilla")]["translation/de-en/chrf++ ↑"] == "**52.0 ± 2.8** [51.0, 53.0] (Δ +7.0)"
    assert md[("tiny-a", "vanilla")]["ifeval/prompt_strict ↑"] == "0.310 ± 0.014 [0.260, 0.360] (Δ -0.090)"
    assert md[("tiny-a", "original")]["translation/de-en/chrf++ ↑"] == "45.0 [44.0, 46.0]"


def test_best_per_column_respects_direction(report):
    _, _, board = report
    best = board[board["best"] == True]  # noqa: E712 (pandas column)
    winners = dict(zip(best["metric"], best["method"]))
    assert winners["de-en/chrf++"] == "vanilla"
    assert winners["prompt_strict"] == "radis"
    # Lower is better, and the original (KL 0 against itself) is the reference, not a contender.
    assert winners["kl"] == "kl"
    assert "de-en/words" not in winners  # neutral: output length
    assert len(best[best["metric"] == "kl"]) == 1


def test_missing_score_reason_in_md_and_html(report):
    out, _, board = report
    md = (out / "leaderboard.md").read_text()
    cell = table_rows(md)[("tiny-a", "radis")]["alpaca_eval/win_rate"]
    assert cell.startswith("—") and "[1]" in cell
    assert f"[1] alpaca_eval/win_rate: {NO_JUDGE}" in md
    page = (out / "leaderboard.html").read_text()
    assert f"alpaca_eval/win_rate: {NO_JUDGE}" in page
    assert pd.isna(value(board, "radis", "win_rate", "mean"))
    assert value(board, "radis", "win_rate", "note") == NO_JUDGE


def test_two_runs_combine_into_one_leaderboard(tmp_path):
    first = write_run(tmp_path / "a", model="tiny-a")
    second = write_run(tmp_path / "b", model="tiny-b", shift=10.0, methods=("vanilla",))
    scores = pd.read_csv(second / "scores.csv", dtype=str, keep_default_na=False)
    scores[scores["suite"] != "retention"].to_csv(second / "scores.csv", index=False)
    render_report([first, second, first], tmp_path / "out")  # a repeated directory adds nothing
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert table_rows(md)[("tiny-b", "vanilla")]["retention/kl ↓"].startswith("—")
    assert "retention/kl: no score in these runs" in md
    rows = list(table_rows(md))
    assert rows == [("tiny-a", "original"), ("tiny-a", "vanilla"), ("tiny-a", "radis"), ("tiny-a", "kl (extension)"),
                    ("tiny-b", "original"), ("tiny-b", "vanilla")]
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    b = board[(board["model"] == "tiny-b") & (board["metric"] == "de-en/chrf++")]
    assert b.set_index("method")["mean"].to_dict() == {"original": 55.0, "vanilla": 62.0}
    assert b.set_index("method")["delta"].to_dict()["vanilla"] == pytest.approx(7.0)
    # Best is per model: tiny-b's only method is its best.
    assert b.set_index("method")["best"].to_dict()["vanilla"] == True  # noqa: E712


def test_grid_cells_in_one_run_dir_deduplicate(tmp_path):
    run = write_run(tmp_path / "run")
    scores = (run / "scores.csv").read_text().splitlines()
    (run / "scores.csv").write_text("\n".join(scores + scores[1:]) + "\n")
    render_report([run], tmp_path / "out")
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert value(board, "vanilla", "de-en/chrf++", "n_seeds") == 2
    assert value(board, "vanilla", "de-en/chrf++", "std") == pytest.approx(statistics.stdev([50.0, 54.0]))


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


def test_tradeoff_falls_back_to_retention_and_rejects_unknown_metric(tmp_path):
    run = write_run(tmp_path / "run")
    scores = pd.read_csv(run / "scores.csv", dtype=str, keep_default_na=False)
    scores[scores["suite"] != "ifeval"].to_csv(run / "scores.csv", index=False)
    written = render_report([run], tmp_path / "out")
    assert written["tradeoff.png"].stat().st_size > 0
    with pytest.raises(UserError, match="general_metric 'mt_bench/score'"):
        render_report([run], tmp_path / "out2", general_metric="mt_bench/score")


def test_user_errors_name_the_input(tmp_path):
    with pytest.raises(UserError, match="no scores.csv"):
        render_report([tmp_path / "missing"], tmp_path / "out")
    run = write_run(tmp_path / "run")
    (run / "scores.csv").write_text("model,method\nx,y\n")
    with pytest.raises(UserError, match="lacks the column"):
        render_report([run], tmp_path / "out")
    run = write_run(tmp_path / "run2")
    text = (run / "scores.csv").read_text().replace(",45.0,", ",abc,", 1)
    (run / "scores.csv").write_text(text)
    with pytest.raises(UserError, match="value 'abc' is not a number"):
        render_report([run], tmp_path / "out")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not on PATH (CI installs the Debian package 'chromium')")
def test_html_renders_in_headless_chromium(report, tmp_path):
    out, _, _ = report
    url = (out / "leaderboard.html").resolve().as_uri()
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    done = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1400,1800", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1400, 1800)
        assert len(image.convert("RGB").getcolors(1 << 24)) > 1
    done = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert '<table class="leaderboard">' in dom and "52.0 ± 2.8" in dom and "kl (extension)" in dom
    assert dom.count("data:image/png;base64,") == len(PLOTS)
