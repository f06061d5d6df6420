"""Looks at a run's primary contrasts, from the harness's own record, and the differences
whose verdict pairing would change.

    python scripts/looks.py reports/smollm2-135m-de-en-v2/run looks
    python scripts/looks.py reports/smollm2-135m-de-en-v2/run reconstruct radis vanilla retention/kl
    python scripts/looks.py reports/smollm2-135m-de-en-v2/run shared

``looks``: one markdown table per primary contrast of the run's analysis plan, a row per
look recorded in ``analysis/looks.jsonl`` (``harness.report.claims``): the seeds per side, the
date, the nominal 95% interval and the adjusted (repeated confidence) interval as the
report showed it at that look, i.e. with the boundaries of the looks up to it. A look's
seeds are taken to be each side's first K seed labels in numeric order (a run adds seeds in
order); bold: the adjusted interval resolves the contrast on its planned side.

``reconstruct A B SUITE/METRIC``: a run rendered before the harness counted looks left them
in version control instead. This appends to ``analysis/looks.jsonl`` one look per new seed
state of A - B on that metric in the git history of ``report/differences.csv`` (oldest
first, dated by the commit, marked "reconstructed from commit <hash>"), skipping states
already recorded.

``shared``: the report pairs a difference by seed only when both rows have the same seeds,
otherwise it is a Welch difference (``harness/intervals.py``). A row computed from another
row's seeds (merge and wise from vanilla's) has seed effects correlated with that row's, and
there a difference paired on the seeds the two rows share is the natural test. For every
difference of ``report/differences.csv`` between rows with different but overlapping seed
sets (two shared seeds at least), on every main and shown metric, this prints the ones whose
nominal verdict (the 95% interval excludes 0) differs between the two tests, with both
intervals.

All use the report's own loading (``harness.report.board.build_leaderboard``, which records no
look) and intervals; nothing is computed anew but the intervals.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.report import claims  # noqa: E402
from harness.report.differences import comparisons  # noqa: E402
from harness.intervals import difference_interval  # noqa: E402
from harness.report.board import build_leaderboard  # noqa: E402
from harness.report.text import decimals, fmt
from harness.report.sequential import boundaries, t_quantile  # noqa: E402


def _text(estimate, low, high, digits: int) -> str:
    return f"{fmt(estimate, digits, True)} [{fmt(low, digits, True)}, {fmt(high, digits, True)}]"


def _first(stats: dict, k: int | None) -> dict:
    """The first k seed labels in numeric order (all of a fixed original's)."""
    if k is None:
        return stats
    chosen = sorted(stats, key=int)[:k]
    if len(chosen) < k:
        raise SystemExit(f"a look at {k} seeds, but only {len(chosen)} are scored")
    return {s: stats[s] for s in chosen}


def looks(run_dir: Path) -> list[str]:
    """Markdown tables of every primary contrast at each recorded look."""
    plan = claims.read_plan(run_dir)
    if plan is None:
        raise SystemExit(f"{run_dir} has no analysis plan (analysis/plan.json); its contrasts are exploratory")
    board = build_leaderboard([run_dir])
    analysis, lines = plan.current, []
    for entry, _ in plan.contrasts():
        contrast = claims.Contrast.of(entry)
        column = next((c for c in board.columns if c.key == contrast.metric), None)
        rows = {r.label: r for r in board.rows}
        if column is None or contrast.a not in rows or contrast.b not in rows:
            raise SystemExit(f"{contrast.name} on {contrast.metric} is not scored in {run_dir}")
        a, b = board.cell(rows[contrast.a], column).stats, board.cell(rows[contrast.b], column).stats
        taken = claims.looks_of(run_dir, contrast)
        times, _ = claims.fractions(taken, analysis)
        bounds = boundaries(times, analysis.alpha, analysis.spending)  # look k's boundary depends on looks 1..k only
        digits = decimals(board, column)
        lines += [f"{contrast.name}, {contrast.metric} ({contrast.direction}; alpha {analysis.alpha:g}, "
                  f"{claims.SPENDING_NAMES[analysis.spending]}):", "",
                  "| look | seeds | date | 95% interval | z boundary | adjusted interval |", "|---:|---:|---|---:|---:|---:|"]
        for k, (look, c) in enumerate(zip(taken, bounds), 1):
            iv = difference_interval(_first(a, look.seeds[0]), _first(b, look.seeds[1]), b_fixed=rows[contrast.b].original,
                                     share=column.share)
            half = t_quantile(c, iv.df) * iv.se
            adjusted = _text(iv.estimate, iv.estimate - half, iv.estimate + half, digits)
            resolved = {"lower": iv.estimate + half < 0, "higher": iv.estimate - half > 0,
                        "two-sided": abs(iv.estimate) > half}[contrast.direction]
            seeds = " vs ".join("fixed" if s is None else str(s) for s in look.seeds)
            lines.append(f"| {k} | {seeds} | {look.time[:10]} | {_text(iv.estimate, iv.low, iv.high, digits)} | {c:.3f} | "
                         + (f"**{adjusted}**" if resolved else adjusted) + " |")
        lines.append("")
    return lines


def reconstruct(run_dir: Path, a: str, b: str, metric: str) -> list[str]:
    """Append the looks that the git history of the run's differences.csv shows; what was added."""
    contrast = claims.Contrast(a, b, metric)
    suite, _, name = metric.partition("/")
    path = (run_dir / "report" / "differences.csv").resolve()
    root = Path(subprocess.run(["git", "-C", str(path.parent), "rev-parse", "--show-toplevel"], capture_output=True,
                               text=True, check=True).stdout.strip())
    relative = path.relative_to(root).as_posix()
    history = subprocess.run(["git", "-C", str(root), "log", "--reverse", "--format=%h %aI", "--", relative],
                             capture_output=True, text=True, check=True).stdout.split("\n")
    seen = {look.seeds for look in claims.looks_of(run_dir, contrast)}
    (run_dir / claims.FOLDER).mkdir(exist_ok=True)
    added = []
    for commit, date in (line.split() for line in history if line.strip()):
        text = subprocess.run(["git", "-C", str(root), "show", f"{commit}:{relative}"], capture_output=True, text=True,
                              check=True).stdout
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        row = frame[(frame["method"] == a) & (frame["versus"] == b) & (frame["suite"] == suite) & (frame["metric"] == name)]
        if row.empty:
            continue
        seeds = (int(row["seeds"].iloc[0]), None if b == "original" else int(row["seeds_versus"].iloc[0]))
        if seeds in seen:
            continue
        seen.add(seeds)
        line = {"contrast": {"a": a, "b": b, "metric": metric}, "seeds": list(seeds), "time": date,
                "note": f"reconstructed from commit {commit}"}
        with (run_dir / claims.FOLDER / "looks.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        added.append(f"{' vs '.join('fixed' if s is None else str(s) for s in seeds)} seeds on {date[:10]} ({commit})")
    return added


def shared(board) -> list[dict]:
    """The differences whose nominal verdict changes when paired on the shared seeds instead of Welch."""
    out = []
    for row, ref in comparisons(board):
        if ref.original:
            continue
        for c in board.columns:
            if not c.shown:
                continue
            sa, sb = board.cell(row, c).stats, board.cell(ref, c).stats
            common = [s for s in sa if s in sb]
            if not sa or not sb or set(sa) == set(sb) or len(common) < 2:
                continue
            welch = difference_interval(sa, sb, share=c.share)
            paired = difference_interval({s: sa[s] for s in common}, {s: sb[s] for s in common}, share=c.share)
            if welch is None or paired is None or welch.low is None or paired.low is None:
                continue
            if welch.significant != paired.significant:
                digits = decimals(board, c)
                out.append({"method": row.label, "versus": ref.label, "metric": c.key,
                            "welch": _text(welch.estimate, welch.low, welch.high, digits),
                            "welch_seeds": f"{welch.seeds} vs {welch.seeds_versus}",
                            "paired": _text(paired.estimate, paired.low, paired.high, digits), "paired_seeds": len(common),
                            "resolved": "paired only" if paired.significant else "unpaired only"})
    return out


def main(argv: list[str]) -> None:
    usage = "usage: looks.py RUN_DIR looks | looks.py RUN_DIR reconstruct A B SUITE/METRIC | looks.py RUN_DIR shared"
    if len(argv) < 2 or argv[1] not in ("looks", "reconstruct", "shared"):
        raise SystemExit(usage)
    run_dir, what, rest = Path(argv[0]), argv[1], argv[2:]
    if not (run_dir / "scores.csv").exists():
        raise SystemExit(f"{run_dir} has no scores.csv; pass a folder written by `radis-bench run`")
    if what == "looks":
        print("\n".join(looks(run_dir)))
    elif what == "reconstruct":
        if len(rest) != 3 or "/" not in rest[2]:
            raise SystemExit(usage)
        added = reconstruct(run_dir, *rest)
        print("\n".join(f"- {line}" for line in added) if added else "no look to add")
    else:
        for d in shared(build_leaderboard([run_dir])):
            print(f"- {d['method']} - {d['versus']}, {d['metric']}: unpaired ({d['welch_seeds']} seeds) {d['welch']}, "
                  f"paired on {d['paired_seeds']} shared seeds {d['paired']} (resolved {d['resolved']})")


if __name__ == "__main__":
    main(sys.argv[1:])
