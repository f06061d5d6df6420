"""Two re-readings of a run's differences that the rendered report does not hold.

    python scripts/looks.py reports/smollm2-135m-de-en-v2/run looks radis vanilla 3,8,13,15,17
    python scripts/looks.py reports/smollm2-135m-de-en-v2/run shared

``looks A B K1,K2,...``: a run that grows seed by seed and is read at several seed counts
("looks") finds a difference that is not there more often than its level says. For each
look K this prints A - B on their seeds 0..K-1 (both rows must have them all), at 95% and
at 1 - 0.05/(number of looks), Bonferroni over the looks, which holds whatever rule decided
when to look. One markdown table, a row per look, two columns per main metric (``--metrics``
chooses others: ``suite/metric`` keys, comma-separated); bold: the interval excludes 0.

``shared``: the report pairs a difference by seed only when both rows have the same seeds,
otherwise it is a Welch difference (``harness/intervals.py``). A row computed from another
row's seeds (merge and wise from vanilla's) has seed effects correlated with that row's, and
there a difference paired on the seeds the two rows share is the natural test. For every
difference of ``report/differences.csv`` between rows with different but overlapping seed
sets (two shared seeds at least), on every main and shown metric, this prints the ones whose
verdict (the 95% interval excludes 0) differs between the two tests, with both intervals.

Both use the report's own loading (``harness.report.build_leaderboard``) and intervals
(``harness.intervals.difference_interval``); nothing is computed anew but the intervals.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.differences import comparisons  # noqa: E402
from harness.intervals import difference_interval  # noqa: E402
from harness.report import build_leaderboard, decimals, fmt  # noqa: E402


def _text(iv, digits: int, bold: bool = True) -> str:
    s = f"{fmt(iv.estimate, digits, True)} [{fmt(iv.low, digits, True)}, {fmt(iv.high, digits, True)}]"
    return f"**{s}**" if bold and iv.significant else s


def _row(board, label: str):
    rows = [r for r in board.rows if r.label == label]
    if len(rows) != 1:
        raise SystemExit(f"{label!r} is not one row of the leaderboard; rows: {', '.join(r.label for r in board.rows)}")
    return rows[0]


def looks(board, a: str, b: str, ks: list[int], keys: list[str] | None = None) -> list[str]:
    """The markdown table of A - B at each look, 95% and Bonferroni over the looks."""
    ra, rb = _row(board, a), _row(board, b)
    by_key = {c.key: c for c in board.columns}
    unknown = [k for k in keys or [] if k not in by_key]
    if unknown:
        raise SystemExit(f"no column {unknown[0]!r}; columns: {', '.join(by_key)}")
    columns = [by_key[k] for k in keys] if keys else board.main
    columns = [c for c in columns if board.cell(ra, c).stats and board.cell(rb, c).stats]
    level = 1 - 0.05 / len(ks)
    pct = f"{level * 100:.2f}".rstrip("0").rstrip(".") + "%"
    lines = ["| seeds | " + " | ".join(f"{c.key}{c.arrow} 95% | {c.key} {pct}" for c in columns) + " |",
             "|---:|" + "---:|" * (2 * len(columns))]
    for k in ks:
        wanted = {str(s) for s in range(k)}
        cells = [str(k)]
        for c in columns:
            sa, sb = board.cell(ra, c).stats, board.cell(rb, c).stats
            if not wanted <= set(sa) or not wanted <= set(sb):
                raise SystemExit(f"look at {k} seeds: {a} or {b} lacks one of the seeds 0..{k - 1} in {c.key}")
            sa, sb = {s: sa[s] for s in sorted(wanted, key=int)}, {s: sb[s] for s in sorted(wanted, key=int)}
            digits = decimals(board, c)
            cells += [_text(difference_interval(sa, sb), digits), _text(difference_interval(sa, sb, level=level), digits)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def shared(board) -> list[dict]:
    """The differences whose verdict changes when paired on the shared seeds instead of Welch."""
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
            welch = difference_interval(sa, sb)
            paired = difference_interval({s: sa[s] for s in common}, {s: sb[s] for s in common})
            if welch is None or paired is None or welch.low is None or paired.low is None:
                continue
            if welch.significant != paired.significant:
                digits = decimals(board, c)
                out.append({"method": row.label, "versus": ref.label, "metric": c.key,
                            "welch": _text(welch, digits, bold=False), "welch_seeds": f"{welch.seeds} vs {welch.seeds_versus}",
                            "paired": _text(paired, digits, bold=False), "paired_seeds": len(common),
                            "resolved": "paired only" if paired.significant else "unpaired only"})
    return out


def main(argv: list[str]) -> None:
    usage = "usage: looks.py RUN_DIR looks A B K1,K2,... [--metrics suite/metric,...] | looks.py RUN_DIR shared"
    if len(argv) < 2 or argv[1] not in ("looks", "shared"):
        raise SystemExit(usage)
    run_dir, what, rest = Path(argv[0]), argv[1], argv[2:]
    if not (run_dir / "scores.csv").exists():
        raise SystemExit(f"{run_dir} has no scores.csv; pass a folder written by `radis-bench run`")
    board = build_leaderboard([run_dir])
    if what == "shared":
        for d in shared(board):
            print(f"- {d['method']} - {d['versus']}, {d['metric']}: unpaired ({d['welch_seeds']} seeds) {d['welch']}, "
                  f"paired on {d['paired_seeds']} shared seeds {d['paired']} (resolved {d['resolved']})")
        return
    keys = None
    if "--metrics" in rest:
        i = rest.index("--metrics")
        keys, rest = rest[i + 1].split(","), rest[:i] + rest[i + 2:]
    if len(rest) != 3:
        raise SystemExit(usage)
    try:
        ks = [int(k) for k in rest[2].split(",")]
    except ValueError:
        raise SystemExit(f"looks must be seed counts like 3,8,13, not {rest[2]!r}") from None
    if not ks or min(ks) < 2:
        raise SystemExit("every look needs at least 2 seeds")
    print("\n".join(looks(board, rest[0], rest[1], ks, keys)))


if __name__ == "__main__":
    main(sys.argv[1:])
