"""The published reports: their tables are what the current code renders (byte for byte),
and every interval v2's README quotes is in its tables or in the outputs of the scripts it
names."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pandas as pd
import pytest

from harness.report.board import build_leaderboard
from harness.report.text import decimals, differences_csv, fmt, leaderboard_csv, leaderboard_markdown

REPORTS = Path(__file__).resolve().parents[1] / "reports"
RUNS = sorted(p.parent for p in REPORTS.glob("*/run*/scores.csv"))  # run/, and companion runs such as run-ifeval-1280/
PUBLISHED = [run for run in RUNS if (run / "report").is_dir()]
UNDERWAY = [run for run in RUNS if not (run / "report").is_dir()]
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "looks.py"
INTERVAL = re.compile(r"[−+-]?\d[\d.]*\s\[[−+-]?\d[\d.]*, [−+-]?\d[\d.]*\]")

pytestmark = pytest.mark.slow  # reads every published run (about 20 s)


def _plain(text: str) -> str:
    return text.replace("−", "-").replace("+", "").replace("\\", "")


@pytest.mark.parametrize("run", PUBLISHED, ids=lambda p: p.parent.name)
def test_published_tables_are_what_the_code_renders(run):
    """A re-render on any machine gives the committed bytes (no rounding residue such as
    -2.7e-10 in the tables), and reading the report records no look."""
    looks = run / "analysis" / "looks.jsonl"
    before = looks.read_bytes() if looks.exists() else None
    board = build_leaderboard([run])
    report = run / "report"
    assert differences_csv(board) == (report / "differences.csv").read_text(encoding="utf-8")
    assert leaderboard_csv(board) == (report / "leaderboard.csv").read_text(encoding="utf-8")
    plots = re.findall(r"^!\[(\S+)\]", (report / "leaderboard.md").read_text(encoding="utf-8"), re.M)
    assert leaderboard_markdown(board, plots) == (report / "leaderboard.md").read_text(encoding="utf-8")
    assert (looks.read_bytes() if looks.exists() else None) == before
    for name, columns in (("differences.csv", ["difference", "ci_low", "ci_high", "adjusted_low", "adjusted_high"]),
                          ("leaderboard.csv", ["mean", "ci_low", "ci_high", "delta", "delta_low", "delta_high"])):
        values = pd.read_csv(report / name)[columns].abs().stack()
        assert not ((values > 0) & (values < 1e-6)).any(), name  # no residue such as -2.7e-10


@pytest.mark.parametrize("run", UNDERWAY, ids=lambda p: p.parent.name)
def test_a_run_under_way_has_a_plan_and_no_look_yet(run):
    """A run whose units are committed as they finish, before its single planned look: it has
    a written plan beside it, and nobody has looked (no report, no looks recorded)."""
    assert (run.parent / "PLAN.md").is_file()
    assert not (run / "analysis" / "looks.jsonl").exists()
    assert (run / "manifest.json").is_file()


def _looks_module():
    spec = importlib.util.spec_from_file_location("looks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _intervals(board) -> set[str]:
    """Every difference (nominal and adjusted) and cell interval as the report prints it."""
    digits = {c.key: decimals(board, c) for c in board.columns}
    known = set()
    for r in board.differences.itertuples():
        d = digits[f"{r.suite}/{r.metric}"]
        for low, high in ((r.ci_low, r.ci_high), (r.adjusted_low, r.adjusted_high)):
            if low == low:  # not NaN
                known.add(f"{fmt(r.difference, d, True)} [{fmt(low, d, True)}, {fmt(high, d, True)}]")
    for (_, key), cell in board.cells.items():
        if cell.mean is not None and cell.ci_low is not None:
            known.add(f"{fmt(cell.mean, digits[key])} [{fmt(cell.ci_low, digits[key])}, {fmt(cell.ci_high, digits[key])}]")
    return known


def _quoted_and_missing(readme: str, known: set[str], tables: bool = False) -> tuple[list[str], list[str]]:
    """Every "estimate [low, high]" a README quotes (with ``tables``, also a table's "estimate |
    [low, high]"), and those not among ``known``."""
    text = readme.replace("\n", " ")
    quoted = INTERVAL.findall(text.replace(" | [", " [") if tables else text)
    plain = {_plain(k) for k in known}
    return quoted, [q for q in quoted if _plain(q) not in plain]


def test_every_interval_in_the_v2_readme_is_in_its_tables():
    """Each "estimate [low, high]" of v2's README is a difference or adjusted interval of
    differences.csv or a cell of the leaderboard (at the column's decimals; v1's too, for
    the v1 → v2 table), a row of `scripts/looks.py RUN looks` or `shared`, or in the v1
    column of the v1 → v2 table (the first report's numbers); and it says 15 looks."""
    run = REPORTS / "smollm2-135m-de-en-v2" / "run"
    board = build_leaderboard([run])
    known = _intervals(board) | _intervals(build_leaderboard([REPORTS / "smollm2-135m-de-en" / "run"]))  # v1 → v2
    looks = _looks_module()
    outputs = "\n".join(looks.looks(run)) + "\n" + "\n".join(f"{d['welch']} {d['paired']}" for d in looks.shared(board))
    known |= set(INTERVAL.findall(outputs))
    readme = (REPORTS / "smollm2-135m-de-en-v2" / "README.md").read_text(encoding="utf-8")
    then = readme.split("## What v1 claimed", 1)[1].split("\n## ", 1)[0]  # the v1 column: the first report's numbers
    known |= {i for line in then.splitlines() if line.startswith("| ") for i in INTERVAL.findall(line.split("|")[2])}
    quoted, missing = _quoted_and_missing(readme, known)
    assert len(quoted) > 100 and not missing, missing
    primary = board.differences[board.differences["role"] == "primary"].iloc[0]
    assert primary["looks"] == 15 and "**The looks were 15, not 8.**" in readme
    assert f"[{fmt(primary['adjusted_low'], 3, True)}, {fmt(primary['adjusted_high'], 3, True)}]".replace("-", "−") in readme


def test_every_interval_in_the_stopping_or_content_readme_is_in_its_tables():
    """Each "estimate [low, high]" of the stopping-or-content README is a difference, adjusted
    interval or cell of its own report, one of v2's that it quotes, or a rank agreement of its
    IFEval limit study (ifeval_limits.csv); the primary contrasts' adjusted intervals are the
    ones the report gives at its single look."""
    folder = REPORTS / "smollm2-135m-stopping-or-content"
    board = build_leaderboard([folder / "run"])
    known = _intervals(board) | _intervals(build_leaderboard([REPORTS / "smollm2-135m-de-en-v2" / "run"]))
    limits = pd.read_csv(folder / "ifeval_limits.csv").dropna(subset=["rho_low"])  # the IFEval limit study's ρ
    known |= {f"{r.rho:+.2f} [{r.rho_low:+.2f}, {r.rho_high:+.2f}]" for r in limits.itertuples()}
    readme = (folder / "README.md").read_text(encoding="utf-8")
    quoted, missing = _quoted_and_missing(readme, known, tables=True)
    assert len(quoted) > 20 and not missing, missing
    primary = board.differences[board.differences["role"] == "primary"]
    assert len(primary) == 2 and set(primary["looks"]) == {1}
    for p in primary.itertuples():
        shown = f"[{fmt(p.adjusted_low, 3, True)}, {fmt(p.adjusted_high, 3, True)}]".replace("-", "−")
        assert f"`{p.suite}/{p.metric}` | {fmt(p.difference, 3, True).replace('-', '−')} |" in readme and shown in readme


def test_no_published_file_carries_a_path_of_the_machine_that_made_it():
    """Reports are read on other machines: no absolute path of a home, scratch or work folder in
    any text file under reports/ (scores.csv notes and unit files included)."""
    machine = re.compile(r"/(?:root|home|tmp|work)/")
    found = [str(p.relative_to(REPORTS)) for p in sorted(REPORTS.rglob("*"))
             if p.is_file() and p.suffix in (".csv", ".json", ".jsonl", ".md", ".txt", ".yaml", ".html")
             and machine.search(p.read_text(errors="replace"))]
    assert not found, found[:10]
