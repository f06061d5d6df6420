"""``render_report``: the leaderboard (csv, md, html), the differences and the plots of one or
more run directories, written into one folder:

    leaderboard.csv    one row per (model, row, metric): mean, per-seed values, interval,
                       Δ against the model's original with its interval, best / tied flags
    differences.csv    every row against its original, the baseline (plain fine-tuning) and
                       the row it varies, and every primary contrast of a run's analysis plan,
                       with intervals, adjusted verdicts and the seeds 80% power would need
    leaderboard.md     the tables people read: claims, main metrics, other metrics, differences
    leaderboard.html   the same, self-contained (inline CSS, plots as data URIs)
    *.png              see ``harness.report.plots``
"""

from __future__ import annotations

from pathlib import Path

from harness.report.board import build_leaderboard
from harness.report.html import leaderboard_html
from harness.report.plots import all_plots
from harness.report.text import differences_csv, leaderboard_csv, leaderboard_markdown
from harness.report.trajectory import trajectories_csv
from harness.store import write_atomic


def render_report(run_dirs: list[Path], out_dir: Path, title: str | None = None, general_metric: str | None = None,
                  prefixes: dict[str, str] | None = None) -> dict[str, Path]:
    """Write the leaderboard (csv, md, html), the differences and the plots for ``run_dirs``
    into ``out_dir``; ``prefixes`` maps a run directory (as given) to a prefix for its row
    labels. ``general_metric`` ("suite/metric") is the only y axis of the trade-off plot
    (default: every general suite's main metric). Returns the written paths by file name."""
    board = build_leaderboard(run_dirs, title, prefixes, record_looks=True)
    out_dir = Path(out_dir)
    plots = all_plots(board, general_metric)
    files = {
        "leaderboard.csv": leaderboard_csv(board).encode(),
        "differences.csv": differences_csv(board).encode(),
        "leaderboard.md": leaderboard_markdown(board, list(plots)).encode(),
        "leaderboard.html": leaderboard_html(board, plots).encode(),
        **plots,
    }
    trajectories = trajectories_csv(board)
    if trajectories is not None:
        files["trajectories.csv"] = trajectories.encode()
    written = {}
    for name, data in files.items():
        written[name] = out_dir / name
        write_atomic(out_dir / name, data)
    return written
